"""Shared helpers for the golden-fixture generators (tools/reference/).

Everything here is deterministic: float32 on CPU, one thread, explicit seeds.
"""

from __future__ import annotations

import json
import pathlib
from typing import Dict, Iterable

import torch

# OpenAI CLIP normalisation constants (as shipped with the real checkpoints).
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES_ROOT = REPO_ROOT / "crates" / "vista" / "tests" / "fixtures"


def setup_determinism(seed: int = 0) -> None:
    """Fixed seed, float32 default, single thread."""
    torch.manual_seed(seed)
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        # Can only be set once per process, before any inter-op work started.
        pass


def generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def randn(shape, g: torch.Generator, std: float = 1.0, mean: float = 0.0) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32) * std + mean


def versions() -> Dict[str, str]:
    out = {"torch": torch.__version__}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        import open_clip

        out["open_clip"] = open_clip.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        import safetensors

        out["safetensors"] = safetensors.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def write_json(path: pathlib.Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def save_golden(path: pathlib.Path, tensors: Dict[str, torch.Tensor], metadata: Dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    clean = {}
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous()
        if v.is_floating_point():
            v = v.to(torch.float32)
        clean[k] = v.clone()
    save_file(clean, str(path), metadata=metadata)


def clear_dir(d: pathlib.Path, keep: Iterable[str] = ()) -> None:
    """Remove generated files in d (not recursive), so stale outputs never linger."""
    d.mkdir(parents=True, exist_ok=True)
    keep = set(keep)
    for p in d.iterdir():
        if p.is_file() and p.name not in keep:
            p.unlink()


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


def assert_close(name: str, a: torch.Tensor, b: torch.Tensor, atol: float) -> float:
    if a.shape != b.shape:
        raise AssertionError(f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}")
    d = max_abs(a, b)
    if not d <= atol:
        raise AssertionError(f"{name}: max_abs diff {d:.3e} > {atol:.1e}")
    return d


def min_row_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.detach().double().reshape(a.shape[0], -1)
    b = b.detach().double().reshape(b.shape[0], -1)
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).min().item()
