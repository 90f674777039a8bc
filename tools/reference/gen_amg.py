"""Golden fixtures for SAM's automatic mask generator (segment_anything.SamAutomaticMaskGenerator).

Writes <out_dir>/ (out_dir = crates/vista/tests/fixtures/amg):

  functions.json          per-function goldens of segment_anything.utils.amg (+ torchvision batched_nms, cv2
                          through remove_small_regions), see FUNCTIONS_DOC below and tools/reference/README.md
  amg_image_<H>x<W>.png   the deterministic RGB test image (the generators run on the DECODED png pixels)
  generator_<name>.json   SamAutomaticMaskGenerator(sam, **config).generate(image) on the committed tiny SAM
                          (fixtures/sam/vit_official/sam_vit_tiny.pth), plus every pre-filter candidate and the
                          margins of every threshold decision
  generator_m2m.json      SAM 2's SAM2AutomaticMaskGenerator (use_m2m=True) driven by the same tiny SAM 1 model
                          through an adapter (see Sam1PredictorAdapter); only written if `sam2` imports
  manifest.json           versions, checkpoint, image, configs, margins, mask counts, tolerances

Masks are hex strings of numpy.packbits of the row-major mask (first pixel = most significant bit of the first
byte, zero-padded to a byte), the same encoding as fixtures/rle/cases.json "bits".

Run through tools/reference/gen_fixtures.py (it sets up determinism first).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import pathlib
import sys
from typing import Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

CKPT_REL = "crates/vista/tests/fixtures/sam/vit_official/sam_vit_tiny.pth"
CFG_REL = "crates/vista/tests/fixtures/sam/vit_official/config.json"
IMAGE_HW = (60, 80)
MIN_MARGIN = 1e-3
GATED = ("pred_iou", "stability", "nms_iou_min", "nms_decision_gap_min", "nms_order_gap_min")
NEAR = 1e-4  # a pixel whose logit is within NEAR of a cut-off (0, +-offset) may flip in a port
MAX_KIB = 1536

TOLERANCES = {
    "functions.json": "exact (integers, bools, masks, keep lists, crop boxes, point grids bit-exact as float64; "
                      "stability scores exact as float32, NaN written as null)",
    "generator masks": "per annotation, decoded mask equal on >= 99.9 % of the pixels (max 0.1 % differ)",
    "predicted_iou": {"max_abs": 1e-3},
    "stability_score": {"max_abs": 1e-3},
    "bbox, area, crop_box, point_coords": "exact; where the mask differs, bbox / area may move by the differing "
                                          "pixels (bbox within 1 px)",
    "annotation order and count": "exact (every threshold margin >= 1e-3, see margins)",
    "candidates": "predicted_iou / stability_score max_abs 1e-3; box within 1 px; area within 0.1 % of H*W",
}


# ----------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------
def bits(m) -> str:
    m = np.asarray(m).astype(bool)
    return np.packbits(m.reshape(-1)).tobytes().hex()


def f32(x) -> float:
    """Exact value of a float32 as a python float (repr round-trips exactly)."""
    return float(np.float32(x))


def fnum(x: float) -> Optional[float]:
    x = float(x)
    return None if math.isnan(x) else x


def ref_versions() -> Dict[str, str]:
    v = {"torch": torch.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}
    for dist in ("segment-anything", "torchvision", "opencv-python-headless", "pycocotools", "pillow", "sam2",
                 "hydra-core"):
        try:
            v[dist] = importlib.metadata.version(dist)
        except Exception:  # pragma: no cover
            pass
    try:
        import cv2

        v["cv2.__version__"] = cv2.__version__
    except ImportError:  # pragma: no cover
        pass
    return v


# ----------------------------------------------------------------------------
# 1. per-function goldens
# ----------------------------------------------------------------------------
def _blob_mask(rng, h, w, n, rmin, rmax):
    y, x = np.mgrid[0:h, 0:w]
    m = np.zeros((h, w), bool)
    for _ in range(n):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(rmin, rmax)
        m |= (y - cy) ** 2 + (x - cx) ** 2 <= r * r
    return m


def fn_point_grids(amg):
    pg = [{"n": n, "points": amg.build_point_grid(n).tolist()} for n in (1, 2, 3, 5, 8, 32)]
    alg = []
    for n, L, s in ((32, 0, 1), (32, 2, 2), (16, 1, 1), (10, 2, 3)):
        grids = amg.build_all_layer_point_grids(n, L, s)
        alg.append({"n_per_side": n, "n_layers": L, "scale_per_layer": s,
                    "grids": [g.tolist() for g in grids]})
    return pg, alg


def fn_crop_boxes(amg):
    out = []
    for hw in ((37, 50), (90, 41), (60, 80), (768, 1024), (1500, 2000), (9000, 12000), (1, 5000), (5000, 1)):
        for L in (0, 1, 2):
            for r in (512 / 1500, 0.5, 0.0):
                boxes, layers = amg.generate_crop_boxes(hw, L, r)
                out.append({"im_size": list(hw), "n_layers": L, "overlap_ratio": r,
                            "crop_boxes": [[int(v) for v in b] for b in boxes], "layer_idxs": list(layers)})
    return out


def fn_near_edge(amg):
    rng = np.random.default_rng(1001)
    pairs = [
        ([0, 0, 50, 40], [0, 0, 80, 60]),      # left/top crop edges are image edges
        ([30, 20, 80, 60], [0, 0, 80, 60]),    # right/bottom crop edges are image edges
        ([100, 50, 400, 300], [0, 0, 500, 400]),  # interior crop: every edge is a crop edge
        ([0, 0, 80, 60], [0, 0, 80, 60]),      # the whole image
    ]
    out = []
    for crop, orig in pairs:
        cw, ch = crop[2] - crop[0], crop[3] - crop[1]
        boxes = []
        for _ in range(10):
            xs = np.sort(rng.integers(0, cw, 2))
            ys = np.sort(rng.integers(0, ch, 2))
            boxes.append([int(xs[0]), int(ys[0]), int(xs[1]), int(ys[1])])
        mx, my = cw // 2, ch // 2
        # exactly 20 / 21 px from each crop edge (in crop coordinates; x1/y1 compared with the crop's x1/y1)
        boxes += [[20, my - 1, mx, my], [21, my - 1, mx, my],
                  [mx - 1, 20, mx, my], [mx - 1, 21, mx, my],
                  [mx - 1, my - 1, cw - 20, my], [mx - 1, my - 1, cw - 21, my],
                  [mx - 1, my - 1, mx, ch - 20], [mx - 1, my - 1, mx, ch - 21],
                  [0, 0, cw - 1, ch - 1], [0, 0, cw, ch]]
        bt = torch.tensor(boxes, dtype=torch.int64)
        near = amg.is_box_near_crop_edge(bt, crop, orig)
        out.append({"crop_box": crop, "orig_box": orig, "atol": 20.0, "boxes": boxes,
                    "near": [bool(v) for v in near.tolist()]})
    return out


def fn_uncrop(amg):
    rng = np.random.default_rng(1002)
    ub, up = [], []
    for crop in ([0, 0, 50, 40], [30, 20, 80, 60], [123, 7, 400, 300]):
        b = torch.tensor(np.sort(rng.integers(0, 40, (4, 2, 2)), axis=1).transpose(0, 2, 1).reshape(4, 4))
        ub.append({"crop_box": crop, "boxes": b.tolist(), "out": amg.uncrop_boxes_xyxy(b, crop).tolist()})
        p = torch.tensor(rng.uniform(0, 40, (5, 2)))  # float64 like the generator's points
        up.append({"crop_box": crop, "points": p.tolist(), "out": amg.uncrop_points(p, crop).tolist()})
    return ub, up


def fn_mask_to_box(amg):
    rng = np.random.default_rng(1003)
    masks = {}
    masks["random_7x9"] = rng.random((7, 9)) < 0.3
    masks["random_sparse_23x31"] = rng.random((23, 31)) < 0.02
    masks["blobs_40x60"] = _blob_mask(rng, 40, 60, 3, 3, 8)
    masks["row_1x17"] = rng.random((1, 17)) < 0.4
    masks["col_19x1"] = rng.random((19, 1)) < 0.4
    m = np.zeros((1, 12), bool); m[0, 5] = True
    masks["row_single_1x12"] = m
    masks["empty_10x13"] = np.zeros((10, 13), bool)
    masks["full_6x11"] = np.ones((6, 11), bool)
    m = np.zeros((15, 20), bool); m[9, 4] = True
    masks["single_pixel_15x20"] = m
    m = np.zeros((16, 16), bool); m[0, 0] = True; m[15, 15] = True
    masks["corners_16x16"] = m
    m = np.zeros((33, 47), bool); m[32, :] = True
    masks["last_row_33x47"] = m
    masks["blob_64x48"] = _blob_mask(rng, 64, 48, 1, 10, 14)
    masks["empty_1x1"] = np.zeros((1, 1), bool)
    out = []
    for name, m in masks.items():
        box = amg.batched_mask_to_box(torch.from_numpy(m)[None])[0]
        out.append({"name": name, "height": m.shape[0], "width": m.shape[1], "bits": bits(m),
                    "box": [int(v) for v in box.tolist()]})
    # one batched call: a stack of equal-size masks gives the same boxes
    stack = torch.from_numpy(np.stack([masks["random_7x9"], np.zeros((7, 9), bool), np.ones((7, 9), bool)]))
    b = amg.batched_mask_to_box(stack)
    for i in range(3):
        assert b[i].tolist() == amg.batched_mask_to_box(stack[i:i + 1])[0].tolist()
    return out


def fn_stability(amg):
    g = common.generator(1004)
    planes = {}
    planes["randn3_7x9"] = torch.randn(7, 9, generator=g) * 3
    p = torch.randn(32, 32, generator=g) * 3
    flat = p.view(-1)
    flat[:40] = torch.tensor([1.0, -1.0, 0.0, 0.5, -0.5] * 8)  # exact values at the cut-offs
    planes["randn3_exact_cutoffs_32x32"] = p
    planes["randn3_64x48"] = torch.randn(64, 48, generator=g) * 3
    planes["randn1_16x20"] = torch.randn(16, 20, generator=g)
    planes["all_le_minus1_9x7"] = -1.0 - torch.rand(9, 7, generator=g) * 4  # union 0 at offset 1 -> NaN
    planes["all_le_minus1_exact_5x5"] = torch.full((5, 5), -1.0)  # union 0 at offset 1 (> -1 strict)
    planes["all_high_8x8"] = 2.0 + torch.rand(8, 8, generator=g)
    planes["half_minus_half_6x10"] = torch.tensor([-0.5, 0.5] * 30).view(6, 10)
    lin = torch.linspace(-2, 2, 41)
    planes["linspace_1x41"] = lin.view(1, 41)
    planes["randn3_41x1"] = torch.randn(41, 1, generator=g) * 3
    out = []
    for name, plane in planes.items():
        plane = plane.to(torch.float32).contiguous()
        scores = []
        for off in (1.0, 0.5):
            s = amg.calculate_stability_score(plane[None], 0.0, off)
            assert s.dtype == torch.float32, s.dtype
            scores.append(fnum(s[0].item()))
        out.append({"name": name, "height": plane.shape[0], "width": plane.shape[1], "mask_threshold": 0.0,
                    "logits": [float(v) for v in plane.reshape(-1).tolist()],
                    "offsets": [1.0, 0.5], "scores": scores})
    return out


def fn_rle(amg):
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(1005)
    masks = {
        "random_7x9": rng.random((7, 9)) < 0.5,
        "first_pixel_set_5x4": np.eye(5, 4, dtype=bool),
        "empty_6x8": np.zeros((6, 8), bool),
        "full_3x5": np.ones((3, 5), bool),
        "row_1x20": rng.random((1, 20)) < 0.5,
        "col_20x1": rng.random((20, 1)) < 0.5,
        "blobs_60x80": _blob_mask(rng, 60, 80, 4, 4, 15),
        "last_pixel_11x13": np.zeros((11, 13), bool),
    }
    masks["last_pixel_11x13"][10, 12] = True
    out = []
    for name, m in masks.items():
        rle = amg.mask_to_rle_pytorch(torch.from_numpy(m)[None])[0]
        area = amg.area_from_rle(rle)
        coco = amg.coco_encode_rle(rle)
        back = amg.rle_to_mask(rle)
        assert (back == m).all()
        assert np.array_equal(mask_utils.decode({"size": coco["size"], "counts": coco["counts"].encode()}), m)
        out.append({"name": name, "height": m.shape[0], "width": m.shape[1], "bits": bits(m),
                    "counts": [int(c) for c in rle["counts"]], "area": int(area),
                    "coco_size": [int(v) for v in coco["size"]], "coco_counts": coco["counts"]})
    return out


def fn_small_regions(amg):
    rng = np.random.default_rng(1006)
    masks = {}
    masks["random_blobs_48x64"] = _blob_mask(rng, 48, 64, 8, 1, 7)
    masks["noise_20x30"] = rng.random((20, 30)) < 0.45
    m = np.zeros((24, 24), bool)
    for i in range(4, 20):
        m[i, i] = True  # 8-connected diagonal line: one region of 16 px (4-connectivity would give 16 of 1 px)
    m[2, 20] = True
    masks["diagonal_line_24x24"] = m
    m = np.ones((30, 40), bool)
    for i in range(3, 27):
        m[i, 40 - i] = False  # diagonal hole line (8-connected)
    m[0:3, 10:14] = False  # hole touching the top border
    m[20:30, 0:2] = False  # hole touching the left and bottom border
    m[10:13, 10:13] = False  # interior 3x3 hole (9 px)
    masks["holes_touching_border_30x40"] = m
    m = np.zeros((32, 32), bool)
    m[2:4, 2:4] = True  # 4
    m[10:13, 20:23] = True  # 9 (largest)
    m[25, 5:8] = True  # 3
    m[28:30, 28:30] = True  # 4
    masks["all_islands_small_32x32"] = m
    m = np.zeros((20, 20), bool)
    m[2:5, 2:5] = True  # 9
    m[10:13, 12:15] = True  # 9 (tie)
    masks["tied_islands_20x20"] = m
    m = np.zeros((16, 16), bool)
    m[3:5, 3:5] = True
    m[9:11, 9:11] = True  # two tied islands of 4, both below 5 and 30
    masks["tied_small_islands_16x16"] = m
    masks["empty_12x12"] = np.zeros((12, 12), bool)
    masks["full_12x12"] = np.ones((12, 12), bool)
    yy, xx = np.mgrid[0:40, 0:40]
    r2 = (yy - 20) ** 2 + (xx - 20) ** 2
    masks["ring_with_hole_40x40"] = (r2 <= 15 ** 2) & (r2 > 2 ** 2)  # interior hole of 13 px
    masks["sparse_noise_64x64"] = rng.random((64, 64)) < 0.08
    masks["dense_noise_64x64"] = rng.random((64, 64)) < 0.85
    masks["row_1x30"] = rng.random((1, 30)) < 0.5
    m = np.zeros((25, 35), bool)
    m[5:20, 5:30] = True
    m[8:10, 8:10] = False  # hole of 4
    m[12:17, 12:17] = False  # hole of 25
    m[1, 1] = True  # island of 1
    m[22:24, 32:34] = True  # island of 4
    masks["rect_holes_islands_25x35"] = m
    out = []
    for name, m in masks.items():
        results = []
        for mode in ("holes", "islands"):
            for thr in (1, 5, 30):
                res, changed = amg.remove_small_regions(m.copy(), thr, mode)
                results.append({"mode": mode, "area_thresh": thr, "bits": bits(res), "changed": bool(changed)})
        out.append({"name": name, "height": m.shape[0], "width": m.shape[1], "bits": bits(m), "results": results})
    return out


def fn_nms():
    from torchvision.ops import batched_nms
    from torchvision.ops.boxes import _batched_nms_coordinate_trick

    rng = np.random.default_rng(1007)

    def rand_boxes(n, lim=100, maxwh=40):
        x0 = rng.integers(0, lim, n)
        y0 = rng.integers(0, lim, n)
        w = rng.integers(1, maxwh, n)
        h = rng.integers(1, maxwh, n)
        return np.stack([x0, y0, x0 + w, y0 + h], 1).astype(np.float32)

    cases = []
    b = rand_boxes(40)
    cases.append(("random_40", b, rng.random(40).astype(np.float32)))
    b = rand_boxes(60, lim=30, maxwh=30)
    cases.append(("random_dense_60", b, rng.random(60).astype(np.float32)))
    b = rand_boxes(50, lim=20, maxwh=25)
    cases.append(("all_tied_1.0_50", b, np.ones(50, np.float32)))
    b = rand_boxes(60, lim=20, maxwh=25)
    cases.append(("tied_0_or_1_60", b, (rng.random(60) < 0.5).astype(np.float32)))
    b = np.array([[10, 10, 30, 30], [10, 10, 30, 30], [12, 12, 30, 30], [5, 5, 5, 5], [5, 5, 5, 5],
                  [0, 0, 0, 0], [10, 10, 10, 20], [11, 10, 31, 30], [40, 40, 60, 60]], np.float32)
    cases.append(("degenerate_and_duplicates", b, np.array([0.9, 0.9, 0.8, 0.95, 0.95, 0.5, 0.7, 0.9, 0.1],
                                                           np.float32)))
    b = np.array([[0, 0, 10, 10], [0, 0, 10, 7], [0, 0, 10, 8], [0, 0, 10, 6], [3, 0, 13, 10]], np.float32)
    cases.append(("iou_exactly_0.7_and_0.5", b, np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)))
    cases.append(("empty", np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)))
    cases.append(("single", np.array([[1, 2, 3, 4]], np.float32), np.array([0.3], np.float32)))
    b = rand_boxes(1100, lim=200, maxwh=40)
    cases.append(("vanilla_path_random_1100", b, rng.random(1100).astype(np.float32)))
    b = rand_boxes(1100, lim=200, maxwh=40)
    cases.append(("vanilla_path_tied_0_or_1_1100", b, (rng.random(1100) < 0.5).astype(np.float32)))
    b = rand_boxes(1050, lim=300, maxwh=30)
    cases.append(("vanilla_path_all_tied_1050", b, np.ones(1050, np.float32)))
    out = []
    ties_ascending = {False: True, True: True}  # by "vanilla path"
    for name, b, s in cases:
        for thr in (0.7, 0.5):
            bt, st = torch.from_numpy(b), torch.from_numpy(s)
            keep = batched_nms(bt, st, torch.zeros(len(bt)), iou_threshold=thr).tolist()
            # tie order: do equal scores come out in ascending index order?
            asc = all(not (s[i] == s[j] and i > j) for i, j in zip(keep, keep[1:]))
            ties_ascending[b.size > 4000] &= asc
            # the kept SET never depends on the path (one category): only the order of tied scores can
            trick = _batched_nms_coordinate_trick(bt, st, torch.zeros(len(bt)), thr).tolist()
            assert sorted(trick) == sorted(keep), name
            stable = sorted(keep, key=lambda i: (-float(s[i]), i))
            assert stable == trick, name
            out.append({"name": name, "iou_threshold": thr, "path": "vanilla" if b.size > 4000 else
                        "coordinate_trick", "ties_ascending": asc,
                        "boxes": [[int(v) for v in r] for r in b.tolist()],
                        "scores": [float(v) for v in s.tolist()], "keep": keep,
                        "keep_stable": stable})
    return out, {"coordinate_trick (<= 1000 boxes)": ties_ascending[False],
                 "vanilla (> 1000 boxes)": ties_ascending[True]}


def gen_functions(out_dir: pathlib.Path) -> dict:
    from segment_anything.utils import amg

    pg, alg = fn_point_grids(amg)
    ub, up = fn_uncrop(amg)
    nms, ties_ascending = fn_nms()
    xywh = []
    for box in ([1, 2, 5, 9], [0, 0, 0, 0], [10, 20, 79, 59]):
        t = torch.tensor(box)
        xywh.append({"box_xyxy": box, "box_xywh": amg.box_xyxy_to_xywh(t).tolist()})
    tf = torch.tensor([1.5, 2.25, 5.0, 9.75], dtype=torch.float64)
    xywh.append({"box_xyxy": tf.tolist(), "box_xywh": amg.box_xyxy_to_xywh(tf).tolist()})
    doc = {
        "encoding": "masks ('bits') are hex of numpy.packbits(mask.reshape(-1)) of the row-major HxW mask (first "
                    "pixel = MSB of the first byte, zero-padded to a byte); logits are float32 values written as "
                    "the shortest decimal that round-trips; NaN is null; boxes are xyxy ints unless stated",
    }
    data = {
        "reference": "segment_anything.utils.amg (segment-anything 1.0), torchvision.ops.batched_nms, cv2",
        "versions": ref_versions(),
        "doc": doc,
        "build_point_grid": pg,
        "build_all_layer_point_grids": alg,
        "generate_crop_boxes": fn_crop_boxes(amg),
        "is_box_near_crop_edge": fn_near_edge(amg),
        "uncrop_boxes_xyxy": ub,
        "uncrop_points": up,
        "batched_mask_to_box": fn_mask_to_box(amg),
        "calculate_stability_score": fn_stability(amg),
        "mask_to_rle_pytorch": fn_rle(amg),
        "remove_small_regions": fn_small_regions(amg),
        "batched_nms": nms,
        "box_xyxy_to_xywh": xywh,
    }
    # one case per line
    lines = ["{"]
    items = list(data.items())
    for k, (key, val) in enumerate(items):
        end = "," if k + 1 < len(items) else ""
        if isinstance(val, list):
            lines.append(f"{json.dumps(key)}: [")
            lines.append(",\n".join(json.dumps(c, separators=(",", ":")) for c in val))
            lines.append("]" + end)
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(val)}{end}")
    lines.append("}")
    path = out_dir / "functions.json"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    json.loads(path.read_text())  # valid JSON
    return {"file": path.name, "ties_ascending": ties_ascending,
            "counts": {k: len(v) for k, v in data.items() if isinstance(v, list)}}


# ----------------------------------------------------------------------------
# 2. whole-generator goldens
# ----------------------------------------------------------------------------
def load_sam():
    import gen_sam

    cfg = json.loads((common.REPO_ROOT / CFG_REL).read_text())
    # the committed config must describe exactly the architecture gen_sam builds
    for k, v in gen_sam.VIT_CFG.items():
        ck = {"img_size": "image_size"}.get(k, k)
        assert cfg[ck] == v, (k, cfg[ck], v)
    for k, v in {**gen_sam.PROMPT_CFG, **gen_sam.DECODER_CFG}.items():
        ck = {"embed_dim": "prompt_embed_dim"}.get(k, k)
        assert cfg[ck] == v, (k, cfg[ck], v)
    assert cfg["pixel_mean"] == gen_sam.PIXEL_MEAN and cfg["pixel_std"] == gen_sam.PIXEL_STD
    sam = gen_sam.build_vit_sam()
    sd = torch.load(str(common.REPO_ROOT / CKPT_REL), map_location="cpu", weights_only=True)
    sam.load_state_dict(sd, strict=True)
    return sam.eval(), cfg


def make_amg_image(H: int, W: int) -> np.ndarray:
    """gen_sam.make_image plus a few hard-edged shapes and a seeded texture (more structure, more masks)."""
    import gen_sam

    img = gen_sam.make_image(H, W).astype(np.float64)
    y, x = np.mgrid[0:H, 0:W]
    # dark triangle, bright square, a stripe
    tri = (x > 0.05 * W) & (y > 0.55 * H) & (x - 0.05 * W < (y - 0.55 * H) * 0.9)
    img[tri] = [20, 30, 200]
    sq = (x >= int(0.72 * W)) & (x < int(0.92 * W)) & (y >= int(0.08 * H)) & (y < int(0.35 * H))
    img[sq] = [250, 240, 40]
    stripe = (np.abs(x - 0.5 * W) < 2) & (y < 0.5 * H)
    img[stripe] = [0, 0, 0]
    rng = np.random.default_rng(2024)
    img += rng.normal(0, 6, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


GEN_DEFAULTS = dict(points_per_side=32, points_per_batch=64, pred_iou_thresh=0.88, stability_score_thresh=0.95,
                    stability_score_offset=1.0, box_nms_thresh=0.7, crop_n_layers=0, crop_nms_thresh=0.7,
                    crop_overlap_ratio=512 / 1500, crop_n_points_downscale_factor=1, point_grids=None,
                    min_mask_region_area=0, output_mode="binary_mask")

CONFIGS = {
    "relaxed": dict(points_per_side=8, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                    output_mode="coco_rle"),
    "default": dict(points_per_side=8, points_per_batch=64, output_mode="coco_rle"),
    # with the random-weight model every mask is noisy and its box is the whole image, so any box_nms_thresh < ~0.9
    # keeps exactly one mask; box_nms_thresh 1.0 (IoU > 1 never holds) keeps every mask that passes the filters
    "default_ppb": dict(points_per_side=8, points_per_batch=64, pred_iou_thresh=0.5, stability_score_thresh=0.35,
                        box_nms_thresh=1.0, output_mode="coco_rle"),
    "crops": dict(points_per_side=8, crop_n_layers=1, crop_n_points_downscale_factor=2, pred_iou_thresh=0.0,
                  stability_score_thresh=0.0, output_mode="coco_rle"),
    "small_regions": dict(points_per_side=8, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                          output_mode="coco_rle", min_mask_region_area=20),
    "small_regions_multi": dict(points_per_side=8, points_per_batch=64, pred_iou_thresh=0.5,
                                stability_score_thresh=0.35, box_nms_thresh=1.0, output_mode="coco_rle",
                                min_mask_region_area=20),
    "binary": dict(points_per_side=8, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                   output_mode="binary_mask"),
}


class NmsRecorder:
    """Wraps torchvision batched_nms where a generator module calls it; records the decision margins.

    iou margin: min |IoU - thresh| over the pairs greedy NMS compares (each kept box against every box ranked
    after it, float64 IoU of the float32 boxes); score gap: smallest non-zero gap between adjacent sorted scores."""

    def __init__(self, module):
        self.module = module
        self.calls = []

    def __enter__(self):
        self.orig = self.module.batched_nms

        def wrapped(boxes, scores, idxs, iou_threshold):
            keep = self.orig(boxes, scores, idxs, iou_threshold)
            self.calls.append(self._margins(boxes, scores, keep, iou_threshold))
            return keep

        self.module.batched_nms = wrapped
        return self

    def __exit__(self, *exc):
        self.module.batched_nms = self.orig

    @staticmethod
    def _margins(boxes, scores, keep, thr):
        b = boxes.detach().double().numpy()
        s = scores.detach().double().numpy()
        n = len(b)
        order = np.argsort(-s, kind="stable")
        rank = np.empty(n, int)
        rank[order] = np.arange(n)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        m_iou = m_dec = math.inf
        if thr >= 1.0:  # IoU > thr can never hold: no decision depends on an IoU
            keep_pairs = False
        else:
            keep_pairs = True
        tied_dec = 0
        for i in keep.tolist():
            later = order[rank[i] + 1:]
            if len(later) == 0:
                continue
            lt = np.maximum(b[later, :2], b[i, :2])
            rb = np.minimum(b[later, 2:], b[i, 2:])
            wh = np.clip(rb - lt, 0, None)
            inter = wh[:, 0] * wh[:, 1]
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = inter / (area[i] + area[later] - inter)
            ok = ~np.isnan(iou)
            if ok.any() and keep_pairs:
                m_iou = min(m_iou, float(np.abs(iou[ok] - thr).min()))
            # pairs where the order decides which of the two survives
            sup = ok & (iou > thr)
            if sup.any():
                gaps = s[i] - s[later[sup]]
                tied_dec += int((gaps == 0).sum())
                if (gaps > 0).any():
                    m_dec = min(m_dec, float(gaps[gaps > 0].min()))
        ks = s[keep.numpy()] if len(keep) else np.zeros(0)
        og = -np.diff(ks)
        nz = og[og > 0]
        return {"n_in": n, "n_keep": len(keep), "iou_threshold": thr,
                "min_abs_iou_minus_thresh": None if m_iou == math.inf else m_iou,
                "min_decision_score_gap": None if m_dec == math.inf else m_dec,
                "tied_decision_pairs": tied_dec,
                "min_output_order_score_gap": float(nz.min()) if len(nz) else None,
                "tied_adjacent_in_output": int((og == 0).sum())}


def nms_summary(calls) -> dict:
    """Over every NMS call: min |IoU - thresh| of compared pairs, min score gap of pairs whose order decides a
    suppression, min gap of adjacent kept scores (output order). Exact ties are excluded (they are resolved by
    index and are exact by construction: 1 / crop area, 0 / 1 small-region scores)."""
    def mn(key):
        v = [c[key] for c in calls if c[key] is not None]
        return min(v) if v else None

    return {"nms_iou_min": mn("min_abs_iou_minus_thresh"), "nms_decision_gap_min": mn("min_decision_score_gap"),
            "nms_order_gap_min": mn("min_output_order_score_gap")}


def make_sam1_generator_class():
    from segment_anything import SamAutomaticMaskGenerator
    from segment_anything.utils.amg import calculate_stability_score, batched_mask_to_box

    class Recording(SamAutomaticMaskGenerator):
        """Official generator; _process_crop / _process_batch additionally record every candidate BEFORE any
        filtering, by running the very same predictor call first (then the official code runs unchanged)."""

        def _process_crop(self, image, crop_box, crop_layer_idx, orig_size):
            self._rec.append({"crop_box": [int(v) for v in crop_box], "layer": int(crop_layer_idx),
                              "points": [], "predicted_iou": [], "stability_score": [], "boxes": [], "areas": [],
                              "near_zero_pixels": [], "stability_flip_bound": []})
            return super()._process_crop(image, crop_box, crop_layer_idx, orig_size)

        def _process_batch(self, points, im_size, crop_box, orig_size):
            transformed = self.predictor.transform.apply_coords(points, im_size)
            in_points = torch.as_tensor(transformed, device=self.predictor.device)
            in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
            masks, iou, _ = self.predictor.predict_torch(in_points[:, None, :], in_labels[:, None],
                                                         multimask_output=True, return_logits=True)
            stab = calculate_stability_score(masks.flatten(0, 1), self.predictor.model.mask_threshold,
                                             self.stability_score_offset).view(masks.shape[:2])
            binm = masks > self.predictor.model.mask_threshold
            boxes = batched_mask_to_box(binm)
            areas = binm.flatten(2).sum(-1)
            t, o = self.predictor.model.mask_threshold, self.stability_score_offset
            near0 = ((masks - t).abs() < NEAR).flatten(2).sum(-1)
            near_o = (((masks - t - o).abs() < NEAR) | ((masks - t + o).abs() < NEAR)).flatten(2).sum(-1)
            union = (masks > t - o).flatten(2).sum(-1)
            r = self._rec[-1]
            r["points"] += points.tolist()
            r["predicted_iou"] += [[float(v) for v in row] for row in iou.tolist()]
            r["stability_score"] += [[fnum(v) for v in row] for row in stab.tolist()]
            r["boxes"] += [[[int(v) for v in bx] for bx in row] for row in boxes.tolist()]
            r["areas"] += [[int(v) for v in row] for row in areas.tolist()]
            r["near_zero_pixels"] += [[int(v) for v in row] for row in near0.tolist()]
            # a flip of one of these pixels moves the stability score by about 1 / union
            r["stability_flip_bound"] += [[float(a) / max(float(u), 1.0) for a, u in zip(ra, ru)]
                                          for ra, ru in zip(near_o.tolist(), union.tolist())]
            return super()._process_batch(points, im_size, crop_box, orig_size)

    return Recording


def candidate_margins(cands, cfg) -> dict:
    iou_t, st_t = cfg["pred_iou_thresh"], cfg["stability_score_thresh"]
    m_iou = m_st = math.inf
    n_nan = 0
    for c in cands:
        for ious, stabs in zip(c["predicted_iou"], c["stability_score"]):
            for v, s in zip(ious, stabs):
                if iou_t > 0.0:
                    m_iou = min(m_iou, abs(v - iou_t))
                    if not v > iou_t:
                        continue  # filtered before the stability score is looked at
                if s is None:
                    n_nan += 1
                    continue
                if st_t > 0.0:
                    m_st = min(m_st, abs(s - st_t))
    frac = max(max(max(row) for row in c["near_zero_pixels"]) / ((c["crop_box"][2] - c["crop_box"][0]) *
                                                               (c["crop_box"][3] - c["crop_box"][1]))
               for c in cands)
    sfb = max(max(max(row) for row in c["stability_flip_bound"]) for c in cands)
    return {"max_near_zero_fraction": frac, "max_stability_flip_bound": sfb,
            "pred_iou": None if m_iou == math.inf else m_iou,
            "stability": None if m_st == math.inf else m_st,
            "nan_stability_reaching_filter": n_nan}


def ann_json(a, output_mode):
    seg = a["segmentation"]
    if output_mode == "binary_mask":
        seg = {"size": [int(v) for v in seg.shape], "bits": bits(seg)}
    else:
        seg = {"size": [int(v) for v in seg["size"]], "counts": seg["counts"]}
    return {"segmentation": seg, "area": int(a["area"]), "bbox": [int(v) for v in a["bbox"]],
            "predicted_iou": float(a["predicted_iou"]), "point_coords": [[float(v) for v in p]
                                                                          for p in a["point_coords"]],
            "stability_score": fnum(a["stability_score"]), "crop_box": [int(v) for v in a["crop_box"]]}


def check_types(anns):
    """Pin the reference's output types (reported in the manifest)."""
    a = anns[0]
    return {"area": type(a["area"]).__name__, "bbox": type(a["bbox"][0]).__name__,
            "predicted_iou": type(a["predicted_iou"]).__name__,
            "point_coords": type(a["point_coords"][0][0]).__name__,
            "stability_score": type(a["stability_score"]).__name__, "crop_box": type(a["crop_box"][0]).__name__}


