//! The tenant state machine: apps, API keys, ingresses and the admin account.
//!
//! Plain, deterministic code: every input (ids, secrets, hashes, timestamps) is decided by the
//! node that proposes a [`Command`], so every replica applies the same log to the same state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use streamhub_shared::{AppName, RoomName};

/// The dashboard administrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminUser {
    pub username: String,
    /// PHC string (argon2id).
    pub password_hash: String,
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct App {
    pub name: AppName,
    pub display_name: Option<String>,
    /// Key id that goes into the `iss` claim of this app's tokens.
    pub key_id: String,
    /// HS256 secret of this app's tokens (hex).
    pub secret: String,
    pub created_at_ms: u64,
}

/// An API key; only its SHA-256 is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// When set, the key may only touch this app.
    pub app: Option<AppName>,
    /// Client addresses or CIDR ranges allowed to use the key; empty = any.
    pub allow_ips: Vec<String>,
    /// SHA-256 of the secret (hex).
    pub hash: String,
    /// First characters of the secret, to recognise it in lists.
    pub prefix: String,
    pub created_at_ms: u64,
}

/// The kind of an ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IngressKind {
    Rtmp,
    /// A WebSocket-MJPEG device key (`wsk_…`).
    Ws,
    /// A source the origin pulls (`rtsp://…`); the key is unused.
    Url,
}

/// A way into a room: for RTMP, a stream key (only its SHA-256 is stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ingress {
    pub id: String,
    pub app: AppName,
    pub room: RoomName,
    pub name: Option<String>,
    pub kind: IngressKind,
    /// SHA-256 of the stream key (hex).
    pub key_hash: String,
    pub created_at_ms: u64,
    /// For `Url` ingresses: the source to pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// For `Url` ingresses: `tcp` (RTP interleaved, the default) or `udp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
}

/// Where a pulled ingress is, as last reported by the origin pulling it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressStatus {
    /// `connecting`, `live` or `retrying`.
    pub state: String,
    /// The origin pulling it.
    pub node: String,
    pub last_error: Option<String>,
    pub since_ms: u64,
}

/// What a node does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Origin,
    Edge,
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
}

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
}

/// One node's heartbeat inside a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    pub node: String,
    pub load: NodeLoad,
}

/// Which origin holds a live room, under a lease renewed by that origin's heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    pub app: AppName,
    pub room: RoomName,
    /// Name of the origin holding the room.
    pub node: String,
    /// Grows each time the room changes hands; a node holding an older epoch has lost the room.
    pub epoch: u64,
    pub lease_ms: u64,
    pub lease_until_ms: u64,
    pub since_ms: u64,
}

/// A token that lets a new node join the cluster (only its SHA-256 is stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinToken {
    pub id: String,
    pub hash: String,
    pub expires_at_ms: u64,
    pub created_at_ms: u64,
}

/// The cluster's certificate authority, replicated so any origin can admit nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterCa {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Key of a room in the placement table.
pub fn room_key(app: &AppName, room: &RoomName) -> String {
    format!("{app}/{room}")
}

/// A change to the tenant state: the payload of a Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Sets the admin if none exists yet (first start); a second bootstrap is a no-op.
    BootstrapAdmin(AdminUser),
    CreateApp(App),
    UpdateApp {
        name: AppName,
        display_name: Option<String>,
    },
    /// Deletes the app with its ingresses and its app-scoped API keys.
    DeleteApp {
        name: AppName,
    },
    CreateApiKey(ApiKey),
    DeleteApiKey {
        id: String,
    },
    CreateIngress(Ingress),
    DeleteIngress {
        app: AppName,
        id: String,
    },
    /// Stores the cluster CA once (first start of the first origin).
    InitCluster(ClusterCa),
    CreateJoinToken(JoinToken),
    /// Adds a node to the registry; refused if the name is taken.
    RegisterNode(NodeRecord),
    /// The origin pulling `id` reports a state change.
    SetIngressStatus {
        id: String,
        status: IngressStatus,
    },
    /// Forgets a node and releases the rooms it held.
    RemoveNode {
        name: String,
    },
    /// Heartbeats of one or more nodes at `at_ms`: updates their load and renews their leases.
    Heartbeats {
        at_ms: u64,
        beats: Vec<Heartbeat>,
    },
    /// `node` claims `app/room` at `at_ms`: granted if free, already its own, or the holder's
    /// lease has expired (then with a higher epoch).
    ClaimRoom {
        app: AppName,
        room: RoomName,
        node: String,
        at_ms: u64,
        lease_ms: u64,
    },
    /// `node` gives up `app/room` if it still holds it at `epoch`.
    ReleaseRoom {
        app: AppName,
        room: RoomName,
        node: String,
        epoch: u64,
    },
}

