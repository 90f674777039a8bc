"""CLIP ViT-B/32 benchmark: vista vs PyTorch (transformers) vs ONNX Runtime, one command.

Same model (random weights, the exact openai/clip-vit-base-patch32 shapes), same inputs (read by
every engine from one safetensors file), same thread count, same iteration counts. Every
(engine, workload) pair runs in its own fresh process, so the peak RSS reported is that
process's alone (``os.wait4`` rusage of that child).

Workloads: ``image_b1`` and ``image_b32`` (preprocessed [B,3,224,224] tensors, model forward
only) and ``text_b32`` (32 prompts "a photo of a {label}.", 77 ids each).

    python tools/bench/bench_clip.py                 # full run, writes BENCHMARKS.md
    python tools/bench/bench_clip.py --quick --no-write   # smoke test, a few iterations

Steps: (a) ``make_model.py`` if the model / ONNX / inputs are missing, (b) ``cargo build
--release -p vista --example bench_clip``, (c) each engine in its own subprocess, (d) a table on
stdout, raw results in ``bench-out/bench_clip_results.json`` and the report in ``BENCHMARKS.md``
(between the ``bench_clip`` markers; text outside them is kept).

The same file is also the PyTorch and ONNX Runtime worker (``--worker torch|ort``), so each
engine's process imports only what it uses.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import make_model  # noqa: E402  (stdlib only at import time; torch is imported lazily there)
from benchlib import versions as benchlib_versions, vm_hwm_mb, write_marked_section  # noqa: E402

# name: (tower, batch); `text_b32_trim` gives every engine the ids cut after the longest prompt.
WORKLOADS = {"image_b1": ("image", 1), "image_b32": ("image", 32), "text_b32": ("text", 32),
             "text_b32_trim": ("text", 32)}
TITLES = {
    "image_b1": "Image embedding, batch 1",
    "image_b32": "Image embedding, batch 32",
    "text_b32": "Text embedding, batch 32, 77-token inputs",
    "text_b32_trim": "Text embedding, batch 32, inputs trimmed to the longest prompt (same work for all)",
}
ENGINES = ("vista", "torch", "ort")
ENGINE_NAMES = {"vista": "vista", "torch": "PyTorch", "ort": "ONNX Runtime"}
# (warm-up per process, timed iterations in all) per workload: full run and --quick. The timed
# iterations are split over the rounds (each round is a fresh process per engine).
FULL_ITERS = {"image_b1": (5, 60), "image_b32": (2, 15), "text_b32": (2, 15), "text_b32_trim": (3, 40)}
QUICK_ITERS = {"image_b1": (1, 3), "image_b32": (1, 2), "text_b32": (1, 2), "text_b32_trim": (1, 3)}
PY_ENV_DROP = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
BEGIN, END = "<!-- bench_clip:begin -->", "<!-- bench_clip:end -->"


# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------
def percentile(sorted_ms, q):
    """Linear interpolation between closest ranks (numpy's default); the Rust side matches."""
    pos = q * (len(sorted_ms) - 1)
    lo, hi = int(pos // 1), int(-(-pos // 1))
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo)


def trimmed_len(ids) -> int:
    """One past the last pooled position: the pooled token is each row's largest id (end of text;
    argmax pooling of the `eos_token_id: 2` config), first occurrence. Same rule as the Rust side."""
    return int(max(row.argmax() for row in ids)) + 1




# ----------------------------------------------------------------------------------------------
# Workers (run in their own process)
# ----------------------------------------------------------------------------------------------
def worker(args) -> int:
    import numpy as np
    from safetensors.numpy import load_file

    threads = args.threads
    kind, batch = WORKLOADS[args.workload]
    p = make_model.paths(args.out)
    data = load_file(str(p["inputs"]))
    if kind == "image":
        x = np.ascontiguousarray(data["pixel_values"][:batch])
        ref = data["image_embeds_b1"] if batch == 1 else data["image_embeds"][:batch]
    else:
        x = np.ascontiguousarray(data["input_ids"][:batch].astype(np.int64))
        if args.workload == "text_b32_trim":
            x = np.ascontiguousarray(x[:, : trimmed_len(x)])
        ref = data["text_embeds"][:batch]

    t0 = time.perf_counter()
    if args.worker == "torch":
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        from transformers import CLIPModel

        model = CLIPModel.from_pretrained(str(p["model"])).float().eval()
        xt = torch.from_numpy(x)
        if kind == "image":
            fn = lambda: model.get_image_features(pixel_values=xt).pooler_output  # noqa: E731
        else:
            fn = lambda: model.get_text_features(input_ids=xt).pooler_output  # noqa: E731

        def run():
            with torch.inference_mode():
                return fn().numpy()

        extra = dict(
            torch_threads=torch.get_num_threads(), interop_threads=torch.get_num_interop_threads(),
            attn_implementation=getattr(model.config, "_attn_implementation", None),
            omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
        )
    elif args.worker == "ort":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if os.environ.get("BENCH_PASSIVE_WAIT") == "1":
            # Idle pool threads sleep instead of spinning (as OMP_WAIT_POLICY=PASSIVE for torch).
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = p["image_onnx"] if kind == "image" else p["text_onnx"]
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run():
            return sess.run(None, {name: x})[0]

        extra = dict(onnx=path.name, providers=sess.get_providers(),
                     allow_spinning=os.environ.get("BENCH_PASSIVE_WAIT") != "1")
    else:
        raise SystemExit(f"unknown worker {args.worker}")
    load_s = time.perf_counter() - t0

    first = run()
    diff = float(np.abs(first - ref).max())
    for _ in range(1, args.warmup):
        run()
    ms = []
    for _ in range(args.iters):
        t = time.perf_counter()
        run()
        ms.append((time.perf_counter() - t) * 1e3)
    times_ms = list(ms)
    ms.sort()
    median = percentile(ms, 0.5)
    print(json.dumps(dict(
        engine=args.worker, workload=args.workload, batch=batch, median_ms=median,
        p10=percentile(ms, 0.1), p90=percentile(ms, 0.9), items_per_s=batch * 1e3 / median,
        max_abs_diff_vs_torch=diff, iters=args.iters, warmup=max(1, args.warmup), load_s=load_s,
        peak_rss_mb=vm_hwm_mb(), threads=threads, times_ms=times_ms, **extra,
    )), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------
# Orchestrator
# ----------------------------------------------------------------------------------------------
def sh(cmd, **kw) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True, **kw).stdout.strip()
    except Exception:  # noqa: BLE001 - informational only
        return ""


def machine_info() -> dict:
    lscpu = {}
    for line in sh(["lscpu"]).splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            lscpu.setdefault(k.strip(), v.strip())
    mem_kb = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    flags = lscpu.get("Flags", "").split()
    return dict(
        cpu=lscpu.get("Model name", platform.processor() or "?"),
        cpu_family=lscpu.get("CPU family"), cpu_model=lscpu.get("Model"),
        cpus=lscpu.get("CPU(s)"), cores_per_socket=lscpu.get("Core(s) per socket"),
        threads_per_core=lscpu.get("Thread(s) per core"), sockets=lscpu.get("Socket(s)"),
        hypervisor=lscpu.get("Hypervisor vendor"), l2=lscpu.get("L2 cache"), l3=lscpu.get("L3 cache"),
        simd=" ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile") if f in flags),
        mem_gb=round(mem_kb / 1024 / 1024, 1), kernel=platform.release(),
        os=sh(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
    )


