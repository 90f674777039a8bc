"""Does `vista train dino` learn? A DINO ResNet-50 run on Fashion-MNIST, its k-NN top-1 against
random initialisation, and the run interrupted and resumed half-way.

Three things are measured, all by vista, all with the same data and k-NN evaluation (DINO's
`eval_knn.py` weighted vote, k = 20, T = 0.07, on the teacher backbone in evaluation mode; the
first --limit training images, with their labels, as the memory bank and the first --test-limit
t10k images as the test set):

* **random initialisation, two ways.** A ResNet's evaluation reads its BatchNorm running
  statistics. At initialisation they are torch's 0 and 1 (`knn_top1_init` of every run: the
  random convolutions with no normalisation at all). Training replaces them within a few dozen
  steps by the statistics of the training crops, whatever the weights do; the trained network is
  always evaluated with such statistics. So the baseline run trains one epoch with learning rate
  and weight decay 0: the same random weights, the running statistics of the same crops.
* **the learning run**: the recipe below for --epochs epochs, in two calls: the first stops after
  half the epochs (`--max-epochs`), the second resumes the run folder and finishes; k-NN every
  --knn-every epochs.
* the raw-pixel k-NN (`vista knn --pixels`) for scale.
* a cross-check in PyTorch (`--worker torch-knn`, torchvision's `resnet50` with `fc` = identity):
  vista's exported teacher backbones (`backbone.safetensors` of the baseline and of the learning
  run) loaded as they are, the same k-NN on the same images by the reference script's code
  (tools/reference/train_dino_fmnist.py: its evaluation transform, features, eval_knn.py's
  `knn_classifier`), with their running statistics (the
  numbers vista printed, again) and with *precise BatchNorm* statistics (running statistics reset,
  then recomputed as the mean over the bank's clean images, in batches of 100, of the batch
  statistics: torch's `momentum=None` cumulative average, as fvcore's `update_bn_stats`), and a
  fresh torchvision initialisation both ways. Precise statistics remove the one thing the crops'
  statistics could add (augmented crops are not the clean images the k-NN sees) and give the
  untrained network normalisation measured on the evaluated images themselves.

The report gives, per epoch, the mean loss, the mean teacher entropy (ln K is a uniform
teacher: collapse) and the mean KL between teacher and student, and the k-NN where evaluated.

    python tools/bench/dino_learning.py --report BENCHMARKS-AVX2.md     # 16 epochs: about 40 min on 2 cores
    python tools/bench/dino_learning.py --quick --no-write              # smoke test (2 epochs, 256 images)

An existing run folder (`--out`/dino-learning/run) is resumed, not restarted: vista refuses a
folder whose recorded configuration differs from the command's. --fresh removes it first.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import shutil
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (stdlib only)
from benchlib import fmt  # noqa: E402
from bench_dino_train import KNN_K, data_dir, vista_raw_knn  # noqa: E402

BEGIN, END = "<!-- dino_learning:begin -->", "<!-- dino_learning:end -->"

# DINO's ResNet-50 (torchvision's, BatchNorm in training mode in student and teacher) with SGD as DINO's README
# trains it, at Fashion-MNIST's 28 px; BatchNorm in the head (main_dino.py's --use_bn_in_head): without it
# this run's teacher drifts to uniform in the first epochs (see BENCHMARKS); teacher temperature 0.02 (DINO's
# default 0.04 also learns here, more slowly, its teacher nearer uniform). lr 0.3 for 256 images (0.075 at
# batch 64), teacher momentum 0.99 → 1: a run of a few hundred steps.
RECIPE = [
    "--arch", "resnet50", "--global-size", "28", "--local-size", "12", "--local-crops", "4", "--out-dim", "4096",
    "--head-hidden", "2048", "--batch", "64", "--use-bn-in-head", "true", "--optimizer", "sgd", "--lr", "0.3",
    "--weight-decay", "1e-4", "--weight-decay-end", "1e-4", "--warmup-epochs", "1", "--momentum-teacher", "0.99",
    "--teacher-temp", "0.02", "--warmup-teacher-temp", "0.02",
]
# The baseline: one epoch of the same recipe that moves no weight.
FROZEN = {"--lr": "0", "--min-lr": "0", "--weight-decay": "0", "--weight-decay-end": "0"}


def with_values(args: list, values: dict) -> list:
    """`args` (flag, value pairs) with the flags in `values` set to theirs (added if absent)."""
    out, i = [], 0
    while i < len(args):
        if args[i] in values:
            i += 2
            continue
        out.append(args[i])
        i += 1
    for k, v in values.items():
        out += [k, v]
    return out


def epochs_done(run: pathlib.Path) -> int:
    """Epochs a run folder's metrics.jsonl records as finished (0 for a new folder)."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if "epoch_seconds" in json.loads(line))


