//! The node registry as seen by its readers: which node a viewer should be sent to.
//!
//! The registry itself (node records, heartbeats, room placement) lives in the replicated
//! [`TenantState`](crate::state::TenantState); this module holds the plain, clock-free decisions
//! made on top of it.

pub mod query;
pub mod steering;

pub use query::{AppKey, JoinAnswer, JoinRequest, StateAnswer, StateQuery};
pub use steering::{client_region, Choice, Reason, SteeringPolicy};