/// The result of applying one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CommandResponse {
    Ok,
    /// Nothing changed because the thing already exists.
    Exists {
        what: String,
    },
    /// Nothing changed because the thing does not exist.
    NotFound {
        what: String,
    },
    /// A room claim was granted at this epoch.
    Claimed {
        epoch: u64,
    },
    /// A room claim was refused: another node holds a live lease.
    Busy {
        node: String,
        epoch: u64,
    },
}

/// Everything the control plane knows about tenants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantState {
    pub admin: Option<AdminUser>,
    pub apps: BTreeMap<AppName, App>,
    pub api_keys: BTreeMap<String, ApiKey>,
    pub ingresses: BTreeMap<String, Ingress>,
    #[serde(default)]
    pub cluster_ca: Option<ClusterCa>,
    #[serde(default)]
    pub join_tokens: BTreeMap<String, JoinToken>,
    /// The node registry, by node name.
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Room placement, by [`room_key`].
    #[serde(default)]
    pub placements: BTreeMap<String, Placement>,
    /// Highest placement epoch ever granted: epochs never repeat, so fencing by epoch is safe.
    #[serde(default)]
    pub last_epoch: u64,
    /// The state of pulled ingresses, by ingress id.
    #[serde(default)]
    pub ingress_status: BTreeMap<String, IngressStatus>,
}

impl TenantState {
    /// Applies one command. Deterministic: the same commands in the same order give the same state.
    pub fn apply(&mut self, cmd: &Command) -> CommandResponse {
        match cmd {
            Command::BootstrapAdmin(admin) => {
                if self.admin.is_some() {
                    return exists("admin");
                }
                self.admin = Some(admin.clone());
                CommandResponse::Ok
            }
            Command::CreateApp(app) => {
                if self.apps.contains_key(&app.name) {
                    return exists(format!("app {}", app.name));
                }
                self.apps.insert(app.name.clone(), app.clone());
                CommandResponse::Ok
            }
            Command::UpdateApp { name, display_name } => match self.apps.get_mut(name) {
                Some(app) => {
                    app.display_name = display_name.clone();
                    CommandResponse::Ok
                }
                None => not_found(format!("app {name}")),
            },
            Command::DeleteApp { name } => self.delete_app(name),
            Command::CreateApiKey(key) => {
                if let Some(app) = &key.app {
                    if !self.apps.contains_key(app) {
                        return not_found(format!("app {app}"));
                    }
                }
                if self.api_keys.contains_key(&key.id) {
                    return exists(format!("api key {}", key.id));
                }
                self.api_keys.insert(key.id.clone(), key.clone());
                CommandResponse::Ok
            }
            Command::DeleteApiKey { id } => match self.api_keys.remove(id) {
                Some(_) => CommandResponse::Ok,
                None => not_found(format!("api key {id}")),
            },
            Command::CreateIngress(ing) => {
                if !self.apps.contains_key(&ing.app) {
                    return not_found(format!("app {}", ing.app));
                }
                if self.ingresses.contains_key(&ing.id) {
                    return exists(format!("ingress {}", ing.id));
                }
                self.ingresses.insert(ing.id.clone(), ing.clone());
                CommandResponse::Ok
            }
            Command::DeleteIngress { app, id } => match self.ingresses.get(id) {
                Some(ing) if &ing.app == app => {
                    self.ingresses.remove(id);
                    self.ingress_status.remove(id);
                    CommandResponse::Ok
                }
                _ => not_found(format!("ingress {id}")),
            },
            Command::SetIngressStatus { id, status } => {
                let Some(ing) = self.ingresses.get(id) else {
                    return not_found(format!("ingress {id}"));
                };
                // Only the origin holding the room reports on its pull (a stale one may not).
                let holder = self.placement(&ing.app, &ing.room).map(|p| p.node.as_str());
                if holder != Some(status.node.as_str()) {
                    return not_found(format!("placement of {} on {}", ing.id, status.node));
                }
                self.ingress_status.insert(id.clone(), status.clone());
                CommandResponse::Ok
            }
            Command::InitCluster(ca) => {
                if self.cluster_ca.is_some() {
                    return exists("cluster CA");
                }
                self.cluster_ca = Some(ca.clone());
                CommandResponse::Ok
            }
            Command::CreateJoinToken(t) => {
                self.join_tokens
                    .retain(|_, old| old.expires_at_ms > t.created_at_ms);
                self.join_tokens.insert(t.id.clone(), t.clone());
                CommandResponse::Ok
            }
            Command::RegisterNode(n) => self.register_node(n),
            Command::RemoveNode { name } => {
                if self.nodes.remove(name).is_none() {
                    return not_found(format!("node {name}"));
                }
                self.placements.retain(|_, p| &p.node != name);
                CommandResponse::Ok
            }
            Command::Heartbeats { at_ms, beats } => {
                self.heartbeats(*at_ms, beats);
                CommandResponse::Ok
            }
            Command::ClaimRoom {
                app,
                room,
                node,
                at_ms,
                lease_ms,
            } => self.claim_room(app, room, node, *at_ms, *lease_ms),
            Command::ReleaseRoom {
                app,
                room,
                node,
                epoch,
            } => {
                let key = room_key(app, room);
                match self.placements.get(&key) {
                    Some(p) if &p.node == node && p.epoch == *epoch => {
                        self.placements.remove(&key);
                        CommandResponse::Ok
                    }
                    _ => not_found(format!("placement of {key} by {node}@{epoch}")),
                }
            }
        }
    }

