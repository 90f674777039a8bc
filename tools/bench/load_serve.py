"""Load test of `vista serve`: N concurrent clients for M seconds against /v1/embed and
/v1/segment on 127.0.0.1 only, bounded in count and time (it stops by itself).

    python tools/bench/load_serve.py [--clients 8] [--seconds 20] [--model M] [--sam S] [--write]

The server is started by the script on a free localhost port over a folder of generated photos
(coloured shapes), with the given CLIP and SAM models (default: the tiny committed fixtures).
Before the load, every distinct request (a unique text; a unique click per photo) is sent once
alone, and its answer kept as the reference. Under load each answer is checked against its
request's reference — an embedding must be closest to its own text's reference (cosine > 0.999),
a mask must have the reference's RLE exactly — so a lost, mixed-up or corrupted response is
counted, not missed. Reports throughput, p50 / p99 latency, 429s (the server refusing rather
than queueing: clients back off as `Retry-After` says), other errors, mismatches, and the server's
peak RSS (VmHWM). `--write` puts the report in BENCHMARKS.md (section `load_serve`).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import pathlib
import random
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import benchlib  # noqa: E402

FIX = benchlib.REPO_ROOT / "crates/vista/tests/fixtures"


def png(width: int, height: int, pixel) -> bytes:
    """A PNG of pixel(x, y) -> (r, g, b), standard library only."""
    raw = b"".join(b"\x00" + b"".join(bytes(pixel(x, y)) for x in range(width)) for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def make_photos(folder: pathlib.Path, n: int) -> None:
    rng = random.Random(0)
    for i in range(n):
        w, h = 320, 240
        cx, cy, r = rng.randint(80, 240), rng.randint(60, 180), rng.randint(30, 60)
        fg = tuple(rng.randint(0, 255) for _ in range(3))
        bg = tuple(rng.randint(0, 255) for _ in range(3))
        (folder / f"photo{i:02d}.png").write_bytes(
            png(w, h, lambda x, y: fg if (x - cx) ** 2 + (y - cy) ** 2 < r * r else bg))


def call(base: str, path: str, body=None, timeout: float = 60.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def rel(path: str) -> str:
    """`path` relative to the repository when it lies inside it."""
    p = pathlib.Path(path).resolve()
    try:
        return str(p.relative_to(benchlib.REPO_ROOT))
    except ValueError:
        return path


def cosine(a, b) -> float:
    return sum(x * y for x, y in zip(a, b)) / max(1e-12, math.sqrt(sum(x * x for x in a) * sum(y * y for y in b)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--texts", type=int, default=64, help="distinct texts (requests) to embed")
    ap.add_argument("--model", default=str(FIX / "clip/openclip_e2e"))
    ap.add_argument("--sam", default=str(FIX / "sam/vit_official/sam_vit_tiny.pth"))
    ap.add_argument("--queue", type=int, default=16, help="vista serve --queue")
    ap.add_argument("--max-in-flight", type=int, default=8, help="vista serve --max-in-flight")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vista", type=pathlib.Path, default=benchlib.REPO_ROOT / "target/release/vista")
    ap.add_argument("--write", action="store_true", help="write the report into BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.clients > 64 or args.seconds > 600:
        sys.exit("bounded: at most 64 clients for 600 s")

    work = pathlib.Path(tempfile.mkdtemp(prefix="vista-load-"))
    photos = work / "photos"
    photos.mkdir()
    make_photos(photos, args.photos)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    cmd = [str(args.vista), "serve", str(photos), "--model", args.model, "--sam", args.sam, "--port", "0",
           "--queue", str(args.queue), "--max-in-flight", str(args.max_in_flight)]
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    base = None
    for line in server.stderr:
        m = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
        if m:
            base = m.group(1)
            break
    if base is None:
        sys.exit("vista serve did not start")
    threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
    try:
        return run(args, base, server, cmd)
    finally:
        server.terminate()
        server.wait(timeout=30)


def run(args, base: str, server, cmd) -> int:
    for _ in range(600):  # the photos are indexed in the background: wait for it
        status, h = call(base, "/health")
        if not (h.get("indexing") or {}).get("running"):
            break
        time.sleep(0.5)
    status, lib = call(base, "/v1/search?q=photo&top=1000")
    ids = [r["id"] for r in lib["results"]]
    texts = [f"probe {i}: a photo of a {['red', 'green', 'blue', 'round'][i % 4]} thing number {i}"
             for i in range(args.texts)]
    # References: each request alone.
    ref_text = {}
    for t in texts:
        s, r = call(base, "/v1/embed", {"texts": [t]})
        assert s == 200, r
        ref_text[t] = r["texts"][0]
    rng = random.Random(1)
    clicks = [(i, [rng.randint(0, 319), rng.randint(0, 239), 1]) for i in ids for _ in range(2)]
    ref_mask = {}
    for n, (i, p) in enumerate(clicks):
        s, r = call(base, "/v1/segment", {"id": i, "points": [p], "multimask": False})
        assert s == 200, r
        ref_mask[n] = r["masks"][0]["rle"]["counts"]

    lock = threading.Lock()
    stats = {k: {"ok": 0, "busy": 0, "errors": 0, "mismatch": 0, "lat": []} for k in ("embed", "segment")}
    stop = time.monotonic() + args.seconds

    def client(seed: int):
        r = random.Random(seed)
        while time.monotonic() < stop:
            kind = "embed" if r.random() < 0.5 else "segment"
            t0 = time.monotonic()
            if kind == "embed":
                t = r.choice(texts)
                s, body = call(base, "/v1/embed", {"texts": [t]})
                good = s == 200 and max(texts, key=lambda u: cosine(body["texts"][0], ref_text[u])) == t \
                    and cosine(body["texts"][0], ref_text[t]) > 0.999
            else:
                n = r.randrange(len(clicks))
                i, p = clicks[n]
                s, body = call(base, "/v1/segment", {"id": i, "points": [p], "multimask": False})
                good = s == 200 and body["masks"][0]["rle"]["counts"] == ref_mask[n]
            took = time.monotonic() - t0
            with lock:
                st = stats[kind]
                if s == 429:
                    st["busy"] += 1
                elif s != 200:
                    st["errors"] += 1
                elif not good:
                    st["mismatch"] += 1
                else:
                    st["ok"] += 1
                    st["lat"].append(took)
            if s == 429:
                time.sleep(0.05 * (1 + r.random()))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    alive = server.poll() is None
    hwm = None
    try:
        for line in open(f"/proc/{server.pid}/status"):
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    except OSError:
        pass
    s, metrics = 200, urllib.request.urlopen(base + "/metrics", timeout=30).read().decode()
    batches = {m.group(1): float(m.group(2)) for m in re.finditer(r'vista_batches_total\{worker="(\w+)"\} (\S+)', metrics)}
    jobs = {m.group(1): float(m.group(2)) for m in re.finditer(r'vista_batched_jobs_total\{worker="(\w+)"\} (\S+)', metrics)}

    commit = benchlib.sh(["git", "-C", str(benchlib.REPO_ROOT), "rev-parse", "--short", "HEAD"]).strip()
    lines = [
        "<!-- load_serve:begin -->",
        "## `vista serve` under load (tools/bench/load_serve.py)",
        "",
        f"Command: `python tools/bench/load_serve.py --clients {args.clients} --seconds {args.seconds:g}"
        f"{'' if args.model == str(FIX / 'clip/openclip_e2e') else ' --model ' + rel(args.model)}"
        f"{'' if args.sam == str(FIX / 'sam/vit_official/sam_vit_tiny.pth') else ' --sam ' + rel(args.sam)}"
        f"{' --write' if args.write else ''}` at vista {commit}; server: `{' '.join(pathlib.Path(c).name if i == 0 else c for i, c in enumerate(cmd)).replace(str(benchlib.REPO_ROOT) + '/', '')}`, "
        f"RAYON_NUM_THREADS={args.threads}. {args.photos} generated 320x240 photos, {len(texts)} distinct texts, "
        f"{len(clicks)} distinct clicks; every answer checked against the same request made alone.",
        "",
        "| route | answered 200 | per s | p50 ms | p99 ms | 429 | other errors | mismatched |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, st in stats.items():
        lat = sorted(st["lat"])
        p50 = benchlib.percentile(lat, 0.50) * 1000 if lat else float("nan")
        p99 = benchlib.percentile(lat, 0.99) * 1000 if lat else float("nan")
        lines.append(f"| /v1/{kind} | {st['ok']} | {st['ok'] / wall:.1f} | {p50:.1f} | {p99:.1f} | "
                     f"{st['busy']} | {st['errors']} | {st['mismatch']} |")
    mean_batch = {k: jobs.get(k, 0) / batches[k] for k in batches if batches[k]}
    lines += [
        "",
        f"{args.clients} clients for {wall:.1f} s; server alive after: {'yes' if alive else 'NO'}; "
        f"server peak RSS {hwm:.0f} MB; mean batch size " + ", ".join(f"{k} {v:.2f}" for k, v in mean_batch.items())
        + " (jobs per model call, from /metrics).",
        "<!-- load_serve:end -->",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.write:
        benchlib.write_marked_section(benchlib.REPO_ROOT / "BENCHMARKS.md", report,
                                      "<!-- load_serve:begin -->", "<!-- load_serve:end -->")
    bad = sum(st["errors"] + st["mismatch"] for st in stats.values())
    return 0 if alive and bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
