"""Golden fixtures for DINO training support: schedules and the multi-crop augmentation.

Writes into <out_dir> (default: crates/vista/tests/fixtures/dino_train/):

  * schedules.json: numpy outputs of facebookresearch/dino's `utils.cosine_scheduler` and
    `DINOLoss.teacher_temp_schedule` (copied verbatim below) for a few configurations, and the
    four schedules `main_dino.py` builds from its arguments (lr with the linear scaling rule,
    wd, teacher momentum, teacher temperature). Floats as Python's repr (shortest round-trip).
  * crop_stats.json: summary statistics of torchvision's `RandomResizedCrop.get_params` over
    N draws per (image size, scale, ratio): mean / std / quantiles and the empirical CDF on a
    fixed dyadic grid of the area fraction h*w/(H*W), the log aspect ratio ln(w/h) and the
    crop centre (x, y) / (W, H). The Rust test draws its own N and compares the CDFs (two-sample
    Kolmogorov-Smirnov on the grid) and the means.
  * ops.safetensors: Pillow outputs of each colour / pixel operation DINO's pipeline uses, on a
    small fixed image (`ops_input`, uint8 [H, W, 3]), for fixed factors (float32 values, as
    ColorJitter draws them): torchvision.transforms.functional adjust_brightness / contrast /
    saturation / hue, rgb_to_grayscale(3), ImageOps.solarize, ImageFilter.GaussianBlur(r),
    hflip, and one ColorJitter.forward with a fixed order and factors. Plus blur on tiny images
    (3x2, 1x1, 5x4) for the box-blur edge paths.
  * views.safetensors: full views of crates/vista/tests/fixtures/preprocess/chelsea.png with
    fixed parameters through torchvision's DINO transforms (RandomResizedCrop and ColorJitter with
    get_params patched to the fixed values, DINO's GaussianBlur / Solarization applied with
    their radius / decision fixed): `caseK.resized` (after resized_crop), `caseK.u8` (before
    ToTensor), `caseK.tensor` (normalised float32, channels-last [H, W, 3]).
  * manifest.json: versions, parameters of every case, keys, tolerances.

Usable standalone (`python tools/reference/gen_dino_train.py [out_dir]`) or through
gen_fixtures.py-style `main(out_dir)`.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys
from typing import Dict, List

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image, ImageFilter, ImageOps
from safetensors.numpy import save_file
from torchvision import transforms
from torchvision.transforms import functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

DEFAULT_OUT = common.FIXTURES_ROOT / "dino_train"
CHELSEA = common.FIXTURES_ROOT / "preprocess" / "chelsea.png"
ASTRONAUT = common.FIXTURES_ROOT / "preprocess" / "astronaut.png"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------
# facebookresearch/dino, verbatim (utils.cosine_scheduler; DINOLoss.__init__)
# ----------------------------------------------------------------------------
def cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0):
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)

    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))

    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def teacher_temp_schedule(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs):
    return np.concatenate((
        np.linspace(warmup_teacher_temp,
                    teacher_temp, warmup_teacher_temp_epochs),
        np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp
    ))


# DINO's utils.GaussianBlur / Solarization with the random decision and radius fixed.
def dino_blur(img, radius):
    return img.filter(ImageFilter.GaussianBlur(radius=radius))


def dino_solarize(img):
    return ImageOps.solarize(img)


# ----------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------
COSINE_CASES = [
    # name, base, final, epochs, niter_per_ep, warmup_epochs, start_warmup_value
    ("warmup0_niter7", 0.04, 0.4, 5, 7, 0, 0.0),
    ("warmup3_niter7", 0.0005 * 64 / 256.0, 1e-6, 10, 7, 3, 0.0),
    ("warmup2_start", 0.3, 0.01, 4, 13, 2, 0.05),
    ("warmup_all", 1.0, 0.0, 3, 5, 3, 0.0),
    ("niter1", 0.996, 1.0, 9, 1, 0, 0.0),
    ("warmup1_niter1", 2.5e-4, 1e-6, 6, 1, 1, 0.0),
    ("decreasing_base_below_final", 0.1, 0.7, 3, 11, 1, 0.2),
]
TEMP_CASES = [
    # name, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs
    ("default_no_warmup", 0.04, 0.04, 0, 10),
    ("warmup30_of_100", 0.04, 0.07, 30, 100),
    ("warmup3_of_5", 0.01, 0.07, 3, 5),
    ("warmup_all", 0.02, 0.06, 4, 4),
    ("warmup1", 0.03, 0.05, 1, 3),
]
# main_dino.py arguments (a Fashion-MNIST-sized run and the defaults with few iterations)
DINO_CASES = [
    dict(name="small", epochs=12, niter_per_ep=7, batch_size_total=96, lr=0.0005, min_lr=1e-6, warmup_epochs=2,
         weight_decay=0.04, weight_decay_end=0.4, momentum_teacher=0.996, warmup_teacher_temp=0.04,
         teacher_temp=0.07, warmup_teacher_temp_epochs=5),
    dict(name="defaults", epochs=100, niter_per_ep=2, batch_size_total=64, lr=0.0005, min_lr=1e-6, warmup_epochs=10,
         weight_decay=0.04, weight_decay_end=0.4, momentum_teacher=0.996, warmup_teacher_temp=0.04,
         teacher_temp=0.04, warmup_teacher_temp_epochs=0),
]


def gen_schedules() -> Dict:
    out = {"cosine": [], "teacher_temp": [], "dino": []}
    for name, base, final, epochs, niter, warm, start in COSINE_CASES:
        s = cosine_scheduler(base, final, epochs, niter, warmup_epochs=warm, start_warmup_value=start)
        out["cosine"].append(dict(name=name, base_value=base, final_value=final, epochs=epochs, niter_per_ep=niter,
                                  warmup_epochs=warm, start_warmup_value=start, values=[float(v) for v in s]))
    for name, wt, t, we, ne in TEMP_CASES:
        s = teacher_temp_schedule(wt, t, we, ne)
        out["teacher_temp"].append(dict(name=name, warmup_teacher_temp=wt, teacher_temp=t,
                                        warmup_teacher_temp_epochs=we, nepochs=ne, values=[float(v) for v in s]))
    for a in DINO_CASES:
        # main_dino.py, train_dino(): "init schedulers" (world size folded into batch_size_total)
        lr = cosine_scheduler(a["lr"] * a["batch_size_total"] / 256., a["min_lr"], a["epochs"], a["niter_per_ep"],
                              warmup_epochs=a["warmup_epochs"])
        wd = cosine_scheduler(a["weight_decay"], a["weight_decay_end"], a["epochs"], a["niter_per_ep"])
        mom = cosine_scheduler(a["momentum_teacher"], 1, a["epochs"], a["niter_per_ep"])
        temp = teacher_temp_schedule(a["warmup_teacher_temp"], a["teacher_temp"], a["warmup_teacher_temp_epochs"],
                                     a["epochs"])
        out["dino"].append(dict(args=a, lr=[float(v) for v in lr], wd=[float(v) for v in wd],
                                momentum=[float(v) for v in mom], teacher_temp=[float(v) for v in temp]))
    return out


# ----------------------------------------------------------------------------
# RandomResizedCrop statistics
# ----------------------------------------------------------------------------
CROP_CASES = [
    # name, width, height, scale, ratio
    ("global_512x512", 512, 512, (0.4, 1.0), (3 / 4, 4 / 3)),
    ("local_512x512", 512, 512, (0.05, 0.4), (3 / 4, 4 / 3)),
    ("global_451x300", 451, 300, (0.4, 1.0), (3 / 4, 4 / 3)),
    ("local_451x300", 451, 300, (0.05, 0.4), (3 / 4, 4 / 3)),
    ("global_28x28", 28, 28, (0.4, 1.0), (3 / 4, 4 / 3)),
    ("local_28x28", 28, 28, (0.05, 0.4), (3 / 4, 4 / 3)),
    # very tall: most draws fail all 10 attempts -> central-crop fallback (19 x 25)
    ("global_19x64", 19, 64, (0.4, 1.0), (3 / 4, 4 / 3)),
    ("wide_scale_100x60", 100, 60, (0.08, 1.0), (3 / 4, 4 / 3)),
]
N_CROPS = 20000
QUANTILES = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]
# Dyadic grids (exact in binary and in JSON), CDF(e) = fraction of samples <= e.
GRID = {
    "area_fraction": [k / 32 for k in range(33)],
    "log_ratio": [-1 + k / 16 for k in range(33)],
    "center_x": [k / 32 for k in range(33)],
    "center_y": [k / 32 for k in range(33)],
}


def crop_stats(seed: int, width: int, height: int, scale, ratio) -> Dict:
    torch.manual_seed(seed)
    img = torch.zeros(1, height, width)  # get_params only reads the size
    rows = [transforms.RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(N_CROPS)]
    a = np.array(rows, dtype=np.float64)  # i, j, h, w
    i, j, h, w = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
    q = {
        "area_fraction": h * w / float(height * width),
        "log_ratio": np.log(w / h),
        "center_x": (j + w / 2) / width,
        "center_y": (i + h / 2) / height,
    }
    out = {}
    for k, v in q.items():
        out[k] = {
            "mean": float(v.mean()),
            "std": float(v.std()),
            "min": float(v.min()),
            "max": float(v.max()),
            "quantiles": [float(x) for x in np.quantile(v, QUANTILES)],
            "cdf_grid": GRID[k],
            "cdf": [float((v <= e).mean()) for e in GRID[k]],
        }
    fallback = central_fallback(width, height, ratio)
    out["fallback_box"] = list(fallback)
    out["fallback_fraction_upper_bound"] = float(np.mean([tuple(r) == fallback for r in rows]))
    return out


def central_fallback(width, height, ratio):
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w = width
        h = height
    return ((height - h) // 2, (width - w) // 2, h, w)


def gen_crop_stats() -> Dict:
    cases = []
    for k, (name, w, h, scale, ratio) in enumerate(CROP_CASES):
        cases.append(dict(name=name, width=w, height=h, scale=list(scale), ratio=list(ratio), n=N_CROPS, seed=1000 + k,
                          stats=crop_stats(1000 + k, w, h, scale, ratio)))
    return {"quantile_levels": QUANTILES, "cases": cases}


# ----------------------------------------------------------------------------
# Pixel operations
# ----------------------------------------------------------------------------
def f32(x: float) -> float:
    """The float32 value ColorJitter would hand to PIL (torch draws in float32)."""
    return float(np.float32(x))


def ops_input() -> np.ndarray:
    """48 x 32: top half a bicubic thumbnail of astronaut.png, bottom half seeded random colours,
    a grey ramp row and the six primaries / secondaries (all hue sextants, s = 0 pixels)."""
    w, h = 48, 32
    top = np.asarray(Image.open(ASTRONAUT).convert("RGB").resize((w, h // 2), Image.BICUBIC))
    rs = np.random.RandomState(7)
    bottom = rs.randint(0, 256, size=(h // 2, w, 3)).astype(np.uint8)
    bottom[0, :, :] = np.linspace(0, 255, w).round().astype(np.uint8)[:, None]
    prim = np.array([[255, 0, 0], [255, 255, 0], [0, 255, 0], [0, 255, 255], [0, 0, 255], [255, 0, 255],
                     [128, 0, 0], [1, 2, 3], [254, 255, 253], [0, 0, 0], [255, 255, 255], [10, 200, 100]], np.uint8)
    bottom[1, : len(prim)] = prim
    return np.concatenate([top, bottom], axis=0)


BRIGHTNESS = [0.6, 1.0, 1.37]
CONTRAST = [0.65, 1.4, 0.0]
SATURATION = [0.8, 1.2, 0.0]
HUE = [-0.1, 0.05, 0.1, -0.5, 0.5, 0.0123]
BLUR = [0.1, 0.73, 1.3, 2.0, 5.0]
JITTER_FIXED = dict(order=[3, 0, 2, 1], brightness=1.23, contrast=0.71, saturation=1.17, hue=-0.063)


def patched_color_jitter(img, order, b, c, s, h):
    """torchvision ColorJitter(0.4, 0.4, 0.2, 0.1).forward with get_params returning fixed values."""
    cj = transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
    orig = transforms.ColorJitter.get_params
    try:
        transforms.ColorJitter.get_params = staticmethod(lambda *a: (torch.tensor(order), b, c, s, h))
        return cj(img)
    finally:
        transforms.ColorJitter.get_params = orig


def gen_ops() -> (Dict[str, np.ndarray], Dict):
    x = ops_input()
    img = Image.fromarray(x, "RGB")
    t: Dict[str, np.ndarray] = {"ops_input": x}
    meta: Dict = {"factors": {}}

    def put(key, im, **params):
        arr = np.asarray(im.convert("RGB") if im.mode != "RGB" else im)
        assert arr.dtype == np.uint8 and arr.shape[2] == 3
        t[key] = np.ascontiguousarray(arr)
        meta["factors"][key] = params

    for v in BRIGHTNESS:
        put(f"brightness_{v}", F.adjust_brightness(img, f32(v)), op="brightness", factor=f32(v))
    for v in CONTRAST:
        put(f"contrast_{v}", F.adjust_contrast(img, f32(v)), op="contrast", factor=f32(v))
    for v in SATURATION:
        put(f"saturation_{v}", F.adjust_saturation(img, f32(v)), op="saturation", factor=f32(v))
    for v in HUE:
        put(f"hue_{v}", F.adjust_hue(img, f32(v)), op="hue", factor=f32(v))
    put("grayscale", F.rgb_to_grayscale(img, num_output_channels=3), op="grayscale")
    put("solarize", dino_solarize(img), op="solarize", threshold=128)
    put("hflip", F.hflip(img), op="hflip")
    for r in BLUR:
        put(f"blur_{r}", dino_blur(img, f32(r)), op="blur", radius=f32(r))
    j = {k: (f32(v) if k != "order" else v) for k, v in JITTER_FIXED.items()}
    put("jitter_fixed", patched_color_jitter(img, j["order"], j["brightness"], j["contrast"], j["saturation"], j["hue"]),
        op="jitter", **j)
    # manual sequence must equal ColorJitter.forward (checks the patch did what we think)
    seq = img
    for fn in j["order"]:
        seq = [lambda m: F.adjust_brightness(m, j["brightness"]), lambda m: F.adjust_contrast(m, j["contrast"]),
               lambda m: F.adjust_saturation(m, j["saturation"]), lambda m: F.adjust_hue(m, j["hue"])][fn](seq)
    assert np.array_equal(np.asarray(seq), t["jitter_fixed"])
    # contrast degenerate mean, as ImageEnhance.Contrast computes it
    from PIL import ImageStat
    meta["contrast_mean"] = int(ImageStat.Stat(img.convert("L")).mean[0] + 0.5)

    # tiny images: the box-blur paths where the box is wider than the line
    rs = np.random.RandomState(11)
    for (w, h) in [(3, 2), (1, 1), (5, 4)]:
        tiny = rs.randint(0, 256, size=(h, w, 3)).astype(np.uint8)
        t[f"tiny_{w}x{h}"] = tiny
        for r in [0.5, 2.0, 10.0]:
            put(f"tiny_{w}x{h}_blur_{r}", dino_blur(Image.fromarray(tiny, "RGB"), f32(r)), op="blur", radius=f32(r),
                input=f"tiny_{w}x{h}")
    return t, meta


# ----------------------------------------------------------------------------
# Full views with fixed parameters
# ----------------------------------------------------------------------------
VIEW_CASES = [
    dict(crop=[20, 50, 200, 260], size=32, flip=True,
         jitter=dict(order=[2, 0, 3, 1], brightness=1.3, contrast=0.7, saturation=1.15, hue=-0.07),
         grayscale=False, blur=1.1, solarize=True),
    dict(crop=[100, 300, 40, 35], size=16, flip=False, jitter=None, grayscale=True, blur=0.4, solarize=False),
    dict(crop=[0, 0, 300, 451], size=24, flip=True,
         jitter=dict(order=[0, 1, 2, 3], brightness=0.65, contrast=1.38, saturation=0.82, hue=0.09),
         grayscale=False, blur=None, solarize=False),
    # no resize at all (crop size == output size), jitter + blur + solarize
    dict(crop=[150, 200, 28, 28], size=28, flip=False,
         jitter=dict(order=[1, 3, 0, 2], brightness=1.05, contrast=1.2, saturation=0.9, hue=0.02),
         grayscale=True, blur=1.9, solarize=True),
]


def run_view(img: Image.Image, case: Dict):
    """DINO's transform chain with every random decision fixed: torchvision's RandomResizedCrop
    and ColorJitter with get_params patched, DINO's GaussianBlur / Solarization applied or not."""
    i, j, h, w = case["crop"]
    rrc = transforms.RandomResizedCrop(case["size"], scale=(0.4, 1.0), interpolation=Image.BICUBIC)
    orig = transforms.RandomResizedCrop.get_params
    try:
        transforms.RandomResizedCrop.get_params = staticmethod(lambda *a: (i, j, h, w))
        x = rrc(img)
    finally:
        transforms.RandomResizedCrop.get_params = orig
    resized = np.asarray(x).copy()
    if case["flip"]:
        x = F.hflip(x)
    if case["jitter"] is not None:
        jj = case["jitter"]
        x = patched_color_jitter(x, jj["order"], jj["brightness"], jj["contrast"], jj["saturation"], jj["hue"])
    if case["grayscale"]:
        x = F.rgb_to_grayscale(x, num_output_channels=3)
    if case["blur"] is not None:
        x = dino_blur(x, case["blur"])
    if case["solarize"]:
        x = dino_solarize(x)
    u8 = np.asarray(x).copy()
    tensor = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)(transforms.ToTensor()(x))
    return resized, u8, tensor.permute(1, 2, 0).contiguous().numpy()


