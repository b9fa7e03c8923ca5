//! The `sealdb` binary's commands other than running a node: a local development cluster
//! (`sealdb dev`), certificates (`sealdb cert`), and shell access to a cluster through the
//! [`Client`] (`put`, `get`, `scan`, `status`). These are the binary's edge: their errors are
//! the messages it prints.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use client::{Client, Tls, cluster_status};
use clock::Clock;
use storage::KeyRange;
use txn::ReadAt;
use txn::builtin::put_args;

use crate::{LocalProcesses, LocalSpec, make_certificates, stop_signals};

/// Which cluster a shell command talks to, and how.
#[derive(clap::Args)]
pub struct Target {
    /// The sequencer's address.
    #[arg(long)]
    pub addr: String,
    /// For a cluster running TLS: a directory with ca.pem, client.pem and client.key.
    #[arg(long)]
    pub certs: Option<PathBuf>,
}

impl Target {
    /// TLS for the client, if `--certs` was given.
    pub fn tls(&self) -> Result<Option<Tls>, String> {
        let tls = self.certs.as_deref().map(|d| Tls::load_dir(d, "client")).transpose();
        tls.map_err(|e| e.to_string())
    }

    /// A client of the cluster.
    pub async fn client(&self) -> Result<Client, String> {
        let procedures = txn::builtin::registry();
        Client::connect_with(&self.addr, clock(), procedures, self.tls()?)
            .await
            .map_err(|e| self.explain(e.to_string()))
    }

    /// `error`, with a hint when a connection failed and no certificates were given: the
    /// cluster may run TLS.
    fn explain(&self, error: String) -> String {
        match &self.certs {
            None if error.contains("transport error") => format!(
                "{error} (if the cluster runs TLS, pass --certs DIR with ca.pem, client.pem \
                 and client.key)"
            ),
            _ => error,
        }
    }
}

/// `println!` for the commands' answers: a reader that has gone (`sealdb status | head -1`)
/// ends the command quietly, as it ends other Unix tools, instead of a panic; another failure
/// to write ends it with the error.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                eprintln!("sealdb: writing to stdout: {e}");
                std::process::exit(1);
            }
            std::process::exit(0);
        }
    }};
}

/// `sealdb cert DIR --name HOST...`: a development CA and certificates.
pub fn cert(dir: &Path, names: &[String]) -> Result<(), String> {
    make_certificates(names).and_then(|c| c.write(dir)).map_err(|e| e.to_string())?;
    say!("wrote ca.pem, ca.key, node.pem, node.key, client.pem, client.key in {}", dir.display());
    say!("every node's [tls]: ca = ca.pem, cert = node.pem, key = node.key; keep ca.key apart");
    Ok(())
}

