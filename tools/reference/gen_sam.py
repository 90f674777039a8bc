"""Golden fixtures for SAM (Segment Anything): official ViT SAM, MobileSAM (TinyViT) and transformers SamModel.

Writes, under <out_dir>/<case>/ (out_dir = crates/vista/tests/fixtures/sam):

  vit_official/   tiny `segment_anything` Sam (ImageEncoderViT), `sam_vit_tiny.pth` (torch.save(state_dict),
                  zip format, official key names as in sam_vit_b_01ec64.pth) + config.json
  mobile_official/ tiny MobileSAM (`mobile_sam` Sam with TinyViT), `mobile_sam_tiny.pt` (torch.save(state_dict),
                  key names as in mobile_sam.pt, BatchNorm running stats included) + config.json
  vit_hf/         transformers SamModel with EXACTLY the vit_official weights mapped to HF names
                  (config.json + model.safetensors via save_pretrained, preprocessor_config.json)

and per case one golden_<H>x<W>.safetensors per image plus manifest.json.

All goldens come from the official predictor flow (SamPredictor.set_image + predict / predict_torch), so
ResizeLongestSide (PIL bilinear through torchvision, int(x + 0.5) rounding), the pixel normalisation, the
bottom/right zero padding, apply_coords / apply_boxes and postprocess_masks are all exercised. The HF case
feeds SamModel the very same preprocessed pixel tensor and transformed prompts, and post-processes with
SamImageProcessor.post_process_masks.

MobileSAM patches (the reference TinyViT hard-codes the real model's sizes; only these two are patched,
on the instance, nothing global):
  1. TinyViT.forward_features does `x.view(B, 64, 64, C)` (64 = 1024 / 16). Patched to view to the actual
     grid (H_in / 16, W_in / 16) of the input, i.e. 8 x 8 for the 128-px model. Same code otherwise.
  2. TinyViT.neck is built with a hard-coded 256 output channels. Replaced by the identically structured
     Sequential(Conv2d(320, 32, 1, bias=False), LayerNorm2d(32), Conv2d(32, 32, 3, padding=1, bias=False),
     LayerNorm2d(32)) using mobile_sam's own LayerNorm2d, so the keys stay image_encoder.neck.{0,1,2,3}.*.
The last PatchMerging uses stride 1 only when its out_dim is 320, 448 or 576 (unpatched), hence the 320.

Run through tools/reference/gen_fixtures.py (it sets up determinism first).
"""

from __future__ import annotations

import copy
import pathlib
import re
import sys
import types
import warnings
from functools import partial
from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

# ----------------------------------------------------------------------------
# Constants
# ----------------------------------------------------------------------------
PIXEL_MEAN = [123.675, 116.28, 103.53]
PIXEL_STD = [58.395, 57.12, 57.375]

# Re-randomisation (every parameter and every buffer that matters gets a seeded value)
LN_STD = 0.1  # LayerNorm / LayerNorm2d: weight 1 + LN_STD*randn, bias LN_STD*randn
BIAS_STD = 0.1  # linear / conv biases
WEIGHT_GAIN = 1.0  # weight std = WEIGHT_GAIN / sqrt(fan_in)
EMBED_STD = 0.5  # nn.Embedding tables (point / not-a-point / no-mask embeddings, iou / mask tokens)
POS_EMBED_STD = 0.2  # ViT absolute pos_embed
REL_POS_STD = 0.3  # ViT rel_pos_h / rel_pos_w
ATTN_BIAS_STD = 0.5  # TinyViT attention_biases
PE_GAUSS_STD = 1.0  # positional_encoding_gaussian_matrix (the real model draws it with std 1)
BN_WEIGHT_STD = 0.2  # BatchNorm weight 1 + BN_WEIGHT_STD*randn
BN_MEAN_STD = 0.1  # BatchNorm running_mean
BN_VAR_RANGE = (0.5, 2.0)  # BatchNorm running_var ~ U(a, b)
# The mask logits are hyper_in (dim C/8 = 4) @ upscaled embedding (4 channels): with gain 1 they are only
# ~0.1, so many pixels sit within the 1e-3 logit tolerance of the threshold. The last layer of each
# hypernetwork MLP gets this extra gain so the logits are O(1-5) and the thresholded masks are robust.
HYPER_OUT_GAIN = 6.0

# Tolerances (max abs) for the Rust comparison. All activations are O(1) (see manifest max_abs_value).
TOL = {
    "pixel_input": 1e-5,
    "encoder_intermediate": 1e-4,
    "image_embedding": 1e-4,
    "dense_pe": 1e-5,
    "sparse": 1e-4,
    "dense": 1e-4,
    "low_res_logits": 1e-3,
    "iou": 1e-4,
    "mask_logits": 1e-3,
    "masks_min_equal_fraction": 0.999,
}
TOLERANCE_TABLE = {
    "note": "max_abs unless stated. Encoder / prompt activations are O(1) (max |x| <= ~6); the mask logits are "
            "O(1-10) on purpose (HYPER_OUT_GAIN) so few pixels sit near the threshold. See "
            "images[].keys[].max_abs_value.",
    "image, input_image, caseK.point_coords, caseK.point_labels, caseK.boxes, caseK.mask_input": "exact (inputs)",
    "pixel_input": {"max_abs": TOL["pixel_input"]},
    "enc.* (per-block / per-layer activations, O(1))": {"max_abs": TOL["encoder_intermediate"]},
    "image_embedding": {"max_abs": TOL["image_embedding"]},
    "dense_pe": {"max_abs": TOL["dense_pe"]},
    "caseK.point_coords_input, caseK.boxes_input": {"max_abs": 1e-4},
    "caseK.sparse": {"max_abs": TOL["sparse"]},
    "caseK.dense": {"max_abs": TOL["dense"]},
    "caseK.low_res_logits": {"max_abs": TOL["low_res_logits"]},
    "caseK.iou": {"max_abs": TOL["iou"]},
    "caseK.mask_logits": {"max_abs": TOL["mask_logits"]},
    "caseK.masks": {"min_equal_fraction": TOL["masks_min_equal_fraction"]},
}
FG_RANGE = (0.05, 0.95)  # each thresholded mask must have a foreground fraction inside this range
# at most NEAR_ZERO_MAX of the pixels of any mask may have |mask_logit| < NEAR_ZERO_THRESH, so an
# implementation whose logits are within 1e-4 of the reference keeps >= 99.9 % of the mask pixels
NEAR_ZERO_THRESH = 1e-4
NEAR_ZERO_MAX = 0.001
MAX_SEED_TRIES = 200

# Image sizes (H, W) per model input size
IMAGES = {64: [(37, 50), (90, 41)], 128: [(100, 150)]}
# Full-size logits are large; keep them for one single-set and one batched case (the masks of
# every case are kept).
MASK_LOGIT_CASES = (0, 4)
# The transformers case runs on the first image only (the official case covers both).
HF_IMAGES = 1

VIT_CFG = dict(
    img_size=64, patch_size=8, embed_dim=32, depth=3, num_heads=2, mlp_ratio=4.0, out_chans=32,
    qkv_bias=True, layer_norm_eps=1e-6, use_abs_pos=True, use_rel_pos=True, window_size=3,
    global_attn_indexes=[1],
)
PROMPT_CFG = dict(embed_dim=32, mask_in_chans=8)
DECODER_CFG = dict(
    transformer_dim=32, transformer_depth=2, transformer_mlp_dim=64, transformer_num_heads=8,
    attention_downsample_rate=2, num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=32,
)
TINYVIT_CFG = dict(
    img_size=128, in_chans=3, num_classes=10, embed_dims=[8, 16, 24, 320], depths=[1, 1, 2, 1],
    num_heads=[1, 2, 2, 10], window_sizes=[2, 3, 4, 8], mlp_ratio=0.25, drop_rate=0.0, drop_path_rate=0.0,
    use_checkpoint=False, mbconv_expand_ratio=2.0, local_conv_size=3, layer_lr_decay=1.0,
)
NECK_OUT = 32

