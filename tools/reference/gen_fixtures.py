"""Single entry point for all golden fixtures under crates/vista/tests/fixtures/.

    python tools/reference/gen_fixtures.py                       # everything
    python tools/reference/gen_fixtures.py --only clip           # one section
    python tools/reference/gen_fixtures.py --only clip --only tokenizer

Each section is a module tools/reference/gen_<section>.py with main(out_dir: pathlib.Path),
imported lazily so a missing or broken module only fails its own section.
Deterministic: fixed seeds, float32, one CPU thread.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import sys
import time
import traceback

# Pin thread pools before torch is imported anywhere (reproducible reductions).
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # CPU only
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

# clip_e2e and family read the images that preprocess writes, so they come after it.
SECTIONS = ("clip", "tokenizer", "preprocess", "clip_e2e", "family", "sam", "dino", "rle", "amg", "dino_train",
            "dino_loss", "fit", "clip_train", "clip_train_rn", "resnet")
# Where each section writes, below the fixtures root.
OUT_DIR = {"clip_e2e": "clip"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", choices=SECTIONS,
                    help="generate only this section (repeatable); default: all")
    ap.add_argument("--out", type=pathlib.Path, default=common.FIXTURES_ROOT,
                    help=f"fixtures root (default: {common.FIXTURES_ROOT})")
    args = ap.parse_args(argv)

    sections = args.only or list(SECTIONS)
    failed = []
    for name in sections:
        # Reset the global state before every section so sections are independent
        # of each other and of the order they run in.
        common.setup_determinism(0)
        t0 = time.time()
        out = args.out / OUT_DIR.get(name, name)
        print(f"== {name} -> {out}", flush=True)
        try:
            module = importlib.import_module(f"gen_{name}")
            module.main(out)
        except Exception:  # noqa: BLE001 - report and continue with the other sections
            traceback.print_exc()
            failed.append(name)
            print(f"== {name}: FAILED", flush=True)
            continue
        print(f"== {name}: ok ({time.time() - t0:.1f}s)", flush=True)

    if failed:
        print(f"failed sections: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
