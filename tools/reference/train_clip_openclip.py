"""Reference CLIP training run with open_clip (PyTorch, one process, fp32, CPU): the learning and timing baseline
for `vista train clip` on the same data, flags and threads.

The recipe is open_clip_train's (open_clip_torch 3.3.0, whose wheel ships `open_clip_train`):

  * model: `open_clip.model.CLIP(embed_dim, vision_cfg=dict(image_size, patch_size, width, layers, head_width=64,
    mlp_ratio=4), text_cfg=dict(context_length, vocab_size=49408, width, heads, layers), quick_gelu, output_dict=True)`
    with open_clip's own initialisation (or `--arch NAME`: `open_clip.get_model_config(NAME)`; `--model CKPT`:
    `open_clip.load_checkpoint`); LayerNorm eps 1e-5 (nn.LayerNorm's default, as open_clip builds it); SigLIP
    (`--loss siglip`): init_logit_scale = log(10), init_logit_bias = -10, as main.py sets them;
  * seeds: main.py's `random_seed(seed, 0)` (torch, numpy, python) before the model is built and again after;
  * data: a captions file (`.tsv` / `.csv` with a `filepath`/`file`/`image`/`path` and a `title`/`caption`/`text`
    header, or `.jsonl`), a folder holding `captions.tsv|jsonl|csv`, or a labelled set (an IDX images file or
    folder -- its train-* pair --, an ImageFolder, a `file,label` CSV) captioned `template.replace("{}", class)`
    with every `--templates`; read by the rules vista's `CaptionSet::open` follows (rows naming the same file are
    one image with several captions; files relative to the captions file; rows whose file is missing or whose
    caption is empty are left out; `--limit` keeps the first N images; Fashion-MNIST class names when the IDX
    path contains "fashion"); `--hold-out-every K` moves images i with i % K == K-1 to the retrieval set;
  * transforms: `open_clip.image_transform(S, is_train=True)` = RandomResizedCrop(S, scale=(0.9, 1.0), BICUBIC),
    convert("RGB"), ToTensor, Normalize(OpenAI mean / std); evaluation `image_transform(S, is_train=False)` =
    Resize(S, BICUBIC) of the shortest side, CenterCrop(S), convert, ToTensor, Normalize;
  * text: `open_clip.tokenize(caption, context_length)` (OpenAI's BPE, SimpleTokenizer); in training each image
    draws one of its captions per epoch (python `random.Random` seeded by (seed, image, epoch)), evaluation reads
    its first;
  * loader: as open_clip_train.data.get_csv_dataset builds it for one process: DataLoader(batch_size, shuffle=True,
    num_workers=--workers, drop_last=True), `num_samples` = len(dataset), `num_batches` = len(dataloader);
  * optimiser: main.py's AdamW over two groups (no weight decay where `p.ndim < 2 or "bn" in n or "ln" in n or
    "bias" in n or "logit_scale" in n`; the rest `--wd`), betas (0.9, --beta2 0.98), eps --eps 1e-6 (params.py's ViT
    defaults); `open_clip_train.scheduler.cosine_lr` (or `const_lr`, `--lr-scheduler const`)(optimizer, --lr,
    --warmup, steps_per_epoch * epochs);
  * training: `open_clip_train.train.train_one_epoch` itself, called once per epoch (scheduler per optimiser step,
    feature-cached accumulation for `--accum-freq` > 1, `clip_grad_norm_(--grad-clip-norm)`, the logit_scale clamp
    to [0, ln 100] after each step); LiT `--lock-image [N]` / `--lock-text [N]`: `model.lock_image_tower(N)` /
    `model.lock_text_tower(N)` before the optimiser is built (its groups then hold the trainable parameters only);
    `--wise-ft ALPHA` (fine-tuning runs, `--model`, as vista): mlfoundations/wise-ft `_merge` ((1 - ALPHA) * start +
    ALPHA * trained, every state-dict key) after the last epoch, evaluated, and vista's export gate (the merge, or
    the trained weights, against the start on zero-shot top-1, else the mean recall@10) reported;
  * evaluation (of the starting weights, then after every `--eval-every` epochs and after the last, as vista):
    zero-shot top-1 on `--zero-shot` (a labelled set, its t10k pair for an IDX folder; default: the t10k pair of an
    IDX `--data` folder; `--zero-shot-limit N`: the first N of an IDX set, N evenly spaced of a folder) with
    `open_clip.build_zero_shot_classifier` (class embedding = normalize(mean(normalize(encode_text(templates)))))
    and `open_clip_train.zero_shot.accuracy`'s top-1 (its line written out: the function fails on numpy 2) on
    normalize(encode_image) @ classifier; image<->text recall@1/5/10 on the held-out set (`--held-out PATH` or
    `--hold-out-every K`, each image with its first caption) with `open_clip_train.train.get_clip_metrics`.

What is observed without changing a value (as tools/reference/gen_clip_train.py does): the loss through a
ClipLoss / SigLipLoss subclass that records its value; the total gradient norm before clipping from
`torch.nn.utils.clip_grad_norm_`'s return (wrapped) or, without clipping, computed in an optimizer step pre-hook;
the step's end in an optimizer step post-hook; its start at the scheduler call of its first micro-batch (the
batch is in hand then). Each step's `seconds` is therefore forward, loss, backward, clipping and AdamW (the clamp
right after is a scalar op); each epoch's `epoch_seconds` is the wall time of the whole `train_one_epoch` call
(DataLoader start, worker start-up, data waits and every step; no evaluation).

Output folder (`-o DIR`), the lines and keys `vista train clip` writes (crates/vista/src/train/clip/run.rs):
  * `metrics.jsonl`: `{"start": true, "evaluation": E}` first when there is an evaluation set; per step `{"epoch",
    "iteration", "loss", "lr", "logit_scale" (exp, after the clamp), "grad_norm" (before clipping), "samples",
    "seconds"}`; per epoch `{"epoch", "epoch_seconds"}`; per evaluation `{"epoch", "evaluation": E}` (epochs from
    0, the epoch just done), E = `{"zero_shot_top1": f, "recall": {"image_to_text": [r1, r5, r10],
    "text_to_image": [...]}}` (fractions; a key absent when its set is);
  * `report.json`: vista's Report (`start`, `trained`, `wise_ft` [alpha, E] or null, `exported`, `decision`,
    `epochs`, `skipped_samples`) plus the reference's own: chance levels, sizes, per-epoch seconds, peak RSS,
    versions, config.
The last stdout line is a one-line JSON summary.

    .venv/bin/python tools/reference/train_clip_openclip.py \\
        --data /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz --limit 10000 \\
        --zero-shot /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz \\
        --image-size 28 --patch-size 4 --width 128 --layers 4 --text-width 128 --text-layers 4 --text-heads 2 \\
        --embed-dim 128 --context-length 16 --epochs 3 --batch-size 128 --lr 1e-3 --warmup 100 -o bench-out/ref
(tools/bench/bench_clip_train.py runs it against `vista train clip` with the same flags.)
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import math
import os
import pathlib
import platform
import random
import resource
import sys
import time
import types

import numpy as np
import torch

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
FILE_COLUMNS = ("filepath", "file", "image", "path")
CAPTION_COLUMNS = ("title", "caption", "text")
VOCAB_SIZE = 49408
HEAD_WIDTH = 64
EVAL_BATCH = 256
LOG_EVERY = 10


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fail(msg: str):
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


# ----------------------------------------------------------------------------------------------
# Data: vista's CaptionSet / LabelledSet rules
# ----------------------------------------------------------------------------------------------
class Pairs:
    """Images (a file path or a uint8 grey array) with one or more captions each, and labels when labelled."""

    def __init__(self):
        self.images, self.captions, self.labels = [], [], []
        self.classes = None
        self.skipped = []

    def __len__(self):
        return len(self.images)

    def truncate(self, n):
        self.images, self.captions, self.labels = self.images[:n], self.captions[:n], self.labels[:n]

    def hold_out(self, every: int):
        """(train, held): images i with i % every == every - 1 go to `held`."""
        train, held = Pairs(), Pairs()
        train.classes = held.classes = self.classes
        train.skipped = self.skipped
        for i in range(len(self)):
            t = held if every > 0 and i % every == every - 1 else train
            t.images.append(self.images[i])
            t.captions.append(self.captions[i])
            t.labels.append(self.labels[i])
        return train, held


def is_gzip(path: pathlib.Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def read_idx(path: pathlib.Path, limit=None) -> np.ndarray:
    """An IDX file (gzipped or not, detected from the content); the first `limit` items."""
    opener = gzip.open if is_gzip(path) else open
    with opener(path, "rb") as f:
        magic = int.from_bytes(f.read(4), "big")
        if magic >> 8 != 0x08:
            fail(f"{path}: not a uint8 IDX file (magic {magic:#x})")
        dims = [int.from_bytes(f.read(4), "big") for _ in range(magic & 0xFF)]
        n = dims[0] if limit is None else min(limit, dims[0])
        item = int(np.prod(dims[1:])) if len(dims) > 1 else 1
        buf = f.read(n * item)
    if len(buf) != n * item:
        fail(f"{path}: truncated")
    return np.frombuffer(buf, dtype=np.uint8).reshape([n] + dims[1:]).copy()


def find_idx(folder: pathlib.Path, prefix: str, kind: str) -> pathlib.Path:
    for name in sorted(os.listdir(folder)):
        if name.startswith(prefix) and kind in name:
            return folder / name
    fail(f"{folder}: no {prefix}-{kind} file")


def labelled_idx(images: pathlib.Path, labels: pathlib.Path, limit=None) -> Pairs:
    s = Pairs()
    x, y = read_idx(images, limit), read_idx(labels, limit)
    if len(x) != len(y):
        fail(f"{images}: {len(x)} images, {labels}: {len(y)} labels")
    fashion = "fashion" in str(images).lower()
    n_cls = max(10, int(y.max()) + 1 if len(y) else 10)
    s.classes = FASHION_MNIST_CLASSES if fashion else [str(i) for i in range(n_cls)]
    s.images = list(x)
    s.labels = [int(v) for v in y]
    return s


def keep_evenly(s: Pairs, n) -> Pairs:
    """At most n items, evenly spaced (vista's LabelledSet::keep_evenly)."""
    if n is not None and n < len(s):
        idx = [i * len(s) // n for i in range(n)]
        s.images, s.labels = [s.images[i] for i in idx], [s.labels[i] for i in idx]
        s.captions = [s.captions[i] for i in idx] if s.captions else s.captions
    return s


def is_idx_dir(path: pathlib.Path, split: str) -> bool:
    return path.is_dir() and any(n.startswith(split) and "idx3" in n for n in os.listdir(path))


def open_labelled(path: pathlib.Path, split: str, limit=None) -> Pairs:
    """vista's LabelledSet::open: an IDX images file (its labels found by name) or an IDX folder's `split` pair
    ("train" / "t10k") -- `limit`: the first N --, a `file,label` CSV or an ImageFolder (torchvision's order:
    sorted classes, sorted walk) -- `limit`: N evenly spaced."""
    if path.is_file() and path.suffix.lower() == ".csv":
        s = Pairs()
        rows = [r for r in csv.reader(path.read_text().splitlines()) if r]
        if rows and [c.strip().lower() for c in rows[0]] == ["file", "label"]:
            rows = rows[1:]
        s.classes = sorted({r[1].strip() for r in rows})
        for r in rows:
            s.images.append(path.parent / r[0].strip())
            s.labels.append(s.classes.index(r[1].strip()))
        return keep_evenly(s, limit)
    if path.is_file():
        name = path.name
        lab = name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
        if lab == name:
            fail(f"{path}: an IDX images file is named *-images-idx3-ubyte[.gz]; give a folder otherwise")
        return labelled_idx(path, path.with_name(lab), limit)
    if is_idx_dir(path, split):
        return labelled_idx(find_idx(path, split, "images-idx3-ubyte"), find_idx(path, split, "labels-idx1-ubyte"),
                            limit)
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(path))
    s = Pairs()
    s.classes = list(folder.classes)
    s.images = [pathlib.Path(p) for p, _ in folder.samples]
    s.labels = [int(c) for _, c in folder.samples]
    return keep_evenly(s, limit)


def apply_template(t: str, c: str) -> str:
    return t.replace("{}", c) if "{}" in t else f"{t} {c}"


def captioned(s: Pairs, templates) -> Pairs:
    s.captions = [[apply_template(t, s.classes[y]) for t in templates] for y in s.labels]
    return s


def header_columns(fields):
    def find(names):
        return next((i for i, f in enumerate(fields) if f.strip().lower() in names), None)

    f, c = find(FILE_COLUMNS), find(CAPTION_COLUMNS)
    return (f, c) if f is not None and c is not None else None


def read_captions_file(path: pathlib.Path) -> Pairs:
    """A captions file (.tsv / .csv / .jsonl), read as vista's CaptionSet::from_file reads it."""
    text = path.read_text(encoding="utf-8")
    base = path.parent
    ext = path.suffix.lower().lstrip(".")
    rows, skipped = [], []
    lines = text.splitlines()
    if ext in ("jsonl", "json"):
        for n, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                file = next(obj[k] for k in FILE_COLUMNS if isinstance(obj.get(k), str))
                caps = [obj[k] for k in CAPTION_COLUMNS if isinstance(obj.get(k), str)]
                caps += [c for c in obj.get("captions", []) if isinstance(c, str)]
                rows.append((n + 1, file, caps))
            except (ValueError, StopIteration, AttributeError) as e:
                skipped.append(f"{path}:{n + 1}: {e}")
    else:
        split = (lambda l: l.split("\t")) if ext == "tsv" else (lambda l: next(csv.reader([l])))
        cols = (0, 1)
        first = next((i for i, l in enumerate(lines) if l.strip()), 0)
        for n, line in enumerate(lines):
            line = line.rstrip("\r")
            if not line.strip():
                continue
            fields = split(line)
            if n == first and not rows and not skipped:
                hc = header_columns(fields)
                if hc:
                    cols = hc
                    continue
            if len(fields) > max(cols):
                rows.append((n + 1, fields[cols[0]].strip(), [fields[cols[1]].strip()]))
            else:
                skipped.append(f"{path}:{n + 1}: expected a file and a caption, found {len(fields)} field(s)")
    s = Pairs()
    s.skipped = skipped
    index, exists = {}, {}
    for line, file, caps in rows:
        if not file:
            s.skipped.append(f"{path}:{line}: no file named")
            continue
        full = base / file
        if full not in exists:
            exists[full] = full.is_file()
        if not exists[full]:
            s.skipped.append(f"{path}:{line}: {full} does not exist")
            continue
        caps = [c for c in caps if c.strip()]
        if not caps:
            s.skipped.append(f"{path}:{line}: empty caption for {file}")
            continue
        if full not in index:
            index[full] = len(s.images)
            s.images.append(full)
            s.captions.append([])
            s.labels.append(index[full])
        s.captions[index[full]].extend(caps)
    return s


def open_pairs(path: pathlib.Path, split: str, limit, templates) -> Pairs:
    """vista's CaptionSet::open: a captions file, a folder holding one, or a labelled set through templates."""
    cap = None
    if path.is_file():
        ext = path.suffix.lower()
        if ext in (".tsv", ".jsonl"):
            cap = path
        elif ext == ".csv":
            first = next((l for l in path.read_text().splitlines() if l.strip()), "")
            if header_columns(next(csv.reader([first]), [])):
                cap = path
    elif path.is_dir():
        cap = next((path / n for n in ("captions.tsv", "captions.jsonl", "captions.csv") if (path / n).is_file()), None)
    else:
        fail(f"{path} does not exist")
    s = read_captions_file(cap) if cap else captioned(open_labelled(path, split), templates)
    if limit is not None:
        s.truncate(limit)
    return s


def load_image(img):
    from PIL import Image

    if isinstance(img, np.ndarray):
        return Image.fromarray(img)  # mode "L"; the transform converts to RGB after the crop, as open_clip does
    with open(img, "rb") as f:
        im = Image.open(io.BytesIO(f.read()))
        im.load()
    return im


class TrainSet(torch.utils.data.Dataset):
    """open_clip's CsvDataset: transform(image), tokenize(caption) -- one caption drawn per image and epoch."""

    def __init__(self, pairs: Pairs, transform, context_length: int, seed: int):
        self.pairs, self.transform, self.context_length, self.seed = pairs, transform, context_length, seed
        self.epoch = 0

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        import open_clip

        caps = self.pairs.captions[i]
        pick = 0
        if len(caps) > 1:
            pick = random.Random((self.seed * 1_000_003 + i) * 1_000_003 + self.epoch).randrange(len(caps))
        image = self.transform(load_image(self.pairs.images[i]))
        return image, open_clip.tokenize([str(caps[pick])], context_length=self.context_length)[0]


class EvalSet(torch.utils.data.Dataset):
    """Evaluation transform; with texts: (image, first caption's tokens), else (image, label)."""

    def __init__(self, pairs: Pairs, transform, context_length=None):
        self.pairs, self.transform, self.context_length = pairs, transform, context_length

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        import open_clip

        image = self.transform(load_image(self.pairs.images[i]))
        if self.context_length is None:
            return image, self.pairs.labels[i]
        return image, open_clip.tokenize([str(self.pairs.captions[i][0])], context_length=self.context_length)[0]


class DataInfo:
    """open_clip_train.data.DataInfo's interface (that module needs webdataset / braceexpand to import)."""

    def __init__(self, dataloader, dataset):
        self.dataloader, self.dataset = dataloader, dataset

    def set_epoch(self, epoch):
        self.dataset.epoch = epoch


# ----------------------------------------------------------------------------------------------
# Model, optimiser (main.py)
# ----------------------------------------------------------------------------------------------
def random_seed(seed: int, rank: int = 0) -> None:
    """open_clip_train/main.py random_seed."""
    torch.manual_seed(seed + rank)
    np.random.seed(seed + rank)
    random.seed(seed + rank)


def model_cfg(args) -> dict:
    import open_clip

    if args.arch:
        cfg = open_clip.get_model_config(args.arch)
        if cfg is None:
            fail(f"--arch {args.arch}: not an open_clip model config")
        if cfg.get("custom_text") or "hf_model_name" in cfg.get("text_cfg", {}):
            fail(f"--arch {args.arch}: a CustomTextCLIP, not open_clip.model.CLIP")
        cfg = dict(cfg)
        cfg["quick_gelu"] = cfg.get("quick_gelu", False) or args.quick_gelu
        return cfg
    need = ("image_size", "patch_size", "width", "layers", "text_width", "text_layers", "text_heads", "embed_dim",
            "context_length")
    missing = [f"--{n.replace('_', '-')}" for n in need if getattr(args, n) is None]
    if missing:
        fail("without --arch, give " + ", ".join(missing))
    if args.width % HEAD_WIDTH:
        fail(f"--width {args.width} is not a multiple of the head width {HEAD_WIDTH}")
    if args.text_width % args.text_heads:
        fail(f"--text-width {args.text_width} is not a multiple of --text-heads {args.text_heads}")
    return dict(
        embed_dim=args.embed_dim,
        vision_cfg=dict(image_size=args.image_size, patch_size=args.patch_size, width=args.width, layers=args.layers,
                        head_width=HEAD_WIDTH, mlp_ratio=4.0),
        text_cfg=dict(context_length=args.context_length, vocab_size=VOCAB_SIZE, width=args.text_width,
                      heads=args.text_heads, layers=args.text_layers),
        quick_gelu=args.quick_gelu,
    )


def build_model(cfg: dict, args):
    from open_clip.model import CLIP

    kw = {}
    if args.loss == "siglip":  # main.py
        kw = dict(init_logit_scale=np.log(10), init_logit_bias=-10)
    model = CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=cfg.get("quick_gelu", False),
                 output_dict=True, **kw)
    if args.model:
        import open_clip

        open_clip.load_checkpoint(model, str(args.model), strict=True)
    return model


