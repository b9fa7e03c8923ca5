//! The sequencer group's raft messages over gRPC (`sealdb.v1.Raft`): [`GrpcNetwork`] sends
//! them, [`RaftService`] receives them. Bodies are openraft's own types in postcard; every
//! message carries the sender's HLC timestamp, observed by the receiver (a clock beyond
//! `max_offset` is refused, as on every other call). With TLS, only nodes may call.

use std::sync::Arc;

use client::{
    SetupError, Tls, endpoint, observe_request, observe_response, require_node, sized, stamp,
};
use clock::Clock;
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use proto::v1;
use proto::v1::raft_client::RaftClient;
use proto::v1::raft_server::Raft as RaftRpc;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::types::{NodeId, Raft, TypeConfig};

/// Sends raft messages to the other sequencer nodes, at the addresses their `BasicNode`s name.
#[derive(Clone)]
pub struct GrpcNetwork {
    clock: Arc<Clock>,
    tls: Option<Tls>,
}

impl GrpcNetwork {
    /// A network stamping messages with `clock`, over TLS with `tls`.
    pub fn new(clock: Arc<Clock>, tls: Option<Tls>) -> GrpcNetwork {
        GrpcNetwork { clock, tls }
    }
}

/// A connection to one node (connected on first use, again after failures).
pub struct GrpcConn {
    target: NodeId,
    client: Result<RaftClient<Channel>, SetupError>,
    clock: Arc<Clock>,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = GrpcConn;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> GrpcConn {
        let client = endpoint(&node.addr, self.tls.as_ref())
            .map(|e| sized!(RaftClient::new(e.connect_lazy())));
        GrpcConn { target, client, clock: self.clock.clone() }
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("openraft's messages serialize")
}

impl GrpcConn {
    /// Sends `body` with `call` and decodes openraft's result from the reply.
    async fn call<Req, Resp, E, F, Fut>(
        &mut self,
        body: &Req,
        call: F,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, v1::RaftMessage) -> Fut,
        Fut: Future<Output = Result<Response<v1::RaftMessage>, Status>>,
    {
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(e))),
        };
        let message = v1::RaftMessage { hlc: stamp(&self.clock), body: encode(body) };
        let reply = call(client, message)
            .await
            .map_err(|status| RPCError::Unreachable(Unreachable::new(&status)))?
            .into_inner();
        observe_response(&self.clock, reply.hlc)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let result: Result<Resp, E> = postcard::from_bytes(&reply.body)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for GrpcConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(&rpc, |mut c, m| async move { c.append_entries(m).await }).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(&rpc, |mut c, m| async move { c.install_snapshot(m).await }).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(&rpc, |mut c, m| async move { c.vote(m).await }).await
    }
}

/// Receives raft messages for the local node.
pub struct RaftService {
    raft: Raft,
    clock: Arc<Clock>,
    /// Serving TLS: only nodes may call.
    secure: bool,
}

impl RaftService {
    /// The service of `raft`, observing callers' clocks with `clock`.
    pub fn new(raft: Raft, clock: Arc<Clock>, secure: bool) -> RaftService {
        RaftService { raft, clock, secure }
    }

    /// The gRPC server of this service, with sealdb's message limits.
    pub fn server(self) -> proto::v1::raft_server::RaftServer<RaftService> {
        sized!(proto::v1::raft_server::RaftServer::new(self))
    }

    fn admit<T: DeserializeOwned>(&self, request: Request<v1::RaftMessage>) -> Result<T, Status> {
        require_node(&request, self.secure)?;
        let message = request.into_inner();
        observe_request(&self.clock, message.hlc)?;
        postcard::from_bytes(&message.body).map_err(|e| {
            Status::invalid_argument(format!("a raft message that does not decode: {e}"))
        })
    }

    fn reply<T: Serialize>(&self, result: &T) -> Response<v1::RaftMessage> {
        Response::new(v1::RaftMessage { hlc: stamp(&self.clock), body: encode(result) })
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<v1::RaftMessage>,
    ) -> Result<Response<v1::RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = self.admit(request)?;
        Ok(self.reply(&self.raft.append_entries(rpc).await))
    }

    async fn vote(
        &self,
        request: Request<v1::RaftMessage>,
    ) -> Result<Response<v1::RaftMessage>, Status> {
        let rpc: VoteRequest<NodeId> = self.admit(request)?;
        Ok(self.reply(&self.raft.vote(rpc).await))
    }

    async fn install_snapshot(
        &self,
        request: Request<v1::RaftMessage>,
    ) -> Result<Response<v1::RaftMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = self.admit(request)?;
        Ok(self.reply(&self.raft.install_snapshot(rpc).await))
    }
}
