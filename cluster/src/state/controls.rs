//! Tenant controls in the replicated state: dashboard users and their roles, each app's
//! playback mode and quotas, and rooms created ahead of time (backstage, go-live).
//!
//! Quotas that bound the shared state or a cluster-wide count the state itself holds (live
//! publishers and rooms, ingresses, rooms, users) are enforced here, when the command is applied:
//! every replica applies the same log, so two origins admitting at the same moment cannot both
//! pass the last slot. Counts the state does not hold (viewers) are enforced by the nodes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use streamhub_shared::{AppName, RoomName};

use super::placement::{room_key, Placements};
use super::{exists, not_found, CommandResponse, Tenants};

/// Users the state holds at most (all apps together).
pub const MAX_USERS: usize = 10_000;
/// Rooms created ahead of time per app when the app sets no `ingresses` quota.
pub const MAX_ROOMS_PER_APP: usize = 10_000;
/// Role bindings per user.
pub const MAX_BINDINGS: usize = 64;
/// Members per room object.
pub const MAX_MEMBERS: usize = 256;

/// What a user or API key may do in an app (see the policy table in `origin/src/authz.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read only.
    Viewer,
    /// Ingresses, rooms, go-live, recordings; no keys, no settings.
    Operator,
    /// Everything in the app but its users.
    Admin,
    /// Everything in the app, its users and keys included.
    Owner,
}

impl Role {
    /// The role's name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }
}

/// A role in one app, or in every app (`"*"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleBinding {
    /// The app, or `*` for every app (and the operations on the whole node).
    pub app: String,
    pub role: Role,
}

impl RoleBinding {
    /// The app-wide wildcard.
    pub const ANY_APP: &'static str = "*";

    /// Whether this binding covers `app` (`None`: an operation on the whole node, which only a
    /// `*` binding covers).
    pub fn covers(&self, app: Option<&AppName>) -> bool {
        self.app == Self::ANY_APP || app.is_some_and(|a| a.as_str() == self.app)
    }
}

/// A dashboard user other than the bootstrap administrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub username: String,
    /// PHC string (argon2id).
    pub password_hash: String,
    pub roles: Vec<RoleBinding>,
    pub created_at_ms: u64,
    /// Sessions issued before this (Unix milliseconds) are refused: set when the password or
    /// the roles change.
    #[serde(default)]
    pub sessions_after_ms: u64,
}

/// Who may play an app's rooms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Playback {
    /// Anyone with the URL (a presented token is still checked).
    #[default]
    Public,
    /// Every playback path needs a viewer token with `canSubscribe` for the room.
    Token,
}

/// An app's limits; `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Quotas {
    /// Rooms live at once (with a publisher, or opened by go-live), cluster-wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_rooms: Option<u64>,
    /// Publishers live at once, cluster-wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publishers: Option<u64>,
    /// Viewers at once over every protocol and node (enforced by the nodes from the load
    /// reports; see docs/api.md for the overshoot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub viewers: Option<u64>,
    /// Ingest bitrate of one room, in kb/s (enforced by the origin holding it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_kbps: Option<u64>,
    /// Ingresses (stream keys, device keys, pulls) and rooms created ahead of time, each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingresses: Option<u64>,
    /// Recording hours per calendar month (for recording).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_hours_per_month: Option<u64>,
}

/// What a member of a room may do there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    /// Publishes and watches while the room is in backstage.
    Host,
    /// Watches once the room is live.
    Viewer,
}

/// A member of a room: a token identity (the `sub` claim) with a role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub identity: String,
    pub role: MemberRole,
}

/// A room created ahead of time through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomObject {
    pub app: AppName,
    pub name: RoomName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// In backstage only hosts watch; go-live clears it, stop-live sets it again.
    pub backstage: bool,
    #[serde(default)]
    pub members: Vec<Member>,
    /// Hosts may publish this long before a scheduled start (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_ahead_seconds: Option<u64>,
    pub created_at_ms: u64,
    /// When it last went live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_since_ms: Option<u64>,
    /// Set when its publisher left while it was live; cleared by go-live or a new publisher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<u64>,
    /// Go-live asked for HLS (the default) or not.
    #[serde(default = "yes")]
    pub hls: bool,
    /// Go-live asked for recording.
    #[serde(default)]
    pub record: bool,
}

fn yes() -> bool {
    true
}

