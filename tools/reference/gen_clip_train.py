"""Golden fixtures for CLIP training (`vista train clip`, the open_clip recipe) from open_clip's own code.

Writes into <out_dir> (default: crates/vista/tests/fixtures/clip_train/):

  * <config>/model.safetensors      the starting weights: `open_clip.model.CLIP(...).state_dict()` exactly
                                    (float32, contiguous; `logit_scale` has shape [])
  * <config>/open_clip_config.json  {"model_cfg": {embed_dim, vision_cfg, text_cfg, quick_gelu}, "preprocess_cfg": {}}
  * <config>/golden.safetensors     inputs and reference values (float32 except the int64 `*.texts`):
      inputs
        batch{i}.images [6,3,16,16], batch{i}.texts [6,16] int64   i = 0, 1, 2 (different data)
        accum.images [8,3,16,16], accum.texts [8,16] int64         the logical batch of item 6
        clamp.images [2,3,16,16], clamp.texts [2,16] int64         the batch of the clamp case
      1. forward + loss on batch0, from the starting weights (model.train(), fp32)
        image_features [6,24], text_features [6,24]   CLIP.forward (output_dict): L2-normalised
        logit_scale []                               exp(logit_scale), as CLIP.forward returns it
        loss []                                      open_clip.loss.ClipLoss() (world size 1)
        grad.<name>                                  after loss.backward(), every parameter
      2. SigLIP (config "quickgelu" only): the same weights in a CLIP built with init_logit_scale=log(10),
         init_logit_bias=-10 (open_clip's SigLIP defaults), batch0
        siglip.loss []                               open_clip.loss.SigLipLoss()
        siglip.logit_scale []                        exp(logit_scale) = 10 (logit_bias -10 is a parameter)
        siglip.grad.<name>                           every parameter, `logit_bias` included
      5. three chained optimiser steps (open_clip_train.train.train_one_epoch, accum_freq 1; steps 0, 1, 2
         on batch0, batch1, batch2; AdamW, cosine_lr, clip_grad_norm_(GRAD_CLIP), logit_scale clamp)
        step{i}.loss [], step{i}.total_norm []       the ClipLoss value and clip_grad_norm_'s return (pre-clip norm)
        after1.<name>                                the state after the first step (i = 0), clamp included
        after3.<name>                                the state after the third step (i = 2)
        after3.exp_avg.<name>, after3.exp_avg_sq.<name>  AdamW state after the third step
        clamp.before [], clamp.unclamped [], clamp.after []  logit_scale (not exp'd) before a single step from
                                                     log(100) - 1e-4, after optimizer.step(), after the clamp
        clamp.grad_logit_scale []                    the (pre-clip) gradient of logit_scale in that step
      6. feature-cached gradient accumulation (train_one_epoch's accum_freq > 1 branch), from the start weights
        plain8.grad.<name>                           accum_freq 1, one batch of 8 (accum.*)
        accum2.grad.<name>, accum4.grad.<name>       accum_freq 2 (micro-batches of 4) / 4 (of 2), the gradients
                                                     when optimizer.step() is reached (no clipping)
      7. LiT: lock_image_tower(unlocked_groups=1), then the 3 steps of item 5 (parameter groups from the
         requires_grad parameters, as main.py builds them)
        lit1.after3.<name>                           every parameter (locked ones are the start, bit for bit)
      8. WiSE-FT (config "quickgelu" only): mlfoundations/wise-ft `_merge` with fishers None,
         theta_0 = model.safetensors, theta_1 = after3
        wise0.5.<name>, wise0.3.<name>               (1 - alpha) * theta_0 + alpha * theta_1 per state-dict key
  * <config>/manifest.json: versions, the config, parameter names and shapes, groups (item 3), the step lrs,
    losses and norms, the clamp case, the accumulation differences, the lock lists (item 7), tolerances.
  * manifest.json: versions, provenance, the configs, the schedules (item 4: cosine_lr, const_lr,
    const_lr_cooldown) and the file list.
  * init_stats.json (item 9): per-parameter mean / std of open_clip's own init of a larger CLIP, averaged
    over 3 seeds, with the init rule of each parameter and the std it implies.

Reference code. open_clip 3.3.0 (pip `open_clip_torch==3.3.0`, pinned in requirements.txt): the model is
`open_clip.model.CLIP`, the losses `open_clip.loss.ClipLoss` / `SigLipLoss`, the locks `CLIP.lock_image_tower` /
`lock_text_tower`. The training package `open_clip_train` ships in the same wheel (the PyPI wheel of
open_clip_torch 3.3.0 contains it; no separate distribution exists): `open_clip_train.train.train_one_epoch`
and `open_clip_train.scheduler.{cosine_lr, const_lr, const_lr_cooldown}` are imported and CALLED as they are
(with a stand-in data loader and an args namespace). `open_clip_train.main` cannot be imported without its
data dependencies (braceexpand, webdataset), so the two lines of its parameter-group rule are transcribed
below (`main_param_groups`, citing main.py). wise-ft's `_merge` is transcribed (`wise_ft_merge`) from
github:mlfoundations/wise-ft src/wise_ft.py @ 58b7a4b (its module imports the wise-ft training code).

Observation hooks only: `torch.nn.utils.clip_grad_norm_` is wrapped (same call, its return value and the
gradients it sees are recorded), the loss is a ClipLoss subclass that records its value, and an optimizer
step pre/post hook records the gradients / the pre-clamp logit_scale. None of them changes a value.

Usable standalone (`python tools/reference/gen_clip_train.py [out_dir]`) or as a gen_fixtures-style `main(out_dir)`.
"""

from __future__ import annotations

