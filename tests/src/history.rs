//! Jepsen-format histories for the list-append workload, and checking them with `adya`.
//!
//! Each client process records, for every transaction, an `invoke` before sending it and
//! then exactly one completion: `ok` with the values it read, `fail` when the database says it
//! certainly did not commit, or `info` when the outcome is unknown (the checker then considers
//! both possibilities). Operations are micro-ops on integer keys:
//!
//! ```text
//!   {"index":0,"type":"invoke","process":3,"time":120,"value":[["r",7,null],["append",7,12]]}
//!   {"index":1,"type":"ok","process":3,"time":951,"value":[["r",7,[4,9]],["append",7,12]]}
//! ```
//!
//! The order of lines is real time: a completion recorded before an invocation happened
//! before it, which is what lets the checker test strict serializability.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::{Value, json};

/// One micro-operation of a list-append transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mop {
    /// Read a key's list: `None` when invoked, the list seen when completed.
    Read(u64, Option<Vec<u64>>),
    /// Append a value (unique per key) to a key's list.
    Append(u64, u64),
}

/// How a transaction ended, from the client's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Committed.
    Ok,
    /// Certainly not committed.
    Fail,
    /// Unknown: it may or may not have committed.
    Info,
}

/// A history being recorded by concurrent clients.
#[derive(Debug)]
pub struct Recorder {
    clock: Time,
    lines: Mutex<Vec<String>>,
}

/// Where a history's times come from.
#[derive(Debug)]
enum Time {
    /// Nanoseconds since the recorder was made.
    Real(Instant),
    /// Nanoseconds as a simulation last set them.
    Simulated(AtomicU64),
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty history; times count from now.
    pub fn new() -> Recorder {
        Recorder { clock: Time::Real(Instant::now()), lines: Mutex::new(Vec::new()) }
    }

    /// An empty history whose times a simulation sets ([`Recorder::set_time`]): the same seed
    /// records the same history, byte for byte.
    pub fn simulated() -> Recorder {
        Recorder { clock: Time::Simulated(AtomicU64::new(0)), lines: Mutex::new(Vec::new()) }
    }

    /// Sets a simulated recorder's time, in nanoseconds (it must not go back).
    pub fn set_time(&self, nanos: u64) {
        if let Time::Simulated(t) = &self.clock {
            t.fetch_max(nanos, Ordering::Relaxed);
        }
    }

    fn now(&self) -> u64 {
        match &self.clock {
            Time::Real(start) => start.elapsed().as_nanos() as u64,
            Time::Simulated(t) => t.load(Ordering::Relaxed),
        }
    }

    /// Records that `process` is about to run `txn` (reads carry no values yet).
    pub fn invoke(&self, process: u64, txn: &[Mop]) {
        self.push("invoke", process, txn);
    }

    /// Records how `process`'s transaction ended; `txn` carries the values read for `Ok`.
    pub fn complete(&self, process: u64, completion: Completion, txn: &[Mop]) {
        let kind = match completion {
            Completion::Ok => "ok",
            Completion::Fail => "fail",
            Completion::Info => "info",
        };
        self.push(kind, process, txn);
    }

    fn push(&self, kind: &str, process: u64, txn: &[Mop]) {
        let value: Vec<Value> = txn
            .iter()
            .map(|m| match m {
                Mop::Read(k, v) => json!(["r", k, v]),
                Mop::Append(k, v) => json!(["append", k, v]),
            })
            .collect();
        // Index and time are taken under the lock, so line order is real-time order.
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let line = json!({
            "index": lines.len(),
            "type": kind,
            "f": "txn",
            "process": process,
            "time": self.now(),
            "value": value,
        });
        lines.push(line.to_string());
    }

    /// The history as JSON lines.
    pub fn to_jsonl(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.join("\n") + "\n"
    }
}

/// The workloads the checker knows.
pub use adya::Workload;

/// Checks a history (JSON lines or EDN) against `model` (for example "strict-serializable").
/// Returns whether it is valid, and the anomaly types found. A history that does not parse is
/// an error.
pub fn check(text: &str, workload: Workload, model: &str) -> Result<Verdict, String> {
    let history = adya::History::parse(text).map_err(|e| e.to_string())?;
    let opts = adya::Opts { models: vec![model.to_string()], ..adya::Opts::default() };
    let report = adya::check(&history, workload, &opts);
    let valid = match report.valid {
        adya::Valid::True => Some(true),
        adya::Valid::False => Some(false),
        adya::Valid::Unknown => None,
    };
    Ok(Verdict { valid, anomalies: report.anomaly_types })
}

/// What the checker concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `Some(true)` valid, `Some(false)` anomalies found, `None` the checker could not decide.
    pub valid: Option<bool>,
    /// The anomaly types found.
    pub anomalies: Vec<String>,
}