impl RoomObject {
    /// Whether the identity `sub` is a host of this room.
    pub fn is_host(&self, sub: &str) -> bool {
        self.members
            .iter()
            .any(|m| m.identity == sub && m.role == MemberRole::Host)
    }

    /// Whether it is open to viewers (gone live and not ended).
    pub fn is_open(&self) -> bool {
        !self.backstage && self.ended_at_ms.is_none()
    }
}

/// A room's lifecycle as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomState {
    Backstage,
    Live,
    Ended,
}

impl RoomState {
    /// The state's name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            RoomState::Backstage => "backstage",
            RoomState::Live => "live",
            RoomState::Ended => "ended",
        }
    }
}

impl Tenants {
    /// The room object of `app/room`, if one was created.
    pub fn room_object(&self, app: &AppName, room: &RoomName) -> Option<&RoomObject> {
        self.room_objects.get(&room_key(app, room))
    }

    /// Whether `app/room` is in backstage: its object says so, or it has none and the app puts
    /// new rooms in backstage by default.
    pub fn in_backstage(&self, app: &AppName, room: &RoomName) -> bool {
        match self.room_object(app, room) {
            Some(o) => o.backstage,
            None => self
                .apps
                .get(app)
                .is_some_and(|a| a.settings.backstage_by_default),
        }
    }

    /// The lifecycle state of `app/room` given whether a publisher holds it now.
    pub fn room_state(&self, app: &AppName, room: &RoomName, publishing: bool) -> RoomState {
        if self.in_backstage(app, room) {
            return RoomState::Backstage;
        }
        match self.room_object(app, room) {
            _ if publishing => RoomState::Live,
            Some(o) if o.ended_at_ms.is_some() => RoomState::Ended,
            Some(_) => RoomState::Live,
            None => RoomState::Ended,
        }
    }

    pub(super) fn create_user(&mut self, user: &User) -> CommandResponse {
        if self.users.contains_key(&user.username)
            || self
                .admin
                .as_ref()
                .is_some_and(|a| a.username == user.username)
        {
            return exists(format!("user {}", user.username));
        }
        if self.users.len() >= MAX_USERS {
            return refused(format!("quota: at most {MAX_USERS} users"));
        }
        if let Some(app) = self.unknown_app(&user.roles) {
            return not_found(format!("app {app}"));
        }
        self.users.insert(user.username.clone(), user.clone());
        CommandResponse::Ok
    }

    pub(super) fn update_user(
        &mut self,
        username: &str,
        password_hash: &Option<String>,
        roles: &Option<Vec<RoleBinding>>,
        at_ms: u64,
    ) -> CommandResponse {
        if let Some(app) = roles.as_ref().and_then(|r| self.unknown_app(r)) {
            return not_found(format!("app {app}"));
        }
        let Some(user) = self.users.get_mut(username) else {
            return not_found(format!("user {username}"));
        };
        if let Some(hash) = password_hash {
            user.password_hash.clone_from(hash);
            // A new password ends the user's other sessions; a role change takes effect on
            // the next request without it.
            user.sessions_after_ms = user.sessions_after_ms.max(at_ms);
        }
        if let Some(roles) = roles {
            user.roles.clone_from(roles);
        }
        CommandResponse::Ok
    }

    pub(super) fn delete_user(&mut self, username: &str) -> CommandResponse {
        match self.users.remove(username) {
            Some(_) => CommandResponse::Ok,
            None => not_found(format!("user {username}")),
        }
    }

    fn unknown_app(&self, roles: &[RoleBinding]) -> Option<String> {
        roles
            .iter()
            .filter(|b| b.app != RoleBinding::ANY_APP)
            .find(|b| {
                AppName::new(b.app.clone()).map_or(true, |name| !self.apps.contains_key(&name))
            })
            .map(|b| b.app.clone())
    }

    pub(super) fn set_app_settings(
        &mut self,
        name: &AppName,
        playback: Option<Playback>,
        backstage_by_default: Option<bool>,
        record: Option<super::RecordMode>,
    ) -> CommandResponse {
        let Some(app) = self.apps.get_mut(name) else {
            return not_found(format!("app {name}"));
        };
        if let Some(r) = record {
            app.settings.record = r;
        }
        if let Some(p) = playback {
            app.settings.playback = p;
        }
        if let Some(b) = backstage_by_default {
            app.settings.backstage_by_default = b;
        }
        CommandResponse::Ok
    }

