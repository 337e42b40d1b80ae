//! What an edge knows of the cluster: the origins it can ask, and its caches of what they said
//! (room placement, app keys, the node registry), all read over the cluster transport.
//!
//! Placement answers are cached for a second (a wrong one is noticed at once: the origin refuses
//! the subscription and the entry is invalidated); app keys for 30 s; the registry is refreshed
//! every couple of seconds by [`Origins::run_refresh`], which also learns new origins and saves
//! them in the data dir, so a restarted edge finds the cluster even if its `--join` origin is
//! gone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use streamhub_cluster::query::{AppKey, StateAnswer, StateQuery};
use streamhub_cluster::raft::network::resolve;
use streamhub_cluster::state::{Heartbeat, NodeRecord, NodeRole};
use streamhub_cluster::transport::{kinds, Endpoint};
use streamhub_shared::auth::{self, AccessClaims, VerifyKeys};
use streamhub_shared::{AppName, RoomName};
use tokio_util::sync::CancellationToken;

/// How long one query to one origin may take.
const QUERY_TIMEOUT: Duration = Duration::from_millis(700);
/// How long a heartbeat may take (the origin hands it on to the leader).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the registry (and the list of origins) is refreshed.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// Name of the file in the data dir that lists known origins.
const ORIGINS_FILE: &str = "origins.json";

/// The origin holding a room, and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its node name.
    pub node: String,
    /// Its cluster (QUIC) address.
    pub addr: SocketAddr,
    /// The placement epoch: a new one means a new publisher session.
    pub epoch: u64,
}

impl Holder {
    /// Whether this answer says the room moved on from `followed`: a newer claim. Epochs are
    /// granted once each and only grow, so an older one is a stale answer (an origin whose
    /// replica is behind, e.g. one back from a partition that still lists itself), never a move.
    pub fn moved_from(&self, followed: &Holder) -> bool {
        self.epoch > followed.epoch
    }
}

type RoomKey = (AppName, RoomName);