def versions(python: str) -> dict:
    return benchlib_versions(
        python, ("torch", "transformers", "onnxruntime", "onnx", "numpy", "safetensors"), ("candle-core", "gemm"), REPO_ROOT
    )


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def run_child(cmd, env) -> tuple[list, float, int]:
    """Runs one engine process; returns its JSON lines, its own peak RSS (MB) and exit code."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    lines = []
    for line in proc.stdout:
        line = line.strip()
        if line.startswith("{"):
            lines.append(json.loads(line))
        elif line:
            print(f"    {line}", file=sys.stderr)
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return lines, rusage.ru_maxrss / 1024.0, proc.returncode


def merge(rows, rounds) -> dict:
    """One result from the rounds of one (engine, workload): statistics over all timed calls."""
    ms = sorted(t for r in rows for t in r["times_ms"])
    first = rows[0]
    median = percentile(ms, 0.5)
    round_medians = [r["median_ms"] for r in rows]
    return dict(
        first, median_ms=median, p10=percentile(ms, 0.1), p90=percentile(ms, 0.9), min_ms=ms[0],
        items_per_s=first["batch"] * 1e3 / median, iters=len(ms), rounds=len(rows),
        round_medians_ms=round_medians,
        max_abs_diff_vs_torch=max(r["max_abs_diff_vs_torch"] for r in rows),
        rss_mb=max(r["rss_mb"] for r in rows), load_s=percentile(sorted(r["load_s"] for r in rows), 0.5),
        times_ms=ms,
    )


def fmt_ms(x):
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def render(results, meta) -> str:
    by = {(r["engine"], r["workload"]): r for r in results}
    ver = meta["versions"]
    m = meta["machine"]
    lines = [
        BEGIN,
        "<!-- Generated by tools/bench/bench_clip.py; edit outside the markers. -->",
        "",
        f"Run: {meta['date']} · command: `{meta['command']}`",
        "",
        f"Machine: **{m['cpu']}** (family {m['cpu_family']}, model {m['cpu_model']}), "
        f"{m['cpus']} CPUs ({m['sockets']} socket × {m['cores_per_socket']} cores × {m['threads_per_core']} "
        f"thread/core), {m['hypervisor'] + ' VM, ' if m['hypervisor'] else ''}"
        f"SIMD: {m['simd']}, L2 {m['l2']}, L3 {m['l3']}, {m['mem_gb']} GB RAM, {m['os']}, Linux {m['kernel']}.",
        "",
        f"Load average before / after the run: {meta['load_before']} / {meta['load_after']} "
        f"(other processes were running; see the notes).",
        "",
        "Versions: "
        + ", ".join(f"{k} {v}" for k, v in ver.items() if v)
        + ".",
        "",
        f"Threads: {meta['threads']} per engine (vista `RAYON_NUM_THREADS={meta['threads']}`; PyTorch "
        f"`torch.set_num_threads({meta['threads']})`, `set_num_interop_threads(1)`; ONNX Runtime "
        f"`intra_op_num_threads={meta['threads']}`, `inter_op_num_threads=1`, sequential execution, "
        "`ORT_ENABLE_ALL`). " + meta["env_note"],
        "",
        "Times are per call (one batch), median and 10th-90th percentile over the timed "
        "iterations after warm-up; items/s = batch / median. Peak RSS is the whole process "
        "(interpreter and libraries included, model load included) of a fresh process that ran "
        "only that workload. Ratios are vista's median time over the other engine's: below 1 "
        "means vista is faster.",
        "",
    ]
    for wl, (kind, batch) in WORKLOADS.items():
        present = [e for e in ENGINES if (e, wl) in by]
        if not present:
            continue
        it = by[(present[0], wl)]
        title = TITLES[wl]
        lines += [f"### {title}", "",
                  f"`{wl}`: {it['iters']} timed iterations per engine in {it['rounds']} round"
                  f"{'s' if it['rounds'] != 1 else ''} (fresh "
                  f"process per round, warm-up {it['warmup']} per process).", ""]
        if wl == "text_b32":
            lines += [
                f"Token lengths (with start/end tokens): {meta['token_lengths']}. Every engine gets "
                f"the same [32,77] ids; vista runs the first {meta['token_max']} positions only, "
                "PyTorch and ONNX Runtime all 77 (see notes).",
                "",
            ]
        elif wl == "text_b32_trim":
            lines += [
                f"Every engine gets the ids cut to [32,{meta['token_max']}] (the longest prompt), so all "
                "do the same work; the pooled outputs equal the 77-token ones (parity column).",
                "",
            ]
        lines += [
            "| engine | median ms | p10-p90 ms | items/s | peak RSS MB | load s | max abs diff vs PyTorch ref "
            "| per-round medians ms |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for e in present:
            r = by[(e, wl)]
            lines.append(
                f"| {ENGINE_NAMES[e]} | {fmt_ms(r['median_ms'])} | {fmt_ms(r['p10'])}-{fmt_ms(r['p90'])} | "
                f"{r['items_per_s']:.1f} | {r['rss_mb']:.0f} | {r['load_s']:.2f} | {r['max_abs_diff_vs_torch']:.2e} | "
                + ", ".join(fmt_ms(x) for x in r.get("round_medians_ms", [])) + " |"
            )
        lines.append("")
        if "vista" in present:
            v = by[("vista", wl)]
            ratios = []
            for other in ("torch", "ort"):
                if (other, wl) in by:
                    o = by[(other, wl)]
                    ratios.append(
                        f"vista/{ENGINE_NAMES[other]}: time **{v['median_ms'] / o['median_ms']:.2f}×**, "
                        f"peak RSS {v['rss_mb'] / o['rss_mb']:.2f}×"
                    )
            if ratios:
                lines += ["; ".join(ratios) + ".", ""]
        fastest = min(present, key=lambda e: by[(e, wl)]["median_ms"])
        lines += [f"Fastest: {ENGINE_NAMES[fastest]}.", ""]
    lines += [
        "Parity: every engine's first output of each workload is compared with the PyTorch "
        f"output stored with the inputs (`max abs diff vs PyTorch ref`; the embeddings' largest |value| is "
        f"{meta['embed_max']}). "
        f"At export, ONNX Runtime vs PyTorch: {meta['export_diffs']}.",
        "",
        END,
    ]
    return "\n".join(lines) + "\n"


HEADER = """# Benchmarks

