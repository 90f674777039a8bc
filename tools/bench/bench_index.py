"""Indexing throughput: ``vista index`` vs a Python reference loop, same images, same run.

Both sides turn a folder of JPEGs into L2-normalised CLIP ViT-B/32 image embeddings stored in
SQLite, one transaction per batch of 32, on the same number of compute threads:

* **vista**: the ``vista index DIR --model M --db FRESH.sqlite --json --batch 32`` process
  (``RAYON_NUM_THREADS=N``; its decode threads are separate: one per core, i.e. N more on this
  machine). Timed wall-clock from spawn to exit, so it includes process start, model load,
  the folder walk, blake3 hashing of every file, decode + resize + crop on the decode threads,
  the forward passes and the SQLite commits. The same command on an empty folder (model load,
  nothing to embed) is timed as well and subtracted for the "net" figure.
* **Python**: this script's ``--worker python`` mode, in its own process: transformers
  ``CLIPModel.get_image_features`` (``torch.set_num_threads(N)``), and for each batch of 32
  paths: PIL open, ``.convert("RGB")``, the CLIP preprocessing (open_clip's transform by default:
  PIL bicubic resize of the shortest side to 224, centre crop, to tensor, normalise; or
  transformers' ``CLIPImageProcessor`` with ``--preprocess hf``), the forward pass,
  L2-normalisation, then one SQLite transaction inserting the 32 vectors (WAL,
  ``synchronous=NORMAL``, as vista). Model loading is timed separately and not in the loop.
  ``--engines ...,python-prefetch`` adds the same loop with the next batch decoded by a pool of
  N threads while the model runs (PIL releases the GIL while decoding and resizing).

Images: ``--images`` (default 2000) seeded, photo-like JPEGs (640x480 and 480x640, smooth
gradients, blurred shapes, texture and sensor-like noise; quality 90) generated once into
``bench-out/index-photos/`` (git-ignored) and reused; a smaller count uses
``bench-out/index-photos-N/`` (hard links to the first N).

    python tools/bench/bench_index.py --images 64 --no-write    # end-to-end check, ~1 min
    python tools/bench/bench_index.py                           # 2,000 images (~5 min), BENCHMARKS.md

Every process's peak RSS comes from ``os.wait4``; CPU time (user + sys) too, and its threads'
CPU time is sampled from ``/proc`` during the run. Results: a table on stdout,
``bench-out/bench_index_results.json``, and ``BENCHMARKS.md`` between the ``bench_index`` markers.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchlib  # noqa: E402  (stdlib only)
import make_model  # noqa: E402  (stdlib only at import time)
from benchlib import REPO_ROOT, median, sh, vm_hwm_mb  # noqa: E402

TITLE = "## Indexing throughput: `vista index` vs a Python reference loop"
BEGIN, END = "<!-- bench_index:begin -->", "<!-- bench_index:end -->"
DEFAULT_IMAGES = 2000
QUICK_IMAGES = 64
PACKAGES = ("torch", "torchvision", "transformers", "open_clip_torch", "pillow", "numpy")
CRATES = ("candle-core", "gemm", "image", "zune-jpeg", "rusqlite", "libsqlite3-sys")
SQLITE_VERSION = "import sqlite3; out['sqlite (python)'] = sqlite3.sqlite_version\n"
THREADS = ["vista `RAYON_NUM_THREADS` for the forward pass, plus its decode threads",
           "Python loop `torch.set_num_threads`, `set_num_interop_threads(1)`, plus the prefetch pool's threads"]
# Bumped whenever the generated images change (the folder is then regenerated).
IMAGES_FORMAT = 1
IMAGE_SEED = 20261127
ENGINES = ("vista", "python", "python-prefetch")
ENGINE_NAMES = {
    "vista": "vista index",
    "python": "Python loop",
    "python-prefetch": "Python loop + decode prefetch",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------
def make_image(i: int):
    """Image `i`: a deterministic, photo-like picture (PIL RGB)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng([IMAGE_SEED, i])
    w, h = (640, 480) if rng.random() < 0.65 else (480, 640)
    # Sky/ground-like base: a bilinear blend of four corner colours.
    c = rng.uniform(20, 235, size=(2, 2, 3))
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    x = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
    base = c[0, 0] * (1 - y) * (1 - x) + c[0, 1] * (1 - y) * x + c[1, 0] * y * (1 - x) + c[1, 1] * y * x
    img = Image.fromarray(base.astype(np.uint8), "RGB")
    # Objects: ellipses, rectangles and polygons, some translucent, then softened (out of focus).
    overlay = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for _ in range(int(rng.integers(6, 18))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3)) + (int(rng.integers(120, 256)),)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(15, w / 3), rng.uniform(15, h / 3)
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
        elif kind == 1:
            draw.rectangle([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
        else:
            n = int(rng.integers(3, 8))
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            pts = [(float(cx + rx * np.cos(a)), float(cy + ry * np.sin(a))) for a in ang]
            draw.polygon(pts, fill=colour)
    img = Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB")
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.8, 2.5))))
    a = np.asarray(img, dtype=np.float32)
    # Texture: low-frequency luminance variation (foliage, walls) plus fine sensor noise.
    gh, gw = h // 16 + 1, w // 16 + 1
    low = rng.normal(0.0, 12.0, size=(gh, gw)).astype(np.float32)
    low = np.asarray(Image.fromarray(low, "F").resize((w, h), Image.BICUBIC))
    a += low[:, :, None]
    a += rng.normal(0.0, float(rng.uniform(3.0, 8.0)), size=a.shape).astype(np.float32)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


