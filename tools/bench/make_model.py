"""Builds the benchmark's inputs: a random-weight CLIP ViT-B/32, its ONNX towers and the inputs.

Writes (default ``bench-out/``, ignored by git):

* ``clip-vit-b32-random/``: transformers ``CLIPModel`` with the exact openai/clip-vit-base-patch32
  configuration (including the legacy ``eos_token_id: 2``, so text pooling is argmax over the
  ids), seeded random weights, ``config.json`` + ``model.safetensors``.
* ``clip-vit-b32-random/onnx/image.onnx``: ``get_image_features`` ``[B,3,224,224] -> [B,512]``.
* ``clip-vit-b32-random/onnx/text.onnx``: ``get_text_features`` ``[B,L] int64 -> [B,512]``
  (dynamic batch and length, L <= 77, so the trimmed-text workload can run it too).
* ``clip-inputs.safetensors``: ``pixel_values`` [32,3,224,224] f32, ``input_ids`` [32,77] i64
  (real CLIP BPE ids of "a photo of a {label}." prompts, zero padded as open_clip pads), and the
  PyTorch outputs for them, ``image_embeds`` [32,512] and ``text_embeds`` [32,512] (float32,
  computed in one batch each), plus ``image_embeds_b1`` [1,512] for the first image alone.

Every engine reads the same file, so all embed identical inputs. Checks that ONNX Runtime's
outputs equal PyTorch's (max |diff| printed; the script fails above 1e-3).

Usage: python tools/bench/make_model.py [--out bench-out] [--force]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

# numpy / torch are imported inside the functions: bench_clip.py imports this module for its
# paths, and its ONNX Runtime worker must not pay for (or count the memory of) torch.

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL_DIRNAME = "clip-vit-b32-random"
INPUTS_NAME = "clip-inputs.safetensors"
SEED = 0
BATCH = 32
CONTEXT = 77
SOT, EOT = 49406, 49407
# Bumped when the files change in a way that needs a rebuild (bench_clip.py checks it).
FORMAT = 3

# 32 labels; "a photo of a {label}." gives 8-12 tokens with the real CLIP BPE.
LABELS = [
    "cat", "dog", "golden retriever", "tabby cat", "goldfish", "great white shark", "tree frog",
    "bald eagle", "school bus", "fire engine", "espresso", "pizza", "sports car", "mountain bike",
    "grand piano", "acoustic guitar", "lighthouse", "suspension bridge", "red panda",
    "hot air balloon", "snow leopard", "container ship", "strawberry ice cream", "banana",
    "pineapple", "steam locomotive", "african elephant", "king penguin", "teddy bear",
    "wooden rocking chair", "volcano", "coral reef",
]

# openai/clip-vit-base-patch32 config.json, as published (the fields that shape the model).
TEXT_CONFIG = dict(
    vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
    num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
    layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1, projection_dim=512,
)
VISION_CONFIG = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    image_size=224, patch_size=32, num_channels=3, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    projection_dim=512,
)


def paths(out: pathlib.Path) -> dict:
    model = out / MODEL_DIRNAME
    return dict(
        model=model,
        weights=model / "model.safetensors",
        image_onnx=model / "onnx" / "image.onnx",
        text_onnx=model / "onnx" / "text.onnx",
        inputs=out / INPUTS_NAME,
    )


def all_exist(out: pathlib.Path) -> bool:
    """Every file is there and was made by this version of the script."""
    if not all(p.exists() for p in paths(out).values()):
        return False
    try:
        return json.loads((out / "make_model.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def tokenize(labels):
    """Real CLIP BPE ids through open_clip's tokenizer (ships the vocab), else a fixed fallback."""
    import torch

    texts = [f"a photo of a {label}." for label in labels]
    try:
        import open_clip

        tok = open_clip.get_tokenizer("ViT-B-32")
        ids = tok(texts, context_length=CONTEXT).to(torch.int64)
        source = "open_clip ViT-B-32 tokenizer"
    except Exception as e:  # pragma: no cover - open_clip is in tools/reference/requirements.txt
        print(f"open_clip tokenizer unavailable ({e}); using seeded ids of the same lengths", file=sys.stderr)
        g = torch.Generator().manual_seed(SEED + 1)
        ids = torch.zeros(len(texts), CONTEXT, dtype=torch.int64)
        for i, t in enumerate(texts):
            n = len(t.split()) + 3
            ids[i, 0] = SOT
            ids[i, 1 : n + 1] = torch.randint(1, 49405, (n,), generator=g)
            ids[i, n + 1] = EOT
        source = "seeded random ids"
    return texts, ids, source


