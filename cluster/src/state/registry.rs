//! The node registry: every origin and edge with its role, region, URLs, version, last reported
//! load and last heartbeat. Liveness and steering rules read it in [`crate::registry`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{exists, not_found, CommandResponse};

/// What a node does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Origin,
    Edge,
}

impl NodeRole {
    /// `origin` or `edge`, as in certificates, logs and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Origin => "origin",
            NodeRole::Edge => "edge",
        }
    }
}

/// Load a node reports in its heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeLoad {
    pub rooms: u32,
    pub publishers: u32,
    pub viewers: u32,
    pub egress_bps: u64,
    /// CPU use of the node's process, in percent of one core.
    pub cpu: f32,
    /// Viewers per app on this node (distinct viewers seen in the last seconds plus open
    /// streams), for the apps' viewer quotas; at most [`MAX_APPS_REPORTED`] apps.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub app_viewers: BTreeMap<String, u32>,
    /// Viewers per room on this node, by `app/room` (for `viewer.count` events); at most
    /// [`MAX_ROOMS_REPORTED`] rooms (the busiest).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub room_viewers: BTreeMap<String, u32>,
}

/// Apps a load report names at most (the busiest).
pub const MAX_APPS_REPORTED: usize = 1000;
/// Rooms a load report names at most (the busiest).
pub const MAX_ROOMS_REPORTED: usize = 1000;

impl Eq for NodeLoad {}

/// A node of the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    /// Readable, unique name (`origin-eu-1`); the certificate's CN.
    pub name: String,
    /// Numeric id used by Raft (derived from the name).
    pub id: u64,
    pub role: NodeRole,
    pub region: String,
    pub http_url: String,
    pub rtmp_url: Option<String>,
    pub cluster_addr: String,
    pub version: String,
    pub load: NodeLoad,
    pub registered_at_ms: u64,
    pub last_heartbeat_ms: u64,
    /// The fingerprint of the node's certificate (see `pki::cert_fingerprint`): recorded at
    /// admission (or from the first heartbeat of a node admitted before it was), revoked when
    /// the node is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_fingerprint: Option<String>,
    /// Since when the node drains (`POST /api/v1/cluster/nodes/:name/drain`, or its own
    /// SIGTERM): steering sends it no new viewer. Cleared by a heartbeat of another process
    /// than the one drained (the node was restarted) or by `DELETE …/drain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_since_ms: Option<u64>,
    /// The process the drain applies to ([`Heartbeat::boot`]; 0: the next one to beat).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub draining_boot: u64,
    /// The process that sent the node's last heartbeat ([`Heartbeat::boot`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub boot: u64,
}

/// One node's heartbeat inside a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    pub node: String,
    pub load: NodeLoad,
    /// The fingerprint of the certificate the beat came with, set by the origin that received
    /// it (never taken from the sender's body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_fingerprint: Option<String>,
    /// The node drains itself (it got SIGTERM).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// A random number of the sending process, the same in each of its beats (0: not said): a
    /// beat of another process than the one drained (the node restarted) ends the drain.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub boot: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The registry part of the replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registry {
    /// Every node, by name.
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeRecord>,
}

impl Registry {
    /// Adds a node; refused if its name or id is taken.
    pub(super) fn register(&mut self, n: &NodeRecord) -> CommandResponse {
        if let Some(old) = self.nodes.get(&n.name) {
            return exists(format!(
                "node {} (registered at {})",
                old.name, old.cluster_addr
            ));
        }
        if let Some(old) = self.nodes.values().find(|o| o.id == n.id) {
            return exists(format!("node id {} (used by {})", n.id, old.name));
        }
        self.nodes.insert(n.name.clone(), n.clone());
        CommandResponse::Ok
    }

    pub(super) fn remove(&mut self, name: &str) -> Result<NodeRecord, CommandResponse> {
        self.nodes
            .remove(name)
            .ok_or_else(|| not_found(format!("node {name}")))
    }