def _save_image(job) -> None:
    i, dst = job
    tmp = dst + ".tmp"
    make_image(i).save(tmp, "JPEG", quality=90)
    os.rename(tmp, dst)


def image_name(i: int) -> str:
    return f"img_{i:05d}.jpg"


def images_dir(out: pathlib.Path, n: int) -> pathlib.Path:
    return out / ("index-photos" if n == DEFAULT_IMAGES else f"index-photos-{n}")


def ensure_images(out: pathlib.Path, n: int) -> pathlib.Path:
    """Makes `images_dir(out, n)` hold exactly images 0..n-1 (generating what is missing)."""
    pool = images_dir(out, DEFAULT_IMAGES)
    folder = images_dir(out, n)
    stamp = out / "index-photos.format"
    want = f"{IMAGES_FORMAT} {IMAGE_SEED}"
    if not stamp.exists() or stamp.read_text().strip() != want:
        for d in out.glob("index-photos*"):
            if d.is_dir():
                shutil.rmtree(d)
        out.mkdir(parents=True, exist_ok=True)
        stamp.write_text(want + "\n")
    folder.mkdir(parents=True, exist_ok=True)
    names = {image_name(i) for i in range(n)}
    for p in folder.iterdir():
        if p.name not in names:
            p.unlink() if p.is_file() else shutil.rmtree(p)
    t0 = time.time()
    todo = []
    for i in range(n):
        dst = folder / image_name(i)
        if dst.exists():
            continue
        src = pool / image_name(i)
        if folder != pool and src.exists():
            os.link(src, dst)
        else:
            todo.append((i, str(dst)))
    if todo:
        import multiprocessing

        print(f"generating {len(todo)} images into {folder} ...", file=sys.stderr)
        with multiprocessing.Pool(min(2, os.cpu_count() or 1)) as workers:
            for k, _ in enumerate(workers.imap_unordered(_save_image, todo, chunksize=8), 1):
                if k % 250 == 0:
                    print(f"  {k} images ({time.time() - t0:.0f}s)", file=sys.stderr)
        if folder != pool:
            pool.mkdir(parents=True, exist_ok=True)
            for i, dst in todo:
                if i < DEFAULT_IMAGES and not (pool / image_name(i)).exists():
                    os.link(dst, pool / image_name(i))
        print(f"generated {len(todo)} images ({time.time() - t0:.1f}s)", file=sys.stderr)
    return folder


def images_info(folder: pathlib.Path) -> dict:
    from PIL import Image

    files = sorted(folder.glob("*.jpg"))
    sizes = [f.stat().st_size for f in files]
    dims = {}
    for f in files:
        with Image.open(f) as im:
            dims[f"{im.width}x{im.height}"] = dims.get(f"{im.width}x{im.height}", 0) + 1
    return dict(count=len(files), total_mb=sum(sizes) / 1e6, mean_kb=sum(sizes) / max(1, len(sizes)) / 1e3,
                min_kb=min(sizes, default=0) / 1e3, max_kb=max(sizes, default=0) / 1e3, dims=dims)


# ----------------------------------------------------------------------------------------------
# Python reference worker (its own process)
# ----------------------------------------------------------------------------------------------