    fn register_node(&mut self, n: &NodeRecord) -> CommandResponse {
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

    fn heartbeats(&mut self, at_ms: u64, beats: &[Heartbeat]) {
        for beat in beats {
            if let Some(n) = self.nodes.get_mut(&beat.node) {
                n.load = beat.load.clone();
                n.last_heartbeat_ms = n.last_heartbeat_ms.max(at_ms);
            }
            for p in self.placements.values_mut().filter(|p| p.node == beat.node) {
                p.lease_until_ms = p.lease_until_ms.max(at_ms + p.lease_ms);
            }
        }
    }

    fn claim_room(
        &mut self,
        app: &AppName,
        room: &RoomName,
        node: &str,
        at_ms: u64,
        lease_ms: u64,
    ) -> CommandResponse {
        let key = room_key(app, room);
        let epoch = match self.placements.get(&key) {
            Some(p) if p.node == node => p.epoch,
            Some(p) if p.lease_until_ms > at_ms => {
                return CommandResponse::Busy {
                    node: p.node.clone(),
                    epoch: p.epoch,
                }
            }
            _ => {
                self.last_epoch += 1;
                self.last_epoch
            }
        };
        let since_ms = match self.placements.get(&key) {
            Some(p) if p.node == node => p.since_ms,
            _ => at_ms,
        };
        self.placements.insert(
            key,
            Placement {
                app: app.clone(),
                room: room.clone(),
                node: node.to_string(),
                epoch,
                lease_ms,
                lease_until_ms: at_ms + lease_ms,
                since_ms,
            },
        );
        CommandResponse::Claimed { epoch }
    }

    /// The placement of a room, if any.
    pub fn placement(&self, app: &AppName, room: &RoomName) -> Option<&Placement> {
        self.placements.get(&room_key(app, room))
    }

    /// The join token whose secret hashes to `hash`, if it is still valid at `now_ms`.
    pub fn join_token_by_hash(&self, hash: &str, now_ms: u64) -> Option<&JoinToken> {
        self.join_tokens
            .values()
            .find(|t| t.hash == hash && t.expires_at_ms > now_ms)
    }

    fn delete_app(&mut self, name: &AppName) -> CommandResponse {
        if self.apps.remove(name).is_none() {
            return not_found(format!("app {name}"));
        }
        self.ingresses.retain(|_, i| &i.app != name);
        let ingresses = &self.ingresses;
        self.ingress_status
            .retain(|id, _| ingresses.contains_key(id));
        self.api_keys.retain(|_, k| k.app.as_ref() != Some(name));
        CommandResponse::Ok
    }

    /// The ingress whose stream key hashes to `key_hash`.
    pub fn ingress_by_key_hash(&self, key_hash: &str) -> Option<&Ingress> {
        self.ingresses.values().find(|i| i.key_hash == key_hash)
    }

    /// The API key whose secret hashes to `hash`.
    pub fn api_key_by_hash(&self, hash: &str) -> Option<&ApiKey> {
        self.api_keys.values().find(|k| k.hash == hash)
    }
}

fn exists(what: impl Into<String>) -> CommandResponse {
    CommandResponse::Exists { what: what.into() }
}

fn not_found(what: impl Into<String>) -> CommandResponse {
    CommandResponse::NotFound { what: what.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str) -> App {
        App {
            name: AppName::new(name).unwrap(),
            display_name: None,
            key_id: format!("ak_{name}"),
            secret: "00".into(),
            created_at_ms: 1,
        }
    }

    fn ingress(id: &str, app: &str) -> Ingress {
        Ingress {
            id: id.into(),
            app: AppName::new(app).unwrap(),
            room: RoomName::new("r").unwrap(),
            name: None,
            kind: IngressKind::Rtmp,
            key_hash: format!("h-{id}"),
            url: None,
            transport: None,
            created_at_ms: 1,
        }
    }

    fn key(id: &str, app: Option<&str>) -> ApiKey {
        ApiKey {
            id: id.into(),
            name: id.into(),
            app: app.map(|a| AppName::new(a).unwrap()),
            allow_ips: vec![],
            hash: format!("h-{id}"),
            prefix: "sk_x".into(),
            created_at_ms: 1,
        }
    }

    #[test]
    fn create_app_twice_is_exists() {
        let mut s = TenantState::default();
        assert_eq!(s.apply(&Command::CreateApp(app("a"))), CommandResponse::Ok);
        assert!(matches!(
            s.apply(&Command::CreateApp(app("a"))),
            CommandResponse::Exists { .. }
        ));
        assert_eq!(s.apps.len(), 1);
    }

    #[test]
    fn ingress_needs_its_app_and_delete_checks_app() {
        let mut s = TenantState::default();
        assert!(matches!(
            s.apply(&Command::CreateIngress(ingress("i1", "a"))),
            CommandResponse::NotFound { .. }
        ));
        s.apply(&Command::CreateApp(app("a")));
        s.apply(&Command::CreateApp(app("b")));
        assert_eq!(
            s.apply(&Command::CreateIngress(ingress("i1", "a"))),
            CommandResponse::Ok
        );
        assert_eq!(s.ingress_by_key_hash("h-i1").unwrap().id, "i1");
        let foreign = Command::DeleteIngress {
            app: AppName::new("b").unwrap(),
            id: "i1".into(),
        };
        assert!(matches!(
            s.apply(&foreign),
            CommandResponse::NotFound { .. }
        ));
        assert!(s.ingresses.contains_key("i1"));
    }

    #[test]
    fn delete_app_cascades() {
        let mut s = TenantState::default();
        s.apply(&Command::CreateApp(app("a")));
        s.apply(&Command::CreateApp(app("b")));
        s.apply(&Command::CreateIngress(ingress("i1", "a")));
        s.apply(&Command::CreateIngress(ingress("i2", "b")));
        s.apply(&Command::CreateApiKey(key("k1", Some("a"))));
        s.apply(&Command::CreateApiKey(key("k2", None)));
        let name = AppName::new("a").unwrap();
        assert_eq!(s.apply(&Command::DeleteApp { name }), CommandResponse::Ok);
        assert_eq!(s.ingresses.keys().collect::<Vec<_>>(), vec!["i2"]);
        assert_eq!(s.api_keys.keys().collect::<Vec<_>>(), vec!["k2"]);
    }

    #[test]
    fn bootstrap_admin_only_once() {
        let mut s = TenantState::default();
        let a = AdminUser {
            username: "admin".into(),
            password_hash: "h1".into(),
        };
        let b = AdminUser {
            username: "other".into(),
            password_hash: "h2".into(),
        };
        assert_eq!(
            s.apply(&Command::BootstrapAdmin(a.clone())),
            CommandResponse::Ok
        );
        assert!(matches!(
            s.apply(&Command::BootstrapAdmin(b)),
            CommandResponse::Exists { .. }
        ));
        assert_eq!(s.admin, Some(a));
    }

    #[test]
    fn replay_is_deterministic() {
        let cmds = vec![
            Command::CreateApp(app("a")),
            Command::CreateApiKey(key("k1", Some("a"))),
            Command::CreateIngress(ingress("i1", "a")),
            Command::DeleteApiKey { id: "k1".into() },
        ];
        let (mut s1, mut s2) = (TenantState::default(), TenantState::default());
        for c in &cmds {
            s1.apply(c);
        }
        let json = serde_json::to_string(&cmds).unwrap();
        let back: Vec<Command> = serde_json::from_str(&json).unwrap();
        for c in &back {
            s2.apply(c);
        }
        assert_eq!(s1, s2);
    }

    fn node(name: &str, id: u64) -> NodeRecord {
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
        }
    }