SEEDS = {"vit_official": 3001, "mobile_official": 3002}


# ----------------------------------------------------------------------------
# Imports of the references (quiet)
# ----------------------------------------------------------------------------
def _import_mobile_sam():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mobile_sam  # noqa: F401
        from mobile_sam.modeling import tiny_vit_sam  # noqa: F401
    return mobile_sam


def ref_versions() -> Dict[str, str]:
    from importlib.metadata import version

    v = common.versions()
    for dist in ("segment-anything", "mobilesam-mirror", "pycocotools", "torchvision", "pillow", "numpy", "timm"):
        try:
            v[dist] = version(dist)
        except Exception:  # pragma: no cover
            pass
    return v


# ----------------------------------------------------------------------------
# Re-randomisation
# ----------------------------------------------------------------------------
def _is_layernorm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__ in ("LayerNorm2d", "SamLayerNorm")


# Tensors drawn N(0, std) by parameter name: names -> (rule, std)
NAMED_STD = {
    ("attention_biases",): ("attention_biases", ATTN_BIAS_STD),
    ("rel_pos_h", "rel_pos_w"): ("rel_pos", REL_POS_STD),
    ("pos_embed",): ("pos_embed", POS_EMBED_STD),
    ("positional_encoding_gaussian_matrix", "positional_embedding"): ("pe_gaussian", PE_GAUSS_STD),
}
# Not drawn: index tables, the eval cache (recomputed by .eval()), constants, counters
NOT_DRAWN = ("attention_bias_idxs", "ab", "pixel_mean", "pixel_std", "num_batches_tracked")


def _draw_batchnorm(full: str, p_name: str, p: torch.Tensor, g: torch.Generator) -> str:
    if p_name == "weight":
        common.draw_normal(p, g, BN_WEIGHT_STD, mean=1.0)
    elif p_name == "bias":
        common.draw_normal(p, g, BIAS_STD)
    elif p_name == "running_mean":
        common.draw_normal(p, g, BN_MEAN_STD)
    elif p_name == "running_var":
        a, b = BN_VAR_RANGE
        p.copy_(torch.rand(p.shape, generator=g) * (b - a) + a)
    else:
        raise RuntimeError(f"unhandled BN tensor {full}")
    return f"bn_{p_name}"


def _draw(full: str, mod_name: str, module: nn.Module, p_name: str, p: torch.Tensor, g: torch.Generator):
    if p_name in NOT_DRAWN:
        return None
    if isinstance(module, nn.BatchNorm2d):
        return _draw_batchnorm(full, p_name, p, g)
    if _is_layernorm(module):
        return common.draw_layernorm(p, p_name, g, LN_STD)
    for names, (rule, std) in NAMED_STD.items():
        if p_name in names:
            common.draw_normal(p, g, std)
            return rule
    if isinstance(module, nn.Embedding):
        common.draw_normal(p, g, EMBED_STD)
        return "embedding"
    if isinstance(module, nn.ConvTranspose2d) and p_name == "weight":
        # [in, out, kh, kw] with stride == kernel: each output pixel sees one tap per input channel
        common.draw_fan_in(p, g, WEIGHT_GAIN, p.shape[0])
        return "weight_convT"
    if p.ndim >= 2 and re.search(r"output_hypernetworks_mlps\.\d+\.layers\.2$", mod_name):
        common.draw_fan_in(p, g, HYPER_OUT_GAIN)
        return "weight_hyper_out"
    if p.ndim >= 2:
        common.draw_fan_in(p, g, WEIGHT_GAIN)
        return "weight"
    if p.ndim == 1 and p.is_floating_point():
        common.draw_normal(p, g, BIAS_STD)
        return "bias"
    raise RuntimeError(f"unhandled tensor {full} {tuple(p.shape)}")


def rerandomise(model: nn.Module, g: torch.Generator) -> Dict[str, str]:
    """Overwrite every parameter and every persistent float buffer with a seeded value."""
    return common.rerandomise(model, g, lambda *a: _draw(*a, g), buffers=True)


# ----------------------------------------------------------------------------
# Model builders
# ----------------------------------------------------------------------------
def _prompt_and_decoder(pkg, image_size: int, grid: int):
    PromptEncoder = pkg.modeling.PromptEncoder
    MaskDecoder = pkg.modeling.MaskDecoder
    TwoWayTransformer = pkg.modeling.TwoWayTransformer
    pe = PromptEncoder(
        embed_dim=PROMPT_CFG["embed_dim"], image_embedding_size=(grid, grid),
        input_image_size=(image_size, image_size), mask_in_chans=PROMPT_CFG["mask_in_chans"],
    )
    md = MaskDecoder(
        transformer_dim=DECODER_CFG["transformer_dim"],
        transformer=TwoWayTransformer(
            depth=DECODER_CFG["transformer_depth"], embedding_dim=DECODER_CFG["transformer_dim"],
            mlp_dim=DECODER_CFG["transformer_mlp_dim"], num_heads=DECODER_CFG["transformer_num_heads"],
            attention_downsample_rate=DECODER_CFG["attention_downsample_rate"],
        ),
        num_multimask_outputs=DECODER_CFG["num_multimask_outputs"],
        iou_head_depth=DECODER_CFG["iou_head_depth"], iou_head_hidden_dim=DECODER_CFG["iou_head_hidden_dim"],
    )
    return pe, md


def build_vit_sam():
    import segment_anything
    from segment_anything.modeling import ImageEncoderViT, Sam

    c = VIT_CFG
    enc = ImageEncoderViT(
        img_size=c["img_size"], patch_size=c["patch_size"], in_chans=3, embed_dim=c["embed_dim"], depth=c["depth"],
        num_heads=c["num_heads"], mlp_ratio=c["mlp_ratio"], out_chans=c["out_chans"], qkv_bias=c["qkv_bias"],
        norm_layer=partial(nn.LayerNorm, eps=c["layer_norm_eps"]), act_layer=nn.GELU,
        use_abs_pos=c["use_abs_pos"], use_rel_pos=c["use_rel_pos"], rel_pos_zero_init=True,
        window_size=c["window_size"], global_attn_indexes=tuple(c["global_attn_indexes"]),
    )
    grid = c["img_size"] // c["patch_size"]
    pe, md = _prompt_and_decoder(segment_anything, c["img_size"], grid)
    return Sam(image_encoder=enc, prompt_encoder=pe, mask_decoder=md, pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD)


def _tinyvit_forward_features_patched(self, x):
    """Copy of mobile_sam TinyViT.forward_features; ONLY the hard-coded `x.view(B, 64, 64, C)` is replaced by
    the actual grid of the input (H_in // 16, W_in // 16)."""
    gh, gw = x.shape[-2] // 16, x.shape[-1] // 16  # patched: was 64, 64 (= 1024 // 16)
    x = self.patch_embed(x)

    x = self.layers[0](x)
    start_i = 1

    for i in range(start_i, len(self.layers)):
        layer = self.layers[i]
        x = layer(x)
    B, _, C = x.size()
    x = x.view(B, gh, gw, C)
    x = x.permute(0, 3, 1, 2)
    x = self.neck(x)
    return x


def build_mobile_sam():
    ms = _import_mobile_sam()
    from mobile_sam.modeling import Sam, TinyViT
    from mobile_sam.modeling.tiny_vit_sam import LayerNorm2d as TinyViTLayerNorm2d

    c = TINYVIT_CFG
    enc = TinyViT(**c)
    # --- patch 1: forward_features views to the real grid instead of the hard-coded 64 x 64
    enc.forward_features = types.MethodType(_tinyvit_forward_features_patched, enc)
    # --- patch 2: the neck's hard-coded 256 channels -> NECK_OUT, identical structure / key names
    enc.neck = nn.Sequential(
        nn.Conv2d(c["embed_dims"][-1], NECK_OUT, kernel_size=1, bias=False),
        TinyViTLayerNorm2d(NECK_OUT),
        nn.Conv2d(NECK_OUT, NECK_OUT, kernel_size=3, padding=1, bias=False),
        TinyViTLayerNorm2d(NECK_OUT),
    )
    grid = c["img_size"] // 16
    pe, md = _prompt_and_decoder(ms, c["img_size"], grid)
    return Sam(image_encoder=enc, prompt_encoder=pe, mask_decoder=md, pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD)


