"""DINO training on Fashion-MNIST: `vista train dino` vs the PyTorch reference
(tools/reference/train_dino_fmnist.py, main_dino.py's recipe), same config, same machine, same
thread count, one process at a time, for each of several seeds.

Both frameworks time the same spans:

* epoch: the wall time of one epoch, from the data loader's start (worker start-up, data waits,
  every step) to its last step; no checkpoint, no k-NN (vista: `epoch_seconds` in metrics.jsonl;
  PyTorch: each epoch's `seconds`);
* step: one step from the batch in hand to the optimiser and EMA updates done (forward, loss,
  backward, clipping, AdamW, EMA; data loading not included): vista's per-step `seconds`, the
  reference script's `step_seconds`.

Per framework and seed the report gives the median epoch and step times, images/s (images per
epoch / median epoch), peak RSS, and the k-NN top-1 (k = 20, T = 0.07, teacher backbone, the
training subset as the memory bank, the first --test-limit t10k images as the test set) at
initialisation and after the run; plus a raw-pixel k-NN baseline computed by vista (`vista knn
--pixels`: eval_knn.py's weighted vote on the ImageNet-normalised pixels both frameworks' k-NN
inputs start from; `--worker raw-knn` is the same in numpy, a cross-check). ONNX Runtime has no
part here: it has no training loop.

    python tools/bench/bench_dino_train.py --epochs 10 --seeds 0,1     # full run (1-1.5 h on 2 cores)
    python tools/bench/bench_dino_train.py --quick --no-write          # smoke test (1 epoch, 640 images, seed 0)
    python tools/bench/bench_dino_train.py --arch resnet50 --epochs 2 --seeds 0   # DINO's ResNet-50 recipe
    python tools/bench/bench_dino_train.py --vista-run DIR --torch-json FILE   # tabulate finished runs

Both runs get the same flags (CONFIGS[--arch], plus --limit, --epochs, --seed). vista is target/release/vista
(built first unless --no-build), run from a private copy.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (stdlib only)
from benchlib import REPO_ROOT, fmt, median  # noqa: E402

# --arch picks the workload: a small ViT with AdamW (the default), or DINO's ResNet-50 with its SGD recipe
# (README of facebookresearch/dino: sgd, weight decay 1e-4 throughout), BatchNorm in training mode.
CONFIGS = {
    "vit": [
        "--arch", "vit_tiny", "--depth", "4", "--embed-dim", "128", "--num-heads", "4", "--patch", "4",
        "--global-size", "28", "--local-size", "12", "--local-crops", "6", "--out-dim", "4096",
        "--head-hidden", "2048", "--lr", "0.002", "--batch", "64", "--workers", "1",
    ],
    "resnet50": [
        "--arch", "resnet50", "--global-size", "28", "--local-size", "12", "--local-crops", "4", "--out-dim", "4096",
        "--head-hidden", "2048", "--optimizer", "sgd", "--lr", "0.03", "--weight-decay", "1e-4",
        "--weight-decay-end", "1e-4", "--batch", "64", "--workers", "1",
    ],
}
WARMUP_EPOCHS = 2  # clamped to --epochs (both refuse a warm-up longer than the run)
KNN_K, KNN_T = 20, 0.07
FRAMEWORKS = ("vista", "torch")
NAMES = {"vista": "vista", "torch": "PyTorch"}
PACKAGES = ("torch", "torchvision", "numpy", "pillow")
THREADS = ["vista `RAYON_NUM_THREADS`, plus its one data-loader thread (`--workers 1`)",
           "PyTorch `torch.set_num_threads`, `set_num_interop_threads`, plus one DataLoader worker process"]


def markers(arch: str) -> tuple[str, str]:
    """BENCHMARKS.md section markers: the ViT's section keeps its old name."""
    tag = "bench_dino_train" + ("" if arch == "vit" else f"_{arch}")
    return f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
REFERENCE = REPO_ROOT / "tools" / "reference" / "train_dino_fmnist.py"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def data_dir(arg) -> pathlib.Path:
    """--data, else $FASHION_MNIST_DIR, else bench-out/fashion-mnist, else the system datasets folder."""
    cands = [arg] if arg else [os.environ.get("FASHION_MNIST_DIR"), REPO_ROOT / "bench-out" / "fashion-mnist",
                               "/usr/share/datasets/fashion-mnist"]
    for c in cands:
        if c and (pathlib.Path(c) / "train-images-idx3-ubyte.gz").exists():
            return pathlib.Path(c)
    raise SystemExit("Fashion-MNIST not found: pass --data DIR (the folder of {train,t10k}-{images-idx3,"
                     "labels-idx1}-ubyte.gz) or set FASHION_MNIST_DIR")


