//! Heartbeats of an origin: every [`HEARTBEAT_EVERY`] its load goes to the registry (on the
//! leader, every node's beats go into one Raft entry, which also renews every lease they hold),
//! then local publishers are checked against the replicated state: credentials revoked through
//! any origin ([`Admission::revalidate`]) and rooms placed elsewhere ([`Placement::fence`]).
//!
//! Failover runs on the same beats. The leader declares a holder dead once none of its leases
//! has been renewed for `DEAD_AFTER_MS` ([`Heartbeats::run_expiry`]), which frees its rooms well
//! before their full lease ends; every origin holds its own sessions' media back once their
//! lease has not been seen renewed for `SELF_FENCE_MS`, a shorter time
//! ([`Heartbeats::run_leases`]), so a holder that is only frozen or cut off is silent before
//! anyone may take its rooms, and is fenced as soon as its replica shows the new placement.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streamhub_cluster::load::LoadSampler;
use streamhub_cluster::raft::RaftNode;
use streamhub_cluster::registry::{process_boot, HEARTBEAT_EVERY};
use streamhub_cluster::state::{Command, CommandResponse, Heartbeat, NodeLoad};
use streamhub_cluster::transport::kinds::HEARTBEAT;
use streamhub_cluster::transport::{service_fn, PeerInfo, PeerRole, RemoteError};
use streamhub_media::metrics::PlaybackStats;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::credentials::unix_now_ms;
use crate::placement::{Placement, LEASE};
use crate::rooms::Rooms;

/// How often the leader looks for holders that stopped renewing their leases.
const EXPIRY_CHECK: Duration = Duration::from_millis(250);
/// A new leader lets every live node's next heartbeat reach it before declaring any holder dead
/// (beats sent to the old leader were lost with it).
const LEADER_GRACE: Duration = Duration::from_secs(1);
/// How often this node's sessions' media leases are refreshed from the replica.
const LEASE_REFRESH: Duration = Duration::from_millis(100);

/// Heartbeats collected by the leader between two flushes: one Raft entry carries every node's
/// beat (and renews every lease), whatever the number of nodes.
#[derive(Debug, Default)]
pub struct HeartbeatBatch {
    pending: Mutex<BTreeMap<String, Heartbeat>>,
}

impl HeartbeatBatch {
    /// Records `beat`, replacing an older one of the same node.
    pub fn add(&self, beat: Heartbeat) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded by the registry: only registered nodes are kept when flushed.
        if p.len() < 10_000 || p.contains_key(&beat.node) {
            p.insert(beat.node.clone(), beat);
        }
    }

    fn take(&self) -> Vec<Heartbeat> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *p).into_values().collect()
    }
}

/// What an origin's heartbeats need.
pub struct Heartbeats {
    pub raft: Arc<RaftNode>,
    pub me: String,
    /// The fingerprint of this node's certificate, sent with its own beats.
    pub fingerprint: String,
    /// A node that is not healthy (its Raft stopped, its storage failing, no quorum) does not
    /// beat: its registry entry goes down and steering stops sending viewers to it.
    pub health: streamhub_media::node::Health,
    pub batch: HeartbeatBatch,
    pub rooms: Arc<Rooms>,
    pub admission: Arc<Admission>,
    pub placement: Placement,
    pub stats: PlaybackStats,
    /// This node's viewers per app, reported for the apps' viewer quotas.
    pub viewers: Arc<streamhub_media::access::ViewerTracker>,
}