def run_sam1_config(sam, image, name, overrides):
    import segment_anything.automatic_mask_generator as amg_mod

    cfg = {**GEN_DEFAULTS, **overrides}
    Recording = make_sam1_generator_class()
    gen = Recording(sam, **cfg)
    gen._rec = []
    with NmsRecorder(amg_mod) as rec:
        anns = gen.generate(image)
    margins = candidate_margins(gen._rec, cfg)
    margins["nms"] = rec.calls
    margins.update(nms_summary(rec.calls))
    types = check_types(anns) if anns else {}
    out = {"name": name, "reference": "segment_anything.SamAutomaticMaskGenerator(sam, **config).generate(image)",
           "config": cfg, "annotations": [ann_json(a, cfg["output_mode"]) for a in anns],
           "candidates": gen._rec, "margins": margins}
    return out, types


# ----------------------------------------------------------------------------
# 3. SAM 2 use_m2m through an adapter
# ----------------------------------------------------------------------------
class Sam1PredictorAdapter:
    """The predictor interface SAM2AutomaticMaskGenerator calls, backed by segment_anything.SamPredictor:

    set_image(img)            -> SamPredictor.set_image(img) (ResizeLongestSide, normalise, pad, encoder)
    reset_predictor()         -> SamPredictor.reset_image()
    device                    -> SamPredictor.device
    _transforms.transform_coords(coords, normalize=True, orig_hw=(h, w))
                              -> SamPredictor.transform.apply_coords_torch(coords, orig_hw), i.e. SAM 1's
                                 coords * (new_w / w, new_h / h) with new = ResizeLongestSide size (int(x + .5)),
                                 NOT SAM 2's coords / (w, h) * 1024
    _predict(point_coords, point_labels, boxes=None, mask_input=None, multimask_output=True, return_logits=False)
                              -> SamPredictor.predict_torch with the same arguments: (masks at the crop size,
                                 iou_predictions, low-res logits [B, C, 4g, 4g]); with multimask_output=False the
                                 SAM 1 decoder returns mask token 0 (SAM 2's dynamic multimask fallback is a
                                 model-level feature and does not exist here)
    """

    def __init__(self, sam):
        from segment_anything import SamPredictor

        self.p = SamPredictor(sam)
        self._transforms = self

    @property
    def device(self):
        return self.p.device

    @property
    def model(self):
        return self.p.model

    def set_image(self, image):
        self.p.set_image(image)

    def reset_predictor(self):
        self.p.reset_image()

    def transform_coords(self, coords, normalize=False, orig_hw=None):
        assert normalize and orig_hw is not None
        return self.p.transform.apply_coords_torch(coords, tuple(orig_hw))

    def _predict(self, point_coords, point_labels, boxes=None, mask_input=None, multimask_output=True,
                 return_logits=False, img_idx=-1):
        return self.p.predict_torch(point_coords, point_labels, boxes=boxes, mask_input=mask_input,
                                    multimask_output=multimask_output, return_logits=return_logits)


