//! vista's side of the search benchmark (`tools/bench/bench_search.py` drives it).
//!
//! ```sh
//! cargo build --release -p vista --example bench_search
//! RAYON_NUM_THREADS=2 target/release/examples/bench_search \
//!     --base bench-out/search/base.f16 --dim 512 --rows 1000000 \
//!     --queries bench-out/search/queries.f32 --k 10 --scan f16 --warmup 5
//! ```
//!
//! Loads the first `--rows` rows of `--base` (raw little-endian f16, `dim` values a row: the BLOB
//! format of the index) one `VectorSet::push_f16_bytes` at a time, as `IndexDb::load_vectors` does,
//! reads the queries (raw little-endian f32, `dim` a row), and times `VectorSet::top_k_with` once
//! per query after `--warmup` untimed queries (the int8 copy, for `--scan int8`, is built before
//! timing and its build time reported). Prints one JSON line:
//! `{"engine":"vista","scan":..,"rows":..,"dim":..,"k":..,"threads":..,"median_ms":..,"p10":..,
//!   "p90":..,"load_s":..,"prepare_s":..,"peak_rss_mb":..,"cpu_util":..,"times_ms":[..],"ids":[[..]..]}`
//! (`cpu_util`: CPU time over wall time during the timed queries; 2.0 = two cores busy).
//!
//! `--dupes THRESHOLD` instead times `near_duplicate_groups` over the rows once and prints
//! `{"engine":"vista","task":"dupes","rows":..,"threshold":..,"seconds":..,"groups":..,"grouped_rows":..}`.

mod common;

use std::fs::File;
use std::io::{BufReader, Read};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use common::{peak_rss_mb, percentile};
use serde_json::json;
use vista::index::vectors::{near_duplicate_groups, Scan, VectorSet};

struct Args {
    base: String,
    dim: usize,
    rows: usize,
    queries: String,
    k: usize,
    scan: Scan,
    warmup: usize,
    dupes: Option<f32>,
}

fn parse_args() -> Result<Args> {
    let a = common::start(
        "bench_search --base FILE.f16 --dim D --rows N (--queries FILE.f32 [--k K] [--scan f16|int8] [--warmup N] | \
         --dupes THRESHOLD)",
        &[],
        |f| {
            let scan = match f.or("--scan", "f16".to_string())?.as_str() {
                "f16" => Scan::F16,
                "int8" => Scan::Int8,
                other => bail!("--scan {other}: expected f16 or int8"),
            };
            Ok(Args {
                base: f.req("--base")?,
                dim: f.or("--dim", 512)?,
                rows: f.req("--rows")?,
                queries: f.or("--queries", String::new())?,
                k: f.or("--k", 10)?,
                scan,
                warmup: f.or("--warmup", 5)?,
                dupes: f.opt("--dupes")?,
            })
        },
    )?;
    if a.rows == 0 {
        bail!("--rows must be positive");
    }
    if a.queries.is_empty() && a.dupes.is_none() {
        bail!("--queries (search) or --dupes (grouping) is required");
    }
    Ok(a)
}

/// CPU time (user + system) this process has used, in seconds (`/proc/self/stat`, clock ticks
/// of 1/100 s).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn load_base(path: &str, dim: usize, rows: usize) -> Result<VectorSet> {
    let file = File::open(path).with_context(|| format!("open {path}"))?;
    let have = file.metadata()?.len() as usize / (2 * dim);
    if have < rows {
        bail!("{path} holds {have} rows of {dim} f16, {rows} asked");
    }
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut set = VectorSet::with_capacity(dim, rows);
    let mut blob = vec![0u8; 2 * dim];
    for _ in 0..rows {
        reader.read_exact(&mut blob)?;
        set.push_f16_bytes(&blob)?;
    }
    Ok(set)
}

fn load_queries(path: &str, dim: usize) -> Result<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).with_context(|| format!("read {path}"))?;
    if bytes.len() % (4 * dim) != 0 {
        bail!("{path}: {} bytes is not a whole number of {dim}-d f32 rows", bytes.len());
    }
    let values: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok(values.chunks_exact(dim).map(<[f32]>::to_vec).collect())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let t = Instant::now();
    let set = load_base(&args.base, args.dim, args.rows)?;
    let load_s = t.elapsed().as_secs_f64();

    if let Some(threshold) = args.dupes {
        let t = Instant::now();
        let groups = near_duplicate_groups(&set, threshold);
        let seconds = t.elapsed().as_secs_f64();
        println!(
            "{}",
            json!({
                "engine": "vista", "task": "dupes", "rows": set.len(), "dim": set.dim(), "threshold": threshold,
                "threads": rayon::current_num_threads(), "seconds": seconds, "load_s": load_s,
                "groups": groups.len(), "grouped_rows": groups.iter().map(Vec::len).sum::<usize>(),
                "peak_rss_mb": peak_rss_mb(),
            })
        );
        return Ok(());
    }

    let queries = load_queries(&args.queries, args.dim)?;
    let t = Instant::now();
    if args.scan == Scan::Int8 {
        set.prepare_int8();
    }
    let prepare_s = t.elapsed().as_secs_f64();
    for q in queries.iter().cycle().take(args.warmup) {
        std::hint::black_box(set.top_k_with(args.scan, q, args.k, None, None));
    }
    let mut times_ms = Vec::with_capacity(queries.len());
    let mut ids = Vec::with_capacity(queries.len());
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    for q in &queries {
        let t = Instant::now();
        let hits = set.top_k_with(args.scan, q, args.k, None, None);
        times_ms.push(t.elapsed().as_secs_f64() * 1e3);
        ids.push(hits.iter().map(|h| h.index).collect::<Vec<_>>());
    }
    let cpu_util = cpu_seconds().zip(cpu0).map(|(c1, c0)| (c1 - c0) / wall0.elapsed().as_secs_f64());
    let mut sorted = times_ms.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({
            "engine": "vista", "scan": format!("{:?}", args.scan).to_lowercase(), "rows": set.len(), "dim": set.dim(),
            "k": args.k, "threads": rayon::current_num_threads(),
            "median_ms": percentile(&sorted, 0.5), "p10": percentile(&sorted, 0.1), "p90": percentile(&sorted, 0.9),
            "load_s": load_s, "prepare_s": prepare_s, "peak_rss_mb": peak_rss_mb(), "cpu_util": cpu_util,
            "times_ms": times_ms, "ids": ids,
        })
    );
    Ok(())
}
