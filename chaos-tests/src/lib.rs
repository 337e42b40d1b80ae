//! Multi-process cluster scenarios: real `streamhub-origin` and `streamhub-edge` processes on
//! loopback ports or in network namespaces, killed, stopped, restarted, partitioned, slowed, and
//! driven through their public API and with real clients (all from the test kit,
//! `streamhub-testkit`, re-exported here).
//!
//! Every test takes a seed ([`seed::chaos_seed`], replay with `CHAOS_SEED=<n>`), and a
//! [`cluster::Cluster`] records a fault timeline; when a test panics, the cluster prints the seed,
//! the timeline and the last log lines of every node, and keeps the data dirs for inspection.

pub mod cluster;
pub mod floor;
pub mod net;
pub mod netns;
pub mod procfs;
pub mod scenarios;
pub mod seed;
pub mod tabs;

pub use cluster::Cluster;
pub use seed::chaos_seed;
pub use streamhub_testkit::{
    api, binary, camera, encoder, hls, node, poll, ports, prom, publisher, require, timeline,
    webhook, whep,
};
pub use streamhub_testkit::{
    Api, Join, Node, NodeConfig, Publisher, Reply, Role, Timeline, ADMIN_PASS, ADMIN_USER,
};
