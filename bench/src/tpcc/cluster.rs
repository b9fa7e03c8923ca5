//! The TPC-C-like benchmark against a sealdb cluster, through the network: the same
//! procedures (run by the shard servers, which `bench node` starts with them registered), the
//! read-only transactions as reads at one timestamp through the [`Client`], and the same
//! loader and checks.

use std::sync::Arc;
use std::time::Duration;

use clock::{Clock, Timestamp};
use storage::KeyRange;
use tokio::runtime::{Handle, Runtime};
use txn::{ProcError, ReadAt, Rows, TxnError};

use super::shard_map;
use super::txns::Reader;
use super::{Backend, Done, Execution, Population, Report, Tasks, TpccOptions, Txn, check, drive};
use super::{
    ReadOnly, call_until_done, call_until_done_async, load_parts, procedure, run_parts, schema,
};
use crate::{ClusterTarget, RunningCluster};
use client::Client;

/// sealdb over the network. Its clients run as futures on its runtime ([`Tasks`]).
pub struct RemoteSealdb {
    client: Arc<Client>,
    runtime: Runtime,
}

/// Reads at one timestamp through the client: a read-only transaction over the network.
struct RemoteReader<'a> {
    client: &'a Client,
    handle: &'a Handle,
    ts: Timestamp,
}

fn storage(e: TxnError) -> ProcError {
    ProcError::Storage(e.to_string())
}

impl Reader for RemoteReader<'_> {
    fn read(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ProcError> {
        self.handle.block_on(self.client.get(key, self.ts)).map_err(storage)
    }
    fn range(&mut self, range: &KeyRange, limit: usize) -> Result<Rows, ProcError> {
        self.handle.block_on(self.client.scan(range, self.ts, limit)).map_err(storage)
    }
    fn read_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, ProcError> {
        self.handle.block_on(self.client.get_many(keys, self.ts)).map_err(storage)
    }
}

/// Runs `f` on reads at one `Latest` timestamp through `client`, blocking on `handle` (so not
/// on one of its threads).
fn read<T>(
    client: &Client,
    handle: &Handle,
    f: impl FnOnce(&mut RemoteReader<'_>) -> Result<T, ProcError>,
) -> Result<T, String> {
    let ts = client.read_ts(ReadAt::Latest);
    f(&mut RemoteReader { client, handle, ts }).map_err(|e| e.to_string())
}

/// Runs `read_only` as a read-only call at the client's `Latest` timestamp: one `ReadCall`
/// to the warehouse's shard.
async fn read_call(client: &Client, read_only: &ReadOnly) -> Result<Done, String> {
    let (name, args) = read_only.call();
    let ts = client.read_ts(ReadAt::Latest);
    client.read_call(name, &args, ts).await.map(|_| Done::Committed).map_err(|e| e.to_string())
}

impl RemoteSealdb {
    /// Connects to `cluster`, waiting up to 30 s for every shard to answer.
    pub fn connect(cluster: &RunningCluster) -> Result<RemoteSealdb, String> {
        let runtime = cluster.client_runtime()?;
        let max_offset = Duration::from_millis(cluster.max_offset_ms.unwrap_or(5));
        let clock = Arc::new(Clock::system(max_offset));
        let ready = crate::connect_when_ready(&cluster.addr, clock, cluster.tls.clone());
        let (client, _) = runtime.block_on(ready)?;
        Ok(RemoteSealdb { client: Arc::new(client), runtime })
    }

    fn call(&self, name: &str, args: &[u8], retries: &mut u64) -> Result<Done, String> {
        call_until_done(name, retries, || self.runtime.block_on(self.client.call(name, args)))
    }
}

impl Tasks for RemoteSealdb {
    fn handle(&self) -> &Handle {
        self.runtime.handle()
    }

    fn execute(&self, txn: Txn) -> Execution<'_> {
        Box::pin(async move {
            let mut retries = 0;
            let done = match procedure(&txn) {
                Ok((name, args)) => {
                    call_until_done_async(name, &mut retries, || self.client.call(name, &args))
                        .await
                }
                // The read-only transactions: one read-only call each, run by the warehouse's
                // shard at the client's `Latest` timestamp.
                Err(read_only) => read_call(&self.client, &read_only).await,
            };
            (done, retries)
        })
    }
}

impl Backend for RemoteSealdb {
    fn name(&self) -> &'static str {
        "sealdb-cluster"
    }

    fn execute(&self, txn: &Txn, retries: &mut u64) -> Result<Done, String> {
        match procedure(txn) {
            Ok((name, args)) => self.call(name, &args, retries),
            Err(read_only) => self.runtime.block_on(read_call(&self.client, &read_only)),
        }
    }

    fn tasks(&self) -> Option<&dyn Tasks> {
        Some(self)
    }

    fn check(&self, warehouses: u32) -> Result<Vec<String>, String> {
        read(&self.client, self.runtime.handle(), |r| check::check(r, warehouses))
    }

    fn load(&self, warehouses: u32, pop: Population, seed: u64) -> Result<(), String> {
        let handle = self.runtime.handle();
        if read(&self.client, handle, |r| r.read(&schema::warehouse_key(1)))?.is_some() {
            return Err("the cluster already holds TPC-C data: start an empty one".into());
        }
        let parts = load_parts(warehouses, pop, seed);
        run_parts(&parts, 16, |part| {
            self.call("tpcc.load", &schema::encode(part), &mut 0).map(|_| ())
        })
    }
}

/// Loads and runs the benchmark on a cluster. A cluster the benchmark starts gets the storage
/// the embedded database would: `row_cache_bytes` split over its shards, `block_cache_bytes`
/// for each, table files of `table_file_bytes`, and the appended tables in a column family of
/// their own ([`schema::appended_prefixes`]).
pub fn run_cluster(
    opts: &TpccOptions,
    target: &ClusterTarget,
    row_cache_bytes: usize,
    block_cache_bytes: usize,
    table_file_bytes: u64,
) -> Result<Report, String> {
    let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let cluster = target.start(
        temp.path().join("cluster"),
        |n| shard_map(opts.warehouses, n),
        |n| {
            let mib = |bytes: usize| (bytes >> 20) as u64;
            Some(node::StorageMib {
                row_cache: mib(row_cache_bytes / n.max(1) as usize),
                block_cache: mib(block_cache_bytes).max(1),
                table_file: (table_file_bytes >> 20).clamp(1, 1 << 10),
                apart: schema::appended_prefixes(opts.warehouses),
                apart_hint_bytes: schema::appended_hint_bytes(),
            })
        },
    )?;
    let result = RemoteSealdb::connect(&cluster).and_then(|backend| {
        let load_s = super::load(&backend, opts)?;
        drive(&backend, opts, load_s)
    });
    cluster.stop();
    result
}
