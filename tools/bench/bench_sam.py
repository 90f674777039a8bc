"""SAM benchmark: vista vs PyTorch (segment_anything / mobile_sam) vs ONNX Runtime, one command.

Same models (random weights in the official architectures, saved once so vista loads the very
tensors PyTorch runs), same photo, same prompts, same thread count, same iteration counts. Every
(engine, workload) pair runs in its own fresh process, so the peak RSS reported is that
process's alone (``os.wait4`` rusage of that child).

Workloads (1024-pixel encoder input; the photo is 1536x1024, resized to 1024x683 and padded):

* ``enc_vit_b`` / ``enc_vit_t``: the image encoder of SAM ViT-B / MobileSAM (TinyViT) on the
  preprocessed [1,3,1024,1024] tensor (forward only; resize + normalise + pad timed apart);
* ``dec_point``: one point prompt, ``multimask_output=True`` (3 masks at the original size);
* ``dec_box64``: 64 box prompts in one batch, ``multimask_output=False`` (64 masks).

The decoder workloads start from the stored ViT-B image embedding (no encoder run).

    python tools/bench/bench_sam.py                 # full run (~10 min on 2 cores), writes BENCHMARKS.md
    python tools/bench/bench_sam.py --quick --no-write   # smoke test

Steps: (a) ``--worker setup`` (when anything in ``bench-out/`` is missing, or ``--setup``):
models, ONNX exports, the photo and PyTorch's reference outputs; (b) ``cargo build --release -p
vista --example bench_sam``; (c) each engine in its own subprocess; (d) a table on stdout, raw
results in ``bench-out/bench_sam_results.json`` and the report in ``BENCHMARKS.md`` (between the
``bench_sam`` markers; text outside them is kept).

The same file is also the set-up, PyTorch and ONNX Runtime worker (``--worker setup|torch|ort|ort_seq``).
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

# name: (kind, model / prompt)
WORKLOADS = {"enc_vit_b": ("encoder", "vit_b"), "enc_vit_t": ("encoder", "vit_t"),
             "dec_point": ("decoder", "point"), "dec_box64": ("decoder", "box64")}
TITLES = {
    "enc_vit_b": "Image encoder, SAM ViT-B, 1024×1024",
    "enc_vit_t": "Image encoder, MobileSAM (TinyViT), 1024×1024",
    "dec_point": "Mask decoder, 1 point, multimask (3 masks at 1536×1024)",
    "dec_box64": "Mask decoder, 64 boxes in one batch, single mask each (64 masks at 1536×1024)",
}
# ort_seq: the 64 boxes as 64 calls of batch 1 (how the official single-prompt export is used).
ENGINES = ("vista", "torch", "ort", "ort_seq")
ENGINE_NAMES = {"vista": "vista", "torch": "PyTorch", "ort": "ONNX Runtime",
                "ort_seq": "ONNX Runtime, 64 calls of 1 box"}
ENGINE_WORKLOADS = {"ort_seq": ("dec_box64",)}
# (warm-up per process, timed iterations in all) per workload; the timed iterations are split
# over the rounds (each round is a fresh process per engine).
FULL_ITERS = {"enc_vit_b": (1, 3), "enc_vit_t": (2, 9), "dec_point": (3, 30), "dec_box64": (1, 6)}
QUICK_ITERS = {"enc_vit_b": (1, 1), "enc_vit_t": (1, 2), "dec_point": (1, 3), "dec_box64": (1, 1)}
PY_ENV_DROP = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
BEGIN, END = "<!-- bench_sam:begin -->", "<!-- bench_sam:end -->"

PHOTO_SIZE = (1536, 1024)  # (W, H): a 3:2 photo with the long side over 1024
N_BOXES = 64
SEED = 20261127
POINT = (820.0, 540.0)  # (x, y) in the photo


def paths(out: pathlib.Path) -> dict:
    return dict(
        vit_b=out / "sam_vit_b_random.pth", vit_t=out / "mobile_sam_random.pt",
        photo=out / "sam-photo.png", inputs=out / "sam-inputs.safetensors",
        enc_onnx_vit_b=out / "sam-onnx" / "sam_vit_b_encoder.onnx",
        enc_onnx_vit_t=out / "sam-onnx" / "mobile_sam_encoder.onnx",
        dec_onnx_multi=out / "sam-onnx" / "sam_vit_b_decoder_multimask.onnx",
        dec_onnx_single=out / "sam-onnx" / "sam_vit_b_decoder_single.onnx",
        setup=out / "sam_setup.json",
    )


def setup_complete(out: pathlib.Path) -> bool:
    p = paths(out)
    return all(p[k].exists() for k in ("vit_b", "vit_t", "photo", "inputs", "setup"))


# ----------------------------------------------------------------------------------------------
# Models and prompts (shared by the set-up and the workers)
# ----------------------------------------------------------------------------------------------
def _quiet():
    import warnings

    warnings.simplefilter("ignore")


def build_torch(which: str, weights: pathlib.Path):
    """The reference model with the stored weights; `.eval()` after loading (TinyViT caches its
    attention biases in `eval()`)."""
    import torch

    _quiet()
    if which == "vit_b":
        from segment_anything import build_sam_vit_b

        sam = build_sam_vit_b()
    else:
        from mobile_sam import build_sam_vit_t

        sam = build_sam_vit_t()
    sam.load_state_dict(torch.load(str(weights), map_location="cpu"))
    return sam.eval()


def predictor_for(sam, which: str):
    if which == "vit_b":
        from segment_anything import SamPredictor
    else:
        from mobile_sam import SamPredictor
    return SamPredictor(sam)


def load_photo(out: pathlib.Path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(paths(out)["photo"]).convert("RGB"))


def torch_preprocess(sam, transform, image):
    """SamPredictor.set_image up to the encoder: ResizeLongestSide, to tensor, normalise, pad."""
    import torch

    x = torch.as_tensor(transform.apply_image(image)).permute(2, 0, 1).contiguous()[None]
    return sam.preprocess(x)


def numpy_preprocess(transform, image, size=1024):
    """The same with numpy after the reference resize (what an ONNX Runtime pipeline does)."""
    import numpy as np

    x = transform.apply_image(image).astype(np.float32)
    x = (x - np.array([123.675, 116.28, 103.53], np.float32)) / np.array([58.395, 57.12, 57.375], np.float32)
    h, w = x.shape[:2]
    out = np.zeros((1, 3, size, size), np.float32)
    out[0, :, :h, :w] = x.transpose(2, 0, 1)
    return out


def decoder_onnx_class():
    """`segment_anything.utils.onnx.SamOnnxModel` with its mask choice replaced by SamPredictor's
    (`multimask_output=True`: masks 1-3; `False`: mask 0) so every engine returns the same masks."""
    from segment_anything.utils.onnx import SamOnnxModel

    class SamOnnxPredictorMasks(SamOnnxModel):
        def __init__(self, model, multimask: bool):
            super().__init__(model, return_single_mask=True)
            self.multimask = multimask

        def select_masks(self, masks, iou_preds, num_points):
            if self.multimask:
                return masks[:, 1:, :, :], iou_preds[:, 1:]
            return masks[:, 0:1, :, :], iou_preds[:, 0:1]

    return SamOnnxPredictorMasks


# ----------------------------------------------------------------------------------------------
# Set-up worker: photo, weights, PyTorch references, ONNX exports
# ----------------------------------------------------------------------------------------------
def find_photo_source() -> pathlib.Path:
    """scikit-image's `coffee.png` (a real 600x400 photo) from an installed scikit-image."""
    cands = [pathlib.Path("/usr/lib/python3/dist-packages/skimage/data/coffee.png")]
    try:
        import skimage

        cands.insert(0, pathlib.Path(skimage.__file__).parent / "data" / "coffee.png")
    except ImportError:
        pass
    for c in cands:
        if c.exists():
            return c
    raise SystemExit("need scikit-image's data/coffee.png (pip install scikit-image)")


