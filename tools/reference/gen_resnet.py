"""Golden fixtures for the CNN encoders (issue: "The CNN encoders").

Under <out_dir>/:
  clip_rn50_openai/     open_clip's ModifiedResNet CLIP with RN50's stage depths [3, 4, 6, 3] (width 4), in
                        OpenAI's release naming as a torch.save'd state dict (`model.pt`, with OpenAI's three
                        scalar entries) and no config: vista infers the architecture as open_clip's
                        build_model_from_openai_state_dict does. QuickGELU text tower.
  clip_rn50x4_openclip/ RN50x4's stage depths [4, 6, 10, 6] (width 4, head width 32) in open_clip's layout
                        (open_clip_config.json + open_clip_model.safetensors), exact GELU.
  dino_resnet50/        torchvision's ResNet with Bottleneck blocks [3, 4, 6, 3] (DINO's `resnet50` backbone,
                        `fc` = Identity), every bottleneck's planes / 16 so the fixture stays small, in
                        DINO's release naming (`dino_resnet50_pretrain.pth`: the backbone's state dict), plus
                        a DINO training checkpoint (`checkpoint.pth`, {"teacher": {"backbone.*", "head.*"}}).
  lars/                 three chained steps of main_dino.py's utils.LARS (transcribed below from
                        facebookresearch/dino utils.py, which is not pip-installable) and of its
                        torch.optim.SGD(momentum=0.9) on two parameter groups.

Each model case has golden.safetensors at the native input size and golden_<S>.safetensors at a non-native size.
For CLIP that is open_clip's model built at the other size with the attention pool's position embedding resampled by
open_clip's own `resize_pos_embed` (bicubic, antialias, align_corners=False, the pooled token kept): open_clip
resamples ViT position embeddings that way and has no rule of its own for ModifiedResNet, which vista follows.

Weights: convolutions and linears N(0, 1/fan_in); BatchNorm running statistics set from a forward pass over the
inputs (so activations stay O(1) through 50-odd layers) and then perturbed, γ = 1 + 0.1·N, β = 0.1·N, so no norm,
bias or statistic can be skipped unnoticed.
"""

from __future__ import annotations

import math
import pathlib
import sys
import warnings
from typing import Dict

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

TOL_ACT = 1e-4  # every stage's activations, max abs (f32, another summation order)
MIN_COSINE = 0.99999  # embeddings
TOL_LARS = 1e-5


def draw_weights(model: nn.Module, g: torch.Generator) -> None:
    """Every parameter: LayerNorm / BatchNorm γ ~ 1 + 0.1 N, β and biases 0.1 N, matrices N(0, 1/fan_in),
    embeddings 0.1 N; logit_scale log(1/0.07) + 0.3."""

    def draw(full, mod_name, module, p_name, p):
        if isinstance(module, nn.BatchNorm2d) and p_name == "weight" and ".layer" in "." + mod_name and mod_name.endswith(".bn3"):
            # A residual branch's last norm at a fifth of the identity's scale (open_clip and
            # torchvision's zero_init_residual start it at 0), so 16-odd blocks keep the activations
            # O(1) as in a trained network instead of growing with depth.
            common.draw_normal(p, g, 0.02, mean=0.2)
            return "bn3_weight"
        if isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            return common.draw_layernorm(p, p_name, g, 0.1)
        if p_name == "logit_scale":
            p.fill_(math.log(1 / 0.07) + 0.3)
            return "logit_scale"
        if p.ndim == 1:
            common.draw_normal(p, g, 0.1)
            return "bias"
        if "positional_embedding" in p_name or "token_embedding" in mod_name:
            common.draw_normal(p, g, 0.1)
            return "embed"
        common.draw_fan_in(p, g, 1.0, p.shape[0] if p_name == "text_projection" else None)
        return "weight"

    common.rerandomise(model, g, draw)


