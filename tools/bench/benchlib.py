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


def _run(cmd) -> str:
    import subprocess

    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def versions(python: str, packages, crates, repo_root: pathlib.Path, extra_code: str = "") -> dict:
    """Versions of the Python `packages` as `python` sees them, of the Rust `crates` in the lock file,
    of rustc, and of vista itself (commit, marked when the tree has uncommitted changes)."""
    import json

    code = (
        "import json, importlib.metadata as m, platform\n"
        "out = {}\n"
        f"for p in {tuple(packages)!r}:\n"
        "    try: out[p] = m.version(p)\n"
        "    except Exception: out[p] = None\n"
        + extra_code
        + "out['python'] = platform.python_version()\n"
        "print(json.dumps(out))\n"
    )
    v = json.loads(_run([python, "-c", code]) or "{}")
    lock_path = repo_root / "Cargo.lock"
    lock = lock_path.read_text() if lock_path.exists() else ""
    for crate in crates:
        marker = f'name = "{crate}"\nversion = "'
        i = lock.find(marker)
        v[crate] = lock[i + len(marker):].split('"', 1)[0] if i >= 0 else None
    v["rustc"] = _run(["rustc", "-V"]).removeprefix("rustc ")
    rev = _run(["git", "-C", str(repo_root), "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "-C", str(repo_root), "status", "--porcelain", "--untracked-files=no"])
    v["vista"] = f"{rev}{' + uncommitted changes' if dirty else ''}" if rev else None
    return v