def setup(args) -> int:
    import numpy as np
    import torch
    from safetensors.numpy import save_file

    _quiet()
    torch.set_num_threads(args.threads)
    out = args.out
    p = paths(out)
    (out / "sam-onnx").mkdir(parents=True, exist_ok=True)
    info = {"photo_source": "", "export": {}, "ort_vs_torch": {}}

    # Photo: coffee.png upscaled (Lanczos) to 1536x1024.
    from PIL import Image

    src = find_photo_source()
    Image.open(src).convert("RGB").resize(PHOTO_SIZE, Image.LANCZOS).save(p["photo"])
    info["photo_source"] = f"scikit-image data/{src.name} {Image.open(src).size[0]}x{Image.open(src).size[1]}, " \
                           f"Lanczos-upscaled to {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}"
    image = load_photo(out)
    H, W = image.shape[:2]

    # Weights: default initialisation, seeded; ViT-B's zero-initialised positional tables get small
    # random values so the parity check exercises them.
    from segment_anything import build_sam_vit_b
    from mobile_sam import build_sam_vit_t

    torch.manual_seed(SEED)
    sam = build_sam_vit_b()
    with torch.no_grad():
        for name, prm in sam.image_encoder.named_parameters():
            if name == "pos_embed" or "rel_pos" in name:
                prm.copy_(torch.randn_like(prm) * 0.02)
    torch.save(sam.state_dict(), p["vit_b"])
    torch.manual_seed(SEED + 1)
    mobile = build_sam_vit_t()
    torch.save(mobile.state_dict(), p["vit_t"])
    del sam, mobile
    sam = build_torch("vit_b", p["vit_b"])
    mobile = build_torch("vit_t", p["vit_t"])

    # PyTorch references.
    rng = np.random.default_rng(SEED)
    bw = rng.uniform(0.1, 0.5, N_BOXES) * W
    bh = rng.uniform(0.1, 0.5, N_BOXES) * H
    x0 = rng.uniform(0, 1, N_BOXES) * (W - bw)
    y0 = rng.uniform(0, 1, N_BOXES) * (H - bh)
    boxes = np.stack([x0, y0, x0 + bw, y0 + bh], 1).astype(np.float32)
    point = np.array([POINT], np.float32)
    pred = predictor_for(sam, "vit_b")
    with torch.no_grad():
        pixels = torch_preprocess(sam, pred.transform, image)
        emb_b = sam.image_encoder(pixels)
        emb_t = mobile.image_encoder(pixels)
        set_features(pred, emb_b, (H, W))
        _, iou_p, low_p = pred.predict(point_coords=point, point_labels=np.array([1]), multimask_output=True)
        bt = pred.transform.apply_boxes_torch(torch.from_numpy(boxes), (H, W))
        _, iou_b, low_b = pred.predict_torch(None, None, boxes=bt, multimask_output=False)
    tensors = dict(
        pixel_values=pixels.numpy(), embeds_vit_b=emb_b.numpy(), embeds_vit_t=emb_t.numpy(),
        point=point, boxes=boxes, point_iou=iou_p[None].astype(np.float32), point_low_res=low_p[None].astype(np.float32),
        box_iou=iou_b.numpy(), box_low_res=low_b.numpy(),
    )
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(p["inputs"]))
    info["max_abs"] = {k: float(np.abs(v).max()) for k, v in tensors.items() if k not in ("point", "boxes")}
    print(f"references: embeds {tuple(emb_b.shape)}, point low-res {low_p.shape}, boxes low-res {tuple(low_b.shape)}",
          flush=True)

    # ONNX exports (legacy TorchScript exporter, opset 17, as scripts/export_onnx_model.py).
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads

    def export(key, module, inputs, names, outputs, dynamic, check):
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                torch.onnx.export(module, inputs, str(p[key]), opset_version=17, dynamo=False,
                                  do_constant_folding=True, input_names=names, output_names=outputs,
                                  dynamic_axes=dynamic)
            sess = ort.InferenceSession(str(p[key]), so, providers=["CPUExecutionProvider"])
            diff = check(sess)
            info["export"][key] = dict(ok=True, seconds=round(time.perf_counter() - t0, 1),
                                       mb=round(p[key].stat().st_size / 2**20, 1))
            info["ort_vs_torch"][key] = diff
            print(f"exported {p[key].name} in {time.perf_counter() - t0:.1f} s, ORT vs PyTorch max|diff| {diff:.2e}",
                  flush=True)
        except Exception as e:  # noqa: BLE001 - recorded in the report
            info["export"][key] = dict(ok=False, seconds=round(time.perf_counter() - t0, 1),
                                       error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            print(f"export of {key} FAILED: {info['export'][key]['error']}", flush=True)
            p[key].unlink(missing_ok=True)

    for key, model, ref in (("enc_onnx_vit_b", sam, emb_b), ("enc_onnx_vit_t", mobile, emb_t)):
        export(key, model.image_encoder, (pixels,), ["image"], ["image_embeddings"], None,
               lambda s, ref=ref: float(np.abs(s.run(None, {"image": pixels.numpy()})[0] - ref.numpy()).max()))
    cls = decoder_onnx_class()
    dyn = {"point_coords": {0: "batch", 1: "num_points"}, "point_labels": {0: "batch", 1: "num_points"},
           "masks": {0: "batch"}, "iou_predictions": {0: "batch"}, "low_res_masks": {0: "batch"}}
    dummy = (emb_b, torch.randint(0, 1024, (2, 5, 2)).float(), torch.randint(0, 4, (2, 5)).float(),
             torch.zeros(1, 1, 256, 256), torch.tensor([0.0]), torch.tensor([H, W], dtype=torch.float32))
    names = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]
    dec_outs = ["masks", "iou_predictions", "low_res_masks"]
    export("dec_onnx_multi", cls(sam, True), dummy, names, dec_outs, dyn,
           lambda s: float(np.abs(s.run(None, ort_decoder_feed(tensors["embeds_vit_b"], "point", point, boxes, (H, W)))[2]
                                  - tensors["point_low_res"]).max()))
    export("dec_onnx_single", cls(sam, False), dummy, names, dec_outs, dyn,
           lambda s: float(np.abs(s.run(None, ort_decoder_feed(tensors["embeds_vit_b"], "box64", point, boxes, (H, W)))[2]
                                  - tensors["box_low_res"]).max()))
    p["setup"].write_text(json.dumps(info, indent=2) + "\n")
    return 0


