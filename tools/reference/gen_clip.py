"""Golden fixtures for the CLIP models (transformers CLIPModel and open_clip CLIP).

For every case this writes, under <out_dir>/<case>/:
  * the checkpoint in the reference's own naming and file format
    (HF: config.json + model.safetensors + preprocessor_config.json;
     open_clip: open_clip_config.json + open_clip_pytorch_model.bin | open_clip_model.safetensors)
  * golden.safetensors: the inputs and the reference intermediates/outputs
  * manifest.json: provenance, config summary, key shapes and tolerances

Run through tools/reference/gen_fixtures.py (it sets up determinism first).
"""

from __future__ import annotations

import math
import pathlib
import sys
from typing import Callable, Dict, List

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

# ----------------------------------------------------------------------------
# Constants shared by all cases
# ----------------------------------------------------------------------------
SOT_ID = 998
EOT_ID = 999
PAD_ID = 0
CONTEXT_LENGTH = 77
TEXT_BODY_LENGTHS = (3, 10, 40)  # random tokens between sot and eot
N_IMAGES = 2

# Re-randomisation scheme (see README): every tensor gets a seeded value.
LOGIT_SCALE = math.log(1 / 0.07) + 0.3
EMBED_STD = 0.1  # class / positional embeddings
LN_STD = 0.1  # LayerNorm: weight = 1 + LN_STD*randn, bias = LN_STD*randn
BIAS_STD = 0.1  # all other 1-D parameters (linear / in_proj biases)
TOKEN_EMBED_STD = 0.1  # token embedding (same scale as the position embedding)
# Weight matrices: normal with std = WEIGHT_GAIN / sqrt(fan_in). A flat std of
# 0.02 on width-32 towers gives attention logits ~1e-2 (near-uniform attention),
# so a q/k swap or transposed matrix moves the outputs by only ~1e-4, i.e. it
# would hide inside the tolerance. fan_in scaling keeps every tensor's
# contribution O(1) so wrong mappings show (checked by sensitivity_check()).
WEIGHT_GAIN = 1.0

# max_abs tolerances for the Rust comparison (justified in README.md)
TOL_INTERMEDIATE = 1e-4
TOL_EMBEDS = 1e-4
MIN_COSINE_EMBEDS = 0.99999
TOL_LOGITS = 1e-3
# a perturbed (mis-mapped) tensor must move some output by at least this much
SENSITIVITY_MIN = 100 * TOL_INTERMEDIATE

# ----------------------------------------------------------------------------
# Case definitions
# ----------------------------------------------------------------------------
def hf_case(name: str, seed: int, act: str, image_size: int, patch_size: int, vision_layers: int) -> dict:
    """A transformers CLIPModel case: widths 32, 4 heads, text 2 layers, projection 16."""
    return dict(
        name=name,
        kind="hf",
        seed=seed,
        text=dict(
            vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=CONTEXT_LENGTH, hidden_act=act,
        ),
        vision=dict(
            image_size=image_size, patch_size=patch_size, hidden_size=32, intermediate_size=128,
            num_hidden_layers=vision_layers, num_attention_heads=4, hidden_act=act,
        ),
        projection_dim=16,
    )