    pub(super) fn set_quotas(&mut self, name: &AppName, quotas: &Quotas) -> CommandResponse {
        match self.apps.get_mut(name) {
            Some(app) => {
                app.quotas = quotas.clone();
                CommandResponse::Ok
            }
            None => not_found(format!("app {name}")),
        }
    }

    /// The ingresses of `app` now (stream keys, device keys, pulls).
    pub fn ingress_count(&self, app: &AppName) -> usize {
        self.ingresses.values().filter(|i| &i.app == app).count()
    }

    /// Refuses a new ingress of `app` past its quota.
    pub(super) fn ingress_quota(&self, app: &AppName) -> Option<CommandResponse> {
        let limit = self.apps.get(app)?.quotas.ingresses?;
        let have = self.ingress_count(app) as u64;
        (have >= limit)
            .then(|| refused(format!("quota: app {app} has {have} of {limit} ingresses")))
    }

    pub(super) fn create_room(&mut self, room: &RoomObject) -> CommandResponse {
        let Some(app) = self.apps.get(&room.app) else {
            return not_found(format!("app {}", room.app));
        };
        let key = room_key(&room.app, &room.name);
        if self.room_objects.contains_key(&key) {
            return exists(format!("room {key}"));
        }
        let limit = app.quotas.ingresses.unwrap_or(MAX_ROOMS_PER_APP as u64);
        let have = self
            .room_objects
            .values()
            .filter(|r| r.app == room.app)
            .count() as u64;
        if have >= limit {
            return refused(format!(
                "quota: app {} has {have} of {limit} rooms",
                room.app
            ));
        }
        self.room_objects.insert(key, room.clone());
        CommandResponse::Ok
    }

    pub(super) fn delete_room(&mut self, app: &AppName, room: &RoomName) -> CommandResponse {
        match self.room_objects.remove(&room_key(app, room)) {
            Some(_) => CommandResponse::Ok,
            None => not_found(format!("room {}", room_key(app, room))),
        }
    }

    /// Go-live (`live`) or stop-live of `app/room`; a room with no object gets one (a room
    /// made by its publisher in an app with backstage by default).
    pub(super) fn set_room_live(
        &mut self,
        placements: &Placements,
        change: &GoLive,
    ) -> CommandResponse {
        let Some(app) = self.apps.get(&change.app) else {
            return not_found(format!("app {}", change.app));
        };
        if change.live {
            let already = self.live_rooms(placements, &change.app, change.at_ms, None);
            let this_live = already.contains(&room_key(&change.app, &change.room));
            if let Some(limit) = app.quotas.live_rooms {
                if !this_live && already.len() as u64 >= limit {
                    return refused(format!(
                        "quota: app {} has {} of {limit} live rooms",
                        change.app,
                        already.len()
                    ));
                }
            }
        }
        let key = room_key(&change.app, &change.room);
        let object = self.room_objects.entry(key).or_insert_with(|| RoomObject {
            app: change.app.clone(),
            name: change.room.clone(),
            title: None,
            backstage: true,
            members: Vec::new(),
            join_ahead_seconds: None,
            created_at_ms: change.at_ms,
            live_since_ms: None,
            ended_at_ms: None,
            hls: true,
            record: false,
        });
        object.backstage = !change.live;
        object.ended_at_ms = None;
        if change.live {
            object.live_since_ms = Some(change.at_ms);
            object.hls = change.hls;
            object.record = change.record;
        }
        CommandResponse::Ok
    }

    /// The publisher of a live room object left: the room is ended (until go-live or a new
    /// publisher). Only for the holder at `epoch`, so a stale origin cannot end a room.
    pub(super) fn end_room(
        &mut self,
        placements: &Placements,
        app: &AppName,
        room: &RoomName,
        node: &str,
        epoch: u64,
        at_ms: u64,
    ) -> CommandResponse {
        let holder_ok = placements
            .get(app, room)
            .is_none_or(|p| p.node == node && p.epoch == epoch);
        match self.room_objects.get_mut(&room_key(app, room)) {
            Some(o) if holder_ok && !o.backstage => {
                o.ended_at_ms = Some(at_ms);
                CommandResponse::Ok
            }
            _ => not_found(format!("live room {}", room_key(app, room))),
        }
    }