def towers(model):
    """``get_image_features`` / ``get_text_features`` as modules returning the projected tensor."""
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            out = self.model.get_image_features(pixel_values=pixel_values)
            return getattr(out, "pooler_output", out)

    class TextTower(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            out = self.model.get_text_features(input_ids=input_ids)
            return getattr(out, "pooler_output", out)

    return ImageTower(model).eval(), TextTower(model).eval()


def export_onnx(module, example, path: pathlib.Path, input_name: str, dynamic_len: bool = False) -> str:
    """torch.onnx.export with a dynamic batch (and sequence length if `dynamic_len`); the dynamo
    exporter first, TorchScript if it fails."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for dynamo in (True, False):
        try:
            kwargs = dict(
                input_names=[input_name], output_names=["embeds"], opset_version=18,
                dynamo=dynamo,
            )
            if dynamo:
                dims = {0: torch.export.Dim("batch", min=1, max=1024)}
                if dynamic_len:
                    dims[1] = torch.export.Dim("seq", min=2, max=CONTEXT)
                kwargs["dynamic_shapes"] = {input_name: dims}
                kwargs["external_data"] = False
            else:
                axes = {0: "batch", 1: "seq"} if dynamic_len else {0: "batch"}
                kwargs["dynamic_axes"] = {input_name: axes, "embeds": {0: "batch"}}
            torch.onnx.export(module, (example,), str(path), **kwargs)
            return f"torch.onnx.export(dynamo={dynamo}, opset 18)"
        except Exception as e:  # noqa: BLE001 - try the other exporter
            errors.append(f"dynamo={dynamo}: {type(e).__name__}: {str(e)[:500]}")
            print(f"ONNX export with dynamo={dynamo} failed: {errors[-1]}", file=sys.stderr)
    raise RuntimeError("ONNX export failed:\n" + "\n".join(errors))


def ort_run(path: pathlib.Path, name: str, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {name: x})[0]


def make(out: pathlib.Path) -> dict:
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel

    p = paths(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    t0 = time.time()
    config = CLIPConfig(
        text_config=TEXT_CONFIG, vision_config=VISION_CONFIG, projection_dim=512,
        logit_scale_init_value=2.6592,
    )
    model = CLIPModel(config).float().eval()
    # transformers' default init (normal std 0.02-ish, LayerNorm 1/0) is already seeded random;
    # check that nothing was left uninitialised (e.g. on a meta device).
    for name, t in model.state_dict().items():
        if not torch.isfinite(t).all():
            raise RuntimeError(f"parameter {name} is not finite after init")
    model.save_pretrained(str(p["model"]))
    if not p["weights"].exists():
        raise RuntimeError(f"save_pretrained did not write {p['weights']}")
    print(f"model: {p['model']} ({time.time() - t0:.1f}s)")

    # Inputs: seeded pixels in the range of normalised images, real token ids.
    g = torch.Generator().manual_seed(SEED + 2)
    pixels = torch.randn(BATCH, 3, 224, 224, generator=g, dtype=torch.float32)
    texts, ids, id_source = tokenize(LABELS)
    lengths = [int((row == EOT).nonzero()[0, 0]) + 1 for row in ids]

    image_tower, text_tower = towers(model)
    with torch.inference_mode():
        image_embeds = image_tower(pixels)
        image_b1 = image_tower(pixels[:1])
        text_embeds = text_tower(ids)
    save_file(
        {
            "pixel_values": pixels.contiguous(),
            "input_ids": ids.contiguous(),
            "image_embeds": image_embeds.contiguous(),
            "image_embeds_b1": image_b1.contiguous(),
            "text_embeds": text_embeds.contiguous(),
        },
        str(p["inputs"]),
        metadata={
            "texts": json.dumps(texts),
            "token_lengths": json.dumps(lengths),
            "id_source": id_source,
            "torch": torch.__version__,
        },
    )
    print(f"inputs: {p['inputs']} (token lengths incl. sot/eot: min {min(lengths)}, max {max(lengths)})")

    exporters = {}
    t0 = time.time()
    exporters["image"] = export_onnx(image_tower, pixels[:2], p["image_onnx"], "pixel_values")
    exporters["text"] = export_onnx(text_tower, ids[:2], p["text_onnx"], "input_ids", dynamic_len=True)
    print(f"onnx: {exporters} ({time.time() - t0:.1f}s)")

    # ORT must equal PyTorch on the same inputs (and at a batch other than the export's).
    diffs = {}
    for key, path, name, x, ref in (
        ("image_b32", p["image_onnx"], "pixel_values", pixels, image_embeds),
        ("image_b1", p["image_onnx"], "pixel_values", pixels[:1], image_b1),
        ("text_b32", p["text_onnx"], "input_ids", ids, text_embeds),
        ("text_b32_trimmed", p["text_onnx"], "input_ids", ids[:, : max(lengths)], text_embeds),
    ):
        got = ort_run(path, name, x.numpy())
        diffs[key] = float(np.abs(got - ref.numpy()).max())
    print("ORT vs PyTorch max |diff|: " + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items()))
    bad = {k: v for k, v in diffs.items() if not v <= 1e-3}
    if bad:
        raise RuntimeError(f"ONNX Runtime disagrees with PyTorch: {bad}")
    embed_max = max(float(image_embeds.abs().max()), float(text_embeds.abs().max()))
    info = dict(format=FORMAT, embed_max_abs=round(embed_max, 3), exporters=exporters, ort_vs_torch=diffs, id_source=id_source, token_lengths=lengths)
    (out / "make_model.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=pathlib.Path, default=REPO_ROOT / "bench-out")
    ap.add_argument("--force", action="store_true", help="rebuild even if every file exists")
    args = ap.parse_args(argv)
    if all_exist(args.out) and not args.force:
        print(f"{args.out}: model, ONNX and inputs already there (--force to rebuild)")
        return 0
    make(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
