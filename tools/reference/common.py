"""Shared helpers for the golden-fixture generators (tools/reference/).

Everything here is deterministic: float32 on CPU, one thread, explicit seeds.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
from typing import Callable, Dict, Iterable, Optional

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


def draw_normal(p: torch.Tensor, g: torch.Generator, std: float, mean: float = 0.0) -> None:
    """Overwrite p in place with a seeded normal draw."""
    p.copy_(randn(p.shape, g, std=std, mean=mean))


def draw_layernorm(p: torch.Tensor, p_name: str, g: torch.Generator, std: float) -> str:
    """LayerNorm weight 1 + std*randn, bias std*randn; returns the rule name."""
    draw_normal(p, g, std, mean=1.0 if p_name == "weight" else 0.0)
    return f"ln_{p_name}"


def draw_fan_in(p: torch.Tensor, g: torch.Generator, gain: float, fan_in: Optional[int] = None) -> None:
    """Weight matrix with std gain / sqrt(fan_in) (default fan_in: one output row, [out, in, ...])."""
    draw_normal(p, g, gain / math.sqrt(p[0].numel() if fan_in is None else fan_in))


def rerandomise(model: torch.nn.Module, g: torch.Generator, draw: Callable, buffers: bool = False) -> Dict[str, str]:
    """Re-draw every parameter (and, with buffers, every buffer) of model in named_modules order.

    draw(full_name, mod_name, module, p_name, tensor) overwrites the tensor and returns the rule it used, or None
    to leave the tensor alone (it is then not listed). Returns full name -> rule.
    """
    rules: Dict[str, str] = {}
    with torch.no_grad():
        for mod_name, module in model.named_modules():
            tensors = list(module.named_parameters(recurse=False))
            if buffers:
                tensors += list(module.named_buffers(recurse=False))
            for p_name, p in tensors:
                full = f"{mod_name}.{p_name}" if mod_name else p_name
                rule = draw(full, mod_name, module, p_name, p)
                if rule is not None:
                    rules[full] = rule
    return rules


class Capture:
    """Forward / forward-pre hooks that store a tensor per key (each key once per run)."""

    def __init__(self):
        self.out: Dict[str, torch.Tensor] = {}
        self.handles = []

    def _store(self, key, t):
        if key in self.out:
            raise RuntimeError(f"hook {key} fired twice")
        self.out[key] = t.detach().clone().contiguous()

    def fwd(self, module: torch.nn.Module, key: str, fn: Callable = lambda t: t):
        def hook(_m, _inp, out):
            self._store(key, fn(out[0] if isinstance(out, (tuple, list)) else out))

        self.handles.append(module.register_forward_hook(hook))

    def pre(self, module: torch.nn.Module, key: str, fn: Callable = lambda t: t):
        def hook(_m, inp):
            self._store(key, fn(inp[0]))

        self.handles.append(module.register_forward_pre_hook(hook))

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []


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


def report_size(out_dir: pathlib.Path, section: str, max_kib: int) -> None:
    """Print the total size of the files in out_dir and fail above max_kib."""
    total = sum(p.stat().st_size for p in out_dir.iterdir())
    print(f"{section} fixtures: {total / 1024:.1f} KiB in {out_dir}")
    assert total < max_kib * 1024, total


def run_standalone(main: Callable, default_out: pathlib.Path) -> None:
    """`python gen_<section>.py [out_dir]`: determinism set up, then main(out_dir or default_out)."""
    setup_determinism(0)
    main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else default_out)


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
