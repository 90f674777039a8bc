"""Golden fixtures for image decoding and CLIP preprocessing (crates/vista/src/image/).

Writes into <out_dir> (default: crates/vista/tests/fixtures/preprocess/):

  * astronaut.png, coffee.png, chelsea.png: scikit-image's sample photos, re-encoded losslessly
    (Pillow optimize=True; pixels identical, checked) to keep the fixtures small (source: Debian's python3-skimage, /usr/lib/python3/dist-packages/skimage/data/; when the
    copies are already in <out_dir> they are reused, so regenerating needs no apt).
  * synth_landscape_301x199.png, synth_portrait_23x37.png, synth_tall_19x64.png: deterministic synthetic images of odd
    size (sharp saturated edges for bicubic overshoot/clipping, smooth gradients, noise), so the
    centre-crop rounding and the padding path matter.
  * golden/<image>.safetensors: per image, one uint8 [3, H, W] tensor per case, the result of
      torchvision Resize(resize_shortest, BICUBIC) + CenterCrop(size) + PILToTensor
    on Image.open(p).convert("RGB")  (crop "torchvision": top = int(round((h - ch) / 2.0)),
    Python's round-half-even), or the same resize with the Hugging Face centre crop
    (crop "floor": top = (h - ch) // 2, cross-checked against transformers' CLIPImageProcessorPil).
    Plus a few float32 [3, H, W] normalised tensors straight from open_clip's eval transform and
    from CLIPImageProcessorPil, to check ToTensor + Normalize end to end.
  * decode/*: small files in every supported format and odd pixel layout, and
    decode/expected.safetensors with the uint8 [H, W, 3] RGB that Pillow decodes
    (ImageOps.exif_transpose(Image.open(p)).convert("RGB")); where vista deliberately differs
    from Pillow (16-bit greyscale: Pillow clips to 255, vista scales) the expected array is
    computed by numpy and the manifest says so.
  * manifest.json: versions, cases, shapes, crop offsets, provenance.

Usable standalone (`python tools/reference/gen_preprocess.py [out_dir]`) or through
tools/reference/gen_fixtures.py, which imports `main(out_dir)`.
"""

from __future__ import annotations

import io
import json
import pathlib
import shutil
import struct
import sys
import zlib
from typing import Dict, List

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image, ImageOps
from safetensors.torch import save_file
from torchvision import transforms as T

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "crates" / "vista" / "tests" / "fixtures" / "preprocess"
SKIMAGE_DATA = pathlib.Path("/usr/lib/python3/dist-packages/skimage/data")

PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png"]
SRC_DIR = DEFAULT_OUT  # where the photos are (set by main)

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]

# (image stem, resize_shortest, crop size, crop rounding)
PREPROCESS_CASES = [
    ("astronaut", 224, 224, "torchvision"),
    ("astronaut", 336, 336, "torchvision"),
    ("coffee", 224, 224, "torchvision"),
    ("chelsea", 224, 224, "torchvision"),
    ("chelsea", 32, 32, "floor"),
    # upscaling, odd sizes; 23x37 @ 32: long side 51, (51-32)/2 = 9.5 -> torchvision 10, floor 9
    ("synth_portrait_23x37", 32, 32, "torchvision"),
    ("synth_portrait_23x37", 32, 32, "floor"),
    # 23x37 @ 16: long 25, (25-16)/2 = 4.5 -> round-half-even 4 (round-half-up would say 5)
    ("synth_portrait_23x37", 16, 16, "torchvision"),
    # crop larger than the resized image: zero padding (20x32 -> 25x25; pad 2 left / 3 right)
    ("synth_portrait_23x37", 20, 25, "torchvision"),
    ("synth_portrait_23x37", 20, 25, "floor"),
    # 301x199 @ 128: long 193, (193-128)/2 = 32.5 -> 32 (half-even)
    ("synth_landscape_301x199", 128, 128, "torchvision"),
    # resize != crop (as DINO's 256 / 224), odd crop: resized 154x102, crop 95:
    # left (154-95)/2 = 29.5 -> torchvision 30, floor 29; top (102-95)/2 = 3.5 -> 4 vs 3
    ("synth_landscape_301x199", 102, 95, "torchvision"),
    ("synth_landscape_301x199", 102, 95, "floor"),
    # taller than 2:1: Pillow >= 13 resizes vertically first (resized 16x53, (64-53) > 2*(19-16))
    ("synth_tall_19x64", 16, 16, "torchvision"),
]