/// `sealdb put KEY VALUE`.
pub async fn put(target: &Target, key: &str, value: &str) -> Result<(), String> {
    let client = target.client().await?;
    let id = client.new_id();
    match client.call_as(id, "kv.put", &put_args(key.as_bytes(), value.as_bytes())).await {
        Ok(_) => {
            say!("OK");
            Ok(())
        }
        Err(e @ txn::TxnError::OutcomeUnknown) => {
            Err(format!("{e}; ask later with: sealdb txn-status {:032x}", id.0))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// `sealdb get KEY`.
pub async fn get(target: &Target, key: &str) -> Result<(), String> {
    let client = target.client().await?;
    let ts = client.read_ts(ReadAt::Latest);
    match client.get(key.as_bytes(), ts).await.map_err(|e| e.to_string())? {
        Some(v) => say!("{}", String::from_utf8_lossy(&v)),
        None => say!("(absent)"),
    }
    Ok(())
}

/// `sealdb scan START [END] --limit N`.
pub async fn scan(
    target: &Target,
    start: String,
    end: Option<String>,
    limit: usize,
) -> Result<(), String> {
    let client = target.client().await?;
    let range = KeyRange { start: start.into_bytes(), end: end.map(String::into_bytes) };
    let ts = client.read_ts(ReadAt::Latest);
    for (k, v) in client.scan(&range, ts, limit).await.map_err(|e| e.to_string())? {
        say!("{}\t{}", String::from_utf8_lossy(&k), String::from_utf8_lossy(&v));
    }
    Ok(())
}

/// `sealdb status`: every member of a group (or the one sequencer), then the shards.
pub async fn status(target: &Target) -> Result<(), String> {
    let tls = target.tls()?;
    let mut last = Err("no sequencer address".to_string());
    for addr in target.addr.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        match cluster_status(addr, &clock(), tls.as_ref()).await {
            Ok(status) => {
                let sealed = clock::Timestamp::from_u64(status.sealed_ts);
                let what = match &status.group {
                    None => "sequencer".to_string(),
                    Some(g) if g.leader == g.member => format!("member {} (leader)", g.member),
                    Some(g) => format!("member {} (follower of {})", g.member, g.leader),
                };
                say!("{what} {addr}: last window {} at {sealed}", status.sealed_epoch);
                if let Some(g) = &status.group {
                    say!(
                        "  term {}, log index {}, applied {}",
                        g.term,
                        g.last_log_index,
                        g.last_applied_index
                    );
                }
                last = Ok(status);
            }
            Err(e) => say!("sequencer {addr}: {}", target.explain(e.to_string())),
        }
    }
    let status = last?;
    for s in &status.shards {
        let safe = clock::Timestamp::from_u64(s.safe_ts);
        let lag = status.sealed_epoch.saturating_sub(s.applied_epoch);
        let replicas = status.shard_addrs.get(s.shard as usize).map(|a| client::replica_addrs(a));
        let addr = replicas.as_ref().and_then(|r| r.get(s.replica as usize)).cloned();
        let digest: String = s.digest.iter().rev().map(|b| format!("{b:02x}")).collect();
        say!(
            "shard {} replica {} at {}: applied window {} (lag {lag}), safe time {safe}, \
             digest {digest}",
            s.shard,
            s.replica,
            addr.unwrap_or_default(),
            s.applied_epoch
        );
        if !s.failure.is_empty() {
            say!("  not serving: {}", s.failure);
        }
    }
    for u in &status.unreachable {
        say!("unreachable: {u}");
    }
    Ok(())
}

/// `sealdb txn-status ID`: what became of the transaction submitted under client id `ID`
/// (32 hex digits, as [`ClientId`](::sequencer::ClientId) prints).
pub async fn txn_status(target: &Target, id: &str) -> Result<(), String> {
    let id = u128::from_str_radix(id.trim_start_matches("0x"), 16)
        .map_err(|e| format!("{id:?} is not a client id (32 hex digits): {e}"))?;
    let client = target.client().await?;
    match client.outcome(::sequencer::ClientId(id)).await.map_err(|e| e.to_string())? {
        Some(txn::Outcome::Committed { ts, output }) => {
            say!("committed at {ts}, output {} bytes", output.len());
        }
        Some(txn::Outcome::Conflict { .. }) => say!("not committed: conflict"),
        Some(txn::Outcome::Aborted(why)) => say!("aborted: {why:?}"),
        None => say!(
            "unknown: no shard decided it in the retention period (not logged, not decided yet, \
             or older)"
        ),
    }
    Ok(())
}

fn clock() -> Arc<Clock> {
    // Shell commands are clients: an unpersisted clock with the default bound.
    Arc::new(Clock::system(std::time::Duration::from_millis(5)))
}

/// Runs `sequencers` sequencer processes and `shards` x `replicas` shard processes on
/// 127.0.0.1 until Ctrl-C.
pub fn dev(
    sequencers: u32,
    shards: u32,
    replicas: u32,
    dir: &Path,
    port: u16,
    secure: bool,
) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let tls_dir = secure.then(|| dir.join("certs"));
    if let Some(certs) = &tls_dir
        && !certs.join("ca.pem").exists()
    {
        make_certificates(&[]).and_then(|c| c.write(certs)).map_err(|e| e.to_string())?;
    }
    let spec = LocalSpec {
        sequencers,
        command: vec![exe.display().to_string(), "start".into()],
        dir: dir.to_path_buf(),
        shards,
        replicas,
        port: Some(port),
        max_offset_ms: 1,
        window_ms: 5,
        split_keys: Vec::new(),
        group_timing: None,
        run_as: None,
        tls_dir: tls_dir.clone(),
        reclamation: None,
        storage_mib: None,
        worker_threads: None,
    };
    let local = LocalProcesses::spawn(&spec).map_err(|e| e.to_string())?;
    let sequencer = local.sequencer.clone();
    let role = if sequencers > 1 { "sequencer group" } else { "sequencer" };
    let shards = local.shards.iter().map(|s| format!("[{s}]")).collect::<Vec<_>>().join(", ");
    println!("sealdb dev cluster: {role} on {sequencer}, shards (replicas) on {shards}");
    println!("configuration, data and logs in {}", dir.display());
    let certs = tls_dir.map(|d| format!(" --certs {}", d.display())).unwrap_or_default();
    println!("try:  sealdb put hello world --addr {sequencer}{certs}");
    println!("      sealdb get hello --addr {sequencer}{certs}");
    println!("      sealdb status --addr {sequencer}{certs}");
    println!("Ctrl-C stops the cluster.");
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        stop_signals().map_err(|e| e.to_string())?.await;
        Ok::<(), String>(())
    })?;
    local.stop();
    println!("stopped");
    Ok(())
}
