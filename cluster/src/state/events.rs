//! Events and webhooks: every app's event log (the replicated outbox) and its webhook
//! endpoints with their delivery cursors and delivery log.
//!
//! An event is appended by [`super::ClusterState::apply`] while it applies the command that
//! caused it, so an event exists exactly when its change does. Each event has a cluster-wide
//! number (`evt_<n>`), and, when it concerns a room, that room's sequence number. The log keeps
//! the last [`MAX_EVENTS_PER_APP`] events of each app: an event pushed out before every
//! endpoint that wants it took it is counted in `dropped`.
//!
//! A webhook's `cursor` is the number of the last event it is done with (delivered, or given
//! up on); the origin delivering the app's webhooks reports each attempt with
//! [`Command::WebhookAttempt`](super::Command::WebhookAttempt).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use streamhub_shared::{AppName, RoomName};

use serde_json::json;

use super::{
    not_found, ClusterState, Command, CommandResponse, GoLive, Ingress, Placement, RecordingChange,
    RecordingState, RoomObject,
};

/// Events kept per app (the outbox and the `GET /events` feed).
pub const MAX_EVENTS_PER_APP: usize = 1_000;
/// Webhook endpoints per app.
pub const MAX_WEBHOOKS_PER_APP: usize = 10;
/// Delivery records kept per webhook (the newest).
pub const MAX_DELIVERIES_PER_WEBHOOK: usize = 200;
/// Redeliveries waiting per webhook.
pub const MAX_REDELIVERIES: usize = 100;
/// Rooms whose sequence numbers are kept per app (the least recently used go first).
pub const MAX_ROOM_SEQS: usize = 10_000;
/// The event types a webhook may ask for.
pub const EVENT_TYPES: &[&str] = &[
    "room.started",
    "room.ended",
    "publisher.joined",
    "publisher.left",
    "ingress.created",
    "ingress.deleted",
    "ingress.state",
    "recording.started",
    "recording.ready",
    "recording.failed",
    "room.go_live",
    "room.backstage",
    "quota.exceeded",
    "viewer.count",
];

/// How often an app that asked for `viewer.count` gets one per live room.
pub const VIEWER_COUNT_EVERY_MS: u64 = 30_000;
/// Live rooms of an app that get a `viewer.count` each period at most (the busiest), so counts
/// cannot push the other events out of the app's log.
pub const MAX_VIEWER_COUNT_ROOMS: usize = 20;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// The cluster-wide event number (the id is `evt_<n>`).
    pub n: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub app: AppName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<RoomName>,
    /// The room's sequence number (events about a room).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The node where it happened (`None`: an API call, which any origin may serve).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub created_at_ms: u64,
    pub data: serde_json::Value,
}

impl Event {
    pub fn id(&self) -> String {
        event_id(self.n)
    }

    /// The JSON body a webhook receives and `GET /events` lists.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id(),
            "type": self.kind,
            "app": self.app,
            "room": self.room,
            "seq": self.seq,
            "node": self.node,
            "createdAtMs": self.created_at_ms,
            "data": self.data,
        })
    }
}

pub fn event_id(n: u64) -> String {
    format!("evt_{n}")
}

/// The number of event id `evt_<n>`.
pub fn event_number(id: &str) -> Option<u64> {
    id.strip_prefix("evt_")?.parse().ok()
}

/// A webhook endpoint of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    pub id: String,
    pub app: AppName,
    pub url: String,
    /// Event types, or `["*"]`.
    pub events: Vec<String>,
    pub enabled: bool,
    /// The signing secret, sealed with the cluster key.
    pub secret: String,
    /// The secret before the last rotation (sealed), signing too until `previous_until_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_until_ms: Option<u64>,
    pub created_at_ms: u64,
    /// The last event number this endpoint is done with.
    #[serde(default)]
    pub cursor: u64,
    /// Events to send again (`redeliver`), in the order asked.
    #[serde(default)]
    pub redeliver: Vec<u64>,
    /// The newest delivery records, oldest first.
    #[serde(default)]
    pub deliveries: VecDeque<Delivery>,
}

impl Webhook {
    pub fn wants(&self, kind: &str) -> bool {
        self.events.iter().any(|e| e == "*" || e == kind)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Tried, not acknowledged yet; tried again at `next_attempt_at_ms`.
    Retrying,
    /// Acknowledged with a 2xx.
    Delivered,
    /// Given up (too old) or the endpoint is refused.
    Failed,
}

/// What happened to one event at one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// The event number (the delivery id is the event id).
    pub n: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_latency_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at_ms: Option<u64>,
    pub updated_at_ms: u64,
    /// The node that made the last attempt.
    pub node: String,
}