import contextlib
import math
import pathlib
import sys
import types

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

DEFAULT_OUT = common.FIXTURES_ROOT / "clip_train"

# ----------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------
EMBED_DIM = 24
# Sizes are small so that the inputs and ~13 full parameter copies per config stay under the 2 MB budget of the
# folder: 16 px images in 4 px patches (a 4x4 grid + class token, 17 tokens), vision width 16 (2 heads of 8),
# text width 12 (2 heads of 6), embed 24 -- three different widths, so a transposed or swapped projection
# cannot go unnoticed.
IMAGE_SIZE, PATCH_SIZE = 16, 4
VISION_WIDTH, VISION_HEAD_WIDTH = 16, 8
TEXT_WIDTH, TEXT_HEADS = 12, 2
CONTEXT_LENGTH, VOCAB_SIZE = 16, 100
SOT_ID, EOT_ID = 98, 99  # EOT is the largest id, so open_clip's argmax pooling picks it
CONFIGS = {
    "quickgelu": dict(quick_gelu=True, vision_layers=2, seed=5101, data_seed=5201),
    "gelu": dict(quick_gelu=False, vision_layers=3, seed=5102, data_seed=5202),
}
LN_STD = 0.1  # LayerNorm perturbation: weight 1 + LN_STD * N, bias LN_STD * N
ZERO_BIAS_STD = 0.05  # in_proj_bias / out_proj.bias (zero after open_clip's init) become ZERO_BIAS_STD * N

BATCH = 6
N_STEPS = 3
ACCUM_BATCH = 8
ACCUM_FREQS = (2, 4)
# AdamW as open_clip_train.main builds it; betas / eps are params.get_default_params for ViT models
LR, WD, BETAS, EPS = 1e-3, 0.2, (0.9, 0.98), 1e-6
WARMUP, TOTAL_STEPS = 2, 7
COOLDOWN_STEPS, COOLDOWN_POWER, COOLDOWN_END_LR = 2, 1.0, 0.0
# Between the total gradient norms (15.9 .. 186 here; the token / text position embeddings dominate, their init
# is tiny): every step of "quickgelu" is clipped, "gelu"'s third step is not (coef clamped to 1), so both
# branches of clip_grad_norm_ run. Asserted: step 0 is clipped in every run.
GRAD_CLIP = 20.0
CLAMP_MARGIN = 1e-4  # the clamp case starts at log(100) - CLAMP_MARGIN
# At random init a larger batch's matching pairs are no more similar than the others, so raising the scale
# raises the loss (gradient > 0): the clamp case uses pairs of 2, where about half the draws have a negative one.
CLAMP_BATCH = 2
LOCK_IMAGE_GROUPS = (0, 1, 2)
LOCK_TEXT_LAYERS = (0, 1, 2)
LIT_GROUPS = 1
WISE_ALPHAS = (0.5, 0.3)
SIGLIP_INIT_LOGIT_SCALE, SIGLIP_INIT_LOGIT_BIAS = math.log(10), -10.0  # open_clip factory's SigLIP defaults

INIT_CFG = dict(
    embed_dim=64,
    vision_cfg=dict(image_size=64, patch_size=8, width=128, layers=4, head_width=64, mlp_ratio=4.0),
    text_cfg=dict(context_length=32, vocab_size=1000, width=128, heads=2, layers=4),
    quick_gelu=True,
)
INIT_SEEDS = (0, 1, 2)

TOL = {
    "forward": 1e-5, "loss": 1e-5, "grad": 1e-5, "siglip_grad": 1e-4, "total_norm": 1e-5, "step": 1e-5,
    "adam_state": 1e-6, "accum_grad": 1e-5, "wise": 1e-6, "lr": 1e-12,
    "init_stats": "statistical: |mean| and std within a few standard errors of the rule",
}


def model_cfg(cfg: dict) -> dict:
    return dict(
        embed_dim=EMBED_DIM,
        vision_cfg=dict(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, width=VISION_WIDTH,
                        layers=cfg["vision_layers"], head_width=VISION_HEAD_WIDTH, mlp_ratio=4.0),
        text_cfg=dict(context_length=CONTEXT_LENGTH, vocab_size=VOCAB_SIZE, width=TEXT_WIDTH, heads=TEXT_HEADS,
                      layers=2),
        quick_gelu=cfg["quick_gelu"],
    )


# ----------------------------------------------------------------------------
# Transcribed reference lines (everything else is called from the installed packages)
# ----------------------------------------------------------------------------
def main_param_groups(model):
    """open_clip_train/main.py, main(), the `opt == 'adamw'` branch (open_clip_torch 3.3.0), verbatim rule:

        exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or 'logit_scale' in n
        include = lambda n, p: not exclude(n, p)
        named_parameters = list(model.named_parameters())
        gain_or_bias_params = [p for n, p in named_parameters if exclude(n, p) and p.requires_grad]
        rest_params = [p for n, p in named_parameters if include(n, p) and p.requires_grad]
    Returns (gain_or_bias names, rest names), name lists in named_parameters order.
    """
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or 'logit_scale' in n  # noqa: E731
    include = lambda n, p: not exclude(n, p)  # noqa: E731
    named_parameters = list(model.named_parameters())
    gain_or_bias = [n for n, p in named_parameters if exclude(n, p) and p.requires_grad]
    rest = [n for n, p in named_parameters if include(n, p) and p.requires_grad]
    return gain_or_bias, rest


