//! Prometheus metrics: each node serves its counters over plain HTTP (`metrics_listen` in its
//! configuration), `GET /metrics`, in the OpenMetrics text format.
//!
//! Nodes take a snapshot of their counters at each scrape ([`Metric`]); `prometheus-client`
//! encodes it and `hyper` serves it. Latency histograms are kept here, as lock-free atomic
//! buckets, because they are observed on every window and every commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use txn::OutcomeCounters;

/// One metric's current value.
#[derive(Debug, Clone)]
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
    /// Counts that only rise, one for each value of a label (a counter family).
    CountersBy {
        /// The label's name.
        label: &'static str,
        /// Each label value's count.
        counts: Vec<(&'static str, f64)>,
    },
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

    /// A counter for each value of `label`.
    pub fn counters_by(
        name: &'static str,
        help: &'static str,
        label: &'static str,
        counts: Vec<(&'static str, f64)>,
    ) -> Metric {
        Metric { name, help, value: Value::CountersBy { label, counts } }
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

/// The metrics in the OpenMetrics text format (which Prometheus scrapes), encoded by
/// `prometheus-client`. Counter names end in `_total`, as the format requires.
pub fn render(metrics: &[Metric]) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(metrics.to_vec())));
    let mut out = String::new();
    encode(&mut out, &registry).expect("encoding into a String cannot fail");
    out
}

/// Metrics taken at one scrape.
#[derive(Debug)]
struct Snapshot(Vec<Metric>);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for m in &self.0 {
            match &m.value {
                Value::Counter(v) => {
                    // The encoder adds `_total` to a counter's samples.
                    let name = m.name.strip_suffix("_total").unwrap_or(m.name);
                    let counter = ConstCounter::new(*v);
                    counter.encode(encoder.encode_descriptor(
                        name,
                        m.help,
                        None,
                        counter.metric_type(),
                    )?)?;
                }
                Value::CountersBy { label, counts } => {
                    let name = m.name.strip_suffix("_total").unwrap_or(m.name);
                    let mut family =
                        encoder.encode_descriptor(name, m.help, None, MetricType::Counter)?;
                    for (value, n) in counts {
                        ConstCounter::new(*n).encode(family.encode_family(&[(*label, *value)])?)?;
                    }
                }
                Value::Gauge(v) => {
                    let gauge = ConstGauge::new(*v);
                    gauge.encode(encoder.encode_descriptor(
                        m.name,
                        m.help,
                        None,
                        gauge.metric_type(),
                    )?)?;
                }
                Value::Histogram { buckets, sum, count } => {
                    let mut metric =
                        encoder.encode_descriptor(m.name, m.help, None, MetricType::Histogram)?;
                    // Per-bucket counts, the last above every bound (`+Inf`); the encoder
                    // makes them cumulative.
                    let mut per_bucket = Vec::with_capacity(buckets.len() + 1);
                    let mut below = 0;
                    for (bound, cumulative) in buckets {
                        per_bucket.push((*bound, cumulative - below));
                        below = *cumulative;
                    }
                    per_bucket.push((f64::MAX, count - below));
                    metric.encode_histogram::<NoLabelSet>(*sum, *count, &per_bucket, None)?;
                }
            }
        }
        Ok(())
    }
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

/// A shard server's gRPC methods, for counting the requests each receives.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ShardRpc {
    Get,
    GetMany,
    Scan,
    ReadCall,
    Verdicts,
    Push,
    AwaitOutcome,
    AwaitOutcomes,
    WatchOutcomes,
    Outcome,
    FetchCheckpoint,
    Status,
}

impl ShardRpc {
    const ALL: [ShardRpc; 12] = [
        ShardRpc::Get,
        ShardRpc::GetMany,
        ShardRpc::Scan,
        ShardRpc::ReadCall,
        ShardRpc::Verdicts,
        ShardRpc::Push,
        ShardRpc::AwaitOutcome,
        ShardRpc::AwaitOutcomes,
        ShardRpc::WatchOutcomes,
        ShardRpc::Outcome,
        ShardRpc::FetchCheckpoint,
        ShardRpc::Status,
    ];

    /// Its name in the `.proto` (the metric's `method` label).
    fn name(self) -> &'static str {
        match self {
            ShardRpc::Get => "Get",
            ShardRpc::GetMany => "GetMany",
            ShardRpc::Scan => "Scan",
            ShardRpc::ReadCall => "ReadCall",
            ShardRpc::Verdicts => "Verdicts",
            ShardRpc::Push => "Push",
            ShardRpc::AwaitOutcome => "AwaitOutcome",
            ShardRpc::AwaitOutcomes => "AwaitOutcomes",
            ShardRpc::WatchOutcomes => "WatchOutcomes",
            ShardRpc::Outcome => "Outcome",
            ShardRpc::FetchCheckpoint => "FetchCheckpoint",
            ShardRpc::Status => "Status",
        }
    }
}

/// Requests a shard server received, by method: every request its service was handed,
/// refused ones included (a call of each streaming method counts once).
#[derive(Default)]
pub(crate) struct RequestCounts([AtomicU64; ShardRpc::ALL.len()]);

