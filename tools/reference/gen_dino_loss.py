"""Golden fixtures for DINO's training step: head, loss, centre, gradients, clipping, last-layer freeze, AdamW, EMA.

Writes into <out_dir> (default: crates/vista/tests/fixtures/dino_loss/):

  * <case>.safetensors for case in ("nll1", "nll0") -- norm_last_layer True / False -- with
      - x_student [ncrops * B, IN_DIM], x_teacher [2 * B, IN_DIM]: the head inputs (backbone CLS features);
        the teacher sees the two global views, perturbed (its backbone differs from the student's)
      - center_init [1, OUT_DIM]: the DINOLoss centre before the first step (random, as mid-training)
      - student.<name> / teacher.<name>: the initial head parameters (DINO's state-dict names)
      - then for every iteration k = 0..N_STEPS-1 of a faithful `train_one_epoch` loop (one process, fp32):
          it<k>.student_output, it<k>.teacher_output   head outputs
          it<k>.loss, it<k>.teacher_entropy, it<k>.kl  scalars (shape [])
          it<k>.grad.<name>                            after loss.backward() (only parameters with a grad)
          it<k>.norms                                  the per-parameter norms clip_gradients returns
          it<k>.clipped.<name>                         after utils.clip_gradients(student, CLIP)
          it0.mixed_norms, it0.clipped_mixed.<name>    clip_gradients(student, CLIP_MIXED), then the gradients restored:
                                                       some parameters clipped, some not
          it<k>.final.<name>                           after utils.cancel_gradients_last_layer (absent = None)
          it<k>.student.<name>                         after optimizer.step()
          it<k>.teacher.<name>                         after the EMA update
          it<k>.center                                 after DINOLoss.update_center
          it<k>.exp_avg.<name>, it<k>.exp_avg_sq.<name> AdamW state after the step
  * manifest.json: configuration, per-iteration lr / wd / momentum / epoch, parameter groups, freeze, tolerances.

The classes and functions below are facebookresearch/dino's (vision_transformer.DINOHead, utils.trunc_normal_,
main_dino.DINOLoss, utils.get_params_groups / clip_gradients / cancel_gradients_last_layer, the EMA of
train_one_epoch), copied verbatim except `DINOLoss.update_center` without `dist.all_reduce` (world size 1).
The optimizer is torch.optim.AdamW(params_groups) with its defaults, lr / weight decay set per iteration as
train_one_epoch sets them.

Usable standalone (`python tools/reference/gen_dino_loss.py [out_dir]`) or as a gen_fixtures-style `main(out_dir)`.
"""

from __future__ import annotations

import math
import pathlib
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

DEFAULT_OUT = common.FIXTURES_ROOT / "dino_loss"

IN_DIM, HIDDEN_DIM, BOTTLENECK_DIM, OUT_DIM, NLAYERS = 16, 32, 8, 24, 3
BATCH = 4
NCROPS = 2 + 3  # 2 global + 3 local crops
WARMUP_TEACHER_TEMP, TEACHER_TEMP, WARMUP_TEACHER_TEMP_EPOCHS, NEPOCHS = 0.04, 0.07, 3, 5
STUDENT_TEMP, CENTER_MOMENTUM = 0.1, 0.9
CLIP = 0.05
CLIP_MIXED = 2.5  # iteration 0 only, on a copy: between the gradient norms, so both branches of clip_gradients run
N_STEPS = 3
# (epoch, lr, weight decay, teacher momentum) per iteration: epochs 1, 1, 2 exercise the temperature warmup
# (0.055, 0.055, 0.07). lr * wd is large on purpose so that decoupled weight decay is far above the tolerance.
ITERS = [(1, 5e-3, 0.3, 0.996), (1, 4e-3, 0.35, 0.997), (2, 3e-3, 0.4, 0.998)]
# last-layer freeze: nll1 freezes while epoch < 2 (iterations 0, 1 frozen, 2 not), nll0 never (freeze 0)
# bn1: main_dino's --use_bn_in_head (BatchNorm1d after each hidden linear layer, training mode in both heads; its
# running statistics start away from 0 / 1 so that reading them is checked, and move with every forward)
CASES = {"nll1": dict(norm_last_layer=True, freeze_last_layer=2, seed=7101),
         "nll0": dict(norm_last_layer=False, freeze_last_layer=0, seed=7102),
         "bn1": dict(norm_last_layer=True, freeze_last_layer=2, seed=7103, use_bn=True)}

TOL = {
    "forward": 1e-5, "loss": 1e-5, "diagnostics": 1e-5, "grad": 1e-5, "clip": 1e-6, "center": 1e-6,
    "adamw": 1e-6, "ema": 1e-6, "chain": 1e-5,
}


