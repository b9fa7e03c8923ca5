//! `bench jepsen` (`./dev jepsen`): faults injected into a cluster of real processes under
//! load, and the history checked afterwards, in the manner of Jepsen.
//!
//! The cluster: a sequencer group of three and three shards of two replicas each (`bench
//! node` processes on 127.0.0.1, nine in all). The clients, through [`client::Client`]:
//!
//! - list-append: transactions of reads and appends over a few keys (the `list_append`
//!   procedure), recorded as a Jepsen history;
//! - bank: transfers of one unit between accounts (the `transfer` procedure), and audits that
//!   read every account in one snapshot: the total is always 0.
//!
//! The nemesis, one fault at a time (so a majority of the group and a replica of every shard
//! always live), every `interval`, each lasting `fault`:
//!
//! - `kill`: SIGKILL of a node (the group's leader half of the time), restarted afterwards;
//! - `kill-leader`: SIGKILL of the group's leader, restarted afterwards; each failover's
//!   unavailability (from the kill until a call invoked after it commits) is reported;
//! - `pause`: SIGSTOP of a node, SIGCONT afterwards;
//! - `clock`: a node restarted under libfaketime with its clock off by 0.5, 1 or 2 times
//!   `max_offset` (ahead or behind), then restarted with the true clock. Within the bound
//!   nothing may go wrong; beyond it, messages are refused and nothing may go wrong either.
//! - `partition`: a node cut off from all others and from the clients, then reconnected. Each
//!   node runs as its own user, and iptables drops what that user sends and what anyone else
//!   sends to its port (packets vanish: connections hang, as across a real partition). This
//!   needs root and a private network namespace: `./dev jepsen` runs the suite under
//!   `unshare -n` and sets `SEALDB_NETNS=1`; without it the nemesis is refused.
//!
//! Then it heals, and checks: the list-append history is strictly serializable (`adya`);
//! every acknowledged append is in its list exactly once; every audit and the final state of
//! the bank total 0; every shard's replicas reach the same window with the same digest; and a
//! call commits after healing. It writes `report.json`, `history.jsonl` and `report.html`
//! (throughput and latency per second, fault windows shaded).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::Client;
use clock::Clock;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tests::history::{Completion, Mop, Recorder, Workload, check};
use txn::builtin::{ListOp, decode_list, decode_list_output, encode_list_ops, list_key};
use txn::{ReadAt, TxnError};

use crate::micro::{args, key, num};

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Nemesis {
    /// SIGKILL, then restart.
    Kill,
    /// SIGKILL of the sequencer group's leader, then restart; the time until a call invoked
    /// after the kill commits is the failover's unavailability.
    #[serde(rename = "kill-leader")]
    KillLeader,
    /// SIGSTOP, then SIGCONT.
    Pause,
    /// A restart under libfaketime with the clock off, then one with the true clock.
    Clock,
    /// A node cut off from every other node and the clients (iptables in a private network
    /// namespace), then reconnected.
    Partition,
}

