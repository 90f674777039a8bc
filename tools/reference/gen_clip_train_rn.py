"""Golden fixtures for CLIP training with a ResNet image tower (open_clip's `ModifiedResNet`, the `RN50`
family), from open_clip's own code: BatchNorm in training mode, its running statistics, the attention pool.

Writes into <out_dir> (default: crates/vista/tests/fixtures/clip_train_rn/):

  * model.safetensors       the starting weights: `open_clip.model.CLIP(...).state_dict()` exactly, BatchNorm
                            buffers included (`running_mean`, `running_var` float32; `num_batches_tracked` int64,
                            as every released RN checkpoint has them)
  * open_clip_config.json   {"model_cfg": {embed_dim, vision_cfg (layers as a list), text_cfg, quick_gelu}}
  * golden.safetensors      inputs and reference values (float32 except the int64 `*.texts`):
      batch{i}.images [4,3,64,64], batch{i}.texts [4,16]   i = 0, 1
      accum.images [8,3,64,64], accum.texts [8,16]         the logical batch of item 4
      1. model.train(), CLIP.forward on batch0 + ClipLoss + backward, from the start
        image_features, text_features [4,24], loss []
        grad.<param>                   every parameter
        train1.<bn>.running_mean/var   the running statistics after that one training forward
      2. two chained optimiser steps (open_clip_train.train.train_one_epoch, accum_freq 1, batch0 then batch1;
         AdamW with main.py's groups, cosine_lr, clip_grad_norm_, logit_scale clamp)
        step{i}.loss [], step{i}.total_norm []
        after2.<key>                   the whole state dict after the second step (parameters and buffers)
      3. model.eval() after item 2: encode_image(batch0.images), not normalised
        eval.image_embeds [4,24]       (BatchNorm by the running statistics)
      4. feature-cached accumulation (accum_freq 2, micro-batches of 4 of accum.*), from the start
        accum2.grad.<param>            the gradients when optimizer.step() is reached (no clipping)
        accum2.<bn>.running_mean/var   the running statistics then: train_one_epoch's no-grad caching pass runs the
                                       model in training mode too, so each micro-batch moves them twice
  * manifest.json: versions, the config, parameter names, groups, lock lists, the step values, tolerances.

Reference code: open_clip 3.3.0 and its open_clip_train (the same wheel), called through the helpers of
gen_clip_train.py (train_one_epoch as is, the transcribed main.py parameter groups). Perturbation after
open_clip's init, so no norm, bias or statistic can be skipped: every BatchNorm weight 1 + 0.1 N (the
bottlenecks' bn3 start at zero), bias 0.1 N, running_mean 0.1 N, running_var 1 + 0.1 |N|; LayerNorms and the
text attention biases as gen_clip_train.py perturbs them.

Usable standalone (`python tools/reference/gen_clip_train_rn.py [out_dir]`) or as `main(out_dir)`.
"""

from __future__ import annotations

import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402
import gen_clip_train as base  # noqa: E402

DEFAULT_OUT = common.FIXTURES_ROOT / "clip_train_rn"

# 64 px in (the tower's total stride is 32: a 2x2 map into the attention pool, 5 tokens), stages [1,1,1,1] of
# width 4 (stem 2 -> 2 -> 4 channels, stage outputs 16 .. 128), the pool 128 wide in 4 heads of 32, embed 24.
MODEL_CFG = dict(
    embed_dim=base.EMBED_DIM,
    vision_cfg=dict(image_size=64, layers=[1, 1, 1, 1], width=4, head_width=32),
    text_cfg=dict(context_length=base.CONTEXT_LENGTH, vocab_size=base.VOCAB_SIZE, width=base.TEXT_WIDTH,
                  heads=base.TEXT_HEADS, layers=2),
    quick_gelu=True,
)
SEED, DATA_SEED = 5301, 5302
BATCH, N_STEPS, ACCUM_BATCH, ACCUM_FREQ = 4, 2, 8, 2
BN_STD = 0.1
TOL = {"forward": 1e-5, "loss": 1e-5, "grad": 1e-5, "running": 1e-5, "total_norm": 1e-5, "step": 1e-5,
       "eval": 1e-5, "accum_grad": 1e-5}


def perturb_bn(model, g: torch.Generator):
    names = []
    with torch.no_grad():
        for mod_name, module in model.named_modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                common.draw_normal(module.weight, g, BN_STD, mean=1.0)
                common.draw_normal(module.bias, g, BN_STD)
                common.draw_normal(module.running_mean, g, BN_STD)
                module.running_var.copy_(1.0 + BN_STD * torch.randn(module.running_var.shape, generator=g).abs())
                names.append(mod_name)
    return names


def make_batch(n: int, g: torch.Generator):
    size = MODEL_CFG["vision_cfg"]["image_size"]
    return common.randn((n, 3, size, size), g), base.make_texts(n, g)


def running(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if k.endswith(("running_mean", "running_var"))}


