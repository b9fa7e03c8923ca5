//! The latency summaries every workload reports: merged per-client histograms, and the one
//! `bench micro`'s client tasks share.

use std::time::Duration;

use bench::report::{Latencies, SharedLatencies};

/// Recorders buffer, and everything they recorded reaches the shared histogram: full
/// buffers as they fill, the rest when each recorder is dropped.
#[test]
fn shared_latencies_keep_every_recorded_latency() {
    let shared = SharedLatencies::default();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let mut recorder = shared.recorder();
            std::thread::spawn(move || {
                // 100 each: one full buffer, and 36 left for the drop.
                for i in 1..=100 {
                    recorder.record(Duration::from_micros(t * 1000 + i));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let all = shared.take();
    assert_eq!(all.count(), 400);
    // The 200th of 400: thread 1's last, 1.1 ms.
    let median = all.summary().p50_ms;
    assert!((1.09..1.11).contains(&median), "{median}");
    assert_eq!(shared.take().count(), 0, "taken once");
}

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