def set_features(pred, features, original_size):
    """SamPredictor state as set_image leaves it, from a stored embedding."""
    pred.reset_image()
    pred.original_size = tuple(original_size)
    pred.input_size = pred.transform.get_preprocess_shape(*original_size, pred.transform.target_length)
    pred.features = features
    pred.is_image_set = True


def ort_decoder_feed(emb, prompt, point, boxes, size, box_slice=slice(None)):
    """The decoder inputs as the official ONNX example builds them: a point gets a padding point
    (label -1), as SamPredictor adds one; a box is two corner points labelled 2 and 3."""
    import numpy as np
    from segment_anything.utils.transforms import ResizeLongestSide

    tr = ResizeLongestSide(1024)
    if prompt == "point":
        coords = np.concatenate([point, np.zeros((1, 2), np.float32)])[None]
        labels = np.array([[1, -1]], np.float32)
    else:
        b = boxes[box_slice]
        coords = b.reshape(-1, 2, 2)
        labels = np.tile(np.array([[2, 3]], np.float32), (len(b), 1))
    coords = tr.apply_coords(coords.astype(np.float64), size).astype(np.float32)
    return dict(image_embeddings=emb, point_coords=coords, point_labels=labels,
                mask_input=np.zeros((1, 1, 256, 256), np.float32), has_mask_input=np.zeros(1, np.float32),
                orig_im_size=np.array(size, np.float32))


