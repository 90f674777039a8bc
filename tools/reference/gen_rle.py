"""Golden fixtures for COCO run-length encoding (pycocotools.mask), for vista::apps::masks.

Writes <out_dir>/cases.json:
  {"reference": "pycocotools.mask", "versions": {...},
   "cases": [{"name": str, "height": h, "width": w,
              "bits": hex string (the mask row-major, one bit a pixel, first pixel = most
                      significant bit, numpy.packbits order, zero-padded to a byte),
              "size": [h, w], "counts": str (pycocotools.mask.encode, bytes decoded as ASCII),
              "area": int (mask.area), "bbox": [x, y, w, h] (mask.toBbox, floats),
              "json": str (json.dumps of {"size": [h, w], "counts": str}),
              "uncompressed": [...] (column-major run lengths, first = zeros; small cases only,
                              checked here to go through frPyObjects to the same string)}],
   "polygons": [{"name": str, "height": h, "width": w, "polygons": [[x1, y1, ...], ...],
                 "size", "counts", "area", "bbox", "json" as above, for frPyObjects + merge}]}

The masks are given to the Rust tests in a form that is not RLE, so the encoder is tested
against pycocotools rather than against itself. Polygon cases with corners on pixel
corners and axis-aligned edges: pycocotools' frPoly (5x up-sampled edge walk) then covers
exactly the pixels whose centres lie inside; the others (float, diagonal, clipped, degenerate)
pin the Rust port of rleFrPoly to pycocotools' rounding.

Deterministic (numpy default_rng with fixed seeds); no torch needed.

Run standalone (writes crates/vista/tests/fixtures/rle/):
    python tools/reference/gen_rle.py
or through tools/reference/gen_fixtures.py, which calls main(out_dir).
"""

from __future__ import annotations

import importlib.metadata
import json
import pathlib
import sys
from typing import Dict, List

import numpy as np
from pycocotools import mask as mask_utils

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "crates" / "vista" / "tests" / "fixtures" / "rle"
# Uncompressed counts are stored only up to this many runs (they are for the reader test).
MAX_UNCOMPRESSED_RUNS = 300


def _disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return ((y - cy) ** 2 + (x - cx) ** 2 <= r * r).astype(np.uint8)


def _masks() -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(20240611)
    out: Dict[str, np.ndarray] = {}
    out["one_pixel_off"] = np.zeros((1, 1), np.uint8)
    out["one_pixel_on"] = np.ones((1, 1), np.uint8)
    out["empty_shape_0x5"] = np.zeros((0, 5), np.uint8)
    out["all_zero_6x9"] = np.zeros((6, 9), np.uint8)
    out["all_one_7x5"] = np.ones((7, 5), np.uint8)
    out["row_1x40"] = (rng.random((1, 40)) < 0.5).astype(np.uint8)
    out["column_33x1"] = (rng.random((33, 1)) < 0.5).astype(np.uint8)
    m = (rng.random((23, 37)) < 0.5).astype(np.uint8)
    m[0, 0] = 1
    out["random_first_set_23x37"] = m
    m = np.zeros((17, 29), np.uint8)
    m[16, 28] = 1
    out["last_pixel_only_17x29"] = m
    out["checker_12x10"] = (np.indices((12, 10)).sum(axis=0) % 2).astype(np.uint8)
    out["sparse_80x100"] = (rng.random((80, 100)) < 0.08).astype(np.uint8)
    # Blobs: a disk with a hole, a rectangle, a thin diagonal line: runs of all lengths, and
    # deltas against counts[i-2] of both signs (multi-character groups in the string).
    m = _disk(150, 210, 70.0, 80.0, 55.0)
    m[60:80, 70:95] = 0
    m[10:140, 150:200] = 1
    for i in range(120):
        m[min(149, 20 + i), i] = 1
    out["blobs_150x210"] = m
    out["big_disk_320x256"] = _disk(320, 256, 150.0, 120.0, 110.0)
    return out