def tinyvit_window_paths(enc) -> List[dict]:
    """Which branch of TinyViTBlock.forward every attention block takes."""
    out = []
    for li, layer in enumerate(enc.layers):
        for bi, blk in enumerate(getattr(layer, "blocks", [])):
            if not hasattr(blk, "window_size") or type(blk).__name__ != "TinyViTBlock":
                continue
            H, W = blk.input_resolution
            ws = blk.window_size
            if H == ws and W == ws:
                path = "whole (H == W == window_size, no partition)"
            else:
                pb, pr = (ws - H % ws) % ws, (ws - W % ws) % ws
                path = f"windowed, padded {H}x{W} -> {H + pb}x{W + pr}" if (pb or pr) else f"windowed, no padding ({H}x{W})"
            out.append({"layer": li, "block": bi, "resolution": [H, W], "window_size": ws,
                        "num_heads": blk.num_heads, "dim": blk.dim, "path": path})
    return out


def vit_window_paths(enc) -> List[dict]:
    out = []
    g = enc.img_size // enc.patch_embed.proj.kernel_size[0]
    for i, blk in enumerate(enc.blocks):
        ws = blk.window_size
        if ws == 0:
            path = f"global ({g}x{g})"
        else:
            p = (ws - g % ws) % ws
            path = f"windowed {ws}x{ws}, padded {g}x{g} -> {g + p}x{g + p}" if p else f"windowed {ws}x{ws}, no padding"
        out.append({"block": i, "window_size": ws, "rel_pos_h": list(blk.attn.rel_pos_h.shape), "path": path})
    return out


# ----------------------------------------------------------------------------
# Synthetic images and prompts
# ----------------------------------------------------------------------------
def make_image(H: int, W: int) -> np.ndarray:
    """Smooth deterministic RGB image: gradients + soft-edged disc, rectangle and a sine ripple."""
    y, x = np.meshgrid(np.arange(H, dtype=np.float64) / max(H - 1, 1), np.arange(W, dtype=np.float64) / max(W - 1, 1),
                       indexing="ij")
    r = 40 + 150 * x + 30 * y
    gch = 60 + 120 * y + 20 * np.sin(2 * np.pi * x)
    b = 180 - 100 * x * y
    # soft disc
    d = np.sqrt(((x - 0.35) / 0.22) ** 2 + ((y - 0.4) / 0.25) ** 2)
    disc = 1.0 / (1.0 + np.exp((d - 1.0) * 8.0))
    # soft rectangle
    rx = 1.0 / (1.0 + np.exp(-(x - 0.55) * 30)) * 1.0 / (1.0 + np.exp((x - 0.9) * 30))
    ry = 1.0 / (1.0 + np.exp(-(y - 0.6) * 30)) * 1.0 / (1.0 + np.exp((y - 0.92) * 30))
    rect = rx * ry
    r = r * (1 - disc) + 230 * disc
    gch = gch * (1 - disc) + 40 * disc
    b = b * (1 - rect) + 20 * rect
    r = r * (1 - 0.7 * rect) + 0.7 * rect * 60
    img = np.stack([r, gch, b], axis=-1)
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return img


def q(v: float) -> float:
    """Quantise to a multiple of 1/8 (exactly representable in float32)."""
    return round(v * 8) / 8


def prompt_cases(H: int, W: int) -> List[dict]:
    """Prompt cases in ORIGINAL image pixel coordinates (x, y)."""
    f = np.float32
    P = lambda fx, fy, frac=0.0: [q(fx * W) + frac, q(fy * H) + frac]  # noqa: E731
    cases = [
        dict(desc="one positive point (non-integer coords), multimask", api="predict", multimask=True,
             points=[P(0.31, 0.42, 0.25)], labels=[1]),
        dict(desc="two positive points (one integer) + one negative point, single mask", api="predict",
             multimask=False,
             points=[[float(int(0.6 * W)), float(int(0.3 * H))], P(0.25, 0.7, 0.375), P(0.8, 0.85, 0.5)],
             labels=[1, 1, 0]),
        dict(desc="one box (mixed integer / non-integer corners), single mask", api="predict", multimask=False,
             box=[q(0.15 * W), q(0.2 * H) + 0.5, q(0.7 * W) + 0.25, float(int(0.8 * H))]),
        dict(desc="box + one positive + one negative point, multimask", api="predict", multimask=True,
             box=[q(0.1 * W) + 0.5, q(0.15 * H), float(int(0.6 * W)), q(0.65 * H) + 0.75],
             points=[P(0.35, 0.4, 0.125), P(0.5, 0.55)], labels=[1, 0]),
        dict(desc="three boxes at once through predict_torch (B=3), single mask", api="predict_torch",
             multimask=False,
             boxes=[[q(0.1 * W), q(0.1 * H), q(0.5 * W) + 0.5, q(0.6 * H)],
                    [q(0.4 * W) + 0.25, q(0.3 * H), float(W - 1), float(H - 1)],
                    [0.0, q(0.5 * H), q(0.9 * W), q(0.95 * H) + 0.125]]),
        dict(desc="one point + mask_input = case 0's low-res logits of its best (argmax iou) mask, single mask",
             api="predict", multimask=False, points=[P(0.4, 0.5, 0.5)], labels=[1], mask_from_case=0),
        dict(desc="two boxes with the same single positive point repeated per box (B=2, points [2,1,2]), "
                  "multimask, predict_torch", api="predict_torch", multimask=True,
             boxes=[[q(0.05 * W), q(0.1 * H), q(0.6 * W), q(0.7 * H) + 0.5],
                    [q(0.3 * W) + 0.25, q(0.25 * H), q(0.95 * W), q(0.9 * H)]],
             points=[[P(0.45, 0.5, 0.25)], [P(0.45, 0.5, 0.25)]], labels=[[1], [1]]),
        dict(desc="positive point exactly at the corner (0,0) and negative point at (W-1,H-1), multimask",
             api="predict", multimask=True, points=[[0.0, 0.0], [float(W - 1), float(H - 1)]], labels=[1, 0]),
    ]
    for c in cases:
        for k in ("points", "box", "boxes"):
            if k in c:
                c[k] = np.asarray(c[k], dtype=f)
        if "labels" in c:
            c["labels"] = np.asarray(c["labels"], dtype=f)
    return cases


# ----------------------------------------------------------------------------
# Hooks
# ----------------------------------------------------------------------------
class PromptTap:
    """Records every (sparse, dense) output of a prompt encoder."""

    def __init__(self, module):
        self.calls: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self.h = module.register_forward_hook(self._hook)

    def _hook(self, _m, _inp, out):
        self.calls.append((out[0].detach().clone().contiguous(), out[1].detach().clone().contiguous()))

    def take(self):
        calls, self.calls = self.calls, []
        return calls

    def remove(self):
        self.h.remove()


# ----------------------------------------------------------------------------
# Official predictor flow
# ----------------------------------------------------------------------------
def encoder_hooks(sam, kind: str) -> common.Capture:
    cap = common.Capture()
    enc = sam.image_encoder
    cap.pre(enc, "pixel_input")
    if kind == "vit":
        cap.fwd(enc.patch_embed, "enc.patch_embed")
        cap.pre(enc.blocks[0], "enc.pos_added")
        for i, b in enumerate(enc.blocks):
            cap.fwd(b, f"enc.block.{i}")
    else:
        cap.fwd(enc.patch_embed, "enc.patch_embed")
        for i, layer in enumerate(enc.layers):
            cap.fwd(layer, f"enc.layer.{i}")
    cap.fwd(enc, "image_embedding")
    return cap


