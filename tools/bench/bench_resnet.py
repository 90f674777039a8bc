"""CNN encoders: CLIP RN50 and DINO's ResNet-50 on CPU, vista vs PyTorch vs ONNX Runtime, one command.

Same models (random weights in the reference architectures: open_clip's `RN50` image tower and
torchvision's `resnet50` with `fc` = Identity as DINO's `resnet50`), saved once in the references' own
formats (open_clip's `open_clip_config.json` + `open_clip_model.safetensors`; a `torch.save`d state dict as
`dino_resnet50_pretrain.pth` is), same inputs (read by every engine from one safetensors file), same thread
count, same iteration counts, every (engine, workload) pair in its own fresh process (its own peak RSS).

Workloads: the image embedding of 1 or 32 preprocessed 224x224 images:

* ``cliprn50_b1`` / ``cliprn50_b32``: CLIP RN50 (`model.encode_image`, attention pool included, 1024-d);
* ``dinorn50_b1`` / ``dinorn50_b32``: DINO ResNet-50 (the 2048-d pooled feature DINO evaluates).

    python tools/bench/bench_resnet.py                         # full run, writes BENCHMARKS.md
    python tools/bench/bench_resnet.py --quick --no-write      # smoke test

The same file is the set-up, PyTorch and ONNX Runtime worker (``--worker setup|torch|ort``).
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (stdlib only)
from benchlib import fmt_ms  # noqa: E402

MODELS = {"cliprn50": "CLIP RN50 (open_clip `RN50`)", "dinorn50": "DINO ResNet-50 (torchvision `resnet50`)"}
WORKLOADS = {f"{m}_b{b}": (m, b) for m in MODELS for b in (1, 32)}
ENGINES = ("vista", "torch", "ort")
ENGINE_NAMES = {"vista": "vista", "torch": "PyTorch", "ort": "ONNX Runtime"}
FULL_ITERS = {"cliprn50_b1": (3, 30), "cliprn50_b32": (1, 4), "dinorn50_b1": (3, 30), "dinorn50_b32": (1, 4)}
QUICK_ITERS = {w: (1, 2) for w in WORKLOADS}
TITLE = "## CNN encoders on CPU: vista vs PyTorch vs ONNX Runtime"
BEGIN, END = "<!-- bench_resnet:begin -->", "<!-- bench_resnet:end -->"
PACKAGES = ("torch", "torchvision", "open_clip_torch", "onnxruntime", "onnx", "numpy", "safetensors")
THREADS = ["vista `RAYON_NUM_THREADS`", "PyTorch `torch.set_num_threads`, `set_num_interop_threads(1)`",
           "ONNX Runtime `intra_op_num_threads`, `inter_op_num_threads=1`, sequential, `ORT_ENABLE_ALL`"]
SIZE = 224
N_IMAGES = 32
SEED = 20261205


def paths(out: pathlib.Path) -> dict:
    return dict(cliprn50=out / "clip_rn50_random" / "open_clip_model.safetensors",
                cliprn50_config=out / "clip_rn50_random" / "open_clip_config.json",
                dinorn50=out / "dino_resnet50_random.pth",
                onnx_cliprn50=out / "resnet-onnx" / "clip_rn50.onnx", onnx_dinorn50=out / "resnet-onnx" / "dino_rn50.onnx",
                inputs=out / "resnet-inputs.safetensors", setup=out / "resnet_setup.json")


def setup_complete(out: pathlib.Path) -> bool:
    p = paths(out)
    return all(p[k].exists() for k in ("cliprn50", "dinorn50", "inputs", "setup"))


def _quiet():
    import warnings

    warnings.simplefilter("ignore")


def build_torch(key: str, p: dict, load: bool = True):
    """The reference module whose forward is the workload: open_clip RN50's `visual` (with its
    weights from the open_clip file), or torchvision's resnet50 with fc = Identity."""
    import torch

    _quiet()
    if key == "cliprn50":
        import open_clip

        model = open_clip.create_model("RN50", pretrained=None)
        if load:
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(p["cliprn50"])))
        return model.visual.eval()
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    model.fc = torch.nn.Identity()
    if load:
        model.load_state_dict(torch.load(str(p["dinorn50"]), map_location="cpu"), strict=False)
    return model.eval()


