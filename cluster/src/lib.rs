//! The streamhub control plane: the tenant state machine, the Raft group that replicates it, and
//! the inter-node QUIC transport both run over.

pub mod raft;
pub mod registry;
pub mod state;
pub mod transport;
