"""The evaluation of `vista fit` redone in scikit-learn, on the same features, folds and
hyper-parameters: k-NN (DINO's weighted vote, exp(cos / T) over the k nearest by cosine) and
L2-penalised multinomial logistic regression (scikit-learn's lbfgs, intercept not penalised).

    vista fit DATA --pixels --dino MODEL ... --export OUT --report OUT/report.json
    python tools/reference/fit_sklearn.py OUT/report.json [--tolerance 0.5]

For every (backbone, method) row of the report with k-NN or logistic regression, each outer
fold is refitted with the hyper-parameters vista's inner cross-validation chose for it, and the
mean accuracies are compared. Exits non-zero when one differs by more than the tolerance (in
accuracy points). Needs scikit-learn (not part of CI).
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", type=pathlib.Path)
    ap.add_argument("--tolerance", type=float, default=0.5, help="accuracy points (default 0.5)")
    args = ap.parse_args(argv)
    report = json.loads(args.report.read_text())
    backbones = {b["name"]: b for b in report["backbones"]}
    worst = 0.0
    print(f"{'backbone':<28} {'method':<10} {'vista %':>8} {'sklearn %':>10} {'diff':>6}")
    for row in report["results"]:
        if row["method"] not in ("knn", "logistic"):
            continue
        b = backbones[row["backbone"]]
        if "features" not in b:
            sys.exit(f"{row['backbone']}: no exported features (run vista fit with --export)")
        x = np.load(b["features"]).astype(np.float64)
        y = np.asarray(b["labels"])
        folds = np.asarray(b["folds"])
        n_folds = int(folds.max()) + 1
        accs = []
        for f in range(n_folds):
            te, tr = folds == f, folds != f
            if not te.any():
                continue
            p = params_of(row["params"][len(accs)])
            if row["method"] == "knn":
                accs.append(knn_accuracy(x[tr], y[tr], x[te], y[te], int(p["k"]), p["T"]))
            else:
                accs.append(logistic_accuracy(x[tr], y[tr], x[te], y[te], p["C"]))
        ours, theirs = 100 * row["accuracy"], 100 * float(np.mean(accs))
        worst = max(worst, abs(ours - theirs))
        print(f"{row['backbone']:<28} {row['method']:<10} {ours:>8.2f} {theirs:>10.2f} {ours - theirs:>+6.2f}")
    print(f"largest difference: {worst:.2f} points (tolerance {args.tolerance})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