# ----------------------------------------------------------------------------------------------
# Raw-pixel k-NN baseline (worker: numpy)
# ----------------------------------------------------------------------------------------------
def read_idx(path: pathlib.Path, limit: int):
    import gzip

    import numpy as np

    with gzip.open(path, "rb") as f:
        magic = int.from_bytes(f.read(4), "big")
        dims = [int.from_bytes(f.read(4), "big") for _ in range(magic & 0xFF)]
        n = min(limit, dims[0])
        item = int(np.prod(dims[1:])) if len(dims) > 1 else 1
        return np.frombuffer(f.read(n * item), dtype=np.uint8).reshape(n, *dims[1:])


def vista_raw_knn(exe, data: pathlib.Path, limit: int, test_limit: int, env) -> dict:
    """The raw-pixel baseline computed by vista: `vista knn --pixels` (eval_knn.py's weighted vote on
    the ImageNet-normalised pixels, the first `limit` train images as the bank, the first
    `test_limit` t10k images); `raw_pixel_knn` below is the same in numpy, kept as a cross-check
    (`--worker raw-knn`)."""
    out = subprocess.run(
        [str(exe), "knn", "--pixels", "--train", str(data), "--limit", str(limit), "--test-limit", str(test_limit),
         "--k", str(KNN_K), "--temperature", str(KNN_T), "--json"],
        check=True, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, env=env).stdout
    doc = json.loads(out)
    r = doc["results"][0]
    return dict(top1=r["top1"], top5=r["top5"], k=r["k"], temperature=KNN_T, bank=doc["train"],
                test=doc["test"], by="vista knn --pixels", vista=benchlib.sh(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"]))


def raw_pixel_knn(data: pathlib.Path, limit: int, test_limit: int, k: int = KNN_K, T: float = KNN_T) -> dict:
    """DINO eval_knn.py's `knn_classifier` (cosine top-k, votes weighted exp(sim / T)) on raw pixels:
    each image as the ToTensor + Normalize(ImageNet) RGB tensor the k-NN inputs are, flattened and
    L2-normalised; the first `limit` train images as the bank, the first `test_limit` t10k images
    as the test set."""
    import numpy as np

    def feats(images):
        x = images.astype(np.float32)[:, None] / 255.0  # gray -> the 3 equal channels of .convert("RGB")
        x = (x - np.array(IMAGENET_MEAN, np.float32)[:, None, None]) / np.array(IMAGENET_STD, np.float32)[:, None, None]
        x = x.reshape(len(x), -1)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    bank = feats(read_idx(data / "train-images-idx3-ubyte.gz", limit))
    bank_labels = read_idx(data / "train-labels-idx1-ubyte.gz", limit).astype(np.int64)
    test = feats(read_idx(data / "t10k-images-idx3-ubyte.gz", test_limit))
    test_labels = read_idx(data / "t10k-labels-idx1-ubyte.gz", test_limit).astype(np.int64)
    sim = test @ bank.T
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    d = np.take_along_axis(sim, top, 1)
    votes = np.zeros((len(test), 10))
    np.add.at(votes, (np.arange(len(test))[:, None], bank_labels[top]), np.exp(d.astype(np.float64) / T))
    pred = np.argsort(-votes, axis=1, kind="stable")
    return dict(top1=float((pred[:, 0] == test_labels).mean() * 100), top5=float(
        (pred[:, :5] == test_labels[:, None]).any(1).mean() * 100), k=k, temperature=T, bank=len(bank), test=len(test))


# ----------------------------------------------------------------------------------------------
# Reading the runs
# ----------------------------------------------------------------------------------------------
def vista_result(run_dir: pathlib.Path) -> dict:
    """A finished `vista train dino` folder: per-epoch wall times, per-step times, k-NN."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "loss" in r]
    epoch_s = {r["epoch"]: r["epoch_seconds"] for r in rows if "epoch_seconds" in r}
    knn = [r["knn_top1"] for r in rows if "knn_top1" in r]
    init = [r["knn_top1_init"] for r in rows if "knn_top1_init" in r]
    cfg = {}
    if (run_dir / "checkpoint.json").exists():
        cfg = json.loads((run_dir / "checkpoint.json").read_text()).get("config", {})
    epochs = sorted({s["epoch"] for s in steps})
    return dict(
        framework="vista", seed=cfg.get("seed"), epochs=[epoch_s.get(e) for e in epochs],
        steps=[[s["seconds"] for s in steps if s["epoch"] == e] for e in epochs],
        images_per_epoch=sum(s["images"] for s in steps if s["epoch"] == epochs[0]) if epochs else 0,
        knn=knn[-1] if knn else None, knn_init=init[0] if init else None, rss_mb=None, source=str(run_dir))


def torch_result(path: pathlib.Path) -> dict:
    """The reference script's JSON: per-epoch wall times, per-step times, k-NN, peak RSS."""
    tj = json.loads(path.read_text())
    cfg, knn = tj.get("config", {}), tj.get("knn", {})
    n_img = cfg.get("resolved", {}).get("niter_per_ep", 0) * cfg.get("batch", 0)
    return dict(
        framework="torch", seed=cfg.get("seed"), epochs=[e["seconds"] for e in tj["epochs"]],
        steps=[e.get("step_seconds") for e in tj["epochs"]], images_per_epoch=n_img,
        knn=knn.get("trained_teacher"), knn_init=knn.get("random_init"), knn_raw_torch=knn.get("raw_pixels"),
        limit=cfg.get("limit"), test_limit=cfg.get("test_limit"),
        rss_mb=tj.get("peak_rss_self_mb"), rss_worker_mb=tj.get("peak_rss_children_mb"), source=str(path))


def summarize(r: dict) -> dict:
    """Medians over the epochs: epoch wall time, step time, time outside the steps."""
    ep = [e for e in r["epochs"] if e is not None]
    steps = [s for s in r["steps"] if s]
    out = dict(r, epoch_median=median(ep) if ep else None, epoch_range=(min(ep), max(ep)) if ep else None,
               step_median=median([x for s in steps for x in s]) if steps else None,
               steps_per_epoch=len(steps[0]) if steps else None)
    outside = [e - sum(s) for e, s in zip(r["epochs"], r["steps"]) if e is not None and s]
    out["outside_median"] = median(outside) if outside else None
    out["images_per_s"] = r["images_per_epoch"] / out["epoch_median"] if out["epoch_median"] else None
    return out


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
def rss_text(r) -> str:
    if r.get("rss_mb") is None:
        return "—"
    if r.get("rss_worker_mb"):
        return f"{r['rss_mb']:.0f} + {r['rss_worker_mb']:.0f} (DataLoader worker)"
    return f"{r['rss_mb']:.0f}"


def render(results, raw, meta) -> str:
    arch = meta.get("arch", "vit")  # results saved before --arch existed are the ViT's
    begin, end = markers(arch)
    lines = benchlib.header_lines(meta, "bench_dino_train.py", THREADS, begin=begin)
    lines += [
        f"Configuration (both): `{' '.join(CONFIGS[arch])} --warmup-epochs {meta['warmup_epochs']} --limit {meta['limit']} "
        f"--epochs {meta['epochs']}` and `--seed` per row; k-NN on the first {meta['test_limit']} t10k images. "
        "*s / epoch*: the epoch's wall time from the data loader's start to its last step (data loading, data "
        "waits and steps; no checkpoint, no k-NN), median over the epochs (range in brackets). *s / step*: one "
        "step from the batch in hand to the optimiser and EMA updates done (data loading not included), median "
        "over all steps. *outside steps*: epoch time minus its steps' times (loader start, waits for data), "
        "median. images/s = images per epoch / median epoch. Peak RSS from `wait4` (vista: its one process) "
        "or the reference script's own `getrusage` (PyTorch: main process + its DataLoader worker). Each "
        "framework has its own seeded initialisation and random streams: the runs share the recipe, not the "
        "numbers." + meta["quiet_note"],
        "",
        "| framework | seed | epochs | s / epoch | s / step | steps / epoch | outside steps, s / epoch | images/s "
        "| peak RSS MB | k-NN top-1 at init, % | k-NN top-1 after, % | others |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        rng = f" ({r['epoch_range'][0]:.1f}-{r['epoch_range'][1]:.1f})" if r["epoch_range"] and len(r["epochs"]) > 1 else ""
        lines.append(
            f"| {NAMES[r['framework']]} | {r['seed'] if r['seed'] is not None else '?'} | {len(r['epochs'])} | "
            f"**{fmt(r['epoch_median'])}**{rng} | {fmt(r['step_median'], 3)} | {r['steps_per_epoch'] or '—'} | "
            f"{fmt(r['outside_median'])} | {fmt(r['images_per_s'], 0)} | {rss_text(r)} | {fmt(r['knn_init'])} | "
            f"{fmt(r['knn'])} | {fmt(r.get('others'))} |")
    lines += [f"| failed: {f} | | | | | | | | | | | |" for f in meta["failures"]]
    lines.append("")
    ratios = []
    for seed in sorted({r["seed"] for r in results}, key=str):
        v = next((r for r in results if r["framework"] == "vista" and r["seed"] == seed), None)
        t = next((r for r in results if r["framework"] == "torch" and r["seed"] == seed), None)
        if v and t and v["epoch_median"] and t["epoch_median"]:
            step = (f", step {v['step_median'] / t['step_median']:.2f}×" if v["step_median"] and t["step_median"]
                    else "")
            ratios.append(f"seed {seed}: epoch {v['epoch_median'] / t['epoch_median']:.2f}×{step}")
    if ratios:
        lines += ["vista / PyTorch time (below 1: vista faster): " + "; ".join(ratios) + ".", ""]
    if raw:
        torch_raw = [r["knn_raw_torch"] for r in results if r.get("knn_raw_torch") is not None]
        by = (f"`vista knn --pixels`, vista {raw.get('vista')}" if raw.get("by")
              else "`bench_dino_train.py --worker raw-knn` with numpy")
        lines += [f"Raw-pixel k-NN baseline (computed by {by}: "
                  f"eval_knn.py's weighted vote, k = {raw['k']}, T = {raw['temperature']}, on the ImageNet-normalised "
                  f"pixels, {raw['bank']} train images as the bank, {raw['test']} test images): top-1 "
                  f"**{raw['top1']:.2f} %** (top-5 {raw['top5']:.2f} %)"
                  + (f"; the PyTorch reference's own raw-pixel k-NN: {torch_raw[0]:.2f} %" if torch_raw else "") + ".",
                  ""]
    lines.append(end)
    return "\n".join(lines) + "\n"


def print_summary(results, raw) -> None:
    benchlib.print_table([
        ("framework", -9, lambda r: NAMES[r["framework"]]), ("seed", 4, lambda r: str(r["seed"])),
        ("epochs", 6, lambda r: str(len(r["epochs"]))), ("s/epoch", 8, lambda r: fmt(r["epoch_median"])),
        ("s/step", 7, lambda r: fmt(r["step_median"], 3)), ("outside", 8, lambda r: fmt(r["outside_median"])),
        ("img/s", 6, lambda r: fmt(r["images_per_s"], 0)), ("RSS MB", 28, rss_text),
        ("kNN init", 8, lambda r: fmt(r["knn_init"])), ("kNN after", 9, lambda r: fmt(r["knn"])),
        ("others", 6, lambda r: fmt(r.get("others"))),
    ], results)
    if raw:
        print(f"raw-pixel k-NN (numpy, k={raw['k']}, T={raw['temperature']}): top-1 {raw['top1']:.2f} %")


# ----------------------------------------------------------------------------------------------
# Orchestrator
# ----------------------------------------------------------------------------------------------
def orchestrate(args) -> int:
    data = data_dir(args.data)
    tabulate = bool(args.vista_run or args.torch_json)
    bench = benchlib.Bench("bench_dino_train.py", args, packages=PACKAGES, gemm=not tabulate)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    warmup = min(WARMUP_EPOCHS, args.epochs)
    results = []
    if tabulate:
        results += [vista_result(d) for d in args.vista_run or []]
        results += [torch_result(f) for f in args.torch_json or []]
    else:
        exe = benchlib.vista_binary(args, "bin", "vista")
        out_dir = args.out / "dino-train"
        out_dir.mkdir(parents=True, exist_ok=True)
        cfg = CONFIGS[args.arch] + ["--warmup-epochs", str(warmup), "--limit", str(args.limit), "--epochs", str(args.epochs)]
        # Each seed is a round: both frameworks, the order rotated from one seed to the next.
        for rnd, _, fw in benchlib.schedule(len(seeds), [None], FRAMEWORKS):
            seed = seeds[rnd]
            tag, log = f"{fw}/seed{seed}", out_dir / f"{fw}-e{args.epochs}-s{seed}.log"
            print(f"== seed {seed}: {NAMES[fw]}, {args.epochs} epoch(s) of {args.limit} images (log {log})", flush=True)
            if fw == "vista":
                run_dir = out_dir / f"vista-e{args.epochs}-s{seed}"
                shutil.rmtree(run_dir, ignore_errors=True)
                cmd = [exe, "train", "dino", "--data", data, *cfg, "--seed", seed, "--knn-every", args.epochs,
                       "--knn-test-limit", args.test_limit, "--knn-k", KNN_K, "-o", run_dir]
            else:
                tjp = out_dir / f"torch-e{args.epochs}-s{seed}.json"
                tjp.unlink(missing_ok=True)
                cmd = [args.python, REFERENCE, "--data", data, *cfg, "--seed", seed, "--test-limit", args.test_limit,
                       "--knn-k", KNN_K, "--knn-temperature", KNN_T, "--threads", args.threads, "--out", tjp]
            res = bench.run(cmd, fw, tag, log=log)
            if res is None:
                continue
            r = vista_result(run_dir) if fw == "vista" else torch_result(tjp)
            if fw == "vista":
                r["rss_mb"] = res["rss_mb"]
            r.update(seed=seed, others=res["others"], wall_s=res["wall_s"])
            results.append(r)
            s = summarize(r)
            print(f"   {fmt(s['epoch_median'])} s/epoch, {fmt(s['step_median'], 3)} s/step, k-NN {fmt(s['knn_init'])} -> "
                  f"{fmt(s['knn'])} %, peak RSS {rss_text(s)} MB, process {res['wall_s']:.0f} s, others "
                  f"{res['others']:.2f} cores", flush=True)
    results = [summarize(r) for r in results]
    if tabulate:  # the finished runs' sizes, where their files say them
        args.limit = next((r["limit"] for r in results if r.get("limit")), args.limit)
        args.test_limit = next((r["test_limit"] for r in results if r.get("test_limit")), args.test_limit)
        args.epochs = max(len(r["epochs"]) for r in results) if results else args.epochs
    raw = vista_raw_knn(benchlib.vista_binary(args, "bin", "vista"), data, args.limit, args.test_limit, bench.env["vista"])
    print_summary(results, raw)
    meta = bench.meta(arch=args.arch, epochs=args.epochs, limit=args.limit, test_limit=args.test_limit, seeds=seeds,
                      warmup_epochs=warmup, data=str(data), tabulated=tabulate)
    arch = "" if args.arch == "vit" else f"-{args.arch}"
    name = (f"bench_dino_train{arch}_results-tabulated.json" if tabulate
            else f"bench_dino_train{arch}_results-e{args.epochs}.json")
    return bench.finish(name, dict(meta=meta, results=results, raw_knn=raw),
                        lambda: render(results, raw, meta), *markers(args.arch))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    benchlib.add_common_args(ap, rounds=None, quick="1 epoch of 640 images, k-NN on 200 test images, seed 0 (smoke test)")
    ap.add_argument("--arch", choices=sorted(CONFIGS), default="vit",
                    help="workload: vit (a 4-block ViT, AdamW) or resnet50 (DINO's ResNet-50 with SGD)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default 10)")
    ap.add_argument("--limit", type=int, default=None, help="first N training images (default 5000)")
    ap.add_argument("--test-limit", type=int, default=None, help="first M t10k images for the k-NN (default 2000)")
    ap.add_argument("--seeds", default=None, help="comma list; each seed runs both frameworks (default 0,1)")
    ap.add_argument("--data", type=pathlib.Path, default=None,
                    help="Fashion-MNIST IDX folder (default: $FASHION_MNIST_DIR, bench-out/fashion-mnist, "
                         "/usr/share/datasets/fashion-mnist, the first that exists)")
    ap.add_argument("--vista-run", type=pathlib.Path, action="append",
                    help="tabulate this finished vista run folder instead of running (repeatable)")
    ap.add_argument("--torch-json", type=pathlib.Path, action="append",
                    help="tabulate this finished PyTorch result JSON instead of running (repeatable)")
    ap.add_argument("--worker", choices=("raw-knn",), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    quick = dict(epochs=1, limit=640, test_limit=200, seeds="0")
    full = dict(epochs=10, limit=5000, test_limit=2000, seeds="0,1")
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.worker == "raw-knn":
        print(json.dumps(raw_pixel_knn(data_dir(args.data), args.limit, args.test_limit)))
        return 0
    benchlib.resolve_common(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
