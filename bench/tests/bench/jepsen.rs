//! The fault suite's short schedule, as `./dev test` runs it: 3 sequencers and 3 shards of 2
//! replicas (`bench node` processes), list-append and bank clients, and a fault every 3-5 s
//! (kill -9 of any node or of the group's leader, SIGSTOP, a restart under libfaketime with
//! the clock off by up to twice `max_offset`). Every checker must pass: `adya` strict
//! serializability, acknowledged appends present once, the bank's total, equal replica
//! digests, a commit after healing.

use std::time::Duration;

use bench::jepsen::{JepsenOptions, Nemesis, run};

#[test]
fn a_short_fault_schedule_passes_every_checker() {
    let seed: u64 = std::env::var("SEALDB_SEED").map_or(23, |s| s.parse().unwrap());
    eprintln!("jepsen schedule seed {seed} (rerun with SEALDB_SEED={seed})");
    let dir = tempfile::tempdir().unwrap();
    let opts = JepsenOptions {
        time: Duration::from_secs(45),
        nemeses: vec![Nemesis::Kill, Nemesis::KillLeader, Nemesis::Pause, Nemesis::Clock],
        interval: (Duration::from_secs(3), Duration::from_secs(5)),
        fault: (Duration::from_secs(2), Duration::from_secs(3)),
        seed,
        max_offset_ms: 50,
        command: Some(vec![env!("CARGO_BIN_EXE_bench").into(), "node".into()]),
        dir: Some(dir.path().to_path_buf()),
    };
    let report = run(&opts).unwrap();
    assert!(report.faults.len() >= 5, "seed {seed}: only {} faults", report.faults.len());
    let ok = report.totals.get("list-append.ok").copied().unwrap_or(0);
    assert!(ok > 50, "seed {seed}: only {ok} list-append commits: {:?}", report.totals);
    assert!(report.valid, "seed {seed}: {:#?}", report.checks);
    // The report is written: JSON with the checks, a page with the plots.
    let json = std::fs::read_to_string(dir.path().join("report.json")).unwrap();
    assert!(json.contains("\"valid\": true") || json.contains("\"valid\":true"), "{json}");
    let page = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(page.contains("<svg") && page.contains("valid"), "{page}");
}