def make_optimizer(model, args):
    """open_clip_train/main.py, the `adamw` branch: two groups, betas / eps of params.py's ViT defaults."""
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or 'logit_scale' in n  # noqa: E731
    include = lambda n, p: not exclude(n, p)  # noqa: E731
    named_parameters = list(model.named_parameters())
    gain_or_bias_params = [p for n, p in named_parameters if exclude(n, p) and p.requires_grad]
    rest_params = [p for n, p in named_parameters if include(n, p) and p.requires_grad]
    return torch.optim.AdamW(
        [{"params": gain_or_bias_params, "weight_decay": 0.}, {"params": rest_params, "weight_decay": args.wd}],
        lr=args.lr, betas=(0.9, args.beta2), eps=args.eps)


def wise_ft_merge(alpha, theta_0, theta_1):
    """mlfoundations/wise-ft src/wise_ft.py `_merge`, the `fishers is None` branch (verbatim)."""
    return {key: (1 - alpha) * theta_0[key] + alpha * theta_1[key] for key in theta_0.keys()}


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def zero_shot_top1(model, pairs: Pairs, transform, templates, context_length, workers) -> float:
    import open_clip

    model.eval()
    classifier = open_clip.build_zero_shot_classifier(
        model, tokenizer=lambda texts: open_clip.tokenize(texts, context_length=context_length),
        classnames=pairs.classes, templates=[(lambda c, t=t: apply_template(t, c)) for t in templates],
        num_classes_per_batch=10, device="cpu", use_tqdm=False)
    loader = torch.utils.data.DataLoader(EvalSet(pairs, transform), batch_size=EVAL_BATCH, num_workers=workers)
    top1, n = 0.0, 0
    for images, target in loader:
        feats = model(image=images)["image_features"]  # normalised
        logits = 100. * feats @ classifier
        # open_clip_train.zero_shot.accuracy's top-1 (`output.topk(1)[1] == target`, summed); that function itself
        # fails on numpy 2 (float() of a 1-element array), so its one line for k = 1 is written out here.
        top1 += float((logits.topk(1, 1, True, True)[1].t() == target.view(1, -1)).sum())
        n += images.size(0)
    model.train()
    return top1 / max(1, n)