    fn claim(node: &str, at_ms: u64) -> Command {
        Command::ClaimRoom {
            app: AppName::new("a").unwrap(),
            room: RoomName::new("r").unwrap(),
            node: node.into(),
            at_ms,
            lease_ms: 10_000,
        }
    }

    #[test]
    fn node_names_and_ids_are_unique() {
        let mut s = TenantState::default();
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
        assert_eq!(s.nodes.len(), 1);
    }

    #[test]
    fn placement_lease_fences_and_expires() {
        let mut s = TenantState::default();
        s.apply(&Command::RegisterNode(node("x", 1)));
        s.apply(&Command::RegisterNode(node("y", 2)));
        assert_eq!(
            s.apply(&claim("x", 1_000)),
            CommandResponse::Claimed { epoch: 1 }
        );
        // Re-claim by the holder keeps the epoch.
        assert_eq!(
            s.apply(&claim("x", 2_000)),
            CommandResponse::Claimed { epoch: 1 }
        );
        // Another node is refused while the lease is live...
        assert_eq!(
            s.apply(&claim("y", 5_000)),
            CommandResponse::Busy {
                node: "x".into(),
                epoch: 1
            }
        );
        // ...heartbeats renew it...
        s.apply(&Command::Heartbeats {
            at_ms: 9_000,
            beats: vec![Heartbeat {
                node: "x".into(),
                load: NodeLoad::default(),
            }],
        });
        assert!(matches!(
            s.apply(&claim("y", 15_000)),
            CommandResponse::Busy { .. }
        ));
        assert_eq!(s.nodes["x"].last_heartbeat_ms, 9_000);
        // ...and once it expires, y takes the room with a higher epoch.
        assert_eq!(
            s.apply(&claim("y", 19_001)),
            CommandResponse::Claimed { epoch: 2 }
        );
        // x's stale release does nothing.
        let stale = Command::ReleaseRoom {
            app: AppName::new("a").unwrap(),
            room: RoomName::new("r").unwrap(),
            node: "x".into(),
            epoch: 1,
        };
        assert!(matches!(s.apply(&stale), CommandResponse::NotFound { .. }));
        assert_eq!(s.placements["a/r"].node, "y");
        // Epochs never repeat, even after a release.
        let release = Command::ReleaseRoom {
            app: AppName::new("a").unwrap(),
            room: RoomName::new("r").unwrap(),
            node: "y".into(),
            epoch: 2,
        };
        assert_eq!(s.apply(&release), CommandResponse::Ok);
        assert_eq!(
            s.apply(&claim("x", 30_000)),
            CommandResponse::Claimed { epoch: 3 }
        );
    }

    #[test]
    fn removing_a_node_releases_its_rooms() {
        let mut s = TenantState::default();
        s.apply(&Command::RegisterNode(node("x", 1)));
        s.apply(&claim("x", 1_000));
        let rm = Command::RemoveNode { name: "x".into() };
        assert_eq!(s.apply(&rm), CommandResponse::Ok);
        assert!(s.placements.is_empty());
        assert!(s.nodes.is_empty());
    }

    #[test]
    fn join_tokens_expire_and_are_pruned() {
        let mut s = TenantState::default();
        let t = |id: &str, created: u64, expires: u64| {
            Command::CreateJoinToken(JoinToken {
                id: id.into(),
                hash: format!("h{id}"),
                expires_at_ms: expires,
                created_at_ms: created,
            })
        };
        s.apply(&t("1", 0, 100));
        assert!(s.join_token_by_hash("h1", 50).is_some());
        assert!(s.join_token_by_hash("h1", 100).is_none());
        s.apply(&t("2", 200, 300));
        assert!(!s.join_tokens.contains_key("1"), "expired token pruned");
    }
}
