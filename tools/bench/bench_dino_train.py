"""DINO training on Fashion-MNIST: `vista train dino` vs the PyTorch reference
(tools/reference/train_dino_fmnist.py, main_dino.py's recipe), same config, same machine, same
thread count, one after the other.

Reports per framework: wall seconds per epoch (training loop only: data loading and augmentation
included, k-NN evaluation excluded), images/s, peak RSS, and the k-NN top-1 (k = 20, T = 0.07,
teacher backbone, train subset as the memory bank, the first --test-limit t10k images as the
test set) after the run; plus the random-init and raw-pixel k-NN baselines (from the PyTorch
script, which computes both).

ONNX Runtime has no part here: it runs inference graphs, not this training loop.

    python tools/bench/bench_dino_train.py --epochs 10              # the learning comparison
    python tools/bench/bench_dino_train.py --epochs 1 --no-knn       # timing only
    python tools/bench/bench_dino_train.py --vista-run DIR --torch-json FILE   # tabulate finished runs

Both runs get the same flags (see CONFIG). vista is the release binary target/release/vista
(build it first: cargo build --release).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "bench"))
import benchlib  # noqa: E402

CONFIG = [
    "--arch", "vit_tiny", "--depth", "4", "--embed-dim", "128", "--num-heads", "4", "--patch", "4",
    "--global-size", "28", "--local-size", "12", "--local-crops", "6", "--out-dim", "4096",
    "--head-hidden", "2048", "--warmup-epochs", "2", "--lr", "0.002", "--batch", "64", "--workers", "1",
    "--seed", "0",
]
BEGIN = "<!-- bench_dino_train:begin -->"
END = "<!-- bench_dino_train:end -->"


def peak_rss_mb(cmd, env=None, log=None):
    """Runs `cmd`; returns (exit code, seconds, peak RSS MB of the process and its children)."""
    t0 = time.perf_counter()
    with open(log, "w") if log else open(os.devnull, "w") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(p.pid, 0)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - t0, usage.ru_maxrss / 1024.0


def vista_epochs(run_dir: pathlib.Path):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    steps = [r for r in rows if "loss" in r]
    knn = [r["knn_top1"] for r in rows if "knn_top1" in r]
    init = [r["knn_top1_init"] for r in rows if "knn_top1_init" in r]
    return steps, (knn[-1] if knn else None), (init[0] if init else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--limit", type=int, default=5000)
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-knn", action="store_true", help="skip the k-NN evaluations (timing only)")
    ap.add_argument("--python", default=str(pathlib.Path("/work/venv/ref/bin/python")))
    ap.add_argument("--out-dir", type=pathlib.Path, default=ROOT / "bench-out" / "dino-train")
    ap.add_argument("--vista-run", type=pathlib.Path, help="tabulate this finished vista run instead of running one")
    ap.add_argument("--torch-json", type=pathlib.Path, help="tabulate this finished PyTorch result instead")
    ap.add_argument("--no-write", action="store_true", help="print, do not update BENCHMARKS.md")
    args = ap.parse_args()
    cfg = CONFIG + ["--limit", str(args.limit), "--epochs", str(args.epochs)]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CANDLE_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))

    vista_rss = torch_rss = None
    if args.vista_run:
        vdir = args.vista_run
    else:
        vdir = args.out_dir / f"vista-e{args.epochs}"
        subprocess.run(["rm", "-rf", str(vdir)])
        knn = [] if args.no_knn else ["--knn-every", str(args.epochs), "--knn-test-limit", str(args.test_limit)]
        cmd = [str(ROOT / "target" / "release" / "vista"), "train", "dino", "--data",
               "/usr/share/datasets/fashion-mnist", *cfg, *knn, "-o", str(vdir)]
        code, _, vista_rss = peak_rss_mb(cmd, env=env, log=args.out_dir / "vista.log")
        if code != 0:
            sys.exit(f"vista failed ({code}); see {args.out_dir / 'vista.log'}")
    steps, vista_knn, vista_init = vista_epochs(vdir)

    if args.torch_json:
        tj = json.loads(args.torch_json.read_text())
    else:
        tjp = args.out_dir / f"torch-e{args.epochs}.json"
        cmd = [args.python, str(ROOT / "tools" / "reference" / "train_dino_fmnist.py"), *cfg,
               "--test-limit", str(args.test_limit), "--threads", str(args.threads), "--out", str(tjp)]
        code, _, torch_rss = peak_rss_mb(cmd, env=env, log=args.out_dir / "torch.log")
        if code != 0:
            sys.exit(f"PyTorch failed ({code}); see {args.out_dir / 'torch.log'}")
        tj = json.loads(tjp.read_text())

    epochs = sorted({s["epoch"] for s in steps})
    v_sec = [sum(s["seconds"] for s in steps if s["epoch"] == e) for e in epochs]
    t_sec = [e["seconds"] for e in tj["epochs"]]
    n = args.limit - args.limit % 64
    lines = [
        BEGIN,
        "| | vista | PyTorch |",
        "|---|---:|---:|",
        f"| seconds per epoch, median of {len(v_sec)} / {len(t_sec)} | {statistics.median(v_sec):.1f} | {statistics.median(t_sec):.1f} |",
        f"| images/s | {n / statistics.median(v_sec):.0f} | {n / statistics.median(t_sec):.0f} |",
    ]
    if vista_rss or torch_rss:
        lines.append(f"| peak RSS, MB | {vista_rss or float('nan'):.0f} | {torch_rss or float('nan'):.0f} |")
    k = tj.get("knn", {})
    if vista_knn is not None and k:
        lines.append(f"| k-NN top-1 (k = 20) after {args.epochs} epochs, % | {vista_knn:.2f} | {k.get('trained_teacher', float('nan')):.2f} |")
        vi = f"{vista_init:.2f}" if vista_init is not None else ""
        lines.append(f"| random-init backbone (each its own seeded init), % | {vi} | {k.get('random_init', float('nan')):.2f} |")
        lines.append(f"| raw pixels, % | {k.get('raw_pixels', float('nan')):.2f} | |")
    lines.append(END)
    block = "\n".join(lines) + "\n"
    print(block)
    if not args.no_write:
        benchlib.write_marked_section(ROOT / "BENCHMARKS.md", block, BEGIN, END)


if __name__ == "__main__":
    main()