def run_official(sam, Predictor, kind: str, H: int, W: int) -> Tuple[Dict[str, torch.Tensor], List[dict], dict]:
    image = make_image(H, W)
    predictor = Predictor(sam)
    cap = encoder_hooks(sam, kind)
    try:
        predictor.set_image(image)
    finally:
        cap.remove()
    g: Dict[str, torch.Tensor] = {"image": torch.from_numpy(image.copy())}
    input_image = predictor.transform.apply_image(image)
    g["input_image"] = torch.from_numpy(np.ascontiguousarray(input_image))
    g.update(cap.out)
    with torch.no_grad():
        common.assert_close("features", predictor.features, g["image_embedding"], 0)
        # pixel_input from the stored resized image, recomputed by hand
        x = torch.from_numpy(input_image).permute(2, 0, 1)[None].float()
        x = (x - torch.tensor(PIXEL_MEAN).view(-1, 1, 1)) / torch.tensor(PIXEL_STD).view(-1, 1, 1)
        S = sam.image_encoder.img_size
        x = torch.nn.functional.pad(x, (0, S - x.shape[-1], 0, S - x.shape[-2]))
        common.assert_close("pixel_input manual", x, g["pixel_input"], 1e-6)
        g["dense_pe"] = sam.prompt_encoder.get_dense_pe().detach().clone()
        if kind == "vit":
            common.assert_close("pos_added", g["enc.patch_embed"] + sam.image_encoder.pos_embed, g["enc.pos_added"], 1e-6)

    info = {"original_size": [H, W], "input_size": list(predictor.input_size),
            "pixel_input": list(g["pixel_input"].shape)}
    tap = PromptTap(sam.prompt_encoder)
    case_infos = []
    try:
        for k, c in enumerate(prompt_cases(H, W)):
            pre = f"case{k}."
            ci = {"desc": c["desc"], "api": c["api"], "multimask_output": c["multimask"]}
            mask_input = None
            if "mask_from_case" in c:
                src = c["mask_from_case"]
                best = int(torch.argmax(g[f"case{src}.iou"][0]))
                mask_input = g[f"case{src}.low_res_logits"][0, best][None].numpy()  # 1 x 4g x 4g
                ci["mask_input"] = f"case{src}.low_res_logits[0, {best}] (argmax iou)"
            if c["api"] == "predict":
                kw = dict(point_coords=c.get("points"), point_labels=c.get("labels"), box=c.get("box"),
                          mask_input=mask_input, multimask_output=c["multimask"])
                masks, iou, low = predictor.predict(**kw, return_logits=False)
                logits, iou2, low2 = predictor.predict(**kw, return_logits=True)
                masks, iou, low, logits, iou2, low2 = (torch.as_tensor(np.asarray(a))[None] for a in
                                                       (masks, iou, low, logits, iou2, low2))
                if "points" in c:
                    g[pre + "point_coords"] = torch.from_numpy(c["points"])[None]
                    g[pre + "point_labels"] = torch.from_numpy(c["labels"])[None]
                    pt = predictor.transform.apply_coords(c["points"], predictor.original_size)
                    g[pre + "point_coords_input"] = torch.as_tensor(pt, dtype=torch.float)[None]
                if "box" in c:
                    g[pre + "boxes"] = torch.from_numpy(c["box"])[None]
                    bx = predictor.transform.apply_boxes(c["box"], predictor.original_size)
                    g[pre + "boxes_input"] = torch.as_tensor(bx, dtype=torch.float)
                if mask_input is not None:
                    g[pre + "mask_input"] = torch.from_numpy(mask_input)[None].float()
            else:
                coords = labels = boxes = None
                if "points" in c:
                    g[pre + "point_coords"] = torch.from_numpy(c["points"])
                    g[pre + "point_labels"] = torch.from_numpy(c["labels"])
                    coords = predictor.transform.apply_coords_torch(torch.from_numpy(c["points"]),
                                                                    predictor.original_size)
                    labels = torch.from_numpy(c["labels"]).to(torch.int)
                    g[pre + "point_coords_input"] = coords.clone()
                if "boxes" in c:
                    g[pre + "boxes"] = torch.from_numpy(c["boxes"])
                    boxes = predictor.transform.apply_boxes_torch(torch.from_numpy(c["boxes"]), predictor.original_size)
                    g[pre + "boxes_input"] = boxes.clone()
                masks, iou, low = predictor.predict_torch(coords, labels, boxes, None, c["multimask"],
                                                          return_logits=False)
                logits, iou2, low2 = predictor.predict_torch(coords, labels, boxes, None, c["multimask"],
                                                             return_logits=True)
            calls = tap.take()
            assert len(calls) == 2, len(calls)
            common.assert_close(pre + "sparse twice", calls[0][0], calls[1][0], 0)
            common.assert_close(pre + "iou twice", iou, iou2, 0)
            common.assert_close(pre + "low twice", low, low2, 0)
            if not torch.equal(masks.bool(), logits > sam.mask_threshold):
                raise AssertionError(pre + "masks != logits > 0")
            g[pre + "sparse"] = calls[0][0]
            g[pre + "dense"] = calls[0][1].contiguous()
            g[pre + "low_res_logits"] = low.float().contiguous()
            g[pre + "iou"] = iou.float().contiguous()
            g[pre + "masks"] = masks.to(torch.uint8).contiguous()
            if k in MASK_LOGIT_CASES:
                g[pre + "mask_logits"] = logits.float().contiguous()
            ci["prompts"] = [k2 for k2 in ("point_coords", "point_labels", "boxes", "mask_input") if pre + k2 in g]
            ci["batch"] = int(g[pre + "iou"].shape[0])
            ci["num_masks"] = int(g[pre + "iou"].shape[1])
            ci["sparse_tokens"] = int(g[pre + "sparse"].shape[1])
            ci["foreground_fraction"] = [[round(float(m.float().mean()), 4) for m in b] for b in g[pre + "masks"]]
            case_infos.append(ci)
    finally:
        tap.remove()
    return g, case_infos, info


def fg_ok(goldens: List[Dict[str, torch.Tensor]]) -> Tuple[bool, float, float, float]:
    """Every thresholded mask has a foreground fraction in FG_RANGE, and at most NEAR_ZERO_MAX of its
    pixels have |mask_logit| < NEAR_ZERO_THRESH (so the masks >= 99.9% equal criterion is meaningful)."""
    lo, hi, near = 1.0, 0.0, 0.0
    for g in goldens:
        for k, v in g.items():
            if k.endswith(".masks"):
                fr = v.float().mean(dim=(-2, -1))
                lo, hi = min(lo, fr.min().item()), max(hi, fr.max().item())
            if k.endswith(".mask_logits"):
                near = max(near, (v.abs() < NEAR_ZERO_THRESH).float().mean(dim=(-2, -1)).max().item())
    return (FG_RANGE[0] <= lo and hi <= FG_RANGE[1] and near <= NEAR_ZERO_MAX), lo, hi, near


def key_order(g: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    head = ["image", "input_image", "pixel_input"]
    enc = sorted([k for k in g if k.startswith("enc.")], key=lambda k: (k.split(".")[1] != "patch_embed",
                                                                         k.split(".")[1] != "pos_added",
                                                                         int(k.split(".")[-1]) if k[-1].isdigit() else -1))
    mid = ["image_embedding", "dense_pe"]
    cases = sorted([k for k in g if k.startswith("case")], key=lambda k: (int(k.split(".")[0][4:]), k))
    keys = head + enc + mid + cases
    assert set(keys) == set(g), set(keys) ^ set(g)
    return {k: g[k] for k in keys}


def keys_summary(g: Dict[str, torch.Tensor]) -> Dict[str, dict]:
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""),
                "max_abs_value": float(v.float().abs().max()) if v.numel() else 0.0} for k, v in g.items()}