def make_optimizer(model):
    """open_clip_train/main.py, main(): optim.AdamW([{gain_or_bias, wd 0}, {rest, wd args.wd}], lr, betas, eps)."""
    no_decay, decay = main_param_groups(model)
    params = dict(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [
            {"params": [params[n] for n in no_decay], "weight_decay": 0.},
            {"params": [params[n] for n in decay], "weight_decay": WD},
        ],
        lr=LR,
        betas=BETAS,
        eps=EPS,
    )
    return optimizer, no_decay, decay


def wise_ft_merge(alpha, theta_0, theta_1):
    """mlfoundations/wise-ft src/wise_ft.py `_merge(alpha, theta_0, theta_1, fishers, fisher_floor)`, the
    `fishers is None` branch (what `wise_ft` runs without --fisher), verbatim:

        return {
            key: (1 - alpha) * theta_0[key] + alpha * theta_1[key]
            for key in theta_0.keys()
        }
    No key is excluded (`wise_ft` asserts both state dicts have the same keys). On float32 tensors torch computes
    f32(1 - alpha) * theta_0 + f32(alpha) * theta_1 in float32.
    """
    return {
        key: (1 - alpha) * theta_0[key] + alpha * theta_1[key]
        for key in theta_0.keys()
    }


# ----------------------------------------------------------------------------
# Model, data
# ----------------------------------------------------------------------------
def build_clip(mcfg: dict, seed: int, **kw):
    from open_clip.model import CLIP

    torch.manual_seed(seed)  # open_clip's own init draws from the global generator
    return CLIP(mcfg["embed_dim"], mcfg["vision_cfg"], mcfg["text_cfg"], quick_gelu=mcfg["quick_gelu"],
                output_dict=True, **kw)


def perturb(model, g: torch.Generator):
    """LayerNorm weight 1 + LN_STD*N / bias LN_STD*N; in_proj_bias / out_proj.bias ZERO_BIAS_STD*N. Returns names."""
    changed = []
    with torch.no_grad():
        for mod_name, module in model.named_modules():
            if isinstance(module, torch.nn.LayerNorm):
                common.draw_normal(module.weight, g, LN_STD, mean=1.0)
                common.draw_normal(module.bias, g, LN_STD)
                changed += [f"{mod_name}.weight", f"{mod_name}.bias"]
            elif isinstance(module, torch.nn.MultiheadAttention):
                common.draw_normal(module.in_proj_bias, g, ZERO_BIAS_STD)
                common.draw_normal(module.out_proj.bias, g, ZERO_BIAS_STD)
                changed += [f"{mod_name}.in_proj_bias", f"{mod_name}.out_proj.bias"]
    return changed


def make_texts(n: int, g: torch.Generator) -> torch.Tensor:
    """Rows [SOT, L-1 random ids in 1..98, EOT (=99) at position L, zeros], L uniform in [3, 15]."""
    t = torch.zeros((n, CONTEXT_LENGTH), dtype=torch.int64)
    for r in range(n):
        length = int(torch.randint(3, CONTEXT_LENGTH, (1,), generator=g))
        t[r, 1:length] = torch.randint(1, SOT_ID + 1, (length - 1,), generator=g)
        t[r, 0] = SOT_ID
        t[r, length] = EOT_ID
    return t


def make_batch(n: int, g: torch.Generator):
    return common.randn((n, 3, IMAGE_SIZE, IMAGE_SIZE), g), make_texts(n, g)


def state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------
# open_clip_train.train.train_one_epoch, called as is
# ----------------------------------------------------------------------------
class _Loader(list):
    """What train_one_epoch reads of `data['train'].dataloader`: iteration, num_batches, num_samples."""

    @property
    def num_batches(self):
        return len(self)

    @property
    def num_samples(self):
        return sum(len(b[0]) for b in self)


class _DataInfo:
    """open_clip_train.data.DataInfo's interface (data.py needs webdataset / braceexpand to import)."""

    def __init__(self, batches):
        self.dataloader = _Loader(batches)

    def set_epoch(self, epoch):
        pass


def _args(accum_freq: int, batch_size: int, grad_clip_norm):
    # The fields of open_clip_train.params.parse_args that train_one_epoch reads (one process, fp32, CPU).
    return types.SimpleNamespace(
        device="cpu", precision="fp32", distill=False, accum_freq=accum_freq, skip_scheduler=False,
        grad_clip_norm=grad_clip_norm, horovod=False, rank=0, local_rank=0, world_size=1, log_every_n_steps=1,
        batch_size=batch_size, wandb=False,
    )


class Recorder:
    def __init__(self):
        self.losses = []
        self.total_norms = []
        self.pre_clip = None  # name -> grad, seen by the last clip_grad_norm_ call
        self.at_step = None  # name -> grad at the last optimizer.step() (post clip)
        self.after_step = None  # state right after the last optimizer.step(), before the clamp


def make_loss(rec: Recorder):
    from open_clip.loss import ClipLoss

    class RecordingClipLoss(ClipLoss):
        def forward(self, *a, **kw):
            out = super().forward(*a, **kw)
            total = sum(out.values()) if isinstance(out, dict) else out
            rec.losses.append(total.detach().clone())
            return out

    return RecordingClipLoss()


@contextlib.contextmanager
def observe(model, optimizer, rec: Recorder):
    names = {id(p): n for n, p in model.named_parameters()}
    orig = torch.nn.utils.clip_grad_norm_

    def clip_grad_norm_(parameters, max_norm, *a, **kw):
        parameters = list(parameters)
        rec.pre_clip = {names[id(p)]: p.grad.detach().clone() for p in parameters if p.grad is not None}
        total = orig(parameters, max_norm, *a, **kw)
        rec.total_norms.append(total.detach().clone())
        return total

    def pre_hook(opt, args, kwargs):
        rec.at_step = {names[id(p)]: p.grad.detach().clone() for p in model.parameters() if p.grad is not None}

    def post_hook(opt, args, kwargs):
        rec.after_step = state(model)

    h1 = optimizer.register_step_pre_hook(pre_hook)
    h2 = optimizer.register_step_post_hook(post_hook)
    torch.nn.utils.clip_grad_norm_ = clip_grad_norm_
    try:
        yield
    finally:
        torch.nn.utils.clip_grad_norm_ = orig
        h1.remove()
        h2.remove()


