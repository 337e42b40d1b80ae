//! The streamhub origin: ingest, the REST API and the tenant state, wired into one node.
//!
//! Services (each testable alone, handed to handlers as axum sub-states by [`services`]):
//! [`tenants`] (the replicated state: reads, writes, credential lookups), [`placement`] (room
//! claims, releases, fencing), [`admission`] (the one way into a room), [`rooms`] (the live
//! rooms of this node), [`membership`] (joining, admitting and removing nodes, cluster status),
//! [`heartbeat`] (load reports, lease renewal, revalidation), [`keyring`] (the cluster key that
//! seals the state's secrets), [`trust`] (revocation, health, data dir permissions),
//! [`audit`] (the audit log), [`authz`] (roles, the policy table, the enforcement mode), [`login`] (login throttle, password-hashing permits). Ingest protocols: [`rtmp`], [`srt`],
//! [`whip`], [`wsmjpeg`], [`rtsp`]; [`transcode`] makes an Opus track of AAC rooms; [`recording`]
//! records rooms to each app's S3 bucket. [`node`]
//! wires them.

pub mod admission;
pub mod api;
pub mod audit;
pub mod authz;
pub mod bootstrap;
pub mod config;
pub mod credentials;
pub mod dashboard;
pub mod heartbeat;
pub mod keyring;
pub mod login;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod placement;
pub mod recording;
pub mod rooms;
pub mod rtmp;
pub mod rtsp;
pub mod services;
pub mod srt;
pub mod tenants;
pub mod transcode;
pub mod trust;
pub mod webhooks;
pub mod whip;
pub mod wsmjpeg;