# ----------------------------------------------------------------------------
# facebookresearch/dino, verbatim
# ----------------------------------------------------------------------------
def _no_grad_trunc_normal_(tensor, mean, std, a, b):
    # Cut & paste from PyTorch official master until it's in a few official releases - RW
    # Method based on https://people.sc.fsu.edu/~jburkardt/presentations/truncated_normal.pdf
    def norm_cdf(x):
        # Computes standard normal cumulative distribution function
        return (1. + math.erf(x / math.sqrt(2.))) / 2.

    with torch.no_grad():
        l = norm_cdf((a - mean) / std)
        u = norm_cdf((b - mean) / std)
        tensor.uniform_(2 * l - 1, 2 * u - 1)
        tensor.erfinv_()
        tensor.mul_(std * math.sqrt(2.))
        tensor.add_(mean)
        tensor.clamp_(min=a, max=b)
        return tensor


def trunc_normal_(tensor, mean=0., std=1., a=-2., b=2.):
    # type: (Tensor, float, float, float, float) -> Tensor
    return _no_grad_trunc_normal_(tensor, mean, std, a, b)


class DINOHead(nn.Module):
    def __init__(self, in_dim, out_dim, use_bn=False, norm_last_layer=True, nlayers=3, hidden_dim=2048,
                 bottleneck_dim=256):
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers = [nn.Linear(in_dim, hidden_dim)]
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            for _ in range(nlayers - 2):
                layers.append(nn.Linear(hidden_dim, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.weight_g.data.fill_(1)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad = False

    def _init_weights(self, m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        x = self.mlp(x)
        x = nn.functional.normalize(x, dim=-1, p=2)
        x = self.last_layer(x)
        return x


class DINOLoss(nn.Module):
    def __init__(self, out_dim, ncrops, warmup_teacher_temp, teacher_temp,
                 warmup_teacher_temp_epochs, nepochs, student_temp=0.1,
                 center_momentum=0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.ncrops = ncrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        # we apply a warm up for the teacher temperature because
        # a too high temperature makes the training instable at the beginning
        self.teacher_temp_schedule = np.concatenate((
            np.linspace(warmup_teacher_temp,
                        teacher_temp, warmup_teacher_temp_epochs),
            np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp
        ))

    def forward(self, student_output, teacher_output, epoch):
        """
        Cross-entropy between softmax outputs of the teacher and student networks.
        """
        student_out = student_output / self.student_temp
        student_out = student_out.chunk(self.ncrops)

        # teacher centering and sharpening
        temp = self.teacher_temp_schedule[epoch]
        teacher_out = F.softmax((teacher_output - self.center) / temp, dim=-1)
        teacher_out = teacher_out.detach().chunk(2)

        total_loss = 0
        n_loss_terms = 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    # we skip cases where student and teacher operate on the same view
                    continue
                loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
                total_loss += loss.mean()
                n_loss_terms += 1
        total_loss /= n_loss_terms
        self.update_center(teacher_output)
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output):
        """
        Update center used for teacher output.
        """
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True)
        # dist.all_reduce(batch_center): one process
        batch_center = batch_center / (len(teacher_output) * 1)  # dist.get_world_size() == 1

        # ema update
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)


def get_params_groups(model):
    regularized = []
    not_regularized = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # we do not regularize biases nor Norm parameters
        if name.endswith(".bias") or len(param.shape) == 1:
            not_regularized.append(param)
        else:
            regularized.append(param)
    return [{'params': regularized}, {'params': not_regularized, 'weight_decay': 0.}]


def clip_gradients(model, clip):
    norms = []
    for name, p in model.named_parameters():
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            norms.append(param_norm.item())
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)
    return norms


def cancel_gradients_last_layer(epoch, model, freeze_last_layer):
    if epoch >= freeze_last_layer:
        return
    for n, p in model.named_parameters():
        if "last_layer" in n:
            p.grad = None


# ----------------------------------------------------------------------------
# Diagnostics (not in DINO): teacher entropy and KL(teacher || student), with the centre before the update
# ----------------------------------------------------------------------------
@torch.no_grad()
def diagnostics(dino_loss, student_output, teacher_output, epoch):
    temp = dino_loss.teacher_temp_schedule[epoch]
    t_logits = (teacher_output - dino_loss.center) / temp
    p = F.softmax(t_logits, dim=-1)
    log_p = F.log_softmax(t_logits, dim=-1)
    entropy = (-(p * log_p).sum(-1)).mean()
    s = (student_output / dino_loss.student_temp).chunk(dino_loss.ncrops)
    p_chunks, log_p_chunks = p.chunk(2), log_p.chunk(2)
    kl, n = 0.0, 0
    for iq in range(2):
        for v in range(len(s)):
            if v == iq:
                continue
            kl = kl + (p_chunks[iq] * (log_p_chunks[iq] - F.log_softmax(s[v], dim=-1))).sum(-1).mean()
            n += 1
    return entropy, kl / n