def run_epoch(model, optimizer, scheduler, rec, batches, epoch, accum_freq, grad_clip_norm):
    """One call of open_clip_train.train.train_one_epoch over `batches` (micro-batches when accum_freq > 1)."""
    from open_clip_train.train import train_one_epoch

    loss = make_loss(rec)
    args = _args(accum_freq, len(batches[0][0]), grad_clip_norm)
    with observe(model, optimizer, rec):
        train_one_epoch(model, {"train": _DataInfo(batches)}, loss, epoch, optimizer, None, scheduler, None, args)


def chained_steps(model, batches, grad_clip_norm=GRAD_CLIP):
    """Item 5: N_STEPS optimiser steps, one batch per train_one_epoch call (epoch i: step = 1 * i + 0 = i)."""
    from open_clip_train.scheduler import cosine_lr

    optimizer, no_decay, decay = make_optimizer(model)
    scheduler = cosine_lr(optimizer, LR, WARMUP, TOTAL_STEPS)
    rec = Recorder()
    states, lrs, pre_clip = [], [], []
    for i, b in enumerate(batches):
        run_epoch(model, optimizer, scheduler, rec, [b], i, 1, grad_clip_norm)
        states.append(state(model))
        lrs.append([grp["lr"] for grp in optimizer.param_groups])
        pre_clip.append(rec.pre_clip)
    return dict(optimizer=optimizer, rec=rec, states=states, lrs=lrs, pre_clip=pre_clip, groups=(no_decay, decay))


