//! What vista's sides of the benchmarks share (`tools/bench/*.py` drive them): flag parsing,
//! the timed model load, the timing loop and its statistics, peak RSS, the parity check against
//! PyTorch's outputs and the fields of every result line.
//! Each example includes it with `mod common;`.

#![allow(dead_code)] // each example uses its part

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Tensor;
use serde_json::{json, Value};

/// vista's allocator, as the CLI installs it ([`vista::memory`]).
#[global_allocator]
static ALLOCATOR: vista::memory::TensorAllocator = vista::memory::TensorAllocator;

/// Starts a benchmark: vista's process set-up (allocator tuning, as the CLI does; before any
/// thread starts), then the flags, read by `read` ([`Flags::from_env`] with `usage` and
/// `switches`); a flag left unread is an error.
pub fn start<A>(usage: &'static str, switches: &[&str], read: impl FnOnce(&mut Flags) -> Result<A>) -> Result<A> {
    vista::device::init_process();
    let mut flags = Flags::from_env(usage, switches)?;
    let args = read(&mut flags)?;
    flags.finish()?;
    Ok(args)
}

/// `--flag value` pairs (a flag may repeat) and `--switch`es, read once; unknown flags are an
/// error at [`Flags::finish`].
pub struct Flags {
    usage: &'static str,
    values: Vec<(String, String)>,
}

impl Flags {
    /// The process's arguments, where the flags in `switches` take no value; `-h` / `--help`
    /// prints `usage` and exits.
    pub fn from_env(usage: &'static str, switches: &[&str]) -> Result<Self> {
        let mut values = Vec::new();
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "-h" || flag == "--help" {
                println!("{usage}");
                std::process::exit(0);
            }
            if !flag.starts_with("--") {
                bail!("unexpected argument `{flag}`\n{usage}");
            }
            let value = if switches.contains(&flag.as_str()) {
                "true".to_string()
            } else {
                it.next().ok_or_else(|| anyhow!("{flag} needs a value"))?
            };
            values.push((flag, value));
        }
        Ok(Self { usage, values })
    }

    /// Whether the switch `flag` was given.
    pub fn switch(&mut self, flag: &str) -> bool {
        !self.take_all(flag).is_empty()
    }

    fn take_all(&mut self, flag: &str) -> Vec<String> {
        let (taken, kept) = self.values.drain(..).partition(|(f, _)| f == flag);
        self.values = kept;
        taken.into_iter().map(|(_, v)| v).collect()
    }

    /// Every value of a repeatable flag.
    pub fn many(&mut self, flag: &str) -> Vec<String> {
        self.take_all(flag)
    }

    /// The last value of `flag`, parsed, if given.
    pub fn opt<T: FromStr>(&mut self, flag: &str) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        match self.take_all(flag).pop() {
            Some(v) => v.parse::<T>().map(Some).map_err(|e| anyhow!("{flag} `{v}`: {e}")),
            None => Ok(None),
        }
    }

    /// `flag`'s value, or `default`.
    pub fn or<T: FromStr>(&mut self, flag: &str, default: T) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        Ok(self.opt(flag)?.unwrap_or(default))
    }

    /// `flag`'s value; an error naming it when missing.
    pub fn req<T: FromStr>(&mut self, flag: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        self.opt(flag)?.ok_or_else(|| anyhow!("{flag} is required\n{}", self.usage))
    }

    /// The flags of every model benchmark ([`Bench`]), `warmup` and `iters` by default.
    pub fn bench(&mut self, warmup: usize, iters: usize) -> Result<Bench> {
        let bench = Bench {
            model: self.req("--model")?,
            inputs: self.req("--inputs")?,
            warmup: self.or("--warmup", warmup)?,
            iters: self.or("--iters", iters)?,
        };
        if bench.iters == 0 {
            bail!("--iters must be at least 1");
        }
        Ok(bench)
    }

    /// Fails on any flag not taken.
    pub fn finish(self) -> Result<()> {
        match self.values.first() {
            Some((flag, _)) => bail!("unknown argument `{flag}`\n{}", self.usage),
            None => Ok(()),
        }
    }
}

/// What every model benchmark is given.
pub struct Bench {
    /// `--model`: the checkpoint.
    pub model: String,
    /// `--inputs`: the safetensors file of the inputs and PyTorch's outputs ([`Inputs`]).
    pub inputs: String,
    /// `--warmup N`: untimed calls, the parity call counting as the first.
    pub warmup: usize,
    /// `--iters N`: timed calls, at least 1.
    pub iters: usize,
}

