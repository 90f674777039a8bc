"""End-to-end CLIP golden: strings and image files in, embeddings and zero-shot probabilities out.

A tiny open_clip model with the REAL 49408-token vocabulary (narrow towers keep it ~2 MB), so the
whole user path is pinned against the reference in one fixture: open_clip's tokenizer, its
preprocessing transform on Pillow-decoded files (the committed skimage photos and synthetic
images of tests/fixtures/preprocess/), encode_image / encode_text, and zero-shot weights built
exactly as the CLIP notebook does (normalise per template, mean, renormalise).

Writes <out_dir>/openclip_e2e/{open_clip_config.json, open_clip_model.safetensors, golden.safetensors,
manifest.json}.
"""

from __future__ import annotations

import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402
import gen_clip  # noqa: E402

SEED = 2001
MODEL_CFG = dict(
    embed_dim=16,
    quick_gelu=True,
    vision_cfg=dict(image_size=32, layers=2, width=32, patch_size=8, head_width=16, mlp_ratio=4.0),
    text_cfg=dict(context_length=77, vocab_size=49408, width=8, heads=2, layers=2),
)
IMAGES = ["astronaut.png", "coffee.png", "chelsea.png", "synth_landscape_301x199.png", "synth_portrait_23x37.png"]
TEXTS = [
    "a photo of a saree.",
    "A red saree with a gold border",
    "kurta",
    "Lehenga!!  at   the   wedding",
    "a photo of an astronaut in space",
    "don\u2019t panic \U0001F600",
    "caf\u00e9 &amp; cr\u00e8me br\u00fbl\u00e9e",
    "\u0938\u093e\u0921\u093c\u0940",
    "",
    "word " * 100,
]
LABELS = ["astronaut", "coffee", "cat"]
TEMPLATES = ["a photo of a {}.", "a bad photo of the {}.", "art of the {}."]


def main(out_dir: pathlib.Path) -> None:
    import open_clip
    from open_clip.model import CLIP
    from open_clip.transform import image_transform
    from PIL import Image
    import safetensors.torch

    d = pathlib.Path(out_dir) / "openclip_e2e"
    common.clear_dir(d)
    torch.manual_seed(SEED)
    model = CLIP(**MODEL_CFG).float().eval()
    gen_clip.rerandomise(model, common.generator(SEED))
    tokenizer = open_clip.get_tokenizer("ViT-B-32")  # the OpenAI SimpleTokenizer, context 77
    preprocess = image_transform(MODEL_CFG["vision_cfg"]["image_size"], is_train=False)

    photos = common.FIXTURES_ROOT / "preprocess"
    pixels = torch.stack([preprocess(Image.open(photos / name)) for name in IMAGES])
    ids = tokenizer(TEXTS)
    with torch.no_grad():
        img = model.encode_image(pixels)
        txt = model.encode_text(ids)
        # Zero-shot weights as in the CLIP notebook, with the model's own logit scale.
        weights = []
        for label in LABELS:
            e = model.encode_text(tokenizer([t.format(label) for t in TEMPLATES]))
            e = e / e.norm(dim=-1, keepdim=True)
            m = e.mean(dim=0)
            weights.append(m / m.norm())
        weights = torch.stack(weights)
        img_n = img / img.norm(dim=-1, keepdim=True)
        probs = (model.logit_scale.exp() * img_n @ weights.t()).softmax(dim=-1)

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(d / "open_clip_model.safetensors"))
    common.write_json(d / "open_clip_config.json", {
        "model_cfg": MODEL_CFG,
        "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD),
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    })
    common.save_golden(d / "golden.safetensors", {
        "pixel_values": pixels, "input_ids": ids, "image_embeds": img, "text_embeds": txt,
        "zeroshot_weights": weights, "zeroshot_probs": probs,
    })
    common.write_json(d / "manifest.json", {
        "case": "openclip_e2e",
        "reference": "open_clip CLIP + open_clip tokenizer + open_clip image_transform (PIL)",
        "versions": common.versions(),
        "seed": SEED,
        "config": MODEL_CFG,
        "images": IMAGES,
        "images_dir": "tests/fixtures/preprocess",
        "texts": TEXTS,
        "labels": LABELS,
        "templates": TEMPLATES,
        "tolerances": {
            "input_ids": "exact",
            "text_embeds": {"max_abs": 1e-4},
            "image_embeds": {"max_abs": 2e-3, "why": "Pillow vs fast_image_resize resize may differ by 1/255 on "
                             "a few pixels; that propagates through the tower"},
            "zeroshot_probs": {"max_abs": 1e-3},
        },
    })
    print(f"[clip_e2e] {sum(p.stat().st_size for p in d.iterdir()) / 1024:.1f} KiB")


if __name__ == "__main__":
    common.setup_determinism(0)
    main(common.FIXTURES_ROOT / "clip")