# ----------------------------------------------------------------------------
# Per-config generation
# ----------------------------------------------------------------------------
def gen_config(name: str, cfg: dict, out_dir: pathlib.Path):
    from open_clip.loss import ClipLoss, SigLipLoss
    from open_clip_train.scheduler import cosine_lr

    d = out_dir / name
    d.mkdir(parents=True, exist_ok=True)
    common.clear_dir(d)
    mcfg = model_cfg(cfg)

    model = build_clip(mcfg, cfg["seed"])
    perturbed = perturb(model, common.generator(cfg["seed"] + 1))
    start = state(model)
    param_names = [n for n, _ in model.named_parameters()]
    assert list(start) == param_names, "state_dict must be exactly the parameters (no persistent buffers)"
    common.save_golden(d / "model.safetensors", start)
    common.write_json(d / "open_clip_config.json", {"model_cfg": mcfg, "preprocess_cfg": {}})

    def fresh(**kw):
        """A CLIP with the start weights; with init_logit_* keywords, logit_scale / logit_bias keep those."""
        m = build_clip(mcfg, cfg["seed"], **kw)
        sd = {k: v for k, v in start.items() if not (k == "logit_scale" and "init_logit_scale" in kw)}
        missing, unexpected = m.load_state_dict(sd, strict=False)
        assert not unexpected and set(missing) <= {"logit_scale", "logit_bias"}, (missing, unexpected)
        return m

    g = common.generator(cfg["data_seed"])
    batches = [make_batch(BATCH, g) for _ in range(N_STEPS)]
    accum_images, accum_texts = make_batch(ACCUM_BATCH, g)
    out = {}
    for i, (im, tx) in enumerate(batches):
        out[f"batch{i}.images"], out[f"batch{i}.texts"] = im, tx
    out["accum.images"], out["accum.texts"] = accum_images, accum_texts
    meta = dict(seed=cfg["seed"], data_seed=cfg["data_seed"], model_cfg=mcfg,
                parameters={n: list(p.shape) for n, p in model.named_parameters()}, perturbed=perturbed)

    # 1. forward + ClipLoss + gradients
    model = fresh()
    model.train()
    fo = model(*batches[0])
    loss = ClipLoss()(**fo)
    loss.backward()
    out["image_features"], out["text_features"] = fo["image_features"], fo["text_features"]
    out["logit_scale"], out["loss"] = fo["logit_scale"].reshape(()), loss.reshape(())
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad
    grads1 = {}
    for n, p in model.named_parameters():
        out[f"grad.{n}"] = grads1[n] = p.grad.clone()
    meta["forward"] = dict(loss=loss.item(), logit_scale_exp=fo["logit_scale"].item(),
                           params_without_grad=no_grad,
                           eot_positions=[int(t.argmax()) for t in batches[0][1]])

    # 2. SigLIP
    if name == "quickgelu":
        sm = fresh(init_logit_scale=SIGLIP_INIT_LOGIT_SCALE, init_logit_bias=SIGLIP_INIT_LOGIT_BIAS)
        sm.train()
        assert sm.logit_scale.item() == torch.tensor(SIGLIP_INIT_LOGIT_SCALE).float().item()
        assert sm.logit_bias.item() == SIGLIP_INIT_LOGIT_BIAS
        so = sm(*batches[0])
        sl = SigLipLoss()(**so)
        sl.backward()
        out["siglip.loss"] = sl.reshape(())
        out["siglip.logit_scale"] = so["logit_scale"].reshape(())  # exp'd: 10
        no_grad = [n for n, p in sm.named_parameters() if p.grad is None]
        assert not no_grad, no_grad
        for n, p in sm.named_parameters():
            out[f"siglip.grad.{n}"] = p.grad.clone()
        meta["siglip"] = dict(init_logit_scale=SIGLIP_INIT_LOGIT_SCALE, init_logit_bias=SIGLIP_INIT_LOGIT_BIAS,
                              loss=sl.item(), parameters=[n for n, _ in sm.named_parameters()],
                              weights="model.safetensors except logit_scale = log(10) (not the file's "
                                      "log(1/0.07)) and the extra parameter logit_bias = -10",
                              grad_logit_scale=sm.logit_scale.grad.item(), grad_logit_bias=sm.logit_bias.grad.item())

    # 3. parameter groups
    no_decay, decay = main_param_groups(fresh())
    meta["groups"] = dict(no_decay=no_decay, decay=decay, weight_decay=[0.0, WD])

    # 5. three chained steps
    model = fresh()
    r = chained_steps(model, batches)
    rec = r["rec"]
    assert r["groups"] == (no_decay, decay)
    norms = [float(t) for t in rec.total_norms]
    assert len(norms) == N_STEPS and norms[0] > GRAD_CLIP, norms
    assert all(abs(nrm / GRAD_CLIP - 1) > 0.05 for nrm in norms), norms  # clipped or not, robustly
    for i in range(N_STEPS):
        out[f"step{i}.loss"] = rec.losses[i].reshape(())
        out[f"step{i}.total_norm"] = rec.total_norms[i].reshape(())
    # step 0 starts from the start weights on batch0: its pre-clip gradients are item 1's, bit for bit
    for n in param_names:
        assert torch.equal(r["pre_clip"][0][n], grads1[n]), n
    assert torch.equal(rec.losses[0], loss.detach())
    for n, v in r["states"][0].items():
        out[f"after1.{n}"] = v
    for n, v in r["states"][-1].items():
        out[f"after3.{n}"] = v
    params = dict(model.named_parameters())
    for n in param_names:
        st = r["optimizer"].state[params[n]]
        out[f"after3.exp_avg.{n}"] = st["exp_avg"].clone()
        out[f"after3.exp_avg_sq.{n}"] = st["exp_avg_sq"].clone()
    ls = [s["logit_scale"].item() for s in r["states"]]
    meta["steps"] = dict(
        lr=[lr[0] for lr in r["lrs"]], loss=[t.item() for t in rec.losses], total_norm=norms,
        clip_coef=[min(1.0, GRAD_CLIP / (nrm + 1e-6)) for nrm in norms], clipped=[nrm > GRAD_CLIP for nrm in norms],
        logit_scale_after=ls,
    )

    # 5b. the logit_scale clamp: one step from log(100) - CLAMP_MARGIN on a batch whose gradient raises it
    clamp = None
    for k in range(64):
        cg = common.generator(cfg["data_seed"] + 1000 + k)
        cb = make_batch(CLAMP_BATCH, cg)
        m = fresh()
        with torch.no_grad():
            m.logit_scale.fill_(math.log(100) - CLAMP_MARGIN)
        before = m.logit_scale.detach().clone()
        optimizer, _, _ = make_optimizer(m)
        scheduler = cosine_lr(optimizer, LR, WARMUP, TOTAL_STEPS)
        crec = Recorder()
        run_epoch(m, optimizer, scheduler, crec, [cb], 0, 1, GRAD_CLIP)
        unclamped = crec.after_step["logit_scale"]
        if unclamped.item() > math.log(100):
            clamp = dict(batch=cb, before=before, unclamped=unclamped, after=m.logit_scale.detach().clone(),
                         grad=crec.pre_clip["logit_scale"], tries=k + 1, lr=optimizer.param_groups[0]["lr"],
                         loss=crec.losses[0].item(), total_norm=float(crec.total_norms[0]))
            break
    assert clamp is not None, "no batch raised logit_scale above log(100)"
    assert clamp["after"].item() == torch.tensor(math.log(100), dtype=torch.float32).item()
    out["clamp.images"], out["clamp.texts"] = clamp["batch"]
    out["clamp.before"], out["clamp.unclamped"], out["clamp.after"] = clamp["before"], clamp["unclamped"], clamp["after"]
    out["clamp.grad_logit_scale"] = clamp["grad"]
    meta["clamp"] = dict(
        batch=CLAMP_BATCH, data_seed=cfg["data_seed"] + 1000 + clamp["tries"] - 1, batch_tries=clamp["tries"], step=0, lr=clamp["lr"],
        loss=clamp["loss"], total_norm=clamp["total_norm"], before=clamp["before"].item(),
        unclamped=clamp["unclamped"].item(), after=clamp["after"].item(), grad_logit_scale=clamp["grad"].item(),
        log100_f32=clamp["after"].item(),
        note="same weights and optimiser as item 5 (fresh AdamW, cosine_lr step 0 -> lr 5e-4, GRAD_CLIP), "
             "logit_scale set to log(100) - 1e-4; data seeds data_seed+1000+k tried in order until the first "
             "whose gradient on logit_scale is negative (AdamW's first step moves it by ~lr > 1e-4). Batch of 2: "
             "with 6 random pairs the gradient was positive in all 64 draws tried (matching pairs are not more "
             "similar than the others at init, so a larger scale only sharpens wrong guesses).",
    )

    # 6. feature-cached accumulation vs the plain batch of 8 (no clipping; gradients at optimizer.step())
    def accum_grads(accum_freq):
        m = fresh()
        optimizer, _, _ = make_optimizer(m)
        scheduler = cosine_lr(optimizer, LR, WARMUP, TOTAL_STEPS)
        arec = Recorder()
        mb = ACCUM_BATCH // accum_freq
        micro = [(accum_images[j * mb:(j + 1) * mb], accum_texts[j * mb:(j + 1) * mb]) for j in range(accum_freq)]
        run_epoch(m, optimizer, scheduler, arec, micro, 0, accum_freq, None)
        assert arec.total_norms == []  # grad_clip_norm None: clip_grad_norm_ is not called
        return arec.at_step, [t.item() for t in arec.losses]

    plain, plain_losses = accum_grads(1)
    assert sorted(plain) == sorted(param_names)
    for n in param_names:
        out[f"plain8.grad.{n}"] = plain[n]
    meta["accum"] = dict(plain8_loss=plain_losses, micro_batch_losses={})
    diffs = {}
    for af in ACCUM_FREQS:
        grads, losses = accum_grads(af)
        assert sorted(grads) == sorted(param_names)
        meta["accum"]["micro_batch_losses"][str(af)] = losses
        for n in param_names:
            out[f"accum{af}.grad.{n}"] = grads[n]
        diffs[str(af)] = {n: common.max_abs(grads[n], plain[n]) for n in param_names}
        diffs[f"{af}_logit_scale_ratio"] = (grads["logit_scale"].double() / plain["logit_scale"].double()).item()
    meta["accum"]["max_abs_diff_vs_plain8"] = diffs
    meta["accum"]["note"] = (
        "train_one_epoch's accum_freq > 1 branch: a no_grad forward of every micro-batch caches the features, then "
        "each micro-batch is re-run with grad and ClipLoss is taken over the whole logical batch (cached features "
        "of the other micro-batches as negatives), backward() per micro-batch, no division by accum_freq. The "
        "tower gradients therefore equal the plain batch-8 gradients (up to float order); logit_scale's gradient "
        "is the full-batch one accumulated accum_freq times (ratio ~ accum_freq), as open_clip does.")

    # 7. LiT locks
    lock_image, lock_text = {}, {}
    for ng in LOCK_IMAGE_GROUPS:
        m = fresh()
        m.lock_image_tower(unlocked_groups=ng, freeze_bn_stats=False)
        lock_image[str(ng)] = [n for n, p in m.named_parameters() if not p.requires_grad]
    for nl in LOCK_TEXT_LAYERS:
        m = fresh()
        m.lock_text_tower(unlocked_layers=nl, freeze_layer_norm=True)
        lock_text[str(nl)] = [n for n, p in m.named_parameters() if not p.requires_grad]
    try:
        fresh().lock_text_tower(unlocked_layers=0, freeze_layer_norm=False)
        unfrozen_ln = "accepted"
    except AssertionError as e:
        unfrozen_ln = f"AssertionError: {e}"
    meta["lock_image"] = lock_image
    meta["lock_text"] = lock_text
    meta["lock_text_freeze_layer_norm_false"] = unfrozen_ln

    m = fresh()
    m.lock_image_tower(unlocked_groups=LIT_GROUPS, freeze_bn_stats=False)
    locked = [n for n, p in m.named_parameters() if not p.requires_grad]
    assert locked == lock_image[str(LIT_GROUPS)]
    lr_ = chained_steps(m, batches)
    for n, v in lr_["states"][-1].items():
        out[f"lit1.after3.{n}"] = v
        if n in locked:
            assert torch.equal(v, start[n]), n
        else:
            assert not torch.equal(v, start[n]), n
    lnorms = [float(t) for t in lr_["rec"].total_norms]
    assert lnorms[0] > GRAD_CLIP and all(abs(nrm / GRAD_CLIP - 1) > 0.05 for nrm in lnorms), lnorms
    meta["lit1"] = dict(
        lock_image_unlocked_groups=LIT_GROUPS, locked=locked, groups=dict(no_decay=lr_["groups"][0],
                                                                          decay=lr_["groups"][1]),
        loss=[t.item() for t in lr_["rec"].losses], total_norm=lnorms, clipped=[nrm > GRAD_CLIP for nrm in lnorms],
        note="locked parameters are left out of the optimiser (requires_grad False) and get no gradient; "
             "clip_grad_norm_(model.parameters()) skips them (grad None), so total_norm covers the trainable ones.")

    # 8. WiSE-FT
    if name == "quickgelu":
        theta_1 = r["states"][-1]
        for alpha in WISE_ALPHAS:
            merged = wise_ft_merge(alpha, start, theta_1)
            for n, v in merged.items():
                out[f"wise{alpha}.{n}"] = v
        meta["wise"] = dict(alphas=list(WISE_ALPHAS), theta_0="model.safetensors", theta_1="after3.*",
                            excluded_keys=[])

    common.save_golden(d / "golden.safetensors", out)
    prefixes = {}
    suffixes = sorted((f".{n}" for n in param_names + ["logit_bias"]), key=len, reverse=True)
    for k in out:
        pre = next((k[:-len(sfx)] + ".<name>" for sfx in suffixes if k.endswith(sfx) and k != sfx[1:]), k)
        prefixes[pre] = prefixes.get(pre, 0) + 1
    meta["golden_keys"] = dict(count=len(out), groups=prefixes,
                               note="<group>.<parameter name> for the per-parameter groups; float32 except "
                                    "*.texts (int64)")
    meta["tolerance"] = TOL
    meta["versions"] = common.versions()
    common.write_json(d / "manifest.json", meta)
    return meta