    /// The keys of `app`'s live rooms at `now_ms`: those with a publisher and those opened by
    /// go-live (not ended), without `except`.
    pub fn live_rooms(
        &self,
        placements: &Placements,
        app: &AppName,
        now_ms: u64,
        except: Option<&str>,
    ) -> std::collections::BTreeSet<String> {
        let published = placements
            .rooms
            .iter()
            .filter(|(_, p)| &p.app == app && p.is_live(now_ms))
            .map(|(k, _)| k.clone());
        let opened = self
            .room_objects
            .iter()
            .filter(|(_, o)| &o.app == app && o.is_open())
            .map(|(k, _)| k.clone());
        published
            .chain(opened)
            .filter(|k| Some(k.as_str()) != except)
            .collect()
    }

    /// Refuses a claim of `app/room` that would go past the app's publisher or live-room quota
    /// (a claim of a room this publisher already holds is not a new one).
    pub(super) fn claim_quota(
        &self,
        placements: &Placements,
        app: &AppName,
        room: &RoomName,
        node: &str,
        at_ms: u64,
    ) -> Option<CommandResponse> {
        let quotas = &self.apps.get(app)?.quotas;
        let key = room_key(app, room);
        if placements
            .live(app, room, at_ms)
            .is_some_and(|p| p.node == node)
        {
            return None;
        }
        if let Some(limit) = quotas.publishers {
            let have = placements
                .rooms
                .iter()
                .filter(|(k, p)| &p.app == app && p.is_live(at_ms) && **k != key)
                .count() as u64;
            if have >= limit {
                return Some(refused(format!(
                    "quota: app {app} has {have} of {limit} publishers live"
                )));
            }
        }
        if let Some(limit) = quotas.live_rooms {
            let live = self.live_rooms(placements, app, at_ms, Some(&key));
            // A room opened by go-live that now gets its publisher is already counted.
            let opened = self.room_objects.get(&key).is_some_and(|o| o.is_open());
            if !opened && live.len() as u64 >= limit {
                return Some(refused(format!(
                    "quota: app {app} has {} of {limit} live rooms",
                    live.len()
                )));
            }
        }
        None
    }
}

/// A go-live or stop-live of a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GoLive {
    pub app: AppName,
    pub room: RoomName,
    /// `true` opens it to viewers, `false` returns it to backstage.
    pub live: bool,
    #[serde(default = "yes")]
    pub hls: bool,
    #[serde(default)]
    pub record: bool,
    pub at_ms: u64,
}

/// Per-app settings kept on the app record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppSettings {
    #[serde(default)]
    pub playback: Playback,
    #[serde(default)]
    pub backstage_by_default: bool,
    /// Whether every room is recorded.
    #[serde(default)]
    pub record: super::RecordMode,
}

fn refused(why: String) -> CommandResponse {
    CommandResponse::Refused { why }
}

/// The users of the state by name (for callers that want them sorted).
pub type Users = BTreeMap<String, User>;

#[cfg(test)]
mod tests {
    use super::super::tenants::tests::{app, ingress};
    use super::super::{ClusterState, Command};
    use super::*;

    fn name(s: &str) -> AppName {
        AppName::new(s).unwrap()
    }

    fn claim(room: &str, node: &str, at_ms: u64) -> Command {
        Command::ClaimRoom {
            app: name("a"),
            room: RoomName::new(room).unwrap(),
            node: node.into(),
            at_ms,
            lease_ms: 10_000,
            protocol: None,
            publisher: None,
        }
    }

    fn quotas(q: Quotas) -> Command {
        Command::SetQuotas {
            app: name("a"),
            quotas: q,
        }
    }

    #[test]
    fn a_publisher_quota_refuses_the_next_room_but_not_a_takeover_or_a_free_slot() {
        let mut s = ClusterState::default();
        s.apply(&Command::CreateApp(app("a")));
        s.apply(&quotas(Quotas {
            publishers: Some(1),
            ..Quotas::default()
        }));
        assert!(matches!(
            s.apply(&claim("r1", "o1", 0)),
            CommandResponse::Claimed { .. }
        ));
        assert!(matches!(
            s.apply(&claim("r2", "o2", 1)),
            CommandResponse::Refused { why } if why.contains("publishers")
        ));
        // The same room again (a takeover on its holder) is not a new publisher.
        assert!(matches!(
            s.apply(&claim("r1", "o1", 2)),
            CommandResponse::Claimed { .. }
        ));
        // Once the first lease ran out the slot is free.
        assert!(matches!(
            s.apply(&claim("r2", "o2", 20_000)),
            CommandResponse::Claimed { .. }
        ));
    }