/// One attempt to deliver event `n`, as the delivering origin reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub n: u64,
    pub status: DeliveryStatus,
    #[serde(default)]
    pub http_status: Option<u16>,
    #[serde(default)]
    pub latency_ms: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub next_attempt_at_ms: Option<u64>,
    pub at_ms: u64,
    pub node: String,
    /// A redelivery asked through the API (it does not move the cursor).
    #[serde(default)]
    pub redelivery: bool,
}

/// One app's log and endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppEvents {
    pub log: VecDeque<Event>,
    #[serde(default)]
    pub webhooks: BTreeMap<String, Webhook>,
    /// Events pushed out of the log before an endpoint that wanted them took them.
    #[serde(default)]
    pub dropped: u64,
    /// Each room's last sequence number and the event number that used it (for eviction).
    #[serde(default)]
    pub room_seqs: BTreeMap<RoomName, (u64, u64)>,
}

/// Every app's events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Events {
    #[serde(default, rename = "events")]
    pub apps: BTreeMap<AppName, AppEvents>,
    /// The number of the last event.
    #[serde(default)]
    pub last_event: u64,
    /// The latest time any command carried: the time of events whose command carries none.
    #[serde(default)]
    pub clock_ms: u64,
    /// When each app last got its `viewer.count` events.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub viewer_counts_at_ms: BTreeMap<AppName, u64>,
}

/// An event about to be appended (see [`Events::push`]).
pub struct NewEvent<'a> {
    pub kind: &'static str,
    pub app: &'a AppName,
    pub room: Option<&'a RoomName>,
    pub node: Option<&'a str>,
    pub at_ms: Option<u64>,
    pub data: serde_json::Value,
}

impl Events {
    /// Moves the clock forward to `at_ms`.
    pub(super) fn tick(&mut self, at_ms: u64) {
        self.clock_ms = self.clock_ms.max(at_ms);
    }

    /// Appends an event to its app's log.
    pub(super) fn push(&mut self, e: NewEvent<'_>) {
        if let Some(at) = e.at_ms {
            self.tick(at);
        }
        self.last_event += 1;
        let n = self.last_event;
        let app = self.apps.entry(e.app.clone()).or_default();
        let seq = e.room.map(|room| {
            let entry = app.room_seqs.entry(room.clone()).or_insert((0, n));
            entry.0 += 1;
            entry.1 = n;
            entry.0
        });
        if app.room_seqs.len() > MAX_ROOM_SEQS {
            let oldest = app
                .room_seqs
                .iter()
                .min_by_key(|(_, (_, last))| *last)
                .map(|(r, _)| r.clone());
            if let Some(r) = oldest {
                app.room_seqs.remove(&r);
            }
        }
        app.log.push_back(Event {
            n,
            kind: e.kind.to_string(),
            app: e.app.clone(),
            room: e.room.cloned(),
            seq,
            node: e.node.map(str::to_string),
            created_at_ms: e.at_ms.unwrap_or(self.clock_ms),
            data: e.data,
        });
        while app.log.len() > MAX_EVENTS_PER_APP {
            let Some(old) = app.log.pop_front() else {
                break;
            };
            let lost = app
                .webhooks
                .values()
                .filter(|w| w.enabled && w.cursor < old.n && w.wants(&old.kind))
                .count() as u64;
            app.dropped += lost;
            for w in app.webhooks.values_mut() {
                w.cursor = w.cursor.max(old.n);
                w.redeliver.retain(|r| *r != old.n);
            }
        }
    }

    pub fn app(&self, app: &AppName) -> Option<&AppEvents> {
        self.apps.get(app)
    }

    pub fn webhook(&self, app: &AppName, id: &str) -> Option<&Webhook> {
        self.apps.get(app)?.webhooks.get(id)
    }

    pub(super) fn create_webhook(&mut self, w: &Webhook) -> CommandResponse {
        let last = self.last_event;
        let app = self.apps.entry(w.app.clone()).or_default();
        if app.webhooks.len() >= MAX_WEBHOOKS_PER_APP {
            return CommandResponse::Refused {
                why: format!(
                    "app {} has {MAX_WEBHOOKS_PER_APP} webhooks (the most an app may have)",
                    w.app
                ),
            };
        }
        if app.webhooks.contains_key(&w.id) {
            return super::exists(format!("webhook {}", w.id));
        }
        let mut w = w.clone();
        // An endpoint receives what happens from now on.
        w.cursor = last;
        w.deliveries.clear();
        w.redeliver.clear();
        app.webhooks.insert(w.id.clone(), w);
        CommandResponse::Ok
    }

    fn webhook_mut(&mut self, app: &AppName, id: &str) -> Result<&mut Webhook, CommandResponse> {
        self.apps
            .get_mut(app)
            .and_then(|a| a.webhooks.get_mut(id))
            .ok_or_else(|| not_found(format!("webhook {id}")))
    }

