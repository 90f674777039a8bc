"""CLIP training from scratch: `vista train clip` vs the PyTorch reference (tools/reference/train_clip_openclip.py,
open_clip_train's recipe called through `train_one_epoch`), same data, same flags, same seeds, same machine, same
thread count, one process at a time, for each of several seeds, on one or two workloads.

Workloads (`--workload fmnist|openclipart|both`); every size below is a flag, the defaults aim at about five
minutes per framework and seed on a quiet 2-core machine (PyTorch's DINO reference ran ~0.9 s per step of similar
size there; measure before trusting this):

* `fmnist`: the first `--limit` 10,000 Fashion-MNIST training images (the IDX file; grey, converted to RGB),
  captioned "a photo of a {class}." (`--templates`); zero-shot top-1 on the first `--test-limit` 10,000 t10k
  images (`--zero-shot-limit`). Model: 28 px, patch 4 (7x7 grid), vision 4 layers of
  width 128 (2 heads of 64), text 4 layers of width 128, 2 heads, context 16, embed 128; batch 128 (78 steps per
  epoch), 3 epochs, lr 1e-3, warm-up 100 steps, weight decay 0.2. Chance: 1 / 10. No retrieval set: the template
  captions of one class are the same text, so image<->text recall would score ties, not learning.
* `openclipart`: Debian's Open Clip Art Library (`apt-get install openclipart-png openclipart-svg`), its ~2,900
  drawings with a usable title, captioned "<title>. <keywords>" by tools/data/openclipart_captions.py (run once
  into bench-out/openclipart-<S>/ with `--resize S --square`, S = `--resize` 64: RGB copies on white, padded
  square, longest side 64); every 10th image held out (`--hold-out-every 10`, ~290 images) for image<->text
  recall@1/5/10 (each image with its caption). Model: 32 px, patch 4, vision 4 x 128, text 4 x 128 (2 heads),
  context 32, embed 128; batch 128 (~20 steps per epoch), 8 epochs, lr 1e-3, warm-up 30, weight decay 0.2.
  Chance: K / held-out images for recall@K.

Both frameworks get the same command-line flags (the `vista train clip` contract; the reference takes the same
ones, plus --threads) and write the same files: `metrics.jsonl` (per step: loss, lr, logit_scale, grad_norm,
samples, seconds; per epoch: epoch_seconds; per evaluation: zero_shot_top1 and/or recall) and `report.json`.
Compared:

* epoch: the wall time of one whole epoch, data loading included (`epoch_seconds`: loader start, worker start-up,
  data waits and every step; no evaluation) -> samples/s = samples per epoch / median epoch;
* step: one optimiser step from the batch in hand to the update done (per-step `seconds`), median;
* peak RSS from `wait4` for both (the process, or the largest of its reaped children: PyTorch's DataLoader worker
  is a fork and counts the pages it shares); the reference's own getrusage split is in the raw results;
* the learning numbers after the last epoch (evaluated once, after it: `--eval-every` = epochs), with the chance
  levels. Each framework has its own seeded initialisation and random streams: the runs share the recipe, not
  the numbers.

    python tools/bench/bench_clip_train.py --workload both --seeds 0,1        # the full run (~40 min on 2 cores)
    python tools/bench/bench_clip_train.py --quick --no-write                # smoke test (1 epoch, small sets, seed 0)
    python tools/bench/bench_clip_train.py --dry-run                         # the command lines only
    python tools/bench/bench_clip_train.py --frameworks torch --quick --no-write   # the PyTorch side only

vista is target/release/vista (built first unless --no-build; `--vista PATH` for another binary), run from a
private copy.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (stdlib only)
from benchlib import REPO_ROOT, fmt, median  # noqa: E402

FRAMEWORKS = ("vista", "torch")
NAMES = {"vista": "vista", "torch": "PyTorch"}
WORKLOADS = ("fmnist", "openclipart")
PACKAGES = ("torch", "torchvision", "open_clip_torch", "numpy", "pillow")
THREADS = ["vista `RAYON_NUM_THREADS`, plus its `--workers` data-loader thread(s)",
           "PyTorch `torch.set_num_threads`, `set_num_interop_threads(1)`, plus `--workers` DataLoader worker "
           "process(es)"]
BEGIN = "<!-- bench_clip_train:begin -->"
END = "<!-- bench_clip_train:end -->"
REFERENCE = REPO_ROOT / "tools" / "reference" / "train_clip_openclip.py"
BUILDER = REPO_ROOT / "tools" / "data" / "openclipart_captions.py"
OPENCLIPART = pathlib.Path("/usr/share/openclipart")
FMNIST_CLASSES = 10

# Per-workload defaults of the size flags (a flag given on the command line wins for every workload).
MODEL_FLAGS = ("image_size", "patch_size", "width", "layers", "text_width", "text_layers", "text_heads", "embed_dim",
               "context_length")
DEFAULTS = {
    "fmnist": dict(image_size=28, patch_size=4, width=128, layers=4, text_width=128, text_layers=4, text_heads=2,
                   embed_dim=128, context_length=16, batch_size=128, lr=1e-3, warmup=100, wd=0.2, epochs=3,
                   limit=10000, test_limit=10000, hold_out_every=None),
    "openclipart": dict(image_size=32, patch_size=4, width=128, layers=4, text_width=128, text_layers=4, text_heads=2,
                        embed_dim=128, context_length=32, batch_size=128, lr=1e-3, warmup=30, wd=0.2, epochs=8,
                        limit=None, test_limit=None, hold_out_every=10),
}
QUICK = {
    "fmnist": dict(epochs=1, limit=640, test_limit=1000, warmup=2),
    "openclipart": dict(epochs=1, limit=640, warmup=2),
}


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
def fmnist_dir(arg) -> pathlib.Path:
    """--fmnist, else $FASHION_MNIST_DIR, else bench-out/fashion-mnist, else the system datasets folder."""
    cands = [arg] if arg else [os.environ.get("FASHION_MNIST_DIR"), REPO_ROOT / "bench-out" / "fashion-mnist",
                               "/usr/share/datasets/fashion-mnist"]
    for c in cands:
        if c and (pathlib.Path(c) / "train-images-idx3-ubyte.gz").exists():
            return pathlib.Path(c)
    raise SystemExit("Fashion-MNIST not found: pass --fmnist DIR (the folder of {train,t10k}-{images-idx3,"
                     "labels-idx1}-ubyte.gz) or set FASHION_MNIST_DIR")


def openclipart_set(args, dry: bool) -> pathlib.Path:
    """bench-out/openclipart-<S>/captions.tsv, made by tools/data/openclipart_captions.py when missing (or --setup)."""
    out = args.out / f"openclipart-{args.resize}"
    tsv = out / "captions.tsv"
    cmd = [args.python, BUILDER, "--out", out, "--resize", args.resize, "--square"]
    if dry:
        if not tsv.exists() and not getattr(args, "_told_data", False):
            print("# data set (made on the first real run):\n" + shlex.join(map(str, cmd)))
            args._told_data = True
        return tsv
    if args.setup or not tsv.exists():
        if not (OPENCLIPART / "png").is_dir():
            raise SystemExit(f"{OPENCLIPART} missing: apt-get install openclipart-png openclipart-svg")
        print("== data: " + shlex.join(map(str, cmd)), flush=True)
        subprocess.run([str(c) for c in cmd], check=True, cwd=REPO_ROOT)
    return tsv


def caption_rows(tsv: pathlib.Path) -> int:
    """Images in a captions TSV the builder wrote (one row per image, a header)."""
    return max(0, sum(1 for line in tsv.open(encoding="utf-8") if line.strip()) - 1)


# ----------------------------------------------------------------------------------------------
# Command lines
# ----------------------------------------------------------------------------------------------
def resolved(args, wl: str) -> dict:
    """The workload's sizes: its defaults (or --quick's), overridden by the flags given."""
    c = dict(DEFAULTS[wl])
    if args.quick:
        c.update(QUICK[wl])
    for k in c:
        v = getattr(args, k, None)
        if v is not None:
            c[k] = v
    return c


def config_flags(args, wl: str, c: dict) -> list:
    """The flags both frameworks get (the `vista train clip` contract), but --data / --seed / -o."""
    flags = []
    for k in MODEL_FLAGS:
        flags += [f"--{k.replace('_', '-')}", str(c[k])]
    flags += ["--epochs", str(c["epochs"]), "--batch-size", str(c["batch_size"]), "--lr", str(c["lr"]),
              "--wd", str(c["wd"]), "--warmup", str(c["warmup"]), "--workers", str(args.workers),
              "--eval-every", str(c["epochs"])]
    if args.grad_clip_norm is not None:
        flags += ["--grad-clip-norm", str(args.grad_clip_norm)]
    if c["limit"] is not None:
        flags += ["--limit", str(c["limit"])]
    if wl == "fmnist":
        for t in args.templates or ["a photo of a {}."]:
            flags += ["--templates", t]
    if c["hold_out_every"]:
        flags += ["--hold-out-every", str(c["hold_out_every"])]
    return flags


def data_flags(args, wl: str, c: dict, dry: bool) -> tuple:
    """(--data / --zero-shot flags, chance levels, sizes) of a workload."""
    if wl == "fmnist":
        src = fmnist_dir(args.fmnist)
        n_test = min(c["test_limit"] or 10000, 10000)
        flags = ["--data", str(src / "train-images-idx3-ubyte.gz"),
                 "--zero-shot", str(src / "t10k-images-idx3-ubyte.gz")]
        if n_test < 10000:
            flags += ["--zero-shot-limit", str(n_test)]
        return flags, dict(zero_shot_top1=1 / FMNIST_CLASSES), dict(train=c["limit"], zero_shot=n_test)
    tsv = openclipart_set(args, dry)
    n = caption_rows(tsv) if tsv.exists() else None
    if n is not None and c["limit"] is not None:
        n = min(n, c["limit"])
    k = c["hold_out_every"]
    held = n // k if n is not None and k else None
    chance = dict(recall=[min(1.0, r / held) for r in (1, 5, 10)]) if held else {}
    return (["--data", str(tsv)], chance, dict(images=n, train=(n - held) if held else n, held_out=held))


def commands(args, wl: str, c: dict, seed: int, exe, run_dir: pathlib.Path, dry: bool):
    """({framework: command line}, chance levels, sizes, the shared flags but --data / --zero-shot / --seed)."""
    dflags, chance, sizes = data_flags(args, wl, c, dry)
    shared = config_flags(args, wl, c)
    flags = dflags + shared + ["--seed", str(seed)]
    vista = [exe, "train", "clip", *flags, "-o", run_dir / "vista"]
    torch = [args.python, REFERENCE, *flags, "--threads", str(args.threads), "-o", run_dir / "torch"]
    return {"vista": vista, "torch": torch}, chance, sizes, shared


# ----------------------------------------------------------------------------------------------
# Reading the runs (both write the same shape)
# ----------------------------------------------------------------------------------------------
def evaluation(row: dict):
    """An evaluation line's numbers: `{"evaluation": {...}}` (what vista writes) or the keys at the top level."""
    e = row.get("evaluation", row)
    return e if isinstance(e, dict) and ("zero_shot_top1" in e or "recall" in e) else None