def calibrate_batch_norm(model: nn.Module, run, g: torch.Generator) -> None:
    """Running statistics = this batch's statistics (momentum 1), then perturbed a little."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.momentum = 1.0
        m.reset_running_stats()
    model.train()
    with torch.no_grad():
        run(model)
    model.eval()
    with torch.no_grad():
        for m in bns:
            m.momentum = 0.1
            # shifted by a tenth of each channel's standard deviation (an absolute shift would be many
            # deviations on channels with a small spread)
            m.running_mean.add_(common.randn(m.running_mean.shape, g, 0.1) * m.running_var.sqrt())
            m.running_var.mul_(1 + 0.2 * torch.rand(m.running_var.shape, generator=g))


def text_ids(seed: int, context: int = 77, vocab: int = 1000):
    g = common.generator(seed)
    ids = torch.zeros((3, context), dtype=torch.int64)
    for row, n in enumerate((3, 10, 40)):
        ids[row, 0] = vocab - 2
        ids[row, 1:1 + n] = torch.randint(1, vocab - 2, (n,), generator=g)
        ids[row, 1 + n] = vocab - 1
    return ids


# ----------------------------------------------------------------------------------------------------------------
# CLIP ModifiedResNet (open_clip modified_resnet.py)
# ----------------------------------------------------------------------------------------------------------------
def clip_model_cfg(layers, width, head_width, image_size, embed_dim, text_width, text_heads, quick_gelu):
    cfg = {"embed_dim": embed_dim,
           "vision_cfg": {"image_size": image_size, "layers": list(layers), "width": width, "head_width": head_width,
                          "patch_size": None},
           "text_cfg": {"context_length": 77, "vocab_size": 1000, "width": text_width, "heads": text_heads,
                        "layers": 2}}
    if quick_gelu:
        cfg["quick_gelu"] = True
    return cfg


def build_clip(cfg):
    from open_clip.model import CLIP

    return CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=cfg.get("quick_gelu", False)).eval()


def clip_run(model, pixels, ids) -> Dict[str, torch.Tensor]:
    """Every stage of the image tower (NCHW as open_clip computes it), the embeddings and the logits."""
    v = model.visual
    out = {}
    with torch.no_grad():
        x = v.stem(pixels)
        out["vision.stem"] = x
        for i, layer in enumerate([v.layer1, v.layer2, v.layer3, v.layer4], start=1):
            x = layer(x)
            out[f"vision.layer{i}"] = x
        img = v.attnpool(x)
        common.assert_close("image_embeds vs encode_image", img, model.encode_image(pixels), 1e-6)
        txt = model.encode_text(ids)
        out["image_embeds"] = img
        out["text_embeds"] = txt
        a = F.normalize(img, dim=-1)
        b = F.normalize(txt, dim=-1)
        out["logits_per_image"] = model.logit_scale.exp() * a @ b.t()
    return out


def resized_clip(cfg, sd, size):
    """open_clip's model at another input size, the pool's position embedding resampled by resize_pos_embed."""
    from open_clip.model import resize_pos_embed

    cfg2 = {**cfg, "vision_cfg": {**cfg["vision_cfg"], "image_size": size}}
    model = build_clip(cfg2)
    key = "visual.attnpool.positional_embedding"

    class Probe:  # resize_pos_embed reads model.visual.grid_size and the ViT's key
        class visual:
            grid_size = (size // 32, size // 32)

    moved = {"visual.positional_embedding": sd[key].clone()}
    resize_pos_embed(moved, Probe)
    sd2 = dict(sd)
    sd2[key] = moved["visual.positional_embedding"]
    model.load_state_dict(sd2)
    return model.eval()


def gen_clip(d: pathlib.Path, cfg, seed: int, layout: str, other_size: int) -> None:
    common.clear_dir(d)
    torch.manual_seed(seed)
    model = build_clip(cfg)
    g = common.generator(seed)
    draw_weights(model, g)
    s = cfg["vision_cfg"]["image_size"]
    pixels = common.randn((2, 3, s, s), common.generator(seed + 1))
    ids = text_ids(seed + 2)
    calibrate_batch_norm(model.visual, lambda m: m(pixels), g)
    golden = clip_run(model, pixels, ids)
    print(d.name, {k: f"{v.abs().max().item():.2f}" for k, v in golden.items()})
    common.save_golden(d / "golden.safetensors", {"pixel_values": pixels, "input_ids": ids, **golden})
    sd = {k: v.clone() for k, v in model.state_dict().items()}

    other = resized_clip(cfg, sd, other_size)
    px2 = common.randn((2, 3, other_size, other_size), common.generator(seed + 3))
    golden2 = clip_run(other, px2, ids)
    common.save_golden(d / f"golden_{other_size}.safetensors", {"pixel_values": px2, "input_ids": ids, **golden2})

    if layout == "openai":
        from open_clip.model import build_model_from_openai_state_dict

        release = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
        release.update(input_resolution=torch.tensor(s), context_length=torch.tensor(77),
                       vocab_size=torch.tensor(1000))
        torch.save(release, d / "model.pt")
        # open_clip's reader of OpenAI's releases rebuilds the same architecture from the shapes
        # (it converts to fp16, so compare the structure, not the values).
        rebuilt = build_model_from_openai_state_dict(dict(release), quick_gelu=True, cast_dtype=None)
        assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == \
            {k: tuple(v.shape) for k, v in sd.items()}
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "open_clip_model.safetensors"))
        common.write_json(d / "open_clip_config.json", {
            "model_cfg": cfg,
            "preprocess_cfg": {"mean": common.OPENAI_MEAN, "std": common.OPENAI_STD, "interpolation": "bicubic",
                               "resize_mode": "shortest"}})
    common.write_json(d / "manifest.json", {
        "generator": "tools/reference/gen_resnet.py", "versions": common.versions(), "model_cfg": cfg,
        "layout": layout, "native_size": s, "other_size": other_size,
        "tolerances": {"activations_max_abs": TOL_ACT, "embeddings_min_cosine": MIN_COSINE,
                       "logits_max_abs": 1e-3}})


# ----------------------------------------------------------------------------------------------------------------
# DINO's ResNet-50: torchvision's ResNet (Bottleneck, [3, 4, 6, 3]), fc = Identity
# ----------------------------------------------------------------------------------------------------------------
def build_torchvision(div: int):
    from torchvision.models.resnet import Bottleneck, ResNet

    class Thin(ResNet):
        """torchvision's ResNet code unchanged; every stage's planes divided by `div` (fixture size)."""

        def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
            return super()._make_layer(block, planes // div, blocks, stride, dilate)

    model = Thin(Bottleneck, [3, 4, 6, 3])
    model.fc = nn.Identity()  # DINO: `model.fc = nn.Identity()` (hubconf.resnet50, main_dino.py)
    return model.eval()


def resnet_run(model, pixels) -> Dict[str, torch.Tensor]:
    out = {}
    with torch.no_grad():
        x = model.maxpool(model.relu(model.bn1(model.conv1(pixels))))
        out["stem"] = x
        for i, layer in enumerate([model.layer1, model.layer2, model.layer3, model.layer4], start=1):
            x = layer(x)
            out[f"layer{i}"] = x
        feats = torch.flatten(model.avgpool(x), 1)
        common.assert_close("features vs forward", feats, model(pixels), 1e-6)
        out["features"] = feats
    return out


def gen_dino_resnet(d: pathlib.Path, seed: int = 4101) -> None:
    common.clear_dir(d)
    torch.manual_seed(seed)
    model = build_torchvision(16)
    g = common.generator(seed)
    draw_weights(model, g)
    pixels = common.randn((2, 3, 64, 64), common.generator(seed + 1))
    calibrate_batch_norm(model, lambda m: m(pixels), g)
    golden = resnet_run(model, pixels)
    print(d.name, {k: f"{v.abs().max().item():.2f}" for k, v in golden.items()})
    common.save_golden(d / "golden.safetensors", {"pixel_values": pixels, **golden})
    px2 = common.randn((2, 3, 72, 88), common.generator(seed + 2))
    common.save_golden(d / "golden_72x88.safetensors", {"pixel_values": px2, **resnet_run(model, px2)})
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(sd, d / "dino_resnet50_pretrain.pth")
    head = {"head.mlp.0.weight": common.randn((8, sd["layer4.2.conv3.weight"].shape[0]), g),
            "head.last_layer.weight_g": torch.ones(16, 1)}
    torch.save({"teacher": {**{f"backbone.{k}": v for k, v in sd.items()}, **head},
                # the student, only its stem (fixture size): reading it instead of the teacher would fail
                "student": {"module.backbone.conv1.weight": 2 * sd["conv1.weight"]}, "epoch": 3},
               d / "checkpoint.pth")
    common.write_json(d / "manifest.json", {
        "generator": "tools/reference/gen_resnet.py", "versions": common.versions(),
        "architecture": "torchvision.models.resnet.ResNet(Bottleneck, [3, 4, 6, 3]), planes / 16, fc = Identity",
        "tolerances": {"activations_max_abs": TOL_ACT, "features_max_abs": TOL_ACT}})


# ----------------------------------------------------------------------------------------------------------------
# main_dino.py's LARS (facebookresearch/dino utils.py, "almost copy-paste" of barlowtwins' LARS)
# ----------------------------------------------------------------------------------------------------------------
class LARS(torch.optim.Optimizer):
    """facebookresearch/dino utils.LARS, transcribed (weight_decay_filter / lars_adaptation_filter unused there)."""

    def __init__(self, params, lr=0, weight_decay=0, momentum=0.9, eta=0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g['params']:
                dp = p.grad
                if dp is None:
                    continue
                if p.ndim != 1:
                    dp = dp.add(p, alpha=g['weight_decay'])
                if p.ndim != 1:
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.,
                                    torch.where(update_norm > 0, (g['eta'] * param_norm / update_norm), one), one)
                    dp = dp.mul(q)
                param_state = self.state[p]
                if 'mu' not in param_state:
                    param_state['mu'] = torch.zeros_like(p)
                mu = param_state['mu']
                mu.mul_(g['momentum']).add_(dp)
                p.add_(mu, alpha=-g['lr'])


def run_optimizer(make, seed: int = 4201) -> Dict[str, torch.Tensor]:
    """Three chained steps of the optimizer `make(groups)` on main_dino.py's two groups."""
    g = common.generator(seed)
    shapes = {"conv.weight": (6, 3, 3, 3), "fc.weight": (5, 7), "fc.bias": (5,), "bn.weight": (6,),
              "zero.weight": (4, 4)}
    params = {k: nn.Parameter(common.randn(s, g)) for k, s in shapes.items()}
    with torch.no_grad():
        params["zero.weight"].zero_()  # param_norm == 0: LARS's trust ratio falls back to one
    # main_dino.py's groups: regularized (weights) and not (biases, norms: weight_decay 0)
    opt = make([{"params": [params[k] for k in REGULARIZED]},
                {"params": [params[k] for k in NOT_REGULARIZED], "weight_decay": 0.0}])
    tensors = {f"init.{k}": p.detach().clone() for k, p in params.items()}
    for step, (lr, wd) in enumerate(SCHEDULE):
        for i, group in enumerate(opt.param_groups):  # as main_dino.py sets them per iteration
            group["lr"] = lr
            if i == 0:
                group["weight_decay"] = wd
        for k, p in params.items():
            p.grad = common.randn(p.shape, g)
            if k == "fc.weight" and step == 1:
                p.grad.zero_()  # a zero gradient with weight decay: the decay is the whole update
            tensors[f"step{step}.grad.{k}"] = p.grad.clone()
        opt.step()
        for k, p in params.items():
            tensors[f"step{step}.param.{k}"] = p.detach().clone()
            tensors[f"step{step}.mu.{k}"] = opt.state[p]["mu" if "mu" in opt.state[p] else "momentum_buffer"].clone()
    return tensors