    pub(super) fn update_webhook(
        &mut self,
        app: &AppName,
        id: &str,
        change: &WebhookChange,
    ) -> CommandResponse {
        let last = self.last_event;
        let w = match self.webhook_mut(app, id) {
            Ok(w) => w,
            Err(r) => return r,
        };
        if let Some(url) = &change.url {
            w.url.clone_from(url);
        }
        if let Some(events) = &change.events {
            w.events.clone_from(events);
        }
        if let Some(enabled) = change.enabled {
            if enabled && !w.enabled {
                // Re-enabled: from now on (what happened meanwhile is in `GET /events`).
                w.cursor = last;
            }
            w.enabled = enabled;
        }
        if let Some(secret) = &change.secret {
            w.previous_secret = Some(std::mem::replace(&mut w.secret, secret.clone()));
            w.previous_until_ms = change.previous_until_ms;
        }
        CommandResponse::Ok
    }

    pub(super) fn delete_webhook(&mut self, app: &AppName, id: &str) -> CommandResponse {
        match self.apps.get_mut(app).and_then(|a| a.webhooks.remove(id)) {
            Some(_) => CommandResponse::Ok,
            None => not_found(format!("webhook {id}")),
        }
    }

    pub(super) fn redeliver(&mut self, app: &AppName, id: &str, n: u64) -> CommandResponse {
        let known = self
            .apps
            .get(app)
            .is_some_and(|a| a.log.iter().any(|e| e.n == n));
        if !known {
            return not_found(format!("event {} (no longer kept)", event_id(n)));
        }
        let w = match self.webhook_mut(app, id) {
            Ok(w) => w,
            Err(r) => return r,
        };
        if n > w.cursor {
            // Not sent yet: it comes in its turn (a redelivery must not overtake it).
            return CommandResponse::Refused {
                why: format!("{} has not been delivered yet", event_id(n)),
            };
        }
        if w.redeliver.contains(&n) {
            return CommandResponse::Ok;
        }
        if w.redeliver.len() >= MAX_REDELIVERIES {
            return CommandResponse::Refused {
                why: format!("{MAX_REDELIVERIES} redeliveries are waiting already"),
            };
        }
        w.redeliver.push(n);
        CommandResponse::Ok
    }

    /// Records an attempt; a final one moves the cursor (or ends a redelivery).
    pub(super) fn attempt(&mut self, app: &AppName, id: &str, a: &Attempt) -> CommandResponse {
        self.tick(a.at_ms);
        let Some(kind) = self
            .apps
            .get(app)
            .and_then(|x| x.log.iter().find(|e| e.n == a.n))
            .map(|e| e.kind.clone())
        else {
            return not_found(format!("event {}", event_id(a.n)));
        };
        let w = match self.webhook_mut(app, id) {
            Ok(w) => w,
            Err(r) => return r,
        };
        let done = a.status != DeliveryStatus::Retrying;
        if !a.redelivery && a.n <= w.cursor {
            // Reported twice (a deliverer that lost its turn): the first report stands.
            return CommandResponse::Ok;
        }
        if done {
            if a.redelivery {
                w.redeliver.retain(|r| *r != a.n);
            } else {
                w.cursor = a.n;
            }
        }
        let attempts = w
            .deliveries
            .iter()
            .rev()
            .find(|d| d.n == a.n)
            .map_or(0, |d| d.attempts);
        w.deliveries.retain(|d| d.n != a.n);
        w.deliveries.push_back(Delivery {
            n: a.n,
            kind,
            status: a.status,
            attempts: attempts + 1,
            last_status: a.http_status,
            last_latency_ms: a.latency_ms,
            last_error: a.error.clone(),
            next_attempt_at_ms: a.next_attempt_at_ms.filter(|_| !done),
            updated_at_ms: a.at_ms,
            node: a.node.clone(),
        });
        while w.deliveries.len() > MAX_DELIVERIES_PER_WEBHOOK {
            w.deliveries.pop_front();
        }
        CommandResponse::Ok
    }

    pub(super) fn forget_app(&mut self, app: &AppName) {
        self.apps.remove(app);
        self.viewer_counts_at_ms.remove(app);
    }

    /// The apps with an enabled webhook that names `viewer.count` (the events are opt-in: `*`
    /// alone does not ask for them).
    fn viewer_count_apps(&self) -> Vec<AppName> {
        self.apps
            .iter()
            .filter(|(_, a)| {
                a.webhooks
                    .values()
                    .any(|w| w.enabled && w.events.iter().any(|e| e == "viewer.count"))
            })
            .map(|(app, _)| app.clone())
            .collect()
    }
}

/// What [`ClusterState::apply`] needs to know of the state before a command to tell the
/// events it causes.
#[derive(Default)]
pub(super) struct Before {
    placement: Option<Placement>,
    ingress: Option<Ingress>,
    ingress_state: Option<String>,
    recording: Option<(RecordingState, bool)>,
    /// The placements a removed node held, or that a heartbeat batch ends (lease over).
    held: Vec<Placement>,
}