def openclip_case(name: str, seed: int, weights_file: str, image_size: int, patch_size: int, width: int,
                  text_layers: int, quick_gelu: bool) -> dict:
    """An open_clip CLIP case: embed_dim 16, vision 2 layers, 4 heads of width / 4, mlp_ratio 4.

    Without quick_gelu the config has no "quick_gelu" key: like the real (non -quickgelu) hub configs, the
    default (nn.GELU, exact erf) applies.
    """
    model_cfg = {"embed_dim": 16, **({"quick_gelu": True} if quick_gelu else {})}
    model_cfg["vision_cfg"] = {"image_size": image_size, "layers": 2, "width": width, "patch_size": patch_size,
                               "head_width": width // 4, "mlp_ratio": 4.0}
    model_cfg["text_cfg"] = {"context_length": CONTEXT_LENGTH, "vocab_size": 1000, "width": width, "heads": 4,
                             "layers": text_layers}
    return dict(name=name, kind="openclip", seed=seed, model_cfg=model_cfg, weights_file=weights_file)


CASES: List[dict] = [
    hf_case("hf_quickgelu", 1001, "quick_gelu", image_size=32, patch_size=8, vision_layers=2),
    hf_case("hf_gelu", 1002, "gelu", image_size=35, patch_size=7, vision_layers=3),
    openclip_case("openclip_quickgelu", 1003, "open_clip_pytorch_model.bin", image_size=32, patch_size=8, width=32,
                  text_layers=2, quick_gelu=True),
    openclip_case("openclip_gelu", 1004, "open_clip_model.safetensors", image_size=30, patch_size=6, width=48,
                  text_layers=3, quick_gelu=False),
]


# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------
def _draw(full: str, mod_name: str, module: nn.Module, p_name: str, p: torch.Tensor, g: torch.Generator) -> str:
    if isinstance(module, nn.LayerNorm):
        return common.draw_layernorm(p, p_name, g, LN_STD)
    if p_name == "logit_scale":
        p.fill_(LOGIT_SCALE)
        return "logit_scale"
    if p_name in ("class_embedding", "positional_embedding") or mod_name.endswith("position_embedding"):
        common.draw_normal(p, g, EMBED_STD)
        return "embed"
    if mod_name.endswith("token_embedding"):
        common.draw_normal(p, g, TOKEN_EMBED_STD)
        return "token_embed"
    if p.ndim == 1:
        common.draw_normal(p, g, BIAS_STD)
        return "bias"
    if p.ndim >= 2:
        # open_clip's proj / text_projection is used as x @ P, P is [in, out];
        # nn.Linear / Conv2d / in_proj weights are [out, in, ...]
        common.draw_fan_in(p, g, WEIGHT_GAIN, p.shape[0] if p_name in ("proj", "text_projection") else None)
        return "weight"
    raise RuntimeError(f"unhandled parameter {full} {tuple(p.shape)}")


def rerandomise(model: nn.Module, g: torch.Generator) -> Dict[str, str]:
    """Overwrite every parameter with a seeded value; returns name -> rule used."""
    return common.rerandomise(model, g, lambda *a: _draw(*a, g))


def make_inputs(image_size: int, seed: int):
    g = common.generator(seed)
    pixel_values = common.randn((N_IMAGES, 3, image_size, image_size), g)
    ids = torch.zeros((len(TEXT_BODY_LENGTHS), CONTEXT_LENGTH), dtype=torch.int64)
    eot_pos = []
    for row, n in enumerate(TEXT_BODY_LENGTHS):
        body = torch.randint(1, SOT_ID, (n,), generator=g, dtype=torch.int64)  # ids in [1, 997]
        ids[row, 0] = SOT_ID
        ids[row, 1:1 + n] = body
        ids[row, 1 + n] = EOT_ID
        eot_pos.append(1 + n)
    return pixel_values, ids, eot_pos


def cosine_logits(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return logit_scale.exp() * img @ txt.t()


def tolerances(keys) -> Dict[str, dict]:
    tol = {}
    for k in keys:
        if k in ("pixel_values", "input_ids"):
            continue
        if k in ("image_embeds", "text_embeds"):
            tol[k] = {"max_abs": TOL_EMBEDS, "min_cosine": MIN_COSINE_EMBEDS}
        elif k == "logits_per_image":
            tol[k] = {"max_abs": TOL_LOGITS}
        else:
            tol[k] = {"max_abs": TOL_INTERMEDIATE}
    return tol


def ordered(golden: Dict[str, torch.Tensor], n_vis: int, n_txt: int) -> Dict[str, torch.Tensor]:
    keys = ["pixel_values", "input_ids", "vision.embeddings", "vision.ln_pre"]
    keys += [f"vision.blocks.{i}" for i in range(n_vis)]
    keys += ["vision.pooled", "image_embeds", "text.embeddings"]
    keys += [f"text.blocks.{i}" for i in range(n_txt)]
    keys += ["text.ln_final", "text.pooled", "text_embeds", "logits_per_image"]
    missing = set(keys) ^ set(golden)
    if missing:
        raise RuntimeError(f"golden key mismatch: {sorted(missing)}")
    return {k: golden[k] for k in keys}


def compare_runs(tag: str, a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor], atol: float = 1e-5) -> float:
    worst = 0.0
    for k in a:
        worst = max(worst, common.assert_close(f"{tag}:{k}", a[k], b[k], atol))
    return worst


def sensitivity_check(model: nn.Module, run_final: Callable[[nn.Module], Dict[str, torch.Tensor]],
                      qk_pairs: List[Callable[[], None]]) -> Dict[str, float]:
    """Perturb each parameter like a plausible loader bug; every perturbation must move the outputs.

    Perturbations: roll along dim 0 (wrong row order / wrong tensor), transpose of square
    matrices (missing .t()), transpose of the conv kernel's spatial dims, q<->k swap.
    Returns the smallest output change per perturbation kind.
    """
    base = run_final(model)
    worst: Dict[str, float] = {}

    def delta() -> float:
        out = run_final(model)
        return max(common.max_abs(out[k], base[k]) for k in base)

    def record(kind: str, name: str, d: float):
        if d < SENSITIVITY_MIN:
            raise AssertionError(f"sensitivity: {kind} of {name} changes outputs by only {d:.2e}")
        worst[kind] = min(worst.get(kind, float("inf")), d)

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 0:
                continue  # logit_scale: covered by logits_per_image directly
            if name.endswith("k_proj.bias"):
                # softmax is invariant to the key bias (adds q.b_k to a whole row of logits):
                # it provably cannot affect any output, so no fixture can test it.
                continue
            orig = p.detach().clone()
            if p.shape[0] > 1:
                p.copy_(orig.roll(1, dims=0))
                record("roll0", name, delta())
                p.copy_(orig)
            if p.ndim == 2 and p.shape[0] == p.shape[1]:
                p.copy_(orig.t())
                record("transpose", name, delta())
                p.copy_(orig)
            if p.ndim == 4:
                p.copy_(orig.transpose(-1, -2))
                record("conv_hw_transpose", name, delta())
                p.copy_(orig)
        for swap in qk_pairs:
            swap()
            record("swap_qk", "attention", delta())
            swap()
    return worst


def config_summary(**kw) -> dict:
    return kw


# ----------------------------------------------------------------------------
# transformers CLIPModel
# ----------------------------------------------------------------------------
def hf_capture(model, pixel_values, input_ids):
    cap = common.Capture()
    vm, tm = model.vision_model, model.text_model
    cap.fwd(vm.embeddings, "vision.embeddings")
    cap.fwd(vm.pre_layrnorm, "vision.ln_pre")
    for i, layer in enumerate(vm.encoder.layers):
        cap.fwd(layer, f"vision.blocks.{i}")
    cap.pre(model.visual_projection, "vision.pooled")
    cap.fwd(model.visual_projection, "image_embeds")
    cap.fwd(tm.embeddings, "text.embeddings")
    for i, layer in enumerate(tm.encoder.layers):
        cap.fwd(layer, f"text.blocks.{i}")
    cap.fwd(tm.final_layer_norm, "text.ln_final")
    cap.pre(model.text_projection, "text.pooled")
    cap.fwd(model.text_projection, "text_embeds")
    # post_layernorm runs on the pooled class token only ([B, W])
    cap.fwd(vm.post_layernorm, "_check.post_layernorm")
    try:
        with torch.no_grad():
            out = model(input_ids=input_ids, pixel_values=pixel_values, return_dict=True)
    finally:
        cap.remove()
    golden = dict(cap.out)
    golden["logits_per_image"] = out.logits_per_image.detach().clone()
    golden["_check.logits_per_text"] = out.logits_per_text.detach().clone()
    return golden


def hf_features(model, pixel_values, input_ids):
    """Unnormalised embeddings through the public API (handles both return conventions)."""
    with torch.no_grad():
        img = model.get_image_features(pixel_values=pixel_values)
        txt = model.get_text_features(input_ids=input_ids)
    img = getattr(img, "pooler_output", img)
    txt = getattr(txt, "pooler_output", txt)
    return img, txt


def gen_hf(case: dict, d: pathlib.Path) -> dict:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    text = dict(case["text"], bos_token_id=SOT_ID, eos_token_id=EOT_ID, pad_token_id=PAD_ID,
                projection_dim=case["projection_dim"])
    vision = dict(case["vision"], num_channels=3, projection_dim=case["projection_dim"])
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=case["projection_dim"])
    torch.manual_seed(case["seed"])
    model = CLIPModel(config)
    rerandomise(model, common.generator(case["seed"]))
    model = model.float().eval()
    attn_impl = getattr(model.config, "_attn_implementation", None)

    S = case["vision"]["image_size"]
    pixel_values, input_ids, eot_pos = make_inputs(S, case["seed"] + 1)
    g = hf_capture(model, pixel_values, input_ids)

    # ---- self-consistency: the hooked intermediates reproduce the model's outputs
    vm, tm = model.vision_model, model.text_model
    img_api, txt_api = hf_features(model, pixel_values, input_ids)
    with torch.no_grad():
        common.assert_close("image_embeds vs get_image_features", g["image_embeds"], img_api, 1e-6)
        common.assert_close("text_embeds vs get_text_features", g["text_embeds"], txt_api, 1e-6)
        common.assert_close("vision.pooled vs post_layernorm", g["vision.pooled"], g.pop("_check.post_layernorm"), 0)
        nv = len(vm.encoder.layers)
        nt = len(tm.encoder.layers)
        common.assert_close("vision.pooled chain", vm.post_layernorm(g[f"vision.blocks.{nv - 1}"][:, 0]),
                            g["vision.pooled"], 1e-6)
        common.assert_close("vision.ln_pre chain", vm.pre_layrnorm(g["vision.embeddings"]), g["vision.ln_pre"], 1e-6)
        common.assert_close("image_embeds chain", g["vision.pooled"] @ model.visual_projection.weight.t(),
                            g["image_embeds"], 1e-5)
        common.assert_close("text.ln_final chain", tm.final_layer_norm(g[f"text.blocks.{nt - 1}"]),
                            g["text.ln_final"], 1e-6)
        common.assert_close("text.pooled at eot", g["text.ln_final"][torch.arange(len(eot_pos)), eot_pos],
                            g["text.pooled"], 0)
        common.assert_close("text_embeds chain", g["text.pooled"] @ model.text_projection.weight.t(),
                            g["text_embeds"], 1e-5)
        emb = tm.embeddings.token_embedding.weight[input_ids] + tm.embeddings.position_embedding.weight[:CONTEXT_LENGTH]
        common.assert_close("text.embeddings manual", emb, g["text.embeddings"], 1e-6)
        pe = vm.embeddings.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        cls = vm.embeddings.class_embedding.expand(pe.shape[0], 1, -1)
        manual = torch.cat([cls, pe], 1) + vm.embeddings.position_embedding.weight
        common.assert_close("vision.embeddings manual", manual, g["vision.embeddings"], 1e-6)
        common.assert_close("logits manual", cosine_logits(g["image_embeds"], g["text_embeds"], model.logit_scale),
                            g["logits_per_image"], 1e-4)
        common.assert_close("logits_per_text", g.pop("_check.logits_per_text"), g["logits_per_image"].t(), 0)

    # ---- save in the reference's own format
    model.save_pretrained(str(d), safe_serialization=True)
    proc = CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": S}, resample=3,
        do_center_crop=True, crop_size={"height": S, "width": S},
        do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=common.OPENAI_MEAN, image_std=common.OPENAI_STD,
        do_convert_rgb=True,
    )
    proc.save_pretrained(str(d))

    # ---- round trip through the reference loader, eager attention
    reloaded = CLIPModel.from_pretrained(str(d), attn_implementation="eager").float().eval()
    g2 = hf_capture(reloaded, pixel_values, input_ids)
    g2.pop("_check.post_layernorm")
    g2.pop("_check.logits_per_text")
    rt = compare_runs("reload(eager)", {k: g[k] for k in g if k != "logits_per_image"},
                      {k: g2[k] for k in g if k != "logits_per_image"}, 1e-5)
    common.assert_close("reload logits", g["logits_per_image"], g2["logits_per_image"], 1e-4)

    # ---- every tensor matters
    def run_final(m):
        a, b = hf_features(m, pixel_values, input_ids)
        return {"image_embeds": a, "text_embeds": b}

    def layer_swaps(m):
        swaps = []
        for enc in (m.vision_model.encoder, m.text_model.encoder):
            for layer in enc.layers:
                att = layer.self_attn

                def swap(att=att):
                    with torch.no_grad():
                        for attr in ("weight", "bias"):
                            q, k = getattr(att.q_proj, attr), getattr(att.k_proj, attr)
                            tmp = q.detach().clone()
                            q.copy_(k)
                            k.copy_(tmp)

                swaps.append(swap)
        return swaps

    sens = sensitivity_check(model, run_final, layer_swaps(model))

    g.update(pixel_values=pixel_values, input_ids=input_ids)
    golden = ordered(g, nv, nt)
    common.save_golden(d / "golden.safetensors", golden, metadata={"case": case["name"]})

    sd = model.state_dict()
    manifest = {
        "case": case["name"],
        "reference": "transformers CLIPModel",
        "versions": common.versions(),
        "seed": case["seed"],
        "input_seed": case["seed"] + 1,
        "config": config_summary(
            embed_dim=case["projection_dim"],
            vision=dict(image_size=S, patch_size=case["vision"]["patch_size"],
                        width=case["vision"]["hidden_size"], layers=nv,
                        heads=case["vision"]["num_attention_heads"],
                        mlp_dim=case["vision"]["intermediate_size"], act=case["vision"]["hidden_act"]),
            text=dict(vocab_size=case["text"]["vocab_size"], context_length=CONTEXT_LENGTH,
                      width=case["text"]["hidden_size"], layers=nt, heads=case["text"]["num_attention_heads"],
                      mlp_dim=case["text"]["intermediate_size"], act=case["text"]["hidden_act"]),
            layer_norm_eps=model.config.vision_config.layer_norm_eps,
            sot_token_id=SOT_ID, eot_token_id=EOT_ID, pad_token_id=PAD_ID,
            text_pooling="first position of eos_token_id (config.eos_token_id != 2)",
            logit_scale=LOGIT_SCALE,
            attn_implementation_golden=attn_impl,
        ),
        "files": {"config": "config.json", "weights": "model.safetensors",
                  "preprocessor": "preprocessor_config.json", "golden": "golden.safetensors"},
        "weights_file": "model.safetensors",
        "naming": "hf",
        "inputs": {"pixel_values": list(pixel_values.shape), "input_ids": list(input_ids.shape),
                   "eot_positions": eot_pos},
        "keys": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""),
                     "max_abs_value": float(v.abs().max())} for k, v in golden.items()},
        "tolerances": tolerances(golden),
        "checks": {"reload_eager_max_abs": rt, "sensitivity_min_output_change": sens},
        "state_dict_keys": sorted(sd.keys()),
    }
    return manifest