def randomise(model, seed: int) -> None:
    """Every BatchNorm's statistics and affine terms random (no norm can be skipped unnoticed), the
    residual branches' last γ small as a trained network's, so activations stay O(1)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                gamma = 0.2 if name.endswith("bn3") and "layer" in name else 1.0
                m.weight.copy_(gamma * (1 + 0.1 * torch.randn(c, generator=g)))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(1 + 0.2 * torch.rand(c, generator=g))


def setup(args) -> int:
    import numpy as np
    import onnxruntime as ort
    import torch
    from safetensors.numpy import save_file
    from safetensors.torch import save_file as save_torch

    benchlib.torch_threads(args.threads)
    p = paths(args.out)
    p["cliprn50"].parent.mkdir(parents=True, exist_ok=True)
    p["onnx_cliprn50"].parent.mkdir(parents=True, exist_ok=True)
    info = {"export": {}, "ort_vs_torch": {}, "max_abs": {}}
    rng = np.random.default_rng(SEED)
    raw = rng.integers(0, 256, (N_IMAGES, SIZE, SIZE, 3)).astype(np.float32) / 255.0
    mean, std = np.array((0.48145466, 0.4578275, 0.40821073), np.float32), np.array((0.26862954, 0.26130258, 0.27577711), np.float32)
    pixels = np.ascontiguousarray(((raw - mean) / std).transpose(0, 3, 1, 2), dtype=np.float32)
    x = torch.from_numpy(pixels)
    tensors = {"pixel_values": pixels}
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

    import open_clip

    torch.manual_seed(SEED)
    clip = open_clip.create_model("RN50", pretrained=None)
    randomise(clip.visual, SEED)
    save_torch({k: v.contiguous() for k, v in clip.state_dict().items()}, str(p["cliprn50"]))
    cfg = open_clip.get_model_config("RN50")
    p["cliprn50_config"].write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}, indent=2))
    torch.manual_seed(SEED + 1)
    rn = build_torch("dinorn50", p, load=False)
    randomise(rn, SEED + 1)
    torch.save({k: v for k, v in rn.state_dict().items()}, p["dinorn50"])

    for key in MODELS:
        model = build_torch(key, p)
        with torch.inference_mode():
            out, out_b1 = model(x).numpy(), model(x[:1]).numpy()
        tensors[key], tensors[f"{key}_b1"] = out, out_b1
        info["max_abs"][key] = float(np.abs(out).max())
        print(f"{key}: {sum(v.numel() for v in model.state_dict().values()) / 1e6:.1f} M values, output {out.shape}, "
              f"max|out| {info['max_abs'][key]:.2f}", flush=True)
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                torch.onnx.export(model, (x[:2],), str(p[f"onnx_{key}"]), opset_version=17, dynamo=False,
                                  do_constant_folding=True, input_names=["pixel_values"], output_names=["out"],
                                  dynamic_axes={"pixel_values": {0: "batch"}, "out": {0: "batch"}})
            sess = ort.InferenceSession(str(p[f"onnx_{key}"]), so, providers=["CPUExecutionProvider"])
            diff = max(float(np.abs(sess.run(None, {"pixel_values": pixels})[0] - out).max()),
                       float(np.abs(sess.run(None, {"pixel_values": pixels[:1]})[0] - out_b1).max()))
            info["export"][key] = dict(ok=True, seconds=round(time.perf_counter() - t0, 1),
                                       mb=round(p[f"onnx_{key}"].stat().st_size / 2**20, 1))
            info["ort_vs_torch"][key] = diff
            print(f"  exported in {time.perf_counter() - t0:.1f} s, ORT vs PyTorch max|diff| {diff:.2e}", flush=True)
        except Exception as e:  # noqa: BLE001 - recorded in the report
            info["export"][key] = dict(ok=False, seconds=round(time.perf_counter() - t0, 1),
                                       error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            p[f"onnx_{key}"].unlink(missing_ok=True)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(p["inputs"]))
    p["setup"].write_text(json.dumps(info, indent=2) + "\n")
    return 0


def worker(args) -> int:
    import numpy as np
    from safetensors.numpy import load_file

    _quiet()
    key, batch = WORKLOADS[args.workload]
    p = paths(args.out)
    data = load_file(str(p["inputs"]))
    x = np.ascontiguousarray(data["pixel_values"][:batch])
    ref = data[f"{key}_b1"] if batch == 1 else data[key][:batch]
    t0 = time.perf_counter()
    if args.worker == "torch":
        extra = benchlib.torch_threads(args.threads)
        import torch

        model = build_torch(key, p)
        xt = torch.from_numpy(x)

        def run():
            with torch.inference_mode():
                return model(xt).numpy()
    else:
        path = p[f"onnx_{key}"]
        if not path.exists():
            raise SystemExit(f"{path.name} is missing (its export failed: see {p['setup'].name})")
        sess, extra = benchlib.ort_session(path, args.threads)

        def run():
            return sess.run(None, {"pixel_values": x})[0]
    return benchlib.measure(args, run, ref, t0, batch, extra)


def render(results, meta) -> str:
    by = benchlib.by_key(results)
    lines = [
        *benchlib.header_lines(meta, "bench_resnet.py", THREADS, TITLE, begin=BEGIN),
        f"What is measured ({benchlib.RANDOM_WEIGHTS}): the image embedding of 1 or 32 preprocessed 224×224 "
        "images (`[B,3,224,224]`, uniform random 8-bit RGB normalised with CLIP's mean / std, read by every "
        "engine from `bench-out/resnet-inputs.safetensors`). CLIP RN50: open_clip's `RN50` (`ModifiedResNet`, "
        "attention pool, 1024-d), its `visual` module in PyTorch, `ClipModel::encode_image` in vista (loaded from "
        "the open_clip files). DINO ResNet-50: torchvision's `resnet50` with `fc` = Identity (2048-d), vista's "
        "`Backbone::forward(..).cls()` on the same pixels channels-last (converted once, untimed) from the "
        "`torch.save`d state dict. Every BatchNorm's statistics and affine terms are random. ONNX Runtime runs "
        "the same modules exported with `torch.onnx.export` (opset 17, TorchScript exporter, dynamic batch).",
        "",
        "Times are per call (one batch), median and 10th-90th percentile over the timed calls after warm-up; "
        "images/s = batch / median. Each (engine, workload) runs in a fresh process per round, rounds "
        "interleaved with the engine order rotated. Peak RSS is the whole process that ran only that workload. "
        "*vs vista* is vista's median over that engine's: below 1 means vista is faster. *max abs diff* compares "
        "the first call's output with PyTorch's stored one. *others*: cores used by other processes during "
        "that engine's runs." + meta["quiet_note"],
        "",
    ]
    lines += benchlib.image_tables(by, meta, ENGINES, ENGINE_NAMES, WORKLOADS, MODELS, "224×224")
    lines += benchlib.setup_notes(meta["setup"], MODELS, "`torch.onnx.export`, opset 17, `dynamo=False`, dynamic batch",
                                  "max |output| of PyTorch's batch-32 outputs", MODELS)
    return "\n".join(lines + [END]) + "\n"


SPEC = benchlib.WorkloadBench(
    script="bench_resnet.py", description=__doc__.split("\n")[0], engines=ENGINES, names=ENGINE_NAMES,
    workloads=WORKLOADS, full=FULL_ITERS, quick=QUICK_ITERS, rounds=2, packages=PACKAGES, example="bench_resnet",
    vista_args=lambda args, wl: ["--model", paths(args.out)[WORKLOADS[wl][0]], "--inputs", paths(args.out)["inputs"]],
    setup_needed=lambda args: not setup_complete(args.out),
    setup_cmd=lambda args: [args.python, pathlib.Path(__file__).resolve(), "--worker", "setup", "--out", args.out,
                            "--threads", args.threads],
    worker=worker, setup_worker=setup, render=render, begin=BEGIN, end=END,
    meta_extra=lambda args: dict(setup=json.loads(paths(args.out)["setup"].read_text())),
    columns=(("img/s", 8, lambda r: f"{r['items_per_s']:.1f}"),),
)


if __name__ == "__main__":
    sys.exit(benchlib.workload_main(SPEC))