@torch.no_grad()
def retrieval(model, pairs: Pairs, transform, context_length, workers) -> dict:
    from open_clip_train.train import get_clip_metrics

    model.eval()
    loader = torch.utils.data.DataLoader(EvalSet(pairs, transform, context_length), batch_size=EVAL_BATCH,
                                         num_workers=workers)
    imgs, txts, scale = [], [], None
    for images, texts in loader:
        out = model(images, texts)
        imgs.append(out["image_features"])
        txts.append(out["text_features"])
        scale = out["logit_scale"].mean()
    m = get_clip_metrics(torch.cat(imgs), torch.cat(txts), scale)
    model.train()
    return {d: [float(m[f"{d}_R@{k}"]) for k in (1, 5, 10)] for d in ("image_to_text", "text_to_image")}


# ----------------------------------------------------------------------------------------------
# Observation hooks (values untouched)
# ----------------------------------------------------------------------------------------------
class Observer:
    def __init__(self, model, optimizer, base_scheduler, args, steps_per_epoch, metrics_file):
        self.model, self.optimizer, self.base = model, optimizer, base_scheduler
        self.args, self.steps_per_epoch, self.metrics = args, steps_per_epoch, metrics_file
        self.step, self.t0, self.lr, self.loss, self.norm = None, None, None, None, None
        self.epoch_steps = []
        self.params = [p for p in model.parameters() if p.requires_grad]

    def scheduler(self, step):
        if step != self.step:  # the first micro-batch of a step is in hand
            self.step, self.t0 = step, time.perf_counter()
        self.lr = self.base(step)
        return self.lr

    def loss_class(self):
        from open_clip.loss import ClipLoss, SigLipLoss

        obs = self

        class Recording(SigLipLoss if self.args.loss == "siglip" else ClipLoss):
            def forward(self, *a, **kw):
                out = super().forward(*a, **kw)
                obs.loss = float((sum(out.values()) if isinstance(out, dict) else out).detach())
                return out

        return Recording

    def clip_grad_norm_(self, orig):
        def wrapped(parameters, max_norm, *a, **kw):
            total = orig(parameters, max_norm, *a, **kw)
            self.norm = float(total)
            return total

        return wrapped

    def pre_step(self, opt, a, kw):
        if self.args.grad_clip_norm is None:
            grads = [p.grad for p in self.params if p.grad is not None]
            self.norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))

    def post_step(self, opt, a, kw):
        seconds = time.perf_counter() - self.t0
        ls = float(self.model.logit_scale.detach())
        ls = min(max(ls, 0.0), math.log(100))  # the clamp train_one_epoch applies right after
        row = dict(epoch=self.step // self.steps_per_epoch, iteration=self.step, loss=self.loss, lr=self.lr,
                   logit_scale=math.exp(ls), grad_norm=self.norm,
                   samples=self.args.batch_size * self.args.accum_freq, seconds=seconds)
        self.epoch_steps.append(row)
        self.metrics.write(json.dumps(row) + "\n")
        i = self.step % self.steps_per_epoch
        if i % LOG_EVERY == 0 or i == self.steps_per_epoch - 1:
            log(f"[train] epoch {row['epoch']} [{i + 1}/{self.steps_per_epoch}] loss {row['loss']:.4f} "
                f"lr {row['lr']:.3e} scale {row['logit_scale']:.2f} |g| {row['grad_norm']:.3f} ({seconds:.3f} s)")


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("train_clip_openclip", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--data", type=pathlib.Path, required=True, help="captions file / folder / labelled set")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--held-out", type=pathlib.Path, help="retrieval set (captions file / folder / labelled set)")
    g.add_argument("--hold-out-every", type=int, help="hold out images i with i %% K == K-1 as the retrieval set")
    p.add_argument("--zero-shot", type=pathlib.Path,
                   help="labelled set for zero-shot top-1 (an IDX folder: its t10k pair; default: the t10k pair of "
                        "an IDX --data folder)")
    p.add_argument("--zero-shot-limit", type=int, default=None, help="at most N zero-shot images")
    p.add_argument("--arch", help="an open_clip model config name (instead of the size flags)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--patch-size", type=int)
    p.add_argument("--width", type=int, help=f"vision width (heads = width / {HEAD_WIDTH})")
    p.add_argument("--layers", type=int, help="vision layers")
    p.add_argument("--text-width", type=int)
    p.add_argument("--text-layers", type=int)
    p.add_argument("--text-heads", type=int)
    p.add_argument("--embed-dim", type=int)
    p.add_argument("--context-length", type=int)
    p.add_argument("--quick-gelu", action="store_true")
    p.add_argument("--model", type=pathlib.Path, help="start from this open_clip checkpoint")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--accum-freq", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--wd", type=float, default=0.2)
    p.add_argument("--beta2", type=float, default=0.98, help="AdamW beta2 (open_clip's ViT default)")
    p.add_argument("--eps", type=float, default=1e-6, help="AdamW eps (open_clip's ViT default)")
    p.add_argument("--lr-scheduler", choices=("cosine", "const"), default="cosine",
                   help="open_clip_train.scheduler.cosine_lr or const_lr")
    p.add_argument("--warmup", type=int, default=10000)
    p.add_argument("--grad-clip-norm", type=float, default=None)
    p.add_argument("--loss", choices=("clip", "siglip"), default="clip")
    p.add_argument("--lock-image", type=int, nargs="?", const=0, default=None, metavar="N",
                   help="LiT: lock the image tower, N last groups left trainable (default 0)")
    p.add_argument("--lock-text", type=int, nargs="?", const=0, default=None, metavar="N",
                   help="lock the text tower, N last layers left trainable (default 0)")
    p.add_argument("--wise-ft", type=float, default=None, metavar="ALPHA",
                   help="fine-tuning runs (--model): evaluate the WiSE-FT merge with the start weights too")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (0: the main process)")
    p.add_argument("--eval-every", type=int, default=1,
                   help="evaluate after every K epochs and after the last (0: after the last only)")
    p.add_argument("--templates", action="append", default=None,
                   help='caption / zero-shot template, "{}" for the class (repeatable; default "a photo of a {}.")')
    p.add_argument("--limit", type=int, default=None, help="first N images of --data")
    p.add_argument("-o", "--output", type=pathlib.Path, required=True, help="run folder")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (inter-op: 1)")
    return p


