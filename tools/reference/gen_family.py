"""Golden fixtures for per-family preprocessing: what each checkpoint family's own reference
does with transparent images, and transformers' DINO image processors.

Writes into <out_dir> (default: crates/vista/tests/fixtures/family/):

  * rgba_233x157.png (RGBA: opaque, gradient and fully transparent regions, colour left under
    the transparent pixels), la_61x90.png (grey + alpha), palette_trns_80x50.png (a palette with
    one transparent entry: Pillow mode P with info["transparency"]), photo_640x427.png
    (scikit-image's chelsea resized by Pillow to 640x427: an odd 159-pixel crop margin after the
    256 resize, where torchvision rounds the offset to 80 and transformers floors it to 79).
  * dinov2_preprocessor_config.json, dino_vit_preprocessor_config.json: the processor configs
    the hub's facebook/dinov2-* and facebook/dino-vit* repositories ship.
  * golden.safetensors, per image:
      openclip/<img>/<S>       float32 [3,S,S]  open_clip.image_transform(S, is_train=False) (S < 64)
      openclip_u8/<img>/<S>    uint8 [S,S,3]    its Resize + CenterCrop + convert("RGB")
      openclip_alpha/<img>/<S> uint8 [S,S]      the alpha of that Resize + CenterCrop (RGBA only)
      hf/<img>/<S>             float32 [3,S,S]  CLIPImageProcessorPil(shortest_edge S, crop S) (S < 64)
      hf_u8/<img>/<S>          uint8 [S,S,3]    convert_to_rgb + Pillow resize + floor crop
      (the DINO outputs are stored as the uint8 [224,224,3] images they normalise, recovered
      exactly from the reference's float32 output)
      dinov2_hf/<img>          uint8  AutoImageProcessor(dinov2 config, backend="pil")
      dino_vit_hf/<img>        uint8  AutoImageProcessor(dino-vit config, backend="pil");
                               absent where transformers refuses the image (ViTImageProcessor does
                               not convert to RGB: RGBA / LA inputs; listed in the manifest)
      dino_official/<img>      uint8  DINO's eval transform on pil_loader's convert("RGB")
  * manifest.json: versions, cases, and how far transformers' default torchvision backend is from
    the Pillow backend on the same inputs (vista follows the Pillow one).

Usable standalone (`python tools/reference/gen_family.py [out_dir]`) or through gen_fixtures.py.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "crates" / "vista" / "tests" / "fixtures" / "family"
PHOTO_SRC = REPO_ROOT / "crates" / "vista" / "tests" / "fixtures" / "preprocess" / "chelsea.png"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
CLIP_SIZES = [224, 33]

DINOV2_CONFIG = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": IMAGENET_MEAN,
    "image_processor_type": "BitImageProcessor",
    "image_std": IMAGENET_STD,
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 256},
}
DINO_VIT_CONFIG = {
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ViTFeatureExtractor",
    "image_mean": IMAGENET_MEAN,
    "image_std": IMAGENET_STD,
    "resample": 2,
    "size": 224,
}


def make_images(out: pathlib.Path) -> dict:
    rng = np.random.default_rng(20261204)
    # RGBA 233x157: a colour field, alpha = opaque left third, a horizontal gradient in the
    # middle, fully transparent right third with random colours underneath, plus a transparent
    # disc in the opaque part.
    w, h = 233, 157
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 7) % 256], -1).astype(np.uint8)
    rgb[:, 2 * w // 3:] = rng.integers(0, 256, size=(h, w - 2 * w // 3, 3), dtype=np.uint8)
    alpha = np.full((h, w), 255, np.uint8)
    mid = (xx >= w // 3) & (xx < 2 * w // 3)
    alpha[mid] = (255 * (2 * w // 3 - xx[mid]) // (w // 3)).astype(np.uint8)
    alpha[xx >= 2 * w // 3] = 0
    alpha[(xx - 40) ** 2 + (yy - 70) ** 2 < 20 ** 2] = 0
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(out / "rgba_233x157.png")
    # LA 61x90: grey ramp, alpha stripes.
    w, h = 61, 90
    yy, xx = np.mgrid[0:h, 0:w]
    grey = ((xx * 4 + yy * 2) % 256).astype(np.uint8)
    la_alpha = np.where((yy // 10) % 3 == 0, 0, np.where((yy // 10) % 3 == 1, 128, 255)).astype(np.uint8)
    Image.fromarray(np.dstack([grey, la_alpha]), "LA").save(out / "la_61x90.png")
    # Palette 80x50 with index 0 transparent.
    w, h = 80, 50
    idx = (rng.integers(0, 16, size=(h, w))).astype(np.uint8)
    idx[10:30, 20:60] = 0
    pal = Image.fromarray(idx, "P")
    palette = [int(v) for v in rng.integers(0, 256, size=16 * 3)]
    pal.putpalette(palette)
    pal.info["transparency"] = 0
    pal.save(out / "palette_trns_80x50.png", transparency=0)
    # A photo at 640x427.
    photo = Image.open(PHOTO_SRC).convert("RGB").resize((640, 427), Image.BICUBIC)
    photo.save(out / "photo_640x427.png")
    (out / "dinov2_preprocessor_config.json").write_text(json.dumps(DINOV2_CONFIG, indent=2) + "\n")
    (out / "dino_vit_preprocessor_config.json").write_text(json.dumps(DINO_VIT_CONFIG, indent=2) + "\n")
    return {
        "rgba_233x157.png": "RGBA, alpha channel",
        "la_61x90.png": "LA, alpha channel",
        "palette_trns_80x50.png": "P with a transparent palette entry",
        "photo_640x427.png": "RGB photo",
    }


def hf_clip_pil(size: int):
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def hf_clip_tv(size: int):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def hf_u8(img: Image.Image, size: int) -> np.ndarray:
    """transformers' Pillow-backend steps before rescaling: convert_to_rgb (composite onto
    white), resize the shortest side with Pillow bicubic, floor centre crop."""
    from transformers.image_transforms import convert_to_rgb

    rgb = Image.fromarray(convert_to_rgb(img, return_numpy=True))
    w, h = rgb.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    nw, nh = (size, new_long) if w <= h else (new_long, size)
    r = np.asarray(rgb.resize((nw, nh), Image.BICUBIC))
    top, left = (nh - size) // 2, (nw - size) // 2
    return r[top:top + size, left:left + size].copy()


def to_u8(x: torch.Tensor, mean, std) -> torch.Tensor:
    """The uint8 [H, W, 3] image a normalised [3, H, W] float32 tensor was made from (every value
    is (v / 255 - mean) / std of an integer v, so this is exact; checked)."""
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    v = ((x * s + m) * 255).round().clamp(0, 255).to(torch.uint8)
    back = (v.float() / 255 - m) / s
    assert (back - x).abs().max() < 1e-5, float((back - x).abs().max())
    return v.permute(1, 2, 0).contiguous()


def main(out_dir: pathlib.Path) -> None:
    import open_clip
    import torchvision
    import transformers
    import PIL
    from torchvision import transforms as T
    from transformers import AutoImageProcessor

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = make_images(out)
    tensors = {}
    backend_gap = {}
    refused = {}
    for name in images:
        img = Image.open(out / name)
        img.load()
        stem = name.rsplit(".", 1)[0]
        for size in CLIP_SIZES:
            tf = open_clip.image_transform(size, is_train=False)
            if size < 64:  # the float outputs at the small size only: they check the normalisation
                tensors[f"openclip/{stem}/{size}"] = tf(img).contiguous()
            resize, crop = tf.transforms[0], tf.transforms[1]
            pre = crop(resize(img))
            tensors[f"openclip_u8/{stem}/{size}"] = torch.from_numpy(np.asarray(pre.convert("RGB")).copy())
            if "A" in pre.getbands():
                tensors[f"openclip_alpha/{stem}/{size}"] = torch.from_numpy(np.asarray(pre.getchannel("A")).copy())
            pil = hf_clip_pil(size)(img, return_tensors="pt")["pixel_values"][0]
            if size < 64:
                tensors[f"hf/{stem}/{size}"] = pil.contiguous()
            tensors[f"hf_u8/{stem}/{size}"] = torch.from_numpy(hf_u8(img, size))
            tv = hf_clip_tv(size)(img, return_tensors="pt")["pixel_values"][0]
            backend_gap[f"clip/{stem}/{size}"] = float((tv - pil).abs().max())
        for key, cfg_name in [("dinov2_hf", "dinov2_preprocessor_config.json"),
                              ("dino_vit_hf", "dino_vit_preprocessor_config.json")]:
            tmp = out / f".{key}"
            tmp.mkdir(exist_ok=True)
            (tmp / "preprocessor_config.json").write_text((out / cfg_name).read_text())
            pil_proc = AutoImageProcessor.from_pretrained(tmp, backend="pil")
            tv_proc = AutoImageProcessor.from_pretrained(tmp)
            try:
                pil = pil_proc(img, return_tensors="pt")["pixel_values"][0]
                tv = tv_proc(img, return_tensors="pt")["pixel_values"][0]
                tensors[f"{key}/{stem}"] = to_u8(pil, IMAGENET_MEAN, IMAGENET_STD)
                backend_gap[f"{key}/{stem}"] = float((tv - pil).abs().max())
            except ValueError as e:
                # ViTImageProcessor does not convert to RGB (no do_convert_rgb): transformers
                # itself cannot take a 4- or 2-channel image there.
                refused[f"{key}/{stem}"] = str(e)
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
        official = T.Compose([
            T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])
        tensors[f"dino_official/{stem}"] = to_u8(official(img.convert("RGB")), IMAGENET_MEAN, IMAGENET_STD)
    save_file(tensors, str(out / "golden.safetensors"))
    manifest = {
        "generator": "tools/reference/gen_family.py",
        "versions": {
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "transformers": transformers.__version__, "open_clip": open_clip.__version__,
            "pillow": PIL.__version__, "numpy": np.__version__, "python": sys.version.split()[0],
        },
        "images": images,
        "clip_sizes": CLIP_SIZES,
        "references": {
            "openclip": "open_clip.image_transform(S, is_train=False) on Image.open(p)",
            "hf": "transformers CLIPImageProcessorPil(size={'shortest_edge': S}, crop_size=S)",
            "dinov2_hf": "AutoImageProcessor.from_pretrained(<dinov2 config>, backend='pil')",
            "dino_vit_hf": "AutoImageProcessor.from_pretrained(<dino-vit config>, backend='pil')",
            "dino_official": "DINO eval: Resize(256, BICUBIC), CenterCrop(224), ToTensor, Normalize on convert('RGB')",
        },
        "torchvision_backend_max_abs_diff_vs_pil_backend": backend_gap,
        "reference_refused": refused,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(tensors)} tensors to {out}; torchvision-vs-pil backend gap max "
          f"{max(backend_gap.values()):.4f}")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
