//! Room placement from this node's side: claim a room before publishing, release it when the
//! publisher ends, renew every held lease with the node's heartbeat, and fence (drop) a local
//! publisher whose room the cluster gave to someone else or whose lease could not be renewed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use streamhub_cluster::state::{Command, CommandResponse, Heartbeat, NodeLoad};
use streamhub_shared::{AppName, RoomName};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::credentials::unix_now_ms;
use crate::node::NodeCtx;
use crate::rooms::PublishError;

/// How long a claim lives without a heartbeat renewing it.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often a node heartbeats (and so renews its leases).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// A room this node stopped publishing, to release in the placement table.
#[derive(Debug, Clone)]
pub struct Released {
    pub app: AppName,
    pub room: RoomName,
    pub epoch: u64,
}

/// Claims `app/room` for this node; the epoch is the fencing token of the publish.
pub async fn claim(ctx: &NodeCtx, app: &AppName, room: &RoomName) -> Result<u64, PublishError> {
    let cmd = Command::ClaimRoom {
        app: app.clone(),
        room: room.clone(),
        node: ctx.settings.node_name.clone(),
        at_ms: unix_now_ms(),
        lease_ms: LEASE.as_millis() as u64,
    };
    match ctx.raft.write(cmd).await {
        Ok(CommandResponse::Claimed { epoch }) => Ok(epoch),
        Ok(CommandResponse::Busy { node, .. }) => Err(PublishError::LiveElsewhere {
            app: app.clone(),
            room: room.clone(),
            node,
        }),
        Ok(other) => Err(PublishError::Unavailable(format!(
            "unexpected answer {other:?}"
        ))),
        Err(e) => Err(PublishError::Unavailable(e.to_string())),
    }
}

/// Gives up `app/room` at `epoch` at once (a claim that will not be used).
pub async fn release(ctx: &NodeCtx, app: &AppName, room: &RoomName, epoch: u64) {
    let cmd = Command::ReleaseRoom {
        app: app.clone(),
        room: room.clone(),
        node: ctx.settings.node_name.clone(),
        epoch,
    };
    if let Err(e) = ctx.raft.write(cmd).await {
        tracing::debug!(%app, %room, error = %e, "release failed; the lease will expire");
    }
}

/// Refuses a publish without a Raft write when the local replica already shows the room held
/// elsewhere under a live lease (a device reconnecting in a tight loop costs no log entries).
pub fn check_free(ctx: &NodeCtx, app: &AppName, room: &RoomName) -> Result<(), PublishError> {
    let me = &ctx.settings.node_name;
    let now = unix_now_ms();
    let holder = ctx.raft.read(|s| {
        s.placement(app, room)
            .filter(|p| &p.node != me && p.lease_until_ms > now)
            .map(|p| p.node.clone())
    });
    match holder {
        Some(node) => Err(PublishError::LiveElsewhere {
            app: app.clone(),
            room: room.clone(),
            node,
        }),
        None => Ok(()),
    }
}

/// Releases the rooms this node's publishers gave up. Best effort: an unreleased room's lease
/// simply expires.
pub async fn run_releases(
    ctx: Arc<NodeCtx>,
    mut rx: mpsc::Receiver<Released>,
    shutdown: CancellationToken,
) {
    loop {
        let r = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = rx.recv() => match r { Some(r) => r, None => return },
        };
        let cmd = Command::ReleaseRoom {
            app: r.app.clone(),
            room: r.room.clone(),
            node: ctx.settings.node_name.clone(),
            epoch: r.epoch,
        };
        match ctx.raft.write(cmd).await {
            Ok(_) => {
                tracing::debug!(app = %r.app, room = %r.room, epoch = r.epoch, "room released")
            }
            Err(e) => {
                tracing::warn!(app = %r.app, room = %r.room, error = %e, "release failed; the lease will expire")
            }
        }
    }
}

use streamhub_cluster::transport::kinds::HEARTBEAT;