M2M_CONFIG = dict(points_per_side=8, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                  output_mode="coco_rle", use_m2m=True)


def run_m2m(sam, image):
    try:
        import sam2.automatic_mask_generator as s2
    except Exception as e:  # noqa: BLE001
        print(f"[amg] sam2 not importable ({e!r}): generator_m2m.json skipped", flush=True)
        return None
    import inspect

    params = inspect.signature(s2.SAM2AutomaticMaskGenerator.__init__).parameters
    cfg = {k: p.default for k, p in params.items() if k not in ("self", "model", "kwargs")}
    cfg.update(M2M_CONFIG)
    orig_cls = s2.SAM2ImagePredictor
    s2.SAM2ImagePredictor = lambda model, **kw: Sam1PredictorAdapter(model)  # only inside __init__
    try:
        gen = s2.SAM2AutomaticMaskGenerator(sam, **cfg)
    finally:
        s2.SAM2ImagePredictor = orig_cls
    assert isinstance(gen.predictor, Sam1PredictorAdapter)

    # record candidates: first pass multimask + the m2m refinement, exactly as _process_batch does
    rec = []
    orig_pc, orig_pb = gen._process_crop, gen._process_batch

    def process_crop(image, crop_box, crop_layer_idx, orig_size):
        rec.append({"crop_box": [int(v) for v in crop_box], "layer": int(crop_layer_idx), "points": [],
                    "predicted_iou": [], "refined_predicted_iou": [], "refined_stability_score": []})
        return orig_pc(image, crop_box, crop_layer_idx, orig_size)

    def process_batch(points, im_size, crop_box, orig_size, normalize=False):
        from sam2.utils.amg import calculate_stability_score

        pts = torch.as_tensor(points, dtype=torch.float32)
        inp = gen.predictor._transforms.transform_coords(pts, normalize=normalize, orig_hw=im_size)
        lab = torch.ones(inp.shape[0], dtype=torch.int)
        masks, iou, low = gen.predictor._predict(inp[:, None, :], lab[:, None], multimask_output=True,
                                                 return_logits=True)
        rp = pts.repeat_interleave(masks.shape[1], dim=0)
        rin = gen.predictor._transforms.transform_coords(rp, normalize=normalize, orig_hw=im_size)
        rm, ri = gen.refine_with_m2m(rin, torch.ones(rin.shape[0], dtype=torch.int), low.flatten(0, 1),
                                     gen.points_per_batch)
        st = calculate_stability_score(rm.squeeze(1), gen.mask_threshold, gen.stability_score_offset)
        r = rec[-1]
        r["points"] += pts.tolist()
        r["predicted_iou"] += [[float(v) for v in row] for row in iou.tolist()]
        r["refined_predicted_iou"] += [[float(v) for v in row] for row in ri.view(-1, 3).tolist()]
        r["refined_stability_score"] += [[fnum(v) for v in row] for row in st.view(-1, 3).tolist()]
        return orig_pb(points, im_size, crop_box, orig_size, normalize=normalize)

    gen._process_crop, gen._process_batch = process_crop, process_batch
    with NmsRecorder(s2) as nrec:
        with torch.no_grad():
            anns = gen.generate(image)
    margins = {"pred_iou": None, "stability": None, "nms": nrec.calls, **nms_summary(nrec.calls)}
    cfg_json = {k: v for k, v in cfg.items()}
    out = {"name": "m2m",
           "reference": "sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator (sam2 "
                        f"{importlib.metadata.version('sam2')}) with use_m2m=True, its predictor replaced by "
                        "Sam1PredictorAdapter over segment_anything.SamPredictor on the tiny SAM 1 model",
           "adapter": Sam1PredictorAdapter.__doc__.strip(),
           "notes": "SAM 2 _process_batch: points are float32 (torch.as_tensor(points, dtype=float32)), so "
                    "point_coords are float32 values; points are repeated per mask (repeat_interleave); every "
                    "multimask candidate (3 per point) is refined by one more decoder call with its own low-res "
                    "logits as mask_input and multimask_output=False, in batches of points_per_batch of the "
                    "repeated list; the refined mask / iou replace the originals before any filtering. "
                    "candidates.*.refined_* are [point][mask] of the refined outputs.",
           "config": cfg_json, "annotations": [ann_json(a, cfg["output_mode"]) for a in anns],
           "candidates": rec, "margins": margins}
    return out