REGULARIZED = ["conv.weight", "fc.weight", "zero.weight"]
NOT_REGULARIZED = ["fc.bias", "bn.weight"]
SCHEDULE = [(0.3, 0.04), (0.25, 0.1), (0.2, 0.4)]  # (lr, wd) per step


def gen_lars(d: pathlib.Path) -> None:
    common.clear_dir(d)
    common.save_golden(d / "golden.safetensors", run_optimizer(lambda groups: LARS(groups)))
    # main_dino.py: torch.optim.SGD(params_groups, lr=0, momentum=0.9)
    common.save_golden(d / "golden_sgd.safetensors",
                       run_optimizer(lambda groups: torch.optim.SGD(groups, lr=0, momentum=0.9)))
    common.write_json(d / "manifest.json", {
        "generator": "tools/reference/gen_resnet.py", "versions": common.versions(),
        "regularized": REGULARIZED, "not_regularized": NOT_REGULARIZED, "momentum": 0.9, "eta": 0.001,
        "schedule": [{"lr": lr, "weight_decay": wd} for lr, wd in SCHEDULE],
        "files": {"golden.safetensors": "utils.LARS", "golden_sgd.safetensors": "torch.optim.SGD(momentum=0.9)"},
        "tolerances": {"max_abs": TOL_LARS}})