    #[test]
    fn live_rooms_count_rooms_opened_by_go_live() {
        let mut s = ClusterState::default();
        s.apply(&Command::CreateApp(app("a")));
        s.apply(&quotas(Quotas {
            live_rooms: Some(1),
            ..Quotas::default()
        }));
        let go = |room: &str, live: bool| {
            Command::SetRoomLive(GoLive {
                app: name("a"),
                room: RoomName::new(room).unwrap(),
                live,
                hls: true,
                record: false,
                at_ms: 5,
            })
        };
        assert_eq!(s.apply(&go("show", true)), CommandResponse::Ok);
        // Its own publisher is not a second live room; another room is.
        assert!(matches!(
            s.apply(&claim("show", "o1", 6)),
            CommandResponse::Claimed { .. }
        ));
        assert!(matches!(
            s.apply(&claim("other", "o1", 7)),
            CommandResponse::Refused { .. }
        ));
        assert!(matches!(
            s.apply(&go("second", true)),
            CommandResponse::Refused { .. }
        ));
        assert_eq!(s.apply(&go("show", false)), CommandResponse::Ok);
        let o = s
            .tenants
            .room_object(&name("a"), &RoomName::new("show").unwrap());
        assert!(o.unwrap().backstage);
    }

    #[test]
    fn ingress_and_room_quotas_bound_the_state() {
        let mut s = ClusterState::default();
        s.apply(&Command::CreateApp(app("a")));
        s.apply(&quotas(Quotas {
            ingresses: Some(1),
            ..Quotas::default()
        }));
        assert_eq!(
            s.apply(&Command::CreateIngress(ingress("i1", "a"))),
            CommandResponse::Ok
        );
        assert!(matches!(
            s.apply(&Command::CreateIngress(ingress("i2", "a"))),
            CommandResponse::Refused { .. }
        ));
        assert_eq!(s.tenants.ingress_count(&name("a")), 1);
    }

    #[test]
    fn users_need_their_apps_and_unique_names() {
        let mut s = ClusterState::default();
        s.apply(&Command::CreateApp(app("a")));
        let user = |n: &str, app: &str| User {
            username: n.into(),
            password_hash: "h".into(),
            roles: vec![RoleBinding {
                app: app.into(),
                role: Role::Operator,
            }],
            created_at_ms: 1,
            sessions_after_ms: 0,
        };
        assert_eq!(
            s.apply(&Command::CreateUser(user("ann", "a"))),
            CommandResponse::Ok
        );
        assert!(matches!(
            s.apply(&Command::CreateUser(user("ann", "a"))),
            CommandResponse::Exists { .. }
        ));
        assert!(matches!(
            s.apply(&Command::CreateUser(user("bob", "nope"))),
            CommandResponse::NotFound { .. }
        ));
        assert_eq!(
            s.apply(&Command::CreateUser(user("cy", "*"))),
            CommandResponse::Ok
        );
        // Deleting the app drops its bindings.
        s.apply(&Command::DeleteApp { name: name("a") });
        assert!(s.tenants.users["ann"].roles.is_empty());
        assert_eq!(s.tenants.users["cy"].roles.len(), 1);
    }

    #[test]
    fn room_state_follows_backstage_publisher_and_end() {
        let mut s = ClusterState::default();
        s.apply(&Command::CreateApp(app("a")));
        let room = RoomName::new("r").unwrap();
        assert_eq!(
            s.tenants.room_state(&name("a"), &room, true),
            RoomState::Live
        );
        s.apply(&Command::SetAppSettings {
            app: name("a"),
            playback: None,
            backstage_by_default: Some(true),
            record: None,
        });
        assert_eq!(
            s.tenants.room_state(&name("a"), &room, true),
            RoomState::Backstage
        );
        s.apply(&Command::SetRoomLive(GoLive {
            app: name("a"),
            room: room.clone(),
            live: true,
            hls: true,
            record: false,
            at_ms: 1,
        }));
        assert_eq!(
            s.tenants.room_state(&name("a"), &room, false),
            RoomState::Live
        );
        s.apply(&Command::EndRoom {
            app: name("a"),
            room: room.clone(),
            node: "o1".into(),
            epoch: 1,
            at_ms: 2,
        });
        assert_eq!(
            s.tenants.room_state(&name("a"), &room, false),
            RoomState::Ended
        );
        assert_eq!(
            s.tenants.room_state(&name("a"), &room, true),
            RoomState::Live
        );
    }
}