impl Bench {
    /// Loads [`model`](Self::model) with `load`, timed: what it loaded and the seconds it took.
    pub fn load<T>(&self, load: impl FnOnce(&str) -> vista::Result<T>) -> Result<(T, f64)> {
        let t0 = Instant::now();
        let loaded = load(&self.model).with_context(|| format!("loading {}", self.model))?;
        Ok((loaded, t0.elapsed().as_secs_f64()))
    }

    /// The fields every result line has besides its timing: the engine, the workload, the
    /// largest difference from PyTorch's output, the warm-up calls, the load time and the peak
    /// RSS so far.
    pub fn result(&self, workload: &str, diff: f32, load_s: f64) -> Value {
        json!({
            "engine": "vista", "workload": workload, "max_abs_diff_vs_torch": diff, "warmup": self.warmup.max(1),
            "load_s": load_s, "peak_rss_mb": peak_rss_mb(),
        })
    }
}

/// Linear interpolation between closest ranks (numpy's default), `q` in [0, 1]; `sorted` non-empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Wall times of timed calls, in milliseconds.
pub struct Timing {
    /// In call order.
    pub times_ms: Vec<f64>,
}

impl Timing {
    /// Median, 10th and 90th percentiles.
    pub fn stats(&self) -> (f64, f64, f64) {
        let mut s = self.times_ms.clone();
        s.sort_by(f64::total_cmp);
        (percentile(&s, 0.5), percentile(&s, 0.1), percentile(&s, 0.9))
    }

    /// `median_ms`, `p10`, `p90`, `iters` and `times_ms`, plus `items_per_s` for `items` per call.
    pub fn json(&self, items: Option<usize>) -> Value {
        let (median, p10, p90) = self.stats();
        let mut v = json!({"median_ms": median, "p10": p10, "p90": p90, "iters": self.times_ms.len(),
                           "times_ms": self.times_ms});
        if let Some(n) = items {
            v["items_per_s"] = json!(n as f64 * 1e3 / median);
        }
        v
    }
}

/// Milliseconds since `t`.
pub fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Runs `f` `warmup` times untimed (the caller's parity call counts as the first: pass
/// `warmup - 1` then), then `iters` times timed, each result passed through `black_box` (the CPU
/// backend is synchronous; touching the result keeps the work honest anyway).
pub fn time_calls<T>(warmup: usize, iters: usize, mut f: impl FnMut() -> Result<T>) -> Result<Timing> {
    for _ in 0..warmup {
        f()?;
    }
    let mut times_ms = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        std::hint::black_box(f()?);
        times_ms.push(ms_since(t));
    }
    Ok(Timing { times_ms })
}

/// This process's peak resident set (VmHWM), in MB.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The thread settings every line records.
pub fn thread_env() -> Value {
    json!({
        "threads": std::env::var("RAYON_NUM_THREADS").ok(),
        "candle_barrier_pool_spin_limit": std::env::var("CANDLE_BARRIER_POOL_SPIN_LIMIT").ok(),
    })
}

/// Largest absolute difference between `a` and PyTorch's `reference` (same shape).
pub fn max_abs_diff(a: &Tensor, reference: &Tensor) -> Result<f32> {
    if a.dims() != reference.dims() {
        bail!("shape {:?} vs reference {:?}", a.dims(), reference.dims());
    }
    Ok(a.sub(reference)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

/// The tensors of the inputs file the script's set-up wrote (so every engine gets identical inputs).
pub struct Inputs {
    path: String,
    tensors: HashMap<String, Tensor>,
}

impl Inputs {
    /// Reads `path` onto the CPU.
    pub fn load(path: &str) -> Result<Self> {
        let tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
            .with_context(|| format!("reading {path}"))?;
        Ok(Self { path: path.to_string(), tensors })
    }

    /// Tensor `key`; an error naming the file when absent.
    pub fn get(&self, key: &str) -> Result<Tensor> {
        self.tensors.get(key).cloned().ok_or_else(|| anyhow!("{} has no `{key}`", self.path))
    }

    /// Tensor `key` if present.
    pub fn maybe(&self, key: &str) -> Option<Tensor> {
        self.tensors.get(key).cloned()
    }
}

/// Prints one JSON line: `base` with every field of each of `parts` merged in.
pub fn emit(mut base: Value, parts: &[Value]) {
    for p in parts {
        if let (Some(b), Some(o)) = (base.as_object_mut(), p.as_object()) {
            b.extend(o.clone());
        }
    }
    println!("{base}");
}