# ----------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------
def make_head(norm_last_layer: bool, use_bn: bool = False) -> DINOHead:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # nn.utils.weight_norm is deprecated, DINO uses it
        return DINOHead(IN_DIM, OUT_DIM, use_bn=use_bn, norm_last_layer=norm_last_layer, nlayers=NLAYERS,
                        hidden_dim=HIDDEN_DIM, bottleneck_dim=BOTTLENECK_DIM)


def gen_case(name: str, cfg: dict):
    g = common.generator(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    use_bn = cfg.get("use_bn", False)
    student = make_head(cfg["norm_last_layer"], use_bn)
    # DINO's init (trunc_normal std .02, zero biases) makes every activation tiny; parity wants values of order 1.
    with torch.no_grad():
        for n, p in student.named_parameters():
            if n.endswith("weight") and p.dim() == 2:
                p.copy_(common.randn(p.shape, g, std=1.0 / math.sqrt(p.shape[1])))
            elif n.endswith("bias"):
                p.copy_(common.randn(p.shape, g, std=0.1))
            elif n.endswith("weight_v"):
                p.copy_(common.randn(p.shape, g, std=1.0 / math.sqrt(p.shape[1])))
            elif n.endswith("weight_g") and not cfg["norm_last_layer"]:
                p.copy_(1.0 + common.randn(p.shape, g, std=0.2))
            elif n.endswith("weight") and p.dim() == 1:  # a BatchNorm's gain
                p.copy_(1.0 + common.randn(p.shape, g, std=0.2))
        for n, b in student.named_buffers():
            if n.endswith("running_mean"):
                b.copy_(common.randn(b.shape, g, std=0.1))
            elif n.endswith("running_var"):
                b.copy_(1.0 + common.randn(b.shape, g, std=0.2).abs())
    teacher = make_head(True, use_bn)  # main_dino.py: the teacher head has norm_last_layer's default
    teacher.load_state_dict(student.state_dict())
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(common.randn(p.shape, g, std=0.05))
    for p in teacher.parameters():
        p.requires_grad = False

    x_student = common.randn((NCROPS * BATCH, IN_DIM), g)
    x_teacher = x_student[: 2 * BATCH] + common.randn((2 * BATCH, IN_DIM), g, std=0.1)

    dino_loss = DINOLoss(OUT_DIM, NCROPS, WARMUP_TEACHER_TEMP, TEACHER_TEMP, WARMUP_TEACHER_TEMP_EPOCHS, NEPOCHS,
                         STUDENT_TEMP, CENTER_MOMENTUM)
    dino_loss.center = common.randn((1, OUT_DIM), g, std=0.5)

    out = {"x_student": x_student, "x_teacher": x_teacher, "center_init": dino_loss.center.clone()}
    for n, p in student.state_dict().items():
        out[f"student.{n}"] = p.clone()
    for n, p in teacher.state_dict().items():
        out[f"teacher.{n}"] = p.clone()

    params_groups = get_params_groups(student)
    names = {id(p): n for n, p in student.named_parameters()}
    groups_names = [[names[id(p)] for p in grp["params"]] for grp in params_groups]
    optimizer = torch.optim.AdamW(params_groups)

    iters = []
    for k, (epoch, lr, wd, m) in enumerate(ITERS):
        for i, param_group in enumerate(optimizer.param_groups):
            param_group["lr"] = lr
            if i == 0:  # only the first group is regularized
                param_group["weight_decay"] = wd
        teacher_output = teacher(x_teacher)
        student_output = student(x_student)
        entropy, kl = diagnostics(dino_loss, student_output, teacher_output, epoch)
        loss = dino_loss(student_output, teacher_output, epoch)
        optimizer.zero_grad()
        loss.backward()
        p = f"it{k}."
        out[p + "student_output"] = student_output
        out[p + "teacher_output"] = teacher_output
        out[p + "loss"] = loss.reshape(())
        out[p + "teacher_entropy"] = entropy.reshape(())
        out[p + "kl"] = kl.reshape(())
        out[p + "center"] = dino_loss.center.clone()
        for n, q in student.named_parameters():
            if q.grad is not None:
                out[p + f"grad.{n}"] = q.grad.clone()
        if k == 0:
            saved = {n: q.grad.clone() for n, q in student.named_parameters() if q.grad is not None}
            out[p + "mixed_norms"] = torch.tensor(clip_gradients(student, CLIP_MIXED), dtype=torch.float32)
            for n, q in student.named_parameters():
                if q.grad is not None:
                    out[p + f"clipped_mixed.{n}"] = q.grad.clone()
                    q.grad.copy_(saved[n])  # back to the unclipped gradients
        norms = clip_gradients(student, CLIP)
        out[p + "norms"] = torch.tensor(norms, dtype=torch.float32)
        for n, q in student.named_parameters():
            if q.grad is not None:
                out[p + f"clipped.{n}"] = q.grad.clone()
        cancel_gradients_last_layer(epoch, student, cfg["freeze_last_layer"])
        with_grad = []
        for n, q in student.named_parameters():
            if q.grad is not None:
                out[p + f"final.{n}"] = q.grad.clone()
                with_grad.append(n)
        optimizer.step()
        for n, q in student.state_dict().items():
            out[p + f"student.{n}"] = q.clone()
        for n, q in student.named_parameters():
            st = optimizer.state.get(q)
            if st:
                out[p + f"exp_avg.{n}"] = st["exp_avg"].clone()
                out[p + f"exp_avg_sq.{n}"] = st["exp_avg_sq"].clone()
        # EMA update for the teacher (train_one_epoch, verbatim but for `.module`)
        with torch.no_grad():
            for param_q, param_k in zip(student.parameters(), teacher.parameters()):
                param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)
        for n, q in teacher.state_dict().items():
            out[p + f"teacher.{n}"] = q.clone()
        iters.append(dict(epoch=epoch, lr=lr, weight_decay=wd, momentum=m,
                          teacher_temp=float(dino_loss.teacher_temp_schedule[epoch]),
                          last_layer_frozen=epoch < cfg["freeze_last_layer"], params_with_final_grad=with_grad,
                          loss=float(loss.detach()), clipped=[n_ > CLIP for n_ in norms]))
    meta = dict(norm_last_layer=cfg["norm_last_layer"], use_bn=use_bn, freeze_last_layer=cfg["freeze_last_layer"],
                seed=cfg["seed"], parameters=[n for n, _ in student.named_parameters()],
                trainable=[n for n, q in student.named_parameters() if q.requires_grad],
                params_groups=dict(regularized=groups_names[0], not_regularized=groups_names[1]),
                iterations=iters)
    return out, meta


