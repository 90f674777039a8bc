"""Golden fixtures for vista's few-shot heads (vista::eval::fit): Tip-Adapter's logits as the
reference code computes them (Zhang et al. 2022, gaopengcuhk/Tip-Adapter `main.py`:
`affinity = test @ cache_keys`, `cache_logits = exp(-(beta - beta * affinity)) @ cache_values`,
`tip_logits = 100 * test @ clip_weights + alpha * cache_logits`) and the WiSE-FT-style blend of
the zero-shot head and a linear probe (`W = (1 - a) * 100 * T + a * W_probe`, `b = a * b_probe`),
in float64 numpy on seeded random unit vectors.

Writes <out_dir>/formulas.json: {"cases": [{"name", "dim", "classes", "cache" [N, D],
"cache_labels" [N], "text" [C, D], "test" [M, D], "alpha", "beta", "tip_logits" [M, C],
"probe_weight" [C, D], "probe_bias" [C], "blend_alpha", "blend_logits" [M, C]}]}.
Tolerance in tests/suite/fit_formulas.rs: 1e-5 relative to max(1, |logit|) (vista computes in f32).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "crates" / "vista" / "tests" / "fixtures" / "fit"


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)  # the exact f32 vectors vista reads


def case(name, seed, n, m, d, c, alpha, beta, blend_alpha):
    rng = np.random.default_rng(seed)
    cache = unit(rng, n, d)
    labels = rng.integers(0, c, n)
    text = unit(rng, c, d)
    test = unit(rng, m, d)
    values = np.eye(c)[labels]
    affinity = test.astype(np.float64) @ cache.astype(np.float64).T
    cache_logits = np.exp(-1 * (beta - beta * affinity)) @ values
    clip_logits = 100.0 * test.astype(np.float64) @ text.astype(np.float64).T
    tip = clip_logits + cache_logits * alpha
    w_probe = rng.standard_normal((c, d)).astype(np.float32)
    b_probe = rng.standard_normal(c).astype(np.float32)
    w = (1 - blend_alpha) * 100.0 * text.astype(np.float64) + blend_alpha * w_probe.astype(np.float64)
    b = blend_alpha * b_probe.astype(np.float64)
    blend = test.astype(np.float64) @ w.T + b
    f = lambda a: [[float(v) for v in row] for row in np.asarray(a)]  # noqa: E731
    return {"name": name, "dim": d, "classes": c, "cache": f(cache), "cache_labels": [int(v) for v in labels],
            "text": f(text), "test": f(test), "alpha": alpha, "beta": beta, "tip_logits": f(tip),
            "probe_weight": f(w_probe), "probe_bias": [float(v) for v in b_probe], "blend_alpha": blend_alpha,
            "blend_logits": f(blend)}


def main(out_dir: pathlib.Path = DEFAULT_OUT) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = [case("small", 1, 12, 5, 8, 3, 1.0, 5.5, 0.5),
             case("wide", 2, 40, 7, 64, 5, 2.5, 1.0, 0.25),
             case("sharp", 3, 30, 6, 16, 4, 0.5, 10.0, 0.75)]
    (out_dir / "formulas.json").write_text(json.dumps({"reference": __doc__.split("\n")[0], "cases": cases}) + "\n")


if __name__ == "__main__":
    main()