impl ClusterState {
    pub(super) fn before(&self, cmd: &Command) -> Before {
        let mut b = Before::default();
        match cmd {
            Command::ClaimRoom { app, room, .. } => {
                b.placement = self.placements.get(app, room).cloned();
            }
            Command::Heartbeats { at_ms, beats } => {
                let renewed: Vec<&str> = beats.iter().map(|b| b.node.as_str()).collect();
                b.held = self.placements.expiring(*at_ms, &renewed);
            }
            Command::ExpireHolder { node, at_ms } => {
                b.held = self.placements.silent(node, *at_ms);
            }
            Command::RemoveNode { name, .. } => {
                b.held = self
                    .placements
                    .rooms
                    .values()
                    .filter(|p| &p.node == name)
                    .cloned()
                    .collect();
            }
            Command::DeleteIngress { id, .. } => {
                b.ingress = self.tenants.ingresses.get(id).cloned();
            }
            Command::SetIngressStatus { id, .. } => {
                b.ingress_state = self.tenants.ingress_status.get(id).map(|s| s.state.clone());
            }
            Command::Recording { id, .. } => {
                b.recording = self
                    .recordings
                    .recordings
                    .get(id)
                    .map(|r| (r.state, r.is_settled()));
            }
            _ => {}
        }
        b
    }

    /// Appends the events `cmd` caused (it answered `r`).
    pub(super) fn emit(&mut self, cmd: &Command, r: &CommandResponse, before: Before) {
        match cmd {
            Command::Heartbeats { at_ms, .. } => {
                self.events.tick(*at_ms);
                // Rooms whose holder stopped renewing its lease (dead, frozen, cut off).
                for p in &before.held {
                    self.room_ended(&p.app, &p.room, &p.node, p.epoch, "fenced", Some(*at_ms));
                }
                return self.viewer_counts(*at_ms);
            }
            Command::WebhookAttempt { .. } => return,
            _ => {}
        }
        if let CommandResponse::Refused { why } = r {
            if let (Some(app), true) = (command_app(cmd), why.starts_with("quota:")) {
                let (room, node, at_ms) = match cmd {
                    Command::ClaimRoom {
                        room, node, at_ms, ..
                    } => (Some(room), Some(node.as_str()), Some(*at_ms)),
                    Command::SetRoomLive(g) => (Some(&g.room), None, Some(g.at_ms)),
                    _ => (None, None, None),
                };
                // A publisher retrying at its quota is told once a minute, not each time.
                let now = at_ms.unwrap_or(self.events.clock_ms);
                let repeated = self.events.app(app).is_some_and(|a| {
                    a.log.iter().rev().take(50).any(|e| {
                        e.kind == "quota.exceeded"
                            && e.data["reason"] == why.as_str()
                            && e.created_at_ms + 60_000 > now
                    })
                });
                if repeated {
                    return;
                }
                self.push(NewEvent {
                    kind: "quota.exceeded",
                    app,
                    room,
                    node,
                    at_ms,
                    data: json!({ "reason": why }),
                });
            }
            return;
        }
        let ok = matches!(r, CommandResponse::Ok | CommandResponse::Claimed { .. });
        if !ok {
            return;
        }
        match cmd {
            Command::ClaimRoom {
                app,
                room,
                node,
                at_ms,
                protocol,
                publisher,
                ..
            } => {
                let CommandResponse::Claimed { epoch } = r else {
                    return;
                };
                let at_ms = Some(*at_ms);
                match &before.placement {
                    // A renewal of its own live claim.
                    Some(p) if p.epoch == *epoch && at_ms.is_some_and(|t| p.is_live(t)) => return,
                    // Taken over from a holder whose lease ran out.
                    Some(p) => self.room_ended(app, room, &p.node, p.epoch, "fenced", at_ms),
                    None => {}
                }
                let room = Some(room);
                let node = Some(node.as_str());
                let data = json!({ "epoch": epoch });
                self.push(NewEvent {
                    kind: "room.started",
                    app,
                    room,
                    node,
                    at_ms,
                    data,
                });
                let data = json!({ "epoch": epoch, "protocol": protocol, "publisher": publisher });
                self.push(NewEvent {
                    kind: "publisher.joined",
                    app,
                    room,
                    node,
                    at_ms,
                    data,
                });
            }
            Command::ReleaseRoom {
                app,
                room,
                node,
                epoch,
                reason,
            } => {
                let reason = reason.as_deref().unwrap_or("ended");
                self.room_ended(app, room, node, *epoch, reason, None);
            }
            Command::ExpireHolder { at_ms, .. } => {
                // Declared dead: its rooms end (a publisher that comes back with it is fenced).
                for p in &before.held {
                    self.room_ended(&p.app, &p.room, &p.node, p.epoch, "fenced", Some(*at_ms));
                }
            }
            Command::RemoveNode { .. } => {
                // Its rooms end with it (their publishers are gone with the node).
                for p in &before.held {
                    self.room_ended(&p.app, &p.room, &p.node, p.epoch, "fenced", None);
                }
            }
            Command::CreateIngress(i) => self.push(NewEvent {
                kind: "ingress.created",
                app: &i.app,
                room: Some(&i.room),
                node: None,
                at_ms: Some(i.created_at_ms),
                data: json!({ "ingressId": i.id, "type": i.kind, "name": i.name }),
            }),
            Command::DeleteIngress { .. } => {
                if let Some(i) = &before.ingress {
                    self.push(NewEvent {
                        kind: "ingress.deleted",
                        app: &i.app,
                        room: Some(&i.room),
                        node: None,
                        at_ms: None,
                        data: json!({ "ingressId": i.id, "type": i.kind, "name": i.name }),
                    });
                }
            }
            Command::SetIngressStatus { id, status } => {
                if before.ingress_state.as_deref() == Some(status.state.as_str()) {
                    return;
                }
                let Some(i) = self.tenants.ingresses.get(id).cloned() else {
                    return;
                };
                self.push(NewEvent {
                    kind: "ingress.state",
                    app: &i.app,
                    room: Some(&i.room),
                    node: Some(&status.node),
                    at_ms: Some(status.since_ms),
                    data: json!({
                        "ingressId": i.id,
                        "state": status.state,
                        "error": status.last_error,
                    }),
                });
            }
            Command::Recording { id, change } => {
                let Some(rec) = self.recordings.recordings.get(id).cloned() else {
                    return;
                };
                let kind = if matches!(change, RecordingChange::Start { .. }) {
                    "recording.started"
                } else if !before.recording.is_some_and(|(_, settled)| settled) && rec.is_settled()
                {
                    match rec.state {
                        RecordingState::Failed => "recording.failed",
                        _ => "recording.ready",
                    }
                } else {
                    return;
                };
                let data = json!({
                    "recordingId": rec.id,
                    "state": rec.state,
                    "durationMs": rec.duration_ms(),
                    "bytes": rec.bytes(),
                    "reason": rec.reason,
                });
                self.push(NewEvent {
                    kind,
                    app: &rec.app,
                    room: Some(&rec.room),
                    node: None,
                    at_ms: None,
                    data,
                });
            }
            Command::SetRoomLive(g) => self.push(NewEvent {
                kind: if g.live {
                    "room.go_live"
                } else {
                    "room.backstage"
                },
                app: &g.app,
                room: Some(&g.room),
                node: None,
                at_ms: Some(g.at_ms),
                data: json!({ "hls": g.hls, "record": g.record }),
            }),
            _ => {}
        }
    }