## CLIP ViT-B/32 on CPU: vista vs PyTorch vs ONNX Runtime

What is measured: the forward pass of the openai/clip-vit-base-patch32 architecture (exact
configuration, **random weights**: no hub is reachable where this was written; the cost does
not depend on the values) in float32 on the CPU, embedding

* `image_b1` / `image_b32`: 1 / 32 images already preprocessed to `[B,3,224,224]` tensors
  (decode, resize and normalise are not timed), output `[B,512]` projected embeddings;
* `text_b32`: 32 prompts "a photo of a {label}." (real CLIP BPE ids, 8-10 tokens with the
  start/end tokens, zero padded to 77), output `[32,512]`;
* `text_b32_trim`: the same prompts with the ids cut after the longest one (`[32,10]`) for
  every engine, i.e. the same work everywhere.

Engines: **vista** (`crates/vista/examples/bench_clip.rs`: `vista::device::init_process()`, as
the CLI does, then `vista::clip::load_model`, `encode_image` / `encode_text`; candle CPU backend, gemm),
**PyTorch** (transformers `CLIPModel.get_image_features` / `get_text_features`, eager mode,
`inference_mode`, default SDPA attention), **ONNX Runtime** (the same two methods exported with
`torch.onnx.export`, CPU execution provider). All three read the same input file, use the same
number of threads and the same iteration counts; each (engine, workload) runs in its own process.

