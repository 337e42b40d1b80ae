//! The streamhub control plane: the tenant state machine and the Raft group that replicates it.

pub mod raft;
pub mod state;
