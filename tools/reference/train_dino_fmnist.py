"""Reference DINO training run on Fashion-MNIST (PyTorch, one process, fp32, CPU) with DINO's weighted k-NN eval.

The recipe is facebookresearch/dino `main_dino.py` (`train_dino` + `train_one_epoch`) for a single process without
mixed precision: DataAugmentationDINO (2 global + N local crops), MultiCropWrapper, student / teacher ViT + DINOHead,
DINOLoss, AdamW over `get_params_groups`, cosine lr / wd / teacher-momentum schedules, gradient clipping, last-layer
freeze and the EMA teacher. Evaluation is `eval_knn.py` (CLS features of the teacher backbone, L2-normalised,
`knn_classifier`). Its numbers are the baseline for `vista train dino` on the same configuration.

Reused from this folder (not duplicated): gen_dino.py (DinoVisionTransformer / DinoBlock, knn_classifier),
gen_dino_loss.py (DINOHead, DINOLoss, trunc_normal_, get_params_groups, clip_gradients, cancel_gradients_last_layer),
gen_dino_train.py (cosine_scheduler). Defined here, verbatim from DINO: drop_path / DropPath (the ViT in gen_dino.py
only supports drop_path 0), the ViT weight init, MultiCropWrapper, GaussianBlur, Solarization, DataAugmentationDINO.

Differences from main_dino.py (all forced by the setting, none changes the math):
  * one process, no DistributedDataParallel / all_reduce; DistributedSampler(num_replicas=1, rank=0, seed=--seed)
    gives the same per-epoch permutation as main_dino's sampler (whose seed is always 0) when --seed is 0;
  * CPU and fp32 (main_dino defaults to fp16 autocast + GradScaler on CUDA);
  * the ViT is built with img_size=[--global-size] (main_dino keeps the default 224, so its pos_embed grid would be
    224/patch and be resampled for every crop); local crops resample it with DINO's bicubic recipe as usual;
  * the head sizes (--head-hidden, --bottleneck, --head-layers) apply to the student AND the teacher head (main_dino
    uses DINOHead's defaults 2048 / 256 / 3 for both);
  * Python's `random` (used by GaussianBlur / Solarization in the main process when --workers 0) is seeded too;
    DataLoader workers seed it themselves from torch's RNG.

Timing (the same spans as `vista train dino`'s metrics.jsonl): each epoch's `seconds` is its wall time from before
the DataLoader is iterated (worker start-up, data waits and every step; no k-NN, no checkpoint), and `step_seconds`
lists each step's time from the batch in hand to the optimiser and EMA updates done (data loading not included).

`--arch resnet50` runs main_dino's torchvision branch instead of the ViT: torchvision's `resnet50()` (fc replaced by
identity by MultiCropWrapper), BatchNorm in training mode in student and teacher (main_dino never puts the teacher
in eval mode; the EMA moves parameters only, each network keeps its own running statistics), with `--optimizer sgd`
(SGD, momentum 0.9) or `lars` (utils.LARS, from gen_resnet.py) as main_dino's `--optimizer`. `--knn-every N` adds the
teacher's k-NN after every N-th epoch (the reference's learning curve; main_dino has no such evaluation).

Usage (from the repository root, with the reference environment of tools/reference/requirements.txt):
  .venv/bin/python tools/reference/train_dino_fmnist.py --data /usr/share/datasets/fashion-mnist --quick
  .venv/bin/python tools/reference/train_dino_fmnist.py --data DIR --epochs 10 --out bench-out/dino_fmnist_ref.json
(tools/bench/bench_dino_train.py runs it against `vista train dino` with the same flags.)
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import pathlib
import platform
import random
import resource
import sys
import time
import warnings
from functools import partial

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image, ImageFilter, ImageOps
from torch import nn
from torchvision import transforms

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from gen_dino import DinoVisionTransformer, knn_classifier  # noqa: E402
from gen_dino_loss import (  # noqa: E402
    DINOHead,
    DINOLoss,
    cancel_gradients_last_layer,
    clip_gradients,
    get_params_groups,
    trunc_normal_,
)
from gen_dino_train import IMAGENET_MEAN, IMAGENET_STD, cosine_scheduler  # noqa: E402
from gen_resnet import LARS  # noqa: E402

# main_dino's vits: (embed_dim, depth, num_heads); all qkv_bias=True, mlp_ratio=4, LayerNorm eps 1e-6
ARCHS = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}
# main_dino's torchvision backbones (`args.arch in torchvision_models.__dict__`): fc replaced by identity
CNN_ARCHS = ("resnet50",)
NUM_CLASSES = 10
LOG_EVERY = 10  # main_dino: metric_logger.log_every(data_loader, 10, header)
EVAL_BATCH = 500


# ----------------------------------------------------------------------------
# facebookresearch/dino vision_transformer.py: stochastic depth and the ViT init (verbatim)
# ----------------------------------------------------------------------------
def drop_path(x, drop_prob: float = 0., training: bool = False):
    if drop_prob == 0. or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # work with diff dim tensors, not just 2D ConvNets
    random_tensor = keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)
    random_tensor.floor_()  # binarize
    output = x.div(keep_prob) * random_tensor
    return output


class DropPath(nn.Module):
    """Drop paths (Stochastic Depth) per sample  (when applied in main path of residual blocks).
    """
    def __init__(self, drop_prob=None):
        super(DropPath, self).__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)


class VisionTransformer(DinoVisionTransformer):
    """DINO's `VisionTransformer` with stochastic depth and its weight init.

    gen_dino.DinoVisionTransformer reproduces the architecture but its DinoBlock only accepts drop_path == 0 and it
    skips the init (the fixtures re-draw the weights). Building it with drop_path_rate=0 consumes the RNG exactly as
    DINO's constructor does (DropPath has no parameters); each block then gets DINO's `DropPath(dpr[i]) if dpr[i] > 0
    else nn.Identity()` (DinoBlock.forward applies `self.drop_path` to both residual branches, as DINO's Block), and
    the tail of DINO's __init__ runs: trunc_normal_(pos_embed, std=.02), trunc_normal_(cls_token, std=.02),
    self.apply(self._init_weights). The patch Conv2d keeps nn.Conv2d's default init, as in DINO.
    """

    def __init__(self, img_size=[224], patch_size=16, in_chans=3, num_classes=0, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4., qkv_bias=False, qk_scale=None, drop_rate=0., attn_drop_rate=0.,
                 drop_path_rate=0., norm_layer=nn.LayerNorm, **kwargs):
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                         embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                         qkv_bias=qkv_bias, qk_scale=qk_scale, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                         drop_path_rate=0., norm_layer=norm_layer, **kwargs)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]  # stochastic depth decay rule
        for blk, p in zip(self.blocks, dpr):
            blk.drop_path = DropPath(p) if p > 0. else nn.Identity()

        trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.cls_token, std=.02)
        self.apply(self._init_weights)

    def _init_weights(self, m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)


# ----------------------------------------------------------------------------
# facebookresearch/dino utils.py (verbatim)
# ----------------------------------------------------------------------------
class GaussianBlur(object):
    """
    Apply Gaussian Blur to the PIL image.
    """
    def __init__(self, p=0.5, radius_min=0.1, radius_max=2.):
        self.prob = p
        self.radius_min = radius_min
        self.radius_max = radius_max

    def __call__(self, img):
        do_it = random.random() <= self.prob
        if not do_it:
            return img

        return img.filter(
            ImageFilter.GaussianBlur(
                radius=random.uniform(self.radius_min, self.radius_max)
            )
        )


class Solarization(object):
    """
    Apply Solarization to the PIL image.
    """
    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        if random.random() < self.p:
            return ImageOps.solarize(img)
        else:
            return img


class MultiCropWrapper(nn.Module):
    """
    Perform forward pass separately on each resolution input.
    The inputs corresponding to a single resolution are clubbed and single
    forward is run on the same resolution inputs. Hence we do several
    forward passes = number of different resolutions used. We then
    concatenate all the output features and run the head forward on these
    concatenated features.
    """
    def __init__(self, backbone, head):
        super(MultiCropWrapper, self).__init__()
        # disable layers dedicated to ImageNet labels classification
        backbone.fc, backbone.head = nn.Identity(), nn.Identity()
        self.backbone = backbone
        self.head = head

    def forward(self, x):
        # convert to list
        if not isinstance(x, list):
            x = [x]
        idx_crops = torch.cumsum(torch.unique_consecutive(
            torch.tensor([inp.shape[-1] for inp in x]),
            return_counts=True,
        )[1], 0)
        start_idx, output = 0, torch.empty(0).to(x[0].device)
        for end_idx in idx_crops:
            _out = self.backbone(torch.cat(x[start_idx: end_idx]))
            # The output is a tuple with XCiT model. See:
            # https://github.com/facebookresearch/xcit/blob/master/xcit.py#L404-L405
            if isinstance(_out, tuple):
                _out = _out[0]
            # accumulate outputs
            output = torch.cat((output, _out))
            start_idx = end_idx
        # Run the head forward on the concatenated features.
        return self.head(output)


def bool_flag(s):
    """
    Parse boolean arguments from the command line.
    """
    FALSY_STRINGS = {"off", "false", "0"}
    TRUTHY_STRINGS = {"on", "true", "1"}
    if s.lower() in FALSY_STRINGS:
        return False
    elif s.lower() in TRUTHY_STRINGS:
        return True
    else:
        raise argparse.ArgumentTypeError("invalid value for a boolean flag")


# ----------------------------------------------------------------------------
# main_dino.py DataAugmentationDINO (verbatim; crop sizes 224 / 96 -> --global-size / --local-size)
# ----------------------------------------------------------------------------
class DataAugmentationDINO(object):
    def __init__(self, global_crops_scale, local_crops_scale, local_crops_number, global_size=224, local_size=96):
        flip_and_color_jitter = transforms.Compose([
            transforms.RandomHorizontalFlip(p=0.5),
            transforms.RandomApply(
                [transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)],
                p=0.8
            ),
            transforms.RandomGrayscale(p=0.2),
        ])
        normalize = transforms.Compose([
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ])

        # first global crop
        self.global_transfo1 = transforms.Compose([
            transforms.RandomResizedCrop(global_size, scale=global_crops_scale, interpolation=Image.BICUBIC),
            flip_and_color_jitter,
            GaussianBlur(1.0),
            normalize,
        ])
        # second global crop
        self.global_transfo2 = transforms.Compose([
            transforms.RandomResizedCrop(global_size, scale=global_crops_scale, interpolation=Image.BICUBIC),
            flip_and_color_jitter,
            GaussianBlur(0.1),
            Solarization(0.2),
            normalize,
        ])
        # transformation for the local small crops
        self.local_crops_number = local_crops_number
        self.local_transfo = transforms.Compose([
            transforms.RandomResizedCrop(local_size, scale=local_crops_scale, interpolation=Image.BICUBIC),
            flip_and_color_jitter,
            GaussianBlur(p=0.5),
            normalize,
        ])

    def __call__(self, image):
        crops = []
        crops.append(self.global_transfo1(image))
        crops.append(self.global_transfo2(image))
        for _ in range(self.local_crops_number):
            crops.append(self.local_transfo(image))
        return crops


# DINO eval_knn.py uses Resize(256) + CenterCrop(224) + ToTensor + Normalize; the 28x28 images are used as they are.
EVAL_TRANSFORM = transforms.Compose([
    transforms.ToTensor(),
    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
])


# ----------------------------------------------------------------------------
# Fashion-MNIST from the IDX files
# ----------------------------------------------------------------------------
def read_idx(path: pathlib.Path, limit: int) -> np.ndarray:
    """First `limit` items of a gzipped IDX file (images: uint8 [N, 28, 28], labels: uint8 [N])."""
    with gzip.open(path, "rb") as f:
        magic = int.from_bytes(f.read(4), "big")
        if magic >> 8 != 0x08:  # 0x0000 08 nd: unsigned byte data
            raise ValueError(f"{path}: not a uint8 IDX file (magic {magic:#x})")
        ndim = magic & 0xFF
        dims = [int.from_bytes(f.read(4), "big") for _ in range(ndim)]
        n = min(limit, dims[0]) if limit > 0 else dims[0]
        item = int(np.prod(dims[1:])) if ndim > 1 else 1
        buf = f.read(n * item)
    if len(buf) != n * item:
        raise ValueError(f"{path}: truncated ({len(buf)} of {n * item} bytes)")
    return np.frombuffer(buf, dtype=np.uint8).reshape([n] + dims[1:]).copy()


def load_split(data: pathlib.Path, split: str, limit: int):
    images = read_idx(data / f"{split}-images-idx3-ubyte.gz", limit)
    labels = read_idx(data / f"{split}-labels-idx1-ubyte.gz", limit)
    if len(images) != len(labels) or len(images) < limit:
        raise ValueError(f"{split}: {len(images)} images / {len(labels)} labels, wanted {limit}")
    return images, labels


def to_pil(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(gray).convert("RGB")


class FashionMNIST(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(to_pil(self.images[i])), int(self.labels[i])


# ----------------------------------------------------------------------------
# k-NN evaluation (eval_knn.py: features = backbone CLS output, L2-normalised, knn_classifier)
# ----------------------------------------------------------------------------
@torch.no_grad()
def extract_features(backbone: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    was_training = backbone.training
    backbone.eval()
    feats = torch.cat([backbone(pixels[i:i + EVAL_BATCH]).clone() for i in range(0, len(pixels), EVAL_BATCH)])
    backbone.train(was_training)
    return nn.functional.normalize(feats, dim=1, p=2)


def knn_eval(train_feats, train_labels, test_feats, test_labels, k, T) -> dict:
    top1, top5 = knn_classifier(train_feats, train_labels, test_feats, test_labels, k, T, num_classes=NUM_CLASSES)
    return {"top1": top1, "top5": top5}


# ----------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("train_dino_fmnist", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=pathlib.Path, default=os.environ.get("FASHION_MNIST_DIR"),
                   help="folder with {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz (default: $FASHION_MNIST_DIR)")
    p.add_argument("--limit", type=int, default=5000, help="first N train images: training set and k-NN train bank")
    p.add_argument("--test-limit", type=int, default=2000, help="first M t10k images: k-NN test set (>= 100)")
    p.add_argument("--arch", default="vit_tiny", choices=sorted(ARCHS) + list(CNN_ARCHS))
    p.add_argument("--depth", type=int, default=None, help="override the arch's depth")
    p.add_argument("--embed-dim", type=int, default=None, help="override the arch's embed dim")
    p.add_argument("--num-heads", type=int, default=None, help="override the arch's head count")
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--global-size", type=int, default=28)
    p.add_argument("--local-size", type=int, default=12)
    p.add_argument("--local-crops", type=int, default=6)
    p.add_argument("--global-scale", type=float, nargs=2, default=(0.4, 1.0))
    p.add_argument("--local-scale", type=float, nargs=2, default=(0.05, 0.4))
    p.add_argument("--out-dim", type=int, default=4096)
    p.add_argument("--head-hidden", type=int, default=2048)
    p.add_argument("--bottleneck", type=int, default=256)
    p.add_argument("--head-layers", type=int, default=3)
    p.add_argument("--norm-last-layer", type=bool_flag, default=True, help="true|false")
    p.add_argument("--use-bn-in-head", type=bool_flag, default=False,
                   help="true|false: BatchNorm1d after each hidden linear layer of the head (main_dino's --use_bn_in_head)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.0005, help="peak lr for batch 256 (scaled by batch / 256)")
    p.add_argument("--min-lr", type=float, default=1e-6)
    p.add_argument("--warmup-epochs", type=int, default=2)
    p.add_argument("--weight-decay", type=float, default=0.04)
    p.add_argument("--weight-decay-end", type=float, default=0.4)
    p.add_argument("--momentum-teacher", type=float, default=0.996)
    p.add_argument("--warmup-teacher-temp", type=float, default=0.04)
    p.add_argument("--teacher-temp", type=float, default=0.04)
    p.add_argument("--warmup-teacher-temp-epochs", type=int, default=0)
    p.add_argument("--clip-grad", type=float, default=3.0, help="0 disables")
    p.add_argument("--freeze-last-layer", type=int, default=1)
    p.add_argument("--drop-path", type=float, default=0.1, help="student drop_path_rate (teacher: 0)")
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd", "lars"),
                   help="main_dino's --optimizer: AdamW, SGD(momentum 0.9) or utils.LARS over get_params_groups")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--knn-every", type=int, default=0,
                   help="also log the teacher's k-NN top-1 every N epochs (0: only at initialisation and the end)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads / set_num_interop_threads")
    p.add_argument("--workers", type=int, default=1, help="DataLoader num_workers (0 = main process)")
    p.add_argument("--knn-k", type=int, default=20)
    p.add_argument("--knn-temperature", type=float, default=0.07)
    p.add_argument("--out", type=pathlib.Path, default=None, help="results JSON path")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: --limit 256 --test-limit 256 --epochs 1 (warmups clamped to the epochs)")
    return p


def fail(msg: str):
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def log(msg: str):
    print(msg, file=sys.stderr, flush=True)


def peak_rss_mb():
    # Linux: ru_maxrss in KiB; RUSAGE_CHILDREN = the largest terminated (waited-for) child, i.e. the DataLoader workers
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    children_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return self_mb, children_mb


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    if args.quick:
        args.limit, args.test_limit, args.epochs = 256, 256, 1
        args.warmup_epochs = min(args.warmup_epochs, args.epochs)
        args.warmup_teacher_temp_epochs = min(args.warmup_teacher_temp_epochs, args.epochs)
    if args.data is None:
        fail("--data DIR: the folder of the Fashion-MNIST IDX files (or set FASHION_MNIST_DIR)")
    args.data = pathlib.Path(args.data)
    embed_dim, depth, num_heads = ARCHS.get(args.arch, (2048, 0, 1))
    embed_dim = args.embed_dim or embed_dim
    depth = args.depth or depth
    num_heads = args.num_heads or num_heads
    if embed_dim % num_heads:
        fail(f"embed dim {embed_dim} is not divisible by {num_heads} heads")
    if args.test_limit < 100:
        fail("--test-limit must be >= 100 (knn_classifier splits the test set into 100 chunks)")
    if args.limit < args.batch:
        fail(f"--limit {args.limit} < --batch {args.batch}: no full batch (drop_last=True)")
    if args.warmup_epochs > args.epochs or args.warmup_teacher_temp_epochs > args.epochs:
        fail("warmup epochs exceed --epochs (main_dino's schedules would fail)")
    if args.knn_k > args.limit:
        fail("--knn-k exceeds the train bank")

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(args.threads)
    except RuntimeError:
        pass
    torch.set_default_dtype(torch.float32)
    # utils.fix_random_seeds (+ Python's random, used by GaussianBlur / Solarization in the main process)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*weight_norm.*")

    # ============ data ============
    train_images, train_labels = load_split(args.data, "train", args.limit)
    test_images, test_labels = load_split(args.data, "t10k", args.test_limit)
    transform = DataAugmentationDINO(tuple(args.global_scale), tuple(args.local_scale), args.local_crops,
                                     global_size=args.global_size, local_size=args.local_size)
    dataset = FashionMNIST(train_images, train_labels, transform)
    # main_dino: DistributedSampler(dataset, shuffle=True) -- one replica here
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=args.seed)
    data_loader = torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=args.batch, num_workers=args.workers, pin_memory=False,
        drop_last=True)
    niter_per_ep = len(data_loader)
    log(f"[data] train {len(dataset)} images ({niter_per_ep} it/epoch of {args.batch}), test {len(test_images)}")

    # ============ student and teacher (main_dino order: student, teacher backbones, then the heads) ============
    if args.arch in CNN_ARCHS:
        # main_dino: torchvision_models.__dict__[args.arch](); embed_dim = fc.weight.shape[1]. Both networks stay in
        # train mode (the teacher's BatchNorm too, by its own batch statistics), as main_dino leaves them.
        student = torchvision.models.__dict__[args.arch]()
        teacher = torchvision.models.__dict__[args.arch]()
        embed_dim = student.fc.weight.shape[1]
    else:
        vit = partial(VisionTransformer, img_size=[args.global_size], patch_size=args.patch, embed_dim=embed_dim,
                      depth=depth, num_heads=num_heads, mlp_ratio=4, qkv_bias=True,
                      norm_layer=partial(nn.LayerNorm, eps=1e-6))
        student = vit(drop_path_rate=args.drop_path)
        teacher = vit()
    head = partial(DINOHead, embed_dim, args.out_dim, use_bn=args.use_bn_in_head, nlayers=args.head_layers,
                   hidden_dim=args.head_hidden, bottleneck_dim=args.bottleneck)
    student = MultiCropWrapper(student, head(norm_last_layer=args.norm_last_layer))
    # main_dino: DINOHead(embed_dim, out_dim, use_bn), i.e. norm_last_layer=True
    teacher = MultiCropWrapper(teacher, head())
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    s_names = [n for n, _ in student.named_parameters()]
    if s_names != [n for n, _ in teacher.named_parameters()]:
        fail("student / teacher parameter order differs")
    n_backbone = sum(p.numel() for p in student.backbone.parameters())
    n_head = sum(p.numel() for p in student.head.parameters())
    log(f"[model] {args.arch} embed {embed_dim} depth {depth} heads {num_heads} patch {args.patch}: "
        f"backbone {n_backbone} params, head {n_head}")

    dino_loss = DINOLoss(args.out_dim, args.local_crops + 2, args.warmup_teacher_temp, args.teacher_temp,
                         args.warmup_teacher_temp_epochs, args.epochs)
    params_groups = get_params_groups(student)
    if args.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params_groups)  # lr / wd set per iteration
    elif args.optimizer == "sgd":
        optimizer = torch.optim.SGD(params_groups, lr=0, momentum=0.9)  # lr is set by scheduler
    else:
        optimizer = LARS(params_groups)  # to use with convnet and large batches

    lr_schedule = cosine_scheduler(args.lr * args.batch / 256., args.min_lr, args.epochs, niter_per_ep,
                                   warmup_epochs=args.warmup_epochs)
    wd_schedule = cosine_scheduler(args.weight_decay, args.weight_decay_end, args.epochs, niter_per_ep)
    momentum_schedule = cosine_scheduler(args.momentum_teacher, 1, args.epochs, niter_per_ep)

    # ============ k-NN inputs (un-augmented, ToTensor + Normalize) ============
    train_pix = torch.stack([EVAL_TRANSFORM(to_pil(im)) for im in train_images])
    test_pix = torch.stack([EVAL_TRANSFORM(to_pil(im)) for im in test_images])
    train_lab = torch.from_numpy(train_labels.astype(np.int64))
    test_lab = torch.from_numpy(test_labels.astype(np.int64))
    k, T = args.knn_k, args.knn_temperature

    def knn_of(backbone):
        return knn_eval(extract_features(backbone, train_pix), train_lab, extract_features(backbone, test_pix),
                        test_lab, k, T)

    knn = {"k": k, "temperature": T}
    knn_top5 = {}
    t0 = time.perf_counter()
    raw = knn_eval(nn.functional.normalize(train_pix.flatten(1), dim=1, p=2), train_lab,
                   nn.functional.normalize(test_pix.flatten(1), dim=1, p=2), test_lab, k, T)
    init = knn_of(teacher.backbone)  # teacher == student at initialisation
    knn["random_init"], knn_top5["random_init"] = init["top1"], init["top5"]
    log(f"[knn] raw_pixels {raw['top1']:.2f}  random_init {init['top1']:.2f}  ({time.perf_counter() - t0:.1f}s)")

    # ============ training (main_dino.train_one_epoch) ============
    epochs_out = []
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        losses, step_seconds = [], []
        t_start = time.perf_counter()
        for it, (images, _) in enumerate(data_loader):
            t_step = time.perf_counter()  # the batch is in hand: the step's time starts here
            # update weight decay and learning rate according to their schedule
            it = len(data_loader) * epoch + it  # global training iteration
            for i, param_group in enumerate(optimizer.param_groups):
                param_group["lr"] = lr_schedule[it]
                if i == 0:  # only the first group is regularized
                    param_group["weight_decay"] = wd_schedule[it]

            # teacher and student forward passes + compute dino loss
            teacher_output = teacher(images[:2])  # only the 2 global views pass through the teacher
            student_output = student(images)
            loss = dino_loss(student_output, teacher_output, epoch)

            if not math.isfinite(loss.item()):
                fail("Loss is {}, stopping training".format(loss.item()))

            # student update
            optimizer.zero_grad()
            loss.backward()
            if args.clip_grad:
                clip_gradients(student, args.clip_grad)
            cancel_gradients_last_layer(epoch, student, args.freeze_last_layer)
            optimizer.step()

            # EMA update for the teacher
            with torch.no_grad():
                m = momentum_schedule[it]  # momentum parameter
                for param_q, param_k in zip(student.parameters(), teacher.parameters()):
                    param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)
            step_seconds.append(time.perf_counter() - t_step)

            losses.append(loss.item())
            i_ep = it - len(data_loader) * epoch
            if i_ep % LOG_EVERY == 0 or i_ep == niter_per_ep - 1:
                el = time.perf_counter() - t_start
                log(f"[train] epoch {epoch} [{i_ep:>{len(str(niter_per_ep))}}/{niter_per_ep}] loss {losses[-1]:.6f} "
                    f"lr {optimizer.param_groups[0]['lr']:.4e} wd {optimizer.param_groups[0]['weight_decay']:.5f} "
                    f"momentum {m:.6f} teacher_temp {dino_loss.teacher_temp_schedule[epoch]:.4f} "
                    f"({el / (i_ep + 1):.3f} s/it)")
        seconds = time.perf_counter() - t_start
        n_img = niter_per_ep * args.batch
        ep = {"epoch": epoch, "seconds": seconds, "images_per_s": n_img / seconds,
              "step_seconds_median": float(np.median(step_seconds)), "step_seconds": step_seconds,
              "loss_mean": float(np.mean(losses)), "loss_last": losses[-1]}
        if args.knn_every and (epoch + 1) % args.knn_every == 0 and epoch + 1 < args.epochs:
            ep["knn_teacher_top1"] = knn_of(teacher.backbone)["top1"]
            log(f"[knn] epoch {epoch} teacher {ep['knn_teacher_top1']:.2f}")
        epochs_out.append(ep)
        log(f"[epoch {epoch}] {seconds:.2f}s (step median {ep['step_seconds_median']:.3f}s)  "
            f"{ep['images_per_s']:.1f} img/s  loss mean {ep['loss_mean']:.6f} "
            f"last {ep['loss_last']:.6f}")

    t0 = time.perf_counter()
    tr_t = knn_of(teacher.backbone)
    tr_s = knn_of(student.backbone)
    knn["trained_teacher"], knn_top5["trained_teacher"] = tr_t["top1"], tr_t["top5"]
    knn["trained_student"], knn_top5["trained_student"] = tr_s["top1"], tr_s["top5"]
    knn["raw_pixels"], knn_top5["raw_pixels"] = raw["top1"], raw["top5"]
    knn["top5"] = knn_top5
    log(f"[knn] trained teacher {tr_t['top1']:.2f}  student {tr_s['top1']:.2f}  ({time.perf_counter() - t0:.1f}s)")

    self_mb, children_mb = peak_rss_mb()
    config = {k2: (str(v) if isinstance(v, pathlib.Path) else (list(v) if isinstance(v, tuple) else v))
              for k2, v in vars(args).items()}
    config.update({"resolved": {"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads,
                                "niter_per_ep": niter_per_ep, "lr_peak": args.lr * args.batch / 256.,
                                "ncrops": args.local_crops + 2}})
    result = {
        "framework": "pytorch",
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "python": platform.python_version(), "numpy": np.__version__, "pillow": PIL.__version__},
        "config": config,
        "params": n_backbone,
        "params_head": n_head,
        "epochs": epochs_out,
        "knn": knn,
        "peak_rss_mb": self_mb + children_mb,
        "peak_rss_self_mb": self_mb,
        "peak_rss_children_mb": children_mb,
    }
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
