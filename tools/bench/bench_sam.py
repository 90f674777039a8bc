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

import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (stdlib only)
from benchlib import fmt_ms  # noqa: E402

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
EXPORTS = {"enc_onnx_vit_b": "ViT-B encoder", "enc_onnx_vit_t": "MobileSAM encoder",
           "dec_onnx_multi": "decoder, multimask", "dec_onnx_single": "decoder, single mask"}
TITLE = "## SAM on CPU: vista vs PyTorch vs ONNX Runtime"
BEGIN, END = "<!-- bench_sam:begin -->", "<!-- bench_sam:end -->"
PACKAGES = ("torch", "segment-anything", "mobilesam-mirror", "onnxruntime", "onnx", "numpy", "pillow", "scikit-image")
THREADS = ["vista `RAYON_NUM_THREADS`", "PyTorch `torch.set_num_threads`, `set_num_interop_threads(1)`",
           "ONNX Runtime `intra_op_num_threads`, `inter_op_num_threads=1`, sequential, `ORT_ENABLE_ALL`"]

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

    benchlib.torch_threads(args.threads)
    _quiet()
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
        extra = benchlib.torch_threads(args.threads)
        import torch

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
    else:
        from segment_anything.utils.transforms import ResizeLongestSide

        if kind == "encoder":
            path = p[f"enc_onnx_{what}"]
        else:
            path = p["dec_onnx_multi" if what == "point" else "dec_onnx_single"]
        if not path.exists():
            raise SystemExit(f"{path.name} is missing (its export failed: see {p['setup'].name})")
        sess, extra = benchlib.ort_session(path, args.threads)
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
    return benchlib.measure(args, run, ref, t0, None, extra, pre=pre, pre_ref=pixels)


# ----------------------------------------------------------------------------------------------
# Orchestrator
# ----------------------------------------------------------------------------------------------
def render(results, meta) -> str:
    by, s = benchlib.by_key(results), meta["setup"]
    lines = [
        *benchlib.header_lines(meta, "bench_sam.py", THREADS, TITLE, begin=BEGIN),
        f"What is measured ({benchlib.RANDOM_WEIGHTS}). Models: `segment_anything."
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
        head = benchlib.workload_heading(by, meta, ENGINES, wl, TITLES[wl])
        if head is None:
            continue
        present, notes, more = head
        lines += more
        enc = WORKLOADS[wl][0] == "encoder"
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
                   f"{benchlib.vs_vista(v, r)} | {r['rss_mb']:.0f} | "
                   f"{r['load_s']:.2f} | {r['max_abs_diff_vs_torch']:.1e} | {r['others']:.2f} |")
            if enc:
                pm = r.get("pre_median_ms")
                pd = r.get("pre_max_abs_diff")
                row += f" {fmt_ms(pm) if pm is not None else '—'} | {f'{pd:.1e}' if pd is not None else '—'} |"
            lines.append(row + f" {benchlib.round_cell(r)} |")
        for f in notes:
            lines.append(f"| {ENGINE_NAMES[f.split('/')[0]]} | failed: {f} | | | | | | |" + (" | |" if enc else "")
                         + " |")
        lines.append("")
    lines += benchlib.setup_notes(s, EXPORTS, "`torch.onnx.export`, opset 17, `dynamo=False`",
                                  "max |x| of PyTorch's outputs")
    return "\n".join(lines + [END]) + "\n"


SPEC = benchlib.WorkloadBench(
    script="bench_sam.py", description=__doc__.split("\n")[0], engines=ENGINES, names=ENGINE_NAMES, workloads=WORKLOADS, full=FULL_ITERS,
    quick=QUICK_ITERS, rounds=3, packages=PACKAGES, example="bench_sam",
    vista_args=lambda args, wl: ["--model", paths(args.out)["vit_t" if wl == "enc_vit_t" else "vit_b"],
                                 "--inputs", paths(args.out)["inputs"], "--image", paths(args.out)["photo"]],
    setup_needed=lambda args: not setup_complete(args.out),
    setup_cmd=lambda args: [args.python, pathlib.Path(__file__).resolve(), "--worker", "setup", "--out", args.out,
                            "--threads", args.threads],
    worker=worker, setup_worker=setup, workers=("torch", "ort", "ort_seq"), render=render, begin=BEGIN, end=END,
    meta_extra=lambda args: dict(setup=json.loads(paths(args.out)["setup"].read_text())),
    eligible=lambda engines, wl: [e for e in engines if wl in ENGINE_WORKLOADS.get(e, (wl,))],
    describe=lambda r: f", preprocess {fmt_ms(benchlib.median(r['pre_times_ms']))} ms" if r.get("pre_times_ms") else "",
    columns=(("pre ms", 8, lambda r: fmt_ms(r["pre_median_ms"]) if r.get("pre_median_ms") is not None else "-"),),
)


if __name__ == "__main__":
    sys.exit(benchlib.workload_main(SPEC))