# ----------------------------------------------------------------------------
# open_clip CLIP
# ----------------------------------------------------------------------------
def _bf(t: torch.Tensor, batch_first: bool) -> torch.Tensor:
    return t if batch_first else t.transpose(0, 1)


def oc_capture(model, pixel_values, input_ids):
    cap = common.Capture()
    vis = model.visual
    vbf = getattr(vis.transformer, "batch_first", False)
    tbf = getattr(model.transformer, "batch_first", False)
    cap.pre(vis.ln_pre, "vision.embeddings")
    cap.fwd(vis.ln_pre, "vision.ln_pre")
    for i, blk in enumerate(vis.transformer.resblocks):
        cap.fwd(blk, f"vision.blocks.{i}", lambda t, bf=vbf: _bf(t, bf))
    # ln_post is applied to the full sequence, then token 0 is taken ('tok' pool)
    cap.fwd(vis.ln_post, "vision.pooled", lambda t: t[:, 0] if t.ndim == 3 else t)
    cap.pre(model.transformer, "text.embeddings")  # token + positional embedding, [B, L, W]
    for i, blk in enumerate(model.transformer.resblocks):
        cap.fwd(blk, f"text.blocks.{i}", lambda t, bf=tbf: _bf(t, bf))
    cap.fwd(model.ln_final, "text.ln_final")
    try:
        with torch.no_grad():
            img = model.encode_image(pixel_values)
            txt = model.encode_text(input_ids)
    finally:
        cap.remove()
    g = dict(cap.out)
    g["image_embeds"] = img.detach().clone()
    g["text_embeds"] = txt.detach().clone()
    g["text.pooled"] = g["text.ln_final"][torch.arange(input_ids.shape[0]), input_ids.argmax(dim=-1)].clone()
    with torch.no_grad():
        logits_per_image, logits_per_text = model.get_logits(pixel_values, input_ids)
    g["logits_per_image"] = logits_per_image.detach().clone()
    g["_check.logits_per_text"] = logits_per_text.detach().clone()
    return g