# ----------------------------------------------------------------------------
# Schedules (item 4) and init statistics (item 9)
# ----------------------------------------------------------------------------
def schedules():
    from open_clip_train import scheduler as sch

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    fns = {
        "cosine_lr": sch.cosine_lr(opt, LR, WARMUP, TOTAL_STEPS),
        "const_lr": sch.const_lr(opt, LR, WARMUP, TOTAL_STEPS),
        "const_lr_cooldown": sch.const_lr_cooldown(opt, LR, WARMUP, TOTAL_STEPS, COOLDOWN_STEPS, COOLDOWN_POWER,
                                                   COOLDOWN_END_LR),
    }
    out = {}
    for k, fn in fns.items():
        lrs = []
        for step in range(TOTAL_STEPS):
            lr = fn(step)
            assert opt.param_groups[0]["lr"] == lr
            lrs.append(lr)
        out[k] = lrs
    return dict(base_lr=LR, warmup_length=WARMUP, steps=TOTAL_STEPS, cooldown_steps=COOLDOWN_STEPS,
                cooldown_power=COOLDOWN_POWER, cooldown_end_lr=COOLDOWN_END_LR, lrs=out["cosine_lr"], **out,
                note="lr at steps 0..steps-1; warmup lr = base_lr * (step + 1) / warmup_length")


