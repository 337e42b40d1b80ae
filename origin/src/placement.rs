//! Room placement from this origin's side: claim a room before publishing (the epoch the cluster
//! grants is the publish's fencing token), release it when the publisher ends, and fence (drop)
//! a local publisher whose room the cluster gave to someone else or whose lease could not be
//! renewed. Leases are renewed by the node's heartbeats ([`crate::heartbeat`]).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use streamhub_cluster::raft::RaftNode;
use streamhub_cluster::state::placement::DEAD_AFTER_MS;
use streamhub_cluster::state::{Command, CommandResponse};
use streamhub_shared::{AppName, RoomName};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::admission::Refusal;
use crate::credentials::unix_now_ms;
use crate::rooms::{Protocol, Rooms};

/// How long a claim lives without a heartbeat renewing it.
pub const LEASE: Duration = Duration::from_secs(10);

/// A room this node stopped publishing, to release in the placement table.
#[derive(Debug, Clone)]
pub struct Released {
    pub app: AppName,
    pub room: RoomName,
    pub epoch: u64,
    /// Why its publisher left (see `RoomObserver::room_ended`).
    pub why: &'static str,
}

/// A room held by another origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldElsewhere {
    /// The holder's node name.
    pub node: String,
    /// How long until the holder may be declared dead if it renews nothing more (zero: it may
    /// be now; see [`DEAD_AFTER_MS`]).
    pub dead_in: Duration,
}

/// What admission needs of the placement table. The real one is [`Placement`]; a test can wrap
/// it to act between the steps of an admission.
pub trait RoomClaims: Send + Sync + 'static {
    /// The node holding `app/room` under a live lease, when it is not this node (read from the
    /// local replica: no write, so a device reconnecting in a tight loop costs no log entries).
    fn holder_elsewhere(&self, app: &AppName, room: &RoomName) -> Option<HeldElsewhere>;

    /// Claims `app/room` for this node and `publisher` (its ingress id or identity) over
    /// `protocol`; the granted epoch.
    fn claim<'a>(
        &'a self,
        app: &'a AppName,
        room: &'a RoomName,
        publisher: &'a str,
        protocol: Protocol,
    ) -> BoxFuture<'a, Result<u64, Refusal>>;

    /// Gives up `app/room` at `epoch` at once (a claim that will not be used).
    fn release<'a>(&'a self, app: &'a AppName, room: &'a RoomName, epoch: u64)
        -> BoxFuture<'a, ()>;
}

/// The placement table through this origin's Raft node.
#[derive(Clone)]
pub struct Placement {
    raft: Arc<RaftNode>,
    me: String,
}

impl Placement {
    /// Placement for the node named `me`.
    pub fn new(raft: Arc<RaftNode>, me: String) -> Self {
        Self { raft, me }
    }

    /// Whether this node holds `app/room` at `epoch` under a lease that has not run out (a
    /// partitioned origin must stop once another may have claimed the room).
    pub fn still_ours(&self, app: &AppName, room: &RoomName, epoch: u64) -> bool {
        let now = unix_now_ms();
        self.raft.read(|s| {
            s.placements
                .live(app, room, now)
                .is_some_and(|p| p.node == self.me && p.epoch == epoch)
        })
    }

    /// The node holding `app/room` under a live lease, if any.
    pub fn holder(&self, app: &AppName, room: &RoomName) -> Option<String> {
        let now = unix_now_ms();
        self.raft
            .read(|s| s.placements.live(app, room, now).map(|p| p.node.clone()))
    }

    /// Drops local publishers whose placement is gone, held by another node or at another
    /// epoch; all of them when `lease_lost` (this node could not renew its leases in time).
    pub fn fence(&self, rooms: &Rooms, lease_lost: bool) {
        for (app, room, epoch) in rooms.held() {
            let current = if lease_lost {
                None
            } else {
                self.raft.read(|s| {
                    s.placements
                        .get(&app, &room)
                        .filter(|p| p.node == self.me)
                        .map(|p| p.epoch)
                })
            };
            if current != Some(epoch) && rooms.fence(&app, &room, current) {
                tracing::warn!(%app, %room, epoch, lease_lost, "room placed elsewhere: local publisher dropped");
            }
        }
    }