impl Nemesis {
    /// Parses a comma-separated list (`kill,pause,clock`).
    pub fn parse_list(list: &str) -> Result<Vec<Nemesis>, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| match s {
                "kill" => Ok(Nemesis::Kill),
                "kill-leader" => Ok(Nemesis::KillLeader),
                "pause" => Ok(Nemesis::Pause),
                "clock" => Ok(Nemesis::Clock),
                "partition" => Ok(Nemesis::Partition),
                other => Err(format!(
                    "unknown nemesis {other:?}: kill, kill-leader, pause, clock or partition"
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .and_then(|v| if v.is_empty() { Err("no nemesis given".into()) } else { Ok(v) })
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct JepsenOptions {
    /// How long the clients run, faults included.
    pub time: Duration,
    /// The faults to draw from.
    pub nemeses: Vec<Nemesis>,
    /// The pause between faults, drawn from this range.
    pub interval: (Duration, Duration),
    /// How long a fault lasts, drawn from this range.
    pub fault: (Duration, Duration),
    /// The seed of the schedule and the clients.
    pub seed: u64,
    /// The nodes' bound on clock offsets (commit-wait lasts about this long).
    pub max_offset_ms: u64,
    /// The program and arguments that run a node before `--config FILE` (default: this
    /// program's `node`).
    pub command: Option<Vec<String>>,
    /// Where the nodes' data and logs, and the report, go (default: a temporary directory
    /// for the nodes, no report files).
    pub dir: Option<PathBuf>,
}

/// A fault as it happened, in seconds from the start.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// Which kind.
    pub kind: Nemesis,
    /// The node.
    pub node: String,
    /// When it began and ended.
    pub start_s: f64,
    /// When it ended.
    pub end_s: f64,
    /// More about it (the clock offset).
    pub detail: String,
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    /// Seconds from the start.
    pub t: u64,
    /// Calls committed, ended unknown, and failed (certainly not applied) in it.
    pub ok: u64,
    /// Ended unknown.
    pub info: u64,
    /// Failed.
    pub fail: u64,
    /// Latency of the committed calls, median and 99th percentile, in ms.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

/// One checker's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What it checks.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What it found.
    pub detail: String,
}

/// What a run did and found.
#[derive(Debug, Clone, Serialize)]
pub struct JepsenReport {
    /// The seed.
    pub seed: u64,
    /// How long the clients ran.
    pub time_s: f64,
    /// The faults drawn from.
    pub nemeses: Vec<Nemesis>,
    /// The faults injected.
    pub faults: Vec<Fault>,
    /// Throughput and latency per second.
    pub timeline: Vec<Second>,
    /// For each kill of the group's leader: ms from the kill until a call invoked after it
    /// committed.
    pub failovers_ms: Vec<f64>,
    /// Calls by how they ended, per workload.
    pub totals: BTreeMap<String, u64>,
    /// The checkers' verdicts.
    pub checks: Vec<Check>,
    /// Whether every check passed.
    pub valid: bool,
}

/// Keys of the list-append workload, and bank accounts.
const KEYS: u64 = 8;
const ACCOUNTS: u64 = 12;
/// Clients of each workload.
const APPENDERS: u64 = 4;
const TRANSFERS: u64 = 2;
/// A copy of `program` in `dir`, and `dir` itself, that every user may read and run.
fn shared_copy(program: &str, dir: &std::path::Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let open = |p: &std::path::Path| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    std::fs::create_dir_all(dir.join("nodes")).map_err(|e| format!("{}: {e}", dir.display()))?;
    open(dir)?;
    open(&dir.join("nodes"))?;
    let copy = dir.join("sealdb-node");
    std::fs::copy(program, &copy).map_err(|e| format!("copying {program}: {e}"))?;
    open(&copy)?;
    Ok(copy.display().to_string())
}

/// The partition nemesis runs node `i` as user `PARTITION_UIDS + i`.
const PARTITION_UIDS: u32 = 20_000;

/// Runs `iptables` with `args` (in the suite's own network namespace).
fn iptables(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("iptables")
        .args(args)
        .output()
        .map_err(|e| format!("iptables: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!("iptables {args:?}: {}", String::from_utf8_lossy(&out.stderr))),
    }
}

/// The iptables rules that cut node `uid` listening on `port` off: what it sends, and what
/// anyone else sends to it.
fn isolation(uid: &str, port: &str) -> [Vec<String>; 2] {
    let rule = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    [
        rule(&["OUTPUT", "-m", "owner", "--uid-owner", uid, "-j", "DROP"]),
        rule(&[
            "OUTPUT",
            "-p",
            "tcp",
            "--dport",
            port,
            "-m",
            "owner",
            "!",
            "--uid-owner",
            uid,
            "-j",
            "DROP",
        ]),
    ]
}

/// Adds (`-A`) or deletes (`-D`) the rules.
fn apply_rules(action: &str, rules: &[Vec<String>]) -> Result<(), String> {
    for rule in rules {
        let mut args = vec![action];
        args.extend(rule.iter().map(String::as_str));
        iptables(&args)?;
    }
    Ok(())
}

/// How long a client keeps trying to reach the cluster before a call ends unknown.
const PATIENCE: Duration = Duration::from_secs(10);

/// The last `lines` lines of each node's log, under its name.
fn log_tails(local: &node::LocalProcesses, lines: usize) -> String {
    let mut tails = String::new();
    for i in 0..local.len() {
        let log = std::fs::read_to_string(local.config(i).with_extension("log"))
            .unwrap_or_else(|e| format!("(no log: {e})"));
        let last: Vec<&str> = log.lines().rev().take(lines).collect();
        tails += &format!("--- {}\n", node_name(local, i));
        for line in last.into_iter().rev() {
            tails += &format!("{line}\n");
        }
    }
    tails
}

/// The process names of the nodes, by index.
fn node_name(local: &node::LocalProcesses, i: usize) -> String {
    if i < local.sequencers {
        format!("sequencer-{}", i + 1)
    } else {
        let r = i - local.sequencers;
        format!("shard-{}-replica-{}", r / local.replicas, r % local.replicas)
    }
}

/// libfaketime's multi-threaded library, if installed (`./dev setup` installs it).
fn faketime_library() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("SEALDB_FAKETIME_LIB") {
        return Some(PathBuf::from(path));
    }
    [
        "/usr/lib/x86_64-linux-gnu/faketime",
        "/usr/lib/aarch64-linux-gnu/faketime",
        "/usr/lib/faketime",
    ]
    .iter()
    .map(|d| PathBuf::from(d).join("libfaketimeMT.so.1"))
    .find(|p| p.exists())
}

/// What every client records: when each call ended, how long it took, how.
#[derive(Default)]
struct Calls {
    done: Mutex<Vec<(Duration, Duration, Completion)>>,
    totals: Mutex<BTreeMap<String, u64>>,
}

impl Calls {
    fn record(&self, started: Instant, origin: Instant, how: Completion, workload: &str) {
        let now = Instant::now();
        self.done.lock().unwrap().push((now - origin, now - started, how));
        let name = match how {
            Completion::Ok => "ok",
            Completion::Info => "info",
            Completion::Fail => "fail",
        };
        *self.totals.lock().unwrap().entry(format!("{workload}.{name}")).or_default() += 1;
    }
}

/// Runs the suite, printing progress to stderr.
pub fn run(opts: &JepsenOptions) -> Result<JepsenReport, String> {
    let partitions = opts.nemeses.contains(&Nemesis::Partition);
    if partitions && std::env::var("SEALDB_NETNS").as_deref() != Ok("1") {
        return Err("the partition nemesis changes iptables rules: it runs only in a private \
                    network namespace, as root (./dev jepsen runs it under `unshare -n` and \
                    sets SEALDB_NETNS=1)"
            .into());
    }
    if partitions && iptables(&["-L", "OUTPUT", "-n"]).is_err() {
        return Err("the partition nemesis needs iptables: ./dev setup installs it".into());
    }
    if opts.nemeses.contains(&Nemesis::Clock) && faketime_library().is_none() {
        return Err("the clock nemesis needs libfaketime: ./dev setup installs it (Debian's \
                    faketime), or set SEALDB_FAKETIME_LIB"
            .into());
    }
    let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = opts.dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let mut command = match &opts.command {
        Some(c) => c.clone(),
        None => {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            vec![exe.display().to_string(), "node".into()]
        }
    };
    if partitions {
        // Nodes run as users of their own: they need the program and their directories
        // reachable (the build directory may be under a private home).
        command[0] = shared_copy(&command[0], &dir)?;
    }
    let spec = node::LocalSpec {
        sequencers: 3,
        command,
        dir: dir.join("nodes"),
        shards: 3,
        replicas: 2,
        port: None,
        max_offset_ms: opts.max_offset_ms,
        window_ms: 5,
        split_keys: Vec::new(),
        group_timing: None,
        // Each node its own user, for iptables to tell their traffic apart.
        run_as: partitions.then_some(PARTITION_UIDS),
        tls_dir: None,
        reclamation: None,
        storage_mib: None,
        worker_threads: None,
    };
    let local = node::LocalProcesses::spawn(&spec).map_err(|e| e.to_string())?;
    eprintln!(
        "jepsen: seed {}, {} s, nemeses {:?}; {} nodes in {}",
        opts.seed,
        opts.time.as_secs(),
        opts.nemeses,
        local.len(),
        spec.dir.display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let report = runtime.block_on(drive(opts, local))?;
    if let Some(dir) = &opts.dir {
        crate::report::write_json(&dir.join("report.json"), &report).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("report.html"), html(&report)).map_err(|e| e.to_string())?;
        eprintln!("jepsen: report in {}", dir.join("report.html").display());
    }
    Ok(report)
}

async fn drive(
    opts: &JepsenOptions,
    mut local: node::LocalProcesses,
) -> Result<JepsenReport, String> {
    let clock = Arc::new(Clock::system(Duration::from_millis(opts.max_offset_ms)));
    let ready = crate::connect_when_ready(&local.sequencer, clock.clone(), None).await;
    // A cluster that never came up: what its nodes said, before their directory goes.
    let (client, _) = ready.map_err(|e| format!("{e}\n{}", log_tails(&local, 5)))?;
    let client = Arc::new(client.with_patience(PATIENCE));
    let history = Arc::new(Recorder::new());
    let calls = Arc::new(Calls::default());
    let stop = Arc::new(AtomicBool::new(false));
    let origin = Instant::now();
    let audits = Arc::new(Mutex::new(Vec::<i64>::new()));
    let mut workers = Vec::new();
    let next_value = Arc::new(AtomicU64::new(1));
    for w in 0..APPENDERS {
        let (client, history, calls, stop, next_value) =
            (client.clone(), history.clone(), calls.clone(), stop.clone(), next_value.clone());
        let seed = opts.seed;
        workers.push(tokio::spawn(async move {
            append_loop(w, seed, client, history, calls, stop, next_value, origin).await
        }));
    }
    for w in 0..TRANSFERS {
        let (client, calls, stop) = (client.clone(), calls.clone(), stop.clone());
        let mut rng = StdRng::seed_from_u64(opts.seed.wrapping_mul(7_919) + w);
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let from = rng.random_range(0..ACCOUNTS);
                let to = (from + rng.random_range(1..ACCOUNTS)) % ACCOUNTS;
                let started = Instant::now();
                let how = match client.call("transfer", &args(&[from, to])).await {
                    Ok(_) => Completion::Ok,
                    Err(TxnError::OutcomeUnknown) => Completion::Info,
                    Err(_) => Completion::Fail,
                };
                calls.record(started, origin, how, "bank");
                if how != Completion::Ok {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    {
        let (client, stop, audits) = (client.clone(), stop.clone(), audits.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(total) = bank_total(&client).await {
                    audits.lock().unwrap().push(total);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }

    let faults = nemesis(opts, &mut local, &clock, origin).await?;
    let time_s = origin.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.map_err(|e| format!("a client failed: {e}"))?;
    }
    eprintln!("jepsen: healed; checking");

    let mut checks = Vec::new();
    let after = client.call("kv.put", &txn::builtin::put_args(b"jepsen/after", b"healed")).await;
    checks.push(Check {
        name: "available after healing".into(),
        ok: after.is_ok(),
        detail: format!("{after:?}"),
    });
    checks.push(list_append_checks(&client, &history).await);
    checks.push(exactly_once(&client, &history).await);
    let audits = audits.lock().unwrap().clone();
    let bad: Vec<i64> = audits.iter().copied().filter(|t| *t != 0).collect();
    let last = bank_total(&client).await;
    checks.push(Check {
        name: "bank total constant (0)".into(),
        ok: bad.is_empty() && last == Ok(0) && !audits.is_empty(),
        detail: format!("{} audits, {} off; final total {last:?}", audits.len(), bad.len()),
    });
    let converged =
        client::replicas_converged(&local.sequencer, &clock, None, Duration::from_secs(60)).await;
    checks.push(Check {
        name: "replicas agree (digests)".into(),
        ok: converged.is_ok(),
        detail: match converged {
            Ok(shards) => {
                format!("{} shards, each replica at the same window and digest", shards.len())
            }
            Err(e) => e,
        },
    });
    if let Some(dir) = &opts.dir {
        std::fs::write(dir.join("history.jsonl"), history.to_jsonl()).map_err(|e| e.to_string())?;
    }
    local.stop();
    let done = calls.done.lock().unwrap().clone();
    let timeline = timeline(&done);
    let leader_kills = faults.iter().filter(|f| {
        matches!(f.kind, Nemesis::Kill | Nemesis::KillLeader) && f.detail.contains("leader")
    });
    let failovers_ms: Vec<f64> = leader_kills
        .filter_map(|f| {
            let killed = Duration::from_secs_f64(f.start_s);
            done.iter()
                .filter(|(at, took, how)| {
                    *how == Completion::Ok && at.saturating_sub(*took) >= killed
                })
                .map(|(at, ..)| (*at - killed).as_secs_f64() * 1000.0)
                .min_by(f64::total_cmp)
        })
        .collect();
    if !failovers_ms.is_empty() {
        let mut sorted = failovers_ms.clone();
        sorted.sort_by(f64::total_cmp);
        eprintln!(
            "jepsen: {} leader failovers, median {:.0} ms, max {:.0} ms",
            sorted.len(),
            sorted[sorted.len() / 2],
            sorted[sorted.len() - 1]
        );
    }
    let totals = calls.totals.lock().unwrap().clone();
    let valid = checks.iter().all(|c| c.ok);
    for c in &checks {
        eprintln!("  {} {}: {}", if c.ok { "ok  " } else { "FAIL" }, c.name, c.detail);
    }
    Ok(JepsenReport {
        seed: opts.seed,
        time_s,
        nemeses: opts.nemeses.clone(),
        faults,
        timeline,
        failovers_ms,
        totals,
        checks,
        valid,
    })
}

/// One list-append client: transactions until stopped; after an unknown outcome it goes on
/// as a new process (Jepsen's rule: an `info` ends its process).
#[allow(clippy::too_many_arguments)]
async fn append_loop(
    w: u64,
    seed: u64,
    client: Arc<Client>,
    history: Arc<Recorder>,
    calls: Arc<Calls>,
    stop: Arc<AtomicBool>,
    next_value: Arc<AtomicU64>,
    origin: Instant,
) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000) + w);
    let mut process = w;
    while !stop.load(Ordering::SeqCst) {
        let ops: Vec<Mop> = (0..rng.random_range(1..5))
            .map(|_| {
                let k = rng.random_range(0..KEYS);
                match rng.random_bool(0.5) {
                    true => Mop::Read(k, None),
                    false => Mop::Append(k, next_value.fetch_add(1, Ordering::SeqCst)),
                }
            })
            .collect();
        let list_ops: Vec<ListOp> = ops
            .iter()
            .map(|m| match m {
                Mop::Read(k, _) => ListOp::Read(*k),
                Mop::Append(k, v) => ListOp::Append(*k, *v),
            })
            .collect();
        history.invoke(process, &ops);
        let started = Instant::now();
        match client.call("list_append", &encode_list_ops(&list_ops)).await {
            Ok(output) => {
                let Ok(lists) = decode_list_output(&output) else {
                    history.complete(process, Completion::Info, &ops);
                    calls.record(started, origin, Completion::Info, "list-append");
                    process += APPENDERS;
                    continue;
                };
                let mut reads = lists.into_iter();
                let done: Vec<Mop> = ops
                    .iter()
                    .map(|m| match m {
                        Mop::Read(k, _) => Mop::Read(*k, reads.next()),
                        other => other.clone(),
                    })
                    .collect();
                history.complete(process, Completion::Ok, &done);
                calls.record(started, origin, Completion::Ok, "list-append");
            }
            Err(TxnError::OutcomeUnknown) => {
                history.complete(process, Completion::Info, &ops);
                calls.record(started, origin, Completion::Info, "list-append");
                process += APPENDERS;
            }
            Err(_) => {
                // Refused or unreachable before anything was logged: certainly not applied.
                history.complete(process, Completion::Fail, &ops);
                calls.record(started, origin, Completion::Fail, "list-append");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The sum of every account, read in one snapshot.
async fn bank_total(client: &Client) -> Result<i64, String> {
    let keys: Vec<Vec<u8>> = (0..ACCOUNTS).map(key).collect();
    let ts = client.read_ts(ReadAt::Latest);
    let values = client.get_many(&keys, ts).await.map_err(|e| e.to_string())?;
    Ok(values.into_iter().map(num).sum())
}

/// The faults, one at a time, until the run's time is up; then everything healed.
async fn nemesis(
    opts: &JepsenOptions,
    local: &mut node::LocalProcesses,
    clock: &Arc<Clock>,
    origin: Instant,
) -> Result<Vec<Fault>, String> {
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut faults = Vec::new();
    let between = |rng: &mut StdRng, (lo, hi): (Duration, Duration)| {
        Duration::from_millis(rng.random_range(lo.as_millis() as u64..=hi.as_millis() as u64))
    };
    loop {
        let wait = between(&mut rng, opts.interval);
        let hold = between(&mut rng, opts.fault);
        if origin.elapsed() + wait + hold >= opts.time {
            break;
        }
        tokio::time::sleep(wait).await;
        let kind = opts.nemeses[rng.random_range(0..opts.nemeses.len())];
        // The group's leader (always for kill-leader, half the time otherwise), else any
        // node.
        let leading = client::group_leader(&local.sequencer, clock, None).await.map(|(i, _)| i);
        let node = match (leading, kind == Nemesis::KillLeader || rng.random_bool(0.5)) {
            (Some(leader), true) => leader,
            _ => rng.random_range(0..local.len()),
        };
        let name = node_name(local, node);
        let start_s = origin.elapsed().as_secs_f64();
        let detail = match kind {
            Nemesis::Kill | Nemesis::KillLeader => {
                local.kill(node).map_err(|e| e.to_string())?;
                tokio::time::sleep(hold).await;
                local.start(node).map_err(|e| e.to_string())?;
                if leading == Some(node) { "the leader".into() } else { String::new() }
            }
            Nemesis::Partition => {
                let uid = local.uid(node).expect("nodes run as their own users").to_string();
                let addr = local.addr(node).to_string();
                let port = addr.rsplit(':').next().unwrap_or_default().to_string();
                let rules = isolation(&uid, &port);
                apply_rules("-A", &rules)?;
                // The cut must hold: a connection to the node now gets no answer.
                let target: std::net::SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
                let probe = Duration::from_millis(300);
                if std::net::TcpStream::connect_timeout(&target, probe).is_ok() {
                    return Err(format!("the partition of {addr} did not take effect"));
                }
                tokio::time::sleep(hold.saturating_sub(probe)).await;
                apply_rules("-D", &rules)?;
                let leader = if leading == Some(node) { ", the leader" } else { "" };
                format!("cut off ({addr}{leader})")
            }
            Nemesis::Pause => {
                local.signal(node, "STOP").map_err(|e| e.to_string())?;
                tokio::time::sleep(hold).await;
                local.signal(node, "CONT").map_err(|e| e.to_string())?;
                String::new()
            }
            Nemesis::Clock => {
                let factor = [0.5, 1.0, 2.0][rng.random_range(0..3)];
                let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
                let offset = sign * factor * opts.max_offset_ms as f64 / 1000.0;
                let lib = faketime_library().expect("checked at the start");
                let lib = lib.display().to_string();
                let faked = format!("{offset:+.3}");
                local.kill(node).map_err(|e| e.to_string())?;
                let env = [
                    ("LD_PRELOAD", lib.as_str()),
                    ("FAKETIME", faked.as_str()),
                    ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
                ];
                local.start_with_env(node, &env).map_err(|e| e.to_string())?;
                tokio::time::sleep(hold).await;
                local.kill(node).map_err(|e| e.to_string())?;
                local.start(node).map_err(|e| e.to_string())?;
                format!("clock {:+.0} ms ({factor}x max_offset)", offset * 1000.0)
            }
        };
        let end_s = origin.elapsed().as_secs_f64();
        eprintln!("  {start_s:6.1}-{end_s:6.1} s  {kind:?} {name} {detail}");
        faults.push(Fault { kind, node: name, start_s, end_s, detail });
    }
    let left = opts.time.saturating_sub(origin.elapsed());
    tokio::time::sleep(left).await;
    Ok(faults)
}

/// `adya`'s verdict on the list-append history.
async fn list_append_checks(_client: &Client, history: &Recorder) -> Check {
    let text = history.to_jsonl();
    match check(&text, Workload::ListAppend, "strict-serializable") {
        Ok(v) => Check {
            name: "list-append strictly serializable (adya)".into(),
            ok: v.valid == Some(true),
            detail: format!(
                "valid {:?}, anomalies {:?}, {} lines",
                v.valid,
                v.anomalies,
                text.lines().count()
            ),
        },
        Err(e) => {
            Check { name: "list-append strictly serializable (adya)".into(), ok: false, detail: e }
        }
    }
}

/// Every acknowledged append is in its list, and no value is in any list twice.
async fn exactly_once(client: &Client, history: &Recorder) -> Check {
    let name = "acknowledged appends present exactly once".to_string();
    let ts = client.read_ts(ReadAt::Latest);
    let text = history.to_jsonl();
    let mut problems = Vec::new();
    let mut values = 0;
    for k in 0..KEYS {
        let stored = match client.get(&list_key(k), ts).await {
            Ok(s) => s,
            Err(e) => return Check { name, ok: false, detail: format!("reading list {k}: {e}") },
        };
        let list = decode_list(stored.as_deref()).unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        for v in &list {
            if !seen.insert(*v) {
                problems.push(format!("value {v} twice in list {k}"));
            }
        }
        values += list.len();
        for line in text.lines().filter(|l| l.contains("\"type\":\"ok\"")) {
            let Ok(op) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            for mop in op["value"].as_array().into_iter().flatten() {
                if mop[0] == "append"
                    && mop[1] == k
                    && !seen.contains(&mop[2].as_u64().unwrap_or(0))
                {
                    problems.push(format!("acknowledged append {} to {k} lost", mop[2]));
                }
            }
        }
    }
    Check {
        name,
        ok: problems.is_empty(),
        detail: match problems.is_empty() {
            true => format!("{values} values in {KEYS} lists"),
            false => problems.join("; "),
        },
    }
}

/// Calls per second, and the latency of the committed ones.
fn timeline(done: &[(Duration, Duration, Completion)]) -> Vec<Second> {
    let seconds = done.iter().map(|(at, ..)| at.as_secs()).max().map_or(0, |s| s + 1);
    (0..seconds)
        .map(|t| {
            let here: Vec<_> = done.iter().filter(|(at, ..)| at.as_secs() == t).collect();
            let count = |c: Completion| here.iter().filter(|(_, _, how)| *how == c).count() as u64;
            let mut ok: Vec<f64> = here
                .iter()
                .filter(|(_, _, how)| *how == Completion::Ok)
                .map(|(_, took, _)| took.as_secs_f64() * 1000.0)
                .collect();
            ok.sort_by(f64::total_cmp);
            let pct = |p: f64| match ok.len() {
                0 => 0.0,
                n => ok[((n as f64 * p).ceil() as usize).clamp(1, n) - 1],
            };
            Second {
                t,
                ok: count(Completion::Ok),
                info: count(Completion::Info),
                fail: count(Completion::Fail),
                p50_ms: pct(0.5),
                p99_ms: pct(0.99),
            }
        })
        .collect()
}

/// `text` with HTML's special characters escaped.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The report as a page: the checks, the faults, and two plots (committed calls per second;
/// p50 and p99 latency) with the fault windows shaded.
fn html(r: &JepsenReport) -> String {
    let (w, h, pad) = (900.0, 220.0, 40.0);
    let span = r.time_s.max(1.0);
    let x = |t: f64| pad + (w - 2.0 * pad) * t / span;
    let plot = |title: &str, series: &[(&str, &str, Vec<f64>)]| {
        let max = series.iter().flat_map(|(_, _, v)| v.iter().copied()).fold(1.0, f64::max);
        let y = |v: f64| h - pad - (h - 2.0 * pad) * v / max;
        let mut svg = format!(
            "<h3>{title}</h3><svg width=\"{w}\" height=\"{h}\" style=\"border:1px solid #ccc\">"
        );
        for f in &r.faults {
            svg += &format!(
                "<rect x=\"{:.1}\" y=\"{pad}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" \
                 opacity=\"0.25\"><title>{:?} {} {}</title></rect>\
                 <text x=\"{:.1}\" y=\"{}\" font-size=\"10\">{:?}</text>",
                x(f.start_s),
                (x(f.end_s) - x(f.start_s)).max(1.0),
                h - 2.0 * pad,
                match f.kind {
                    Nemesis::Kill | Nemesis::KillLeader => "#d62728",
                    Nemesis::Pause => "#ff7f0e",
                    Nemesis::Clock => "#9467bd",
                    Nemesis::Partition => "#1f77b4",
                },
                f.kind,
                escape(&f.node),
                escape(&f.detail),
                x(f.start_s),
                pad - 4.0,
                f.kind
            );
        }
        for (name, colour, values) in series {
            let points: Vec<String> = values
                .iter()
                .enumerate()
                .map(|(t, v)| format!("{:.1},{:.1}", x(t as f64 + 0.5), y(*v)))
                .collect();
            svg += &format!(
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\">\
                 <title>{name}</title></polyline>",
                points.join(" ")
            );
        }
        svg += &format!(
            "<text x=\"4\" y=\"{pad}\" font-size=\"10\">{max:.0}</text>\
             <text x=\"4\" y=\"{}\" font-size=\"10\">0</text>\
             <text x=\"{}\" y=\"{}\" font-size=\"10\">{span:.0} s</text></svg>",
            h - pad,
            w - pad,
            h - 10.0
        );
        svg
    };
    let ok: Vec<f64> = r.timeline.iter().map(|s| s.ok as f64).collect();
    let unknown: Vec<f64> = r.timeline.iter().map(|s| (s.info + s.fail) as f64).collect();
    let p50: Vec<f64> = r.timeline.iter().map(|s| s.p50_ms).collect();
    let p99: Vec<f64> = r.timeline.iter().map(|s| s.p99_ms).collect();
    let checks: String = r
        .checks
        .iter()
        .map(|c| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                if c.ok { "ok" } else { "<b>FAIL</b>" },
                escape(&c.name),
                escape(&c.detail)
            )
        })
        .collect();
    let faults: String = r
        .faults
        .iter()
        .map(|f| {
            format!(
                "<tr><td>{:.1}-{:.1} s</td><td>{:?}</td><td>{}</td><td>{}</td></tr>",
                f.start_s,
                f.end_s,
                f.kind,
                escape(&f.node),
                escape(&f.detail)
            )
        })
        .collect();
    format!(
        "<!doctype html><meta charset=\"utf-8\"><title>sealdb jepsen</title>\
         <body style=\"font-family:sans-serif\"><h2>sealdb jepsen: {}</h2>\
         <p>seed {}, {:.0} s, nemeses {:?}; calls {:?}</p>\
         <table border=\"1\" cellpadding=\"3\">{checks}</table>{}{}\
         <h3>Faults</h3><table border=\"1\" cellpadding=\"3\">{faults}</table></body>",
        if r.valid { "valid" } else { "INVALID" },
        r.seed,
        r.time_s,
        r.nemeses,
        escape(&format!("{:?}", r.totals)),
        plot(
            "Calls per second (green: committed; grey: unknown or failed)",
            &[("committed", "#2ca02c", ok), ("unknown or failed", "#7f7f7f", unknown)]
        ),
        plot(
            "Latency of committed calls, ms (blue: p50; red: p99)",
            &[("p50", "#1f77b4", p50), ("p99", "#d62728", p99)]
        ),
    )
}