# ----------------------------------------------------------------------------------------------
# PyTorch / ONNX Runtime workers (run in their own process)
# ----------------------------------------------------------------------------------------------
def worker(args) -> int:
    import numpy as np
    from safetensors.numpy import load_file

    _quiet()
    threads = args.threads
    kind, what = WORKLOADS[args.workload]
    p = paths(args.out)
    data = load_file(str(p["inputs"]))
    image = load_photo(args.out)
    size = tuple(image.shape[:2])
    point, boxes = data["point"], data["boxes"]
    pixels = np.ascontiguousarray(data["pixel_values"])
    emb_b = np.ascontiguousarray(data["embeds_vit_b"])
    pre = None  # preprocessing closure (encoder workloads), timed apart

    t0 = time.perf_counter()
    if args.worker == "torch":
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        sam = build_torch(what if kind == "encoder" else "vit_b", p["vit_t" if what == "vit_t" else "vit_b"])
        pred = predictor_for(sam, what if kind == "encoder" else "vit_b")
        if kind == "encoder":
            x = torch.from_numpy(pixels)
            ref = data[f"embeds_{what}"]

            def run():
                with torch.inference_mode():
                    return sam.image_encoder(x).numpy()

            def torch_pre():
                with torch.inference_mode():
                    return torch_preprocess(sam, pred.transform, image).numpy()
            pre = torch_pre
        else:
            set_features(pred, torch.from_numpy(emb_b), size)
            if what == "point":
                labels = np.array([1])

                def run():
                    masks, iou, low = pred.predict(point_coords=point, point_labels=labels, multimask_output=True)
                    return low[None]
                ref = data["point_low_res"]
            else:
                def run():
                    with torch.inference_mode():
                        bt = pred.transform.apply_boxes_torch(torch.from_numpy(boxes), size)
                        masks, iou, low = pred.predict_torch(None, None, boxes=bt, multimask_output=False)
                        return low.numpy()
                ref = data["box_low_res"]
        extra = dict(torch_threads=torch.get_num_threads(), interop_threads=torch.get_num_interop_threads(),
                     omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))
    elif args.worker in ("ort", "ort_seq"):
        import onnxruntime as ort
        from segment_anything.utils.transforms import ResizeLongestSide

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if os.environ.get("BENCH_PASSIVE_WAIT") == "1":
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if kind == "encoder":
            path = p[f"enc_onnx_{what}"]
        else:
            path = p["dec_onnx_multi" if what == "point" else "dec_onnx_single"]
        if not path.exists():
            raise SystemExit(f"{path.name} is missing (its export failed: see {p['setup'].name})")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        if kind == "encoder":
            tr = ResizeLongestSide(1024)
            ref = data[f"embeds_{what}"]

            def run():
                return sess.run(None, {"image": pixels})[0]

            def numpy_pre():
                return numpy_preprocess(tr, image)
            pre = numpy_pre
        else:
            # The prompt transform and the thresholding (`> 0`, as SamPredictor does) are in the call.
            if args.worker == "ort" or what == "point":
                def run():
                    masks, iou, low = sess.run(None, ort_decoder_feed(emb_b, what, point, boxes, size))
                    np.greater(masks, 0.0)
                    return low
            else:
                def run():
                    lows = []
                    for i in range(len(boxes)):
                        masks, iou, low = sess.run(None, ort_decoder_feed(emb_b, what, point, boxes, size, slice(i, i + 1)))
                        np.greater(masks, 0.0)
                        lows.append(low)
                    return np.concatenate(lows)
            ref = data["point_low_res" if what == "point" else "box_low_res"]
        extra = dict(onnx=path.name, providers=sess.get_providers(),
                     allow_spinning=os.environ.get("BENCH_PASSIVE_WAIT") != "1")
    else:
        raise SystemExit(f"unknown worker {args.worker}")
    load_s = time.perf_counter() - t0

    first = run()
    diff = float(np.abs(first - ref).max())
    pre_diff = float(np.abs(pre() - pixels).max()) if pre else None
    for _ in range(1, args.warmup):
        run()
    ms, pre_ms = [], []
    for _ in range(args.iters):
        t = time.perf_counter()
        run()
        ms.append((time.perf_counter() - t) * 1e3)
        if pre:
            t = time.perf_counter()
            pre()
            pre_ms.append((time.perf_counter() - t) * 1e3)
    times_ms = list(ms)
    ms.sort()
    median = percentile(ms, 0.5)
    print(json.dumps(dict(
        engine=args.worker, workload=args.workload, median_ms=median, p10=percentile(ms, 0.1),
        p90=percentile(ms, 0.9), max_abs_diff_vs_torch=diff, iters=args.iters, warmup=max(1, args.warmup),
        load_s=load_s, peak_rss_mb=vm_hwm_mb(), threads=threads, times_ms=times_ms,
        pre_times_ms=pre_ms, pre_max_abs_diff=pre_diff, **extra,
    )), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------
# Orchestrator
# ----------------------------------------------------------------------------------------------
def versions(python: str) -> dict:
    return benchlib_versions(
        python, ("torch", "segment-anything", "mobilesam-mirror", "onnxruntime", "onnx", "numpy", "pillow"),
        ("candle-core", "gemm"), REPO_ROOT,
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
    pre = sorted(t for r in rows for t in r.get("pre_times_ms") or [])
    median = percentile(ms, 0.5)
    return dict(
        rows[0], median_ms=median, p10=percentile(ms, 0.1), p90=percentile(ms, 0.9), min_ms=ms[0],
        iters=len(ms), rounds=len(rows), round_medians_ms=[r["median_ms"] for r in rows],
        max_abs_diff_vs_torch=max(r["max_abs_diff_vs_torch"] for r in rows),
        rss_mb=max(r["rss_mb"] for r in rows), load_s=percentile(sorted(r["load_s"] for r in rows), 0.5),
        pre_median_ms=percentile(pre, 0.5) if pre else None, times_ms=ms, pre_times_ms=pre,
        others=sum(r["others"] for r in rows) / len(rows), round_others=[r["others"] for r in rows],
    )


def render(results, meta) -> str:
    by = {(r["engine"], r["workload"]): r for r in results}
    ver, m, s = meta["versions"], meta["machine"], meta["setup"]
    ex = s.get("export", {})
    lines = [
        BEGIN,
        "<!-- Generated by tools/bench/bench_sam.py; edit outside the markers. -->",
        "",
        "## SAM on CPU: vista vs PyTorch vs ONNX Runtime",
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
        "is reachable here; the cost does not depend on the values). Models: `segment_anything."
        "build_sam_vit_b()` and `mobile_sam.build_sam_vit_t()`, seeded, saved with `torch.save(state_dict)` "
        "to `bench-out/sam_vit_b_random.pth` / `bench-out/mobile_sam_random.pt`, which vista loads as it loads "
        f"the official checkpoints. Photo: {s.get('photo_source', '?')} (`bench-out/sam-photo.png`), so the "
        "encoder input is the 1024×683 resize padded to 1024×1024.",
        "",
        "* **Encoder**: the image encoder's forward on the preprocessed `[1,3,1024,1024]` tensor PyTorch's "
        "`SamPredictor.set_image` builds (read by every engine from one file; vista converts it to its "
        "channels-last layout once, untimed). *preprocess ms* is timed apart on the decoded photo: resize of "
        "the long side to 1024 + normalise + pad (vista `Sam::preprocess`; PyTorch `ResizeLongestSide.apply_image` "
        "+ `Sam.preprocess`; ONNX Runtime the same resize + numpy normalise / pad).",
        "* **Decoder**: from the stored ViT-B image embedding, one prompt call up to thresholded masks at "
        "the photo's size: vista `Session::predict`; PyTorch `SamPredictor.predict` (point) / `predict_torch` "
        "with the 64 boxes through `transform.apply_boxes_torch` (boxes); ONNX Runtime: "
        "`segment_anything.utils.onnx.SamOnnxModel` (prompt encoder + mask decoder + upscaling to the "
        "original size) exported as `scripts/export_onnx_model.py` does, with two changes: its mask choice "
        "(`select_masks`) replaced by SamPredictor's (masks 1-3 for multimask, mask 0 otherwise), and a "
        "dynamic batch axis on the prompts so the 64 boxes go in one call; the prompt transform and the "
        "`> 0` thresholding are part of the timed call. *ONNX Runtime, 64 calls of 1 box* is the same "
        "model called once per box, as the official single-prompt export is used.",
        "",
        "Times are per call, median and 10th-90th percentile over the timed calls after warm-up; each "
        "(engine, workload) in a fresh process per round, rounds interleaved with the engine order rotated. "
        "Peak RSS is the whole process (interpreter, libraries, model load included) that ran only that "
        "workload. *vs vista* is vista's median over that engine's: below 1 means vista is faster. "
        "*max abs diff* compares the first call's output with PyTorch's stored one (encoder: the "
        "`[1,256,64,64]` embedding; decoder: the 256×256 low-resolution mask logits); *pre diff* is the "
        "preprocessed input against PyTorch's (normalised units; 1/58 is one 8-bit level). *others*: cores "
        "used by other processes on the machine during that engine's runs (from `/proc/stat`, mean over "
        "rounds; 0 = the machine was otherwise idle)." + meta["quiet_note"],
        "",
    ]
    for wl in WORKLOADS:
        present = [e for e in ENGINES if (e, wl) in by]
        notes = [f for f in meta["failures"] if f.split("/")[1].split(" ")[0] == wl]
        if not present and not notes:
            continue
        enc = WORKLOADS[wl][0] == "encoder"
        lines += [f"### {TITLES[wl]}", ""]
        if present:
            it = by[(present[0], wl)]
            lines += [f"`{wl}`: {it['iters']} timed calls per engine in {it['rounds']} round"
                      f"{'s' if it['rounds'] != 1 else ''} (warm-up {it['warmup']} per process).", ""]
        head = "| engine | median ms | p10-p90 ms | vs vista | peak RSS MB | load s | max abs diff | others |"
        rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
        if enc:
            head += " preprocess ms | pre diff |"
            rule += "---:|---:|"
        lines += [head + " per-round medians ms (others) |", rule + "---|"]
        v = by.get(("vista", wl))
        for e in present:
            r = by[(e, wl)]
            row = (f"| {ENGINE_NAMES[e]} | **{fmt_ms(r['median_ms'])}** | {fmt_ms(r['p10'])}-{fmt_ms(r['p90'])} | "
                   f"{(v['median_ms'] / r['median_ms']) if v else float('nan'):.2f} | {r['rss_mb']:.0f} | "
                   f"{r['load_s']:.2f} | {r['max_abs_diff_vs_torch']:.1e} | {r['others']:.2f} |")
            if enc:
                pm = r.get("pre_median_ms")
                pd = r.get("pre_max_abs_diff")
                row += f" {fmt_ms(pm) if pm is not None else '—'} | {f'{pd:.1e}' if pd is not None else '—'} |"
            ro = r.get("round_others") or [None] * len(r["round_medians_ms"])
            lines.append(row + " " + ", ".join(fmt_ms(x) + (f" ({o:.1f})" if o is not None else "")
                                               for x, o in zip(r["round_medians_ms"], ro)) + " |")
        for f in notes:
            lines.append(f"| {ENGINE_NAMES[f.split('/')[0]]} | failed: {f} | | | | | | |" + (" | |" if enc else "")
                         + " |")
        lines.append("")
    exports = []
    for key, label in (("enc_onnx_vit_b", "ViT-B encoder"), ("enc_onnx_vit_t", "MobileSAM encoder"),
                       ("dec_onnx_multi", "decoder, multimask"), ("dec_onnx_single", "decoder, single mask")):
        e = ex.get(key)
        if not e:
            continue
        if e["ok"]:
            exports.append(f"{label} {e['mb']} MB in {e['seconds']} s (ORT vs PyTorch max|diff| "
                           f"{s['ort_vs_torch'][key]:.1e})")
        else:
            exports.append(f"{label} **failed** after {e['seconds']} s: `{e['error']}`")
    lines += ["ONNX exports (`torch.onnx.export`, opset 17, `dynamo=False`): " + "; ".join(exports) + ".", "",
              "Output magnitudes (max |x| of PyTorch's outputs): " + ", ".join(
                  f"{k} {v:.2f}" for k, v in s.get("max_abs", {}).items()) + ".", "", END]
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

    # (a) models, photo, references, ONNX
    if args.setup or not setup_complete(out):
        print("== set-up: models, photo, PyTorch references, ONNX exports", flush=True)
        subprocess.run([python, str(pathlib.Path(__file__).resolve()), "--worker", "setup", "--out", str(out),
                        "--threads", str(args.threads)], check=True, cwd=REPO_ROOT, env=py_env)
    setup_info = json.loads(paths(out)["setup"].read_text())

    # (b) vista binary
    exe = REPO_ROOT / "target" / "release" / "examples" / "bench_sam"
    if "vista" in engines and not args.no_build:
        print("== cargo build --release -p vista --example bench_sam", flush=True)
        subprocess.run(["cargo", "build", "--release", "-p", "vista", "--example", "bench_sam"],
                       check=True, cwd=REPO_ROOT)

    if "vista" in engines:
        # Run a private copy: a cargo build or test elsewhere in the workspace can replace the
        # example binary in target/ while the benchmark runs.
        import shutil

        private = out / "bench_sam.vista-bin"
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
    rounds = max(1, args.rounds if args.rounds is not None else (1 if args.quick else 3))
    p = paths(out)
    samples, failures = {}, []
    for rnd in range(rounds):
        for wl in workloads:
            warmup, total = iters[wl]
            n = max(1, -(-total // rounds))
            eng = [e for e in engines if wl in ENGINE_WORKLOADS.get(e, (wl,))]
            order = eng[rnd % len(eng):] + eng[: rnd % len(eng)]
            for e in order:
                if e == "vista":
                    model = p["vit_t"] if wl == "enc_vit_t" else p["vit_b"]
                    cmd = [str(exe), "--model", str(model), "--inputs", str(p["inputs"]), "--image", str(p["photo"]),
                           "--workload", wl, "--warmup", str(warmup), "--iters", str(n)]
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
                    pre = (f", preprocess {fmt_ms(percentile(sorted(r['pre_times_ms']), 0.5))} ms"
                           if r.get("pre_times_ms") else "")
                    print(f"   median {fmt_ms(r['median_ms'])} ms (p10 {fmt_ms(r['p10'])}, p90 {fmt_ms(r['p90'])}){pre}, "
                          f"peak RSS {rss:.0f} MB, load {r['load_s']:.2f} s, max|diff| vs torch "
                          f"{r['max_abs_diff_vs_torch']:.2e}, others {others:.2f} cores", flush=True)
    results = [merge(rs) for (e, wl), rs in sorted(
        samples.items(), key=lambda kv: (workloads.index(kv[0][1]), engines.index(kv[0][0])))]
    load_after = loadavg()

    print()
    print(f"{'workload':<10} {'engine':<32} {'median ms':>10} {'p10':>9} {'p90':>9} {'pre ms':>8} {'RSS MB':>7} "
          f"{'vs vista':>9} {'max|diff|':>10}")
    for wl in workloads:
        v = next((r for r in results if r["engine"] == "vista" and r["workload"] == wl), None)
        for r in (r for r in results if r["workload"] == wl):
            ratio = f"{v['median_ms'] / r['median_ms']:.2f}x" if v else "-"
            pre = fmt_ms(r["pre_median_ms"]) if r.get("pre_median_ms") is not None else "-"
            print(f"{wl:<10} {ENGINE_NAMES[r['engine']]:<32} {fmt_ms(r['median_ms']):>10} {fmt_ms(r['p10']):>9} "
                  f"{fmt_ms(r['p90']):>9} {pre:>8} {r['rss_mb']:>7.0f} {ratio:>9} {r['max_abs_diff_vs_torch']:>10.2e}")
    print("(vs vista = vista median time / this engine's; < 1 means vista is faster)")

    command = args.command or "python tools/bench/bench_sam.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    meta = dict(
        date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), command=command.strip(),
        machine=machine_info(), versions=versions(python), threads=args.threads, env_note=env_note,
        load_before=load_before, load_after=load_after, setup=setup_info,
        wall_s=round(time.time() - t_start, 1), failures=failures,
        quiet_note=(f" Each process started once the others had used under 0.3 cores for 2 s, or after "
                    f"{args.wait_quiet:.0f} s of waiting (`--wait-quiet`)." if args.wait_quiet else ""),
    )
    (out / "bench_sam_results.json").write_text(json.dumps(dict(meta=meta, results=results), indent=2) + "\n")
    print(f"\nraw results: {out / 'bench_sam_results.json'} (wall {meta['wall_s']} s)")
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
    ap.add_argument("--rounds", type=int, help="fresh processes per engine and workload (default 3, --quick 1)")
    ap.add_argument("--passive-wait", action="store_true",
                    help="idle PyTorch/ORT/candle pool threads sleep instead of spinning (for a busy, shared machine)")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="on a shared machine, wait up to S seconds before each process for other processes to go idle")
    ap.add_argument("--setup", action="store_true", help="redo the models, photo, references and ONNX exports")
    ap.add_argument("--python", help="interpreter for the set-up / PyTorch / ORT workers (default: this one)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build first")
    ap.add_argument("--no-write", action="store_true", help="do not write BENCHMARKS.md")
    ap.add_argument("--report", type=pathlib.Path, default=REPO_ROOT / "BENCHMARKS.md")
    ap.add_argument("--command", help=argparse.SUPPRESS)
    ap.add_argument("--worker", choices=("setup", "torch", "ort", "ort_seq"), help=argparse.SUPPRESS)
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
