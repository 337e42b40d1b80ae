//! Raft RPCs over the cluster [`Endpoint`]: the client side ([`QuicNetworkFactory`]) and the
//! server side (`register_raft_services`).
//!
//! A peer is known by its `BasicNode.addr`, the `host:port` of its cluster QUIC endpoint. Bodies
//! are JSON; a response carries the peer's whole `Result`, so a Raft-level refusal arrives as
//! openraft's `RemoteError` while transport failures keep the distinction openraft's replication
//! backoff relies on: [`RpcError::Unreachable`] becomes `Unreachable` (back off), everything else
//! `NetworkError` (retry at once).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft, RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::prevote::LeaderContact;
use super::{NodeId, TypeConfig};
use crate::transport::frame::MAX_BULK_REQUEST;
use crate::transport::{kinds, service_fn_with_limit, Endpoint, RemoteError, RpcError};

/// Why a peer's address could not be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot resolve cluster address {addr:?} of node {target}")]
pub struct BadAddress {
    /// The peer's node id.
    pub target: NodeId,
    /// The address from the membership.
    pub addr: String,
}

/// Resolves a `host:port` cluster address (an IP literal needs no DNS).
pub async fn resolve(addr: &str) -> Option<SocketAddr> {
    if let Ok(sa) = addr.parse() {
        return Some(sa);
    }
    tokio::net::lookup_host(addr).await.ok()?.next()
}

/// Creates Raft clients that talk to peers over the cluster endpoint.
#[derive(Debug, Clone)]
pub struct QuicNetworkFactory {
    endpoint: Endpoint,
}

impl QuicNetworkFactory {
    /// A factory sending through `endpoint`.
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }
}

/// The Raft client of one peer.
#[derive(Debug, Clone)]
pub struct QuicPeer {
    endpoint: Endpoint,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for QuicNetworkFactory {
    type Network = QuicPeer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        QuicPeer {
            endpoint: self.endpoint.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

impl QuicPeer {
    /// Sends `req` as `kind` and decodes the peer's `Result<Resp, RaftError<E>>`.
    async fn call<Req, Resp, E>(
        &self,
        kind: u16,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(addr) = resolve(&self.addr).await else {
            return Err(RPCError::Unreachable(Unreachable::new(&BadAddress {
                target: self.target,
                addr: self.addr.clone(),
            })));
        };
        let body = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let answer = self
            .endpoint
            .request(addr, kind, Bytes::from(body), option.hard_ttl())
            .await
            .map_err(rpc_error)?;
        let result: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&answer)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
    }
}

/// Maps a transport failure to openraft's: only `Unreachable` makes replication back off.
fn rpc_error<E: std::error::Error>(e: RpcError) -> RPCError<NodeId, BasicNode, E> {
    match e {
        // A peer without the Raft service (an edge, a misconfigured address) is as good as
        // unreachable: retrying at once would not help.
        RpcError::Unreachable { .. } | RpcError::UnknownKind(_) => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        RpcError::Network { .. } | RpcError::Remote(_) | RpcError::TooLarge { .. } => {
            RPCError::Network(NetworkError::new(&e))
        }
    }
}

impl RaftNetwork<TypeConfig> for QuicPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(kinds::RAFT_APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(kinds::RAFT_SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(kinds::RAFT_VOTE, &rpc, &option).await
    }
}

/// Decodes a JSON request body, or answers `bad_request`.
pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, RemoteError> {
    serde_json::from_slice(body).map_err(|e| RemoteError::new("bad_request", e.to_string()))
}

/// Encodes a JSON response body.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Bytes, RemoteError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| RemoteError::new("encode_failed", e.to_string()))
}

/// Serves the Raft RPC kinds of `raft` on `endpoint` (append, vote, snapshot chunks); what the
/// leader sends successfully is recorded in `contact` (for pre-vote answers).
pub(crate) fn register_raft_services(
    endpoint: &Endpoint,
    raft: &Raft<TypeConfig>,
    contact: &Arc<LeaderContact>,
) {
    let r = raft.clone();
    let c = contact.clone();
    endpoint.register(
        kinds::RAFT_APPEND,
        service_fn_with_limit(MAX_BULK_REQUEST, move |_peer, body| {
            let (raft, contact) = (r.clone(), c.clone());
            async move {
                let rpc: AppendEntriesRequest<TypeConfig> = decode(&body)?;
                let result = raft.append_entries(rpc).await;
                contact.heard_append(&result);
                encode(&result)
            }
        }),
    );
    let r = raft.clone();
    endpoint.register(
        kinds::RAFT_VOTE,
        service_fn_with_limit(MAX_BULK_REQUEST, move |_peer, body| {
            let raft = r.clone();
            async move {
                let rpc: VoteRequest<NodeId> = decode(&body)?;
                encode(&raft.vote(rpc).await)
            }
        }),
    );
    let r = raft.clone();
    let c = contact.clone();
    endpoint.register(
        kinds::RAFT_SNAPSHOT,
        service_fn_with_limit(MAX_BULK_REQUEST, move |_peer, body| {
            let (raft, contact) = (r.clone(), c.clone());
            async move {
                let rpc: InstallSnapshotRequest<TypeConfig> = decode(&body)?;
                let vote = rpc.vote;
                let result = raft.install_snapshot(rpc).await;
                // Answered with a higher vote: the sender is no longer the leader.
                if matches!(&result, Ok(r) if r.vote == vote) {
                    contact.heard();
                }
                encode(&result)
            }
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unreachable_and_unknown_kind_make_raft_back_off() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let cases = [
            (
                RpcError::Unreachable {
                    addr,
                    reason: "x".into(),
                },
                true,
            ),
            (RpcError::UnknownKind(kinds::RAFT_VOTE), true),
            (
                RpcError::Network {
                    addr,
                    reason: "x".into(),
                },
                false,
            ),
            (
                RpcError::Remote(RemoteError::new("bad_request", "x")),
                false,
            ),
        ];
        for (e, unreachable) in cases {
            let mapped: RPCError<NodeId, BasicNode, RaftError<NodeId>> = rpc_error(e.clone());
            assert_eq!(
                matches!(mapped, RPCError::Unreachable(_)),
                unreachable,
                "{e:?}"
            );
        }
    }

    #[tokio::test]
    async fn addresses_resolve_from_literals_and_names() {
        assert_eq!(
            resolve("127.0.0.1:4433").await,
            Some("127.0.0.1:4433".parse().unwrap())
        );
        assert!(resolve("localhost:4433").await.is_some());
        assert_eq!(resolve("not an address").await, None);
    }
}
