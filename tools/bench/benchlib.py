"""What every benchmark script in tools/bench shares: the orchestration around the engines.

Standard library only at import time, so a worker process (or an orchestrator run by any
Python 3.9+) can import it; the few worker-side helpers that need torch / onnxruntime import
them when called.

* arguments: `add_common_args` (the options every script takes), `parse_list`, `iteration_plan`,
  `default_python`;
* environments: `engine_env` (threads pinned: `RAYON_NUM_THREADS` for vista, `OMP_NUM_THREADS`,
  `MKL_NUM_THREADS`, `OPENBLAS_NUM_THREADS` for the Python engines), `env_note`;
* processes: `vista_binary` (build, then run a private copy), `run_child` (one engine process:
  its JSON lines, peak RSS and CPU from `wait4`, the cores other processes used meanwhile),
  `schedule` (interleaved rounds, engine order rotated), `Bench` (an orchestrator run: the above
  plus quiet-waiting, failure bookkeeping, the GEMM peak, versions and the report);
* machine: `machine_info`, `loadavg`, `cpu_totals`, `wait_quiet`, `gemm_peak`, `BackgroundLoad`
  (`--background-load`: busy processes beside the measurements, `load_note`, `loaded_marker`);
* workers: `time_calls`, `emit`, `torch_threads`, `ort_session`, `vm_hwm_mb`;
* reports: `percentile`, `median`, `fmt_ms`, `merge_rounds`, `round_cell`, `print_table`,
  `header_lines`, `write_marked_section`.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import datetime as _dt
import json
import os
import pathlib
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
# Set on some machines to pin OpenBLAS to older kernels; removed from the Python engines' env.
PY_ENV_DROP = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
PY_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
QUIET_CORES = 0.3  # `wait_quiet`: other processes' use below which the machine counts as quiet
RANDOM_WEIGHTS = ("float32, CPU, **random weights** in the official architectures: no checkpoint is reachable "
                  "here; the cost does not depend on the values")


# ----------------------------------------------------------------------------------------------
# Statistics and formatting
# ----------------------------------------------------------------------------------------------
def percentile(sorted_xs, q):
    """Linear interpolation between closest ranks (numpy's default); vista's examples match."""
    pos = q * (len(sorted_xs) - 1)
    lo, hi = int(pos // 1), int(-(-pos // 1))
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def median(xs):
    return percentile(sorted(xs), 0.5)


def fmt_ms(x):
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def fmt(x, digits=2, none="—"):
    return none if x is None else f"{x:.{digits}f}"


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------
def default_python() -> str:
    """The repository's `.venv/bin/python` when there is one, else the running interpreter."""
    venv = REPO_ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def add_common_args(ap, *, rounds: int | None, quick: str, wait_quiet: float = 0.0, threads: int = 2):
    """The options every benchmark script takes (a script adds its own after); `rounds` None: the
    script has its own notion of rounds and no --rounds."""
    ap.add_argument("--threads", type=int, default=threads, help=f"threads per engine (default {threads})")
    if rounds is not None:
        ap.add_argument("--rounds", type=int, default=None,
                        help=f"fresh processes per engine and workload, interleaved, engine order rotated "
                             f"(default {rounds}; --quick 1)")
    ap.add_argument("--quick", action="store_true", help=quick)
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build first (use the built binary)")
    ap.add_argument("--no-write", action="store_true", help="do not write the report (BENCHMARKS.md)")
    ap.add_argument("--report", type=pathlib.Path, default=REPO_ROOT / "BENCHMARKS.md",
                    help="the report whose marked section is rewritten (default BENCHMARKS.md)")
    ap.add_argument("--out", type=pathlib.Path, default=REPO_ROOT / "bench-out",
                    help="models, inputs and raw results folder (default bench-out/)")
    ap.add_argument("--python", default=None,
                    help="interpreter for the Python workers (default: .venv/bin/python if present, else this one)")
    ap.add_argument("--passive-wait", action="store_true",
                    help="idle PyTorch / ONNX Runtime / candle pool threads sleep instead of spinning "
                         "(for a busy, shared machine; the report says so)")
    ap.add_argument("--wait-quiet", type=float, default=wait_quiet, metavar="S",
                    help=f"before each process, wait up to S seconds for other processes to use under "
                         f"{QUIET_CORES} cores (default {wait_quiet:g}; 0: do not wait)")
    ap.add_argument("--background-load", type=int, default=0, metavar="N",
                    help="run N busy processes (one core each, a spinning loop) beside every measurement, "
                         "to see how each engine copes with a loaded machine; the GEMM peak is measured "
                         "before they start and after they stop, --wait-quiet allows for them, and the "
                         "report section gets markers of its own (default 0)")
    ap.add_argument("--command", help=argparse.SUPPRESS)  # the command line to record in the report
    ap.set_defaults(_rounds_default=rounds)


def resolve_common(args) -> None:
    """Fills the defaults that depend on other options (after parse_args)."""
    if getattr(args, "rounds", None) is None:
        args.rounds = 1 if args.quick or args._rounds_default is None else args._rounds_default
    args.rounds = max(1, args.rounds)
    args.python = args.python or default_python()


def parse_list(text: str, known, what: str) -> list:
    """A comma list checked against `known`."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    for x in items:
        if x not in known:
            raise SystemExit(f"unknown {what} {x} ({', '.join(map(str, known))})")
    return items


def iteration_plan(args, full: dict, quick: dict) -> dict:
    """{workload: (warm-up per process, timed calls in all)} from the script's tables and
    `--quick` / `--iters` / `--warmup`."""
    plan = dict(quick if args.quick else full)
    if getattr(args, "iters", None) is not None:
        plan = {w: (plan[w][0], args.iters) for w in plan}
    if getattr(args, "warmup", None) is not None:
        plan = {w: (args.warmup, plan[w][1]) for w in plan}
    return plan


# ----------------------------------------------------------------------------------------------
# Environments
# ----------------------------------------------------------------------------------------------
def engine_env(kind: str, threads: int, passive_wait: bool = False, base=None) -> dict:
    """The environment of an engine process: `kind` "vista" (rayon pool `RAYON_NUM_THREADS`) or
    "python" (OpenMP / MKL / OpenBLAS pools, OpenBLAS kernel overrides removed)."""
    base = dict(os.environ if base is None else base)
    if kind == "vista":
        env = dict(base, RAYON_NUM_THREADS=str(threads))
        if passive_wait:
            env["CANDLE_BARRIER_POOL_SPIN_LIMIT"] = "0"
    elif kind == "python":
        env = {k: v for k, v in base.items() if k not in PY_ENV_DROP}
        env.update({v: str(threads) for v in PY_THREAD_VARS})
        if passive_wait:
            env["OMP_WAIT_POLICY"] = "PASSIVE"
            env["BENCH_PASSIVE_WAIT"] = "1"  # read by `ort_session`
    else:
        raise ValueError(f"unknown engine kind {kind}")
    return env


def env_note(threads: int, passive_wait: bool, base=None) -> str:
    base = os.environ if base is None else base
    dropped = [f"`{k}={base[k]}`" for k in PY_ENV_DROP if k in base]
    return (
        f"Environment: `RAYON_NUM_THREADS={threads}` for vista; "
        + ", ".join(f"`{v}={threads}`" for v in PY_THREAD_VARS) + " for the Python engines"
        + (f"; removed {', '.join(dropped)} from their environment (set on this machine; they pin "
           "OpenBLAS kernels)" if dropped else "")
        + "."
        + (" **Passive waiting** (`--passive-wait`): idle pool threads sleep instead of spinning (PyTorch "
           "`OMP_WAIT_POLICY=PASSIVE`, ONNX Runtime `session.intra_op.allow_spinning=0`, vista "
           "`CANDLE_BARRIER_POOL_SPIN_LIMIT=0`): for a machine shared with other busy processes, where "
           "spinning pools lose badly."
           if passive_wait else " Default thread waiting (pool threads spin a while when idle).")
    )


# ----------------------------------------------------------------------------------------------
# Machine
# ----------------------------------------------------------------------------------------------
def sh(cmd, **kw) -> str:
    """A command's stdout, stripped; "" when it fails (informational only)."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True, **kw).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
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


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def cpu_totals():
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle, sum(vals)


def busy_cores(interval: float = 1.0) -> float:
    """Cores' worth of CPU the whole machine used over `interval` seconds."""
    b0, t0 = cpu_totals()
    time.sleep(interval)
    b1, t1 = cpu_totals()
    return (b1 - b0) / max(1, t1 - t0) * (os.cpu_count() or 1)


def wait_quiet(max_wait_s: float, busy_limit: float = QUIET_CORES) -> float:
    """Waits (up to `max_wait_s`) until the machine's other processes use under `busy_limit` cores
    for two consecutive seconds; returns the seconds waited beyond those two."""
    if max_wait_s <= 0:
        return 0.0
    t = time.time()
    quiet, told = 0, False
    while quiet < 2 and time.time() - t < max_wait_s:
        busy = busy_cores()
        quiet = quiet + 1 if busy < busy_limit else 0
        if quiet == 0 and not told and time.time() - t > 5:
            print(f"   (machine busy: {busy:.2f} cores used by other processes; waiting up to {max_wait_s:.0f} s)",
                  flush=True)
            told = True
    return max(0.0, time.time() - t - 2.0)


class BackgroundLoad:
    """`n` busy processes, each spinning one core in a plain Python loop, from `start()` until
    `stop()` (or this process's exit): the "one other busy process" of a loaded machine."""

    CODE = "while True:\n    pass\n"

    def __init__(self, n: int):
        self.n, self.procs = max(0, n), []

    def start(self) -> None:
        self.procs = [subprocess.Popen([sys.executable, "-c", self.CODE], stdin=subprocess.DEVNULL)
                      for _ in range(self.n)]
        if self.procs:
            atexit.register(self.stop)
            print(f"== background load: {self.n} busy process(es) started", flush=True)

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        if self.procs:
            print("== background load: stopped", flush=True)
        self.procs = []


def load_note(n: int) -> str:
    """The report's sentence on `--background-load`, or "" without it."""
    if n <= 0:
        return ""
    return (f"**Background load** (`--background-load {n}`): {n} other busy process{'es' if n > 1 else ''} "
            f"(a Python loop spinning one core each) ran beside every measurement, so the engines' threads share "
            f"the cores with {'them' if n > 1 else 'it'} (the *others* column counts {'them' if n > 1 else 'it'}); "
            "the GEMM peaks were measured before it started and after it stopped.")


def loaded_marker(marker: str, n: int) -> str:
    """A section marker of a run under `--background-load` (`<!-- x:begin -->` ->
    `<!-- x-loaded:begin -->`), so that it does not replace the quiet run's section."""
    return marker.replace(":begin", "-loaded:begin").replace(":end", "-loaded:end") if n > 0 else marker


def quiet_note(max_wait_s: float, waited_s: float = 0.0) -> str:
    if max_wait_s <= 0:
        return ""
    return (f" Each process started once other processes had used under {QUIET_CORES} cores for 2 s, or after "
            f"{max_wait_s:.0f} s of waiting (`--wait-quiet`; {waited_s:.0f} s waited in all).")


_GEMM_CODE = r"""
import json, sys, time
n, reps, threads = (int(a) for a in sys.argv[1:4])
try:
    import torch
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    mm = lambda: torch.mm(a, b)
    lib = "torch " + torch.__version__.split("+")[0]
except ImportError:
    import numpy as np
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    mm = lambda: a @ b
    lib = "numpy " + np.__version__
for _ in range(2):
    mm()
ts = []
for _ in range(reps):
    t = time.perf_counter(); mm(); ts.append(time.perf_counter() - t)
ts.sort()
med = ts[len(ts) // 2] if len(ts) % 2 else (ts[len(ts) // 2 - 1] + ts[len(ts) // 2]) / 2
print(json.dumps(dict(lib=lib, n=n, reps=reps, threads=threads, median_ms=med * 1e3,
                      gflops=2 * n ** 3 / med / 1e9, best_gflops=2 * n ** 3 / ts[0] / 1e9)))
"""


def gemm_peak(threads: int, python: str | None = None, n: int = 1024, reps: int = 15) -> dict | None:
    """This machine's float32 GEMM rate now: an n×n×n matmul (torch, else numpy) with `threads`
    threads in a fresh process of the Python engines' environment, median of `reps` after 2
    warm-ups; {lib, n, reps, threads, median_ms, gflops, best_gflops}, or None when it fails.
    Machines of one kind differ up to 2× from day to day: only ratios within one run mean much,
    and this number says what kind of day the run had."""
    out = sh([python or default_python(), "-c", _GEMM_CODE, str(n), str(reps), str(threads)],
             env=engine_env("python", threads))
    try:
        return json.loads(out.splitlines()[-1])
    except (IndexError, ValueError):
        return None


def gemm_text(g: dict | None) -> str:
    if not g:
        return "not measured"
    return (f"{g['gflops']:.0f} GFLOP/s ({g['lib']}, float32 {g['n']}×{g['n']}×{g['n']} matmul, "
            f"{g['threads']} threads, median of {g['reps']}; best {g['best_gflops']:.0f})")


# ----------------------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------------------
def vista_binary(args, kind: str, name: str, override: pathlib.Path | None = None) -> pathlib.Path:
    """Builds vista's `kind` ("example" of the vista crate, or "bin" of vista-cli) `name` unless
    `--no-build`, and returns a private copy of it in `--out`/vista-bin/ (a cargo build elsewhere
    in the workspace can replace the file in target/ while the benchmark runs)."""
    if override is not None:
        exe = override
    else:
        if kind == "example":
            cmd = ["cargo", "build", "--release", "-p", "vista", "--example", name]
            exe = REPO_ROOT / "target" / "release" / "examples" / name
        else:
            cmd = ["cargo", "build", "--release", "-p", "vista-cli", "--bin", name]
            exe = REPO_ROOT / "target" / "release" / name
        if not args.no_build:
            print("== " + " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=REPO_ROOT)
    if not exe.exists():
        raise SystemExit(f"{exe} is missing (build it: cargo build --release -p vista-cli -p vista --bins --examples)")
    # Same file name (the process and thread names stay the binary's), private folder.
    private = args.out / "vista-bin" / exe.name
    private.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(exe, private)
    return private


def _json_object(line: str):
    if not line.startswith("{"):
        return None
    try:
        v = json.loads(line)
    except ValueError:
        return None
    return v if isinstance(v, dict) else None


def run_child(cmd, env, *, quiet: bool = False, log: pathlib.Path | None = None, watch=None) -> dict:
    """Runs one engine process to its end. Returns {rc, json (its stdout lines that are JSON
    objects), wall_s, rss_mb (its peak RSS, `wait4`), cpu_s (user + sys, reaped children
    included), cores_used, others (cores the machine's other processes used meanwhile, from
    /proc/stat), stderr_tail}. Other stdout lines go to stderr, indented; the child's stderr
    is passed through, or kept (tail) with `quiet`; with `log` both streams go to that file.
    `watch(pid)` may return a monitor whose `finish()` dict joins the result."""
    cmd = [str(c) for c in cmd]
    b0, j0 = cpu_totals()
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        logf = open(log, "w") if log else None
        try:
            stdout = logf if logf else subprocess.PIPE
            stderr = logf if logf else (err if quiet else None)
            proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr, text=True, cwd=REPO_ROOT)
            mon = watch(proc.pid) if watch else None
            rows = []
            if not logf:
                for line in proc.stdout:
                    line = line.strip()
                    obj = _json_object(line)
                    if obj is not None:
                        rows.append(obj)
                    elif line:
                        print(f"    {line}", file=sys.stderr)
            # wait4 (not communicate / wait, which would reap the child) for its rusage.
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            if logf:
                logf.close()
        err.seek(0)
        tail = err.read()[-3000:] if quiet else ""
    wall = time.perf_counter() - t0
    b1, j1 = cpu_totals()
    if log:
        tail = pathlib.Path(log).read_text(errors="replace")[-3000:]
    cpu_s = ru.ru_utime + ru.ru_stime
    machine = (b1 - b0) / max(1, j1 - j0) * (os.cpu_count() or 1)
    res = dict(rc=os.waitstatus_to_exitcode(status), json=rows, wall_s=wall, rss_mb=ru.ru_maxrss / 1024.0,
               cpu_s=cpu_s, cores_used=cpu_s / max(wall, 1e-9), others=max(0.0, machine - cpu_s / max(wall, 1e-9)),
               stderr_tail=tail, command=shlex.join(cmd))
    if mon is not None:
        res.update(mon.finish())
    return res


def rotated(items, k: int) -> list:
    items = list(items)
    if not items:
        return items
    k %= len(items)
    return items[k:] + items[:k]


def schedule(rounds: int, groups, engines, eligible=None):
    """The run order: (round, group, engine) for every round, group (workload, size, ...) and
    engine, each round's engine order rotated by one so no engine always runs first (or last).
    `eligible(group)` narrows the engines of a group."""
    for rnd in range(rounds):
        for g in groups:
            es = [e for e in engines if eligible is None or e in eligible(g)]
            for e in rotated(es, rnd):
                yield rnd, g, e


class Bench:
    """One orchestrator run: environments, the vista binary, the engine processes (quiet-waiting,
    failure bookkeeping), the GEMM peak before and after, versions and the report."""

    def __init__(self, script: str, args, *, packages=(), crates=("candle-core", "gemm"), extra_code="", gemm=True):
        self.script, self.args = script, args
        self.threads = args.threads
        self.python = args.python
        self.packages, self.crates, self.extra_code = packages, crates, extra_code
        self.t_start = time.time()
        self.failures: list = []
        self.waited_s = 0.0
        self.env = {k: engine_env(k, args.threads, args.passive_wait) for k in ("vista", "python")}
        self.load_before = loadavg()
        self.gemm = gemm
        self.gemm_before = gemm_peak(args.threads, self.python) if gemm else None
        if gemm:
            print(f"== GEMM peak (before): {gemm_text(self.gemm_before)}", flush=True)
        self.background = BackgroundLoad(getattr(args, "background_load", 0))
        self.background.start()

    def kind(self, engine: str) -> str:
        return "vista" if engine.startswith("vista") else "python"

    def run(self, cmd, engine: str, tag: str, **kw) -> dict | None:
        """Waits for quiet (`--wait-quiet`), runs `cmd` in `engine`'s environment; None (and the
        failure recorded, once per tag) when it fails or prints no result."""
        waited = wait_quiet(self.args.wait_quiet, QUIET_CORES + self.background.n)
        self.waited_s += waited
        if waited > 1:
            print(f"   (waited {waited:.0f} s for other processes to quiet down)", flush=True)
        res = run_child(cmd, kw.pop("env", None) or self.env[self.kind(engine)], **kw)
        if res["rc"] != 0 or (not res["json"] and not kw.get("log")):
            if not any(f.split(" ")[0] == tag for f in self.failures):
                self.failures.append(f"{tag} (exit {res['rc']})")
            print(f"   FAILED (exit {res['rc']}): {res['command']}", flush=True)
            if res["stderr_tail"]:
                print("    " + res["stderr_tail"][-1500:].replace("\n", "\n    "), file=sys.stderr)
            return None
        return res

    def timed_rounds(self, groups, engines, plan: dict, command, names: dict, eligible=None, describe=None) -> dict:
        """The interleaved rounds of per-call timing workers (vista's examples and the script's
        `--worker` modes): `plan[group]` = (warm-up, timed calls in all, split over the rounds),
        `command(engine, group, warmup, n)` its command line. Returns {(engine, group): [rows]},
        each row one process's JSON line with `rss_mb`, `others` and `round` added."""
        rounds = self.args.rounds
        samples: dict = {}
        for rnd, g, e in schedule(rounds, groups, engines, eligible):
            warmup, total = plan[g]
            n = max(1, -(-total // rounds))
            print(f"== round {rnd + 1}/{rounds}: {g} / {names[e]} (warm-up {warmup}, {n} calls)", flush=True)
            res = self.run(command(e, g, warmup, n), e, f"{e}/{g}")
            if res is None:
                continue
            for r in res["json"]:
                r.update(rss_mb=res["rss_mb"], others=res["others"], round=rnd + 1)
                samples.setdefault((e, g), []).append(r)
                diff = r.get("max_abs_diff_vs_torch")
                print(f"   median {fmt_ms(r['median_ms'])} ms (p10 {fmt_ms(r['p10'])}, p90 {fmt_ms(r['p90'])}), "
                      f"peak RSS {r['rss_mb']:.0f} MB, load {r['load_s']:.2f} s"
                      + (f", max|diff| vs torch {diff:.2e}" if diff is not None else "")
                      + (describe(r) if describe else "") + f", others {r['others']:.2f} cores", flush=True)
        return samples

    def meta(self, **extra) -> dict:
        """What the report's header says: date, command, machine, versions, threads, environment,
        load averages, GEMM peak before / after, wall time, failures, quiet-waiting, background
        load (stopped here, before the GEMM peak after)."""
        self.background.stop()
        self.gemm_after = gemm_peak(self.threads, self.python) if self.gemm else None
        if self.gemm:
            print(f"== GEMM peak (after): {gemm_text(self.gemm_after)}", flush=True)
        a = self.args
        command = a.command or f"python tools/bench/{self.script}" + (
            " " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
        return dict(
            date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), command=command.strip(),
            machine=machine_info(), versions=versions(self.python, self.packages, self.crates, REPO_ROOT, self.extra_code),
            threads=self.threads, rounds=a.rounds, env_note=env_note(self.threads, a.passive_wait),
            passive_wait=a.passive_wait, load_before=self.load_before, load_after=loadavg(),
            gemm_before=self.gemm_before, gemm_after=self.gemm_after, wall_s=round(time.time() - self.t_start, 1),
            failures=self.failures, waited_s=round(self.waited_s, 1),
            quiet_note=quiet_note(a.wait_quiet, self.waited_s), background_load=self.background.n,
            load_note=load_note(self.background.n), **extra,
        )

    def finish(self, results_name: str, payload: dict, render, begin: str, end: str, header: str = "# Benchmarks\n") -> int:
        """Writes the raw results (`--out`/results_name), the report's marked section (unless
        `--no-write`; `render()` gives the block, between the markers `begin` and `end`, which a
        run under `--background-load` renames); 1 when anything failed."""
        n = self.background.n
        if n > 0:
            results_name = results_name.replace(".json", "_loaded.json")
            quiet_render, quiet_begin, quiet_end = render, begin, end
            begin, end = loaded_marker(begin, n), loaded_marker(end, n)

            def render():
                return quiet_render().replace(quiet_begin, begin).replace(quiet_end, end)
        path = self.args.out / results_name
        path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
        print(f"\nraw results: {path} (wall {time.time() - self.t_start:.0f} s)")
        if self.failures:
            print("FAILED: " + ", ".join(self.failures), file=sys.stderr)
        if not self.args.no_write:
            write_marked_section(self.args.report, render(), begin, end, header)
            print(f"report: {self.args.report} (between {begin} and {end})")
        return 1 if self.failures else 0


@dataclasses.dataclass
class WorkloadBench:
    """What a per-call benchmark (bench_clip / bench_dino / bench_sam) is made of: its engines and
    workloads, its set-up, its vista example, its workers and its report. `workload_main` does
    the rest: arguments, set-up, the interleaved rounds, the table, the raw results and the report."""

    script: str  # file name in tools/bench
    engines: tuple
    names: dict  # engine -> display name
    workloads: dict  # workload -> the script's own description
    full: dict  # workload -> (warm-up per process, timed calls in all)
    quick: dict
    rounds: int  # default rounds
    packages: tuple  # Python packages whose versions the report gives
    example: str  # vista's side: crates/vista/examples/<example>.rs
    vista_args: object  # (args, workload) -> the example's model / input flags
    setup_needed: object  # args -> bool
    setup_cmd: object  # args -> command line making the models / inputs (run with the Python engines' env)
    worker: object  # args -> exit code (the script's `--worker torch|ort|...`)
    render: object  # (results, meta) -> the report's marked block
    begin: str
    end: str
    worker_iters: int = 3  # a worker's default timed calls when run by hand
    workers: tuple = ("torch", "ort")
    setup_worker: object = None  # args -> exit code, for `--worker setup`
    meta_extra: object = None  # args -> dict added to the report's meta
    eligible: object = None  # (engines, workload) -> the engines that run it
    describe: object = None  # merged row -> extra text of its progress line
    columns: tuple = ()  # extra stdout columns after p90: (title, width, cell(row))
    header: str = "# Benchmarks\n"  # the report's start when it does not exist yet
    description: str = ""  # --help's first line


def workload_main(spec: WorkloadBench, argv=None) -> int:
    """The command line of a per-call benchmark script (orchestrator and its worker modes)."""
    ap = argparse.ArgumentParser(description=spec.description or f"tools/bench/{spec.script}")
    add_common_args(ap, rounds=spec.rounds, quick="a few calls only, 1 round (smoke test)")
    ap.add_argument("--engines", default=",".join(spec.engines), help="comma list of " + ",".join(spec.engines))
    ap.add_argument("--workloads", default=",".join(spec.workloads), help="comma list of " + ",".join(spec.workloads))
    ap.add_argument("--iters", type=int, help="timed calls for every workload (overrides the defaults)")
    ap.add_argument("--warmup", type=int, help="warm-up calls for every workload")
    ap.add_argument("--setup", action="store_true", help="redo the models, inputs and references first")
    ap.add_argument("--worker", choices=("setup", *spec.workers), help=argparse.SUPPRESS)
    ap.add_argument("--workload", choices=tuple(spec.workloads), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker == "setup":
        return spec.setup_worker(args)
    if args.worker:
        args.warmup = 1 if args.warmup is None else args.warmup
        args.iters = spec.worker_iters if args.iters is None else args.iters
        return spec.worker(args)
    resolve_common(args)
    engines = parse_list(args.engines, spec.engines, "engine")
    workloads = parse_list(args.workloads, spec.workloads, "workload")
    plan = iteration_plan(args, spec.full, spec.quick)
    bench = Bench(spec.script, args, packages=spec.packages)
    if args.setup or spec.setup_needed(args):
        print("== set-up: models, inputs, PyTorch references, ONNX exports", flush=True)
        subprocess.run([str(c) for c in spec.setup_cmd(args)], check=True, cwd=REPO_ROOT, env=bench.env["python"])
    exe = vista_binary(args, "example", spec.example) if "vista" in engines else None
    script = HERE / spec.script

    def command(e, wl, warmup, n):
        if e == "vista":
            return [exe, *spec.vista_args(args, wl), "--workload", wl, "--warmup", warmup, "--iters", n]
        return [args.python, script, "--worker", e, "--workload", wl, "--warmup", warmup, "--iters", n,
                "--threads", args.threads, "--out", args.out]

    eligible = (lambda wl: spec.eligible(engines, wl)) if spec.eligible else None
    samples = bench.timed_rounds(workloads, engines, plan, command, spec.names, eligible, spec.describe)
    results = merged(samples, workloads, engines)
    by = by_key(results)
    print_table([
        ("workload", -14, lambda r: r["workload"]), ("engine", -32, lambda r: spec.names[r["engine"]]),
        ("median ms", 10, lambda r: fmt_ms(r["median_ms"])), ("p10", 9, lambda r: fmt_ms(r["p10"])),
        ("p90", 9, lambda r: fmt_ms(r["p90"])), *spec.columns, ("RSS MB", 7, lambda r: f"{r['rss_mb']:.0f}"),
        ("vs vista", 9, lambda r: vs_vista(by.get(("vista", r["workload"])), r)),
        ("max|diff|", 10, lambda r: f"{r['max_abs_diff_vs_torch']:.2e}"), ("others", 7, lambda r: f"{r['others']:.2f}"),
    ], results)
    print("(vs vista = vista median time / this engine's; < 1 means vista is faster)")
    meta = bench.meta(**(spec.meta_extra(args) if spec.meta_extra else {}))
    name = spec.script.replace(".py", "_results.json")
    return bench.finish(name, dict(meta=meta, results=results), lambda: spec.render(results, meta), spec.begin,
                        spec.end, spec.header)


# ----------------------------------------------------------------------------------------------
# Workers (the Python engines' processes)
# ----------------------------------------------------------------------------------------------
def vm_hwm_mb():
    """This process's peak resident memory in MB (Linux `VmHWM`), or None."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def time_calls(run, warmup: int, iters: int, also=None):
    """`warmup` - 1 untimed calls (the caller made the first, for its parity check), then `iters`
    timed ones; `also` (e.g. preprocessing) is timed apart after each. Returns (ms, also_ms)."""
    for _ in range(1, warmup):
        run()
    ms, also_ms = [], []
    for _ in range(iters):
        t = time.perf_counter()
        run()
        ms.append((time.perf_counter() - t) * 1e3)
        if also is not None:
            t = time.perf_counter()
            also()
            also_ms.append((time.perf_counter() - t) * 1e3)
    return ms, also_ms


def measure(args, run, ref, t0: float, batch, extra: dict, pre=None, pre_ref=None) -> int:
    """The end of a per-call worker (`--worker torch|ort|...` of bench_clip / bench_dino /
    bench_sam): the load time since `t0`, the first call's largest difference from PyTorch's
    stored `ref`, the warm-up and the timed calls (`pre`, e.g. preprocessing, timed apart and
    checked against `pre_ref`), then the result line."""
    import numpy as np

    load_s = time.perf_counter() - t0
    diff = float(np.abs(run() - ref).max())
    fields = {}
    if pre is not None:
        fields["pre_max_abs_diff"] = float(np.abs(pre() - pre_ref).max())
    ms, fields["pre_times_ms"] = time_calls(run, args.warmup, args.iters, also=pre)
    emit(args.worker, args.workload, batch, ms, args.warmup, max_abs_diff_vs_torch=diff, load_s=load_s,
         threads=args.threads, **fields, **extra)
    return 0


def emit(engine: str, workload: str, batch, times_ms, warmup: int, **fields) -> None:
    """Prints a worker's result line, with the keys vista's examples print."""
    ms = sorted(times_ms)
    med = percentile(ms, 0.5)
    row = dict(engine=engine, workload=workload, batch=batch, median_ms=med, p10=percentile(ms, 0.1),
               p90=percentile(ms, 0.9), iters=len(ms), warmup=max(1, warmup), peak_rss_mb=vm_hwm_mb(),
               times_ms=list(times_ms))
    if batch:
        row["items_per_s"] = batch * 1e3 / med
    row.update(fields)
    print(json.dumps(row), flush=True)


def torch_threads(threads: int) -> dict:
    """Pins PyTorch's pools (intra-op `threads`, inter-op 1); what was set, for the result line."""
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    return dict(torch_threads=torch.get_num_threads(), interop_threads=torch.get_num_interop_threads(),
                omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))


def ort_session(path, threads: int):
    """An ONNX Runtime CPU session with `threads` intra-op threads, 1 inter-op, sequential,
    ORT_ENABLE_ALL (idle threads sleep under `--passive-wait`); (session, result fields)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    passive = os.environ.get("BENCH_PASSIVE_WAIT") == "1"
    if passive:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess, dict(onnx=pathlib.Path(path).name, providers=sess.get_providers(), allow_spinning=not passive)


# ----------------------------------------------------------------------------------------------
# Results and reports
# ----------------------------------------------------------------------------------------------
def merge_rounds(rows) -> dict:
    """One result from the rounds of one (engine, workload): statistics over all timed calls,
    the per-round medians, the worst parity (and of every other `*_max_abs_diff`), the largest
    RSS, the median load time, the mean of the other processes' load; other `X_times_ms` lists
    (e.g. preprocessing timed apart) are pooled with their median as `X_median_ms`."""
    ms = sorted(t for r in rows for t in r["times_ms"])
    med = percentile(ms, 0.5)
    first = rows[0]
    diffs = [r["max_abs_diff_vs_torch"] for r in rows if r.get("max_abs_diff_vs_torch") is not None]
    out = dict(
        first, median_ms=med, p10=percentile(ms, 0.1), p90=percentile(ms, 0.9), min_ms=ms[0], iters=len(ms),
        rounds=len(rows), round_medians_ms=[r["median_ms"] for r in rows],
        max_abs_diff_vs_torch=max(diffs) if diffs else None, rss_mb=max(r["rss_mb"] for r in rows),
        load_s=median([r["load_s"] for r in rows]), times_ms=ms,
        others=sum(r["others"] for r in rows) / len(rows), round_others=[r["others"] for r in rows],
    )
    if first.get("batch"):
        out["items_per_s"] = first["batch"] * 1e3 / med
    for k in first:
        if k.endswith("_max_abs_diff"):
            vals = [r[k] for r in rows if r.get(k) is not None]
            out[k] = max(vals) if vals else None
        elif k.endswith("_times_ms") and k != "times_ms":
            pooled = sorted(t for r in rows for t in r.get(k) or [])
            out[k], out[k[:-len("_times_ms")] + "_median_ms"] = pooled, percentile(pooled, 0.5) if pooled else None
    return out


def by_key(results) -> dict:
    """Merged results by (engine, workload)."""
    return {(r["engine"], r["workload"]): r for r in results}


def merged(samples: dict, groups, engines, merge=merge_rounds) -> list:
    """`merge` of every (engine, group) in `samples`, in group order, then engine order."""
    keys = sorted(samples, key=lambda k: (list(groups).index(k[1]), list(engines).index(k[0])))
    return [merge(samples[k]) for k in keys]


def round_cell(r) -> str:
    """The per-round medians (and the other processes' load) of a merged result."""
    others = r.get("round_others") or [None] * len(r["round_medians_ms"])
    return ", ".join(fmt_ms(x) + (f" ({o:.1f})" if o is not None else "") for x, o in zip(r["round_medians_ms"], others))


def vs_vista(v, r) -> str:
    return f"{v['median_ms'] / r['median_ms']:.2f}" if v else "—"


def print_table(columns, rows) -> None:
    """A plain-text table: `columns` = [(title, width, cell(row) -> str)]; a negative width
    left-aligns."""
    print()
    print(" ".join(f"{t:<{-w}}" if w < 0 else f"{t:>{w}}" for t, w, _ in columns))
    for row in rows:
        print(" ".join(f"{c(row):<{-w}}" if w < 0 else f"{c(row):>{w}}" for _, w, c in columns))


def workload_heading(by: dict, meta: dict, engines, wl: str, title: str, unit: str = "timed calls"):
    """The start of a workload's report section: (engines that ran it, failure notes, lines: the
    title and how many calls ran), or None when nothing ran or failed."""
    present = [e for e in engines if (e, wl) in by]
    notes = [f for f in meta["failures"] if f.split(" ")[0].split("/")[1] == wl]
    if not present and not notes:
        return None
    lines = [f"### {title}", ""]
    if present:
        it = by[(present[0], wl)]
        lines += [f"`{wl}`: {it['iters']} {unit} per engine in {it['rounds']} round{'s' if it['rounds'] != 1 else ''} "
                  f"(a fresh process per round, warm-up {it['warmup']} per process).", ""]
    return present, notes, lines


def image_tables(by: dict, meta: dict, engines, names: dict, workloads: dict, labels: dict, size: str,
                 diff_note=None) -> list:
    """The report's tables for image-embedding workloads `{name: (model key, batch)}`: a summary
    (one row per workload: median ms and images/s, peak RSS per engine, vista's max abs diff), then
    per workload its heading and every engine's row. `labels[model key]` names the model, `size`
    the input ("224×224"); `diff_note(row)` may add to a row's diff cell."""
    present_e = [e for e in engines if any((e, w) in by for w in workloads)]
    lines = ["### Summary", "",
             "| model | batch | " + " | ".join(f"{names[e]} ms (img/s)" for e in present_e) + " | "
             + " | ".join(f"{names[e]} RSS MB" for e in present_e) + " | vista max abs diff |",
             "|---|---:|" + "---:|" * (2 * len(present_e) + 1)]
    for wl, (key, batch) in workloads.items():
        if not any((e, wl) in by for e in present_e):
            continue
        cells = [f"**{fmt_ms(by[(e, wl)]['median_ms'])}** ({by[(e, wl)]['items_per_s']:.1f})" if (e, wl) in by else "—"
                 for e in present_e]
        rss = [f"{by[(e, wl)]['rss_mb']:.0f}" if (e, wl) in by else "—" for e in present_e]
        v = by.get(("vista", wl))
        lines.append(f"| {labels[key]} | {batch} | " + " | ".join(cells) + " | " + " | ".join(rss) + " | "
                     + (f"{v['max_abs_diff_vs_torch']:.1e}" if v else "—") + " |")
    lines.append("")
    for wl, (key, batch) in workloads.items():
        head = workload_heading(by, meta, engines, wl, f"{labels[key]}, batch {batch}, {size}")
        if head is None:
            continue
        present, notes, more = head
        lines += more
        lines += ["| engine | median ms | p10-p90 ms | images/s | vs vista | peak RSS MB | load s | max abs diff "
                  "| others | per-round medians ms (others) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        v = by.get(("vista", wl))
        for e in present:
            r = by[(e, wl)]
            diff = f"{r['max_abs_diff_vs_torch']:.1e}" + (diff_note(r) if diff_note else "")
            lines.append(
                f"| {names[e]} | **{fmt_ms(r['median_ms'])}** | {fmt_ms(r['p10'])}-{fmt_ms(r['p90'])} | "
                f"{r['items_per_s']:.1f} | {vs_vista(v, r)} | {r['rss_mb']:.0f} | {r['load_s']:.2f} | "
                f"{diff} | {r['others']:.2f} | {round_cell(r)} |")
        lines += [f"| {names[f.split('/')[0]]} | failed: {f} | | | | | | | | |" for f in notes]
        lines.append("")
    return lines


def setup_notes(setup: dict, labels: dict, how: str, outputs: str, output_names=None) -> list:
    """The report's closing notes on a script's set-up (its `setup` JSON): the ONNX exports
    (`export` and `ort_vs_torch` per key, in the order and with the names of `labels`), exported
    `how`, and the magnitudes of PyTorch's reference outputs (`max_abs`; `outputs` says which)."""
    names = output_names or {}
    mags = ", ".join(f"{names.get(k, k)} {v:.2f}" for k, v in setup.get("max_abs", {}).items())
    return [export_line(setup, labels, how), "", f"Output magnitudes ({outputs}): {mags}.", ""]


def export_line(setup: dict, labels: dict, how: str) -> str:
    """The ONNX exports of a script's set-up, in the order and with the names of `labels`."""
    parts = []
    for key, label in labels.items():
        e = setup.get("export", {}).get(key)
        if not e:
            continue
        if e["ok"]:
            parts.append(f"{label} {e['mb']} MB in {e['seconds']} s (ORT vs PyTorch max|diff| "
                         f"{setup['ort_vs_torch'][key]:.1e})")
        else:
            parts.append(f"{label} **failed** after {e['seconds']} s: `{e['error']}`")
    return f"ONNX exports ({how}): " + "; ".join(parts) + "."


def machine_line(m: dict) -> str:
    return (f"**{m['cpu']}** (family {m['cpu_family']}, model {m['cpu_model']}), {m['cpus']} CPUs, "
            f"{m['hypervisor'] + ' VM, ' if m['hypervisor'] else ''}SIMD: {m['simd']}, L2 {m['l2']}, L3 {m['l3']}, "
            f"{m['mem_gb']} GB RAM, {m['os']}, Linux {m['kernel']}")


def header_lines(meta: dict, script: str, threads: list, title: str | None = None, begin: str | None = None) -> list:
    """The start of a report section: the begin marker, the generated-by line, the title, run
    (date, command, wall time), machine and load, GEMM peak, versions, threads (`threads`: one
    phrase per engine) and environment."""
    lines = [begin] if begin else []
    lines += [f"<!-- Generated by tools/bench/{script}; edit outside the markers. -->", ""]
    if title:
        lines += [title, ""]
    gb, ga = meta.get("gemm_before"), meta.get("gemm_after")
    lines += [
        f"Run: {meta['date']} · command: `{meta['command']}`"
        + (f" ({meta['wall_s']:.0f} s)" if meta.get("wall_s") is not None else ""),
        "",
        f"Machine: {machine_line(meta['machine'])}. Load average before / after: {meta['load_before']} / "
        f"{meta['load_after']}.",
        "",
        f"GEMM peak in this run: **{gemm_text(gb)}** before the measurements, "
        + (f"{ga['gflops']:.0f} GFLOP/s after" if ga else "not measured after")
        + ". Machines of this kind vary up to 2× from day to day: compare ratios within one run, and "
          "absolute times only at a similar GEMM peak.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v) + ".",
        "",
        f"Threads: {meta['threads']} per engine ({'; '.join(threads)}). {meta.get('env_note', '')}".rstrip(),
        "",
    ]
    if meta.get("load_note"):
        lines += [meta["load_note"], ""]
    return lines


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


def versions(python: str, packages, crates, repo_root: pathlib.Path = REPO_ROOT, extra_code: str = "") -> dict:
    """Versions of the Python `packages` as `python` sees them, of the Rust `crates` in the lock file,
    of rustc, and of vista itself (commit, marked when the tree has uncommitted changes)."""
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
    v = json.loads(sh([python, "-c", code]) or "{}")
    lock_path = repo_root / "Cargo.lock"
    lock = lock_path.read_text() if lock_path.exists() else ""
    for crate in crates:
        marker = f'name = "{crate}"\nversion = "'
        i = lock.find(marker)
        v[crate] = lock[i + len(marker):].split('"', 1)[0] if i >= 0 else None
    v["rustc"] = sh(["rustc", "-V"]).removeprefix("rustc ")
    rev = sh(["git", "-C", str(repo_root), "rev-parse", "--short", "HEAD"])
    # The reports (BENCHMARKS.md, BENCHMARKS-AVX2.md) are the scripts' output: a run after another
    # script's run is still clean.
    dirty = sh(["git", "-C", str(repo_root), "status", "--porcelain", "--untracked-files=no", "--", ".",
                ":(exclude,glob)BENCHMARKS*.md"])
    v["vista"] = f"{rev}{' + uncommitted changes' if dirty else ''}" if rev else None
    return v
