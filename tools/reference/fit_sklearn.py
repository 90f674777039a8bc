"""The evaluation of `vista fit` redone in scikit-learn, on the same features, folds and
hyper-parameters: k-NN (DINO's weighted vote, exp(cos / T) over the k nearest by cosine) and
L2-penalised multinomial logistic regression (scikit-learn's lbfgs, intercept not penalised).

    vista fit DATA --pixels --dino MODEL ... --export OUT --report OUT/report.json
    python tools/reference/fit_sklearn.py OUT/report.json [--tolerance 0.5]

For every (backbone, method) row of the report with k-NN or logistic regression, each outer
fold is refitted with the hyper-parameters vista's inner cross-validation chose for it, and so is
each draw of each learning-curve point (`--shots`: its training rows and parameters are in the
report; the test rows are every other row of a class with more than that many), and the mean
accuracies are compared. Exits non-zero when one differs by more than the tolerance (in accuracy
points). `--golden FILE` writes scikit-learn's accuracies for the CI test that reruns vista on
the same data (`crates/vista-cli/tests/suite/fashion_mnist.rs`). Needs scikit-learn (not part of
CI).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier


def params_of(s: str) -> dict:
    return {k: float(v) for k, v in (kv.split("=") for kv in s.split())}


def knn_accuracy(x_tr, y_tr, x_te, y_te, k: int, t: float) -> float:
    clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                               weights=lambda d: np.exp((1.0 - d) / t))
    clf.fit(x_tr, y_tr)
    return float((clf.predict(x_te) == y_te).mean())


def logistic_accuracy(x_tr, y_tr, x_te, y_te, c: float) -> float:
    clf = LogisticRegression(C=c, max_iter=10000, tol=1e-8)
    clf.fit(x_tr, y_tr)
    return float((clf.predict(x_te) == y_te).mean())


def curve_test_rows(y: np.ndarray, train: np.ndarray, shots: int) -> np.ndarray:
    """vista's test rows of a learning-curve draw: every row of a class with more than `shots`
    rows that is not a training row."""
    counts = np.bincount(y)
    keep = counts[y] > shots
    keep[train] = False
    return np.flatnonzero(keep)


def accuracy_of(method: str, params: str, x, y, tr, te) -> float:
    p = params_of(params)
    if method == "knn":
        # vista votes among at most the training rows it has.
        return knn_accuracy(x[tr], y[tr], x[te], y[te], min(int(p["k"]), len(tr)), p["T"])
    return logistic_accuracy(x[tr], y[tr], x[te], y[te], p["C"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", type=pathlib.Path)
    ap.add_argument("--tolerance", type=float, default=0.5, help="accuracy points (default 0.5)")
    ap.add_argument("--golden", type=pathlib.Path,
                    help="also write scikit-learn's accuracies here (JSON: per result row and curve point)")
    args = ap.parse_args(argv)
    report = json.loads(args.report.read_text())
    backbones = {b["name"]: b for b in report["backbones"]}
    loaded = {}

    def features(name):
        if name not in loaded:
            b = backbones[name]
            if "features" not in b:
                sys.exit(f"{name}: no exported features (run vista fit with --export)")
            loaded[name] = (np.load(b["features"]).astype(np.float64), np.asarray(b["labels"]), np.asarray(b["folds"]))
        return loaded[name]

    worst = 0.0
    golden = {"sklearn": __import__("sklearn").__version__, "results": [], "curves": []}
    print(f"{'backbone':<28} {'method':<10} {'shots':>5} {'vista %':>8} {'sklearn %':>10} {'diff':>6}")
    for row in report["results"]:
        if row["method"] not in ("knn", "logistic"):
            continue
        x, y, folds = features(row["backbone"])
        accs = []
        for f in range(int(folds.max()) + 1):
            te, tr = np.flatnonzero(folds == f), np.flatnonzero(folds != f)
            if len(te) == 0:
                continue
            accs.append(accuracy_of(row["method"], row["params"][len(accs)], x, y, tr, te))
        ours, theirs = 100 * row["accuracy"], 100 * float(np.mean(accs))
        worst = max(worst, abs(ours - theirs))
        golden["results"].append({"backbone": row["backbone"], "method": row["method"], "accuracy": theirs / 100})
        print(f"{row['backbone']:<28} {row['method']:<10} {'cv':>5} {ours:>8.2f} {theirs:>10.2f} {ours - theirs:>+6.2f}")
    for curve in report.get("curves", []):
        if curve["method"] not in ("knn", "logistic"):
            continue
        x, y, _ = features(curve["backbone"])
        points = []
        for point in curve["points"]:
            accs = []
            for draw in point["draws"]:
                tr = np.asarray(draw["train"])
                te = curve_test_rows(y, tr, point["shots"])
                accs.append(accuracy_of(curve["method"], draw["params"], x, y, tr, te))
            ours, theirs = 100 * point["accuracy"], 100 * float(np.mean(accs))
            worst = max(worst, abs(ours - theirs))
            points.append({"shots": point["shots"], "accuracy": theirs / 100})
            print(f"{curve['backbone']:<28} {curve['method']:<10} {point['shots']:>5} "
                  f"{ours:>8.2f} {theirs:>10.2f} {ours - theirs:>+6.2f}")
        golden["curves"].append({"backbone": curve["backbone"], "method": curve["method"], "points": points})
    print(f"largest difference: {worst:.2f} points (tolerance {args.tolerance})")
    if args.golden:
        args.golden.write_text(json.dumps(golden, indent=1) + "\n")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
