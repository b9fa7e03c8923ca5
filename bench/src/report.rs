//! Latency summaries and report output shared by the workloads.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies a client recorded, in an HDR histogram (nanoseconds, 3 significant digits): a
/// run of any length keeps a few kilobytes per client, and merged histograms give the same
/// percentiles as merged samples would, to 0.1%.
#[derive(Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Latencies {
        Latencies(Histogram::new(3).expect("3 significant digits are supported"))
    }
}

impl Latencies {
    /// Records one latency.
    pub fn record(&mut self, d: Duration) {
        let nanos = d.as_nanos().min(u128::from(u64::MAX)) as u64;
        // `record` grows the histogram's range as needed; only a value no range can hold
        // (beyond about 2^63 ns) is clamped.
        if self.0.record(nanos).is_err() {
            self.0.saturating_record(nanos);
        }
    }

    /// Adds another client's latencies.
    pub fn merge(&mut self, other: &Latencies) {
        // Auto-resizing histograms of the same precision always add.
        self.0.add(&other.0).expect("histograms of the same precision");
    }

    /// How many were recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// Their percentiles. Zero everywhere for none.
    pub fn summary(&self) -> Latency {
        let at = |q: f64| match self.0.is_empty() {
            true => 0.0,
            false => self.0.value_at_quantile(q) as f64 / 1e6,
        };
        Latency { p50_ms: at(0.50), p95_ms: at(0.95), p99_ms: at(0.99) }
    }
}

/// Latencies many clients record into one histogram ([`SharedLatencies::recorder`]): each
/// client keeps its last few in a buffer of its own and adds them under the lock once it is
/// full. A histogram per client is about 140 KB at 3 significant digits; at `bench micro`'s
/// 2,048 clients that was 280 MB written at random, a miss in the machine's caches per call:
/// 3-4% of the machine in a profile, and a quarter of the embedded database's throughput
/// (README, "Libraries for solved problems").
#[derive(Clone, Default)]
pub struct SharedLatencies {
    all: Arc<Mutex<Latencies>>,
    /// Latencies recorded, buffered ones included (for progress lines).
    recorded: Arc<AtomicU64>,
}

/// One client's buffer in front of [`SharedLatencies`]; what it holds is added when it is
/// dropped, so a client that stops early loses nothing it recorded.
pub struct Recorder {
    shared: SharedLatencies,
    pending: Vec<Duration>,
}

impl SharedLatencies {
    /// Latencies a client's recorder buffers before it takes the lock.
    const BUFFER: usize = 64;

    /// A buffer for one client.
    pub fn recorder(&self) -> Recorder {
        Recorder { shared: self.clone(), pending: Vec::with_capacity(Self::BUFFER) }
    }

    /// Everything recorded so far, by recorders since dropped or flushed.
    pub fn take(&self) -> Latencies {
        std::mem::take(&mut *self.all.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// How many latencies recorders have recorded so far, buffered or not.
    pub fn recorded(&self) -> u64 {
        self.recorded.load(Ordering::Relaxed)
    }
}

impl Recorder {
    /// Records one latency.
    pub fn record(&mut self, d: Duration) {
        self.pending.push(d);
        self.shared.recorded.fetch_add(1, Ordering::Relaxed);
        if self.pending.len() >= SharedLatencies::BUFFER {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let mut all = self.shared.all.lock().unwrap_or_else(|e| e.into_inner());
        for d in self.pending.drain(..) {
            all.record(d);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

/// Writes `report` as pretty JSON to `path`.
pub fn write_json(path: &Path, report: &impl Serialize) -> std::io::Result<()> {
    let json = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(path, json + "\n")
}
