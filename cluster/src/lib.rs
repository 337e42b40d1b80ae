//! The streamhub control plane: the replicated cluster state (tenants, node registry, room
//! placement, membership), the Raft group that replicates it, the inter-node QUIC transport both
//! run over, and what nodes need around them (joining, steering, load reports, retries).

pub mod backoff;
pub mod join;
pub mod load;
pub mod query;
pub mod raft;
pub mod registry;
pub mod seal;
pub mod state;
pub mod transport;