    /// `publisher.left` (with `reason`) and `room.ended` of `app/room`, held by `node` at `epoch`.
    fn room_ended(
        &mut self,
        app: &AppName,
        room: &RoomName,
        node: &str,
        epoch: u64,
        reason: &str,
        at_ms: Option<u64>,
    ) {
        let (room, node) = (Some(room), Some(node));
        let data = json!({ "epoch": epoch, "reason": reason });
        let kind = "publisher.left";
        self.push(NewEvent {
            kind,
            app,
            room,
            node,
            at_ms,
            data,
        });
        let data = json!({ "epoch": epoch });
        let kind = "room.ended";
        self.push(NewEvent {
            kind,
            app,
            room,
            node,
            at_ms,
            data,
        });
    }

    /// `viewer.count` of each live room (the busiest [`MAX_VIEWER_COUNT_ROOMS`]) of the apps
    /// that asked for it, every [`VIEWER_COUNT_EVERY_MS`]: the viewers every node that is up
    /// reported for the room, by the holder's node.
    fn viewer_counts(&mut self, at_ms: u64) {
        for app in self.events.viewer_count_apps() {
            let last = self.events.viewer_counts_at_ms.get(&app).copied();
            if last.is_some_and(|t| at_ms < t + VIEWER_COUNT_EVERY_MS) {
                continue;
            }
            self.events.viewer_counts_at_ms.insert(app.clone(), at_ms);
            let prefix = format!("{app}/");
            let mut rooms: Vec<(Placement, u64, u32)> = self
                .placements
                .rooms
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .filter(|(_, p)| p.is_live(at_ms))
                .map(|(k, p)| {
                    let (mut viewers, mut nodes) = (0u64, 0u32);
                    for n in self.registry.nodes.values() {
                        if !crate::registry::is_up(n, at_ms) {
                            continue;
                        }
                        if let Some(v) = n.load.room_viewers.get(k.as_str()) {
                            viewers += u64::from(*v);
                            nodes += 1;
                        }
                    }
                    (p.clone(), viewers, nodes)
                })
                .collect();
            rooms.sort_by_key(|(p, v, _)| (std::cmp::Reverse(*v), p.room.clone()));
            rooms.truncate(MAX_VIEWER_COUNT_ROOMS);
            for (p, viewers, nodes) in rooms {
                self.push(NewEvent {
                    kind: "viewer.count",
                    app: &p.app,
                    room: Some(&p.room),
                    node: Some(&p.node),
                    at_ms: Some(at_ms),
                    data: json!({ "viewers": viewers, "nodes": nodes, "epoch": p.epoch }),
                });
            }
        }
    }