def main(out_dir: pathlib.Path = DEFAULT_OUT) -> None:
    out_dir = pathlib.Path(out_dir)
    common.clear_dir(out_dir)
    torch.set_num_threads(1)
    cases = {}
    for name, cfg in CASES.items():
        tensors, meta = gen_case(name, cfg)
        common.save_golden(out_dir / f"{name}.safetensors", tensors)
        cases[name] = meta
    defaults = torch.optim.AdamW([torch.zeros(1, requires_grad=True)]).defaults
    manifest = {
        "reference": "facebookresearch/dino vision_transformer.DINOHead, main_dino.DINOLoss / train_one_epoch, "
                     "utils.get_params_groups / clip_gradients / cancel_gradients_last_layer (verbatim), "
                     "torch.optim.AdamW(params_groups)",
        "versions": common.versions(),
        "config": dict(in_dim=IN_DIM, hidden_dim=HIDDEN_DIM, bottleneck_dim=BOTTLENECK_DIM, out_dim=OUT_DIM,
                       nlayers=NLAYERS, batch=BATCH, ncrops=NCROPS, clip_mixed=CLIP_MIXED, warmup_teacher_temp=WARMUP_TEACHER_TEMP,
                       teacher_temp=TEACHER_TEMP, warmup_teacher_temp_epochs=WARMUP_TEACHER_TEMP_EPOCHS,
                       nepochs=NEPOCHS, student_temp=STUDENT_TEMP, center_momentum=CENTER_MOMENTUM, clip=CLIP,
                       adamw=dict(betas=list(defaults["betas"]), eps=defaults["eps"], amsgrad=defaults["amsgrad"])),
        "cases": cases,
        "tolerance": TOL,
        "note": "float32 on CPU, one thread. Teacher head built with norm_last_layer=True (main_dino.py) and "
                "initialised from the student plus noise; parameters re-drawn at order-1 scale for parity "
                "(DINO's own init is tested statistically in Rust).",
    }
    common.write_json(out_dir / "manifest.json", manifest)
    common.report_size(out_dir, "dino_loss", max_kib=750)


if __name__ == "__main__":
    common.run_standalone(main, DEFAULT_OUT)