def gen_views():
    img = Image.open(CHELSEA).convert("RGB")
    t = {}
    cases = []
    for k, case in enumerate(VIEW_CASES):
        case = json.loads(json.dumps(case))
        if case["jitter"] is not None:
            case["jitter"] = {kk: (f32(v) if kk != "order" else v) for kk, v in case["jitter"].items()}
        if case["blur"] is not None:
            case["blur"] = f32(case["blur"])
        resized, u8, tensor = run_view(img, case)
        t[f"case{k}.resized"] = resized
        t[f"case{k}.u8"] = u8
        t[f"case{k}.tensor"] = tensor.astype(np.float32)
        cases.append(case)
    return t, cases


def write_json_compact(path: pathlib.Path, obj) -> None:
    """Indented JSON with every list of numbers on one line (the fixtures are mostly such lists)."""
    text = json.dumps(obj, indent=2)
    text = re.sub(r"\[\s*([-0-9.eE+,\s]*?)\s*\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
    path.write_text(text + "\n", encoding="utf-8")


def main(out_dir: pathlib.Path = DEFAULT_OUT) -> None:
    out_dir = pathlib.Path(out_dir)
    common.clear_dir(out_dir)
    torch.set_num_threads(1)

    write_json_compact(out_dir / "schedules.json", gen_schedules())
    write_json_compact(out_dir / "crop_stats.json", gen_crop_stats())
    ops, ops_meta = gen_ops()
    save_file(ops, str(out_dir / "ops.safetensors"))
    views, view_cases = gen_views()
    save_file(views, str(out_dir / "views.safetensors"))

    versions = common.versions()
    versions.update(torchvision=torchvision.__version__, pillow=PIL.__version__, numpy=np.__version__)
    manifest = {
        "reference": "facebookresearch/dino main_dino.py / utils.py; torchvision transforms on PIL images",
        "versions": versions,
        "schedules": "schedules.json: numpy float64, verbatim copies of cosine_scheduler and "
                     "DINOLoss.teacher_temp_schedule; Rust tolerance 1e-12 absolute",
        "crop_stats": {
            "file": "crop_stats.json",
            "n": N_CROPS,
            "note": "torchvision RandomResizedCrop.get_params, torch.manual_seed(seed) per case. The Rust test "
                    "compares its own N draws: KS distance of the gridded CDFs <= 1.95 * sqrt(2 / N) "
                    "(alpha ~ 1e-3, conservative on a grid) and means within 4.5 sigma of the difference.",
        },
        "ops": {
            "file": "ops.safetensors",
            "input": "ops_input uint8 [32, 48, 3]; tiny_WxH for the blur edge paths",
            "keys": {k: [list(v.shape), str(v.dtype)] for k, v in ops.items()},
            "params": ops_meta["factors"],
            "contrast_mean": ops_meta["contrast_mean"],
            "tolerance": "exact (Rust reproduces Pillow's uint8 arithmetic); the brief allows +-1",
        },
        "views": {
            "file": "views.safetensors",
            "image": "../preprocess/chelsea.png (451 x 300)",
            "cases": view_cases,
            "crop_convention": "crop = [top i, left j, height h, width w] (torchvision get_params order)",
            "jitter_order": "ColorJitter fn_idx: 0 brightness, 1 contrast, 2 saturation, 3 hue",
            "tolerance": "resized: +-1 (Pillow bicubic vs fast_image_resize); u8 from the reference resized: exact; "
                         "end to end: see tests/suite/augment.rs",
        },
    }
    write_json_compact(out_dir / "manifest.json", manifest)
    common.report_size(out_dir, "dino_train", max_kib=300)


if __name__ == "__main__":
    common.run_standalone(main, DEFAULT_OUT)
