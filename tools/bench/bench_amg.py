"""SAM automatic mask generation ("segment everything"): vista vs PyTorch (segment_anything), one command.

Both sides run SAM's automatic mask generator on the same photo with the same model, the same
options and the same thread count, once per fresh process:

* **vista**: ``vista segment PHOTO --everything --points-per-side N --points-per-batch 64
  --model CKPT --no-cache -f coco-rle --out DIR --json`` (``RAYON_NUM_THREADS=T``). vista prints
  no internal timings, so the process is timed wall-clock from spawn to exit and the same
  model's load-only run is subtracted: ``vista sam auto EMPTY_FOLDER --out DIR --model CKPT
  --no-cache`` with the same generator options (process start, model load, the generator
  built, nothing to segment), run just before it in every round. *vista s* = process − load.
* **PyTorch**: this script's ``--worker torch`` mode in its own process:
  ``segment_anything.SamAutomaticMaskGenerator(sam, points_per_side=N, points_per_batch=64,
  output_mode="coco_rle", ...)`` (``torch.set_num_threads(T)``, ``set_num_interop_threads(1)``)
  on SAM ViT-B (``segment_anything.build_sam_vit_b``) or MobileSAM (``mobile_sam.build_sam_vit_t``;
  ``mobile_sam``'s own generator is the same code). Model load is not timed; the timed span is
  the photo file decoded (PIL, RGB) + ``generate`` (image encoder, every point batch, filtering,
  NMS, RLE) + the masks written as one SA-1B-style JSON file, as vista writes its ``-f coco-rle``
  file.

Models: bench_sam.py's (seeded **random weights** in the official architectures, no network:
``bench-out/sam_vit_b_random.pth``, ``bench-out/mobile_sam_random.pt``; made by
``bench_sam.py --worker setup`` when missing). Photo: scikit-image's ``coffee.png`` (600x400),
Lanczos-resized to 1024x683 (``bench-out/amg-photo.png``; ``--image`` for another). With random
weights the masks are noise, but both sides run the very same tensors, so the masks they keep
should match: the script reports each side's mask count and the mean best-IoU matching of the
two sets (pycocotools), and warns when the counts differ wildly.

    python tools/bench/bench_amg.py --smoke --no-write          # MobileSAM, 4x4 points (~1 min)
    python tools/bench/bench_amg.py --wait-quiet 20             # both models, 32x32 points; BENCHMARKS.md

Every process's peak RSS comes from ``os.wait4`` (benchlib.run_child). Results: a table on stdout,
``bench-out/bench_amg_results.json`` (``-smoke`` / ``-pPOINTS`` suffix for other settings), and
``BENCHMARKS.md`` between the ``bench_amg`` markers.

The same file is also the photo, PyTorch and comparison worker (``--worker photo|torch|compare``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchlib  # noqa: E402  (stdlib only)
import bench_sam  # noqa: E402  (stdlib only at import time)
from benchlib import REPO_ROOT, median  # noqa: E402

TITLE = "## Segment everything (SAM automatic mask generator) on CPU: vista vs PyTorch"
BEGIN, END = "<!-- bench_amg:begin -->", "<!-- bench_amg:end -->"
MODELS = ("vit_b", "mobile")
MODEL_NAMES = {"vit_b": "SAM ViT-B", "mobile": "MobileSAM (TinyViT)"}
WEIGHTS_KEY = {"vit_b": "vit_b", "mobile": "vit_t"}  # bench_sam.paths() keys
ENGINES = ("vista", "torch")
ENGINE_NAMES = {"vista": "vista", "torch": "PyTorch"}
PACKAGES = ("torch", "segment-anything", "mobilesam-mirror", "numpy", "pillow", "pycocotools", "scikit-image")
CRATES = ("candle-core", "gemm", "image")
THREADS = ["vista `RAYON_NUM_THREADS`", "PyTorch `torch.set_num_threads`, `set_num_interop_threads(1)`"]
PHOTO_LONG_SIDE = 1024
SMOKE_POINTS = 4
SMOKE_MODELS = "mobile"
WILD = 2.0  # counts differing by more than this factor (or one side 0, the other >= 5) get a warning


def paths(out: pathlib.Path) -> dict:
    return dict(photo=out / "amg-photo.png", runs=out / "amg-out", empty=out / "amg-empty")


# ----------------------------------------------------------------------------------------------
# Workers (the Python engines' interpreter)
# ----------------------------------------------------------------------------------------------
def photo_worker(args) -> int:
    """Makes `--out`/amg-photo.png (coffee.png, long side 1024) unless present; prints its info."""
    from PIL import Image

    p = paths(args.out)["photo"]
    src = bench_sam.find_photo_source()
    with Image.open(src) as im:
        w, h = im.size
        size = (PHOTO_LONG_SIDE, round(h * PHOTO_LONG_SIDE / w)) if w >= h else (round(w * PHOTO_LONG_SIDE / h), PHOTO_LONG_SIDE)
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            im.convert("RGB").resize(size, Image.LANCZOS).save(p)
    with Image.open(p) as made:
        made_size = made.size
    print(json.dumps(dict(source=f"scikit-image data/{src.name} {w}x{h}, Lanczos-resized to {made_size[0]}x{made_size[1]}",
                          width=made_size[0], height=made_size[1])))
    return 0


def torch_worker(args) -> int:
    """One generate run: model load (untimed), then photo file -> masks written, timed."""
    t_proc = time.perf_counter()
    extra = benchlib.torch_threads(args.threads)
    import numpy as np
    import torch
    from PIL import Image
    from segment_anything import SamAutomaticMaskGenerator

    bench_sam._quiet()
    t_import = time.perf_counter()
    sam = bench_sam.build_torch(WEIGHTS_KEY[args.model], args.weights)
    gen = SamAutomaticMaskGenerator(
        sam, points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh,
        crop_n_layers=args.crop_n_layers, min_mask_region_area=args.min_mask_region_area, output_mode="coco_rle")
    t0 = time.perf_counter()
    with Image.open(args.image) as im:
        image = np.asarray(im.convert("RGB"))
    t1 = time.perf_counter()
    records = gen.generate(image)
    t2 = time.perf_counter()
    h, w = image.shape[:2]
    anns = [dict(r, id=i + 1) for i, r in enumerate(records)]
    doc = {"image": {"file_name": str(args.image), "height": h, "width": w}, "annotations": anns}
    args.masks_out.parent.mkdir(parents=True, exist_ok=True)
    args.masks_out.write_text(json.dumps(doc) + "\n")
    t3 = time.perf_counter()
    print(json.dumps(dict(
        engine="torch", model=args.model, masks=len(records), total_s=t3 - t0, decode_s=t1 - t0, generate_s=t2 - t1,
        write_s=t3 - t2, load_s=t0 - t_import, import_s=t_import - t_proc, peak_rss_mb=benchlib.vm_hwm_mb(),
        torch=torch.__version__, threads=args.threads, masks_file=str(args.masks_out), **extra)), flush=True)
    return 0


def compare_worker(args) -> int:
    """Mask counts of two SA-1B-style files and the mean best-IoU matching between their masks."""
    import numpy as np
    from pycocotools import mask as mask_utils

    def rles(path):
        doc = json.loads(pathlib.Path(path).read_text())
        out = []
        for a in doc["annotations"]:
            s = dict(a["segmentation"])
            s["counts"] = s["counts"].encode("ascii") if isinstance(s["counts"], str) else s["counts"]
            out.append(s)
        return out, (doc["image"]["height"], doc["image"]["width"])

    a, size_a = rles(args.compare[0])
    b, size_b = rles(args.compare[1])
    res = dict(n_a=len(a), n_b=len(b), size_a=size_a, size_b=size_b)
    bad = [tuple(r["size"]) for r in a + b if tuple(r["size"]) != tuple(size_a)]
    if bad:
        res["size_mismatch"] = [list(x) for x in sorted(set(bad))]
    if a and b and not bad:
        iou = np.asarray(mask_utils.iou(a, b, [0] * len(b)))  # [len(a), len(b)]
        best_a, best_b = iou.max(1), iou.max(0)
        res.update(mean_best_iou_a=float(best_a.mean()), mean_best_iou_b=float(best_b.mean()),
                   matched_a=int((best_a >= 0.9).sum()), matched_b=int((best_b >= 0.9).sum()),
                   area_a=float(np.mean(mask_utils.area(a))), area_b=float(np.mean(mask_utils.area(b))))
    print(json.dumps(res))
    return 0


# ----------------------------------------------------------------------------------------------
# Orchestrator
# ----------------------------------------------------------------------------------------------
def amg_flags(args) -> list:
    """The generator options, as both vista commands take them."""
    return ["--points-per-side", args.points_per_side, "--points-per-batch", args.points_per_batch,
            "--pred-iou-thresh", args.pred_iou_thresh, "--stability-score-thresh", args.stability_score_thresh,
            "--crop-n-layers", args.crop_n_layers, "--min-mask-region-area", args.min_mask_region_area]


def weights(args, model: str) -> pathlib.Path:
    return bench_sam.paths(args.out)[WEIGHTS_KEY[model]]


def rel(p) -> str:
    p = pathlib.Path(p)
    try:
        return str(p.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


def vista_command(args, exe, model: str, out_dir: pathlib.Path) -> list:
    return [exe, "segment", args.image, "--everything", *amg_flags(args), "--model", weights(args, model), "--no-cache",
            "-f", "coco-rle", "--out", out_dir, "--json"]


def vista_load_command(args, exe, model: str) -> list:
    p = paths(args.out)
    return [exe, "sam", "auto", p["empty"], "--out", p["runs"] / "load-only", *amg_flags(args),
            "--model", weights(args, model), "--no-cache"]


def parse_vista_json(log: pathlib.Path) -> dict | None:
    """The JSON document `vista segment --json` printed (pretty, many lines) in its log."""
    text = log.read_text(errors="replace")
    i = text.find("\n{") + 1 if not text.startswith("{") else 0
    if text.startswith("{") or i > 0:
        try:
            doc, _ = json.JSONDecoder().raw_decode(text[i:])
            return doc if isinstance(doc, dict) else None
        except ValueError:
            return None
    return None


def run_vista(bench, args, exe, model: str, rnd: int) -> dict | None:
    p = paths(args.out)
    tag = f"vista/{model}"
    # Load only: the same model and generator options, an empty folder (nothing to segment).
    if p["empty"].exists():
        shutil.rmtree(p["empty"])
    p["empty"].mkdir(parents=True)
    p["runs"].mkdir(parents=True, exist_ok=True)
    ld = bench.run(vista_load_command(args, exe, model), "vista", tag + "-load",
                   log=p["runs"] / f"vista-{model}-load.log")
    if ld is None:
        return None
    out_dir = p["runs"] / f"vista-{model}"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    log = p["runs"] / f"vista-{model}.log"
    r = bench.run(vista_command(args, exe, model, out_dir), "vista", tag, log=log)
    if r is None:
        return None
    doc = parse_vista_json(log)
    masks_file = out_dir / f"{pathlib.Path(args.image).stem}.masks.json"
    if doc is None or "masks" not in doc or not masks_file.exists():
        bench.failures.append(f"{tag} (no JSON `masks` / no {masks_file.name}; see {rel(log)})")
        print(f"   FAILED: no JSON masks in {log}", flush=True)
        return None
    net = r["wall_s"] - ld["wall_s"]
    print(f"round {rnd + 1}: vista {MODEL_NAMES[model]}: {net:.2f} s (process {r['wall_s']:.2f} s − load-only "
          f"{ld['wall_s']:.2f} s), {len(doc['masks'])} masks, peak RSS {r['rss_mb']:.0f} MB "
          f"(load-only {ld['rss_mb']:.0f} MB), others {r['others']:.2f} cores", flush=True)
    return dict(engine="vista", model=model, round=rnd + 1, time_s=net, process_s=r["wall_s"], load_s=ld["wall_s"],
                rss_mb=r["rss_mb"], load_rss_mb=ld["rss_mb"], cpu_s=r["cpu_s"], cores_used=r["cores_used"],
                others=r["others"], load_others=ld["others"], masks=len(doc["masks"]), masks_file=str(masks_file),
                command=r["command"])


def run_torch(bench, args, model: str, rnd: int) -> dict | None:
    masks_out = paths(args.out)["runs"] / f"torch-{model}.masks.json"
    cmd = [args.python, pathlib.Path(__file__).resolve(), "--worker", "torch", "--model", model,
           "--weights", weights(args, model), "--image", args.image, "--masks-out", masks_out,
           "--threads", args.threads, *amg_flags(args)]
    r = bench.run(cmd, "torch", f"torch/{model}", quiet=True)
    if r is None:
        return None
    w = r["json"][-1]
    print(f"round {rnd + 1}: PyTorch {MODEL_NAMES[model]}: {w['total_s']:.2f} s (decode {w['decode_s']:.2f} + generate "
          f"{w['generate_s']:.2f} + write {w['write_s']:.2f}; load {w['import_s']:.1f} + {w['load_s']:.1f} s untimed), "
          f"{w['masks']} masks, peak RSS {r['rss_mb']:.0f} MB (VmHWM {w['peak_rss_mb']:.0f}), "
          f"others {r['others']:.2f} cores", flush=True)
    return dict(engine="torch", model=model, round=rnd + 1, time_s=w["total_s"], process_s=r["wall_s"],
                load_s=w["load_s"] + w["import_s"], rss_mb=r["rss_mb"], cpu_s=r["cpu_s"], cores_used=r["cores_used"],
                others=r["others"], masks=w["masks"], masks_file=w["masks_file"], worker=w)


def summarize(runs: list, compares: dict) -> list:
    """One row per model: medians over the rounds, both engines side by side."""
    rows = []
    for m in MODELS:
        row = dict(model=m, name=MODEL_NAMES[m])
        for e in ENGINES:
            rs = [r for r in runs if r["model"] == m and r["engine"] == e]
            if not rs:
                continue
            d = dict(time_s=median([r["time_s"] for r in rs]), process_s=median([r["process_s"] for r in rs]),
                     load_s=median([r["load_s"] for r in rs]), rss_mb=max(r["rss_mb"] for r in rs),
                     others=sum(r["others"] for r in rs) / len(rs), masks=rs[-1]["masks"],
                     round_times=[r["time_s"] for r in rs], round_masks=[r["masks"] for r in rs])
            if e == "torch":
                for k in ("decode_s", "generate_s", "write_s"):
                    d[k] = median([r["worker"][k] for r in rs])
            row[e] = d
        if len(row) == 2:
            continue
        if "vista" in row and "torch" in row:
            row["speedup"] = row["torch"]["time_s"] / row["vista"]["time_s"] if row["vista"]["time_s"] > 0 else None
            row["compare"] = compares.get(m)
            row["warning"] = count_warning(row["vista"]["masks"], row["torch"]["masks"])
        rows.append(row)
    return rows


def count_warning(a: int, b: int) -> str | None:
    lo, hi = min(a, b), max(a, b)
    if (lo == 0 and hi >= 5) or (lo > 0 and hi / lo > WILD):
        return f"mask counts differ wildly: vista {a}, PyTorch {b}"
    return None


def iou_cell(c) -> str:
    if not c:
        return "—"
    if c.get("size_mismatch"):
        return "size mismatch"
    if "mean_best_iou_a" not in c:
        return "—"
    return f"{c['mean_best_iou_a']:.3f} / {c['mean_best_iou_b']:.3f}"


def print_summary(rows, meta) -> None:
    def side(r, e, k, f):
        return f(r[e][k]) if e in r else "—"

    benchlib.print_table([
        ("model", -20, lambda r: r["name"]), ("points", 10, lambda r: meta["points_desc"]),
        ("vista s", 8, lambda r: side(r, "vista", "time_s", lambda x: f"{x:.2f}")),
        ("PyTorch s", 9, lambda r: side(r, "torch", "time_s", lambda x: f"{x:.2f}")),
        ("speed-up", 8, lambda r: f"{r['speedup']:.2f}" if r.get("speedup") else "—"),
        ("vista RSS", 9, lambda r: side(r, "vista", "rss_mb", lambda x: f"{x:.0f}")),
        ("PT RSS", 7, lambda r: side(r, "torch", "rss_mb", lambda x: f"{x:.0f}")),
        ("masks v / PT", 12, lambda r: f"{side(r, 'vista', 'masks', str)} / {side(r, 'torch', 'masks', str)}"),
        ("best IoU v→PT / PT→v", 20, lambda r: iou_cell(r.get("compare"))),
        ("others v / PT", 13, lambda r: f"{side(r, 'vista', 'others', lambda x: f'{x:.2f}')} / "
                                        f"{side(r, 'torch', 'others', lambda x: f'{x:.2f}')}"),
    ], rows)
    print("(seconds: photo file in -> masks written, model load excluded; vista = process − load-only process; "
          "speed-up = PyTorch s / vista s, > 1 means vista is faster; RSS in MB, whole process, wait4)")
    for r in rows:
        if r.get("warning"):
            print(f"WARNING: {r['name']}: {r['warning']}", file=sys.stderr)


def render(rows, meta) -> str:
    ph = meta["photo"]
    o = meta["options"]
    lines = [
        *benchlib.header_lines(meta, "bench_amg.py", THREADS, TITLE, begin=BEGIN),
        f"What is measured ({benchlib.RANDOM_WEIGHTS}). Models: bench_sam.py's `segment_anything.build_sam_vit_b()` "
        "and `mobile_sam.build_sam_vit_t()`, seeded (`bench-out/sam_vit_b_random.pth`, "
        f"`bench-out/mobile_sam_random.pt`). Photo: {ph['source']} (`{ph['path']}`). Generator options, the "
        f"same on both sides: {meta['points_desc']} points per crop ({o['points_per_side']} a side), "
        f"{o['points_per_batch']} points per batch, multimask, `pred_iou_thresh` {o['pred_iou_thresh']}, "
        f"`stability_score_thresh` {o['stability_score_thresh']} (offset 1), box NMS 0.7, "
        f"`crop_n_layers` {o['crop_n_layers']}, `min_mask_region_area` {o['min_mask_region_area']}, COCO RLE "
        f"output. {meta['rounds']} round{'s' if meta['rounds'] != 1 else ''}, each process fresh and run once "
        "(no warm-up: the first call of a process, on both sides); medians over rounds.",
        "",
        f"* **vista**: `{meta['vista_command']}`. vista reports no internal timings, so *vista s* is the process "
        "wall-clock from spawn to exit minus that of a load-only process run just before it, "
        f"`{meta['vista_load_command']}` (process start, model load, generator built, nothing to segment; "
        "*load s*). What remains: the photo file read and decoded, the image encoder, every point batch through "
        "the prompt encoder and mask decoder, filtering, NMS, RLE, the COCO RLE file written and the JSON "
        "printed on stdout.",
        "* **PyTorch**: `segment_anything.SamAutomaticMaskGenerator(sam, ..., output_mode=\"coco_rle\")` on the "
        "`segment_anything` / `mobile_sam` model (its `--worker torch` process). *PyTorch s* is timed inside the "
        "process after model load: the photo file decoded (PIL `Image.open(...).convert(\"RGB\")`), `generate` "
        "(image encoder, point batches, filtering, NMS, RLE) and the masks written as one SA-1B-style JSON file.",
        "",
        "*speed-up* = PyTorch s / vista s (above 1: vista is faster). Peak RSS is the whole process (`wait4`; model "
        "load included; vista's load-only process in the details). *masks*: how many masks each side kept; "
        "*best IoU*: for each vista mask the best IoU with any PyTorch mask, averaged (vista → PyTorch), and the "
        "reverse (pycocotools on both COCO RLE sets). The weights are random, so the masks are noise, but the "
        "same noise on both sides: a pair near 1 says both generators kept the same masks; masks near a "
        "threshold can fall on either side of it. *others*: cores other processes used during the run (from "
        "`/proc/stat`; 0 = otherwise idle machine)." + meta["quiet_note"],
        "",
        "| model | points | vista s | PyTorch s | speed-up | vista RSS MB | PyTorch RSS MB | masks vista / PyTorch "
        "| best IoU vista→PyTorch / PyTorch→vista | others vista / PyTorch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(r, e, k, f):
        return f(r[e][k]) if e in r else "—"

    for r in rows:
        lines.append(
            f"| {r['name']} | {meta['points_desc']} | **{cell(r, 'vista', 'time_s', lambda x: f'{x:.2f}')}** | "
            f"{cell(r, 'torch', 'time_s', lambda x: f'{x:.2f}')} | "
            f"{'**%.2f×**' % r['speedup'] if r.get('speedup') else '—'} | "
            f"{cell(r, 'vista', 'rss_mb', lambda x: f'{x:.0f}')} | {cell(r, 'torch', 'rss_mb', lambda x: f'{x:.0f}')} | "
            f"{cell(r, 'vista', 'masks', str)} / {cell(r, 'torch', 'masks', str)} | {iou_cell(r.get('compare'))} | "
            f"{cell(r, 'vista', 'others', lambda x: f'{x:.2f}')} / {cell(r, 'torch', 'others', lambda x: f'{x:.2f}')} |")
    lines += [f"| failed: {f} | | | | | | | | | |" for f in meta.get("failures", [])]
    lines += ["", "Details (medians over rounds):", ""]
    for r in rows:
        parts = []
        if "vista" in r:
            v = r["vista"]
            parts.append(f"vista process {v['process_s']:.2f} s − load-only {v['load_s']:.2f} s "
                         f"(per round: {', '.join(f'{x:.2f}' for x in v['round_times'])} s)")
        if "torch" in r:
            t = r["torch"]
            parts.append(f"PyTorch decode {t['decode_s']:.2f} + generate {t['generate_s']:.2f} + write "
                         f"{t['write_s']:.2f} s, untimed imports + model load {t['load_s']:.1f} s, process "
                         f"{t['process_s']:.1f} s (per round: {', '.join(f'{x:.2f}' for x in t['round_times'])} s)")
        c = r.get("compare") or {}
        if c.get("mean_best_iou_a") is not None:
            parts.append(f"masks matched at IoU ≥ 0.9: {c['matched_a']} of {c['n_a']} vista, {c['matched_b']} of "
                         f"{c['n_b']} PyTorch; mean area {c['area_a']:.0f} / {c['area_b']:.0f} px")
        lines.append(f"* {r['name']}: " + "; ".join(parts) + ".")
        if r.get("warning"):
            lines.append(f"  **Warning**: {r['warning']}.")
    kept = [r[e]["masks"] for r in rows for e in ENGINES if e in r]
    if kept and max(kept) <= 5:
        lines += ["", "With random weights few or no masks pass the thresholds (here at most "
                  f"{max(kept)} per side), so the times are nearly all the image encoder and the point batches "
                  "(prompt encoder, mask decoder, upscaling to the photo's size, scoring); with a released "
                  "checkpoint the NMS and RLE of the kept masks add to both sides (and vista up-samples each mask that passes the IoU filter). `--pred-iou-thresh 0 "
                  "--stability-score-thresh 0` keeps every mask the NMS leaves (with these weights few: the "
                  "masks are large overlapping blobs)."]
    lines += [
        "",
        "Not identical on the two sides: vista's time comes from two processes (spawn-to-exit minus a load-only "
        "run) and so also holds what differs between them besides the work (the bigger process's exit, the "
        "JSON printed on stdout), PyTorch's from timers inside one process; PIL and vista decode the PNG "
        "with their own decoders (the same pixels).",
        "",
        END,
    ]
    return "\n".join(lines) + "\n"


def orchestrate(args) -> int:
    models = benchlib.parse_list(args.models, MODELS, "model")
    bench = benchlib.Bench("bench_amg.py", args, packages=PACKAGES, crates=CRATES)
    p = paths(args.out)
    if not all(bench_sam.paths(args.out)[WEIGHTS_KEY[m]].exists() for m in models):
        print("== SAM weights missing: running bench_sam.py's set-up (models, photo, references, ONNX exports)",
              flush=True)
        subprocess.run([args.python, str(HERE / "bench_sam.py"), "--worker", "setup", "--out", str(args.out),
                        "--threads", str(args.threads)], check=True, cwd=REPO_ROOT, env=bench.env["python"])
    if args.image is None:
        photo = json.loads(subprocess.run(
            [args.python, str(pathlib.Path(__file__).resolve()), "--worker", "photo", "--out", str(args.out)],
            check=True, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, env=bench.env["python"]).stdout.splitlines()[-1])
        args.image = p["photo"]
    else:
        photo = dict(source=f"`{args.image}` (`--image`)")
    args.image = pathlib.Path(args.image).resolve()
    photo["path"] = rel(args.image)
    print(f"photo: {photo['source']}; {args.points_per_side}x{args.points_per_side} points, models "
          f"{', '.join(models)}", flush=True)
    exe = benchlib.vista_binary(args, "bin", "vista", override=args.vista)

    runs = []
    for rnd, model, e in benchlib.schedule(args.rounds, models, ENGINES):
        print(f"== round {rnd + 1}/{args.rounds}: {MODEL_NAMES[model]} / {ENGINE_NAMES[e]}", flush=True)
        r = run_vista(bench, args, exe, model, rnd) if e == "vista" else run_torch(bench, args, model, rnd)
        if r is not None:
            runs.append(r)
    # The last round's masks of each side, compared.
    compares = {}
    for m in models:
        last = {e: [r for r in runs if r["model"] == m and r["engine"] == e] for e in ENGINES}
        if last["vista"] and last["torch"]:
            c = subprocess.run([args.python, str(pathlib.Path(__file__).resolve()), "--worker", "compare", "--compare",
                                last["vista"][-1]["masks_file"], last["torch"][-1]["masks_file"]],
                               cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, env=bench.env["python"])
            try:
                compares[m] = json.loads(c.stdout.splitlines()[-1])
            except (IndexError, ValueError):
                compares[m] = None
                print(f"   (mask comparison failed for {m}: exit {c.returncode})", file=sys.stderr)
            print(f"{MODEL_NAMES[m]}: masks vista {last['vista'][-1]['masks']}, PyTorch {last['torch'][-1]['masks']}; "
                  f"comparison {compares[m]}", flush=True)
    n = args.points_per_side
    meta = bench.meta(
        models=models, photo=photo, points_desc=f"{n}×{n}",
        options=dict(points_per_side=n, points_per_batch=args.points_per_batch, pred_iou_thresh=args.pred_iou_thresh,
                     stability_score_thresh=args.stability_score_thresh, crop_n_layers=args.crop_n_layers,
                     min_mask_region_area=args.min_mask_region_area),
        vista_command=" ".join(["vista segment", rel(args.image), "--everything", *map(str, amg_flags(args)),
                                "--model CKPT --no-cache -f coco-rle --out DIR --json"]),
        vista_load_command=" ".join(["vista sam auto EMPTY_FOLDER --out DIR", *map(str, amg_flags(args)),
                                     "--model CKPT --no-cache"]),
    )
    rows = summarize(runs, compares)
    print_summary(rows, meta)
    suffix = "-smoke" if args.smoke else ("" if n == 32 else f"-p{n}")
    return bench.finish(f"bench_amg_results{suffix}.json", dict(meta=meta, rows=rows, runs=runs),
                        lambda: render(rows, meta), BEGIN, END)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    benchlib.add_common_args(ap, rounds=1, quick="the same as --smoke")
    ap.add_argument("--smoke", action="store_true",
                    help=f"quick end-to-end check: --points-per-side {SMOKE_POINTS}, --models {SMOKE_MODELS}")
    ap.add_argument("--models", default=None, help=f"comma list of {','.join(MODELS)} (default all; --smoke {SMOKE_MODELS})")
    ap.add_argument("--points-per-side", type=int, default=None, help=f"default 32 (--smoke {SMOKE_POINTS})")
    ap.add_argument("--points-per-batch", type=int, default=64)
    ap.add_argument("--pred-iou-thresh", type=float, default=0.88)
    ap.add_argument("--stability-score-thresh", type=float, default=0.95)
    ap.add_argument("--crop-n-layers", type=int, default=0)
    ap.add_argument("--min-mask-region-area", type=int, default=0,
                    help="> 0 needs OpenCV on the PyTorch side (segment_anything's post-processing)")
    ap.add_argument("--image", type=pathlib.Path, default=None,
                    help="the photo (default: bench-out/amg-photo.png, scikit-image's coffee.png at 1024x683)")
    ap.add_argument("--vista", type=pathlib.Path, default=None,
                    help="run this vista binary (default: target/release/vista, built unless --no-build)")
    # worker modes
    ap.add_argument("--worker", choices=("photo", "torch", "compare"), help=argparse.SUPPRESS)
    ap.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    ap.add_argument("--weights", type=pathlib.Path, help=argparse.SUPPRESS)
    ap.add_argument("--masks-out", type=pathlib.Path, help=argparse.SUPPRESS)
    ap.add_argument("--compare", nargs=2, type=pathlib.Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.smoke = args.smoke or args.quick
    if args.points_per_side is None:
        args.points_per_side = SMOKE_POINTS if args.smoke else 32
    if args.models is None:
        args.models = SMOKE_MODELS if args.smoke else ",".join(MODELS)
    if args.worker == "photo":
        return photo_worker(args)
    if args.worker == "torch":
        return torch_worker(args)
    if args.worker == "compare":
        return compare_worker(args)
    benchlib.resolve_common(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
