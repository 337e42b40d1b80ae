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

/// Serves [`HEARTBEAT`]: the leader batches what peers send.
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
                // A node may only heartbeat for itself (its name is in its certificate).
                if beat.node != peer.name {
                    return Err(RemoteError::new("forbidden", "heartbeat for another node"));
                }
                ctx.heartbeats.add(beat);
                Ok(bytes::Bytes::new())
            }
        }),
    );
}

/// Drops local publishers whose placement is gone, held by another node or at another epoch;
/// all of them when `lease_lost` (this node could not renew its leases in time).
fn fence(ctx: &NodeCtx, lease_lost: bool) {
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
struct LoadSampler {
    at: Instant,
    bytes_out: u64,
    cpu_ticks: u64,
}

impl LoadSampler {
    fn new() -> Self {
        Self {
            at: Instant::now(),
            bytes_out: 0,
            cpu_ticks: process_cpu_ticks(),
        }
    }

    fn sample(&mut self, ctx: &NodeCtx) -> NodeLoad {
        use std::sync::atomic::Ordering::Relaxed;
        let elapsed = self.at.elapsed().as_secs_f64().max(0.001);
        let bytes_out = ctx.hls_stats.bytes_out.load(Relaxed);
        let ticks = process_cpu_ticks();
        let egress_bps = (bytes_out.saturating_sub(self.bytes_out) as f64 * 8.0 / elapsed) as u64;
        // /proc ticks are 1/100 s on Linux.
        let cpu = (ticks.saturating_sub(self.cpu_ticks) as f64 / elapsed) as f32;
        self.at = Instant::now();
        self.bytes_out = bytes_out;
        self.cpu_ticks = ticks;
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

/// utime + stime of this process in clock ticks (0 where /proc is unavailable).
fn process_cpu_ticks() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the state field here.
    get(11) + get(12)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_cpu_ticks() {
        let start = super::process_cpu_ticks();
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(super::process_cpu_ticks() > start, "cpu ticks did not move");
    }
}