def _polygons() -> Dict[str, tuple]:
    # (height, width, polygons). The first four have corners on the pixel lattice and
    # axis-aligned edges (what vista's exact polygons look like); the rest exercise rleFrPoly's
    # 1/5-pixel rounding, ties on diagonal edges, clipping and degenerate input.
    rng = np.random.default_rng(7)
    ang = np.sort(rng.random(11)) * 2 * np.pi
    rad = 6 + 14 * rng.random(11)
    star = np.stack([24.3 + rad * np.cos(ang), 19.7 + rad * np.sin(ang)], 1).reshape(-1)
    return {
        "rectangle": (12, 14, [[2, 3, 8, 3, 8, 9, 2, 9]]),
        "l_shape": (20, 16, [[1, 1, 6, 1, 6, 12, 14, 12, 14, 18, 1, 18]]),
        "two_overlapping": (16, 16, [[0, 0, 10, 0, 10, 6, 0, 6], [4, 2, 16, 2, 16, 16, 4, 16]]),
        "u_shape_touching_border": (10, 12, [[0, 0, 3, 0, 3, 7, 9, 7, 9, 0, 12, 0, 12, 10, 0, 10]]),
        "diamond_integer": (21, 23, [[11, 1, 21, 10, 11, 19, 1, 10]]),
        "random_float_star": (40, 48, [[round(float(v), 4) for v in star]]),
        "clipped_triangle": (15, 18, [[-5.5, 2.25, 25.0, -3.0, 9.7, 20.1]]),
        "repeated_vertex_and_sliver": (12, 12, [[1, 1, 9, 1, 9, 1, 9.4, 7.2, 1, 7], [3, 9, 11, 9.3, 3, 9.5]]),
    }


def _run_lengths(m: np.ndarray) -> List[int]:
    """Column-major run lengths, first run zeros: independent of pycocotools."""
    flat = m.flatten(order="F").astype(bool)
    counts: List[int] = []
    current, run = False, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = bool(v), 0
        run += 1
    counts.append(run)
    return counts


def _rle_fields(rle) -> dict:
    size = [int(v) for v in rle["size"]]
    counts = rle["counts"].decode("ascii")
    return {
        "size": size,
        "counts": counts,
        "area": int(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        # What json.dumps writes for encode()'s dict with the counts decoded to str.
        "json": json.dumps({"size": size, "counts": counts}),
    }


def main(out_dir: pathlib.Path) -> None:
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    cases = []
    for name, m in _masks().items():
        h, w = m.shape
        rle = mask_utils.encode(np.asfortranarray(m))
        back = mask_utils.decode(rle)
        assert back.shape == m.shape and (back == m).all(), name
        case = {"name": name, "height": h, "width": w, "bits": np.packbits(m.reshape(-1)).tobytes().hex()}
        case.update(_rle_fields(rle))
        runs = _run_lengths(m)
        assert sum(runs) == h * w
        if len(runs) <= MAX_UNCOMPRESSED_RUNS:
            # The uncompressed form goes through frPyObjects to the same compressed string.
            again = mask_utils.frPyObjects({"size": [h, w], "counts": runs}, h, w)
            assert again["counts"] == rle["counts"], name
            case["uncompressed"] = runs
        cases.append(case)

    polygons = []
    for name, (h, w, polys) in _polygons().items():
        rles = mask_utils.frPyObjects([[float(v) for v in p] for p in polys], h, w)
        rle = mask_utils.merge(rles)
        entry = {"name": name, "height": h, "width": w, "polygons": polys}
        entry.update(_rle_fields(rle))
        polygons.append(entry)

    versions = {
        "pycocotools": importlib.metadata.version("pycocotools"),
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }
    # One case per line: readable diffs, small file.
    lines = ["{", '"reference": "pycocotools.mask",', f'"versions": {json.dumps(versions)},', '"cases": [']
    lines.append(",\n".join(json.dumps(c, separators=(",", ":")) for c in cases))
    lines.append("],")
    lines.append('"polygons": [')
    lines.append(",\n".join(json.dumps(p, separators=(",", ":")) for p in polygons))
    lines.append("]")
    lines.append("}")
    path = out_dir / "cases.json"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(cases)} masks, {len(polygons)} polygon sets)")


if __name__ == "__main__":
    main(DEFAULT_OUT)