/// The origins of the cluster as seen from an edge.
pub struct Origins {
    endpoint: Endpoint,
    /// Cluster addresses of the origins to ask: a std Mutex held to copy or replace the list.
    addrs: Mutex<Vec<String>>,
    next: AtomicUsize,
    placements: moka::future::Cache<RoomKey, Option<Holder>>,
    apps: moka::future::Cache<AppName, Option<AppKey>>,
    nodes: Mutex<Arc<Vec<NodeRecord>>>,
    file: Option<PathBuf>,
    /// Placement lookups in flight (uncached): viewers asking for random room names cannot
    /// turn into a flood of queries toward the origins.
    lookups: tokio::sync::Semaphore,
    /// Origins that last failed to answer, and when: asked after the others for a while (a dead
    /// origin costs a query timeout each time it is asked first).
    failed: Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// How long an origin that failed to answer is asked after the others.
const FAILED_BACKOFF: Duration = Duration::from_secs(10);

/// Uncached placement lookups in flight at once; beyond, a lookup answers "not live" at once.
const MAX_LOOKUPS: usize = 64;

impl Origins {
    /// Origins reachable at the cluster addresses `addrs`, asked through `endpoint`; the list is
    /// saved under `data_dir` when it changes (and read from there first).
    pub fn new(endpoint: Endpoint, addrs: Vec<String>, data_dir: Option<PathBuf>) -> Arc<Self> {
        let file = data_dir.map(|d| d.join(ORIGINS_FILE));
        let saved = file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| serde_json::from_slice::<Vec<String>>(&b).ok())
            .unwrap_or_default();
        let mut known = saved.clone();
        for a in addrs {
            if !known.contains(&a) {
                known.push(a);
            }
        }
        let origins = Arc::new(Self {
            endpoint,
            addrs: Mutex::new(known.clone()),
            next: AtomicUsize::new(0),
            placements: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(1))
                .build(),
            apps: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(30))
                .build(),
            nodes: Mutex::new(Arc::new(Vec::new())),
            file,
            lookups: tokio::sync::Semaphore::new(MAX_LOOKUPS),
            failed: Mutex::default(),
        });
        // The join answer's origins must survive a restart even if the registry never changes.
        if known != saved {
            origins.save(&known);
        }
        origins
    }

    /// The cluster endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The known origins' cluster addresses.
    pub fn addrs(&self) -> Vec<String> {
        self.addrs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sends an RPC of `kind` to the known origins in turn until one answers.
    async fn ask(&self, kind: u16, body: Bytes, timeout: Duration) -> Result<Bytes, String> {
        let addrs = self.addrs();
        if addrs.is_empty() {
            return Err("no origin known".into());
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<usize> = (0..addrs.len())
            .map(|i| (start + i) % addrs.len())
            .collect();
        {
            let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
            failed.retain(|_, at| at.elapsed() < FAILED_BACKOFF);
            // Stable: the usual rotation among the healthy ones, the failed ones last.
            order.sort_by_key(|&i| failed.contains_key(&addrs[i]));
        }
        let mut last = String::new();
        for i in order {
            let addr = &addrs[i];
            let Some(sock) = resolve(addr).await else {
                last = format!("{addr}: cannot resolve");
                continue;
            };
            match self
                .endpoint
                .request(sock, kind, body.clone(), timeout)
                .await
            {
                Ok(answer) => {
                    // Stick to an origin that answers.
                    self.next.store(i, Ordering::Relaxed);
                    self.failed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(addr);
                    return Ok(answer);
                }
                Err(e) => {
                    last = format!("{addr}: {e}");
                    self.failed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(addr.clone(), std::time::Instant::now());
                }
            }
        }
        Err(last)
    }

    /// Asks any origin `q`.
    pub async fn query(&self, q: &StateQuery) -> Result<StateAnswer, String> {
        let body = Bytes::from(serde_json::to_vec(q).map_err(|e| e.to_string())?);
        let answer = self.ask(kinds::STATE_QUERY, body, QUERY_TIMEOUT).await?;
        serde_json::from_slice(&answer).map_err(|e| format!("bad answer: {e}"))
    }

    /// The origin holding `app/room`, if it is live (cached for a second, misses included).
    /// `None` also when no origin answers: the caller retries.
    pub async fn placement(&self, app: &AppName, room: &RoomName) -> Option<Holder> {
        let key = (app.clone(), room.clone());
        if let Some(cached) = self.placements.get(&key).await {
            return cached;
        }
        let Ok(_permit) = self.lookups.try_acquire() else {
            tracing::debug!(%app, %room, "too many placement lookups in flight");
            return None;
        };
        let lookup = async {
            let q = StateQuery::Placement {
                app: app.clone(),
                room: room.clone(),
            };
            match self.query(&q).await {
                Ok(StateAnswer::Placement {
                    placement: Some(p),
                    holder: Some(h),
                }) => Ok(resolve(&h.cluster_addr).await.map(|addr| Holder {
                    node: p.node,
                    addr,
                    epoch: p.epoch,
                })),
                Ok(_) => Ok(None),
                Err(e) => Err(e),
            }
        };
        // Failures are not cached: the next viewer asks again.
        match self.placements.try_get_with(key, lookup).await {
            Ok(holder) => holder,
            Err(e) => {
                tracing::debug!(%app, %room, error = %e, "placement lookup failed");
                None
            }
        }
    }

    /// Forgets the cached placement of `app/room` (the origin said it is not there).
    pub async fn invalidate_placement(&self, app: &AppName, room: &RoomName) {
        self.placements
            .invalidate(&(app.clone(), room.clone()))
            .await;
    }

    /// The claims of a valid token of `app`: an EdDSA token is verified here with the app's
    /// public key; an HS256 (LiveKit) token, whose secret only origins hold, by an origin.
    pub async fn verify_token(&self, app: &AppName, token: &str) -> Result<AccessClaims, String> {
        match auth::algorithm(token) {
            Some(auth::Algorithm::HS256) => self.verify_at_origin(app, token).await,
            _ => {
                let key = self
                    .app_key(app)
                    .await
                    .ok_or_else(|| format!("unknown app {app}"))?;
                auth::verify_any(
                    token,
                    &key.key_id,
                    VerifyKeys {
                        eddsa: key.verify_key.as_deref(),
                        hs256: None,
                    },
                )
                .map_err(|e| e.to_string())
            }
        }
    }

    async fn verify_at_origin(&self, app: &AppName, token: &str) -> Result<AccessClaims, String> {
        // Shares the bound of placement lookups: random tokens cannot flood the origins.
        let _permit = self
            .lookups
            .try_acquire()
            .map_err(|_| "too many token checks in flight; retry".to_string())?;
        let q = StateQuery::VerifyToken {
            app: app.clone(),
            token: token.to_string(),
        };
        match self.query(&q).await? {
            StateAnswer::Verified {
                claims: Some(claims),
                ..
            } => Ok(claims),
            StateAnswer::Verified { error, .. } => {
                Err(error.unwrap_or_else(|| "refused by the origin".into()))
            }
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// Who may watch `app/room` (the caller remembers it; see `streamhub_media::access`).
    /// Shares the bound of placement lookups: random room names cannot flood the origins.
    pub async fn room_access(
        &self,
        app: &AppName,
        room: &RoomName,
    ) -> Result<Option<Arc<streamhub_cluster::query::RoomAccess>>, String> {
        let _permit = self
            .lookups
            .try_acquire()
            .map_err(|_| "too many lookups in flight; retry".to_string())?;
        let q = StateQuery::RoomAccess {
            app: app.clone(),
            room: room.clone(),
        };
        match self.query(&q).await? {
            StateAnswer::RoomAccess { access } => Ok(access.map(Arc::new)),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// The public key of `app` (cached for 30 s; an unknown app is asked again), for verifying
    /// viewer tokens offline.
    pub async fn app_key(&self, app: &AppName) -> Option<AppKey> {
        if let Some(cached) = self.apps.get(app).await {
            return cached;
        }
        // Shares the bound of placement lookups: random app names cannot flood the origins.
        let Ok(_permit) = self.lookups.try_acquire() else {
            return None;
        };
        // An unknown app is not cached: it may be created in a moment.
        let lookup = async {
            match self.query(&StateQuery::AppKey { app: app.clone() }).await {
                Ok(StateAnswer::AppKey { key: Some(key) }) => Ok(Some(key)),
                Ok(StateAnswer::AppKey { key: None }) => Err("unknown app".to_string()),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e),
            }
        };
        self.apps
            .try_get_with(app.clone(), lookup)
            .await
            .ok()
            .flatten()
    }

    /// The registry as last refreshed.
    pub fn nodes(&self) -> Arc<Vec<NodeRecord>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Refreshes the registry once; learns (and saves) the origins' addresses.
    pub async fn refresh(&self) -> Result<(), String> {
        let StateAnswer::Nodes { nodes } = self.query(&StateQuery::Nodes).await? else {
            return Err("unexpected answer".into());
        };
        let origins: Vec<String> = nodes
            .iter()
            .filter(|n| n.role == NodeRole::Origin)
            .map(|n| n.cluster_addr.clone())
            .collect();
        if !origins.is_empty() {
            let changed = {
                let mut addrs = self.addrs.lock().unwrap_or_else(|e| e.into_inner());
                let changed = *addrs != origins;
                *addrs = origins.clone();
                changed
            };
            if changed {
                self.save(&origins);
            }
        }
        *self.nodes.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(nodes);
        Ok(())
    }

    fn save(&self, origins: &[String]) {
        let Some(file) = &self.file else { return };
        let tmp = file.with_extension("json.tmp");
        let written = serde_json::to_vec(origins)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, file));
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot save the list of origins");
        }
    }

    /// Refreshes the registry every [`REFRESH_EVERY`] until `shutdown`.
    pub async fn run_refresh(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(REFRESH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "cannot refresh the node registry");
            }
        }
    }

    /// Sends this node's heartbeat to an origin (which hands it to the leader); the answer
    /// says which nodes drain (`None` from an origin too old to say).
    pub async fn heartbeat(&self, beat: &Heartbeat) -> Result<Option<BeatAnswer>, String> {
        let body = Bytes::from(serde_json::to_vec(beat).map_err(|e| e.to_string())?);
        let answer = self.ask(kinds::HEARTBEAT, body, HEARTBEAT_TIMEOUT).await?;
        let answer: Option<BeatAnswer> = serde_json::from_slice(&answer).ok();
        if let Some(a) = &answer {
            self.note_draining(&a.draining_nodes);
        }
        Ok(answer)
    }

    /// Marks the nodes `draining` (and only them) as draining in the registry copy, between two
    /// refreshes: steering from this edge leaves a drained node out within a beat.
    fn note_draining(&self, draining: &[String]) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let differs = |n: &NodeRecord| n.draining_since_ms.is_some() != draining.contains(&n.name);
        if !nodes.iter().any(differs) {
            return;
        }
        let mut updated: Vec<NodeRecord> = nodes.as_ref().clone();
        for n in updated.iter_mut().filter(|n| differs(n)) {
            // The start is the registry's; the next refresh brings it.
            n.draining_since_ms = if n.draining_since_ms.is_some() {
                None
            } else {
                Some(0)
            };
        }
        *nodes = Arc::new(updated);
    }
}

/// An origin's answer to a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BeatAnswer {
    /// Whether the registry has this node draining.
    pub draining: bool,
    /// Every draining node.
    #[serde(default)]
    pub draining_nodes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(node: &str, epoch: u64) -> Holder {
        Holder {
            node: node.into(),
            addr: ([127, 0, 0, 1], 4433).into(),
            epoch,
        }
    }

    #[test]
    fn only_a_newer_claim_is_a_move() {
        let followed = holder("origin-1", 7);
        assert!(holder("origin-2", 8).moved_from(&followed), "taken over");
        assert!(
            holder("origin-1", 9).moved_from(&followed),
            "re-claimed: a new session"
        );
        assert!(
            !holder("origin-1", 7).moved_from(&followed),
            "the same claim"
        );
        // A cut-off origin back from a partition still lists its old claim for a moment.
        assert!(
            !holder("origin-3", 5).moved_from(&followed),
            "a stale answer"
        );
    }
}