def file_size_kib(d: pathlib.Path) -> float:
    return sum(p.stat().st_size for p in d.iterdir() if p.is_file()) / 1024


# ----------------------------------------------------------------------------
# Generation with reseeding until the masks are mixed
# ----------------------------------------------------------------------------
def build_and_run(kind: str, seed0: int):
    if kind == "vit":
        from segment_anything import SamPredictor

        builder, S = build_vit_sam, VIT_CFG["img_size"]
    else:
        ms = _import_mobile_sam()
        SamPredictor = ms.SamPredictor
        builder, S = build_mobile_sam, TINYVIT_CFG["img_size"]
    tried = []
    for t in range(MAX_SEED_TRIES):
        seed = seed0 + 1000 * t
        torch.manual_seed(seed)
        sam = builder()
        rules = rerandomise(sam, common.generator(seed))
        # every float tensor of the checkpoint got a seeded value (nothing left at a default init)
        left = [k for k, v in sam.state_dict().items() if v.is_floating_point() and k not in rules]
        if left:
            raise RuntimeError(f"not re-randomised: {left}")
        sam = sam.float().eval()  # eval() AFTER the re-randomisation: refreshes TinyViT's cached `ab`
        results = [run_official(sam, SamPredictor, kind, H, W) for (H, W) in IMAGES[S]]
        ok, lo, hi, near = fg_ok([r[0] for r in results])
        tried.append({"seed": seed, "min_fg": round(lo, 4), "max_fg": round(hi, 4),
                      "max_near_zero_fraction": round(near, 5)})
        if ok:
            return sam, seed, rules, results, tried
    raise RuntimeError(f"no seed gives mixed masks: {tried[-5:]}")


# ----------------------------------------------------------------------------
# HF <-> official mapping
# ----------------------------------------------------------------------------
def _mlp_rename(prefix_off: str, prefix_hf: str, depth: int) -> List[Tuple[str, str]]:
    out = [(rf"^{re.escape(prefix_off)}\.layers\.0\.", f"{prefix_hf}.proj_in.")]
    for i in range(1, depth - 1):
        out.append((rf"^{re.escape(prefix_off)}\.layers\.{i}\.", f"{prefix_hf}.layers.{i - 1}."))
    out.append((rf"^{re.escape(prefix_off)}\.layers\.{depth - 1}\.", f"{prefix_hf}.proj_out."))
    return out


# (official regex, HF replacement); applied first-match. Inverse mapping is derived by applying the
# forward map to every official key (the map is a bijection on the key sets, checked below).
OFFICIAL_TO_HF: List[Tuple[str, str]] = [
    (r"^image_encoder\.patch_embed\.proj\.", "vision_encoder.patch_embed.projection."),
    (r"^image_encoder\.pos_embed$", "vision_encoder.pos_embed"),
    (r"^image_encoder\.blocks\.(\d+)\.norm1\.", r"vision_encoder.layers.\1.layer_norm1."),
    (r"^image_encoder\.blocks\.(\d+)\.norm2\.", r"vision_encoder.layers.\1.layer_norm2."),
    (r"^image_encoder\.blocks\.(\d+)\.attn\.(qkv|proj)\.", r"vision_encoder.layers.\1.attn.\2."),
    (r"^image_encoder\.blocks\.(\d+)\.attn\.rel_pos_(h|w)$", r"vision_encoder.layers.\1.attn.rel_pos_\2"),
    (r"^image_encoder\.blocks\.(\d+)\.mlp\.lin(1|2)\.", r"vision_encoder.layers.\1.mlp.lin\2."),
    (r"^image_encoder\.neck\.0\.", "vision_encoder.neck.conv1."),
    (r"^image_encoder\.neck\.1\.", "vision_encoder.neck.layer_norm1."),
    (r"^image_encoder\.neck\.2\.", "vision_encoder.neck.conv2."),
    (r"^image_encoder\.neck\.3\.", "vision_encoder.neck.layer_norm2."),
    (r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$", "shared_image_embedding.positional_embedding"),
    (r"^prompt_encoder\.point_embeddings\.(\d+)\.weight$", r"prompt_encoder.point_embed.\1.weight"),
    (r"^prompt_encoder\.not_a_point_embed\.weight$", "prompt_encoder.not_a_point_embed.weight"),
    (r"^prompt_encoder\.no_mask_embed\.weight$", "prompt_encoder.no_mask_embed.weight"),
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"^mask_decoder\.(iou_token|mask_tokens)\.weight$", r"mask_decoder.\1.weight"),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.norm(\d)\.", r"mask_decoder.transformer.layers.\1.layer_norm\2."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)\."
     r"(q_proj|k_proj|v_proj|out_proj)\.", r"mask_decoder.transformer.layers.\1.\2.\3."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.mlp\.lin(1|2)\.", r"mask_decoder.transformer.layers.\1.mlp.lin\2."),
    (r"^mask_decoder\.transformer\.final_attn_token_to_image\.", "mask_decoder.transformer.final_attn_token_to_image."),
    (r"^mask_decoder\.transformer\.norm_final_attn\.", "mask_decoder.transformer.layer_norm_final_attn."),
    (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
]
for _i in range(DECODER_CFG["num_multimask_outputs"] + 1):
    OFFICIAL_TO_HF += _mlp_rename(f"mask_decoder.output_hypernetworks_mlps.{_i}",
                                  f"mask_decoder.output_hypernetworks_mlps.{_i}", 3)
OFFICIAL_TO_HF += _mlp_rename("mask_decoder.iou_prediction_head", "mask_decoder.iou_prediction_head",
                              DECODER_CFG["iou_head_depth"])
# HF ties this one to shared_image_embedding.positional_embedding (same tensor)
HF_TIED = {"prompt_encoder.shared_embedding.positional_embedding": "shared_image_embedding.positional_embedding"}


def official_to_hf_key(k: str) -> str:
    for pat, rep in OFFICIAL_TO_HF:
        if re.search(pat, k):
            return re.sub(pat, rep, k)
    raise KeyError(f"no HF mapping for {k}")


def hf_config():
    from transformers import SamConfig

    c = VIT_CFG
    vision = dict(
        hidden_size=c["embed_dim"], output_channels=c["out_chans"], num_hidden_layers=c["depth"],
        num_attention_heads=c["num_heads"], num_channels=3, image_size=c["img_size"], patch_size=c["patch_size"],
        hidden_act="gelu", layer_norm_eps=c["layer_norm_eps"], qkv_bias=c["qkv_bias"], mlp_ratio=c["mlp_ratio"],
        use_abs_pos=c["use_abs_pos"], use_rel_pos=c["use_rel_pos"], window_size=c["window_size"],
        global_attn_indexes=list(c["global_attn_indexes"]), num_pos_feats=PROMPT_CFG["embed_dim"] // 2,
        mlp_dim=int(c["embed_dim"] * c["mlp_ratio"]),
    )
    prompt = dict(hidden_size=PROMPT_CFG["embed_dim"], image_size=c["img_size"], patch_size=c["patch_size"],
                  mask_input_channels=PROMPT_CFG["mask_in_chans"], num_point_embeddings=4, hidden_act="gelu",
                  layer_norm_eps=1e-6)
    dec = dict(hidden_size=DECODER_CFG["transformer_dim"], hidden_act="relu", mlp_dim=DECODER_CFG["transformer_mlp_dim"],
               num_hidden_layers=DECODER_CFG["transformer_depth"], num_attention_heads=DECODER_CFG["transformer_num_heads"],
               attention_downsample_rate=DECODER_CFG["attention_downsample_rate"],
               num_multimask_outputs=DECODER_CFG["num_multimask_outputs"], iou_head_depth=DECODER_CFG["iou_head_depth"],
               iou_head_hidden_dim=DECODER_CFG["iou_head_hidden_dim"], layer_norm_eps=1e-6)
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=dec)