def torch_knn_worker(args) -> int:
    """`--worker torch-knn`: the PyTorch cross-check (see the module docstring); one JSON line. The
    k-NN inputs, features and vote are the reference script's (tools/reference/train_dino_fmnist.py:
    `EVAL_TRANSFORM` of the grey image as RGB, `extract_features` in evaluation mode, eval_knn.py's
    `knn_classifier`)."""
    import torch
    import torchvision
    from safetensors.torch import load_file

    sys.path.insert(0, str(benchlib.REPO_ROOT / "tools" / "reference"))
    from bench_dino_train import KNN_T
    from train_dino_fmnist import EVAL_TRANSFORM, extract_features, knn_eval, load_split, to_pil

    threads = benchlib.torch_threads(args.threads)
    data = data_dir(args.data)

    def split(name: str, limit: int):
        images, labels = load_split(data, name, limit)
        return torch.stack([EVAL_TRANSFORM(to_pil(im)) for im in images]), torch.from_numpy(labels.astype("int64"))

    (bank, bank_labels), (test, test_labels) = split("train", args.limit), split("t10k", args.test_limit)

    def knn(model) -> float:
        r = knn_eval(extract_features(model, bank), bank_labels, extract_features(model, test), test_labels, KNN_K, KNN_T)
        return round(r["top1"], 2)

    def precise_bn(model) -> None:
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        model.train()
        with torch.no_grad():
            for i in range(0, len(bank), 100):
                model(bank[i:i + 100])

    def resnet50():
        model = torchvision.models.resnet50()
        model.fc = torch.nn.Identity()
        return model

    rows = []
    for spec in args.backbone or []:
        label, path = spec.split("=", 1)
        model = resnet50()
        model.load_state_dict(load_file(path), strict=True)
        running = knn(model)
        precise_bn(model)
        rows.append(dict(label=label, path=path, knn_running=running, knn_precise=knn(model)))
    torch.manual_seed(args.seed)
    model = resnet50()
    initial = knn(model)
    precise_bn(model)
    rows.append(dict(label="fresh", path=None, knn_running=initial, knn_precise=knn(model)))
    print(json.dumps(dict(rows=rows, seed=args.seed, bank=args.limit, test=args.test_limit, torch=torch.__version__,
                          torchvision=torchvision.__version__, **threads)), flush=True)
    return 0


def read_metrics(run: pathlib.Path) -> dict:
    """metrics.jsonl of a run folder: per epoch the steps' mean loss / teacher entropy / KL, the
    epoch's seconds, the k-NN where evaluated; and the k-NN at initialisation."""
    epochs: dict = {}
    init = None
    for line in (run / "metrics.jsonl").read_text().splitlines():
        d = json.loads(line)
        if "knn_top1_init" in d:
            init = d["knn_top1_init"]
            continue
        e = epochs.setdefault(d.get("epoch"), dict(loss=[], entropy=[], kl=[], steps=0))
        if "iteration" in d:
            e["loss"].append(d["loss"])
            e["entropy"].append(d["teacher_entropy"])
            e["kl"].append(d["kl"])
            e["steps"] += 1
        if "epoch_seconds" in d:
            e["seconds"] = d["epoch_seconds"]
        if "knn_top1" in d:
            e["knn"] = d["knn_top1"]
    rows = []
    for k in sorted(x for x in epochs if x is not None):
        e = epochs[k]
        mean = (lambda xs: sum(xs) / len(xs) if xs else None)
        rows.append(dict(epoch=k, steps=e["steps"], loss=mean(e["loss"]), entropy=mean(e["entropy"]),
                         kl=mean(e["kl"]), seconds=e.get("seconds"), knn=e.get("knn")))
    return dict(init=init, epochs=rows)


