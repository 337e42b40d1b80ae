//! The replicated state of the cluster, one module per domain: [`tenants`] (admin, apps, API
//! keys, ingresses), [`registry`] (nodes, their load and heartbeats), [`placement`] (which
//! origin holds each live room) and [`membership`] (the cluster CA, join tokens).
//! [`ClusterState::apply`] only dispatches each [`Command`] to its domain.
//!
//! Plain, deterministic code: every input (ids, secrets, hashes, timestamps) is decided by the
//! node that proposes a [`Command`], so every replica applies the same log to the same state.
//! The domains are flattened into one JSON object, so snapshots keep the layout they had when
//! this was one struct.

pub mod controls;
pub mod events;
pub mod membership;
pub mod placement;
pub mod recordings;
pub mod registry;
pub mod tenants;

use serde::{Deserialize, Serialize};
use streamhub_shared::{AppName, RoomName};

pub use controls::{
    AppSettings, GoLive, Member, MemberRole, Playback, Quotas, Role, RoleBinding, RoomObject,
    RoomState, User,
};
pub use events::{
    Attempt, Delivery, DeliveryStatus, Event, Events, Webhook, WebhookChange, EVENT_TYPES,
};
pub use membership::{ClusterCa, JoinToken, Membership, RevokedCert, JOIN_TOKEN_UNKNOWN};
pub use placement::{room_key, Placement, Placements};
pub use recordings::{
    PartState, RecordMode, Recording, RecordingChange, RecordingPart, RecordingState, Recordings,
    Storage, Uploaded,
};
pub use registry::{Heartbeat, NodeLoad, NodeRecord, NodeRole, Registry};
pub use tenants::{
    AdminUser, ApiKey, App, AppSecrets, Ingress, IngressKind, IngressStatus, Tenants,
};

use std::collections::BTreeMap;