impl RequestCounts {
    pub(crate) fn count(&self, rpc: ShardRpc) {
        self.0[rpc as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn metric(&self) -> Metric {
        let counts = ShardRpc::ALL
            .iter()
            .map(|&rpc| (rpc.name(), self.0[rpc as usize].load(Ordering::Relaxed) as f64))
            .collect();
        Metric::counters_by(
            "sealdb_shard_requests_total",
            "gRPC requests the shard received, by method (refused ones included; a streaming \
             call counts once).",
            "method",
            counts,
        )
    }
}

/// Counters a shard server keeps.
#[derive(Default)]
pub(crate) struct ShardCounters {
    /// Requests received, by method.
    pub(crate) requests: RequestCounts,
    pub(crate) windows: AtomicU64,
    pub(crate) entries: AtomicU64,
    /// Multi-shard procedures deferred to the next window after losing, each time.
    pub(crate) deferred: AtomicU64,
    /// Remote reads answered wholly by what the peer pushed (first round, or after a run).
    pub(crate) reads_pushed: AtomicU64,
    /// Of those, reads after a first run answered by what the peer's first run read.
    pub(crate) reads_run_pushed: AtomicU64,
    /// Remote reads that called the peer (for what no push brought).
    pub(crate) reads_asked: AtomicU64,
    /// Peers' verdicts that came pushed.
    pub(crate) verdicts_pushed: AtomicU64,
    /// Peers' verdicts pulled with a call.
    pub(crate) verdicts_asked: AtomicU64,
    /// Outcomes of the entries whose lowest participant is this shard.
    pub(crate) outcomes: OutcomeCounters,
    /// Transactions asked for with `AwaitOutcome` or in `AwaitOutcomes` (each time asked).
    pub(crate) outcomes_awaited: AtomicU64,
    /// Per applied window: time applied - window timestamp.
    pub(crate) seal_to_apply: LatencyHistogram,
    /// Per answered commit: time answered - window timestamp, commit-wait included.
    pub(crate) commit: LatencyHistogram,
    /// Nanoseconds the apply thread spent on windows, from delivery to written, and of those
    /// the nanoseconds it waited for peers (their reads and verdicts): the rest of a loaded
    /// shard's time is waiting for the sequencer's next window.
    pub(crate) apply_nanos: AtomicU64,
    pub(crate) peer_wait_nanos: AtomicU64,
    /// Whether this replica's digest differed from a fellow replica's.
    pub(crate) diverged: std::sync::atomic::AtomicBool,
}

impl ShardCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(counter: &AtomicU64) -> f64 {
        counter.load(Ordering::Relaxed) as f64
    }

    /// Adds `d` to a counter of nanoseconds.
    pub(crate) fn add_time(counter: &AtomicU64, d: Duration) {
        ShardCounters::add(counter, u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// A counter of nanoseconds, in seconds.
    pub(crate) fn seconds(counter: &AtomicU64) -> f64 {
        ShardCounters::get(counter) / 1e9
    }
}

/// At most this many scrapes are served at once; more connections wait to be accepted.
const MAX_SCRAPES: usize = 16;

/// How long a scraper may take to send its request.
const SCRAPE_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `listener` with what `metrics` returns (HTTP/1.1, by `hyper`),
/// until the task is dropped or the runtime stops. Anything else is answered 404.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<dyn Fn() -> Vec<Metric> + Send + Sync>,
) {
    let scrapes = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let Ok(permit) = scrapes.clone().acquire_owned().await else { return };
        let Ok((stream, _)) = listener.accept().await else { continue };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |request: hyper::Request<Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let response = match (request.method(), request.uri().path()) {
                        (&Method::GET, "/metrics") => hyper::Response::builder()
                            .header(CONTENT_TYPE, OPENMETRICS)
                            .body(Full::new(Bytes::from(render(&metrics())))),
                        _ => hyper::Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from("metrics are at /metrics\n"))),
                    };
                    Ok::<_, hyper::http::Error>(response.expect("a valid response"))
                }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(SCRAPE_REQUEST_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "a metrics scrape failed");
            }
        });
    }
}

/// The OpenMetrics text format's content type.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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
            "sealdb_test_seconds_bucket{le=\"10.0\"} 4\n",
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

    #[test]
    fn requests_render_as_one_counter_family_labelled_by_method() {
        let requests = RequestCounts::default();
        requests.count(ShardRpc::GetMany);
        requests.count(ShardRpc::GetMany);
        requests.count(ShardRpc::Status);
        let text = render(&[requests.metric()]);
        assert_eq!(text.matches("# TYPE sealdb_shard_requests counter\n").count(), 1, "{text}");
        for line in [
            "sealdb_shard_requests_total{method=\"GetMany\"} 2.0\n",
            "sealdb_shard_requests_total{method=\"Status\"} 1.0\n",
            "sealdb_shard_requests_total{method=\"Get\"} 0.0\n",
            "sealdb_shard_requests_total{method=\"FetchCheckpoint\"} 0.0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert_eq!(text.matches("sealdb_shard_requests_total{").count(), ShardRpc::ALL.len());
    }

    #[test]
    fn counters_keep_their_total_suffix_once_and_gauges_their_name() {
        let text = render(&[
            Metric::counter("sealdb_test_things_total", "Things.", 3.0),
            Metric::gauge("sealdb_test_level", "Level.", 1.5),
        ]);
        assert!(text.contains("# TYPE sealdb_test_things counter\n"), "{text}");
        assert!(text.contains("sealdb_test_things_total 3.0\n"), "{text}");
        assert!(text.contains("sealdb_test_level 1.5\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