/// Heartbeats collected by the leader between two flushes: one Raft entry carries every node's
/// beat (and renews every lease), whatever the number of nodes.
#[derive(Debug, Default)]
pub struct HeartbeatBatch {
    pending: std::sync::Mutex<std::collections::BTreeMap<String, NodeLoad>>,
}

impl HeartbeatBatch {
    /// Records `beat`, replacing an older one of the same node.
    pub fn add(&self, beat: Heartbeat) {
        let mut p = self.pending.lock().expect("heartbeat batch lock");
        // Bounded by the registry: only registered nodes are kept when flushed.
        if p.len() < 10_000 || p.contains_key(&beat.node) {
            p.insert(beat.node, beat.load);
        }
    }

    fn take(&self) -> Vec<Heartbeat> {
        let mut p = self.pending.lock().expect("heartbeat batch lock");
        std::mem::take(&mut *p)
            .into_iter()
            .map(|(node, load)| Heartbeat { node, load })
            .collect()
    }
}

/// Every [`HEARTBEAT_EVERY`]: sends this node's load to the leader (or, on the leader, flushes
/// the batch as one Raft entry), and fences local rooms the cluster no longer places here.
pub async fn run_heartbeats(ctx: Arc<NodeCtx>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut load = LoadSampler::new();
    let mut last_ok = Instant::now();
    let mut last_seen_beat = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let beat = Heartbeat {
            node: ctx.settings.node_name.clone(),
            load: load.sample(&ctx),
        };
        send_heartbeat(&ctx, beat).await;
        // Our lease is renewed when our own beat is committed: watch the replicated registry.
        let seen = ctx.raft.read(|s| {
            s.nodes
                .get(&ctx.settings.node_name)
                .map_or(0, |n| n.last_heartbeat_ms)
        });
        if seen > last_seen_beat {
            last_seen_beat = seen;
            last_ok = Instant::now();
        }
        fence(&ctx, last_ok.elapsed() >= LEASE);
    }
}

/// On the leader: add to the batch and flush it. Elsewhere: hand the beat to the leader.
async fn send_heartbeat(ctx: &NodeCtx, beat: Heartbeat) {
    let st = ctx.raft.status();
    if st.leader == Some(st.node_id) {
        ctx.heartbeats.add(beat);
        let beats = ctx.heartbeats.take();
        let known: Vec<Heartbeat> = ctx.raft.read(|s| {
            beats
                .into_iter()
                .filter(|b| s.nodes.contains_key(&b.node))
                .collect()
        });
        let cmd = Command::Heartbeats {
            at_ms: unix_now_ms(),
            beats: known,
        };
        if let Err(e) = ctx.raft.write(cmd).await {
            tracing::warn!(error = %e, "heartbeat batch not committed");
        }
        return;
    }
    let Some(addr) = st.leader.and_then(|l| st.nodes.get(&l).cloned()) else {
        tracing::debug!("no leader known: heartbeat skipped");
        return;
    };
    let Some(sock) = streamhub_cluster::raft::network::resolve(&addr).await else {
        return;
    };
    let body = bytes::Bytes::from(serde_json::to_vec(&beat).unwrap_or_default());
    if let Err(e) = ctx
        .raft
        .endpoint()
        .request(sock, HEARTBEAT, body, Duration::from_secs(1))
        .await
    {
        tracing::warn!(error = %e, "heartbeat not delivered to the leader");
    }
}