/// A change to the replicated state: the payload of a Raft log entry.
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
    /// Spends one use of a join token for a joiner of `role`: refused if the token was minted
    /// for another role, unknown, expired or used up.
    UseJoinToken {
        hash: String,
        role: NodeRole,
        at_ms: u64,
    },
    DeleteJoinToken {
        id: String,
    },
    /// Records the cluster key's check value (first proposal wins).
    SetClusterKeyCheck {
        check: String,
    },
    /// Stores the sealed dashboard session key (first proposal wins).
    SetSessionKey {
        sealed: String,
    },
    /// Ends dashboard session `jti` (it expires at `exp`, Unix seconds; `now` prunes older).
    RevokeSession {
        jti: String,
        exp: u64,
        now: u64,
    },
    /// Changes the admin's password; sessions issued before `at_ms` end.
    SetAdminPassword {
        password_hash: String,
        at_ms: u64,
    },
    /// Gives app `name` new signing keys and key id: every token signed before is refused.
    RotateAppKeys {
        name: AppName,
        key_id: String,
        keys: AppSecrets,
    },
    /// Replaces the sealed session key: every dashboard session ends.
    RotateSessionKey {
        sealed: String,
    },
    /// Seals what a state written before sealing holds in plaintext (see `Tenants::seal`).
    SealSecrets {
        #[serde(default)]
        ca_key: Option<String>,
        #[serde(default)]
        apps: BTreeMap<AppName, AppSecrets>,
        #[serde(default)]
        ingress_urls: BTreeMap<String, String>,
    },
    /// Adds a node to the registry; refused if the name is taken.
    RegisterNode(NodeRecord),
    /// The origin pulling `id` reports a state change.
    SetIngressStatus {
        id: String,
        status: IngressStatus,
    },
    /// Forgets a node, releases the rooms it held and revokes its certificate.
    RemoveNode {
        name: String,
        #[serde(default)]
        at_ms: u64,
    },
    /// Starts (`on`) or ends the drain of node `name`: steering sends a draining node no new
    /// viewer (see [`NodeRecord::draining_since_ms`]).
    DrainNode {
        name: String,
        on: bool,
        at_ms: u64,
    },
    /// Heartbeats of one or more nodes at `at_ms`: updates their load and renews their leases.
    Heartbeats {
        at_ms: u64,
        beats: Vec<Heartbeat>,
    },
    /// The leader declares `node` dead at `at_ms`: the rooms whose lease it has not renewed for
    /// [`placement::DEAD_AFTER_MS`] end and go free before their full lease runs out (rooms it
    /// did renew since are kept: the command is decided again on every replica).
    ExpireHolder {
        node: String,
        at_ms: u64,
    },
    /// `node` claims `app/room` at `at_ms`: granted if free, already its own, or the holder's
    /// lease has expired (then with a higher epoch).
    ClaimRoom {
        app: AppName,
        room: RoomName,
        node: String,
        at_ms: u64,
        lease_ms: u64,
        /// The publisher's protocol (`rtmp`, `whip`, ...), for the `publisher.joined` event.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        protocol: Option<String>,
        /// The publisher: its ingress id or token identity.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        publisher: Option<String>,
    },
    /// `node` gives up `app/room` if it still holds it at `epoch`.
    ReleaseRoom {
        app: AppName,
        room: RoomName,
        node: String,
        epoch: u64,
        /// Why the publisher left (`ended`, `kicked`, `fenced`, `quota`), for `publisher.left`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Adds a dashboard user (refused past [`controls::MAX_USERS`]).
    CreateUser(User),
    /// Changes a user's password (ending its sessions from `at_ms`) and/or roles.
    UpdateUser {
        username: String,
        #[serde(default)]
        password_hash: Option<String>,
        #[serde(default)]
        roles: Option<Vec<RoleBinding>>,
        at_ms: u64,
    },
    DeleteUser {
        username: String,
    },
    /// Sets an app's playback mode and/or backstage default.
    SetAppSettings {
        app: AppName,
        #[serde(default)]
        playback: Option<Playback>,
        #[serde(default)]
        backstage_by_default: Option<bool>,
        #[serde(default)]
        record: Option<RecordMode>,
    },
    /// Sets (or, with `None`, removes) an app's recording storage.
    SetStorage {
        app: AppName,
        storage: Option<Storage>,
    },
    /// A change to recording `id` (see [`RecordingChange`]).
    Recording {
        id: String,
        change: RecordingChange,
    },
    /// Replaces an app's quotas.
    SetQuotas {
        app: AppName,
        quotas: Quotas,
    },
    /// Creates a room ahead of time (refused past the app's room quota).
    CreateRoom(RoomObject),
    DeleteRoom {
        app: AppName,
        room: RoomName,
    },
    /// Go-live or stop-live (refused past the app's live-room quota).
    SetRoomLive(GoLive),
    /// The publisher of a live room left (`node` holding it at `epoch`).
    EndRoom {
        app: AppName,
        room: RoomName,
        node: String,
        epoch: u64,
        at_ms: u64,
    },
    /// Adds a webhook endpoint to its app (refused past [`events::MAX_WEBHOOKS_PER_APP`]).
    CreateWebhook(Webhook),
    UpdateWebhook {
        app: AppName,
        id: String,
        change: WebhookChange,
    },
    DeleteWebhook {
        app: AppName,
        id: String,
    },
    /// Sends event `n` to webhook `id` again.
    Redeliver {
        app: AppName,
        id: String,
        n: u64,
    },
    /// The delivering origin's report of one attempt.
    WebhookAttempt {
        app: AppName,
        id: String,
        attempt: Attempt,
    },
}

impl Command {
    /// The nodes a command speaks for: a heartbeat, a room claim or a pull's status may only
    /// come from the node it names (the leader checks this for writes forwarded by other nodes).
    pub fn nodes_named(&self) -> Vec<&str> {
        match self {
            Command::Heartbeats { beats, .. } => beats.iter().map(|b| b.node.as_str()).collect(),
            Command::ClaimRoom { node, .. }
            | Command::ExpireHolder { node, .. }
            | Command::ReleaseRoom { node, .. }
            | Command::EndRoom { node, .. } => vec![node.as_str()],
            Command::SetIngressStatus { status, .. } => vec![status.node.as_str()],
            Command::WebhookAttempt { attempt, .. } => vec![attempt.node.as_str()],
            _ => Vec::new(),
        }
    }
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
    /// Nothing changed: the command is not allowed (e.g. a join token of another role).
    Refused {
        why: String,
    },
}

/// Everything the control plane replicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    #[serde(flatten)]
    pub tenants: Tenants,
    #[serde(flatten)]
    pub registry: Registry,
    #[serde(flatten)]
    pub placements: Placements,
    #[serde(flatten)]
    pub membership: Membership,
    #[serde(flatten)]
    pub recordings: Recordings,
    #[serde(flatten)]
    pub events: Events,
}

impl ClusterState {
    /// Applies one command. Deterministic: the same commands in the same order give the same state.
    /// The events a change causes are appended in the same step (see [`events`]).
    pub fn apply(&mut self, cmd: &Command) -> CommandResponse {
        let before = self.before(cmd);
        let r = self.apply_change(cmd);
        self.emit(cmd, &r, before);
        r
    }

