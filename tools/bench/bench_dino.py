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

import argparse
import datetime as _dt
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from benchlib import versions as benchlib_versions, vm_hwm_mb, write_marked_section  # noqa: E402
from bench_clip import fmt_ms, loadavg, machine_info, percentile  # noqa: E402  (stdlib only)
from bench_index import cpu_totals, wait_quiet  # noqa: E402  (stdlib only)

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
PY_ENV_DROP = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
BEGIN, END = "<!-- bench_dino:begin -->", "<!-- bench_dino:end -->"

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

    _quiet()
    torch.set_num_threads(args.threads)
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
    threads = args.threads
    key, batch = WORKLOADS[args.workload]
    p = paths(args.out)
    data = load_file(str(p["inputs"]))
    x = np.ascontiguousarray(data["pixel_values"][:batch])
    ref = data[f"cls_{key}_b1"] if batch == 1 else data[f"cls_{key}"][:batch]

    t0 = time.perf_counter()
    if args.worker == "torch":
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        model = build_torch(key, p[key])
        xt = torch.from_numpy(x)

        def run():
            with torch.inference_mode():
                return model(xt).numpy()

        extra = dict(torch_threads=torch.get_num_threads(), interop_threads=torch.get_num_interop_threads(),
                     fused_attn=bool(getattr(model.blocks[0].attn, "fused_attn", False)),
                     omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))
    elif args.worker == "ort":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if os.environ.get("BENCH_PASSIVE_WAIT") == "1":
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = p[f"onnx_{key}"]
        if not path.exists():
            raise SystemExit(f"{path.name} is missing (its export failed: see {p['setup'].name})")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

        def run():
            return sess.run(None, {"pixel_values": x})[0]

        extra = dict(onnx=path.name, providers=sess.get_providers(),
                     allow_spinning=os.environ.get("BENCH_PASSIVE_WAIT") != "1")
    else:
        raise SystemExit(f"unknown worker {args.worker}")
    load_s = time.perf_counter() - t0

    first = run()
    diff = float(np.abs(first - ref).max())
    for _ in range(1, args.warmup):
        run()
    ms = []
    for _ in range(args.iters):
        t = time.perf_counter()
        run()
        ms.append((time.perf_counter() - t) * 1e3)
    times_ms = list(ms)
    ms.sort()
    median = percentile(ms, 0.5)
    print(json.dumps(dict(
        engine=args.worker, workload=args.workload, batch=batch, median_ms=median, p10=percentile(ms, 0.1),
        p90=percentile(ms, 0.9), items_per_s=batch * 1e3 / median, max_abs_diff_vs_torch=diff,
        iters=args.iters, warmup=max(1, args.warmup), load_s=load_s, peak_rss_mb=vm_hwm_mb(), threads=threads,
        times_ms=times_ms, **extra,
    )), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------
# Orchestrator
# ----------------------------------------------------------------------------------------------
def versions(python: str) -> dict:
    return benchlib_versions(
        python, ("torch", "timm", "onnxruntime", "onnx", "numpy", "safetensors"), ("candle-core", "gemm"), REPO_ROOT,
    )


def run_child(cmd, env) -> tuple[list, float, int, float]:
    """Runs one engine process; returns its JSON lines, its own peak RSS (MB), exit code and the
    cores other processes used meanwhile (machine busy time from /proc/stat minus the child's)."""
    b0, j0 = cpu_totals()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    lines = []
    for line in proc.stdout:
        line = line.strip()
        if line.startswith("{"):
            lines.append(json.loads(line))
        elif line:
            print(f"    {line}", file=sys.stderr)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    b1, j1 = cpu_totals()
    machine = (b1 - b0) / max(1, j1 - j0) * (os.cpu_count() or 1)
    others = max(0.0, machine - (ru.ru_utime + ru.ru_stime) / max(wall, 1e-9))
    return lines, ru.ru_maxrss / 1024.0, os.waitstatus_to_exitcode(status), others


def merge(rows) -> dict:
    ms = sorted(t for r in rows for t in r["times_ms"])
    median = percentile(ms, 0.5)
    pos = [r["pos_max_abs_diff"] for r in rows if r.get("pos_max_abs_diff") is not None]
    return dict(
        rows[0], median_ms=median, p10=percentile(ms, 0.1), p90=percentile(ms, 0.9), min_ms=ms[0],
        items_per_s=rows[0]["batch"] * 1e3 / median, iters=len(ms), rounds=len(rows),
        round_medians_ms=[r["median_ms"] for r in rows],
        max_abs_diff_vs_torch=max(r["max_abs_diff_vs_torch"] for r in rows),
        pos_max_abs_diff=max(pos) if pos else None,
        rss_mb=max(r["rss_mb"] for r in rows), load_s=percentile(sorted(r["load_s"] for r in rows), 0.5),
        times_ms=ms, others=sum(r["others"] for r in rows) / len(rows), round_others=[r["others"] for r in rows],
    )


def render(results, meta) -> str:
    by = {(r["engine"], r["workload"]): r for r in results}
    ver, m, s = meta["versions"], meta["machine"], meta["setup"]
    ex = s.get("export", {})
    lines = [
        BEGIN,
        "<!-- Generated by tools/bench/bench_dino.py; edit outside the markers. -->",
        "",
        "## DINO / DINOv2 on CPU: vista vs PyTorch vs ONNX Runtime",
        "",
        f"Run: {meta['date']} · command: `{meta['command']}` ({meta['wall_s']:.0f} s)",
        "",
        f"Machine: **{m['cpu']}** (family {m['cpu_family']}, model {m['cpu_model']}), {m['cpus']} CPUs, "
        f"{m['hypervisor'] + ' VM, ' if m['hypervisor'] else ''}SIMD: {m['simd']}, L2 {m['l2']}, L3 {m['l3']}, "
        f"{m['mem_gb']} GB RAM, {m['os']}, Linux {m['kernel']}. Load average before / after: "
        f"{meta['load_before']} / {meta['load_after']}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in ver.items() if v) + ".",
        "",
        f"Threads: {meta['threads']} per engine (vista `RAYON_NUM_THREADS={meta['threads']}`; PyTorch "
        f"`torch.set_num_threads({meta['threads']})`, `set_num_interop_threads(1)`; ONNX Runtime "
        f"`intra_op_num_threads={meta['threads']}`, `inter_op_num_threads=1`, sequential, `ORT_ENABLE_ALL`). "
        + meta["env_note"],
        "",
        "What is measured (float32, CPU, **random weights** in the official architectures: no checkpoint "
        "is reachable here; the cost does not depend on the values): the CLS feature (after the final "
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
    # Summary table: one row per workload, images/s and peak RSS per engine.
    present_e = [e for e in ENGINES if any((e, w) in by for w in WORKLOADS)]
    lines += ["### Summary", "",
              "| model | batch | " + " | ".join(f"{ENGINE_NAMES[e]} ms (img/s)" for e in present_e) + " | "
              + " | ".join(f"{ENGINE_NAMES[e]} RSS MB" for e in present_e) + " | vista max abs diff |",
              "|---|---:|" + "---:|" * (2 * len(present_e) + 1)]
    for wl, (key, batch) in WORKLOADS.items():
        if not any((e, wl) in by for e in present_e):
            continue
        cells = [f"**{fmt_ms(by[(e, wl)]['median_ms'])}** ({by[(e, wl)]['items_per_s']:.1f})" if (e, wl) in by else "—"
                 for e in present_e]
        rss = [f"{by[(e, wl)]['rss_mb']:.0f}" if (e, wl) in by else "—" for e in present_e]
        v = by.get(("vista", wl))
        lines.append(f"| {MODELS[key][3]} | {batch} | " + " | ".join(cells) + " | " + " | ".join(rss) + " | "
                     + (f"{v['max_abs_diff_vs_torch']:.1e}" if v else "—") + " |")
    lines.append("")
    for wl, (key, batch) in WORKLOADS.items():
        present = [e for e in ENGINES if (e, wl) in by]
        notes = [f for f in meta["failures"] if f.split("/")[1].split(" ")[0] == wl]
        if not present and not notes:
            continue
        lines += [f"### {MODELS[key][3]}, batch {batch}, 224×224", ""]
        if present:
            it = by[(present[0], wl)]
            lines += [f"`{wl}`: {it['iters']} timed calls per engine in {it['rounds']} round"
                      f"{'s' if it['rounds'] != 1 else ''} (warm-up {it['warmup']} per process).", ""]
        lines += ["| engine | median ms | p10-p90 ms | images/s | vs vista | peak RSS MB | load s | max abs diff "
                  "| others | per-round medians ms (others) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        v = by.get(("vista", wl))
        for e in present:
            r = by[(e, wl)]
            diff = f"{r['max_abs_diff_vs_torch']:.1e}"
            if r.get("pos_max_abs_diff") is not None:
                diff += f" (pos diff {r['pos_max_abs_diff']:.1e})"
            ro = r.get("round_others") or [None] * len(r["round_medians_ms"])
            lines.append(
                f"| {ENGINE_NAMES[e]} | **{fmt_ms(r['median_ms'])}** | {fmt_ms(r['p10'])}-{fmt_ms(r['p90'])} | "
                f"{r['items_per_s']:.1f} | {(v['median_ms'] / r['median_ms']) if v else float('nan'):.2f} | "
                f"{r['rss_mb']:.0f} | {r['load_s']:.2f} | {diff} | {r['others']:.2f} | "
                + ", ".join(fmt_ms(x) + (f" ({o:.1f})" if o is not None else "")
                            for x, o in zip(r["round_medians_ms"], ro)) + " |")
        for f in notes:
            lines.append(f"| {ENGINE_NAMES[f.split('/')[0]]} | failed: {f} | | | | | | | | |")
        lines.append("")
    exports = []
    for key in MODELS:
        e = ex.get(key)
        if not e:
            continue
        if e["ok"]:
            exports.append(f"{MODELS[key][3]} {e['mb']} MB in {e['seconds']} s (ORT vs PyTorch max|diff| "
                           f"{s['ort_vs_torch'][key]:.1e})")
        else:
            exports.append(f"{MODELS[key][3]} **failed** after {e['seconds']} s: `{e['error']}`")
    lines += ["ONNX exports (`torch.onnx.export`, opset 17, `dynamo=False`, dynamic batch): " + "; ".join(exports)
              + ".", "",
              "Output magnitudes (max |CLS| of PyTorch's batch-32 outputs): " + ", ".join(
                  f"{MODELS[k][3]} {v:.2f}" for k, v in s.get("max_abs", {}).items()) + ".", "", END]
    return "\n".join(lines) + "\n"


def orchestrate(args) -> int:
    python = args.python or sys.executable
    out = args.out
    engines = [e for e in args.engines.split(",") if e]
    workloads = [w for w in args.workloads.split(",") if w]
    for e in engines:
        if e not in ENGINES:
            raise SystemExit(f"unknown engine {e} ({', '.join(ENGINES)})")
    for w in workloads:
        if w not in WORKLOADS:
            raise SystemExit(f"unknown workload {w} ({', '.join(WORKLOADS)})")
    iters = dict(QUICK_ITERS if args.quick else FULL_ITERS)
    if args.iters is not None:
        iters = {w: (iters[w][0], args.iters) for w in iters}
    if args.warmup is not None:
        iters = {w: (args.warmup, iters[w][1]) for w in iters}

    t_start = time.time()
    base_env = dict(os.environ)
    py_env = {k: v for k, v in base_env.items() if k not in PY_ENV_DROP}
    dropped = [f"{k}={base_env[k]}" for k in PY_ENV_DROP if k in base_env]
    py_env["OMP_NUM_THREADS"] = str(args.threads)
    py_env["MKL_NUM_THREADS"] = str(args.threads)
    vista_env = dict(base_env, RAYON_NUM_THREADS=str(args.threads))
    if args.passive_wait:
        py_env["OMP_WAIT_POLICY"] = "PASSIVE"
        py_env["BENCH_PASSIVE_WAIT"] = "1"
        vista_env["CANDLE_BARRIER_POOL_SPIN_LIMIT"] = "0"

    # (a) models, inputs, references, ONNX
    if args.setup or not setup_complete(out):
        print("== set-up: models, inputs, PyTorch references, ONNX exports", flush=True)
        subprocess.run([python, str(pathlib.Path(__file__).resolve()), "--worker", "setup", "--out", str(out),
                        "--threads", str(args.threads)], check=True, cwd=REPO_ROOT, env=py_env)
    setup_info = json.loads(paths(out)["setup"].read_text())

    # (b) vista binary
    exe = REPO_ROOT / "target" / "release" / "examples" / "bench_dino"
    if "vista" in engines and not args.no_build:
        print("== cargo build --release -p vista --example bench_dino", flush=True)
        subprocess.run(["cargo", "build", "--release", "-p", "vista", "--example", "bench_dino"],
                       check=True, cwd=REPO_ROOT)
    if "vista" in engines:
        # Run a private copy: a cargo build or test elsewhere in the workspace can replace the
        # example binary in target/ while the benchmark runs.
        import shutil

        private = out / "bench_dino.vista-bin"
        shutil.copy2(exe, private)
        exe = private
    env_note = (
        f"Environment: `OMP_NUM_THREADS={args.threads}`, `MKL_NUM_THREADS={args.threads}` for the Python engines"
        + (f"; removed {', '.join(f'`{d}`' for d in dropped)} from their environment (OpenBLAS only)" if dropped else "")
        + "."
        + (" **Passive waiting** (`--passive-wait`): PyTorch `OMP_WAIT_POLICY=PASSIVE`, ONNX Runtime "
           "`session.intra_op.allow_spinning=0`, vista `CANDLE_BARRIER_POOL_SPIN_LIMIT=0`."
           if args.passive_wait else " Default thread waiting (pool threads spin a while when idle).")
    )
    load_before = loadavg()
    rounds = max(1, args.rounds if args.rounds is not None else (1 if args.quick else 2))
    p = paths(out)
    samples, failures = {}, []
    for rnd in range(rounds):
        for wl in workloads:
            key, _ = WORKLOADS[wl]
            warmup, total = iters[wl]
            n = max(1, -(-total // rounds))
            # Rotate the engine order every round so no engine always runs first (or last).
            order = engines[rnd % len(engines):] + engines[: rnd % len(engines)]
            for e in order:
                if e == "vista":
                    cmd = [str(exe), "--model", str(p[key]), "--heads", str(MODELS[key][2]), "--inputs",
                           str(p["inputs"]), "--workload", wl, "--warmup", str(warmup), "--iters", str(n)]
                    env = vista_env
                else:
                    cmd = [python, str(pathlib.Path(__file__).resolve()), "--worker", e, "--workload", wl,
                           "--warmup", str(warmup), "--iters", str(n), "--threads", str(args.threads),
                           "--out", str(out)]
                    env = py_env
                print(f"== round {rnd + 1}/{rounds}: {wl} / {ENGINE_NAMES[e]} (warm-up {warmup}, {n} calls)", flush=True)
                if args.wait_quiet:
                    wait_quiet(args.wait_quiet, 0.3)
                rows, rss, rc, others = run_child(cmd, env)
                if rc != 0 or not rows:
                    tag = f"{e}/{wl} round {rnd + 1} (exit {rc})"
                    if not any(f.startswith(f"{e}/{wl} ") for f in failures):
                        failures.append(tag)
                    print(f"   FAILED (exit {rc})", flush=True)
                    continue
                for r in rows:
                    r["rss_mb"] = rss
                    r["others"] = others
                    samples.setdefault((e, wl), []).append(r)
                    pos = f", pos diff {r['pos_max_abs_diff']:.2e}" if r.get("pos_max_abs_diff") is not None else ""
                    print(f"   median {fmt_ms(r['median_ms'])} ms (p10 {fmt_ms(r['p10'])}, p90 {fmt_ms(r['p90'])}), "
                          f"peak RSS {rss:.0f} MB, load {r['load_s']:.2f} s, max|diff| vs torch "
                          f"{r['max_abs_diff_vs_torch']:.2e}{pos}, others {others:.2f} cores", flush=True)
    results = [merge(rs) for (e, wl), rs in sorted(
        samples.items(), key=lambda kv: (workloads.index(kv[0][1]), engines.index(kv[0][0])))]
    load_after = loadavg()

    print()
    print(f"{'workload':<11} {'engine':<13} {'median ms':>10} {'p10':>9} {'p90':>9} {'img/s':>8} {'RSS MB':>7} "
          f"{'vs vista':>9} {'max|diff|':>10} {'others':>7}")
    for wl in workloads:
        v = next((r for r in results if r["engine"] == "vista" and r["workload"] == wl), None)
        for r in (r for r in results if r["workload"] == wl):
            ratio = f"{v['median_ms'] / r['median_ms']:.2f}x" if v else "-"
            print(f"{wl:<11} {ENGINE_NAMES[r['engine']]:<13} {fmt_ms(r['median_ms']):>10} {fmt_ms(r['p10']):>9} "
                  f"{fmt_ms(r['p90']):>9} {r['items_per_s']:>8.1f} {r['rss_mb']:>7.0f} {ratio:>9} "
                  f"{r['max_abs_diff_vs_torch']:>10.2e} {r['others']:>7.2f}")
    print("(vs vista = vista median time / this engine's; < 1 means vista is faster)")

    command = args.command or "python tools/bench/bench_dino.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    meta = dict(
        date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), command=command.strip(),
        machine=machine_info(), versions=versions(python), threads=args.threads, env_note=env_note,
        load_before=load_before, load_after=load_after, setup=setup_info,
        wall_s=round(time.time() - t_start, 1), failures=failures,
        quiet_note=(f" Each process started once the others had used under 0.3 cores for 2 s, or after "
                    f"{args.wait_quiet:.0f} s of waiting (`--wait-quiet`)." if args.wait_quiet else ""),
    )
    (out / "bench_dino_results.json").write_text(json.dumps(dict(meta=meta, results=results), indent=2) + "\n")
    print(f"\nraw results: {out / 'bench_dino_results.json'} (wall {meta['wall_s']} s)")
    if failures:
        print("FAILED: " + ", ".join(failures), file=sys.stderr)
    if not args.no_write:
        write_marked_section(args.report, render(results, meta), BEGIN, END)
        print(f"report: {args.report}")
    return 1 if failures and not results else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=pathlib.Path, default=REPO_ROOT / "bench-out",
                    help="models, inputs and raw results folder (default bench-out/)")
    ap.add_argument("--threads", type=int, default=2, help="threads per engine (default 2)")
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma list of " + ",".join(ENGINES))
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list of " + ",".join(WORKLOADS))
    ap.add_argument("--quick", action="store_true", help="a few calls only (smoke test)")
    ap.add_argument("--iters", type=int, help="timed calls for every workload (overrides the defaults)")
    ap.add_argument("--warmup", type=int, help="warm-up calls for every workload")
    ap.add_argument("--rounds", type=int, help="fresh processes per engine and workload (default 2, --quick 1)")
    ap.add_argument("--passive-wait", action="store_true",
                    help="idle PyTorch/ORT/candle pool threads sleep instead of spinning (for a busy, shared machine)")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="on a shared machine, wait up to S seconds before each process for other processes to go idle")
    ap.add_argument("--setup", action="store_true", help="redo the models, inputs, references and ONNX exports")
    ap.add_argument("--python", help="interpreter for the set-up / PyTorch / ORT workers (default: this one)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build first")
    ap.add_argument("--no-write", action="store_true", help="do not write BENCHMARKS.md")
    ap.add_argument("--report", type=pathlib.Path, default=REPO_ROOT / "BENCHMARKS.md")
    ap.add_argument("--command", help=argparse.SUPPRESS)
    ap.add_argument("--worker", choices=("setup", "torch", "ort"), help=argparse.SUPPRESS)
    ap.add_argument("--workload", choices=tuple(WORKLOADS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker == "setup":
        return setup(args)
    if args.worker:
        args.warmup = 1 if args.warmup is None else args.warmup
        args.iters = 3 if args.iters is None else args.iters
        return worker(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
