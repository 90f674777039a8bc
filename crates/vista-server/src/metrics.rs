//! Counters for `GET /metrics` in Prometheus' text format: requests by route and status,
//! latency histograms by route, refusals by kind; the model queues' depth and batch sizes are
//! read from the workers when scraped.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, seconds.
pub const BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// A gauge for [`Metrics::render`]: name, help text, and `(labels, value)` samples.
pub type Gauge<'a> = (&'a str, &'a str, Vec<(String, f64)>);

/// The server's counters.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
}

impl Metrics {
    /// Records one answered request.
    pub fn record(&self, route: &str, status: u16, took: Duration) {
        *self.requests.lock().expect("metrics lock").entry((route.to_string(), status)).or_default() += 1;
        if status >= 400 {
            *self.failures.lock().expect("metrics lock").entry(kind_of(status)).or_default() += 1;
        }
        let mut latency = self.latency.lock().expect("metrics lock");
        let h = latency.entry(route.to_string()).or_default();
        let s = took.as_secs_f64();
        for (c, &b) in h.counts.iter_mut().zip(&BUCKETS) {
            if s <= b {
                *c += 1;
            }
        }
        h.count += 1;
        h.sum += s;
    }

    /// Requests answered with `status` so far, over all routes.
    pub fn count_status(&self, status: u16) -> u64 {
        self.requests.lock().expect("metrics lock").iter().filter(|(k, _)| k.1 == status).map(|(_, v)| v).sum()
    }

    /// The text exposition; `gauges` are `(name, help, [(labels, value)])` added as they are.
    pub fn render(&self, gauges: &[Gauge<'_>]) -> String {
        let mut out = String::new();
        out += "# HELP vista_requests_total API requests answered, by route and status.\n";
        out += "# TYPE vista_requests_total counter\n";
        for ((route, status), n) in self.requests.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "vista_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
        }
        out += "# HELP vista_failures_total Requests answered with an error, by kind (docs/API.md).\n";
        out += "# TYPE vista_failures_total counter\n";
        for (kind, n) in self.failures.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "vista_failures_total{{kind=\"{kind}\"}} {n}");
        }
        out += "# HELP vista_request_seconds Time from request to response, by route.\n";
        out += "# TYPE vista_request_seconds histogram\n";
        for (route, h) in self.latency.lock().expect("metrics lock").iter() {
            for (c, b) in h.counts.iter().zip(BUCKETS) {
                let _ = writeln!(out, "vista_request_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {c}");
            }
            let _ = writeln!(out, "vista_request_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "vista_request_seconds_sum{{route=\"{route}\"}} {}", h.sum);
            let _ = writeln!(out, "vista_request_seconds_count{{route=\"{route}\"}} {}", h.count);
        }
        for (name, help, values) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, v) in values {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        }
        out
    }
}

/// The error kind of a status, as `ApiError` names it.
fn kind_of(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthorized",
        404 => "not_found",
        405 => "method_not_allowed",
        413 => "too_large",
        415 => "unsupported_media_type",
        422 => "invalid",
        429 => "busy",
        503 => "unavailable",
        504 => "timeout",
        500..=599 => "internal",
        _ => "other",
    }
}