def init_rule(name: str, shape, cfg: dict):
    """(rule text, implied std or None, implied mean) of open_clip 3.3.0 CLIP's init for one parameter."""
    vw, tw = cfg["vision_cfg"]["width"], cfg["text_cfg"]["width"]
    tl = cfg["text_cfg"]["layers"]
    if name == "logit_scale":
        return "constant log(1/0.07) (CLIP init_logit_scale)", 0.0, math.log(1 / 0.07)
    if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")):
        return "ones (nn.LayerNorm)", 0.0, 1.0
    if name.endswith(("ln_1.bias", "ln_2.bias", "ln_pre.bias", "ln_post.bias", "ln_final.bias")):
        return "zeros (nn.LayerNorm)", 0.0, 0.0
    if name.endswith(("attn.in_proj_bias", "attn.out_proj.bias")):
        return "zeros (nn.MultiheadAttention._reset_parameters)", 0.0, 0.0
    if name.startswith("visual."):
        s = vw ** -0.5
        if name in ("visual.class_embedding", "visual.positional_embedding", "visual.proj"):
            return f"normal std width^-0.5 = {s:.6g} (VisionTransformer: scale * torch.randn)", s, 0.0
        if name == "visual.conv1.weight":
            fan_in = 3 * cfg["vision_cfg"]["patch_size"] ** 2
            return (f"kaiming_uniform a=sqrt(5) = uniform(+-1/sqrt(fan_in)), fan_in {fan_in} (nn.Conv2d default)",
                    1 / math.sqrt(3 * fan_in), 0.0)
        if name.endswith("attn.in_proj_weight"):
            b = math.sqrt(6 / (vw + 3 * vw))
            return (f"xavier_uniform on [3W, W] = uniform(+-sqrt(6/(W+3W))) (nn.MultiheadAttention)",
                    b / math.sqrt(3), 0.0)
        if name.endswith(("attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")):
            fan_in = shape[1]
            return (f"kaiming_uniform a=sqrt(5) = uniform(+-1/sqrt(fan_in)), fan_in {fan_in} (nn.Linear default; "
                    "VisionTransformer.init_parameters is a no-op)", 1 / math.sqrt(3 * fan_in), 0.0)
        if name.endswith(("mlp.c_fc.bias", "mlp.c_proj.bias")):
            fan_in = vw if name.endswith("c_fc.bias") else 4 * vw
            return f"uniform(+-1/sqrt(fan_in)), fan_in {fan_in} (nn.Linear default)", 1 / math.sqrt(3 * fan_in), 0.0
    else:
        proj_std = tw ** -0.5 * (2 * tl) ** -0.5
        attn_std = tw ** -0.5
        fc_std = (2 * tw) ** -0.5
        if name == "token_embedding.weight":
            return "normal std 0.02 (TextTransformer.init_parameters)", 0.02, 0.0
        if name == "positional_embedding":
            return "normal std 0.01 (TextTransformer.init_parameters)", 0.01, 0.0
        if name == "text_projection":
            return f"normal std width^-0.5 = {tw ** -0.5:.6g} (TextTransformer.init_parameters)", tw ** -0.5, 0.0
        if name.endswith("attn.in_proj_weight"):
            return f"normal std width^-0.5 = {attn_std:.6g} (attn_std, TextTransformer.init_parameters)", attn_std, 0.0
        if name.endswith(("attn.out_proj.weight", "mlp.c_proj.weight")):
            return (f"normal std width^-0.5 * (2*layers)^-0.5 = {proj_std:.6g} (proj_std, "
                    "TextTransformer.init_parameters)", proj_std, 0.0)
        if name.endswith("mlp.c_fc.weight"):
            return f"normal std (2*width)^-0.5 = {fc_std:.6g} (fc_std, TextTransformer.init_parameters)", fc_std, 0.0
        if name.endswith(("mlp.c_fc.bias", "mlp.c_proj.bias")):
            fan_in = tw if name.endswith("c_fc.bias") else 4 * tw
            return f"uniform(+-1/sqrt(fan_in)), fan_in {fan_in} (nn.Linear default)", 1 / math.sqrt(3 * fan_in), 0.0
    raise KeyError(name)