    /// `(app, room, epoch, until_ms)` of each local session whose room this node still holds at
    /// its epoch: its media may flow until `until_ms` (`SELF_FENCE_MS` past the lease's last
    /// renewal, as this replica shows it).
    pub fn leases(&self, rooms: &Rooms) -> Vec<(AppName, RoomName, u64, u64)> {
        let held = rooms.held();
        self.raft.read(|s| {
            held.into_iter()
                .filter_map(|(app, room, epoch)| {
                    let p = s.placements.get(&app, &room)?;
                    let until = p.self_fence_at_ms();
                    (p.node == self.me && p.epoch == epoch).then_some((app, room, epoch, until))
                })
                .collect()
        })
    }

    /// Releases the rooms this node's publishers gave up. Best effort: an unreleased room's
    /// lease simply expires.
    pub async fn run_releases(self, mut rx: mpsc::Receiver<Released>, shutdown: CancellationToken) {
        loop {
            let r = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = rx.recv() => match r { Some(r) => r, None => return },
            };
            self.end_room(&r).await;
            self.release_because(&r.app, &r.room, r.epoch, Some(r.why))
                .await;
        }
    }

    /// Marks a live room object ended when its publisher left (its state says `ended` until
    /// go-live or a new publisher).
    async fn end_room(&self, r: &Released) {
        let open = self.raft.read(|s| {
            s.tenants
                .room_object(&r.app, &r.room)
                .is_some_and(|o| o.is_open())
        });
        if !open {
            return;
        }
        let cmd = Command::EndRoom {
            app: r.app.clone(),
            room: r.room.clone(),
            node: self.me.clone(),
            epoch: r.epoch,
            at_ms: unix_now_ms(),
        };
        if let Err(e) = self.raft.write(cmd).await {
            tracing::warn!(app = %r.app, room = %r.room, error = %e, "cannot mark the room ended");
        }
    }
}

impl RoomClaims for Placement {
    fn holder_elsewhere(&self, app: &AppName, room: &RoomName) -> Option<HeldElsewhere> {
        let now = unix_now_ms();
        self.raft.read(|s| {
            let p = s.placements.live(app, room, now)?;
            (p.node != self.me).then(|| HeldElsewhere {
                node: p.node.clone(),
                dead_in: Duration::from_millis(
                    (p.renewed_ms() + DEAD_AFTER_MS).saturating_sub(now),
                ),
            })
        })
    }

    fn claim<'a>(
        &'a self,
        app: &'a AppName,
        room: &'a RoomName,
        publisher: &'a str,
        protocol: Protocol,
    ) -> BoxFuture<'a, Result<u64, Refusal>> {
        Box::pin(async move {
            let cmd = Command::ClaimRoom {
                app: app.clone(),
                room: room.clone(),
                node: self.me.clone(),
                at_ms: unix_now_ms(),
                lease_ms: LEASE.as_millis() as u64,
                protocol: Some(protocol.as_str().to_string()),
                publisher: Some(publisher.to_string()),
            };
            match self.raft.write(cmd).await {
                Ok(CommandResponse::Claimed { epoch }) => Ok(epoch),
                Ok(CommandResponse::Busy { node, .. }) => Err(Refusal::BusyElsewhere {
                    app: app.clone(),
                    room: room.clone(),
                    node,
                    retry_after_secs: DEAD_AFTER_MS.div_ceil(1000),
                }),
                // A quota the state machine enforces (publishers, live rooms).
                Ok(CommandResponse::Refused { why }) => Err(Refusal::Quota(why)),
                Ok(other) => Err(Refusal::Unavailable(format!("unexpected answer {other:?}"))),
                Err(e) => Err(Refusal::Unavailable(e.to_string())),
            }
        })
    }

    fn release<'a>(
        &'a self,
        app: &'a AppName,
        room: &'a RoomName,
        epoch: u64,
    ) -> BoxFuture<'a, ()> {
        Box::pin(self.release_because(app, room, epoch, None))
    }
}

impl Placement {
    async fn release_because(&self, app: &AppName, room: &RoomName, epoch: u64, why: Option<&str>) {
        let cmd = Command::ReleaseRoom {
            app: app.clone(),
            room: room.clone(),
            node: self.me.clone(),
            epoch,
            reason: why.map(str::to_string),
        };
        match self.raft.write(cmd).await {
            Ok(_) => tracing::debug!(%app, %room, epoch, "room released"),
            Err(e) => {
                tracing::warn!(%app, %room, error = %e, "release failed; the lease will expire")
            }
        }
    }
}