def worker(args) -> int:
    t_proc = time.perf_counter()
    import sqlite3

    import numpy as np
    import torch
    from PIL import Image

    threads = args.threads
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    from transformers import CLIPModel

    t0 = time.perf_counter()
    model = CLIPModel.from_pretrained(str(args.model)).float().eval()
    if args.preprocess == "open_clip":
        import open_clip

        # The transform open_clip.create_model_and_transforms gives ViT-B-32 (OpenAI mean/std):
        # PIL bicubic resize of the shortest side to 224, centre crop 224, to tensor, normalise.
        transform = open_clip.image_transform(224, is_train=False)

        def preprocess(images):
            return torch.stack([transform(im) for im in images])

        pp_desc = "open_clip.image_transform(224, is_train=False)"
    else:
        from transformers import CLIPImageProcessor

        processor = CLIPImageProcessor()  # openai/clip-vit-base-patch32's preprocessor_config

        def preprocess(images):
            return processor(images=images, return_tensors="pt")["pixel_values"]

        pp_desc = f"transformers {type(processor).__name__}()"
    load_s = time.perf_counter() - t0
    import_s = t0 - t_proc

    def load(path):
        with Image.open(path) as im:
            return im.convert("RGB")

    if args.prefetch:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=threads)

        def decode_batch(paths):
            # PIL decode and the open_clip transform's PIL resize run without the GIL.
            if args.preprocess == "open_clip":
                return torch.stack(list(pool.map(lambda p: transform(load(p)), paths)))
            return preprocess(list(pool.map(load, paths)))
    else:
        def decode_batch(paths):
            return preprocess([load(p) for p in paths])

    if args.db.exists():
        args.db.unlink()
    t_start = time.perf_counter()
    paths = sorted(str(p) for p in pathlib.Path(args.images).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    conn = sqlite3.connect(str(args.db))
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS embeddings (path TEXT PRIMARY KEY, dim INTEGER NOT NULL, vector BLOB NOT NULL)")
    conn.commit()
    batches = [paths[i:i + args.batch] for i in range(0, len(paths), args.batch)]
    t_decode = t_model = t_store = 0.0
    embedded = 0
    pending = None  # prefetch: the future of the next batch's pixels
    for bi, chunk in enumerate(batches):
        td = time.perf_counter()
        if args.prefetch:
            if pending is None:
                pending = _submit(decode_batch, chunk)
            pixels = pending.result()
            pending = _submit(decode_batch, batches[bi + 1]) if bi + 1 < len(batches) else None
        else:
            pixels = decode_batch(chunk)
        tm = time.perf_counter()
        with torch.inference_mode():
            out = model.get_image_features(pixel_values=pixels)
            out = getattr(out, "pooler_output", out)
            out = torch.nn.functional.normalize(out, dim=-1)
        vecs = out.numpy().astype(np.float32, copy=False)
        ts = time.perf_counter()
        with conn:
            conn.executemany(
                "INSERT OR REPLACE INTO embeddings (path, dim, vector) VALUES (?, ?, ?)",
                [(p, vecs.shape[1], v.tobytes()) for p, v in zip(chunk, vecs)],
            )
        te = time.perf_counter()
        t_decode += tm - td
        t_model += ts - tm
        t_store += te - ts
        embedded += len(chunk)
    conn.close()
    wall = time.perf_counter() - t_start
    print(json.dumps(dict(
        engine="python-prefetch" if args.prefetch else "python", images=len(paths), embedded=embedded,
        wall_s=wall, load_s=load_s, import_s=import_s, decode_s=t_decode, model_s=t_model, store_s=t_store,
        preprocess=pp_desc, torch_threads=torch.get_num_threads(),
        interop_threads=torch.get_num_interop_threads(), peak_rss_mb=vm_hwm_mb(),
        attn_implementation=getattr(model.config, "_attn_implementation", None),
    )), flush=True)
    return 0


_EXECUTOR = None


def _submit(fn, arg):
    """Runs `fn(arg)` on a single background thread (which fans out to the decode pool)."""
    global _EXECUTOR
    if _EXECUTOR is None:
        from concurrent.futures import ThreadPoolExecutor

        _EXECUTOR = ThreadPoolExecutor(max_workers=1)
    return _EXECUTOR.submit(fn, arg)


# ----------------------------------------------------------------------------------------------
# Process monitoring
# ----------------------------------------------------------------------------------------------
def thread_cpu(pid: int) -> dict:
    """{tid: (comm, cpu seconds)} of a process's live threads."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(tid)] = (comm, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


class Monitor:
    """Samples a child's per-thread CPU time every `period` s and takes one `top` snapshot."""

    def __init__(self, pid: int, top_at: float | None, period: float = 0.5, label=None):
        self.pid, self.top_at, self.period, self.label = pid, top_at, period, label
        self.threads: dict = {}
        self.top = None
        self.stop = threading.Event()
        self.t0 = time.perf_counter()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            for tid, v in thread_cpu(self.pid).items():
                self.threads[tid] = v
            if self.top is None and self.top_at is not None and time.perf_counter() - self.t0 >= self.top_at:
                self.top = sh(["top", "-b", "-n", "1", "-H", "-w", "160", "-p", str(self.pid)])
                self.top_machine = sh(["top", "-b", "-n", "1", "-w", "160"])
            self.stop.wait(self.period)

    def finish(self) -> dict:
        self.stop.set()
        self.thread.join()
        groups: dict = {}
        labels = self.label(self.pid, self.threads) if self.label else {}
        for tid, (comm, cpu) in sorted(self.threads.items()):
            name = "main" if tid == self.pid else labels.get(tid, comm)
            g = groups.setdefault(name, [0, 0.0])
            g[0] += 1
            g[1] += cpu
        return dict(threads={k: dict(n=v[0], cpu_s=round(v[1], 2)) for k, v in groups.items()},
                    top=self.top, top_machine=getattr(self, "top_machine", None))


def vista_thread_labels(threads: int):
    """vista's unnamed threads by creation order (thread ids grow): the first `threads` are the
    rayon pool (created at model load / the hashing scan, before embedding starts), the later
    ones the indexer's decode threads."""

    def label(pid, seen):
        unnamed = sorted(t for t, (comm, _) in seen.items() if t != pid and comm == "vista")
        return {t: ("rayon (compute)" if k < threads else "decode") for k, t in enumerate(unnamed)}

    return label


def parity(vista_db: pathlib.Path, py_db: pathlib.Path) -> dict:
    """Cosine similarity of vista's stored (f16) vector and Python's (f32) for every file."""
    import sqlite3

    import numpy as np

    v = sqlite3.connect(str(vista_db))
    rows = v.execute("SELECT f.path, e.vector FROM files f JOIN embeddings e ON e.hash = f.hash").fetchall()
    vv = {pathlib.Path(p).name: np.frombuffer(b, dtype=np.float16).astype(np.float32) for p, b in rows}
    p = sqlite3.connect(str(py_db))
    pv = {pathlib.Path(k).name: np.frombuffer(b, dtype=np.float32) for k, b in p.execute("SELECT path, vector FROM embeddings")}
    names = sorted(set(vv) & set(pv))
    if not names:
        return dict(n=0)
    a = np.stack([vv[n] for n in names])
    b = np.stack([pv[n] for n in names])
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    same = (a * b).sum(1)
    # How different two different images' embeddings are (so "same" means something).
    other = (a * np.roll(b, 1, axis=0)).sum(1)
    return dict(n=len(names), cos_min=float(same.min()), cos_mean=float(same.mean()),
                other_cos_mean=float(other.mean()), max_abs_diff=float(np.abs(a - b).max()))


# ----------------------------------------------------------------------------------------------
# Orchestrator
# ----------------------------------------------------------------------------------------------
def run_vista(bench, args, exe, folder: pathlib.Path, db: pathlib.Path, expect: int, tag: str) -> dict | None:
    for suffix in ("", "-wal", "-shm"):
        p = pathlib.Path(str(db) + suffix)
        if p.exists():
            p.unlink()
    cmd = [exe, "index", folder, "--model", args.model_dir, "--db", db, "--json", "--batch", args.batch]
    label = vista_thread_labels(args.threads)
    r = bench.run(cmd, "vista", tag, quiet=True, watch=lambda pid: Monitor(pid, args.top_at, label=label))
    if r is None:
        return None
    rep = r["json"][-1]["report"]
    if rep["embedded"] != expect or rep["failed"] or rep["problems"]:
        raise SystemExit(f"vista index embedded {rep['embedded']} of {expect}: {rep}")
    r.update(engine="vista", images=expect, report=rep)
    return r


def run_python(bench, args, folder: pathlib.Path, db: pathlib.Path, expect: int, prefetch: bool, tag: str) -> dict | None:
    cmd = [args.python, pathlib.Path(__file__).resolve(), "--worker", "--images-dir", folder, "--model-dir",
           args.model_dir, "--db", db, "--batch", args.batch, "--threads", args.threads, "--preprocess", args.preprocess]
    if prefetch:
        cmd.append("--prefetch")
    r = bench.run(cmd, "python", tag, quiet=True, watch=lambda pid: Monitor(pid, args.top_at))
    if r is None:
        return None
    w = r["json"][-1]
    if w["embedded"] != expect:
        raise SystemExit(f"python worker embedded {w['embedded']} of {expect}")
    r.update(engine=w["engine"], images=expect, worker=w)
    return r


def summarize(runs: list, load_runs: list) -> list:
    """One row per engine: medians over the rounds."""
    vista_load = median([r["wall_s"] for r in load_runs]) if load_runs else None
    rows = []
    for e in ENGINES:
        rs = [r for r in runs if r["engine"] == e]
        if not rs:
            continue
        n = rs[0]["images"]
        wall = median([r["wall_s"] for r in rs])
        row = dict(engine=e, name=ENGINE_NAMES[e], images=n, rounds=len(rs), process_wall_s=wall,
                   rss_mb=max(r["rss_mb"] for r in rs), cpu_s=median([r["cpu_s"] for r in rs]),
                   cores_used=median([r["cores_used"] for r in rs]), others_cores=median([r["others"] for r in rs]),
                   round_walls=[r["wall_s"] for r in rs])
        if e == "vista":
            row["load_s"] = vista_load
            row["net_s"] = wall - vista_load if vista_load is not None else wall
            row["round_net"] = [r["wall_s"] - (vista_load or 0) for r in rs]
            row["load_rss_mb"] = max(r["rss_mb"] for r in load_runs) if load_runs else None
        else:
            row["load_s"] = median([r["worker"]["load_s"] + r["worker"]["import_s"] for r in rs])
            row["net_s"] = median([r["worker"]["wall_s"] for r in rs])
            row["round_net"] = [r["worker"]["wall_s"] for r in rs]
            for k in ("decode_s", "model_s", "store_s"):
                row[k] = median([r["worker"][k] for r in rs])
            row["preprocess"] = rs[0]["worker"]["preprocess"]
        row["ips_net"] = n / row["net_s"]
        row["ips_total"] = n / wall
        rows.append(row)
    return rows


def thread_summary(run: dict) -> str:
    th = run.get("threads") or {}
    parts = [f"{k} ×{v['n']}: {v['cpu_s']:.1f} s" if v["n"] > 1 else f"{k}: {v['cpu_s']:.1f} s"
             for k, v in sorted(th.items(), key=lambda kv: -kv[1]["cpu_s"])]
    return ", ".join(parts)


def print_summary(rows, meta):
    if meta.get("vista_load_s") is not None:
        print(f"\n{meta['images']} images, batch {meta['batch']}, {meta['threads']} compute threads; "
              f"vista load (empty folder) {meta['vista_load_s']:.2f} s")
    benchlib.print_table([
        ("engine", -34, lambda r: r["name"]), ("img/s net", 9, lambda r: f"{r['ips_net']:.1f}"),
        ("net s", 7, lambda r: f"{r['net_s']:.1f}"), ("load s", 6, lambda r: f"{r['load_s']:.2f}"),
        ("proc s", 7, lambda r: f"{r['process_wall_s']:.1f}"), ("img/s all", 9, lambda r: f"{r['ips_total']:.1f}"),
        ("RSS MB", 7, lambda r: f"{r['rss_mb']:.0f}"), ("CPU s", 6, lambda r: f"{r['cpu_s']:.1f}"),
        ("cores", 5, lambda r: f"{r['cores_used']:.2f}"), ("others", 6, lambda r: f"{r['others_cores']:.2f}"),
    ], rows)
    print()


def render(rows, runs, meta) -> str:
    by = {r["engine"]: r for r in rows}
    info = meta["image_info"]
    dims = ", ".join(f"{v} × {k}" for k, v in sorted(info["dims"].items(), key=lambda kv: -kv[1]))
    lines = [
        *benchlib.header_lines(meta, "bench_index.py", THREADS, TITLE, begin=BEGIN),
        f"Images: {info['count']} generated JPEGs (`bench-out/index-photos/`, seeded, quality 90: {dims}; "
        f"smooth gradients, blurred shapes, texture and sensor-like noise; {info['mean_kb']:.0f} KB on average, "
        f"{info['min_kb']:.0f}-{info['max_kb']:.0f} KB, {info['total_mb']:.0f} MB in all), in the page cache "
        "for every run. Model: `bench-out/clip-vit-b32-random` (the exact openai/clip-vit-base-patch32 "
        "configuration, random weights; `tools/bench/make_model.py`). Batch "
        f"{meta['batch']}, one SQLite transaction per batch on both sides (WAL, `synchronous=NORMAL`), a fresh "
        f"database for every run. {meta['rounds']} round{'s' if meta['rounds'] != 1 else ''} "
        f"({'engine order rotated, ' if meta['rounds'] > 1 else ''}order {', '.join(meta.get('engines', []))}), "
        "each run a fresh process; the medians over rounds are shown.",
        "",
        "What each side does and what its time includes:",
        "",
        f"* **vista index**: `{meta['vista_command']}` with `RAYON_NUM_THREADS={meta['threads']}` "
        f"({meta['threads']} compute threads for the forward pass, plus its {meta['decode_threads']} decode threads, "
        "one per core, which decode, resize and centre-crop into a bounded queue while the model runs). "
        "*proc s* is the process wall-clock from spawn to exit: process start, model load, the folder walk, "
        "blake3 hash of every file (embeddings are keyed by content), decode, preprocessing, forward passes, "
        f"f16 vectors stored per batch. *load s* is the same command on an empty folder "
        f"({benchlib.fmt(meta['vista_load_s'])} s: process start, model load, database creation, nothing to embed); "
        "*net s* = proc s − load s.",
        f"* **Python loop** (`--worker python` of the script, its own process): transformers `CLIPModel` "
        f"(`torch.set_num_threads({meta['threads']})`, `set_num_interop_threads(1)`, eager, `inference_mode`), "
        f"per batch of {meta['batch']} paths: PIL `Image.open` + `.convert(\"RGB\")`, preprocessing with "
        f"`{meta['preprocess_desc']}`, `torch.stack`, `get_image_features`, L2-normalise, one SQLite "
        "transaction inserting (path, float32 vector). Decode runs on the main thread, alternating with the "
        "forward pass (the usual reference loop). *net s* is the loop (folder listing to last commit); "
        "*load s* is imports + model load, not in *net s*; *proc s* is the whole process.",
    ]
    if "python-prefetch" in by:
        lines.append(
            f"* **Python loop + decode prefetch**: the same, but the next batch is decoded and preprocessed by a "
            f"pool of {meta['threads']} Python threads (PIL releases the GIL) while the model runs: the "
            "overlap vista does, in Python.")
    lines += [
        "",
        "*img/s net* = images / net s (the throughput target); *img/s all* = images / proc s. Peak RSS is the "
        "whole process (`wait4`); CPU s is its user + system time; *cores* = CPU s / proc s; *others* = cores "
        "busy with other processes on the machine during the run (from `/proc/stat`)." + meta.get("quiet_note", ""),
        "",
        "| engine | img/s net | net s | load s | proc s | img/s all | peak RSS MB | CPU s | cores | others | per-round net s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | **{r['ips_net']:.1f}** | {r['net_s']:.1f} | {r['load_s']:.2f} | {r['process_wall_s']:.1f} | "
            f"{r['ips_total']:.1f} | {r['rss_mb']:.0f} | {r['cpu_s']:.1f} | {r['cores_used']:.2f} | "
            f"{r['others_cores']:.2f} | {', '.join(f'{x:.1f}' for x in r['round_net'])} |")
    lines += [f"| failed: {f} | | | | | | | | | | |" for f in meta.get("failures", [])]
    lines.append("")
    if "vista" in by:
        v = by["vista"]
        for other in ("python", "python-prefetch"):
            if other in by:
                o = by[other]
                lines.append(
                    f"vista vs {ENGINE_NAMES[other]}: **{v['ips_net'] / o['ips_net']:.2f}×** the throughput "
                    f"(net), {v['ips_total'] / o['ips_total']:.2f}× end to end, peak RSS "
                    f"{v['rss_mb'] / o['rss_mb']:.2f}×.")
                lines.append("")
    for e in ("python", "python-prefetch"):
        if e in by:
            o = by[e]
            what = ("waiting for the prefetched batch" if e == "python-prefetch" else "decode + preprocess")
            lines.append(
                f"{ENGINE_NAMES[e]}, where its loop time goes: {what} {o['decode_s']:.1f} s, "
                f"forward {o['model_s']:.1f} s ({o['images'] / o['model_s']:.1f} img/s for the model alone), "
                f"SQLite {o['store_s']:.2f} s.")
            lines.append("")
    cpu_lines = []
    for e in ENGINES:
        rs = [r for r in runs if r["engine"] == e]
        if rs and rs[0].get("threads"):
            cpu_lines.append(f"* {ENGINE_NAMES[e]} (round 1): {thread_summary(rs[0])}.")
    if cpu_lines:
        lines += ["CPU time by thread (sampled from `/proc` every 0.5 s; vista's pool and decode threads are "
                  "unnamed and told apart by creation order, the rayon pool first):", ""] + cpu_lines + [""]
        vr = [r for r in runs if r["engine"] == "vista"]
        th = (vr[0].get("threads") or {}) if vr else {}
        if "decode" in th and "rayon (compute)" in th:
            dec, comp = th["decode"]["cpu_s"], th["rayon (compute)"]["cpu_s"]
            tot = sum(v["cpu_s"] for v in th.values())
            v = by["vista"]
            lines += [
                f"In vista the forward pass is the bottleneck: its compute threads took {comp:.1f} s of CPU "
                f"({comp / tot:.0%} of the process), the decode threads {dec:.1f} s ({dec / tot:.0%}; they keep "
                f"the queue of {2 * meta['batch']} decoded images full and mostly wait on it), the main thread "
                f"{th.get('main', {}).get('cpu_s', 0):.1f} s (model load, batch tensors, SQLite); the process used "
                f"{v['cores_used']:.2f} of {meta['machine']['cpus']} cores on average.",
                "",
            ]
    if meta.get("parity"):
        p = meta["parity"]
        lines += [
            f"Same work: for the {p['n']} images both indexed, the cosine similarity of vista's stored vector and "
            f"Python's is {p['cos_mean']:.6f} on average (min {p['cos_min']:.6f}; two different images: "
            f"{p['other_cos_mean']:.3f}). vista crops as transformers' `CLIPImageProcessor` does (its rounding of "
            "the crop offset, floor) and stores f16; open_clip rounds the offset as torchvision does (round), "
            "so where the two differ a crop is one pixel apart.",
            "",
        ]
    if meta.get("notes"):
        lines += [meta["notes"], ""]
    lines.append(END)
    return "\n".join(lines) + "\n"


def orchestrate(args) -> int:
    out = args.out
    if args.from_results:
        data = json.loads(args.from_results.read_text())
        block = render(data["rows"], data["runs"], data["meta"])
        if args.no_write:
            print(block)
        else:
            benchlib.write_marked_section(args.report, block, BEGIN, END)
            print(f"wrote {args.report} from {args.from_results}", file=sys.stderr)
        return 0
    engines = benchlib.parse_list(args.engines, ENGINES, "engine")
    bench = benchlib.Bench("bench_index.py", args, packages=PACKAGES, crates=CRATES, extra_code=SQLITE_VERSION)
    if not (args.model_dir / "model.safetensors").exists():
        print("== model missing: running make_model.py", flush=True)
        subprocess.run([args.python, str(HERE / "make_model.py"), "--out", str(out)], check=True, cwd=REPO_ROOT,
                       env=bench.env["python"])
    exe = benchlib.vista_binary(args, "bin", "vista", override=args.vista) if "vista" in engines else None
    # Images (and later the parity check) in the workers' interpreter: numpy and PIL.
    info = json.loads(subprocess.run(
        [args.python, str(pathlib.Path(__file__).resolve()), "--make-images", str(args.images), "--out", str(out)],
        check=True, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, env=bench.env["python"]).stdout.splitlines()[-1])
    folder = images_dir(out, args.images)
    if info["count"] != args.images:
        raise SystemExit(f"{folder} holds {info['count']} images, expected {args.images}")
    print(f"images: {info}", flush=True)
    empty = out / "index-empty"
    if empty.exists():
        shutil.rmtree(empty)
    empty.mkdir(parents=True)
    dbs = out / "index-dbs"
    dbs.mkdir(parents=True, exist_ok=True)

    runs, load_runs = [], []
    # Every round: vista's model load on an empty folder (nothing to embed), then the engines on
    # the photos in that round's (rotated) order.
    eligible = {"empty": ["vista"] if "vista" in engines else [], "photos": engines}
    for rnd, group, e in benchlib.schedule(args.rounds, ("empty", "photos"), engines, eligible.get):
        tag = f"{e}/{group}"
        if group == "empty":
            r = run_vista(bench, args, exe, empty, dbs / "vista-empty.sqlite", 0, tag)
            if r is not None:
                load_runs.append(r)
                print(f"round {rnd + 1}: vista load (empty folder) {r['wall_s']:.2f} s, peak RSS {r['rss_mb']:.0f} MB",
                      flush=True)
            continue
        if e == "vista":
            r = run_vista(bench, args, exe, folder, dbs / "vista.sqlite", args.images, tag)
        else:
            r = run_python(bench, args, folder, dbs / f"{e}.sqlite", args.images, e == "python-prefetch", tag)
        if r is None:
            continue
        r["round"] = rnd + 1
        runs.append(r)
        extra = ""
        if "worker" in r:
            w = r["worker"]
            extra = (f"; loop {w['wall_s']:.1f} s = decode {w['decode_s']:.1f} + model {w['model_s']:.1f} "
                     f"+ sqlite {w['store_s']:.2f}; load {w['import_s']:.1f} + {w['load_s']:.1f} s")
        print(f"round {rnd + 1}: {ENGINE_NAMES[e]}: process {r['wall_s']:.1f} s, peak RSS {r['rss_mb']:.0f} MB, "
              f"CPU {r['cpu_s']:.1f} s ({r['cores_used']:.2f} cores; others {r['others']:.2f}){extra}", flush=True)
        print(f"    threads: {thread_summary(r)}", flush=True)
        if r.get("top") and args.show_top:
            print("    top -H (during the run):\n" + "\n".join("      " + line for line in r["top"].splitlines()[:20]),
                  flush=True)
    parity = None
    if "vista" in engines and "python" in engines:
        parity = json.loads(subprocess.run(
            [args.python, str(pathlib.Path(__file__).resolve()), "--parity", str(dbs / "vista.sqlite"),
             str(dbs / "python.sqlite")], check=True, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
            env=bench.env["python"]).stdout.splitlines()[-1])
        print(f"parity: {parity}", flush=True)
    pr = [r for r in runs if "worker" in r]
    meta = bench.meta(
        images=args.images, batch=args.batch, engines=[ENGINE_NAMES[e] for e in engines],
        decode_threads=max(1, min(8, os.cpu_count() or 2)), image_info=info,
        vista_load_s=median([r["wall_s"] for r in load_runs]) if load_runs else None,
        vista_command=(f"vista index bench-out/index-photos --model bench-out/clip-vit-b32-random "
                       f"--db FRESH.sqlite --json --batch {args.batch}"),
        preprocess_desc=pr[0]["worker"]["preprocess"] if pr else args.preprocess, parity=parity, notes=args.notes)
    rows = summarize(runs, load_runs)
    print_summary(rows, meta)
    # A smaller validation run (--images 64) must not overwrite the full run's results.
    name = "bench_index_results.json" if args.images == DEFAULT_IMAGES else f"bench_index_results-{args.images}.json"
    return bench.finish(name, dict(meta=meta, rows=rows, runs=runs, load_runs=load_runs),
                        lambda: render(rows, runs, meta), BEGIN, END)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    benchlib.add_common_args(ap, rounds=1, quick=f"--images {QUICK_IMAGES}, 1 round (end-to-end check)")
    ap.add_argument("--images", type=int, default=None, help=f"number of JPEGs (default {DEFAULT_IMAGES})")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma list of {', '.join(ENGINES)}")
    ap.add_argument("--preprocess", choices=("open_clip", "hf"), default="open_clip",
                    help="Python preprocessing: open_clip's transform (PIL resize) or transformers' CLIPImageProcessor")
    ap.add_argument("--vista", type=pathlib.Path, default=None,
                    help="run this vista binary (default: target/release/vista, built unless --no-build)")
    ap.add_argument("--top-at", type=float, default=8.0, help="seconds into each run to take a `top -H` snapshot")
    ap.add_argument("--show-top", action="store_true", help="print the `top -H` snapshots")
    ap.add_argument("--notes", default="", help="a paragraph added to the report")
    ap.add_argument("--from-results", type=pathlib.Path, metavar="JSON",
                    help="only re-render the report from a results file (bench-out/bench_index_results.json)")
    # worker modes
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prefetch", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--images-dir", type=pathlib.Path, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", type=pathlib.Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--db", type=pathlib.Path, help=argparse.SUPPRESS)
    ap.add_argument("--make-images", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--parity", nargs=2, type=pathlib.Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.model_dir is None:
        args.model_dir = make_model.paths(args.out)["model"]
    if args.worker:
        args.images = args.images_dir
        args.model = args.model_dir
        return worker(args)
    if args.make_images is not None:
        print(json.dumps(images_info(ensure_images(args.out, args.make_images))))
        return 0
    if args.parity:
        print(json.dumps(parity(*args.parity)))
        return 0
    if args.images is None:
        args.images = QUICK_IMAGES if args.quick else DEFAULT_IMAGES
    benchlib.resolve_common(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
