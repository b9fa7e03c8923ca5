//! `bench retention`, short: GC under list-append with a 2 s retention for 8 s. Snapshots are
//! held until the horizon passes them, so some reads are refused; every answered one matches
//! the model, and `adya` finds the history strictly serializable.

use std::time::Duration;

use bench::retention::{Options, run};

#[test]
fn gc_under_list_append_refuses_old_snapshots_and_answers_the_rest_as_the_model_does() {
    let seed: u64 = std::env::var("SEALDB_SEED").map_or(5, |s| s.parse().unwrap());
    eprintln!("retention test seed {seed} (rerun with SEALDB_SEED={seed})");
    let report = run(&Options {
        duration: Duration::from_secs(8),
        retention: Duration::from_secs(2),
        clients: 4,
        keys: 200,
        think: Duration::from_millis(2),
        seed,
        dir: None,
    })
    .unwrap();
    assert!(report.consistent, "seed {seed}: {:?}", report.failures);
    assert!(report.adya_valid);
    assert!(report.committed > 1000, "{report:?}");
    assert!(report.answered > 100, "{report:?}");
    assert!(report.refused > 0, "no snapshot was held past the horizon: {report:?}");
    assert!(report.compactions > 0, "{report:?}");
}