def hf_state_from_official(sd_off: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for k, v in sd_off.items():
        out[official_to_hf_key(k)] = v.detach().clone()
    for tied, src in HF_TIED.items():
        out[tied] = out[src].clone()
    return out


def run_hf(model, g_off: Dict[str, torch.Tensor], H: int, W: int, processor) -> Dict[str, torch.Tensor]:
    """Run SamModel on the official preprocessed pixels / transformed prompts; returns golden dict (same keys)."""
    g: Dict[str, torch.Tensor] = {k: g_off[k] for k in ("image", "input_image", "pixel_input")}
    cap = common.Capture()
    ve = model.vision_encoder
    cap.fwd(ve.patch_embed, "enc.patch_embed")
    cap.pre(ve.layers[0], "enc.pos_added")
    for i, layer in enumerate(ve.layers):
        cap.fwd(layer, f"enc.block.{i}")
    try:
        with torch.no_grad():
            emb = model.get_image_embeddings(g["pixel_input"])
    finally:
        cap.remove()
    g.update(cap.out)
    g["image_embedding"] = emb.detach().clone()
    with torch.no_grad():
        g["dense_pe"] = model.get_image_wide_positional_embeddings().detach().clone()
    input_size = list(g["input_image"].shape[:2])
    ncases = len({k.split(".")[0] for k in g_off if k.startswith("case")})
    for k in range(ncases):
        pre = f"case{k}."
        for name in ("point_coords", "point_labels", "boxes", "mask_input", "point_coords_input", "boxes_input"):
            if pre + name in g_off:
                g[pre + name] = g_off[pre + name]
        multimask = g_off[pre + "iou"].shape[1] > 1
        pts = g_off.get(pre + "point_coords_input")
        lab = g_off.get(pre + "point_labels")
        bxs = g_off.get(pre + "boxes_input")
        msk = g_off.get(pre + "mask_input")
        # HF layout: points [image_batch=1, point_batch=B, N, 2], labels [1, B, N], boxes [1, B, 4]
        kw = dict(
            input_points=None if pts is None else pts[None],
            input_labels=None if lab is None else lab.to(torch.int64)[None],
            input_boxes=None if bxs is None else bxs[None],
            input_masks=msk,
        )
        with torch.no_grad():
            sparse, dense = model.get_prompt_embeddings(**kw)
            out = model(image_embeddings=g["image_embedding"], multimask_output=multimask, **kw)
        low = out.pred_masks[0]  # [B, M, 4g, 4g]
        iou = out.iou_scores[0]
        logits = processor.post_process_masks([low[None][0]], [[H, W]], [input_size], binarize=False,
                                              pad_size={"height": model.config.vision_config.image_size,
                                                        "width": model.config.vision_config.image_size})[0]
        masks = processor.post_process_masks([low[None][0]], [[H, W]], [input_size], binarize=True,
                                             pad_size={"height": model.config.vision_config.image_size,
                                                       "width": model.config.vision_config.image_size})[0]
        if not torch.equal(masks, logits > 0):
            raise AssertionError(pre + "HF masks != logits > 0")
        g[pre + "sparse"] = sparse[0].contiguous()  # [B, T, C]
        # HF's dense embedding is per image ([1,C,g,g]); the official one per prompt batch row
        g[pre + "dense"] = dense.expand(low.shape[0], -1, -1, -1).contiguous()
        g[pre + "low_res_logits"] = low.contiguous()
        g[pre + "iou"] = iou.contiguous()
        g[pre + "masks"] = masks.to(torch.uint8).contiguous()
        if k in MASK_LOGIT_CASES:
            g[pre + "mask_logits"] = logits.float().contiguous()
    return g


def compare_goldens(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """max abs diff per float key (masks: fraction of differing pixels)."""
    out = {}
    for k in a:
        if k not in b:
            continue
        if k.endswith(".masks"):
            out[k] = float((a[k] != b[k]).float().mean())
        elif a[k].is_floating_point():
            if a[k].shape != b[k].shape:
                raise AssertionError(f"{k}: {tuple(a[k].shape)} vs {tuple(b[k].shape)}")
            out[k] = common.max_abs(a[k], b[k])
    return out


def summarise_diffs(diffs: Dict[str, float]) -> Dict[str, float]:
    groups: Dict[str, float] = {}
    for k, v in diffs.items():
        grp = k.split(".", 1)[1] if k.startswith("case") else (k.rsplit(".", 1)[0] if k.startswith("enc.block") else k)
        groups[grp] = max(groups.get(grp, 0.0), v)
    return groups


# ----------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------
def write_official_case(d: pathlib.Path, kind: str, sam, seed: int, rules, results, tried, weights_file: str,
                        folder_cfg: dict, model_cfg: dict, extra: dict) -> Dict[str, str]:
    common.clear_dir(d)
    sd = sam.state_dict()
    torch.save(sd, str(d / weights_file))
    # round trip: plain state dict, loads strictly into a freshly built model
    loaded = torch.load(str(d / weights_file), map_location="cpu", weights_only=True)
    assert list(loaded.keys()) == list(sd.keys())
    fresh = build_vit_sam() if kind == "vit" else build_mobile_sam()
    fresh.load_state_dict(loaded, strict=True)
    fresh = fresh.float().eval()  # refreshes TinyViT's cached attention biases from the loaded weights
    if kind == "vit":
        from segment_anything import SamPredictor
    else:
        SamPredictor = _import_mobile_sam().SamPredictor
    files = {}
    image_infos = []
    for (g, case_infos, info) in results:
        H, W = info["original_size"]
        g2, _, _ = run_official(fresh, SamPredictor, kind, H, W)
        rt = max(compare_goldens(g, g2).values())
        if rt > 1e-6:
            raise AssertionError(f"reload mismatch {rt}")
        golden = key_order(g)
        name = f"golden_{H}x{W}.safetensors"
        common.save_golden(d / name, golden, metadata={"case": f"{d.name}/{H}x{W}"})  # one key: header order is stable
        files[f"{H}x{W}"] = name
        image_infos.append({"file": name, **info, "reload_max_abs": rt, "cases": case_infos,
                            "keys": keys_summary(golden)})
    common.write_json(d / "config.json", folder_cfg)
    manifest = {
        "case": d.name,
        "reference": extra.pop("reference"),
        "versions": ref_versions(),
        "seed": seed,
        "seed_search": {"rule": f"seed = base + 1000*t until every thresholded mask has a foreground fraction in "
                                f"{list(FG_RANGE)} and at most {NEAR_ZERO_MAX} of its pixels with |mask_logit| < "
                                f"{NEAR_ZERO_THRESH}", "tried": tried},
        "config": model_cfg,
        **extra,
        "files": {"weights": weights_file, "config": "config.json", "goldens": files},
        "weights_format": "torch.save(state_dict) zip pickle (OrderedDict of tensors), weights_only-loadable",
        "randomisation": {
            "layer_norm": f"weight 1+{LN_STD}*randn, bias {LN_STD}*randn", "bias": f"{BIAS_STD}*randn",
            "weight": f"randn*{WEIGHT_GAIN}/sqrt(fan_in) (ConvTranspose2d: fan_in = in_channels); last layer of "
                      f"each output_hypernetworks_mlps: randn*{HYPER_OUT_GAIN}/sqrt(fan_in)",
            "embedding": f"{EMBED_STD}*randn", "pos_embed": f"{POS_EMBED_STD}*randn", "rel_pos": f"{REL_POS_STD}*randn",
            "attention_biases": f"{ATTN_BIAS_STD}*randn", "positional_encoding_gaussian_matrix": f"{PE_GAUSS_STD}*randn",
            "batchnorm": f"weight 1+{BN_WEIGHT_STD}*randn, bias {BIAS_STD}*randn, running_mean {BN_MEAN_STD}*randn, "
                         f"running_var U{list(BN_VAR_RANGE)}, num_batches_tracked left at 0; eval mode",
        },
        "golden_keys": {
            "image": "uint8 [H,W,3] original RGB image",
            "input_image": "uint8 [h',w',3] after ResizeLongestSide (PIL bilinear via torchvision)",
            "pixel_input": "f32 [1,3,S,S] (x - mean) / std then zero pad bottom/right",
            "enc.*": "encoder intermediates (see manifest per kind)",
            "image_embedding": "f32 [1,C,g,g] image encoder output (neck)",
            "dense_pe": "f32 [1,C,g,g] prompt_encoder.get_dense_pe()",
            "caseK.point_coords / point_labels / boxes": "prompts in ORIGINAL image pixel coords (x, y), as passed "
                                                        "to predict() (B=1, batch dim added) or predict_torch",
            "caseK.point_coords_input / boxes_input": "the same after apply_coords / apply_boxes (what the prompt "
                                                      "encoder gets; the +0.5 pixel-centre shift is inside it)",
            "caseK.mask_input": "f32 [B,1,4g,4g]",
            "caseK.sparse": "f32 [B,T,C] prompt encoder sparse output (points incl. the pad point when no box, "
                            "then 2 box corners)",
            "caseK.dense": "f32 [B,C,g,g] prompt encoder dense output (no_mask_embed broadcast, or mask embedding)",
            "caseK.low_res_logits": "f32 [B,M,4g,4g] mask decoder output (M=3 if multimask else 1)",
            "caseK.iou": "f32 [B,M]",
            "caseK.masks": "uint8 [B,M,H,W] postprocess_masks(...) > 0",
            "caseK.mask_logits": "f32 [B,M,H,W] postprocess_masks(...) (return_logits=True)",
        },
        "tolerances": TOLERANCE_TABLE,
        "images": image_infos,
        "state_dict_keys": {k: list(v.shape) for k, v in sd.items()},
        "randomisation_rule_counts": {r: sum(1 for v in rules.values() if v == r) for r in sorted(set(rules.values()))},
    }
    common.write_json(d / "manifest.json", manifest)
    return files


def gen_vit_official(d: pathlib.Path):
    sam, seed, rules, results, tried = build_and_run("vit", SEEDS["vit_official"])
    grid = VIT_CFG["img_size"] // VIT_CFG["patch_size"]
    folder_cfg = {
        "kind": "vit", "image_size": VIT_CFG["img_size"], "patch_size": VIT_CFG["patch_size"],
        "embed_dim": VIT_CFG["embed_dim"], "depth": VIT_CFG["depth"], "num_heads": VIT_CFG["num_heads"],
        "mlp_ratio": VIT_CFG["mlp_ratio"], "out_chans": VIT_CFG["out_chans"], "window_size": VIT_CFG["window_size"],
        "global_attn_indexes": VIT_CFG["global_attn_indexes"], "use_rel_pos": True, "use_abs_pos": True,
        "qkv_bias": True, "layer_norm_eps": VIT_CFG["layer_norm_eps"], "prompt_embed_dim": PROMPT_CFG["embed_dim"],
        "image_embedding_size": grid, "mask_in_chans": PROMPT_CFG["mask_in_chans"], **DECODER_CFG,
        "pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD, "mask_threshold": 0.0,
    }
    model_cfg = {
        "image_encoder": dict(VIT_CFG, norm_layer="partial(nn.LayerNorm, eps=1e-6)", act_layer="nn.GELU (exact erf)",
                              rel_pos_zero_init=True, grid=grid),
        "prompt_encoder": dict(PROMPT_CFG, image_embedding_size=[grid, grid],
                               input_image_size=[VIT_CFG["img_size"]] * 2, activation="nn.GELU"),
        "mask_decoder": dict(DECODER_CFG, transformer_activation="nn.ReLU", upscaling_activation="nn.GELU",
                             transformer_layer_norm_eps=1e-5, layer_norm2d_eps=1e-6),
        "pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD, "mask_threshold": 0.0,
        "window_paths": vit_window_paths(sam.image_encoder),
    }
    extra = {
        "reference": "segment_anything (facebookresearch) Sam built from ImageEncoderViT / PromptEncoder / MaskDecoder "
                     "/ TwoWayTransformer, run through segment_anything.SamPredictor",
        "encoder_keys": {"enc.patch_embed": "[1,g,g,C] patch conv output, BEFORE pos_embed",
                         "enc.pos_added": "[1,g,g,C] patch_embed + pos_embed (input of block 0)",
                         "enc.block.{i}": "[1,g,g,C] output of block i"},
    }
    write_official_case(d, "vit", sam, seed, rules, results, tried, "sam_vit_tiny.pth", folder_cfg, model_cfg, extra)
    return sam, results


def gen_mobile_official(d: pathlib.Path):
    sam, seed, rules, results, tried = build_and_run("tiny_vit", SEEDS["mobile_official"])
    enc = sam.image_encoder
    # the cached eval attention biases equal the (randomised) parameters
    for m in enc.modules():
        if type(m).__name__ == "Attention" and hasattr(m, "ab"):
            common.assert_close("tinyvit ab", m.ab, m.attention_biases[:, m.attention_bias_idxs], 0)
    paths = tinyvit_window_paths(enc)
    assert any("padded" in p["path"] for p in paths) and any(p["path"].startswith("whole") for p in paths), paths
    merging = []
    for li, layer in enumerate(enc.layers):
        if layer.downsample is not None:
            merging.append({"layer": li, "in": layer.downsample.dim, "out": layer.downsample.out_dim,
                            "conv2_stride": layer.downsample.conv2.c.stride[0],
                            "input_resolution": list(layer.downsample.input_resolution)})
    grid = TINYVIT_CFG["img_size"] // 16
    patches = [
        "forward_features: `x.view(B, 64, 64, C)` (64 = 1024/16 hard-coded) replaced by x.view(B, H_in//16, "
        "W_in//16, C) (instance method, rest of the function verbatim)",
        f"neck: hard-coded 256 channels replaced by Sequential(Conv2d({TINYVIT_CFG['embed_dims'][-1]}, {NECK_OUT}, 1, "
        f"bias=False), LayerNorm2d({NECK_OUT}), Conv2d({NECK_OUT}, {NECK_OUT}, 3, padding=1, bias=False), "
        f"LayerNorm2d({NECK_OUT})) with mobile_sam.modeling.tiny_vit_sam.LayerNorm2d (eps 1e-6); same keys neck.0-3",
    ]
    folder_cfg = {
        "kind": "tiny_vit", "image_size": TINYVIT_CFG["img_size"], "embed_dims": TINYVIT_CFG["embed_dims"],
        "depths": TINYVIT_CFG["depths"], "num_heads": TINYVIT_CFG["num_heads"],
        "window_sizes": TINYVIT_CFG["window_sizes"], "mlp_ratio": TINYVIT_CFG["mlp_ratio"],
        "mbconv_expand_ratio": TINYVIT_CFG["mbconv_expand_ratio"], "local_conv_size": TINYVIT_CFG["local_conv_size"],
        "num_classes": TINYVIT_CFG["num_classes"], "out_chans": NECK_OUT, "image_embedding_size": grid,
        "prompt_embed_dim": PROMPT_CFG["embed_dim"], "mask_in_chans": PROMPT_CFG["mask_in_chans"], **DECODER_CFG,
        "pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD, "mask_threshold": 0.0,
        "patches": patches,
    }
    model_cfg = {
        "image_encoder": dict(TINYVIT_CFG, neck_out_chans=NECK_OUT, grid=grid,
                              activation="nn.GELU (exact erf)", layer_norm_eps=1e-5, batch_norm_eps=1e-5,
                              neck_layer_norm2d_eps=1e-6),
        "prompt_encoder": dict(PROMPT_CFG, image_embedding_size=[grid, grid],
                               input_image_size=[TINYVIT_CFG["img_size"]] * 2, activation="nn.GELU"),
        "mask_decoder": dict(DECODER_CFG, transformer_activation="nn.ReLU", upscaling_activation="nn.GELU",
                             transformer_layer_norm_eps=1e-5, layer_norm2d_eps=1e-6),
        "pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD, "mask_threshold": 0.0,
        "patches": patches,
        "window_paths": paths,
        "patch_merging": merging,
        "layer_input_resolutions": [list(l.input_resolution) for l in enc.layers],
    }
    extra = {
        "reference": "mobile_sam (MobileSAM) Sam with TinyViT image encoder (two hard-coded constants patched, see "
                     "config.patches), run through mobile_sam.SamPredictor",
        "encoder_keys": {"enc.patch_embed": "[1,C0,S/4,S/4] output of patch_embed (Conv2d_BN, GELU, Conv2d_BN)",
                         "enc.layer.{i}": "output of layers[i] exactly as returned: layer 0 (ConvLayer + PatchMerging) "
                                          "and layers 1..3 return tokens [1, L, C]"},
    }
    write_official_case(d, "tiny_vit", sam, seed, rules, results, tried, "mobile_sam_tiny.pt", folder_cfg, model_cfg,
                        extra)


def gen_vit_hf(d: pathlib.Path, sam_off, results_off):
    from transformers import SamImageProcessor, SamModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    common.clear_dir(d)
    sd_off = sam_off.state_dict()
    sd_hf = hf_state_from_official(sd_off)
    config = hf_config()
    model = SamModel(config).float().eval()
    model.load_state_dict(sd_hf, strict=True)
    model_keys = set(model.state_dict().keys())
    assert model_keys == set(sd_hf), model_keys ^ set(sd_hf)
    # bijection check: official -> HF is injective and covers every HF key except the tied duplicate
    hf_from_off = [official_to_hf_key(k) for k in sd_off]
    assert len(set(hf_from_off)) == len(hf_from_off)
    assert set(hf_from_off) | set(HF_TIED) == model_keys
    model.save_pretrained(str(d), safe_serialization=True)
    S = VIT_CFG["img_size"]
    processor = SamImageProcessor(size={"longest_edge": S}, pad_size={"height": S, "width": S},
                                  mask_size={"longest_edge": 4 * (S // VIT_CFG["patch_size"])},
                                  mask_pad_size={"height": 4 * (S // VIT_CFG["patch_size"]),
                                                 "width": 4 * (S // VIT_CFG["patch_size"])},
                                  image_mean=[m / 255 for m in PIXEL_MEAN], image_std=[s / 255 for s in PIXEL_STD])
    processor.save_pretrained(str(d))

    from safetensors.torch import load_file

    saved = load_file(str(d / "model.safetensors"))
    for k, v in saved.items():
        if not torch.equal(v, sd_hf[k]):
            raise AssertionError(f"saved tensor {k} differs")
    saved_keys = sorted(saved.keys())

    reloaded = SamModel.from_pretrained(str(d), attn_implementation="eager").float().eval()
    sdpa = SamModel.from_pretrained(str(d), attn_implementation="sdpa").float().eval()
    files, image_infos = {}, []
    cross = {}
    for (g_off, case_infos, info) in results_off[:HF_IMAGES]:
        H, W = info["original_size"]
        g = run_hf(reloaded, g_off, H, W, processor)
        g_sdpa = run_hf(sdpa, g_off, H, W, processor)
        sdpa_diff = summarise_diffs(compare_goldens(g, g_sdpa))
        # HF vs official, same weights
        diffs = compare_goldens(g_off, g)
        # the same with HF's mask-decoder LayerNorm eps set to the official 1e-5
        patched = copy.deepcopy(reloaded)
        for name, m in patched.mask_decoder.transformer.named_modules():
            if isinstance(m, nn.LayerNorm):
                m.eps = 1e-5
        g_eps = run_hf(patched, g_off, H, W, processor)
        diffs_eps = compare_goldens(g_off, g_eps)
        # HF image processor vs the official preprocessing (informational)
        proc_out = processor(images=g_off["image"].numpy(), return_tensors="pt")
        pv = proc_out["pixel_values"]
        proc_diff = common.max_abs(pv, g_off["pixel_input"]) if pv.shape == g_off["pixel_input"].shape else None
        cross[f"{H}x{W}"] = {
            "hf_vs_official_max_abs": summarise_diffs(diffs),
            "hf_eps1e-5_vs_official_max_abs": summarise_diffs(diffs_eps),
            "hf_sdpa_vs_eager_max_abs": sdpa_diff,
            "hf_processor_pixel_values_vs_official_pixel_input_max_abs": proc_diff,
            "hf_processor_reshaped_input_size": [int(x) for x in proc_out["reshaped_input_sizes"][0]],
        }
        ok, lo, hi, near = fg_ok([g])
        if not ok:
            raise AssertionError(f"HF masks not mixed: {lo} {hi} {near}")
        golden = key_order(g)
        name = f"golden_{H}x{W}.safetensors"
        common.save_golden(d / name, golden, metadata={"case": f"{d.name}/{H}x{W}"})  # one key: header order is stable
        files[f"{H}x{W}"] = name
        image_infos.append({"file": name, **info, "cases": case_infos, "keys": keys_summary(golden)})
    mapping_table = []
    for pat, rep in OFFICIAL_TO_HF:
        mapping_table.append({"official": pat, "hf": rep})
    manifest = {
        "case": d.name,
        "reference": "transformers SamModel (eager attention) with the vit_official weights renamed to HF names; "
                     "fed the official predictor's pixel_input and transformed prompts; masks via "
                     "SamImageProcessor.post_process_masks",
        "versions": ref_versions(),
        "seed": SEEDS["vit_official"],
        "weights": "identical tensors to vit_official/sam_vit_tiny.pth (renamed; no transposes or reshapes)",
        "config": config.to_dict(),
        "files": {"config": "config.json", "weights": "model.safetensors",
                  "preprocessor": "preprocessor_config.json", "goldens": files},
        "hf_layout": {"input_points": "[image_batch=1, point_batch=B, N, 2]", "input_labels": "[1, B, N] int",
                      "input_boxes": "[1, B, 4]", "input_masks": "[B or 1, 1, 4g, 4g]",
                      "goldens": "stored with the image batch dim dropped, i.e. same shapes as vit_official"},
        "official_to_hf_key_map": mapping_table,
        "hf_tied_keys": HF_TIED,
        "saved_safetensors_keys": saved_keys,
        "cross_check": cross,
        "tolerances": TOLERANCE_TABLE,
        "images": image_infos,
    }
    common.write_json(d / "manifest.json", manifest)
    return cross


def main(out_dir: pathlib.Path) -> None:
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    common.setup_determinism(0)
    sam_vit, results_vit = gen_vit_official(out_dir / "vit_official")
    print(f"[sam] vit_official: {file_size_kib(out_dir / 'vit_official'):.1f} KiB", flush=True)
    common.setup_determinism(0)
    cross = gen_vit_hf(out_dir / "vit_hf", sam_vit, results_vit)
    print(f"[sam] vit_hf: {file_size_kib(out_dir / 'vit_hf'):.1f} KiB", flush=True)
    for img, c in cross.items():
        print(f"[sam]   {img} hf vs official: " + ", ".join(f"{k}={v:.2e}" for k, v in
                                                           c["hf_vs_official_max_abs"].items()), flush=True)
    common.setup_determinism(0)
    gen_mobile_official(out_dir / "mobile_official")
    print(f"[sam] mobile_official: {file_size_kib(out_dir / 'mobile_official'):.1f} KiB", flush=True)


if __name__ == "__main__":
    common.setup_determinism(0)
    main(common.FIXTURES_ROOT / "sam")
