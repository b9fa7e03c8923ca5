//! Prometheus metrics: each node serves its counters in the text exposition format over plain
//! HTTP (`metrics_listen` in its configuration), `GET /metrics`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use txn::OutcomeCounters;

/// One metric's current value.
pub struct Metric {
    /// Its name, `sealdb_...`.
    pub name: &'static str,
    /// What it counts.
    pub help: &'static str,
    /// Its value.
    pub value: Value,
}

/// A metric's value, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A count that only rises.
    Counter(f64),
    /// A level that goes up and down.
    Gauge(f64),
    /// A distribution of observations.
    Histogram {
        /// How many fell at or below each upper bound: cumulative, ascending (`+Inf` is
        /// `count`).
        buckets: Vec<(f64, u64)>,
        /// Their sum.
        sum: f64,
        /// How many.
        count: u64,
    },
}

impl Metric {
    /// A counter.
    pub fn counter(name: &'static str, help: &'static str, value: f64) -> Metric {
        Metric { name, help, value: Value::Counter(value) }
    }

    /// A gauge.
    pub fn gauge(name: &'static str, help: &'static str, value: f64) -> Metric {
        Metric { name, help, value: Value::Gauge(value) }
    }

    /// A histogram from per-bucket (not cumulative) counts: `counts[i]` observations fell at
    /// or below `bounds[i]` and above the bound before; the last count is above every bound.
    pub fn histogram(
        name: &'static str,
        help: &'static str,
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
    ) -> Metric {
        debug_assert_eq!(counts.len(), bounds.len() + 1);
        let mut seen = 0;
        let buckets = bounds
            .iter()
            .zip(counts)
            .map(|(bound, n)| {
                seen += n;
                (*bound, seen)
            })
            .collect();
        let count = counts.iter().sum();
        Metric { name, help, value: Value::Histogram { buckets, sum, count } }
    }
}

/// The metrics in Prometheus' text format.
pub fn render(metrics: &[Metric]) -> String {
    let mut out = String::new();
    for m in metrics {
        let kind = match m.value {
            Value::Counter(_) => "counter",
            Value::Gauge(_) => "gauge",
            Value::Histogram { .. } => "histogram",
        };
        let _ = writeln!(out, "# HELP {} {}", m.name, m.help);
        let _ = writeln!(out, "# TYPE {} {kind}", m.name);
        match &m.value {
            Value::Counter(v) | Value::Gauge(v) => {
                let _ = writeln!(out, "{} {v}", m.name);
            }
            Value::Histogram { buckets, sum, count } => {
                for (bound, n) in buckets {
                    let _ = writeln!(out, "{}_bucket{{le=\"{bound}\"}} {n}", m.name);
                }
                let _ = writeln!(out, "{}_bucket{{le=\"+Inf\"}} {count}", m.name);
                let _ = writeln!(out, "{}_sum {sum}", m.name);
                let _ = writeln!(out, "{}_count {count}", m.name);
            }
        }
    }
    out
}

/// Upper bounds, in seconds, of the latency histograms' buckets: 0.5 ms to 10 s.
pub const LATENCY_BOUNDS: [f64; 14] =
    [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];

/// A latency histogram, updated without locks.
pub(crate) struct LatencyHistogram {
    /// Per bucket of [`LATENCY_BOUNDS`], then above them all.
    counts: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> LatencyHistogram {
        LatencyHistogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    /// Counts one observation.
    pub(crate) fn observe(&self, d: Duration) {
        let seconds = d.as_secs_f64();
        let bucket = LATENCY_BOUNDS.iter().position(|b| seconds <= *b);
        self.counts[bucket.unwrap_or(LATENCY_BOUNDS.len())].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// As a metric.
    pub(crate) fn metric(&self, name: &'static str, help: &'static str) -> Metric {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        Metric::histogram(name, help, &LATENCY_BOUNDS, &counts, sum)
    }
}

/// Counters a shard server keeps.
#[derive(Default)]
pub(crate) struct ShardCounters {
    pub(crate) windows: AtomicU64,
    pub(crate) entries: AtomicU64,
    /// Outcomes of the entries whose lowest participant is this shard.
    pub(crate) outcomes: OutcomeCounters,
    /// Per applied window: time applied - window timestamp.
    pub(crate) seal_to_apply: LatencyHistogram,
    /// Per answered commit: time answered - window timestamp, commit-wait included.
    pub(crate) commit: LatencyHistogram,
}

impl ShardCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(counter: &AtomicU64) -> f64 {
        counter.load(Ordering::Relaxed) as f64
    }
}

/// Serves `GET /metrics` on `listener` with what `metrics` returns, until the task is
/// dropped or the runtime stops.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<dyn Fn() -> Vec<Metric> + Send + Sync>,
) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // The request line and headers; a scrape sends no body.
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let (status, body) = if request.starts_with(b"GET /metrics ") {
                ("200 OK", render(&metrics()))
            } else {
                ("404 Not Found", "metrics are at /metrics\n".to_string())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_renders_cumulative_buckets_sum_and_count() {
        let h = LatencyHistogram::default();
        for ms in [0.2, 0.7, 0.9, 30.0, 20_000.0] {
            h.observe(Duration::from_secs_f64(ms / 1000.0));
        }
        let text = render(&[h.metric("sealdb_test_seconds", "Test.")]);
        assert!(text.contains("# TYPE sealdb_test_seconds histogram\n"), "{text}");
        for line in [
            "sealdb_test_seconds_bucket{le=\"0.0005\"} 1\n",
            "sealdb_test_seconds_bucket{le=\"0.001\"} 3\n",
            "sealdb_test_seconds_bucket{le=\"0.02\"} 3\n",
            "sealdb_test_seconds_bucket{le=\"0.05\"} 4\n",
            "sealdb_test_seconds_bucket{le=\"10\"} 4\n",
            "sealdb_test_seconds_bucket{le=\"+Inf\"} 5\n",
            "sealdb_test_seconds_count 5\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("sealdb_test_seconds_sum "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 20.0318).abs() < 1e-6, "{sum}");
    }
}
