//! Latency summaries and report output shared by the workloads.

use std::path::Path;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: `saturating_record` does not grow an auto-resizing histogram, so every
    /// latency was clamped to 2 ns and every percentile printed as 0.00 ms.
    #[test]
    fn percentiles_of_merged_clients_match_the_samples_to_a_tenth_of_a_percent() {
        let (mut a, mut b) = (Latencies::default(), Latencies::default());
        for us in 1..=1000u64 {
            let client = if us % 2 == 0 { &mut a } else { &mut b };
            client.record(Duration::from_micros(us));
        }
        a.merge(&b);
        assert_eq!(a.count(), 1000);
        let l = a.summary();
        for (got, want) in [(l.p50_ms, 0.5), (l.p95_ms, 0.95), (l.p99_ms, 0.99)] {
            assert!((got - want).abs() <= want * 0.001, "{l:?}");
        }
        assert_eq!(Latencies::default().summary().p99_ms, 0.0);
    }
}