    fn apply_change(&mut self, cmd: &Command) -> CommandResponse {
        match cmd {
            Command::BootstrapAdmin(admin) => self.tenants.bootstrap_admin(admin),
            Command::CreateApp(app) => self.tenants.create_app(app),
            Command::UpdateApp { name, display_name } => {
                self.tenants.update_app(name, display_name)
            }
            Command::DeleteApp { name } => {
                let r = self.tenants.delete_app(name);
                if r == CommandResponse::Ok {
                    self.recordings.forget_app(name);
                    self.events.forget_app(name);
                }
                r
            }
            Command::CreateApiKey(key) => self.tenants.create_api_key(key),
            Command::DeleteApiKey { id } => self.tenants.delete_api_key(id),
            Command::CreateIngress(ing) => self.tenants.create_ingress(ing),
            Command::DeleteIngress { app, id } => self.tenants.delete_ingress(app, id),
            Command::SetIngressStatus { id, status } => {
                let holder = self
                    .tenants
                    .ingresses
                    .get(id)
                    .and_then(|i| self.placements.get(&i.app, &i.room))
                    .map(|p| p.node.as_str());
                self.tenants.set_ingress_status(id, status, holder)
            }
            Command::InitCluster(ca) => self.membership.init(ca),
            Command::CreateJoinToken(t) => self.membership.add_join_token(t),
            Command::UseJoinToken { hash, role, at_ms } => {
                self.membership.use_join_token(hash, *role, *at_ms)
            }
            Command::DeleteJoinToken { id } => self.membership.delete_join_token(id),
            Command::SetClusterKeyCheck { check } => self.membership.set_key_check(check),
            Command::SetSessionKey { sealed } => self.membership.set_session_key(sealed),
            Command::RotateSessionKey { sealed } => {
                self.membership.session_key = Some(sealed.clone());
                self.membership.revoked_sessions.clear();
                CommandResponse::Ok
            }
            Command::RotateAppKeys { name, key_id, keys } => {
                self.tenants.rotate_app_keys(name, key_id, keys)
            }
            Command::RevokeSession { jti, exp, now } => {
                self.membership.revoke_session(jti, *exp, *now)
            }
            Command::SetAdminPassword {
                password_hash,
                at_ms,
            } => self.tenants.set_admin_password(password_hash, *at_ms),
            Command::SealSecrets {
                ca_key,
                apps,
                ingress_urls,
            } => {
                if let (Some(sealed), Some(ca)) = (ca_key, self.membership.cluster_ca.as_mut()) {
                    if !crate::seal::is_sealed(&ca.key_pem) {
                        ca.key_pem.clone_from(sealed);
                    }
                }
                self.tenants.seal(apps, ingress_urls);
                CommandResponse::Ok
            }
            Command::RegisterNode(n) => self.registry.register(n),
            Command::RemoveNode { name, at_ms } => match self.registry.remove(name) {
                Ok(record) => {
                    self.placements.release_all(name);
                    if let Some(fp) = &record.cert_fingerprint {
                        self.membership.revoke_cert(fp, name, *at_ms);
                    }
                    CommandResponse::Ok
                }
                Err(not_found) => not_found,
            },
            Command::DrainNode { name, on, at_ms } => self.registry.drain(name, *on, *at_ms),
            Command::Heartbeats { at_ms, beats } => {
                for beat in beats {
                    self.registry.heartbeat(*at_ms, beat);
                    self.placements.renew(&beat.node, *at_ms);
                }
                // Rooms whose holder stopped renewing end now (their events: see `emit`).
                let gone = self.placements.expire(*at_ms);
                self.end_placed_rooms(&gone, *at_ms);
                CommandResponse::Ok
            }
            Command::ExpireHolder { node, at_ms } => {
                let gone = self.placements.expire_silent(node, *at_ms);
                self.end_placed_rooms(&gone, *at_ms);
                if gone.is_empty() {
                    not_found(format!("silent rooms of {node}"))
                } else {
                    CommandResponse::Ok
                }
            }
            Command::ClaimRoom {
                app,
                room,
                node,
                at_ms,
                lease_ms,
                ..
            } => match self
                .tenants
                .claim_quota(&self.placements, app, room, node, *at_ms)
            {
                Some(refused) => refused,
                None => self.placements.claim(app, room, node, *at_ms, *lease_ms),
            },
            Command::ReleaseRoom {
                app,
                room,
                node,
                epoch,
                ..
            } => self.placements.release(app, room, node, *epoch),
            Command::CreateUser(user) => self.tenants.create_user(user),
            Command::UpdateUser {
                username,
                password_hash,
                roles,
                at_ms,
            } => self
                .tenants
                .update_user(username, password_hash, roles, *at_ms),
            Command::DeleteUser { username } => self.tenants.delete_user(username),
            Command::SetAppSettings {
                app,
                playback,
                backstage_by_default,
                record,
            } => self
                .tenants
                .set_app_settings(app, *playback, *backstage_by_default, *record),
            Command::SetStorage { app, storage } => match self.tenants.apps.get_mut(app) {
                Some(a) => {
                    a.storage.clone_from(storage);
                    CommandResponse::Ok
                }
                None => not_found(format!("app {app}")),
            },
            Command::Recording { id, change } => {
                let app = match change {
                    RecordingChange::Start { app, .. } => self.tenants.apps.get(app),
                    _ => None,
                };
                let hours = app.and_then(|a| a.quotas.recording_hours_per_month);
                self.recordings.apply(id, change, app.is_some(), hours)
            }
            Command::SetQuotas { app, quotas } => self.tenants.set_quotas(app, quotas),
            Command::CreateRoom(room) => self.tenants.create_room(room),
            Command::DeleteRoom { app, room } => self.tenants.delete_room(app, room),
            Command::SetRoomLive(change) => self.tenants.set_room_live(&self.placements, change),
            Command::EndRoom {
                app,
                room,
                node,
                epoch,
                at_ms,
            } => self
                .tenants
                .end_room(&self.placements, app, room, node, *epoch, *at_ms),
            Command::CreateWebhook(w) => {
                if !self.tenants.apps.contains_key(&w.app) {
                    return not_found(format!("app {}", w.app));
                }
                self.events.create_webhook(w)
            }
            Command::UpdateWebhook { app, id, change } => {
                self.events.update_webhook(app, id, change)
            }
            Command::DeleteWebhook { app, id } => self.events.delete_webhook(app, id),
            Command::Redeliver { app, id, n } => self.events.redeliver(app, id, *n),
            Command::WebhookAttempt { app, id, attempt } => self.events.attempt(app, id, attempt),
        }
    }
}