def gen_resnet_train(d: pathlib.Path, seed: int = 4301) -> None:
    """One training-mode step of DINO's ResNet as main_dino.py runs its networks (BatchNorm in
    training mode: batch statistics, running statistics updated with momentum 0.1): the features,
    every parameter's gradient of `(features * R).sum()`, the running statistics after the
    forward, then the eval-mode features of another batch with those statistics."""
    common.clear_dir(d)
    torch.manual_seed(seed)
    model = build_torchvision(16)
    g = common.generator(seed)
    draw_weights(model, g)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.train()
    x = common.randn((4, 3, 40, 40), g)  # square, as DINO's crops are
    r = common.randn((4, model.layer4[-1].conv3.out_channels), g)
    feats = model(x)
    loss = (feats * r).sum()
    loss.backward()
    out = {"pixel_values": x, "r": r, "features": feats.detach(), "loss": loss.detach().reshape(1)}
    for name, p in model.named_parameters():
        out[f"grad.{name}"] = p.grad.detach().clone()
    for name, b in model.named_buffers():
        if "running" in name:
            out[f"after.{name}"] = b.detach().clone()
    model.eval()
    x2 = common.randn((2, 3, 32, 32), g)
    with torch.no_grad():
        out["eval_pixel_values"] = x2
        out["eval_features"] = model(x2)
    common.save_golden(d / "golden.safetensors", out)
    # the state before the step: parameters as drawn, running statistics at torch's 0 and 1
    torch.save(before, d / "before_step.pth")
    common.write_json(d / "manifest.json", {
        "generator": "tools/reference/gen_resnet.py", "versions": common.versions(),
        "architecture": "torchvision ResNet(Bottleneck, [3, 4, 6, 3]), planes / 16, fc = Identity, train mode",
        "seed": seed, "tolerances": {"features_max_abs": 1e-4, "grad_rel": 1e-4, "running_max_abs": 1e-5}})


def main(out_dir: pathlib.Path) -> None:
    warnings.filterwarnings("ignore", category=UserWarning)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = [
        ("clip_rn50_openai", clip_model_cfg((3, 4, 6, 3), 4, 64, 64, 16, 64, 1, True), 4001, "openai", 96),
        ("clip_rn50x4_openclip", clip_model_cfg((4, 6, 10, 6), 4, 32, 64, 24, 32, 4, False), 4002, "openclip", 100),
    ]
    for name, cfg, seed, layout, other in cases:
        common.setup_determinism(0)
        gen_clip(out_dir / name, cfg, seed, layout, other)
        common.report_size(out_dir / name, name, 2048)
    common.setup_determinism(0)
    gen_dino_resnet(out_dir / "dino_resnet50")
    common.report_size(out_dir / "dino_resnet50", "dino_resnet50", 3072)
    common.setup_determinism(0)
    gen_lars(out_dir / "lars")
    common.setup_determinism(0)
    gen_resnet_train(out_dir / "dino_resnet50_train")
    common.report_size(out_dir / "dino_resnet50_train", "dino_resnet50_train", 2048)


if __name__ == "__main__":
    common.run_standalone(main, common.FIXTURES_ROOT / "resnet")
