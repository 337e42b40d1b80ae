//! What nodes that are not Raft voters (edges) ask origins about the replicated state, over the
//! cluster transport ([`STATE_QUERY`](crate::transport::kinds::STATE_QUERY)).
//!
//! Answers come from the asked origin's replica: fresh within a heartbeat in practice, never
//! linearizable. Edges use them for placement (retried on a wrong answer) and offline token
//! checks (keys change rarely, and deleting an app also ends its rooms on the origins).

use serde::{Deserialize, Serialize};
use streamhub_shared::{AppName, RoomName};

use std::collections::BTreeMap;

use crate::state::{App, ClusterState, MemberRole, NodeRecord, Placement, Playback};

/// A question about the tenant state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "q", rename_all = "snake_case")]
pub enum StateQuery {
    /// Which origin holds `app/room`, and how to reach it.
    Placement { app: AppName, room: RoomName },
    /// The public key of `app`, to verify its EdDSA tokens offline.
    AppKey { app: AppName },
    /// The node registry, for steering.
    Nodes,
    /// Checks an access token of `app` that the asker cannot verify itself (HS256, whose
    /// secret never leaves the origins). Answered by the origin's service, not from the state.
    VerifyToken { app: AppName, token: String },
    /// Who may watch `app/room`: the app's playback mode, the room's backstage and hosts, the
    /// app's viewer quota and what each node reports of its viewers.
    RoomAccess { app: AppName, room: RoomName },
}

/// Who may watch a room, as a playback node decides it (see `streamhub_media::access`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomAccess {
    /// `token`: every playback request needs a viewer token for the room.
    pub playback: Playback,
    /// Only hosts (members with role `host`, or tokens with `canPublish`) watch.
    pub backstage: bool,
    /// Identities of the room's hosts.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The app's viewer quota.
    #[serde(default)]
    pub viewer_quota: Option<u64>,
    /// The app's viewers as each node last reported them (only with a viewer quota).
    #[serde(default)]
    pub viewers: BTreeMap<String, u64>,
}

impl RoomAccess {
    /// Who may watch `app/room` in `state`; `None` for an unknown app.
    pub fn of(state: &ClusterState, app: &AppName, room: &RoomName) -> Option<Self> {
        let record = state.tenants.apps.get(app)?;
        let object = state.tenants.room_object(app, room);
        let viewer_quota = record.quotas.viewers;
        let viewers = match viewer_quota {
            Some(_) => state
                .registry
                .nodes
                .values()
                .filter_map(|n| {
                    let v = n.load.app_viewers.get(app.as_str())?;
                    Some((n.name.clone(), u64::from(*v)))
                })
                .collect(),
            None => BTreeMap::new(),
        };
        Some(Self {
            playback: record.settings.playback,
            backstage: state.tenants.in_backstage(app, room),
            hosts: object
                .map(|o| {
                    o.members
                        .iter()
                        .filter(|m| m.role == MemberRole::Host)
                        .map(|m| m.identity.clone())
                        .collect()
                })
                .unwrap_or_default(),
            viewer_quota,
            viewers,
        })
    }
}

/// What verifies an app's EdDSA tokens: public material only (it cannot mint a token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppKey {
    pub app: AppName,
    /// Goes into the `iss` claim.
    pub key_id: String,
    /// The Ed25519 public key (base64url); `None` for an app not yet given a key pair.
    #[serde(default)]
    pub verify_key: Option<String>,
}

impl AppKey {
    /// The public key material of `app`.
    pub fn of(app: &App) -> Self {
        Self {
            app: app.name.clone(),
            key_id: app.key_id.clone(),
            verify_key: app.verify_key.clone(),
        }
    }
}

/// The answer to a [`StateQuery`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "a", rename_all = "snake_case")]
pub enum StateAnswer {
    /// The live placement (an expired lease counts as none) and the holder's record.
    Placement {
        placement: Option<Placement>,
        holder: Option<Box<NodeRecord>>,
    },
    /// The app's key, if the app exists.
    AppKey { key: Option<AppKey> },
    /// Every registered node.
    Nodes { nodes: Vec<NodeRecord> },
    /// Who may watch the room; `None` for an unknown app.
    RoomAccess { access: Option<RoomAccess> },
    /// The claims of a verified token, or why it was refused.
    Verified {
        claims: Option<streamhub_shared::auth::AccessClaims>,
        error: Option<String>,
    },
}

impl StateQuery {
    /// Answers from `state` at `now_ms`.
    pub fn answer(&self, state: &ClusterState, now_ms: u64) -> StateAnswer {
        match self {
            StateQuery::Placement { app, room } => {
                let placement = state.placements.live(app, room, now_ms).cloned();
                let holder = placement
                    .as_ref()
                    .and_then(|p| state.registry.nodes.get(&p.node))
                    .cloned()
                    .map(Box::new);
                StateAnswer::Placement { placement, holder }
            }
            StateQuery::AppKey { app } => StateAnswer::AppKey {
                key: state.tenants.apps.get(app).map(AppKey::of),
            },
            StateQuery::VerifyToken { .. } => StateAnswer::Verified {
                claims: None,
                error: Some("a token is verified with the app's secret, not the state".into()),
            },
            StateQuery::RoomAccess { app, room } => StateAnswer::RoomAccess {
                access: RoomAccess::of(state, app, room),
            },
            StateQuery::Nodes => StateAnswer::Nodes {
                nodes: state.registry.nodes.values().cloned().collect(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, NodeLoad, NodeRole};

    fn node(name: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            id: 1,
            role: NodeRole::Origin,
            region: "eu".into(),
            http_url: "http://o".into(),
            rtmp_url: None,
            cluster_addr: "127.0.0.1:1".into(),
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
    fn placement_answers_skip_expired_leases() {
        let mut s = ClusterState::default();
        s.apply(&Command::RegisterNode(node("o1")));
        let (app, room) = (AppName::new("a").unwrap(), RoomName::new("r").unwrap());
        s.apply(&Command::ClaimRoom {
            app: app.clone(),
            room: room.clone(),
            node: "o1".into(),
            at_ms: 1000,
            lease_ms: 10_000,
            protocol: None,
            publisher: None,
        });
        let q = StateQuery::Placement { app, room };
        match q.answer(&s, 5000) {
            StateAnswer::Placement {
                placement: Some(p),
                holder: Some(h),
            } => assert_eq!((p.node.as_str(), h.name.as_str()), ("o1", "o1")),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            q.answer(&s, 11_000),
            StateAnswer::Placement {
                placement: None,
                holder: None
            }
        );
        let json = serde_json::to_string(&q).unwrap();
        assert_eq!(serde_json::from_str::<StateQuery>(&json).unwrap(), q);
    }
}