def run_result(run_dir: pathlib.Path) -> dict:
    """A finished run folder: per-epoch wall times and samples, per-step times, the evaluations at the start and
    after the last epoch."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "loss" in r and "iteration" in r]
    epoch_s = {r["epoch"]: r["epoch_seconds"] for r in rows if "epoch_seconds" in r}
    start = next((evaluation(r) for r in rows if r.get("start") and evaluation(r)), None)
    evals = [evaluation(r) for r in rows if not r.get("start") and evaluation(r)]
    report = {}
    if (run_dir / "report.json").exists():
        report = json.loads((run_dir / "report.json").read_text())
    last = evals[-1] if evals else (report.get("trained") or {})
    start = start or report.get("start") or {}
    epochs = sorted(epoch_s)
    return dict(
        epochs=[epoch_s[e] for e in epochs],
        samples=[sum(s["samples"] for s in steps if s["epoch"] == e) for e in epochs],
        steps=[[s["seconds"] for s in steps if s["epoch"] == e] for e in epochs],
        loss_first=steps[0]["loss"] if steps else None, loss_last=steps[-1]["loss"] if steps else None,
        zero_shot_top1=last.get("zero_shot_top1"), recall=last.get("recall"),
        start_zero_shot_top1=start.get("zero_shot_top1"), start_recall=start.get("recall"),
        rss_self_mb=report.get("peak_rss_self_mb"), rss_children_mb=report.get("peak_rss_children_mb"),
        report_sizes=report.get("sizes"), source=str(run_dir))


def summarize(r: dict) -> dict:
    ep = [e for e in r["epochs"] if e is not None]
    steps = [x for s in r["steps"] for x in s]
    out = dict(r, epoch_median=median(ep) if ep else None, epoch_range=(min(ep), max(ep)) if ep else None,
               step_median=median(steps) if steps else None,
               steps_per_epoch=len(r["steps"][0]) if r["steps"] else None,
               samples_per_epoch=r["samples"][0] if r["samples"] else None)
    out["samples_per_s"] = (out["samples_per_epoch"] / out["epoch_median"]
                            if out["epoch_median"] and out["samples_per_epoch"] else None)
    return out


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
def pct(x, digits=1):
    return "—" if x is None else f"{100 * x:.{digits}f}"


def recall_text(rec) -> str:
    if not rec:
        return "—"
    return " / ".join(pct(x) for x in rec["image_to_text"]) + " · " + " / ".join(pct(x) for x in rec["text_to_image"])


def learning_text(r, prefix="") -> str:
    if r["workload"] == "fmnist":
        return pct(r.get(prefix + "zero_shot_top1"))
    return recall_text(r.get(prefix + "recall"))


def rss_text(r) -> str:
    return "—" if r.get("rss_mb") is None else f"{r['rss_mb']:.0f}"


def render(results, meta) -> str:
    lines = benchlib.header_lines(meta, "bench_clip_train.py", THREADS, begin=BEGIN)
    lines += [
        "Each row: one process of `vista train clip` or of the PyTorch reference "
        "(`tools/reference/train_clip_openclip.py`, open_clip_train's `train_one_epoch`), the same flags (below) "
        "and `--seed`. *s / epoch*: the epoch's wall time, data loading included (loader start, worker start-up, "
        "data waits, every step; no evaluation), median over the epochs (range in brackets). *s / step*: one "
        "optimiser step from the batch in hand to the update done, median over all steps. samples/s = samples per "
        "epoch / median epoch. Peak RSS from `wait4` (the process, or the largest of its reaped children: "
        "PyTorch's DataLoader workers are forks and count the pages they share with it). The learning numbers are "
        "the evaluations of the starting weights and after the last epoch. Each framework has its own seeded "
        "initialisation and random streams: the runs share the recipe, not the numbers." + meta["quiet_note"],
        "",
    ]
    for wl in meta["workloads"]:
        rows = [r for r in results if r["workload"] == wl]
        notes = [f for f in meta["failures"] if f.split("/")[0] == wl]
        if not rows and not notes:
            continue
        w = meta["workload_meta"][wl]
        sizes, chance = w["sizes"], w["chance"]
        if wl == "fmnist":
            title = "### Fashion-MNIST: zero-shot classification"
            what = (f"the first {sizes['train']} training images captioned through the templates; zero-shot top-1 "
                    f"on {sizes['zero_shot']} t10k images (chance {pct(chance['zero_shot_top1'])} %)")
            col = "zero-shot top-1, %"
        else:
            title = "### Open Clip Art: image–text retrieval"
            rc = chance.get("recall") or [None] * 3
            what = (f"{sizes['images']} Open Clip Art drawings (tools/data/openclipart_captions.py, copies of longest "
                    f"side {meta['resize']} padded square), {sizes['train']} for training, every "
                    f"{w['config']['hold_out_every']}th held out ({sizes['held_out']}) for recall@1/5/10, "
                    f"image→text · text→image (chance {' / '.join(pct(x, 2) for x in rc)} %)")
            col = "R@1 / 5 / 10 i→t · t→i, %"
        lines += [title, "", f"Data: {what}. Flags (both): `{shlex.join(w['flags'])}`.", "",
                  f"| framework | seed | epochs | s / epoch | s / step | steps / epoch | samples/s | peak RSS MB "
                  f"| loss first → last | {col} at the start | {col} after | others |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            rng = (f" ({r['epoch_range'][0]:.1f}-{r['epoch_range'][1]:.1f})"
                   if r["epoch_range"] and len(r["epochs"]) > 1 else "")
            lines.append(
                f"| {NAMES[r['framework']]} | {r['seed']} | {len(r['epochs'])} | **{fmt(r['epoch_median'])}**{rng} | "
                f"{fmt(r['step_median'], 3)} | {r['steps_per_epoch'] or '—'} | {fmt(r['samples_per_s'], 1)} | "
                f"{rss_text(r)} | {fmt(r['loss_first'], 3)} → {fmt(r['loss_last'], 3)} | "
                f"{learning_text(r, 'start_')} | **{learning_text(r)}** | {fmt(r.get('others'))} |")
        lines += [f"| failed: {f} | | | | | | | | | | | |" for f in notes]
        lines.append("")
        ratios = []
        for seed in sorted({r["seed"] for r in rows}):
            v = next((r for r in rows if r["framework"] == "vista" and r["seed"] == seed), None)
            t = next((r for r in rows if r["framework"] == "torch" and r["seed"] == seed), None)
            if v and t and v["epoch_median"] and t["epoch_median"]:
                step = (f", step {v['step_median'] / t['step_median']:.2f}×"
                        if v["step_median"] and t["step_median"] else "")
                ratios.append(f"seed {seed}: epoch {v['epoch_median'] / t['epoch_median']:.2f}×{step}")
        if ratios:
            lines += ["vista / PyTorch time (below 1: vista faster): " + "; ".join(ratios) + ".", ""]
    lines.append(END)
    return "\n".join(lines) + "\n"


def print_summary(results) -> None:
    benchlib.print_table([
        ("workload", -11, lambda r: r["workload"]), ("framework", -9, lambda r: NAMES[r["framework"]]),
        ("seed", 4, lambda r: str(r["seed"])), ("epochs", 6, lambda r: str(len(r["epochs"]))),
        ("s/epoch", 8, lambda r: fmt(r["epoch_median"])), ("s/step", 7, lambda r: fmt(r["step_median"], 3)),
        ("samples/s", 9, lambda r: fmt(r["samples_per_s"], 1)), ("RSS MB", 7, rss_text),
        ("loss", 13, lambda r: f"{fmt(r['loss_first'], 2)}->{fmt(r['loss_last'], 2)}"),
        ("at start (%)", 30, lambda r: learning_text(r, "start_")), ("after (%)", 30, learning_text),
        ("others", 6, lambda r: fmt(r.get("others"))),
    ], results)


# ----------------------------------------------------------------------------------------------
# Orchestrator
# ----------------------------------------------------------------------------------------------
def orchestrate(args) -> int:
    workloads = list(WORKLOADS) if args.workload == "both" else [args.workload]
    frameworks = benchlib.parse_list(args.frameworks, FRAMEWORKS, "framework")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    configs = {wl: resolved(args, wl) for wl in workloads}
    out_dir = args.out / "clip-train"
    if args.dry_run:
        exe = args.vista or (REPO_ROOT / "target" / "release" / "vista")
        for wl in workloads:
            for seed in seeds:
                run_dir = out_dir / f"{wl}-e{configs[wl]['epochs']}-s{seed}"
                cmds, chance, sizes, _ = commands(args, wl, configs[wl], seed, exe, run_dir, dry=True)
                print(f"# {wl}, seed {seed} (chance {chance}, sizes {sizes})")
                for fw in frameworks:
                    print(shlex.join(str(c) for c in cmds[fw]))
        return 0

    bench = benchlib.Bench("bench_clip_train.py", args, packages=PACKAGES)
    exe = benchlib.vista_binary(args, "bin", "vista", override=args.vista) if "vista" in frameworks else None
    out_dir.mkdir(parents=True, exist_ok=True)
    results, workload_meta = [], {}
    for wl in workloads:
        c = configs[wl]
        # Each seed is a round: every framework, the order rotated from one seed to the next.
        for rnd, _, fw in benchlib.schedule(len(seeds), [wl], frameworks):
            seed = seeds[rnd]
            run_dir = out_dir / f"{wl}-e{c['epochs']}-s{seed}"
            cmds, chance, sizes, flags = commands(args, wl, c, seed, exe, run_dir, dry=False)
            workload_meta[wl] = dict(config=c, chance=chance, sizes=sizes, flags=flags)
            target = run_dir / fw
            shutil.rmtree(target, ignore_errors=True)  # vista resumes from a checkpoint it finds there
            log = run_dir / f"{fw}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            print(f"== {wl}, seed {seed}: {NAMES[fw]}, {c['epochs']} epoch(s) (log {log})", flush=True)
            res = bench.run(cmds[fw], fw, f"{wl}/{fw}/seed{seed}", log=log)
            if res is None:
                continue
            try:
                r = run_result(target)
            except (OSError, ValueError, KeyError) as e:
                bench.failures.append(f"{wl}/{fw}/seed{seed} (no readable metrics: {e})")
                print(f"   FAILED: {target}: {e}", flush=True)
                continue
            r.update(workload=wl, framework=fw, seed=seed, rss_mb=res["rss_mb"], others=res["others"],
                     wall_s=res["wall_s"])
            s = summarize(r)
            results.append(s)
            print(f"   {fmt(s['epoch_median'])} s/epoch, {fmt(s['step_median'], 3)} s/step, "
                  f"{fmt(s['samples_per_s'], 1)} samples/s, learning {learning_text(s, 'start_')} -> "
                  f"{learning_text(s)} %, "
                  f"peak RSS {rss_text(s)} MB, "
                  f"process {res['wall_s']:.0f} s, others {res['others']:.2f} cores", flush=True)
    print_summary(results)
    for wl, w in workload_meta.items():
        print(f"chance ({wl}): " + json.dumps(w["chance"]))
    meta = bench.meta(workloads=workloads, seeds=seeds, frameworks=frameworks, workload_meta=workload_meta,
                      resize=args.resize, workers=args.workers)
    return bench.finish("bench_clip_train_results.json", dict(meta=meta, results=results),
                        lambda: render(results, meta), BEGIN, END)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    benchlib.add_common_args(ap, rounds=None, quick="1 epoch of 640 images (zero-shot on 1,000 t10k images), seed 0 "
                                                    "(smoke test)")
    ap.add_argument("--workload", choices=("fmnist", "openclipart", "both"), default="both")
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma list of vista,torch")
    ap.add_argument("--seeds", default=None, help="comma list; each seed runs every framework (default 0,1; --quick 0)")
    ap.add_argument("--dry-run", action="store_true", help="print the command lines and exit")
    ap.add_argument("--vista", type=pathlib.Path, default=None, help="the vista binary (default target/release/vista)")
    ap.add_argument("--setup", action="store_true", help="remake the Open Clip Art captions set")
    ap.add_argument("--fmnist", type=pathlib.Path, default=None,
                    help="Fashion-MNIST IDX folder (default: $FASHION_MNIST_DIR, bench-out/fashion-mnist, "
                         "/usr/share/datasets/fashion-mnist, the first that exists)")
    ap.add_argument("--resize", type=int, default=64, help="Open Clip Art copies' longest side (default 64)")
    ap.add_argument("--workers", type=int, default=1, help="data-loader workers of both (default 1)")
    ap.add_argument("--templates", action="append", default=None,
                    help='Fashion-MNIST caption / zero-shot template (repeatable; default "a photo of a {}.")')
    ap.add_argument("--grad-clip-norm", type=float, default=None, help="passed to both (default: no clipping)")
    sizes = ap.add_argument_group("sizes (default: per workload, see above; a flag applies to every workload)")
    for k in MODEL_FLAGS:
        sizes.add_argument(f"--{k.replace('_', '-')}", type=int, default=None)
    sizes.add_argument("--epochs", type=int, default=None)
    sizes.add_argument("--batch-size", type=int, default=None)
    sizes.add_argument("--lr", type=float, default=None)
    sizes.add_argument("--wd", type=float, default=None)
    sizes.add_argument("--warmup", type=int, default=None)
    sizes.add_argument("--limit", type=int, default=None, help="first N images of --data")
    sizes.add_argument("--test-limit", type=int, default=None, help="fmnist: zero-shot on the first N t10k images")
    sizes.add_argument("--hold-out-every", type=int, default=None, help="openclipart: the retrieval split")
    args = ap.parse_args(argv)
    if args.seeds is None:
        args.seeds = "0" if args.quick else "0,1"
    benchlib.resolve_common(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