def peak_rss_mb():
    """Linux ru_maxrss (KiB): this process; RUSAGE_CHILDREN = the largest reaped child (a DataLoader worker, but
    also `import torch`'s `ldconfig -p`, whose fork counts the half-imported parent's pages: see
    CHILDREN_RSS_AT_IMPORT_MB). A forked worker's peak includes the pages it shares with the parent."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0)


CHILDREN_RSS_AT_IMPORT_MB = peak_rss_mb()[1]  # after `import torch` (its ldconfig child), before any worker


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    args.templates = args.templates or ["a photo of a {}."]
    if args.epochs < 1 or args.batch_size < 1 or args.accum_freq < 1:
        fail("--epochs, --batch-size and --accum-freq must be at least 1")
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.set_default_dtype(torch.float32)

    import open_clip
    import open_clip_train.train as oc_train
    from open_clip_train.scheduler import const_lr, cosine_lr

    # ============ data ============
    t_data = time.perf_counter()
    pairs = open_pairs(args.data, "train", args.limit, args.templates)
    held = None
    if args.hold_out_every is not None:
        if args.hold_out_every < 2:
            fail(f"--hold-out-every {args.hold_out_every}: hold out every K-th image, K at least 2")
        pairs, held = pairs.hold_out(args.hold_out_every)
    elif args.held_out:
        held = open_pairs(args.held_out, "t10k", None, args.templates)
    if held is not None and len(held) == 0:
        held = None
    zs_path = args.zero_shot or (args.data if is_idx_dir(args.data, "t10k") else None)
    zs = open_labelled(zs_path, "t10k", args.zero_shot_limit) if zs_path else None
    cfg = model_cfg(args)
    size, ctx = cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]
    size = size if isinstance(size, int) else size[0]
    train_tf = open_clip.image_transform(size, is_train=True)
    eval_tf = open_clip.image_transform(size, is_train=False)
    log(f"[data] train {len(pairs)} images ({sum(map(len, pairs.captions))} captions, {len(pairs.skipped)} rows "
        f"skipped), held-out {len(held) if held else 0}, zero-shot {len(zs) if zs else 0} "
        f"({time.perf_counter() - t_data:.1f} s)")
    dataset = TrainSet(pairs, train_tf, ctx, args.seed)
    # open_clip_train.data.get_csv_dataset, one process
    dataloader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                             num_workers=args.workers, pin_memory=False, drop_last=True)
    dataloader.num_samples = len(dataset)
    dataloader.num_batches = len(dataloader)
    steps_per_epoch = dataloader.num_batches // args.accum_freq
    if steps_per_epoch == 0:
        fail(f"fewer pairs ({len(dataset)}) than one batch of {args.batch_size * args.accum_freq}")
    data = {"train": DataInfo(dataloader, dataset)}

    # ============ model, optimiser, schedule (main.py) ============
    random_seed(args.seed, 0)
    model = build_model(cfg, args)
    random_seed(args.seed, 0)
    if args.lock_image is not None:
        model.lock_image_tower(unlocked_groups=args.lock_image)
    if args.lock_text is not None:
        model.lock_text_tower(unlocked_layers=args.lock_text)
    start_state = ({k: v.detach().clone() for k, v in model.state_dict().items()}
                   if args.wise_ft is not None and args.model else None)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = make_optimizer(model, args)
    total_steps = steps_per_epoch * args.epochs
    if args.warmup >= total_steps:
        log(f"[warning] --warmup {args.warmup} >= {total_steps} steps: the learning rate never leaves the warm-up")
    log(f"[model] {json.dumps(cfg)}: {n_params} parameters ({n_train} trainable); {steps_per_epoch} steps/epoch, "
        f"{total_steps} in all")

    args.output.mkdir(parents=True, exist_ok=True)
    metrics = open(args.output / "metrics.jsonl", "w", encoding="utf-8")
    schedule = (cosine_lr if args.lr_scheduler == "cosine" else const_lr)(optimizer, args.lr, args.warmup, total_steps)
    obs = Observer(model, optimizer, schedule, args, steps_per_epoch, metrics)
    loss = obs.loss_class()()
    optimizer.register_step_pre_hook(obs.pre_step)
    optimizer.register_step_post_hook(obs.post_step)
    torch.nn.utils.clip_grad_norm_ = obs.clip_grad_norm_(torch.nn.utils.clip_grad_norm_)
    # The fields of open_clip_train.params.parse_args that train_one_epoch reads (one process, fp32, CPU);
    # log_every_n_steps large: its logging.info (not shown) runs at the first and last step of each epoch only.
    oc_args = types.SimpleNamespace(
        device="cpu", precision="fp32", distill=False, accum_freq=args.accum_freq, skip_scheduler=False,
        grad_clip_norm=args.grad_clip_norm, horovod=False, rank=0, local_rank=0, world_size=1,
        log_every_n_steps=10 ** 9, batch_size=args.batch_size, wandb=False, loss=args.loss)

    has_eval = zs is not None or held is not None

    def evaluate() -> dict:
        """vista's Evaluation: {"zero_shot_top1"?, "recall"?}."""
        e = {}
        if zs is not None:
            e["zero_shot_top1"] = zero_shot_top1(model, zs, eval_tf, args.templates, ctx, args.workers)
        if held is not None:
            e["recall"] = retrieval(model, held, eval_tf, ctx, args.workers)
        return e

    def score(e):
        """vista's Evaluation::score (the WiSE-FT gate): zero-shot top-1 when measured, else the mean recall@10."""
        if not e:
            return None
        if "zero_shot_top1" in e:
            return e["zero_shot_top1"]
        return (e["recall"]["image_to_text"][2] + e["recall"]["text_to_image"][2]) / 2 if "recall" in e else None

    def write(row):
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()

    # ============ the starting weights' evaluation (vista evaluates them before the first step) ============
    start_eval = None
    if has_eval:
        t = time.perf_counter()
        start_eval = evaluate()
        write({"start": True, "evaluation": start_eval})
        log(f"[eval] at the start: {json.dumps(start_eval)} ({time.perf_counter() - t:.1f} s)")

    # ============ training (main.py's epoch loop) ============
    epochs_out, trained_eval = [], None
    for epoch in range(args.epochs):
        obs.epoch_steps = []
        t = time.perf_counter()
        oc_train.train_one_epoch(model, data, loss, epoch, optimizer, None, obs.scheduler, None, oc_args)
        seconds = time.perf_counter() - t
        if any(not math.isfinite(s["loss"]) for s in obs.epoch_steps):
            fail(f"non-finite loss in epoch {epoch}")
        write({"epoch": epoch, "epoch_seconds": seconds})
        steps = [s["seconds"] for s in obs.epoch_steps]
        samples = sum(s["samples"] for s in obs.epoch_steps)
        epochs_out.append(dict(epoch=epoch, seconds=seconds, samples=samples, samples_per_s=samples / seconds,
                               step_seconds_median=float(np.median(steps)),
                               loss_mean=float(np.mean([s["loss"] for s in obs.epoch_steps])),
                               loss_last=obs.epoch_steps[-1]["loss"]))
        log(f"[epoch {epoch}] {seconds:.2f} s, {samples / seconds:.1f} samples/s, step median "
            f"{np.median(steps):.3f} s, loss mean {epochs_out[-1]['loss_mean']:.4f}")
        completed = epoch + 1
        if has_eval and (completed == args.epochs or (args.eval_every > 0 and completed % args.eval_every == 0)):
            t = time.perf_counter()
            trained_eval = evaluate()
            write({"epoch": epoch, "evaluation": trained_eval})
            log(f"[eval] after epoch {epoch}: {json.dumps(trained_eval)} ({time.perf_counter() - t:.1f} s)")
    metrics.close()

    # ============ WiSE-FT and the export gate of a fine-tuning run (vista's `finish`) ============
    wise, exported, decision = None, "trained", "trained from scratch: the trained weights are exported"
    if args.model:
        best_eval, best_name = trained_eval, "trained"
        if args.wise_ft is not None:
            model.load_state_dict(wise_ft_merge(args.wise_ft, start_state, model.state_dict()))
            best_eval, best_name = evaluate(), "wise-ft"
            wise = [args.wise_ft, best_eval]
            log(f"[eval] WiSE-FT alpha {args.wise_ft}: {json.dumps(best_eval)}")
        s0, s1 = score(start_eval), score(best_eval)
        if s0 is not None and s1 is not None and s1 < s0:
            exported, decision = "start", f"the {best_name} weights score {s1:.4f}, below the start's {s0:.4f}"
        elif s0 is not None and s1 is not None:
            exported, decision = best_name, f"the {best_name} weights score {s1:.4f}, the start {s0:.4f}"
        else:
            exported, decision = best_name, "no held-out evaluation to gate on"

    self_mb, children_mb = peak_rss_mb()
    import PIL
    import torchvision

    report = {
        # vista's Report
        "start": start_eval, "trained": trained_eval, "wise_ft": wise, "exported": exported, "decision": decision,
        "epochs": args.epochs, "skipped_samples": 0,
        # the reference's own
        "framework": "pytorch (open_clip_train.train.train_one_epoch)",
        "chance": {"zero_shot_top1": 1 / len(zs.classes) if zs else None,
                   "recall": [min(1.0, k / len(held)) for k in (1, 5, 10)] if held else None},
        "sizes": {"train_images": len(pairs), "train_captions": sum(map(len, pairs.captions)),
                  "skipped_rows": len(pairs.skipped), "held_out": len(held) if held else 0,
                  "zero_shot_images": len(zs) if zs else 0, "zero_shot_classes": len(zs.classes) if zs else 0,
                  "steps_per_epoch": steps_per_epoch, "samples_per_epoch": steps_per_epoch * args.batch_size *
                  args.accum_freq, "params": n_params, "trainable_params": n_train},
        "epoch_seconds": [e["seconds"] for e in epochs_out],
        "epochs_detail": epochs_out,
        "peak_rss_self_mb": self_mb, "peak_rss_children_mb": children_mb,
        "peak_rss_children_at_import_mb": CHILDREN_RSS_AT_IMPORT_MB,
        "threads": torch.get_num_threads(), "workers": args.workers,
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "open_clip_torch": open_clip.__version__, "numpy": np.__version__, "pillow": PIL.__version__,
                     "python": platform.python_version()},
        "model_cfg": cfg,
        "config": {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()},
    }
    (args.output / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    summary = {k: report[k] for k in ("framework", "epochs", "start", "trained", "wise_ft", "epoch_seconds",
                                      "peak_rss_self_mb", "peak_rss_children_mb")}
    summary["samples_per_s"] = [e["samples_per_s"] for e in epochs_out]
    print(json.dumps(summary), flush=True)
    return report


if __name__ == "__main__":
    main()
