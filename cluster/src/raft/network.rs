//! The transport between Raft voters.
//!
//! For now there is none: [`NoPeers`] hands out clients whose every RPC fails with
//! `Unreachable`, which is what openraft expects of a peer it cannot reach (it backs off and
//! retries), so a single-voter group runs normally. The QUIC transport replaces this factory; the
//! node is generic over nothing else, so it slots in at [`RaftNode`](super::RaftNode) construction.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};

use super::{NodeId, TypeConfig};

/// Why a peer could not be reached: there is no transport yet.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no raft transport to node {target} at {addr}")]
pub struct NoTransport {
    /// The peer's node id.
    pub target: NodeId,
    /// The peer's advertised address.
    pub addr: String,
}

/// A network factory for a group without transport: every peer is unreachable.
#[derive(Debug, Clone, Default)]
pub struct NoPeers;

/// A client of one peer through [`NoPeers`]; every RPC fails with `Unreachable`.
#[derive(Debug, Clone)]
pub struct UnreachablePeer {
    error: NoTransport,
}

impl UnreachablePeer {
    fn fail<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        RPCError::Unreachable(Unreachable::new(&self.error))
    }
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = UnreachablePeer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        UnreachablePeer {
            error: NoTransport {
                target,
                addr: node.addr.clone(),
            },
        }
    }
}

impl RaftNetwork<TypeConfig> for UnreachablePeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.fail())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.fail())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.fail())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::Vote;

    #[tokio::test]
    async fn every_rpc_is_unreachable() {
        let mut peer = NoPeers
            .new_client(7, &BasicNode::new("127.0.0.1:4433"))
            .await;
        let vote = VoteRequest::new(Vote::new(1, 1), None);
        let err = peer
            .vote(vote, RPCOption::new(std::time::Duration::from_secs(1)))
            .await
            .unwrap_err();
        assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
        assert!(err.to_string().contains("node 7"), "{err}");
    }
}