def main(out_dir: pathlib.Path = DEFAULT_OUT):
    from open_clip.loss import ClipLoss
    from open_clip_train.scheduler import cosine_lr

    torch.set_num_threads(1)
    out_dir.mkdir(parents=True, exist_ok=True)
    common.clear_dir(out_dir)
    model = base.build_clip(MODEL_CFG, SEED)
    g = common.generator(SEED + 1)
    bns = perturb_bn(model, g)
    perturbed = base.perturb(model, g)
    start = base.state(model)
    param_names = [n for n, _ in model.named_parameters()]
    common.save_golden(out_dir / "model.safetensors", start)
    common.write_json(out_dir / "open_clip_config.json", {"model_cfg": MODEL_CFG, "preprocess_cfg": {}})

    def fresh():
        m = base.build_clip(MODEL_CFG, SEED)
        m.load_state_dict(start)
        return m

    g = common.generator(DATA_SEED)
    batches = [make_batch(BATCH, g) for _ in range(N_STEPS)]
    accum_images, accum_texts = make_batch(ACCUM_BATCH, g)
    out = {}
    for i, (im, tx) in enumerate(batches):
        out[f"batch{i}.images"], out[f"batch{i}.texts"] = im, tx
    out["accum.images"], out["accum.texts"] = accum_images, accum_texts
    meta = dict(seed=SEED, data_seed=DATA_SEED, model_cfg=MODEL_CFG, batchnorms=bns, perturbed=perturbed,
                parameters={n: list(p.shape) for n, p in model.named_parameters()},
                buffers=[k for k in start if k not in param_names])

    # 1. one training-mode forward, ClipLoss, backward
    m = fresh()
    m.train()
    fo = m(*batches[0])
    loss = ClipLoss()(**fo)
    loss.backward()
    out["image_features"], out["text_features"] = fo["image_features"], fo["text_features"]
    out["loss"] = loss.reshape(())
    assert all(p.grad is not None for p in m.parameters())
    for n, p in m.named_parameters():
        out[f"grad.{n}"] = p.grad.clone()
    for k, v in running(base.state(m)).items():
        out[f"train1.{k}"] = v
    meta["forward"] = dict(loss=loss.item())

    # 2. two chained steps
    m = fresh()
    r = base.chained_steps(m, batches)
    rec = r["rec"]
    for i in range(N_STEPS):
        out[f"step{i}.loss"] = rec.losses[i].reshape(())
        out[f"step{i}.total_norm"] = rec.total_norms[i].reshape(())
    after = r["states"][-1]
    for k, v in after.items():
        if v.dtype == torch.float32:
            out[f"after2.{k}"] = v
    norms = [float(t) for t in rec.total_norms]
    meta["steps"] = dict(lr=[lr[0] for lr in r["lrs"]], loss=[t.item() for t in rec.losses], total_norm=norms,
                         clipped=[nrm > base.GRAD_CLIP for nrm in norms], groups=dict(no_decay=r["groups"][0],
                                                                                     decay=r["groups"][1]))

    # 3. evaluation mode after the steps
    m.eval()
    with torch.no_grad():
        out["eval.image_embeds"] = m.encode_image(batches[0][0])

    # 4. feature-cached accumulation
    m = fresh()
    optimizer, _, _ = base.make_optimizer(m)
    scheduler = cosine_lr(optimizer, base.LR, base.WARMUP, base.TOTAL_STEPS)
    arec = base.Recorder()
    mb = ACCUM_BATCH // ACCUM_FREQ
    micro = [(accum_images[j * mb:(j + 1) * mb], accum_texts[j * mb:(j + 1) * mb]) for j in range(ACCUM_FREQ)]
    base.run_epoch(m, optimizer, scheduler, arec, micro, 0, ACCUM_FREQ, None)
    for n in param_names:
        out[f"accum2.grad.{n}"] = arec.at_step[n]
    for k, v in running(arec.after_step).items():
        out[f"accum2.{k}"] = v
    meta["accum"] = dict(accum_freq=ACCUM_FREQ, micro_batch=mb, losses=[t.item() for t in arec.losses])

    # the image-tower lock: everything, and no partial unlocking
    lm = fresh()
    lm.lock_image_tower(unlocked_groups=0, freeze_bn_stats=False)
    meta["lock_image_0"] = [n for n, p in lm.named_parameters() if not p.requires_grad]
    try:
        fresh().lock_image_tower(unlocked_groups=1, freeze_bn_stats=False)
        meta["lock_image_1"] = "accepted"
    except AssertionError as e:
        meta["lock_image_1"] = f"AssertionError: {e}"

    common.save_golden(out_dir / "golden.safetensors", out)
    meta["tolerance"] = TOL
    meta["training"] = dict(batch=BATCH, steps=N_STEPS, lr=base.LR, weight_decay=base.WD, betas=list(base.BETAS),
                            eps=base.EPS, warmup=base.WARMUP, total_steps=base.TOTAL_STEPS,
                            grad_clip_norm=base.GRAD_CLIP)
    meta["versions"] = common.versions()
    common.write_json(out_dir / "manifest.json", meta)
    common.report_size(out_dir, "clip_train_rn", max_kib=3000)


if __name__ == "__main__":
    common.run_standalone(main, DEFAULT_OUT)
