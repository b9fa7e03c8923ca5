//! The history checker can fail: on the reference histories (`tests/histories/`, a copy of the
//! project's `shared/histories/`) it
//! gives the verdicts Jepsen's own checker gave (listed in `expected.tsv`), and it finds the
//! anomalies in the hand-written ones. The same `history::check` path checks sealdb's own
//! histories, so a pass there means something.

use std::path::PathBuf;

use tests::history::{Completion, Mop, Recorder, Workload, check};

fn shared_histories() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("histories")
}

#[test]
fn the_checker_agrees_with_every_expected_verdict_on_the_reference_histories() {
    let dir = shared_histories();
    let expected = std::fs::read_to_string(dir.join("expected.tsv")).unwrap();
    let mut checked = 0;
    let mut invalid = 0;
    for line in expected.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [file, model, verdict] = fields[..] else { panic!("bad line in expected.tsv: {line}") };
        let workload = if file.starts_with("list-append") {
            Workload::ListAppend
        } else {
            Workload::RwRegister
        };
        let text = std::fs::read_to_string(dir.join("sim-histories").join(file)).unwrap();
        let got = check(&text, workload, model).unwrap();
        let want = verdict == "valid";
        assert_eq!(got.valid, Some(want), "{file} under {model}: expected {verdict}, got {got:?}");
        checked += 1;
        invalid += usize::from(!want);
    }
    assert_eq!(checked, 90);
    assert!(invalid > 30, "the reference set must contain anomalies to find");
}

fn hand(name: &str) -> String {
    std::fs::read_to_string(shared_histories().join("hand-histories").join(name)).unwrap()
}

#[test]
fn the_checker_finds_the_hand_written_anomalies() {
    let la = Workload::ListAppend;
    assert_eq!(check(&hand("la-valid.edn"), la, "strict-serializable").unwrap().valid, Some(true));
    let g2 = check(&hand("la-g2.edn"), la, "serializable").unwrap();
    assert_eq!(g2.valid, Some(false));
    assert!(g2.anomalies.iter().any(|a| a.starts_with("G2")), "{g2:?}");
    assert_eq!(check(&hand("la-g2.edn"), la, "snapshot-isolation").unwrap().valid, Some(true));
    assert_eq!(check(&hand("la-lost.edn"), la, "snapshot-isolation").unwrap().valid, Some(false));
    let rw = Workload::RwRegister;
    assert_eq!(check(&hand("rw-lost.edn"), rw, "snapshot-isolation").unwrap().valid, Some(false));
    let stale = check(&hand("la-nemesis.jsonl"), la, "strict-serializable").unwrap();
    assert_eq!(stale.valid, Some(false), "{stale:?}");
    assert!(stale.anomalies.iter().any(|a| a.contains("realtime")), "{stale:?}");
}

/// Client 0 appends 10 to key 1, then client 1 reads it and appends 11, then client 0
/// reads key 1 and sees `last_read`: each transaction starts after the previous one ended.
fn sequential_history(last_read: Vec<u64>) -> String {
    let h = Recorder::new();
    h.invoke(0, &[Mop::Append(1, 10)]);
    h.complete(0, Completion::Ok, &[Mop::Append(1, 10)]);
    h.invoke(1, &[Mop::Read(1, None), Mop::Append(1, 11)]);
    h.complete(1, Completion::Ok, &[Mop::Read(1, Some(vec![10])), Mop::Append(1, 11)]);
    h.invoke(0, &[Mop::Read(1, None)]);
    h.complete(0, Completion::Ok, &[Mop::Read(1, Some(last_read))]);
    h.to_jsonl()
}

#[test]
fn a_recorded_history_passes_when_serial_and_fails_when_an_append_is_lost() {
    let good =
        check(&sequential_history(vec![10, 11]), Workload::ListAppend, "strict-serializable");
    assert_eq!(good.as_ref().unwrap().valid, Some(true), "{good:?}");
    // The last read misses the first append although it finished before.
    let bad = check(&sequential_history(vec![11]), Workload::ListAppend, "strict-serializable");
    assert_eq!(bad.as_ref().unwrap().valid, Some(false), "{bad:?}");
}
