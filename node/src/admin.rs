//! The admin service, served by the sequencer node: the cluster's layout for clients, and
//! its status (the last logged window, each shard's applied window and safe time, lag).

use std::sync::Arc;
use std::time::Duration;

use client::{Tls, endpoint, observe_request, observe_response, replica_addrs, sized, stamp};
use clock::Clock;
use proto::v1;
use proto::v1::admin_server::Admin;
use proto::v1::shard_client::ShardClient;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use txn::ShardMap;

use crate::NodeError;
use crate::sequencer::Backend;

/// Where a cluster's shards are and which keys each owns: the same on every node.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Every shard's replica addresses (`host:port`, comma-separated), by shard id.
    pub shards: Vec<String>,
    /// Which shard owns which keys.
    pub map: ShardMap,
}

/// How long a status report waits for each shard.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

pub(super) struct AdminService {
    sequencer: Backend,
    clock: Arc<Clock>,
    layout: Layout,
    /// Every replica of every shard: its shard, address and client.
    replicas: Vec<(usize, String, ShardClient<Channel>)>,
}

impl AdminService {
    pub(super) fn new(
        sequencer: Backend,
        clock: Arc<Clock>,
        layout: Layout,
        tls: Option<&Tls>,
    ) -> Result<AdminService, NodeError> {
        let mut replicas = Vec::new();
        for (i, shard) in layout.shards.iter().enumerate() {
            for addr in replica_addrs(shard) {
                let e = endpoint(&addr, tls)?.timeout(STATUS_TIMEOUT);
                replicas.push((i, addr, sized!(ShardClient::new(e.connect_lazy()))));
            }
        }
        Ok(AdminService { sequencer, clock, layout, replicas })
    }

    /// Its clients of every shard replica (sharing their connections), for the sequencer's
    /// other calls to them.
    pub(super) fn shard_clients(&self) -> Vec<ShardClient<Channel>> {
        self.replicas.iter().map(|(_, _, c)| c.clone()).collect()
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn cluster_status(
        &self,
        request: Request<v1::ClusterStatusRequest>,
    ) -> Result<Response<v1::ClusterStatusResponse>, Status> {
        observe_request(&self.clock, request.into_inner().hlc)?;
        let (epoch, ts) = self.sequencer.last_logged();
        let mut shards = Vec::new();
        let mut unreachable = Vec::new();
        for (i, addr, client) in &self.replicas {
            let asked = v1::StatusRequest { hlc: stamp(&self.clock) };
            match client.clone().status(asked).await {
                Ok(status) => {
                    let status = status.into_inner();
                    // A shard whose clock is beyond max_offset is refused like any peer.
                    match observe_response(&self.clock, status.hlc) {
                        Ok(()) => shards.push(status),
                        Err(e) => unreachable.push(format!("shard {i} at {addr}: {e}")),
                    }
                }
                Err(e) => unreachable.push(format!("shard {i} at {addr}: {}", e.message())),
            }
        }
        let group = match &self.sequencer {
            Backend::Single(_) => None,
            Backend::Group(g) => {
                let v = g.status();
                Some(v1::GroupStatus {
                    member: v.member,
                    leader: v.leader.unwrap_or(0),
                    leader_addr: v.leader_addr.unwrap_or_default(),
                    term: v.term,
                    last_log_index: v.last_log_index.unwrap_or(0),
                    last_applied_index: v.last_applied_index.unwrap_or(0),
                })
            }
        };
        Ok(Response::new(v1::ClusterStatusResponse {
            hlc: stamp(&self.clock),
            group,
            sealed_epoch: epoch.0,
            sealed_ts: ts.as_u64(),
            shards,
            shard_addrs: self.layout.shards.clone(),
            splits: self.layout.map.splits().to_vec(),
            unreachable,
        }))
    }
}
