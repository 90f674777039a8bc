"""DINO / DINOv2 benchmark: vista vs PyTorch (timm) vs ONNX Runtime, one command.

Same models (random weights in the official architectures, saved once in the official naming so
vista loads the very tensors PyTorch runs), same inputs (read by every engine from one
safetensors file), same thread count, same iteration counts. Every (engine, workload) pair runs
in its own fresh process, so the peak RSS reported is that process's alone (``os.wait4`` rusage
of that child).

Workloads: the CLS feature (after the final norm) of 1 or 32 preprocessed 224x224 images:

* ``vits16_b1`` / ``vits16_b32``: DINO ViT-S/16 (timm ``vit_small_patch16_224``, the DINO
  architecture; ``dino_vits16``);
* ``vitb16_b1`` / ``vitb16_b32``: DINO ViT-B/16 (timm ``vit_base_patch16_224``; ``dino_vitb16``);
* ``v2s14_b1`` / ``v2s14_b32``: DINOv2 ViT-S/14 (timm ``vit_small_patch14_dinov2``; ``dinov2_vits14``)
  with its trained 37x37 position grid (518 pixels), resampled to the 16x16 grid of a 224 input
  as DINOv2's own code does it (see ``dinov2_pos_embed``).

    python tools/bench/bench_dino.py                 # full run (~10 min on 2 cores), writes BENCHMARKS.md
    python tools/bench/bench_dino.py --quick --no-write   # smoke test

Steps: (a) ``--worker setup`` (when anything in ``bench-out/`` is missing, or ``--setup``):
models, inputs, PyTorch's reference outputs and the ONNX exports; (b) ``cargo build --release -p
vista --example bench_dino``; (c) each engine in its own subprocess; (d) a table on stdout, raw
results in ``bench-out/bench_dino_results.json`` and the report in ``BENCHMARKS.md`` (between the
``bench_dino`` markers; text outside them is kept).

The same file is also the set-up, PyTorch and ONNX Runtime worker (``--worker setup|torch|ort``).
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (stdlib only)
from benchlib import fmt_ms  # noqa: E402

# model key: (timm name, timm kwargs, heads, title, official hub name)
MODELS = {
    "vits16": ("vit_small_patch16_224", {}, 6, "DINO ViT-S/16", "dino_vits16"),
    "vitb16": ("vit_base_patch16_224", {}, 12, "DINO ViT-B/16", "dino_vitb16"),
    "v2s14": ("vit_small_patch14_dinov2", {"img_size": 518, "dynamic_img_size": True}, 6, "DINOv2 ViT-S/14",
              "dinov2_vits14"),
}
# name: (model, batch)
WORKLOADS = {f"{m}_b{b}": (m, b) for m in MODELS for b in (1, 32)}
ENGINES = ("vista", "torch", "ort")
ENGINE_NAMES = {"vista": "vista", "torch": "PyTorch", "ort": "ONNX Runtime"}
# (warm-up per process, timed iterations in all) per workload; the timed iterations are split
# over the rounds (each round is a fresh process per engine).
FULL_ITERS = {"vits16_b1": (3, 40), "vits16_b32": (1, 6), "vitb16_b1": (3, 20), "vitb16_b32": (1, 4),
              "v2s14_b1": (3, 40), "v2s14_b32": (1, 6)}
QUICK_ITERS = {w: (1, 2) for w in WORKLOADS}
TITLE = "## DINO / DINOv2 on CPU: vista vs PyTorch vs ONNX Runtime"
BEGIN, END = "<!-- bench_dino:begin -->", "<!-- bench_dino:end -->"
PACKAGES = ("torch", "timm", "onnxruntime", "onnx", "numpy", "safetensors")
THREADS = ["vista `RAYON_NUM_THREADS`", "PyTorch `torch.set_num_threads`, `set_num_interop_threads(1)`",
           "ONNX Runtime `intra_op_num_threads`, `inter_op_num_threads=1`, sequential, `ORT_ENABLE_ALL`"]

SIZE = 224
N_IMAGES = 32
SEED = 20261128
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
INTERP_OFFSET = 0.1  # DINO's and DINOv2's `interpolate_offset`


def paths(out: pathlib.Path) -> dict:
    d = {m: out / f"{MODELS[m][4]}_random.pth" for m in MODELS}
    d.update({f"onnx_{m}": out / "dino-onnx" / f"{MODELS[m][4]}.onnx" for m in MODELS})
    d.update(inputs=out / "dino-inputs.safetensors", setup=out / "dino_setup.json")
    return d


def setup_complete(out: pathlib.Path) -> bool:
    p = paths(out)
    return all(p[k].exists() for k in (*MODELS, "inputs", "setup"))


# ----------------------------------------------------------------------------------------------
# Models (shared by the set-up and the workers)
# ----------------------------------------------------------------------------------------------
def _quiet():
    import warnings

    warnings.simplefilter("ignore")


def dinov2_interpolate(pos_embed, h0: int, w0: int):
    """DINOv2's `DinoVisionTransformer.interpolate_pos_encoding` (facebookresearch/dinov2, no
    registers: `interpolate_offset=0.1`, `interpolate_antialias=False`) for an h0 x w0 patch grid:
    bicubic with `scale_factor = ((h0 + 0.1) / M, (w0 + 0.1) / M)`; the trained table as is when
    the grid matches."""
    import math

    import torch
    import torch.nn.functional as F

    n = pos_embed.shape[1] - 1
    m = int(math.sqrt(n))
    assert m * m == n
    if h0 * w0 == n and h0 == w0:
        return pos_embed
    dim = pos_embed.shape[-1]
    cls_pos, patch_pos = pos_embed[:, :1].float(), pos_embed[:, 1:].float()
    patch_pos = F.interpolate(
        patch_pos.reshape(1, m, m, dim).permute(0, 3, 1, 2),
        scale_factor=((h0 + INTERP_OFFSET) / m, (w0 + INTERP_OFFSET) / m),
        mode="bicubic", antialias=False,
    )
    assert tuple(patch_pos.shape[-2:]) == (h0, w0), patch_pos.shape
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, h0 * w0, dim)
    return torch.cat((cls_pos, patch_pos), dim=1).to(pos_embed.dtype)


def dinov2_pos_embed(self, x):
    """Replaces timm's `VisionTransformer._pos_embed` (dynamic size: `x` is [B, h, w, C]), whose
    resampling (`resample_abs_pos_embed`: bicubic to `size`, antialiased) is not DINOv2's: cat the
    CLS token, then add the position embedding resampled as DINOv2 does."""
    import torch

    b, h, w, c = x.shape
    x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, h * w, c)], dim=1)
    return self.pos_drop(x + dinov2_interpolate(self.pos_embed, h, w))


def build_torch(key: str, weights: pathlib.Path | None = None):
    """timm's model of the DINO architecture, head removed (`num_classes=0`: the output is the
    CLS token after the final norm), with the stored weights when given; DINOv2 with its own
    position-embedding resampling."""
    import types

    import timm
    import torch

    _quiet()
    name, kwargs, heads, _, _ = MODELS[key]
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    assert model.blocks[0].attn.num_heads == heads
    assert abs(model.norm.eps - 1e-6) < 1e-12, model.norm.eps
    if key.startswith("v2"):
        model._pos_embed = types.MethodType(dinov2_pos_embed, model)
    if weights is not None:
        sd = torch.load(str(weights), map_location="cpu")
        sd.pop("mask_token", None)  # DINOv2's (masked-image training only); timm has none
        model.load_state_dict(sd)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Set-up worker: weights, inputs, PyTorch references, ONNX exports
# ----------------------------------------------------------------------------------------------
def setup(args) -> int:
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    benchlib.torch_threads(args.threads)
    out = args.out
    p = paths(out)
    (out / "dino-onnx").mkdir(parents=True, exist_ok=True)
    info = {"export": {}, "ort_vs_torch": {}, "max_abs": {}, "keys": {}}

    # Inputs: 32 random 224x224 RGB images (uniform 8-bit values), normalised with ImageNet's
    # mean / std as DINO's transforms do.
    rng = np.random.default_rng(SEED)
    raw = rng.integers(0, 256, (N_IMAGES, SIZE, SIZE, 3)).astype(np.float32) / 255.0
    pixels = ((raw - np.array(MEAN, np.float32)) / np.array(STD, np.float32)).transpose(0, 3, 1, 2)
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    x = torch.from_numpy(pixels)
    tensors = {"pixel_values": pixels}

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

    for i, key in enumerate(MODELS):
        # Weights: timm's initialisation, seeded, then every tensor timm leaves constant (biases,
        # norms, tokens, DINOv2's 1e-5 layer scales) made random too, so the parity check
        # exercises all of them.
        torch.manual_seed(SEED + i)
        model = build_torch(key)
        with torch.no_grad():
            for name, prm in model.named_parameters():
                if name.endswith(("norm1.weight", "norm2.weight")) or name == "norm.weight":
                    prm.copy_(1.0 + 0.1 * torch.randn_like(prm))
                elif name.endswith(("ls1.gamma", "ls2.gamma")):
                    prm.copy_(torch.empty_like(prm).uniform_(0.2, 1.0))
                elif name.endswith("bias") or name in ("cls_token", "pos_embed"):
                    prm.copy_(0.02 * torch.randn_like(prm))
        sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")}
        if key.startswith("v2"):
            # The official DINOv2 files carry it; loaders must skip it.
            sd["mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
        torch.save(sd, p[key])
        info["keys"][key] = len(sd)
        model = build_torch(key, p[key])

        with torch.inference_mode():
            cls = model(x).numpy()
            cls_b1 = model(x[:1]).numpy()
            if key.startswith("v2"):
                g = SIZE // model.patch_embed.patch_size[0]
                tensors[f"pos_{key}"] = dinov2_interpolate(model.pos_embed, g, g)[0, 1:].numpy().copy()
        tensors[f"cls_{key}"] = cls
        tensors[f"cls_{key}_b1"] = cls_b1
        info["max_abs"][key] = float(np.abs(cls).max())
        print(f"{key}: {MODELS[key][0]} {sum(v.numel() for v in sd.values()) / 1e6:.1f} M parameters, "
              f"CLS {cls.shape}, max|CLS| {info['max_abs'][key]:.2f}", flush=True)

        # ONNX: legacy TorchScript exporter, opset 17, dynamic batch. DINOv2: the exporter cannot
        # trace the bicubic `scale_factor` call, and with the image size fixed the resampled table is
        # a constant anyway: the exported module adds DINOv2's table precomputed for the 224 grid.
        t0 = time.perf_counter()
        if key.startswith("v2"):
            import types

            g = SIZE // model.patch_embed.patch_size[0]
            with torch.no_grad():
                fixed = dinov2_interpolate(model.pos_embed, g, g).detach().clone()

            def fixed_pos_embed(self, x, fixed=fixed):
                b, h, w, c = x.shape
                x = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, h * w, c)], dim=1)
                return self.pos_drop(x + fixed)

            model._pos_embed = types.MethodType(fixed_pos_embed, model)
        try:
            with torch.no_grad():
                torch.onnx.export(model, (x[:2],), str(p[f"onnx_{key}"]), opset_version=17, dynamo=False,
                                  do_constant_folding=True, input_names=["pixel_values"], output_names=["cls"],
                                  dynamic_axes={"pixel_values": {0: "batch"}, "cls": {0: "batch"}})
            sess = ort.InferenceSession(str(p[f"onnx_{key}"]), so, providers=["CPUExecutionProvider"])
            diff = max(float(np.abs(sess.run(None, {"pixel_values": pixels})[0] - cls).max()),
                       float(np.abs(sess.run(None, {"pixel_values": pixels[:1]})[0] - cls_b1).max()))
            info["export"][key] = dict(ok=True, seconds=round(time.perf_counter() - t0, 1),
                                       mb=round(p[f"onnx_{key}"].stat().st_size / 2**20, 1))
            info["ort_vs_torch"][key] = diff
            print(f"  exported {p[f'onnx_{key}'].name} in {time.perf_counter() - t0:.1f} s, "
                  f"ORT vs PyTorch max|diff| {diff:.2e}", flush=True)
            if diff > 1e-3:
                print(f"  WARNING: ORT differs from PyTorch by {diff:.2e}", flush=True)
        except Exception as e:  # noqa: BLE001 - recorded in the report
            info["export"][key] = dict(ok=False, seconds=round(time.perf_counter() - t0, 1),
                                       error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            print(f"  export of {key} FAILED: {info['export'][key]['error']}", flush=True)
            p[f"onnx_{key}"].unlink(missing_ok=True)
        del model

    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(p["inputs"]))
    p["setup"].write_text(json.dumps(info, indent=2) + "\n")
    return 0


# ----------------------------------------------------------------------------------------------
# PyTorch / ONNX Runtime workers (run in their own process)
# ----------------------------------------------------------------------------------------------
def worker(args) -> int:
    import numpy as np
    from safetensors.numpy import load_file

    _quiet()
    key, batch = WORKLOADS[args.workload]
    p = paths(args.out)
    data = load_file(str(p["inputs"]))
    x = np.ascontiguousarray(data["pixel_values"][:batch])
    ref = data[f"cls_{key}_b1"] if batch == 1 else data[f"cls_{key}"][:batch]

    t0 = time.perf_counter()
    if args.worker == "torch":
        extra = benchlib.torch_threads(args.threads)
        import torch

        model = build_torch(key, p[key])
        xt = torch.from_numpy(x)

        def run():
            with torch.inference_mode():
                return model(xt).numpy()

        extra["fused_attn"] = bool(getattr(model.blocks[0].attn, "fused_attn", False))
    else:
        path = p[f"onnx_{key}"]
        if not path.exists():
            raise SystemExit(f"{path.name} is missing (its export failed: see {p['setup'].name})")
        sess, extra = benchlib.ort_session(path, args.threads)

        def run():
            return sess.run(None, {"pixel_values": x})[0]
    return benchlib.measure(args, run, ref, t0, batch, extra)


# ----------------------------------------------------------------------------------------------
# Orchestrator
# ----------------------------------------------------------------------------------------------
def render(results, meta) -> str:
    by = benchlib.by_key(results)
    lines = [
        *benchlib.header_lines(meta, "bench_dino.py", THREADS, TITLE, begin=BEGIN),
        f"What is measured ({benchlib.RANDOM_WEIGHTS}): the CLS feature (after the final "
        "norm) of 1 or 32 preprocessed 224×224 images (`[B,3,224,224]`, uniform random 8-bit RGB normalised "
        "with ImageNet's mean / std; read by every engine from `bench-out/dino-inputs.safetensors`, vista "
        "converts them once, untimed, to its channels-last layout). Models: timm `vit_small_patch16_224` "
        "(DINO ViT-S/16, 6 heads), `vit_base_patch16_224` (DINO ViT-B/16, 12 heads) and "
        "`vit_small_patch14_dinov2` (DINOv2 ViT-S/14, layer scale) with `num_classes=0`, which are DINO's "
        "architectures with DINO's parameter names: seeded, every bias / norm / token / layer scale "
        "randomised too, and saved with `torch.save(state_dict)` (head dropped; DINOv2's with a `mask_token` "
        "as the official file has) to `bench-out/dino_vits16_random.pth`, `dino_vitb16_random.pth`, "
        "`dinov2_vits14_random.pth`, which vista loads as it loads the official files "
        "(`vista::dino::loader::load_model`, head count given). vista: `DinoVit::forward(pixels, false, "
        "false).cls()`; PyTorch: `model(x)` under `inference_mode` (timm's attention is "
        "`F.scaled_dot_product_attention`); ONNX Runtime: the same module exported with `torch.onnx.export` "
        "(opset 17, TorchScript exporter, dynamic batch).",
        "",
        "DINOv2 at 224: the model keeps the released 518-pixel position table (37×37 grid), resampled for "
        "the 16×16 grid of a 224 input as DINOv2's own `interpolate_pos_encoding` does (bicubic, "
        "`scale_factor = (16 + 0.1) / 37`, no antialiasing) on every call: PyTorch runs a copy of that code "
        "in place of timm's `_pos_embed` (timm's own resampling, bicubic to `size` with antialiasing, is not "
        "DINOv2's), vista its `ScaleFactorOffset` resampling (what it uses for official DINOv2 files); the ONNX "
        "graph holds the table resampled once at export (the TorchScript exporter cannot trace the bicubic "
        "`scale_factor` call, and with the input size fixed the table is a constant: ONNX Runtime skips "
        "this step, under a millisecond). *pos diff* is vista's "
        "resampled `[256,384]` table against PyTorch's.",
        "",
        "Times are per call (one batch), median and 10th-90th percentile over the timed calls after warm-up; "
        "images/s = batch / median. Each (engine, workload) runs in a fresh process per round, rounds "
        "interleaved with the engine order rotated. Peak RSS is the whole process (interpreter, libraries, "
        "model load included) that ran only that workload. *vs vista* is vista's median over that engine's: "
        "below 1 means vista is faster. *max abs diff* compares the first call's CLS features with PyTorch's "
        "stored ones. *others*: cores used by other processes on the machine during that engine's runs (from "
        "`/proc/stat`, mean over rounds; 0 = the machine was otherwise idle)." + meta["quiet_note"],
        "",
    ]
    names = {k: MODELS[k][3] for k in MODELS}
    lines += benchlib.image_tables(
        by, meta, ENGINES, ENGINE_NAMES, WORKLOADS, names, "224×224",
        diff_note=lambda r: f" (pos diff {r['pos_max_abs_diff']:.1e})" if r.get("pos_max_abs_diff") is not None else "")
    lines += benchlib.setup_notes(meta["setup"], names, "`torch.onnx.export`, opset 17, `dynamo=False`, dynamic batch",
                                  "max |CLS| of PyTorch's batch-32 outputs", names)
    return "\n".join(lines + [END]) + "\n"


SPEC = benchlib.WorkloadBench(
    script="bench_dino.py", description=__doc__.split("\n")[0], engines=ENGINES, names=ENGINE_NAMES, workloads=WORKLOADS, full=FULL_ITERS,
    quick=QUICK_ITERS, rounds=2, packages=PACKAGES, example="bench_dino",
    vista_args=lambda args, wl: ["--model", paths(args.out)[WORKLOADS[wl][0]], "--heads", MODELS[WORKLOADS[wl][0]][2],
                                 "--inputs", paths(args.out)["inputs"]],
    setup_needed=lambda args: not setup_complete(args.out),
    setup_cmd=lambda args: [args.python, pathlib.Path(__file__).resolve(), "--worker", "setup", "--out", args.out,
                            "--threads", args.threads],
    worker=worker, setup_worker=setup, render=render, begin=BEGIN, end=END,
    meta_extra=lambda args: dict(setup=json.loads(paths(args.out)["setup"].read_text())),
    describe=lambda r: f", pos diff {r['pos_max_abs_diff']:.2e}" if r.get("pos_max_abs_diff") is not None else "",
    columns=(("img/s", 8, lambda r: f"{r['items_per_s']:.1f}"),),
)


if __name__ == "__main__":
    sys.exit(benchlib.workload_main(SPEC))
