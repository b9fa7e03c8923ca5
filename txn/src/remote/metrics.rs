//! Prometheus metrics: each node serves its counters in the text exposition format over plain
//! HTTP (`metrics_listen` in its configuration), `GET /metrics`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::shard::OutcomeCounters;

/// One metric's current value.
pub struct Metric {
    /// Its name, `sealdb_...`.
    pub name: &'static str,
    /// What it counts.
    pub help: &'static str,
    /// `counter` or `gauge`.
    pub kind: &'static str,
    /// Its value.
    pub value: f64,
}

impl Metric {
    /// A counter.
    pub fn counter(name: &'static str, help: &'static str, value: f64) -> Metric {
        Metric { name, help, kind: "counter", value }
    }

    /// A gauge.
    pub fn gauge(name: &'static str, help: &'static str, value: f64) -> Metric {
        Metric { name, help, kind: "gauge", value }
    }
}

/// The metrics in Prometheus' text format.
pub fn render(metrics: &[Metric]) -> String {
    let mut out = String::new();
    for m in metrics {
        let _ = writeln!(out, "# HELP {} {}", m.name, m.help);
        let _ = writeln!(out, "# TYPE {} {}", m.name, m.kind);
        let _ = writeln!(out, "{} {}", m.name, m.value);
    }
    out
}

/// Counters a shard server keeps.
#[derive(Default)]
pub(crate) struct ShardCounters {
    pub(crate) windows: AtomicU64,
    pub(crate) entries: AtomicU64,
    /// Outcomes of the entries whose lowest participant is this shard.
    pub(crate) outcomes: OutcomeCounters,
    /// Sum over applied windows of (time applied - window timestamp), in nanoseconds.
    pub(crate) seal_to_apply_nanos: AtomicU64,
    /// Sum over answered outcomes of (time answered - window timestamp), commit-wait
    /// included, in nanoseconds, and how many.
    pub(crate) commit_nanos: AtomicU64,
    pub(crate) commits_answered: AtomicU64,
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