def render(meta: dict, base: dict, run: dict, raw: dict, calls: list, check: dict) -> str:
    lines = benchlib.header_lines(meta, "dino_learning.py", ["vista `RAYON_NUM_THREADS`, plus its one data-loader thread"],
                                  "## Does DINO training learn? ResNet-50 on Fashion-MNIST (vista)", BEGIN)
    k_uniform = math.log(meta["out_dim"])
    best = max((r["knn"] for r in run["epochs"] if r["knn"] is not None), default=None)
    lines += [
        f"Recipe: `{' '.join(RECIPE)} --epochs {meta['epochs']}`; the first {meta['limit']} training images; "
        f"k-NN (k = {KNN_K}, T = 0.07, teacher backbone, running statistics) with those {meta['limit']} images as the "
        f"bank and the first {meta['test_limit']} t10k images as the test set. The run is two calls (the second "
        "resumes the folder the first left after half the epochs); the epochs each found done and left done in "
        "this invocation (a folder trained before is resumed, not retrained):",
        "",
        *[f"    {c['command']}    # epochs {c['before']} -> {c['after']}" for c in calls],
        "",
        "| k-NN top-1 on the same test set | % |",
        "|---|---:|",
        f"| random weights, BatchNorm statistics at torch's initial 0 / 1 | {fmt(run['init'])} |",
        f"| random weights, BatchNorm statistics of the training crops (one epoch at lr 0) | **{fmt(base['after'])}** |",
        f"| raw pixels (`vista knn --pixels`) | {fmt(raw['top1'])} |",
        f"| trained teacher, best of the evaluated epochs | **{fmt(best)}** |",
        f"| trained teacher, last epoch | **{fmt(run['epochs'][-1]['knn'] if run['epochs'] else None)}** |",
        "",
        "The same k-NN in PyTorch (`--worker torch-knn`): torchvision's `resnet50` (`fc` = identity) with vista's "
        "exported teacher backbone loaded as it is (`backbone.safetensors`, strict), evaluated with its running "
        "statistics, then with precise BatchNorm statistics: reset, and recomputed over the "
        f"{meta['limit']} clean bank images (batches of 100; torch's cumulative average, `momentum=None`):",
        "",
        "| network | running statistics | precise statistics (bank images) |",
        "|---|---:|---:|",
        f"| the baseline's weights (random, one epoch at lr 0) | {fmt(check['baseline']['knn_running'])} "
        f"| {fmt(check['baseline']['knn_precise'])} |",
        f"| a fresh torchvision initialisation (seed {meta['seed']}; running statistics 0 / 1) "
        f"| {fmt(check['fresh']['knn_running'])} | {fmt(check['fresh']['knn_precise'])} |",
        f"| the trained teacher (last epoch) | **{fmt(check['trained']['knn_running'])}** "
        f"| **{fmt(check['trained']['knn_precise'])}** |",
        "",
        f"Per epoch (means over its steps; a uniform teacher has entropy ln K = {k_uniform:.3f}):",
        "",
        "| epoch | steps | loss | teacher entropy | KL(teacher ‖ student) | s / epoch | k-NN top-1 % |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in run["epochs"]:
        lines.append(f"| {r['epoch']} | {r['steps']} | {fmt(r['loss'], 4)} | {fmt(r['entropy'], 3)} | {fmt(r['kl'], 3)} "
                     f"| {fmt(r['seconds'], 1)} | {fmt(r['knn'])} |")
    lines += ["", END, ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benchlib.add_common_args(ap, rounds=None, quick="2 epochs of 256 images (a smoke test)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs of the learning run (default 16)")
    ap.add_argument("--limit", type=int, default=None, help="first N training images (default 2000)")
    ap.add_argument("--test-limit", type=int, default=None, help="first M t10k images for the k-NN (default 1000)")
    ap.add_argument("--knn-every", type=int, default=2, help="k-NN every N epochs (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=pathlib.Path, default=None, help="Fashion-MNIST IDX folder")
    ap.add_argument("--fresh", action="store_true", help="remove an existing run folder first")
    ap.add_argument("--worker", choices=("torch-knn",), help=argparse.SUPPRESS)
    ap.add_argument("--backbone", action="append", help=argparse.SUPPRESS)  # LABEL=PATH, for --worker torch-knn
    args = ap.parse_args(argv)
    for k, full, quick in (("epochs", 16, 2), ("limit", 2000, 256), ("test_limit", 1000, 200)):
        if getattr(args, k) is None:
            setattr(args, k, quick if args.quick else full)
    benchlib.resolve_common(args)
    if args.worker == "torch-knn":
        return torch_knn_worker(args)
    data = data_dir(args.data)
    bench = benchlib.Bench("dino_learning.py", args, packages=("torch",))
    exe = benchlib.vista_binary(args, "bin", "vista")
    out = args.out / "dino-learning"
    out.mkdir(parents=True, exist_ok=True)
    common = ["--data", str(data), *RECIPE, "--limit", str(args.limit), "--knn-test-limit", str(args.test_limit),
              "--knn-k", str(KNN_K), "--seed", str(args.seed)]

    base_dir = out / "baseline"
    shutil.rmtree(base_dir, ignore_errors=True)
    print("== baseline: random weights, one epoch at lr 0", flush=True)
    base_cmd = [exe, "train", "dino", *with_values(common, FROZEN), "--epochs", "1", "--knn-every", "1", "-o", base_dir]
    if bench.run(base_cmd, "vista", "baseline", log=out / "baseline.log") is None:
        return 1
    b = read_metrics(base_dir)
    base = dict(init=b["init"], after=b["epochs"][-1]["knn"])

    run_dir = out / "run"
    if args.fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
    learn = [*common, "--epochs", str(args.epochs), "--knn-every", str(args.knn_every), "-o", str(run_dir)]
    half = max(1, args.epochs // 2)
    calls = []
    for i, extra in enumerate((["--max-epochs", str(half)], [])):
        cmd = [exe, "train", "dino", *learn, *extra]
        before = epochs_done(run_dir)
        print(f"== learning run, call {i + 1} of 2 (the folder has {before} epochs)", flush=True)
        if bench.run(cmd, "vista", f"run{i}", log=out / f"run{i}.log") is None:
            return 1
        calls.append(dict(command="vista train dino " + " ".join(str(c) for c in cmd[3:]), before=before,
                          after=epochs_done(run_dir)))
    run = read_metrics(run_dir)
    raw = vista_raw_knn(exe, data, args.limit, args.test_limit, bench.env["vista"])
    print("== cross-check in PyTorch: the exported backbones in torchvision, running and precise BatchNorm statistics",
          flush=True)
    check_cmd = [args.python, pathlib.Path(__file__).resolve(), "--worker", "torch-knn", "--data", data,
                 "--limit", args.limit, "--test-limit", args.test_limit, "--seed", args.seed, "--threads", args.threads,
                 "--backbone", f"baseline={base_dir / 'backbone.safetensors'}",
                 "--backbone", f"trained={run_dir / 'backbone.safetensors'}"]
    check = bench.run(check_cmd, "torch", "torch-knn")
    if check is None:
        return 1
    check = {r["label"]: r for r in check["json"][-1]["rows"]}
    for r in run["epochs"]:
        print(f"   epoch {r['epoch']}: loss {fmt(r['loss'], 4)}, entropy {fmt(r['entropy'], 3)}, kl {fmt(r['kl'], 3)}, "
              f"k-NN {fmt(r['knn'])}", flush=True)
    print(f"k-NN: init {fmt(run['init'])}, random weights with data statistics {fmt(base['after'])}, "
          f"raw pixels {fmt(raw['top1'])}", flush=True)
    for r in check.values():
        print(f"   PyTorch, {r['label']}: running statistics {fmt(r['knn_running'])}, precise {fmt(r['knn_precise'])}",
              flush=True)
    meta = bench.meta(epochs=args.epochs, limit=args.limit, test_limit=args.test_limit, out_dim=4096, seed=args.seed)
    return bench.finish("dino_learning_results.json", dict(meta=meta, baseline=base, run=run, raw_knn=raw, calls=calls,
                                                         torch_check=check),
                        lambda: render(meta, base, run, raw, calls, check), BEGIN, END)


if __name__ == "__main__":
    sys.exit(main())