def init_stats():
    per = {}
    for seed in INIT_SEEDS:
        m = build_clip(INIT_CFG, seed)
        for n, p in m.named_parameters():
            t = p.detach().double().flatten()
            s = per.setdefault(n, dict(shape=list(p.shape), numel=p.numel(), mean=[], std=[]))
            s["mean"].append(t.mean().item())
            s["std"].append(t.std().item() if t.numel() > 1 else 0.0)
    params = {}
    for n, s in per.items():
        rule, std, mean = init_rule(n, s["shape"], INIT_CFG)
        e = dict(shape=s["shape"], numel=s["numel"], mean=float(np.mean(s["mean"])), std=float(np.mean(s["std"])),
                 rule=rule, expected_mean=mean, expected_std=std)
        # sanity: the rule describes what open_clip did (loose: a few standard errors, all seeds pooled)
        k = len(INIT_SEEDS) * s["numel"]
        if std == 0.0:
            assert abs(e["mean"] - mean) < 1e-6 and e["std"] < 1e-6, (n, e)
        else:
            assert abs(e["mean"] - mean) < 6 * std / math.sqrt(k), (n, e)
            assert abs(e["std"] / std - 1) < 6 / math.sqrt(2 * max(k - 1, 1)) + 0.01, (n, e)
        params[n] = e
    return dict(config=INIT_CFG, seeds=list(INIT_SEEDS),
                note="open_clip.model.CLIP's own init (torch.manual_seed(seed), then the constructor), no "
                     "perturbation. mean / std: per parameter over all its elements (std unbiased), then averaged "
                     "over the seeds. expected_std: the std the rule implies (uniform(+-b) -> b/sqrt(3)).",
                parameters=params)


# ----------------------------------------------------------------------------
def main(out_dir: pathlib.Path = DEFAULT_OUT) -> None:
    import open_clip_train
    from open_clip_train import scheduler as _sch, train as _train

    out_dir = pathlib.Path(out_dir)
    common.clear_dir(out_dir)
    torch.set_num_threads(1)
    configs = {}
    for name, cfg in CONFIGS.items():
        meta = gen_config(name, cfg, out_dir)
        configs[name] = dict(model_cfg=meta["model_cfg"], seed=cfg["seed"], data_seed=cfg["data_seed"])
    common.write_json(out_dir / "init_stats.json", init_stats())
    versions = common.versions()
    versions["open_clip_train"] = f"shipped in open_clip_torch {versions.get('open_clip')} " \
                                  f"({pathlib.Path(open_clip_train.__file__).parent.name}/)"
    manifest = {
        "reference": "open_clip 3.3.0: open_clip.model.CLIP, open_clip.loss.ClipLoss / SigLipLoss, "
                     "CLIP.lock_image_tower / lock_text_tower; open_clip_train.train.train_one_epoch and "
                     "open_clip_train.scheduler.cosine_lr / const_lr / const_lr_cooldown (called); "
                     "open_clip_train/main.py parameter groups and mlfoundations/wise-ft src/wise_ft.py _merge "
                     "(transcribed, see the generator)",
        "sources": {"open_clip_train.train": "open_clip_train/" + pathlib.Path(_train.__file__).name
                                             + " (open_clip_torch 3.3.0 wheel), train_one_epoch, called",
                    "open_clip_train.scheduler": "open_clip_train/" + pathlib.Path(_sch.__file__).name
                                                 + " (open_clip_torch 3.3.0 wheel), called",
                    "open_clip_train.main": "open_clip_train/main.py main(): the AdamW parameter-group rule, "
                                            "transcribed (main.py needs braceexpand / webdataset to import)",
                    "wise_ft": "github:mlfoundations/wise-ft@58b7a4b343b09dc06606aa929c2ef51accced8d1 src/wise_ft.py"},
        "versions": versions,
        "configs": configs,
        "training": dict(
            batch=BATCH, steps=N_STEPS, optimizer="torch.optim.AdamW([{no_decay, weight_decay 0}, {decay, "
            "weight_decay wd}], lr, betas, eps)", lr=LR, weight_decay=WD, betas=list(BETAS), eps=EPS,
            scheduler="cosine_lr", warmup=WARMUP, total_steps=TOTAL_STEPS, grad_clip_norm=GRAD_CLIP,
            clip="torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP, norm_type=2.0): "
                 "total = ||(||g_p||_2)_p||_2, coef = min(1, GRAD_CLIP / (total + 1e-6)), g *= coef",
            clamp="after optimizer.step(): logit_scale.clamp_(0, math.log(100))",
            order="per step: scheduler(step) sets lr on both groups, zero_grad, forward, ClipLoss, backward, "
                  "clip_grad_norm_, optimizer.step, clamp",
            accum_batch=ACCUM_BATCH, accum_freqs=list(ACCUM_FREQS)),
        "schedule": schedules(),
        "perturbation": dict(layernorm_std=LN_STD, zero_bias_std=ZERO_BIAS_STD,
                             note="after open_clip's init: every LayerNorm weight 1 + 0.1 N, bias 0.1 N; every "
                                  "attention in_proj_bias / out_proj.bias 0.05 N (zero after the init)"),
        "texts": "int64 [B, 16]: SOT 98 at 0, random ids 1..98 at 1..L-1, EOT 99 at L (L in [3, 15]), zeros after",
        "files": {n: ["model.safetensors", "open_clip_config.json", "golden.safetensors", "manifest.json"]
                  for n in CONFIGS} | {"init_stats": "init_stats.json"},
        "tolerance": TOL,
        "note": "float32 on CPU, one thread. Per-config details (groups, steps, clamp, accumulation "
                "differences, lock lists) in <config>/manifest.json.",
    }
    common.write_json(out_dir / "manifest.json", manifest)
    total = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    for name in CONFIGS:
        common.report_size(out_dir / name, f"clip_train/{name}", max_kib=1000)
    common.report_size(out_dir, "clip_train (top level)", max_kib=100)
    print(f"clip_train fixtures: {total / 1024:.1f} KiB in total")
    assert total < 2 * 1024 * 1024, total


if __name__ == "__main__":
    common.run_standalone(main, DEFAULT_OUT)