    /// Appends an event of an app that exists.
    fn push(&mut self, e: NewEvent<'_>) {
        if self.tenants.apps.contains_key(e.app) {
            self.events.push(e);
        }
    }
}

/// The app a command concerns, if one.
fn command_app(cmd: &Command) -> Option<&AppName> {
    match cmd {
        Command::ClaimRoom { app, .. }
        | Command::CreateRoom(RoomObject { app, .. })
        | Command::SetRoomLive(GoLive { app, .. })
        | Command::CreateIngress(Ingress { app, .. })
        | Command::Recording {
            change: RecordingChange::Start { app, .. },
            ..
        } => Some(app),
        _ => None,
    }
}

/// A change to a webhook (`None`: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookChange {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub events: Option<Vec<String>>,
    #[serde(default)]
    pub enabled: Option<bool>,
    /// A new sealed secret (rotation); the current one signs too until `previous_until_ms`.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub previous_until_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> AppName {
        AppName::new("a").unwrap()
    }

    fn hook(id: &str, events: &[&str]) -> Webhook {
        Webhook {
            id: id.into(),
            app: app(),
            url: "https://example.com/hook".into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            enabled: true,
            secret: "sealed".into(),
            previous_secret: None,
            previous_until_ms: None,
            created_at_ms: 0,
            cursor: 0,
            redeliver: Vec::new(),
            deliveries: VecDeque::new(),
        }
    }

    fn push(ev: &mut Events, kind: &'static str, room: Option<&RoomName>) {
        let app = app();
        ev.push(NewEvent {
            kind,
            app: &app,
            room,
            node: Some("o1"),
            at_ms: Some(5),
            data: serde_json::json!({}),
        });
    }

    fn attempt(n: u64, status: DeliveryStatus) -> Attempt {
        Attempt {
            n,
            status,
            http_status: Some(500),
            latency_ms: Some(3),
            error: None,
            next_attempt_at_ms: Some(99),
            at_ms: 10,
            node: "o1".into(),
            redelivery: false,
        }
    }

    #[test]
    fn rooms_have_their_own_sequence_and_ids_are_unique() {
        let mut ev = Events::default();
        let (r1, r2) = (RoomName::new("r1").unwrap(), RoomName::new("r2").unwrap());
        push(&mut ev, "room.started", Some(&r1));
        push(&mut ev, "room.started", Some(&r2));
        push(&mut ev, "room.ended", Some(&r1));
        push(&mut ev, "ingress.created", None);
        let log = &ev.app(&app()).unwrap().log;
        let seqs: Vec<_> = log.iter().map(|e| (e.n, e.seq)).collect();
        assert_eq!(
            seqs,
            [(1, Some(1)), (2, Some(1)), (3, Some(2)), (4, None)],
            "{log:?}"
        );
        assert_eq!(log[0].body()["id"], "evt_1");
        assert_eq!(event_number("evt_3"), Some(3));
    }

    #[test]
    fn a_webhook_starts_now_and_its_cursor_moves_on_final_attempts_only() {
        let mut ev = Events::default();
        push(&mut ev, "room.started", None);
        assert_eq!(ev.create_webhook(&hook("w", &["*"])), CommandResponse::Ok);
        assert_eq!(ev.webhook(&app(), "w").unwrap().cursor, 1);
        push(&mut ev, "room.ended", None);
        ev.attempt(&app(), "w", &attempt(2, DeliveryStatus::Retrying));
        ev.attempt(&app(), "w", &attempt(2, DeliveryStatus::Retrying));
        let w = ev.webhook(&app(), "w").unwrap();
        assert_eq!(w.cursor, 1);
        assert_eq!(w.deliveries.back().unwrap().attempts, 2);
        ev.attempt(&app(), "w", &attempt(2, DeliveryStatus::Delivered));
        let w = ev.webhook(&app(), "w").unwrap();
        assert_eq!(w.cursor, 2);
        let d = w.deliveries.back().unwrap();
        assert_eq!(
            (d.attempts, d.status, d.next_attempt_at_ms),
            (3, DeliveryStatus::Delivered, None)
        );
        // A late report of an event already done changes nothing.
        ev.attempt(&app(), "w", &attempt(2, DeliveryStatus::Retrying));
        assert_eq!(
            ev.webhook(&app(), "w")
                .unwrap()
                .deliveries
                .back()
                .unwrap()
                .attempts,
            3
        );
    }

    #[test]
    fn the_log_is_bounded_and_what_an_endpoint_missed_is_counted() {
        let mut ev = Events::default();
        ev.create_webhook(&hook("w", &["room.started"]));
        ev.create_webhook(&hook("off", &["*"]));
        ev.update_webhook(
            &app(),
            "off",
            &WebhookChange {
                enabled: Some(false),
                ..Default::default()
            },
        );
        for _ in 0..MAX_EVENTS_PER_APP + 5 {
            push(&mut ev, "room.started", None);
        }
        push(&mut ev, "room.ended", None);
        let a = ev.app(&app()).unwrap();
        assert_eq!(a.log.len(), MAX_EVENTS_PER_APP);
        assert_eq!(
            a.dropped, 6,
            "only the enabled endpoint's missed events count"
        );
        assert_eq!(a.webhooks["w"].cursor, 6);
    }

    #[test]
    fn redelivery_needs_a_kept_event_and_does_not_move_the_cursor() {
        let mut ev = Events::default();
        ev.create_webhook(&hook("w", &["*"]));
        push(&mut ev, "room.started", None);
        ev.attempt(&app(), "w", &attempt(1, DeliveryStatus::Delivered));
        assert!(matches!(
            ev.redeliver(&app(), "w", 7),
            CommandResponse::NotFound { .. }
        ));
        push(&mut ev, "room.ended", None);
        assert!(
            matches!(
                ev.redeliver(&app(), "w", 2),
                CommandResponse::Refused { .. }
            ),
            "a redelivery would overtake an event not sent yet"
        );
        assert_eq!(ev.redeliver(&app(), "w", 1), CommandResponse::Ok);
        let mut again = attempt(1, DeliveryStatus::Delivered);
        again.redelivery = true;
        ev.attempt(&app(), "w", &again);
        let w = ev.webhook(&app(), "w").unwrap();
        assert!(w.redeliver.is_empty());
        assert_eq!(w.cursor, 1);
        assert_eq!(w.deliveries.back().unwrap().attempts, 2);
    }

    #[test]
    fn a_room_lives_ends_when_its_lease_ran_out_and_ends_with_its_node() {
        use super::super::registry::tests::node;
        use super::super::tenants::tests::app as new_app;
        let mut s = ClusterState::default();
        s.apply(&Command::CreateApp(new_app("a")));
        s.apply(&Command::RegisterNode(node("o1", 1)));
        let claim = |at_ms| Command::ClaimRoom {
            app: app(),
            room: RoomName::new("r").unwrap(),
            node: "o1".into(),
            at_ms,
            lease_ms: 10_000,
            protocol: Some("rtmp".into()),
            publisher: Some("in_1".into()),
        };
        let kinds = |s: &ClusterState| -> Vec<String> {
            s.events
                .app(&app())
                .unwrap()
                .log
                .iter()
                .map(|e| e.kind.clone())
                .collect()
        };
        s.apply(&claim(1_000));
        s.apply(&claim(2_000));
        assert_eq!(
            kinds(&s),
            ["room.started", "publisher.joined"],
            "a renewal is silent"
        );
        // The same origin claims again after its lease ran out (its release was lost).
        s.apply(&claim(30_000));
        s.apply(&Command::RemoveNode {
            name: "o1".into(),
            at_ms: 31_000,
        });
        assert_eq!(
            kinds(&s),
            [
                "room.started",
                "publisher.joined",
                "publisher.left",
                "room.ended",
                "room.started",
                "publisher.joined",
                "publisher.left",
                "room.ended"
            ]
        );
        let seqs: Vec<_> = s
            .events
            .app(&app())
            .unwrap()
            .log
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, (1..=8).map(Some).collect::<Vec<_>>());
    }

    fn beat(node: &str, rooms: &[(&str, u32)]) -> super::super::Heartbeat {
        super::super::Heartbeat {
            node: node.into(),
            load: super::super::NodeLoad {
                room_viewers: rooms.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
                ..Default::default()
            },
            cert_fingerprint: None,
            draining: false,
            boot: 0,
        }
    }

    fn claim_by(node: &str, room: &str, at_ms: u64) -> Command {
        Command::ClaimRoom {
            app: app(),
            room: RoomName::new(room).unwrap(),
            node: node.into(),
            at_ms,
            lease_ms: 10_000,
            protocol: Some("rtmp".into()),
            publisher: None,
        }
    }

    fn events_of(s: &ClusterState) -> Vec<(String, Option<String>, serde_json::Value)> {
        s.events
            .app(&app())
            .map(|a| {
                a.log
                    .iter()
                    .map(|e| {
                        (
                            e.kind.clone(),
                            e.room.as_ref().map(|r| r.to_string()),
                            e.data.clone(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn a_heartbeat_batch_ends_the_rooms_whose_holder_stopped_renewing() {
        use super::super::registry::tests::node;
        use super::super::tenants::tests::app as new_app;
        let mut s = ClusterState::default();
        s.apply(&Command::CreateApp(new_app("a")));
        s.apply(&Command::RegisterNode(node("o1", 1)));
        s.apply(&Command::RegisterNode(node("o2", 2)));
        s.apply(&claim_by("o1", "r", 1_000));
        s.apply(&claim_by("o2", "q", 1_000));
        let started = events_of(&s).len();
        // o2 keeps beating, o1 is gone: nothing ends while o1's lease runs...
        let beats = |at_ms| Command::Heartbeats {
            at_ms,
            beats: vec![beat("o2", &[])],
        };
        s.apply(&beats(10_999));
        assert_eq!(events_of(&s).len(), started);
        // ...and its room ends, once, when the lease is over.
        s.apply(&beats(11_000));
        s.apply(&beats(13_000));
        let ended: Vec<_> = events_of(&s)[started..]
            .iter()
            .map(|(k, r, d)| (k.clone(), r.clone().unwrap(), d["reason"].clone()))
            .collect();
        assert_eq!(
            ended,
            [
                ("publisher.left".into(), "r".into(), json!("fenced")),
                ("room.ended".into(), "r".into(), serde_json::Value::Null),
            ]
        );
        let (a, r) = (app(), RoomName::new("r").unwrap());
        assert!(s.placements.get(&a, &r).is_none());
        assert!(s.placements.get(&a, &RoomName::new("q").unwrap()).is_some());
        // o1 comes back: a new claim is a new epoch and a new room.
        assert_eq!(
            s.apply(&claim_by("o1", "r", 14_000)),
            CommandResponse::Claimed { epoch: 3 }
        );
        let last: Vec<_> = events_of(&s)[started + 2..]
            .iter()
            .map(|(k, _, _)| k.clone())
            .collect();
        assert_eq!(last, ["room.started", "publisher.joined"]);
    }

    #[test]
    fn viewer_counts_are_opt_in_periodic_and_sum_the_nodes_that_are_up() {
        use super::super::registry::tests::node;
        use super::super::tenants::tests::app as new_app;
        let mut s = ClusterState::default();
        s.apply(&Command::CreateApp(new_app("a")));
        for (i, n) in ["o1", "e1", "e2"].into_iter().enumerate() {
            s.apply(&Command::RegisterNode(node(n, i as u64 + 1)));
        }
        s.apply(&claim_by("o1", "r", 1_000));
        s.apply(&Command::CreateWebhook(hook("all", &["*"])));
        let counts = |s: &ClusterState| -> Vec<(String, serde_json::Value)> {
            events_of(s)
                .into_iter()
                .filter(|(k, _, _)| k == "viewer.count")
                .map(|(_, r, d)| (r.unwrap(), d))
                .collect()
        };
        let round = |s: &mut ClusterState, at_ms: u64, beats: Vec<super::super::Heartbeat>| {
            s.apply(&Command::Heartbeats { at_ms, beats });
        };
        // e2 reported once, long ago: down by the time counts are taken.
        round(&mut s, 2_000, vec![beat("e2", &[("a/r", 50)])]);
        round(&mut s, 3_000, vec![beat("o1", &[("a/r", 1)])]);
        assert!(counts(&s).is_empty(), "`*` alone does not ask for counts");

        s.apply(&Command::CreateWebhook(hook("counts", &["viewer.count"])));
        let now = 20_000;
        round(
            &mut s,
            now,
            vec![
                beat("o1", &[("a/r", 3)]),
                beat("e1", &[("a/r", 4), ("a/gone", 9), ("b/r", 5)]),
            ],
        );
        assert_eq!(
            counts(&s),
            [(
                "r".to_string(),
                json!({"viewers": 7, "nodes": 2, "epoch": 1})
            )]
        );
        // Not again within the period...
        round(&mut s, now + 2_000, vec![beat("o1", &[("a/r", 3)])]);
        assert_eq!(counts(&s).len(), 1);
        // ...then again, with the newest reports.
        round(
            &mut s,
            now + VIEWER_COUNT_EVERY_MS,
            vec![beat("o1", &[("a/r", 2)]), beat("e1", &[("a/r", 8)])],
        );
        assert_eq!(counts(&s).len(), 2);
        assert_eq!(counts(&s)[1].1["viewers"], 10);
        let e = &s.events.app(&app()).unwrap().log;
        let last = e.back().unwrap();
        assert_eq!(last.node.as_deref(), Some("o1"));
        assert!(last.seq.is_some());
    }
}
