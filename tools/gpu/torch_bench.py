"""PyTorch side of the GPU check: writes the random-weight real-size models vista loads, PyTorch's
outputs for a few inputs, and PyTorch eager timings of the same workloads on the same GPU.

    python3 tools/gpu/torch_bench.py --out DIR [--device cuda|cpu] [--tiny] [--quick]

Writes into DIR:
  clip_b32/                 transformers CLIPModel, openai/clip-vit-base-patch32 shapes (save_pretrained)
  dino_vits16.safetensors   timm vit_small_patch16_224 (DINO ViT-S/16), head removed
  dino_vitb16.safetensors   timm vit_base_patch16_224 (DINO ViT-B/16)
  dinov2_vits14.safetensors timm vit_small_patch14_dinov2 (DINOv2 ViT-S/14, 518 grid resampled to 224)
  sam_vit_b.safetensors     segment_anything build_sam_vit_b() (from the wheel in .gpu/wheels if not installed)
  refs.safetensors          `<key>.input` (channels-last pixels) and `<key>.output` for a few inputs (f32)
  torch.json                versions, GPU, GEMM peaks, one row per (workload, dtype): median ms, peak MiB

Timing: f32 with TF32 off (torch.backends.*.allow_tf32 = False) and bf16 under
torch.autocast(bfloat16); inference under torch.inference_mode(); warm-ups, then each call followed
by torch.cuda.synchronize(), the median; peak memory from torch.cuda.max_memory_allocated() after
reset_peak_memory_stats() (tensors only, as vista's pool high-water mark).
Seeds are fixed; nothing is downloaded. Runs on the CPU too (--device cpu --tiny: the rehearsal).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time
import traceback

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tools" / "bench"))
sys.path.insert(0, str(ROOT / "tools" / "reference"))

SEED = 0
# openai/clip-vit-base-patch32 (tools/bench/make_model.py), legacy eos_token_id 2: argmax pooling.
TEXT_CONFIG = dict(
    vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2,
    pad_token_id=1, projection_dim=512,
)
VISION_CONFIG = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
    patch_size=32, num_channels=3, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=512,
)
DINO = {  # file key: (timm name, kwargs)
    "dino_vits16": ("vit_small_patch16_224", {}),
    "dino_vitb16": ("vit_base_patch16_224", {}),
    "dinov2_vits14": ("vit_small_patch14_dinov2", {"img_size": 518, "dynamic_img_size": True}),
}


def log(msg):
    print(f"[torch_bench] {msg}", flush=True)


class Ctx:
    def __init__(self, args):
        import torch

        self.torch = torch
        self.dev = torch.device(args.device)
        self.cuda = self.dev.type == "cuda"
        self.tiny = args.tiny
        self.quick = args.quick or args.tiny
        self.no_timing = args.no_timing
        self.rows = []
        self.errors = []

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def batch(self, full):
        return min(full, 2) if self.tiny else full

    def time(self, workload, dtype, items, unit, fn, extra=None, iters=20, budget=4.0):
        torch = self.torch
        if self.no_timing:
            return
        warm, iters = (1, 3) if self.quick else (3, iters)
        try:
            for _ in range(warm):
                fn()
            self.sync()
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
            ms = []
            start = time.perf_counter()
            while len(ms) < iters and (len(ms) < 3 or time.perf_counter() - start < budget):
                t = time.perf_counter()
                fn()
                self.sync()
                ms.append((time.perf_counter() - t) * 1e3)
            peak = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else None
            med = statistics.median(ms)
            self.rows.append(dict(workload=workload, dtype=dtype, median_ms=med, min_ms=min(ms), iters=len(ms),
                                  items=items, unit=unit, per_item_ms=med / items, peak_mib=peak, extra=extra or {}))
            log(f"{workload:<26} {dtype:<5} {med:9.3f} ms/call {med / items:9.4f} ms/{unit} (n={len(ms)}, "
                f"peak {peak and round(peak)} MiB)")
        except Exception as e:  # noqa: BLE001 - recorded, the other workloads go on
            self.errors.append(f"{workload} {dtype}: {type(e).__name__}: {e}")
            log(f"{workload} {dtype} FAILED: {e}")
            traceback.print_exc()
        finally:
            if self.cuda:
                torch.cuda.empty_cache()

    def modes(self):
        """(dtype name, context manager factory) for f32 (TF32 off) and bf16 autocast."""
        import contextlib

        torch = self.torch
        yield "f32", contextlib.nullcontext
        yield "bf16", lambda: torch.autocast(device_type=self.dev.type, dtype=torch.bfloat16)


def no_tf32(torch):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
    except Exception:  # noqa: BLE001 - older / newer torch spell it one way only
        pass


def gemm(ctx):
    torch = ctx.torch
    n = 512 if ctx.tiny else 8192
    out = []
    for name, dt in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        g = torch.Generator(device=ctx.dev).manual_seed(1)
        a = torch.randn(n, n, device=ctx.dev, dtype=dt, generator=g)
        b = torch.randn(n, n, device=ctx.dev, dtype=dt, generator=g)
        for _ in range(3):
            a @ b
        ctx.sync()
        ms = []
        for _ in range(10):
            t = time.perf_counter()
            a @ b
            ctx.sync()
            ms.append((time.perf_counter() - t) * 1e3)
        med = statistics.median(ms)
        tf = 2 * n**3 / (med * 1e-3) / 1e12
        out.append(dict(n=n, dtype=name, median_ms=med, tflops=tf))
        log(f"torch matmul {n}^3 {name}: {med:.3f} ms = {tf:.1f} TFLOP/s")
        del a, b
    return out


def save_safetensors(sd, path):
    from safetensors.torch import save_file

    save_file({k: v.detach().to("cpu").contiguous() for k, v in sd.items()}, str(path))


def full_length_ids(torch, b):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 49405, (b, 77), generator=g)
    ids[:, 0] = 49406
    ids[:, -1] = 49407
    return ids


def bench_clip(ctx, out, refs):
    torch = ctx.torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(SEED)
    cfg = CLIPConfig(text_config=TEXT_CONFIG, vision_config=VISION_CONFIG, projection_dim=512,
                     logit_scale_init_value=2.6592)
    model = CLIPModel(cfg).float().eval()
    model.save_pretrained(str(out / "clip_b32"), safe_serialization=True)
    model = model.to(ctx.dev)

    def image(x):
        o = model.get_image_features(pixel_values=x)
        return getattr(o, "pooler_output", o)

    def text(ids):
        o = model.get_text_features(input_ids=ids)
        return getattr(o, "pooler_output", o)

    g = torch.Generator().manual_seed(3)
    x4 = torch.rand(4, 3, 224, 224, generator=g) * 4 - 2
    with torch.inference_mode():
        refs["clip_image.input"] = x4.permute(0, 2, 3, 1).contiguous()
        refs["clip_image.output"] = image(x4.to(ctx.dev)).float().cpu()
    b = ctx.batch(256)
    x = (torch.rand(b, 3, 224, 224, generator=g) * 4 - 2).to(ctx.dev)
    ids = full_length_ids(torch, b).to(ctx.dev)
    for dt, amp in ctx.modes():
        with torch.inference_mode(), amp():
            ctx.time(f"clip_b32_image_b{b}", dt, b, "image", lambda: image(x))
            ctx.time(f"clip_b32_text_b{b}", dt, b, "text", lambda: text(ids), extra={"tokens": 77})
    del model


def bench_dino(ctx, out, refs):
    torch = ctx.torch
    import bench_dino  # tools/bench: timm models of the DINO architectures, DINOv2's resampling

    keys = {"dino_vits16": "vits16", "dino_vitb16": "vitb16", "dinov2_vits14": "v2s14"}
    g = torch.Generator().manual_seed(4)
    x2 = torch.rand(2, 3, 224, 224, generator=g) * 4 - 2
    b = ctx.batch(256)
    x = (torch.rand(b, 3, 224, 224, generator=g) * 4 - 2).to(ctx.dev)
    for i, (key, bkey) in enumerate(keys.items()):
        torch.manual_seed(SEED + i)
        model = bench_dino.build_torch(bkey)
        sd = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
        save_safetensors(sd, out / f"{key}.safetensors")
        model = model.to(ctx.dev).eval()
        with torch.inference_mode():
            refs[f"{key}.input"] = x2.permute(0, 2, 3, 1).contiguous()
            refs[f"{key}.output"] = model(x2.to(ctx.dev)).float().cpu()
        for dt, amp in ctx.modes():
            with torch.inference_mode(), amp():
                ctx.time(f"{key}_b{b}", dt, b, "image", lambda: model(x))
        del model


def import_segment_anything():
    try:
        import segment_anything  # noqa: F401
    except ImportError:
        wheels = sorted((ROOT / ".gpu" / "wheels").glob("segment_anything-*.whl"))
        if not wheels:
            raise
        sys.path.insert(0, str(wheels[-1]))  # a pure-Python wheel imports from the zip
        import segment_anything  # noqa: F401
    import segment_anything as sa

    return sa


def bench_sam(ctx, out, refs):
    torch = ctx.torch
    import numpy as np

    sa = import_segment_anything()
    torch.manual_seed(SEED)
    sam = sa.build_sam_vit_b()
    with torch.no_grad():
        for name, prm in sam.image_encoder.named_parameters():
            if name == "pos_embed" or "rel_pos" in name:
                prm.copy_(torch.randn_like(prm) * 0.02)
    save_safetensors(sam.state_dict(), out / "sam_vit_b.safetensors")
    sam = sam.to(ctx.dev).eval()
    g = torch.Generator().manual_seed(5)
    x1 = torch.rand(1, 3, 1024, 1024, generator=g) * 4 - 2
    with torch.inference_mode():
        refs["sam_vit_b.input"] = x1.permute(0, 2, 3, 1).contiguous()
        refs["sam_vit_b.output"] = sam.image_encoder(x1.to(ctx.dev)).float().permute(0, 2, 3, 1).reshape(1, -1).cpu()
    # The decoder on one 1536x1024 photo, as vista's check: the point and the boxes in the same
    # places (vista draws its boxes from its own seeded stream; the work is the same).
    (ih, iw) = (1024, 1536)
    pred = sa.SamPredictor(sam)
    rng = np.random.default_rng(5)
    nb = 4 if ctx.tiny else 64
    bw, bh = rng.uniform(0.1, 0.5, nb) * iw, rng.uniform(0.1, 0.5, nb) * ih
    x0, y0 = rng.uniform(0, 1, nb) * (iw - bw), rng.uniform(0, 1, nb) * (ih - bh)
    boxes = torch.from_numpy(np.stack([x0, y0, x0 + bw, y0 + bh], 1).astype(np.float32))
    point = np.array([[600.0, 400.0]], np.float32)
    for dt, amp in ctx.modes():
        for full in (1, 8):
            b = ctx.batch(full)
            x = (torch.rand(b, 3, 1024, 1024, generator=g) * 4 - 2).to(ctx.dev)
            with torch.inference_mode(), amp():
                ctx.time(f"sam_vit_b_encoder_b{b}", dt, b, "image", lambda: sam.image_encoder(x), iters=10)
            del x
        with torch.inference_mode(), amp():
            emb = sam.image_encoder((torch.rand(1, 3, 1024, 1024, generator=g) * 4 - 2).to(ctx.dev))
        # SamPredictor.set_image without the encoder: the features and the sizes.
        pred.reset_image()
        pred.features = emb
        pred.original_size = (ih, iw)
        pred.input_size = pred.transform.get_preprocess_shape(ih, iw, sam.image_encoder.img_size)
        pred.is_image_set = True
        with torch.inference_mode(), amp():
            # predict_torch, not predict: predict's numpy conversion fails on bf16 outputs.
            pc = pred.transform.apply_coords_torch(torch.from_numpy(point)[None], (ih, iw)).to(ctx.dev)
            pl = torch.ones(1, 1, dtype=torch.int64, device=ctx.dev)

            def point1():
                masks, iou, low = pred.predict_torch(pc, pl, multimask_output=True)
                return masks.cpu()

            ctx.time("sam_vit_b_decoder_point1", dt, 1, "prompt", point1,
                     extra={"image": [iw, ih], "masks": 3, "note": "predict_torch, masks copied to the host"})
            bt = pred.transform.apply_boxes_torch(boxes, (ih, iw)).to(ctx.dev)

            def box64():
                masks, iou, low = pred.predict_torch(None, None, boxes=bt, multimask_output=False)
                return masks.cpu()

            ctx.time(f"sam_vit_b_decoder_box{nb}", dt, nb, "prompt", box64,
                     extra={"image": [iw, ih], "masks": nb, "note": "predict_torch, masks copied to the host"})
    del sam, pred


def bench_train(ctx):
    """DINO ViT-S/16 training steps as main_dino.py's train_one_epoch: 2 global 224 + 8 local 96
    crops, DINOHead(384, 65536), DINOLoss, AdamW over get_params_groups, clip 3.0, EMA 0.996."""
    torch = ctx.torch
    from gen_dino_loss import DINOHead, DINOLoss, clip_gradients, get_params_groups
    from train_dino_fmnist import MultiCropWrapper, VisionTransformer

    tiny = ctx.tiny
    b = 4 if tiny else 64
    if tiny:
        arch = dict(img_size=[32], patch_size=8, embed_dim=64, depth=2, num_heads=4)
        out_dim, hidden, bottleneck, gs, ls, nl = 256, 128, 32, 32, 16, 4
    else:
        arch = dict(img_size=[224], patch_size=16, embed_dim=384, depth=12, num_heads=6)
        out_dim, hidden, bottleneck, gs, ls, nl = 65536, 2048, 256, 224, 96, 8
    torch.manual_seed(SEED)

    def vit(dp):
        return VisionTransformer(qkv_bias=True, drop_path_rate=dp, norm_layer=torch.nn.LayerNorm, **arch)

    d = arch["embed_dim"]
    student = MultiCropWrapper(vit(0.1), DINOHead(d, out_dim, hidden_dim=hidden, bottleneck_dim=bottleneck))
    teacher = MultiCropWrapper(vit(0.0), DINOHead(d, out_dim, hidden_dim=hidden, bottleneck_dim=bottleneck))
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    student, teacher = student.to(ctx.dev), teacher.to(ctx.dev)
    loss_fn = DINOLoss(out_dim, nl + 2, 0.04, 0.04, 0, 100).to(ctx.dev)
    opt = torch.optim.AdamW(get_params_groups(student), lr=5e-4)
    g = torch.Generator().manual_seed(6)
    crops = [(torch.rand(b, 3, gs, gs, generator=g) * 4 - 2).to(ctx.dev) for _ in range(2)]
    crops += [(torch.rand(b, 3, ls, ls, generator=g) * 4 - 2).to(ctx.dev) for _ in range(nl)]
    extra = dict(arch=f"ViT {d}/{arch['patch_size']}, depth {arch['depth']}", crops=f"2x{gs} + {nl}x{ls}",
                 head_out_dim=out_dim,
                 step="teacher fwd (globals) + student fwd/bwd (all crops) + DINO loss + clip 3.0 + AdamW + EMA",
                 reference="tools/reference (main_dino.py's modules, manual attention)")
    for dt, amp in ctx.modes():
        def step():
            with amp():
                t_out = teacher(crops[:2])
                s_out = student(crops)
                loss = loss_fn(s_out, t_out, 0)
            opt.zero_grad()
            loss.backward()
            clip_gradients(student, 3.0)
            opt.step()
            with torch.no_grad():
                for pq, pk in zip(student.parameters(), teacher.parameters()):
                    pk.data.mul_(0.996).add_((1 - 0.996) * pq.detach().data)
            if not torch.isfinite(loss):
                raise RuntimeError("loss not finite")

        ctx.time(f"dino_train_vits16_b{b}", dt, b, "image", step, extra=extra, iters=10)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=pathlib.Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="batches of 1-2 (CPU rehearsal); the models keep their size")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--parts", default="clip,dino,sam,train")
    ap.add_argument("--no-timing", action="store_true", help="write the models and references only")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    no_tf32(torch)
    ctx = Ctx(args)
    info = dict(torch=torch.__version__, device=str(ctx.dev), cuda=torch.version.cuda)
    for mod in ("transformers", "timm", "safetensors", "numpy"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            info[mod] = None
    if ctx.cuda:
        p = torch.cuda.get_device_properties(ctx.dev)
        info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                    multiprocessors=p.multi_processor_count)
    log(json.dumps(info))
    result = dict(info=info, tf32=False)
    t0 = time.perf_counter()
    try:
        result["gemm"] = gemm(ctx)
    except Exception as e:  # noqa: BLE001
        ctx.errors.append(f"gemm: {e}")
    refs = {}
    parts = args.parts.split(",")
    for name, fn in (("clip", bench_clip), ("dino", bench_dino), ("sam", bench_sam)):
        if name in parts:
            try:
                fn(ctx, args.out, refs)
            except Exception as e:  # noqa: BLE001
                ctx.errors.append(f"{name}: {type(e).__name__}: {e}")
                traceback.print_exc()
    if refs:
        save_safetensors(refs, args.out / "refs.safetensors")
    if "train" in parts:
        try:
            bench_train(ctx)
        except Exception as e:  # noqa: BLE001
            ctx.errors.append(f"train: {type(e).__name__}: {e}")
            traceback.print_exc()
    result.update(bench=ctx.rows, errors=ctx.errors, seconds=time.perf_counter() - t0)
    (args.out / "torch.json").write_text(json.dumps(result, indent=1) + "\n")
    log(f"done in {result['seconds']:.1f} s, {len(ctx.rows)} timings, {len(ctx.errors)} errors")
    for e in ctx.errors:
        log(f"ERROR {e}")


if __name__ == "__main__":
    main()