/// Serves [`HEARTBEAT`]: the leader batches what peers send; another origin hands the beat on
/// to the leader, so nodes that are not voters (edges) may send theirs to any origin.
pub fn register_heartbeat_service(ctx: &Arc<NodeCtx>) {
    let weak = Arc::downgrade(ctx);
    ctx.raft.endpoint().register(
        HEARTBEAT,
        streamhub_cluster::transport::service_fn(move |peer, body| {
            let ctx = weak.upgrade();
            async move {
                use streamhub_cluster::transport::RemoteError;
                let ctx =
                    ctx.ok_or_else(|| RemoteError::new("shutting_down", "node is stopping"))?;
                let beat: Heartbeat = serde_json::from_slice(&body)
                    .map_err(|e| RemoteError::new("bad_request", e.to_string()))?;
                // A node may only heartbeat for itself (its name is in its certificate); an
                // origin may hand on another node's beat.
                let from_origin = ctx.raft.read(|s| {
                    s.nodes
                        .get(&peer.name)
                        .is_some_and(|n| n.role == streamhub_cluster::state::NodeRole::Origin)
                });
                if beat.node != peer.name && !from_origin {
                    return Err(RemoteError::new("forbidden", "heartbeat for another node"));
                }
                let st = ctx.raft.status();
                if st.leader == Some(st.node_id) {
                    ctx.heartbeats.add(beat);
                    return Ok(bytes::Bytes::new());
                }
                if from_origin {
                    // Handed on by an origin that thinks we lead: do not bounce it around
                    // during an election; the sender's next beat finds the new leader.
                    return Err(RemoteError::new(
                        "not_leader",
                        "this origin is not the leader",
                    ));
                }
                let leader = st.leader.and_then(|l| st.nodes.get(&l).cloned());
                let sock = match leader {
                    Some(addr) => streamhub_cluster::raft::network::resolve(&addr).await,
                    None => None,
                };
                let Some(sock) = sock else {
                    return Err(RemoteError::new("unavailable", "no leader known"));
                };
                ctx.raft
                    .endpoint()
                    .request(sock, HEARTBEAT, body, Duration::from_secs(1))
                    .await
                    .map_err(|e| RemoteError::new("unavailable", e.to_string()))
            }
        }),
    );
}

/// Drops local publishers whose placement is gone, held by another node or at another epoch;
/// all of them when `lease_lost` (this node could not renew its leases in time).
fn fence(ctx: &NodeCtx, lease_lost: bool) {
    // Keys revoked through another origin: their publishers here stop within a heartbeat.
    // Publishers admitted by an access token (WHIP, `token:<identity>`) have no ingress.
    for id in ctx
        .rooms
        .ingress_ids()
        .into_iter()
        .filter(|id| !id.starts_with(crate::whip::TOKEN_PUBLISHER))
    {
        if ctx.raft.read(|s| !s.ingresses.contains_key(&id)) && ctx.rooms.revoke_ingress(&id) > 0 {
            tracing::info!(ingress = %id, "ingress revoked elsewhere: local publisher dropped");
        }
    }
    let me = &ctx.settings.node_name;
    for (app, room, epoch) in ctx.rooms.held() {
        let current = if lease_lost {
            None
        } else {
            ctx.raft.read(|s| {
                s.placement(&app, &room)
                    .filter(|p| &p.node == me)
                    .map(|p| p.epoch)
            })
        };
        if current != Some(epoch) && ctx.rooms.fence(&app, &room, current) {
            tracing::warn!(%app, %room, epoch, lease_lost, "room placed elsewhere: local publisher dropped");
        }
    }
}

/// Turns counters into the load a heartbeat reports.
struct LoadSampler(streamhub_edge::load::LoadSampler);

impl LoadSampler {
    fn new() -> Self {
        Self(streamhub_edge::load::LoadSampler::new())
    }

    fn sample(&mut self, ctx: &NodeCtx) -> NodeLoad {
        use std::sync::atomic::Ordering::Relaxed;
        let bytes_out = ctx.hls_stats.bytes_out.load(Relaxed)
            + ctx.mjpeg_stats.bytes_out.load(Relaxed)
            + ctx.relay_stats.bytes_out.load(Relaxed);
        let (egress_bps, cpu) = self.0.sample(bytes_out);
        let rooms = ctx.rooms.held().len() as u32;
        NodeLoad {
            rooms,
            publishers: rooms,
            viewers: 0,
            egress_bps,
            cpu,
        }
    }
}