def gen_openclip(case: dict, d: pathlib.Path) -> dict:
    import open_clip
    from open_clip.model import CLIP

    cfg = case["model_cfg"]
    torch.manual_seed(case["seed"])
    model = CLIP(**cfg)  # fp32
    rerandomise(model, common.generator(case["seed"]))
    model = model.float().eval()

    S = cfg["vision_cfg"]["image_size"]
    pixel_values, input_ids, eot_pos = make_inputs(S, case["seed"] + 1)
    g = oc_capture(model, pixel_values, input_ids)

    vis = model.visual
    nv = len(vis.transformer.resblocks)
    nt = len(model.transformer.resblocks)
    with torch.no_grad():
        # forward() returns normalised features + logit_scale.exp()
        f_img, f_txt, scale = model(pixel_values, input_ids)[:3]
        common.assert_close("forward() logits", scale * f_img @ f_txt.t(), g["logits_per_image"], 1e-5)
        common.assert_close("logits_per_text", g.pop("_check.logits_per_text"), g["logits_per_image"].t(), 0)
        common.assert_close("vision.ln_pre chain", vis.ln_pre(g["vision.embeddings"]), g["vision.ln_pre"], 1e-6)
        common.assert_close("vision.pooled chain", vis.ln_post(g[f"vision.blocks.{nv - 1}"])[:, 0],
                            g["vision.pooled"], 1e-6)
        common.assert_close("image_embeds chain", g["vision.pooled"] @ vis.proj, g["image_embeds"], 1e-5)
        common.assert_close("text.ln_final chain", model.ln_final(g[f"text.blocks.{nt - 1}"]), g["text.ln_final"],
                            1e-6)
        common.assert_close("text pooled eot", g["text.ln_final"][torch.arange(len(eot_pos)), eot_pos],
                            g["text.pooled"], 0)
        common.assert_close("text_embeds chain", g["text.pooled"] @ model.text_projection, g["text_embeds"], 1e-5)
        emb = model.token_embedding.weight[input_ids] + model.positional_embedding
        common.assert_close("text.embeddings manual", emb, g["text.embeddings"], 1e-6)
        pe = vis.conv1(pixel_values).flatten(2).transpose(1, 2)
        manual = torch.cat([vis.class_embedding.expand(pe.shape[0], 1, -1), pe], 1) + vis.positional_embedding
        common.assert_close("vision.embeddings manual", manual, g["vision.embeddings"], 1e-6)
        common.assert_close("logits manual", cosine_logits(g["image_embeds"], g["text_embeds"], model.logit_scale),
                            g["logits_per_image"], 1e-4)

    # ---- save in the open_clip HF-hub layout
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    wf = case["weights_file"]
    if wf.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(sd, str(d / wf))
    else:
        # exactly what open_clip's save_for_hf does: the state_dict OrderedDict itself
        # (carries `_metadata`, pickled like every real open_clip_pytorch_model.bin)
        torch.save(model.state_dict(), str(d / wf))
    common.write_json(d / "open_clip_config.json", {
        "model_cfg": cfg,
        "preprocess_cfg": {"mean": common.OPENAI_MEAN, "std": common.OPENAI_STD,
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    })

    # ---- round trip through open_clip's own loader
    reloaded = open_clip.create_model("local-dir:" + str(d), device="cpu", precision="fp32").eval()
    if wf.endswith(".bin"):
        loaded = torch.load(str(d / wf), map_location="cpu", weights_only=True)
        assert set(loaded) == set(sd)
    g2 = oc_capture(reloaded, pixel_values, input_ids)
    g2.pop("_check.logits_per_text")
    rt = compare_runs("reload", {k: g[k] for k in g}, {k: g2[k] for k in g}, 1e-5)

    def run_final(m):
        with torch.no_grad():
            return {"image_embeds": m.encode_image(pixel_values), "text_embeds": m.encode_text(input_ids)}

    def qk_swaps(m):
        swaps = []
        for tr in (m.visual.transformer, m.transformer):
            for blk in tr.resblocks:
                mha = blk.attn

                def swap(mha=mha):
                    with torch.no_grad():
                        w = mha.in_proj_weight
                        b = mha.in_proj_bias
                        wq, wk, wv = w.detach().clone().chunk(3, 0)
                        bq, bk, bv = b.detach().clone().chunk(3, 0)
                        w.copy_(torch.cat([wk, wq, wv], 0))
                        b.copy_(torch.cat([bk, bq, bv], 0))

                swaps.append(swap)
        return swaps

    sens = sensitivity_check(model, run_final, qk_swaps(model))

    g.update(pixel_values=pixel_values, input_ids=input_ids)
    golden = ordered(g, nv, nt)
    common.save_golden(d / "golden.safetensors", golden, metadata={"case": case["name"]})

    vc, tc = cfg["vision_cfg"], cfg["text_cfg"]
    act = "quick_gelu" if cfg.get("quick_gelu", False) else "gelu"
    manifest = {
        "case": case["name"],
        "reference": "open_clip CLIP",
        "versions": common.versions(),
        "seed": case["seed"],
        "input_seed": case["seed"] + 1,
        "config": config_summary(
            embed_dim=cfg["embed_dim"],
            vision=dict(image_size=S, patch_size=vc["patch_size"], width=vc["width"], layers=nv,
                        heads=vc["width"] // vc["head_width"], mlp_dim=int(vc["width"] * vc["mlp_ratio"]), act=act),
            text=dict(vocab_size=tc["vocab_size"], context_length=tc["context_length"], width=tc["width"],
                      layers=nt, heads=tc["heads"], mlp_dim=int(tc["width"] * tc.get("mlp_ratio", 4.0)), act=act),
            layer_norm_eps=model.ln_final.eps,
            sot_token_id=SOT_ID, eot_token_id=EOT_ID, pad_token_id=PAD_ID,
            text_pooling="argmax of input_ids",
            logit_scale=LOGIT_SCALE,
            model_cfg=cfg,
        ),
        "files": {"config": "open_clip_config.json", "weights": wf, "golden": "golden.safetensors"},
        "weights_file": wf,
        "naming": "openclip",
        "inputs": {"pixel_values": list(pixel_values.shape), "input_ids": list(input_ids.shape),
                   "eot_positions": eot_pos},
        "keys": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""),
                     "max_abs_value": float(v.abs().max())} for k, v in golden.items()},
        "tolerances": tolerances(golden),
        "checks": {"reload_max_abs": rt, "sensitivity_min_output_change": sens},
        "state_dict_keys": sorted(sd.keys()),
    }
    return manifest


# ----------------------------------------------------------------------------
def main(out_dir: pathlib.Path, only_cases=None) -> None:
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        if only_cases and case["name"] not in only_cases:
            continue
        d = out_dir / case["name"]
        common.clear_dir(d)
        if case["kind"] == "hf":
            manifest = gen_hf(case, d)
        else:
            manifest = gen_openclip(case, d)
        common.write_json(d / "manifest.json", manifest)
        size = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
        print(f"[clip] {case['name']}: {size / 1024:.1f} KiB, "
              f"sensitivity min {min(manifest['checks']['sensitivity_min_output_change'].values()):.3g}")


if __name__ == "__main__":
    common.setup_determinism(0)
    main(common.FIXTURES_ROOT / "clip", only_cases=sys.argv[1:] or None)
