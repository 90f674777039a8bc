"""Pieces every benchmark script shares (standard library only, importable by worker processes)."""

from __future__ import annotations

import pathlib


def vm_hwm_mb():
    """This process's peak resident memory in MB (Linux `VmHWM`), or None."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def write_marked_section(path: pathlib.Path, block: str, begin: str, end: str, header: str = "# Benchmarks\n") -> None:
    """Replaces the text between `begin` and `end` in `path` with `block` (which carries the markers),
    or appends the block when the markers are absent; text outside the markers is kept."""
    text = path.read_text() if path.exists() else header
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        post = rest.split(end, 1)[1]
        path.write_text(pre + block.rstrip("\n") + post)
    else:
        path.write_text(text.rstrip("\n") + "\n\n" + block)