impl Heartbeats {
    /// Every [`HEARTBEAT_EVERY`]: sends this node's load, then drops local publishers that lost
    /// their credential or their room.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
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
            let (egress_bps, cpu) = load.sample(self.stats.bytes_out());
            let rooms = self.rooms.held().len() as u32;
            let beat = Heartbeat {
                node: self.me.clone(),
                load: NodeLoad {
                    rooms,
                    publishers: rooms,
                    viewers: 0,
                    egress_bps,
                    cpu,
                    app_viewers: self.viewers.report(std::time::Instant::now()),
                    room_viewers: self.viewers.room_report(std::time::Instant::now()),
                },
                cert_fingerprint: Some(self.fingerprint.clone()),
                draining: false,
                boot: process_boot(),
            };
            // An unhealthy node does not beat for itself; as the leader it still commits the
            // beats of the others.
            self.send(self.health.is_healthy().then_some(beat)).await;
            // Our leases are renewed when our own beat is committed: watch the replicated
            // registry.
            let seen = self.raft.read(|s| {
                s.registry
                    .nodes
                    .get(&self.me)
                    .map_or(0, |n| n.last_heartbeat_ms)
            });
            if seen > last_seen_beat {
                last_seen_beat = seen;
                last_ok = Instant::now();
            }
            self.admission.revalidate();
            self.placement
                .fence(&self.rooms, last_ok.elapsed() >= LEASE);
        }
    }

    /// On the leader, every [`EXPIRY_CHECK`]: declares dead each other origin that holds a room
    /// and has not renewed its lease for `DEAD_AFTER_MS` (the command is decided again when
    /// applied, on every replica). Not in the first [`LEADER_GRACE`] of a leadership.
    pub async fn run_expiry(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(EXPIRY_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leading_since: Option<(u64, Instant)> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let st = self.raft.status();
            if st.leader != Some(st.node_id) {
                leading_since = None;
                continue;
            }
            let (term, since) = *leading_since.get_or_insert_with(|| (st.term, Instant::now()));
            if term != st.term {
                leading_since = Some((st.term, Instant::now()));
                continue;
            }
            if since.elapsed() < LEADER_GRACE {
                continue;
            }
            let now = unix_now_ms();
            let silent = self.raft.read(|s| s.placements.silent_holders(now));
            for node in silent.into_iter().filter(|n| *n != self.me) {
                let cmd = Command::ExpireHolder {
                    node: node.clone(),
                    at_ms: now,
                };
                match self.raft.write(cmd).await {
                    Ok(CommandResponse::Ok) => {
                        tracing::warn!(%node, "origin silent: declared dead, its rooms are free")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(%node, error = %e, "cannot declare a silent origin dead")
                    }
                }
            }
        }
    }

    /// Every [`LEASE_REFRESH`]: fences local sessions whose room the replica shows placed
    /// elsewhere, and lets the others' media flow until their lease as last renewed, less the
    /// self-fencing margin (enforced while the cluster has another origin to take over).
    pub async fn run_leases(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(LEASE_REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let shared = self.raft.status().nodes.len() > 1;
            self.placement.fence(&self.rooms, false);
            for (app, room, epoch, until_ms) in self.placement.leases(&self.rooms) {
                self.rooms.set_lease(&app, &room, epoch, until_ms);
            }
            self.rooms.enforce_leases(shared);
        }
    }

    /// On the leader: add to the batch and flush it. Elsewhere: hand the beat to the leader.
    async fn send(&self, beat: Option<Heartbeat>) {
        let st = self.raft.status();
        if st.leader == Some(st.node_id) {
            if let Some(beat) = beat {
                self.batch.add(beat);
            }
            let beats = self.batch.take();
            let known: Vec<Heartbeat> = self.raft.read(|s| {
                beats
                    .into_iter()
                    .filter(|b| s.registry.nodes.contains_key(&b.node))
                    .collect()
            });
            let cmd = Command::Heartbeats {
                at_ms: unix_now_ms(),
                beats: known,
            };
            if let Err(e) = self.raft.write(cmd).await {
                tracing::warn!(error = %e, "heartbeat batch not committed");
            }
            return;
        }
        let Some(beat) = beat else {
            return;
        };
        let body = bytes::Bytes::from(serde_json::to_vec(&beat).unwrap_or_default());
        if let Err(e) = self.to_leader(body).await {
            tracing::warn!(error = %e, "heartbeat not delivered to the leader");
        }
    }

    /// Sends a heartbeat body to the current leader.
    async fn to_leader(&self, body: bytes::Bytes) -> Result<bytes::Bytes, RemoteError> {
        let st = self.raft.status();
        let leader = st.leader.and_then(|l| st.nodes.get(&l).cloned());
        let sock = match leader {
            Some(addr) => streamhub_cluster::raft::network::resolve(&addr).await,
            None => None,
        };
        let sock = sock.ok_or_else(|| RemoteError::new("unavailable", "no leader known"))?;
        self.raft
            .endpoint()
            .request(sock, HEARTBEAT, body, Duration::from_secs(1))
            .await
            .map_err(|e| RemoteError::new("unavailable", e.to_string()))
    }

    /// The answer to `node`'s heartbeat: `{"draining": bool, "drainingNodes": [name]}`, whether
    /// the replicated registry has the node draining and which nodes drain (how an edge learns
    /// of an operator's drain, its own or another node's for its steering, within a beat).
    fn answer(&self, node: &str) -> bytes::Bytes {
        let (draining, nodes) = self.raft.read(|s| {
            let nodes: Vec<String> = s
                .registry
                .nodes
                .values()
                .filter(|n| n.draining_since_ms.is_some())
                .map(|n| n.name.clone())
                .collect();
            (nodes.iter().any(|n| n == node), nodes)
        });
        let answer = serde_json::json!({ "draining": draining, "drainingNodes": nodes });
        bytes::Bytes::from(answer.to_string())
    }

    /// Serves [`HEARTBEAT`]: the leader batches what peers send; another origin hands an
    /// edge's beat on to the leader, so nodes that are not voters may send theirs to any origin.
    pub fn register_service(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        self.raft.endpoint().register(
            HEARTBEAT,
            service_fn(move |peer, body| {
                let this = weak.upgrade();
                async move {
                    let this =
                        this.ok_or_else(|| RemoteError::new("shutting_down", "node is stopping"))?;
                    this.serve(&peer, body).await
                }
            }),
        );
    }

    async fn serve(
        &self,
        peer: &PeerInfo,
        body: bytes::Bytes,
    ) -> Result<bytes::Bytes, RemoteError> {
        let mut beat: Heartbeat = serde_json::from_slice(&body)
            .map_err(|e| RemoteError::new("bad_request", e.to_string()))?;
        // A node may only heartbeat for itself (its name is in its certificate); an origin may
        // hand on another node's beat, with the fingerprint it was received with.
        let from_origin = peer.role == PeerRole::Origin;
        if beat.node == peer.name {
            beat.cert_fingerprint = Some(peer.fingerprint.clone());
        } else if !from_origin {
            tracing::warn!(peer = %peer.name, named = %beat.node, "refused a heartbeat for another node");
            return Err(RemoteError::new("forbidden", "heartbeat for another node"));
        }
        let st = self.raft.status();
        if st.leader == Some(st.node_id) {
            let starts_drain = beat.draining
                && self.raft.read(|s| {
                    s.registry
                        .nodes
                        .get(&beat.node)
                        .is_some_and(|n| n.draining_since_ms.is_none())
                });
            if starts_drain {
                // A node that begins its own drain leaves steering now, not at the next flush.
                let cmd = Command::Heartbeats {
                    at_ms: unix_now_ms(),
                    beats: vec![beat.clone()],
                };
                if let Err(e) = self.raft.write(cmd).await {
                    tracing::warn!(node = %beat.node, error = %e, "drain not committed");
                }
            }
            let answer = self.answer(&beat.node);
            self.batch.add(beat);
            return Ok(answer);
        }
        if from_origin {
            // Handed on by an origin that thinks we lead: do not bounce it around during an
            // election; the sender's next beat finds the new leader.
            return Err(RemoteError::new(
                "not_leader",
                "this origin is not the leader",
            ));
        }
        let body = bytes::Bytes::from(serde_json::to_vec(&beat).unwrap_or_default());
        self.to_leader(body).await
    }
}