    /// Records the load and time of `beat` (a heartbeat never moves a node's time back), the
    /// certificate fingerprint of a node that has none recorded yet, and the node's drain: begun
    /// by the node itself, or over once a process started after it beats.
    pub(super) fn heartbeat(&mut self, at_ms: u64, beat: &Heartbeat) {
        if let Some(n) = self.nodes.get_mut(&beat.node) {
            n.load = beat.load.clone();
            n.last_heartbeat_ms = n.last_heartbeat_ms.max(at_ms);
            if n.cert_fingerprint.is_none() {
                n.cert_fingerprint.clone_from(&beat.cert_fingerprint);
            }
            match n.draining_since_ms {
                None if beat.draining => {
                    n.draining_since_ms = Some(at_ms);
                    n.draining_boot = beat.boot;
                }
                // Drained before the process was known: the one beating now is drained.
                Some(_) if n.draining_boot == 0 => n.draining_boot = beat.boot,
                Some(_) if !beat.draining && beat.boot != 0 && beat.boot != n.draining_boot => {
                    n.draining_since_ms = None;
                    n.draining_boot = 0;
                }
                _ => {}
            }
            if beat.boot != 0 {
                n.boot = beat.boot;
            }
        }
    }

    /// Starts (`on`) or ends the drain of node `name` at `at_ms`; an ongoing drain keeps its
    /// start.
    pub(super) fn drain(&mut self, name: &str, on: bool, at_ms: u64) -> CommandResponse {
        let Some(n) = self.nodes.get_mut(name) else {
            return not_found(format!("node {name}"));
        };
        if !on {
            n.draining_since_ms = None;
            n.draining_boot = 0;
        } else if n.draining_since_ms.is_none() {
            n.draining_since_ms = Some(at_ms);
            n.draining_boot = n.boot;
        }
        CommandResponse::Ok
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::{ClusterState, Command};
    use super::*;

    pub(crate) fn node(name: &str, id: u64) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            id,
            role: NodeRole::Origin,
            region: "eu".into(),
            http_url: format!("http://{name}"),
            rtmp_url: None,
            cluster_addr: format!("{name}:4433"),
            version: "0".into(),
            load: NodeLoad::default(),
            registered_at_ms: 0,
            last_heartbeat_ms: 0,
            cert_fingerprint: None,
            draining_since_ms: None,
            boot: 0,
            draining_boot: 0,
        }
    }

    #[test]
    fn node_names_and_ids_are_unique() {
        let mut s = ClusterState::default();
        assert_eq!(
            s.apply(&Command::RegisterNode(node("o1", 1))),
            CommandResponse::Ok
        );
        assert!(matches!(
            s.apply(&Command::RegisterNode(node("o1", 2))),
            CommandResponse::Exists { .. }
        ));
        assert!(matches!(
            s.apply(&Command::RegisterNode(node("o2", 1))),
            CommandResponse::Exists { .. }
        ));
        assert_eq!(s.registry.nodes.len(), 1);
    }

    #[test]
    fn a_drain_lasts_until_undone_or_the_node_restarts() {
        let mut s = ClusterState::default();
        s.apply(&Command::RegisterNode(node("e1", 1)));
        let beat = |draining, boot| Heartbeat {
            node: "e1".into(),
            load: NodeLoad::default(),
            cert_fingerprint: None,
            draining,
            boot,
        };
        // Process 7 runs.
        s.apply(&Command::Heartbeats {
            at_ms: 500,
            beats: vec![beat(false, 7)],
        });
        let since = |s: &ClusterState| s.registry.nodes["e1"].draining_since_ms;
        let drain = |on, at_ms| Command::DrainNode {
            name: "e1".into(),
            on,
            at_ms,
        };
        assert_eq!(s.apply(&drain(true, 1_000)), CommandResponse::Ok);
        assert_eq!(since(&s), Some(1_000));
        // Draining again keeps the start; beats of the process that was drained keep it on,
        // whatever its clock says.
        s.apply(&drain(true, 2_000));
        s.apply(&Command::Heartbeats {
            at_ms: 2_500,
            beats: vec![beat(false, 7)],
        });
        assert_eq!(since(&s), Some(1_000));
        // Another process: the node was restarted.
        s.apply(&Command::Heartbeats {
            at_ms: 3_000,
            beats: vec![beat(false, 8)],
        });
        assert_eq!(since(&s), None);
        // The node's own drain (SIGTERM), then an operator's undrain.
        s.apply(&Command::Heartbeats {
            at_ms: 4_000,
            beats: vec![beat(true, 8)],
        });
        assert_eq!(since(&s), Some(4_000));
        s.apply(&drain(false, 5_000));
        assert_eq!(since(&s), None);
        assert!(matches!(
            s.apply(&Command::DrainNode {
                name: "nobody".into(),
                on: true,
                at_ms: 1
            }),
            CommandResponse::NotFound { .. }
        ));
    }
}