fn exists(what: impl Into<String>) -> CommandResponse {
    CommandResponse::Exists { what: what.into() }
}

impl ClusterState {
    /// Marks the room objects of placements that just ended (lease over, holder declared dead)
    /// ended at `at_ms`.
    fn end_placed_rooms(&mut self, gone: &[placement::Placement], at_ms: u64) {
        for p in gone {
            let _ =
                self.tenants
                    .end_room(&self.placements, &p.app, &p.room, &p.node, p.epoch, at_ms);
        }
    }
}

fn not_found(what: impl Into<String>) -> CommandResponse {
    CommandResponse::NotFound { what: what.into() }
}

#[cfg(test)]
mod tests {
    use super::tenants::tests::{app, ingress, key};
    use super::*;

    #[test]
    fn commands_that_speak_for_a_node_name_it() {
        let claim = Command::ClaimRoom {
            app: AppName::new("a").unwrap(),
            room: RoomName::new("r").unwrap(),
            node: "o2".into(),
            at_ms: 0,
            lease_ms: 1,
            protocol: None,
            publisher: None,
        };
        assert_eq!(claim.nodes_named(), ["o2"]);
        let status = Command::SetIngressStatus {
            id: "i".into(),
            status: IngressStatus {
                state: "live".into(),
                node: "o3".into(),
                last_error: None,
                since_ms: 0,
            },
        };
        assert_eq!(status.nodes_named(), ["o3"]);
        assert!(Command::CreateApp(app("a")).nodes_named().is_empty());
    }

    #[test]
    fn replay_is_deterministic() {
        let cmds = vec![
            Command::CreateApp(app("a")),
            Command::CreateApiKey(key("k1", Some("a"))),
            Command::CreateIngress(ingress("i1", "a")),
            Command::DeleteApiKey { id: "k1".into() },
        ];
        let (mut s1, mut s2) = (ClusterState::default(), ClusterState::default());
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

    #[test]
    fn the_json_layout_is_flat_as_before_the_split() {
        let mut s = ClusterState::default();
        s.apply(&Command::CreateApp(app("a")));
        s.apply(&Command::RegisterNode(registry::tests::node("o1", 1)));
        let v = serde_json::to_value(&s).unwrap();
        for key in [
            "admin",
            "apps",
            "apiKeys",
            "ingresses",
            "ingressStatus",
            "nodes",
            "placements",
            "lastEpoch",
            "clusterCa",
            "joinTokens",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        let back: ClusterState = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}