# plain Pillow Image.resize((w, h), filter) (the resize_exact primitive): other filters, aspect
# changes, up- and downscaling on each axis
RESIZE_CASES = [
    ("synth_landscape_301x199", 75, 50, "bilinear"),
    ("synth_landscape_301x199", 40, 90, "bicubic"),
    ("synth_portrait_23x37", 50, 81, "bilinear"),
    ("synth_portrait_23x37", 61, 29, "bicubic"),  # Pillow >= 13: vertical pass first
    ("synth_landscape_301x199", 280, 40, "bilinear"),  # vertical first, both downscaled
    ("coffee", 61, 48, "bicubic"),
    ("synth_portrait_23x37", 23, 50, "bicubic"),  # vertical pass only
    ("synth_portrait_23x37", 15, 37, "bilinear"),  # horizontal pass only
]
PIL_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}

# float32 normalised outputs straight from the reference libraries (small, to keep fixtures small)
FLOAT_CASES = [
    # (image stem, size, source): open_clip eval transform = Resize+CenterCrop+ToTensor+Normalize
    ("synth_portrait_23x37", 32, "open_clip"),
    ("chelsea", 32, "hf_clip_pil"),
]


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------
def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def fnv1a64_np(arr: np.ndarray) -> str:
    # vectorised enough for a few hundred KB
    return fnv1a64(np.ascontiguousarray(arr).tobytes())