# ----------------------------------------------------------------------------
def write_compact(path: pathlib.Path, obj: dict) -> None:
    """Top-level keys one per line; annotations / candidates one entry per line."""
    lines = ["{"]
    items = list(obj.items())
    for k, (key, val) in enumerate(items):
        end = "," if k + 1 < len(items) else ""
        if key in ("annotations", "candidates") and isinstance(val, list):
            lines.append(f"{json.dumps(key)}: [")
            lines.append(",\n".join(json.dumps(c, separators=(",", ":")) for c in val))
            lines.append("]" + end)
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(val)}{end}")
    lines.append("}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    json.loads(path.read_text())


def main(out_dir: pathlib.Path) -> None:
    from PIL import Image

    out_dir = pathlib.Path(out_dir)
    try:
        import sam2.automatic_mask_generator  # noqa: F401

        keep = ()
    except Exception:  # noqa: BLE001 - optional: keep the committed m2m golden rather than deleting it
        keep = ("generator_m2m.json",)
    common.clear_dir(out_dir, keep=keep)
    common.setup_determinism(0)

    fn_info = gen_functions(out_dir)
    print(f"[amg] functions.json: {fn_info['counts']}; nms ties ascending: {fn_info['ties_ascending']}", flush=True)

    sam, model_cfg = load_sam()
    H, W = IMAGE_HW
    img_name = f"amg_image_{H}x{W}.png"
    Image.fromarray(make_amg_image(H, W), mode="RGB").save(out_dir / img_name)
    image = np.asarray(Image.open(out_dir / img_name).convert("RGB")).copy()  # the decoded pixels
    assert image.shape == (H, W, 3) and image.dtype == np.uint8

    results, counts, margins, types = {}, {}, {}, {}
    bad = []
    for name, overrides in CONFIGS.items():
        common.setup_determinism(0)
        out, t = run_sam1_config(sam, image, name, overrides)
        results[name] = out
        types[name] = t
        counts[name] = len(out["annotations"])
        m = out["margins"]
        margins[name] = {k: m[k] for k in ("pred_iou", "stability", "nms_iou_min", "nms_decision_gap_min",
                                           "nms_order_gap_min", "nan_stability_reaching_filter",
                                           "max_near_zero_fraction", "max_stability_flip_bound")}
        for k in GATED:
            if m[k] is not None and m[k] < MIN_MARGIN:
                bad.append(f"{name}.{k}={m[k]:.2e}")
        print(f"[amg] {name}: {counts[name]} masks, margins {margins[name]}", flush=True)

    common.setup_determinism(0)
    m2m = run_m2m(sam, image)
    if m2m is not None:
        results["m2m"] = m2m
        counts["m2m"] = len(m2m["annotations"])
        mm = m2m["margins"]
        margins["m2m"] = {k: mm[k] for k in ("pred_iou", "stability", "nms_iou_min", "nms_decision_gap_min",
                                             "nms_order_gap_min")}
        for k in GATED:
            if mm[k] is not None and mm[k] < MIN_MARGIN:
                bad.append(f"m2m.{k}={mm[k]:.2e}")
        print(f"[amg] m2m: {counts['m2m']} masks, margins {margins['m2m']}", flush=True)

    for name, out in results.items():
        doc = {"name": name, "reference": out["reference"]}
        if "adapter" in out:
            doc["adapter"] = out["adapter"]
            doc["notes"] = out["notes"]
        doc.update({"checkpoint": CKPT_REL, "model_config": CFG_REL, "config": out["config"], "image": img_name,
                    "height": H, "width": W, "margins": out["margins"], "annotations": out["annotations"],
                    "candidates": out["candidates"]})
        write_compact(out_dir / f"generator_{name}.json", doc)

    manifest = {
        "section": "amg",
        "reference": "segment_anything 1.0 SamAutomaticMaskGenerator and segment_anything.utils.amg; "
                     "torchvision batched_nms; cv2 connectedComponentsWithStats (remove_small_regions)",
        "versions": ref_versions(),
        "checkpoint": CKPT_REL,
        "model_config": CFG_REL,
        "image": {"file": img_name, "height": H, "width": W,
                  "made_by": "gen_amg.make_amg_image (gen_sam.make_image + triangle, square, stripe, seeded noise)"},
        "functions": fn_info,
        "nms_ties_ascending_index": fn_info["ties_ascending"],
        "configs": {k: v["config"] for k, v in results.items()},
        "mask_counts": counts,
        "margins": margins,
        "min_margin_required": MIN_MARGIN,
        "margin_violations": bad,
        "output_types": types,
        "tolerances": TOLERANCES,
        "files": sorted(p.name for p in out_dir.iterdir()) + ["manifest.json"],
    }
    common.write_json(out_dir / "manifest.json", manifest)
    common.report_size(out_dir, "amg", MAX_KIB)
    if bad:
        raise AssertionError(f"threshold margins below {MIN_MARGIN}: {bad}")


if __name__ == "__main__":
    common.run_standalone(main, common.FIXTURES_ROOT / "amg")
