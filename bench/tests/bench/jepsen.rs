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

/// Partitions (of any node, the group's leader half the time) need a network namespace of their own (iptables rules must not touch the
/// machine's): the suite runs as `./dev jepsen` runs it, under `unshare -n`, as root.
#[test]
fn partitions_pass_every_checker_in_a_network_namespace() {
    // The rules go into the namespace `unshare -n` makes, never the machine's.
    let root = std::process::Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&root.stdout).trim() != "0" {
        eprintln!("SKIPPED: partitions need root (for a network namespace and iptables)");
        return;
    }
    let seed: u64 = std::env::var("SEALDB_SEED").map_or(29, |s| s.parse().unwrap());
    eprintln!("jepsen partition schedule seed {seed} (rerun with SEALDB_SEED={seed})");
    let dir = tempfile::tempdir().unwrap();
    let run = std::process::Command::new("unshare")
        .args(["-n", "sh", "-c", "ip link set lo up && SEALDB_NETNS=1 exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_bench"))
        .args(["jepsen", "--time", "40", "--nemesis", "partition"])
        .args(["--interval", "3-5", "--fault", "2-4", "--seed", &seed.to_string()])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "seed {seed}: {said}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["valid"], true, "seed {seed}: {said}");
    let faults = report["faults"].as_array().unwrap();
    let cut = faults.iter().filter(|f| f["kind"] == "partition").count();
    assert!(cut >= 4, "seed {seed}: {cut} partitions in {faults:?}");
}