Notes:

* **Text length.** In `text_b32` vista trims the batch after the last end-of-text token (here
  10 of 77 positions): under CLIP's causal mask no position sees a later one, so the pooled
  embedding is exactly the same (see the parity column), but it does ~1/7 of the work. PyTorch
  and ONNX Runtime, called as here (and as transformers users call them with the tokenizer's
  `padding="max_length"` to 77), run all 77 positions. That is a legitimate vista advantage, but
  an algorithmic one: `text_b32_trim` gives all three engines the trimmed ids, which is the
  engine-against-engine comparison (PyTorch users get most of it with `padding=True`).
* **Noise.** This run was made on a shared 2-CPU development VM while other processes (other
  builds) were running, so absolute numbers are noisy; re-run on a quiet machine for
  publication: `python tools/bench/bench_clip.py`.
* Peak RSS includes each runtime's fixed cost (Python + torch or onnxruntime libraries, vista's
  binary) and the weights: vista and PyTorch load the whole model (both towers, 605 MB of
  float32), ONNX Runtime only the tower it runs (image 352 MB, text 255 MB).
* Regenerate: see `tools/bench/README.md`.

## Results

"""


def write_report(path: pathlib.Path, block: str) -> None:
    write_marked_section(path, block, BEGIN, END, HEADER)


def orchestrate(args) -> int:
    python = args.python or sys.executable
    out = args.out
    engines = [e for e in args.engines.split(",") if e]
    workloads = [w for w in args.workloads.split(",") if w]
    for e in engines:
        if e not in ENGINES:
            raise SystemExit(f"unknown engine {e} ({', '.join(ENGINES)})")
    for w in workloads:
        if w not in WORKLOADS:
            raise SystemExit(f"unknown workload {w} ({', '.join(WORKLOADS)})")
    iters = dict(QUICK_ITERS if args.quick else FULL_ITERS)
    if args.iters is not None:
        iters = {w: (iters[w][0], args.iters) for w in iters}
    if args.warmup is not None:
        iters = {w: (args.warmup, iters[w][1]) for w in iters}

    t_start = time.time()
    # (a) model, ONNX and inputs
    if not make_model.all_exist(out):
        print("== making the model, ONNX and inputs", flush=True)
        subprocess.run([python, str(HERE / "make_model.py"), "--out", str(out)], check=True, cwd=REPO_ROOT)
    export_info = {}
    if (out / "make_model.json").exists():
        export_info = json.loads((out / "make_model.json").read_text())

    # (b) vista binary
    exe = REPO_ROOT / "target" / "release" / "examples" / "bench_clip"
    if "vista" in engines and not args.no_build:
        print("== cargo build --release -p vista --example bench_clip", flush=True)
        subprocess.run(["cargo", "build", "--release", "-p", "vista", "--example", "bench_clip"],
                       check=True, cwd=REPO_ROOT)

    # (c) one process per (workload, engine)
    base_env = dict(os.environ)
    py_env = {k: v for k, v in base_env.items() if k not in PY_ENV_DROP}
    dropped = [f"{k}={base_env[k]}" for k in PY_ENV_DROP if k in base_env]
    py_env["OMP_NUM_THREADS"] = str(args.threads)
    py_env["MKL_NUM_THREADS"] = str(args.threads)
    vista_env = dict(base_env, RAYON_NUM_THREADS=str(args.threads))
    if args.passive_wait:
        py_env["OMP_WAIT_POLICY"] = "PASSIVE"
        py_env["BENCH_PASSIVE_WAIT"] = "1"
        vista_env["CANDLE_BARRIER_POOL_SPIN_LIMIT"] = "0"
    env_note = (
        f"Environment: `OMP_NUM_THREADS={args.threads}`, `MKL_NUM_THREADS={args.threads}` for the Python "
        "engines" + (f"; removed {', '.join(f'`{d}`' for d in dropped)} from their environment "
                      "(set on this machine; they only affect OpenBLAS, which torch's matmuls do not use)"
                      if dropped else "") + "."
        + (" **Passive waiting** (`--passive-wait`): idle pool threads sleep instead of spinning: PyTorch "
           "with `OMP_WAIT_POLICY=PASSIVE`, ONNX Runtime with `session.intra_op.allow_spinning=0`, vista with "
           "`CANDLE_BARRIER_POOL_SPIN_LIMIT=0` (candle's element-wise thread pool; gemm's rayon pool sleeps "
           "on its own). On a machine shared with other busy processes, spinning threads fight them (and "
           "each other) for the cores: in trials here the defaults were up to 10x slower for PyTorch, ~2x "
           "for ONNX Runtime and ~2x for vista. On a quiet machine run without it (defaults)."
           if args.passive_wait else
           " Default thread waiting (OpenMP, ONNX Runtime and candle pool threads spin a while when idle).")
    )
    load_before = loadavg()
    rounds = max(1, args.rounds if args.rounds is not None else (1 if args.quick else 3))
    samples = {}  # (engine, workload) -> list of per-round result dicts
    failures = []
    for rnd in range(rounds):
        for wl in workloads:
            warmup, total = iters[wl]
            n = max(1, -(-total // rounds))
            # Rotate the engine order every round so no engine always runs first (or last).
            order = engines[rnd % len(engines):] + engines[: rnd % len(engines)]
            for e in order:
                if e == "vista":
                    cmd = [str(exe), "--model", str(out / make_model.MODEL_DIRNAME), "--inputs",
                           str(out / make_model.INPUTS_NAME), "--workload", wl, "--warmup", str(warmup),
                           "--iters", str(n)]
                    env = vista_env
                else:
                    cmd = [python, str(pathlib.Path(__file__).resolve()), "--worker", e, "--workload", wl,
                           "--warmup", str(warmup), "--iters", str(n), "--threads", str(args.threads),
                           "--out", str(out)]
                    env = py_env
                print(f"== round {rnd + 1}/{rounds}: {wl} / {ENGINE_NAMES[e]} (warm-up {warmup}, {n} iterations)",
                      flush=True)
                rows, rss, rc = run_child(cmd, env)
                if rc != 0 or not rows:
                    failures.append(f"{e}/{wl} round {rnd + 1} (exit {rc})")
                    print(f"   FAILED (exit {rc})", flush=True)
                    continue
                for r in rows:
                    r["rss_mb"] = rss
                    samples.setdefault((e, wl), []).append(r)
                    print(f"   median {fmt_ms(r['median_ms'])} ms (p10 {fmt_ms(r['p10'])}, p90 {fmt_ms(r['p90'])}), "
                          f"peak RSS {rss:.0f} MB, load {r['load_s']:.2f} s, "
                          f"max|diff| vs torch ref {r['max_abs_diff_vs_torch']:.2e}, load avg {loadavg()}", flush=True)
    results = [merge(rs, rounds) for (e, wl), rs in sorted(
        samples.items(), key=lambda kv: (workloads.index(kv[0][1]), engines.index(kv[0][0])))]
    load_after = loadavg()

    # (d) table, raw results, report
    print()
    print(f"{'workload':<14} {'engine':<13} {'median ms':>10} {'p10':>9} {'p90':>9} {'items/s':>9} "
          f"{'RSS MB':>7} {'vs vista':>9} {'max|diff|':>10}")
    for wl in workloads:
        v = next((r for r in results if r["engine"] == "vista" and r["workload"] == wl), None)
        for r in (r for r in results if r["workload"] == wl):
            ratio = f"{v['median_ms'] / r['median_ms']:.2f}x" if v else "-"
            print(f"{wl:<14} {ENGINE_NAMES[r['engine']]:<13} {fmt_ms(r['median_ms']):>10} {fmt_ms(r['p10']):>9} "
                  f"{fmt_ms(r['p90']):>9} {r['items_per_s']:>9.1f} {r['rss_mb']:>7.0f} {ratio:>9} "
                  f"{r['max_abs_diff_vs_torch']:>10.2e}")
    print("(vs vista = vista median time / this engine's; < 1 means vista is faster)")

    tl = export_info.get("token_lengths")
    tl_text, tl_max = (f"min {min(tl)}, max {max(tl)}", max(tl)) if tl else ("?", "?")
    command = args.command or "python tools/bench/bench_clip.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    meta = dict(
        date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        command=command.strip(), machine=machine_info(), versions=versions(python), threads=args.threads,
        env_note=env_note, load_before=load_before, load_after=load_after,
        token_lengths=tl_text, token_max=tl_max, embed_max=export_info.get("embed_max_abs", "?"),
        export_diffs=", ".join(f"{k} {v:.2e}" for k, v in export_info.get("ort_vs_torch", {}).items()) or "?",
        wall_s=round(time.time() - t_start, 1), failures=failures,
    )
    (out / "bench_clip_results.json").write_text(json.dumps(dict(meta=meta, results=results), indent=2) + "\n")
    print(f"\nraw results: {out / 'bench_clip_results.json'} (wall {meta['wall_s']} s)")
    if failures:
        print("FAILED: " + ", ".join(failures), file=sys.stderr)
        return 1
    if not args.no_write:
        write_report(args.report, render(results, meta))
        print(f"report: {args.report}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=pathlib.Path, default=REPO_ROOT / "bench-out",
                    help="model, inputs and raw results folder (default bench-out/)")
    ap.add_argument("--threads", type=int, default=2, help="threads per engine (default 2)")
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma list of vista,torch,ort")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list of image_b1,image_b32,text_b32")
    ap.add_argument("--quick", action="store_true", help="a few iterations only (smoke test)")
    ap.add_argument("--iters", type=int, help="timed iterations for every workload (overrides the defaults)")
    ap.add_argument("--warmup", type=int, help="warm-up iterations for every workload")
    ap.add_argument("--rounds", type=int,
                    help="fresh processes per engine and workload, interleaved (default 3, --quick 1)")
    ap.add_argument("--passive-wait", action="store_true",
                    help="idle PyTorch/ORT/candle pool threads sleep instead of spinning (for a busy, shared machine)")
    ap.add_argument("--python", help="interpreter for the PyTorch / ORT workers (default: this one)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build first")
    ap.add_argument("--no-write", action="store_true", help="do not write BENCHMARKS.md")
    ap.add_argument("--report", type=pathlib.Path, default=REPO_ROOT / "BENCHMARKS.md")
    ap.add_argument("--command", help=argparse.SUPPRESS)  # the command line to record in the report
    # worker mode
    ap.add_argument("--worker", choices=("torch", "ort"), help=argparse.SUPPRESS)
    ap.add_argument("--workload", choices=tuple(WORKLOADS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.warmup = 1 if args.warmup is None else args.warmup
        args.iters = 10 if args.iters is None else args.iters
        return worker(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