def load_rgb_pil(path: pathlib.Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def resized_size(w: int, h: int, size: int):
    """torchvision _compute_resized_output_size for an int size: returns (new_w, new_h)."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def crop_offsets(w: int, h: int, cw: int, ch: int, rounding: str):
    """Offset of the crop window in the resized image (negative: zero padding)."""

    def one(n, c):
        if rounding == "torchvision":
            if c > n:
                return -((c - n) // 2)
            return int(round((n - c) / 2.0))
        return (n - c) // 2  # floor division, also for negatives (HF pads the same way)

    return one(w, cw), one(h, ch)


def reference_uint8(img: Image.Image, resize_shortest: int, size: int, rounding: str) -> torch.Tensor:
    resized = T.Resize(resize_shortest, interpolation=T.InterpolationMode.BICUBIC)(img)
    if rounding == "torchvision":
        cropped = T.CenterCrop(size)(resized)
        return T.PILToTensor()(cropped)
    # floor (Hugging Face): crop / pad the numpy array exactly like
    # transformers.image_transforms.center_crop
    arr = np.asarray(resized).transpose(2, 0, 1)  # [3, H, W]
    h, w = arr.shape[1:]
    top, left = (h - size) // 2, (w - size) // 2
    if top >= 0 and left >= 0 and top + size <= h and left + size <= w:
        out = arr[:, top : top + size, left : left + size]
    else:
        nh, nw = max(size, h), max(size, w)
        canvas = np.zeros((3, nh, nw), dtype=np.uint8)
        tp, lp = -(-(nh - h) // 2), -(-(nw - w) // 2)  # ceil
        canvas[:, tp : tp + h, lp : lp + w] = arr
        top += tp
        left += lp
        out = canvas[:, max(0, top) : min(nh, top + size), max(0, left) : min(nw, left + size)]
    return torch.from_numpy(np.ascontiguousarray(out))


def hf_pil_processor(resize_shortest: int, size: int, rescale_normalize: bool):
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": resize_shortest},
        crop_size={"height": size, "width": size},
        do_rescale=rescale_normalize,
        do_normalize=rescale_normalize,
    )


def hf_reference(img: Image.Image, resize_shortest: int, size: int, rescale_normalize: bool) -> torch.Tensor:
    proc = hf_pil_processor(resize_shortest, size, rescale_normalize)
    out = proc(images=img, return_tensors="np")["pixel_values"][0]
    return torch.from_numpy(np.ascontiguousarray(out))


# ----------------------------------------------------------------------------
# synthetic images
# ----------------------------------------------------------------------------
def synth(w: int, h: int, seed: int) -> np.ndarray:
    """Smooth gradients, saturated hard edges (bicubic overshoot -> clipping), and noise."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    b = 127.5 + 127.5 * np.sin(x / 3.0 + y / 5.0)
    img = np.stack([r, g, b], axis=-1)
    # hard-edged blocks of pure black / white / primaries
    cell = max(3, min(w, h) // 6)
    colors = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.float64)
    blocks = ((x // cell).astype(int) + 2 * (y // cell).astype(int)) % 7
    for i, c in enumerate(colors):
        img[blocks == i] = c
    img += rng.normal(0, 12, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def write_png_raw(path: pathlib.Path, arr: np.ndarray, bit_depth: int, color_type: int) -> None:
    """Minimal PNG writer (Pillow cannot write 16-bit RGB PNGs). arr: [H, W] or [H, W, C] big-endian ready."""
    h, w = arr.shape[:2]
    if bit_depth == 16:
        raw = arr.astype(">u2")
    else:
        raw = arr.astype(np.uint8)
    rows = raw.reshape(h, -1).view(np.uint8).reshape(h, -1)
    data = b"".join(b"\x00" + rows[i].tobytes() for i in range(h))

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(data, 9)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def exif_with_orientation(o: int) -> bytes:
    ex = Image.Exif()
    ex[0x0112] = o
    return ex.tobytes()


# ----------------------------------------------------------------------------
# decode fixtures
# ----------------------------------------------------------------------------
def make_decode_fixtures(d: pathlib.Path) -> List[dict]:
    """Returns the decode cases; writes the files into d."""
    d.mkdir(parents=True, exist_ok=True)
    base = synth(40, 30, seed=7)  # [30, 40, 3]
    rgb = Image.fromarray(base, "RGB")
    rng = np.random.RandomState(11)
    alpha = (np.linspace(0, 255, 40)[None, :] * np.ones((30, 1))).astype(np.uint8)
    cases: List[dict] = []

    def add(name: str, fmt: str, note: str = "", expected: str = "pillow", frames: int = 1):
        cases.append({"file": f"decode/{name}", "format": fmt, "expected": expected, "note": note, "frames": frames})

    rgb.save(d / "rgb8.png")
    add("rgb8.png", "png")
    rgb.convert("L").save(d / "gray8.png")
    add("gray8.png", "png", "8-bit greyscale")
    Image.merge("LA", (rgb.convert("L"), Image.fromarray(alpha))).save(d / "gray_alpha.png")
    add("gray_alpha.png", "png", "greyscale + alpha: alpha dropped, no compositing")
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(d / "rgba8.png")
    add("rgba8.png", "png", "RGBA: alpha dropped, no compositing (Pillow convert('RGB'))")
    pal = rgb.quantize(colors=16, method=Image.Quantize.MEDIANCUT)
    pal.info["transparency"] = 3
    pal.save(d / "palette.png", transparency=3)
    add("palette.png", "png", "palette + tRNS: palette colours, transparency ignored")

    # 16-bit: high byte = base, low byte = noise, so rounding vs truncation is visible
    low = rng.randint(0, 256, base.shape).astype(np.uint16)
    rgb16 = base.astype(np.uint16) * 256 + low
    write_png_raw(d / "rgb16.png", rgb16, 16, 2)
    add("rgb16.png", "png", "16-bit RGB; Pillow keeps the high byte (truncates), vista rounds v/257: diff <= 1")
    gray16 = (base[..., 0].astype(np.uint16) * 256 + low[..., 0]).astype(np.uint16)
    write_png_raw(d / "gray16.png", gray16, 16, 0)
    add(
        "gray16.png",
        "png",
        "16-bit greyscale; Pillow's convert('RGB') clips I;16 to 255 (mostly white), vista scales "
        "round(v/257) like the image crate: expected computed by numpy",
        expected="numpy_round_div257",
    )

    with Image.open(SRC_DIR / "chelsea.png") as ch:
        ch.convert("RGB").resize((120, 80), Image.Resampling.BICUBIC).save(d / "photo_q85.jpg", quality=85)
    add("photo_q85.jpg", "jpeg", "real photo content (chelsea at 120x80), 4:2:0 q85")
    rgb.save(d / "rgb_q90_420.jpg", quality=90, subsampling="4:2:0")
    add("rgb_q90_420.jpg", "jpeg", "baseline 4:2:0; decoders differ in IDCT / chroma upsampling")
    rgb.save(d / "rgb_q95_444.jpg", quality=95, subsampling="4:4:4")
    add("rgb_q95_444.jpg", "jpeg", "4:4:4")
    rgb.save(d / "rgb_progressive.jpg", quality=90, progressive=True)
    add("rgb_progressive.jpg", "jpeg", "progressive")
    rgb.convert("L").save(d / "gray.jpg", quality=90)
    add("gray.jpg", "jpeg", "greyscale JPEG")
    rgb.convert("CMYK").save(d / "cmyk.jpg", quality=95)
    add("cmyk.jpg", "jpeg", "CMYK (Adobe) JPEG written by Pillow")

    rgb.save(d / "lossless.webp", lossless=True)
    add("lossless.webp", "webp", "lossless")
    rgb.save(d / "lossy.webp", quality=90)
    add("lossy.webp", "webp", "lossy (VP8); decoders may differ in upsampling")
    rgba.save(d / "rgba_lossless.webp", lossless=True)
    add("rgba_lossless.webp", "webp", "lossless with alpha: dropped")

    pal_nt = rgb.quantize(colors=32, method=Image.Quantize.MEDIANCUT)
    pal_nt.save(d / "palette.gif")
    add("palette.gif", "gif", "palette GIF")
    pal_nt.save(d / "transparent.gif", transparency=5)
    add("transparent.gif", "gif", "palette GIF with a transparent index: palette colours, no compositing")
    frame2 = Image.fromarray(255 - base, "RGB").quantize(colors=32)
    pal_nt.save(d / "anim.gif", save_all=True, append_images=[frame2], duration=100, loop=0)
    add("anim.gif", "gif", "2 frames: the first is decoded", frames=2)

    rgb.save(d / "rgb.bmp")
    add("rgb.bmp", "bmp", "24-bit BMP")
    rgb.save(d / "rgb_lzw.tiff", compression="tiff_lzw")
    add("rgb_lzw.tiff", "tiff", "RGB, LZW")
    rgb.convert("CMYK").save(d / "cmyk.tiff")
    add("cmyk.tiff", "tiff", "CMYK TIFF (naive CMYK -> RGB in both)")

    # EXIF orientation: stored 40x30 landscape; 5..8 display as 30x40 portrait
    for o in range(1, 9):
        rgb.save(d / f"orient{o}.jpg", quality=95, subsampling="4:4:4", exif=exif_with_orientation(o))
        add(f"orient{o}.jpg", "jpeg", f"EXIF orientation {o}; expected after ImageOps.exif_transpose")
    rgb.save(d / "orient6.png", exif=exif_with_orientation(6))
    add("orient6.png", "png", "EXIF orientation 6 in a PNG eXIf chunk")
    rgb.save(d / "orient6.webp", lossless=True, exif=exif_with_orientation(6))
    add("orient6.webp", "webp", "EXIF orientation 6 in a WebP EXIF chunk")

    for c in cases:
        p = d / pathlib.Path(c["file"]).name
        with Image.open(p) as im:
            c["stored_size"] = list(im.size)
            c["pillow_mode"] = im.mode
            c["orientation"] = int(im.getexif().get(0x0112, 1))
            upright = ImageOps.exif_transpose(im)
            if c["expected"] == "pillow":
                arr = np.asarray(upright.convert("RGB"))
            else:
                arr = None
        if c["expected"] == "numpy_round_div257":
            g = ((gray16.astype(np.uint32) * 2 + 257) // (2 * 257)).astype(np.uint8)  # round(v/257)
            arr = np.repeat(g[..., None], 3, axis=-1)
        c["width"], c["height"] = int(arr.shape[1]), int(arr.shape[0])
        c["tensor"] = pathlib.Path(c["file"]).name
        c["_array"] = arr
        c["bytes"] = p.stat().st_size
    return cases


# ----------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------
def versions() -> Dict[str, str]:
    out = {
        "python": sys.version.split()[0],
        "pillow": PIL.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
    }
    try:
        from PIL import features

        out["libjpeg"] = str(features.version("jpg"))
        out["libwebp"] = str(features.version("webp"))
        out["zlib"] = str(features.version("zlib"))
    except Exception:  # pragma: no cover
        pass
    for mod in ("transformers", "open_clip", "safetensors"):
        try:
            m = __import__(mod)
            out[mod] = m.__version__
        except ImportError:  # pragma: no cover
            pass
    return out


def main(out_dir: pathlib.Path) -> None:
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    golden_dir = out_dir / "golden"
    decode_dir = out_dir / "decode"
    for d in (golden_dir, decode_dir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)

    # photos
    photo_info = {}
    for name in PHOTOS:
        dst = out_dir / name
        src = SKIMAGE_DATA / name
        if not dst.exists() and (DEFAULT_OUT / name).exists() and not src.exists():
            shutil.copyfile(DEFAULT_OUT / name, dst)  # the committed copy
        if not dst.exists():
            if not src.exists():
                raise SystemExit(f"{src} missing: apt-get install -y python3-skimage")
            # Lossless re-encode (optimize=True): identical pixels, astronaut.png 792 -> 425 KB.
            with Image.open(src) as im:
                im.save(dst, optimize=True)
        if src.exists():
            assert np.array_equal(np.asarray(load_rgb_pil(src)), np.asarray(load_rgb_pil(dst))), name
        img = load_rgb_pil(dst)
        photo_info[name] = {
            "width": img.size[0],
            "height": img.size[1],
            "rgb_fnv1a64": fnv1a64_np(np.asarray(img)),
            "source": "scikit-image data (Debian python3-skimage), re-encoded losslessly by Pillow (optimize=True)",
        }

    # synthetic
    synth_specs = {
        "synth_landscape_301x199": (301, 199, 1),
        "synth_portrait_23x37": (23, 37, 2),
        "synth_tall_19x64": (19, 64, 3),
    }
    for stem, (w, h, seed) in synth_specs.items():
        Image.fromarray(synth(w, h, seed), "RGB").save(out_dir / f"{stem}.png", optimize=True)

    images = {pathlib.Path(p).stem: out_dir / p for p in PHOTOS}
    images.update({stem: out_dir / f"{stem}.png" for stem in synth_specs})

    per_image: Dict[str, Dict[str, torch.Tensor]] = {}
    cases = []
    for stem, resize_shortest, size, rounding in PREPROCESS_CASES:
        img = load_rgb_pil(images[stem])
        w, h = img.size
        rw, rh = resized_size(w, h, resize_shortest)
        left, top = crop_offsets(rw, rh, size, size, rounding)
        ref = reference_uint8(img, resize_shortest, size, rounding)
        assert ref.dtype == torch.uint8 and tuple(ref.shape) == (3, size, size), ref.shape
        # the resize itself must be what torchvision/Pillow does
        resized = np.asarray(img.resize((rw, rh), Image.Resampling.BICUBIC))
        assert tuple(resized.shape) == (rh, rw, 3)
        cross = "none"
        if rounding == "floor":
            hf = hf_reference(img, resize_shortest, size, rescale_normalize=False)
            hf = torch.from_numpy(np.rint(hf.numpy()).astype(np.uint8))
            if not torch.equal(hf, ref):
                raise AssertionError(f"{stem} {resize_shortest}/{size}: HF CLIPImageProcessorPil disagrees")
            cross = "transformers CLIPImageProcessorPil (identical)"
        else:
            # PIL crop arithmetic must agree with our offsets formula
            if left >= 0 and top >= 0:
                manual = np.asarray(img.resize((rw, rh), Image.Resampling.BICUBIC))[top : top + size, left : left + size]
                assert np.array_equal(manual.transpose(2, 0, 1), ref.numpy()), (stem, size)
            cross = "torchvision CenterCrop (offsets re-derived and checked)"
        tname = f"r{resize_shortest}_c{size}_{rounding}"
        per_image.setdefault(stem, {})[tname] = ref
        cases.append(
            {
                "image": images[stem].name,
                "tensor": f"golden/{stem}.safetensors:{tname}",
                "resize_shortest": resize_shortest,
                "size": size,
                "crop": rounding,
                "resized": [rw, rh],
                "crop_left_top": [left, top],
                "cross_check": cross,
            }
        )

    resize_cases = []
    for stem, w, h, filt in RESIZE_CASES:
        img = load_rgb_pil(images[stem])
        ref = torch.from_numpy(np.asarray(img.resize((w, h), PIL_FILTERS[filt])).transpose(2, 0, 1).copy())
        tname = f"resize_{w}x{h}_{filt}"
        per_image.setdefault(stem, {})[tname] = ref
        resize_cases.append(
            {"image": images[stem].name, "tensor": f"golden/{stem}.safetensors:{tname}", "width": w, "height": h, "filter": filt}
        )

    float_cases = []
    for stem, size, source in FLOAT_CASES:
        img = load_rgb_pil(images[stem])
        if source == "open_clip":
            import open_clip

            tf = open_clip.image_transform(size, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD)
            ref = tf(img)
            rounding = "torchvision"
        else:
            ref = hf_reference(img, size, size, rescale_normalize=True).float()
            rounding = "floor"
        tname = f"float_r{size}_c{size}_{rounding}_{source}"
        per_image.setdefault(stem, {})[tname] = ref.contiguous().float()
        float_cases.append(
            {
                "image": images[stem].name,
                "tensor": f"golden/{stem}.safetensors:{tname}",
                "resize_shortest": size,
                "size": size,
                "crop": rounding,
                "mean": OPENAI_MEAN,
                "std": OPENAI_STD,
                "source": source,
            }
        )

    for stem, tensors in per_image.items():
        path = golden_dir / f"{stem}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        path.chmod(0o644)

    global SRC_DIR
    SRC_DIR = out_dir
    decode_cases = make_decode_fixtures(decode_dir)
    save_file(
        {c["tensor"]: torch.from_numpy(np.array(c.pop("_array"), dtype=np.uint8, copy=True)) for c in decode_cases},
        str(decode_dir / "expected.safetensors"),
    )
    (decode_dir / "expected.safetensors").chmod(0o644)

    manifest = {
        "generator": "tools/reference/gen_preprocess.py",
        "versions": versions(),
        "reference": {
            "uint8": "torchvision Resize(resize_shortest, BICUBIC) + CenterCrop(size) + PILToTensor on "
            "Image.open(p).convert('RGB'); 'floor' = Hugging Face centre crop ((h - ch) // 2)",
            "float": "open_clip.image_transform(size, is_train=False) / CLIPImageProcessorPil",
            "decode": "ImageOps.exif_transpose(Image.open(p)).convert('RGB') as uint8 [H, W, 3]",
        },
        "photos": photo_info,
        "preprocess_cases": cases,
        "resize_cases": resize_cases,
        "float_cases": float_cases,
        "decode_cases": decode_cases,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    total = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    print(f"gen_preprocess: wrote {out_dir} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
