//! An origin node: its state, its listeners, and the wiring between ingest, control plane and
//! playback. `run` owns every task and drains them on shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use streamhub_cluster::raft::{RaftNode, Start};
use streamhub_cluster::registry::{StateQuery, SteeringPolicy};
use streamhub_cluster::state::TenantState;
use streamhub_cluster::state::{Command, CommandResponse, NodeLoad, NodeRecord, NodeRole};
use streamhub_cluster::transport::{service_fn, Endpoint, RemoteError};
use streamhub_edge::hls::http::BlockingLimits;
use streamhub_edge::hls::{HlsRegistry, HlsStats, MediaCache};
use streamhub_edge::mjpeg::{MediaLookup, MjpegStats, Viewing};
use streamhub_edge::play::{NodeDirectory, Steering};
use streamhub_edge::relay::{RelayServer, RelaySource, RelayStats};
use streamhub_shared::media::GroupPolicy;
use streamhub_shared::media::MediaHandle;
use streamhub_shared::relay::ErrorCode;
use streamhub_shared::{AppName, RoomName};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiError};
use crate::config::Settings;
use crate::credentials::{sha256_hex, unix_now_ms, SessionKeys};
use crate::lease::{self, Released};
use crate::membership::{self, Startup};
use crate::metrics::Metrics;
use crate::rooms::{Protocol, PublishClaim, PublishError, Publisher, RoomObserver, Rooms};
use crate::rtmp::{self, IngestBackend, RtmpConfig, RtmpStats};

/// Everything a request handler may need. Shared read-only behind an `Arc`.
pub struct NodeCtx {
    pub settings: Settings,
    pub raft: Arc<RaftNode>,
    pub rooms: Arc<Rooms>,
    pub sessions: SessionKeys,
    /// `ADMIN_USER`/`ADMIN_PASS` from the environment, accepted as a break-glass login.
    pub break_glass: Option<(String, String)>,
    pub hls: Arc<HlsRegistry>,
    pub hls_stats: Arc<HlsStats>,
    pub mjpeg_stats: Arc<MjpegStats>,
    pub relay_stats: Arc<RelayStats>,
    /// Viewer steering over the registry (`/play`, playback API, token `playUrl`).
    pub steering: Arc<Steering>,
    pub rtmp_stats: Arc<RtmpStats>,
    /// Limits of WebSocket-MJPEG ingest.
    pub ws_config: crate::wsmjpeg::WsConfig,
    pub ws_stats: Arc<crate::wsmjpeg::WsStats>,
    /// The RTSP pulls this origin runs.
    pub rtsp: crate::rtsp::Pulls,
    pub metrics: Metrics,
    /// The port RTMP is bound to (may differ from the setting when it was 0).
    pub rtmp_port: u16,
    pub ready: AtomicBool,
    /// Background tasks owned by the node (drained on shutdown).
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    /// Heartbeats this node batches while it leads.
    pub heartbeats: lease::HeartbeatBatch,
    /// The WebRTC media port (WHIP ingest, WHEP playback).
    pub webrtc: Arc<streamhub_edge::webrtc::WebRtc>,
}

use streamhub_cluster::transport::kinds::CLUSTER_STATUS;

impl NodeCtx {
    /// Proposes a command through Raft and maps its outcome to an API result.
    pub async fn write(&self, cmd: Command) -> Result<(), ApiError> {
        match self.raft.write(cmd).await {
            Ok(CommandResponse::Ok) => Ok(()),
            Ok(CommandResponse::Exists { what }) => Err(ApiError::Conflict(what)),
            Ok(CommandResponse::NotFound { what }) => Err(ApiError::NotFound(what)),
            Ok(other) => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
            Err(e) => Err(ApiError::Unavailable(e.to_string())),
        }
    }

    /// Adds an admitted origin as a voter in the background: the joiner starts its Raft after it
    /// got its certificate, and the leader's replication reaches it as soon as it listens.
    pub fn spawn_add_voter(&self, node_id: u64, cluster_addr: String, name: String) {
        let raft = self.raft.clone();
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            loop {
                let attempt = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = raft.add_voter(node_id, cluster_addr.clone()) => r,
                };
                match attempt {
                    Ok(()) => return tracing::info!(node = %name, "joined as voter"),
                    Err(e) if std::time::Instant::now() > deadline => {
                        return tracing::error!(node = %name, error = %e, "could not add voter")
                    }
                    Err(e) => tracing::debug!(node = %name, error = %e, "add voter: retrying"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    /// The node names of Raft ids, from the registry.
    fn names(&self) -> std::collections::HashMap<u64, String> {
        self.raft
            .read(|s| s.nodes.values().map(|n| (n.id, n.name.clone())).collect())
    }

    /// This node's view of the cluster; `applied` per node is known only on the leader.
    pub fn local_cluster_status(&self) -> serde_json::Value {
        let st = self.raft.status();
        let names = self.names();
        let name = |id: &u64| names.get(id).cloned().unwrap_or_else(|| id.to_string());
        let now = unix_now_ms();
        let nodes: Vec<serde_json::Value> = self.raft.read(|s| {
            s.nodes
                .values()
                .map(|n| {
                    let applied = if n.id == st.node_id {
                        st.last_applied
                    } else {
                        st.replication.get(&n.id).copied().flatten()
                    };
                    serde_json::json!({
                        "name": n.name, "id": n.id, "role": n.role, "region": n.region,
                        "clusterAddr": n.cluster_addr, "applied": applied,
                        "health": if crate::api::cluster::is_up(n, now) { "up" } else { "down" },
                        "lastHeartbeatMsAgo": now.saturating_sub(n.last_heartbeat_ms),
                    })
                })
                .collect()
        });
        serde_json::json!({
            "self": self.settings.node_name,
            "leader": st.leader.as_ref().map(name),
            "term": st.term,
            "state": format!("{:?}", st.state),
            "voters": st.voters.iter().map(name).collect::<Vec<_>>(),
            "learners": st.learners.iter().map(name).collect::<Vec<_>>(),
            "lastApplied": st.last_applied,
            "snapshotIndex": st.snapshot,
            "nodes": nodes,
        })
    }

    /// The cluster as the leader sees it (asked over the cluster transport), or this node's view
    /// when the leader cannot be reached.
    pub async fn cluster_status(&self) -> serde_json::Value {
        let st = self.raft.status();
        let leader_addr = st
            .leader
            .filter(|l| *l != st.node_id)
            .and_then(|l| st.nodes.get(&l).cloned());
        if let Some(mut v) = self.peer_status(leader_addr.as_ref()).await {
            v["self"] = self.settings.node_name.clone().into();
            return v;
        }
        let mut v = self.local_cluster_status();
        v["partial"] = true.into();
        v
    }

    /// The cluster view of the node at cluster address `addr` ([`CLUSTER_STATUS`]).
    async fn peer_status(&self, addr: Option<&String>) -> Option<serde_json::Value> {
        let sock = streamhub_cluster::raft::network::resolve(addr?).await?;
        let body = self
            .raft
            .endpoint()
            .request(
                sock,
                CLUSTER_STATUS,
                bytes::Bytes::new(),
                Duration::from_secs(2),
            )
            .await
            .ok()?;
        serde_json::from_slice(&body).ok()
    }

    /// What a user pastes into OBS's Server field: `rtmp://<public host>:<port>/live`.
    pub fn rtmp_url(&self) -> String {
        format!(
            "rtmp://{}:{}/live",
            self.settings.public_host(),
            self.rtmp_port
        )
    }
}

/// Starts an HLS packager for every room that starts, and queues the release of the placement
/// of every room that ends.
struct NodeObserver {
    hls: Arc<HlsRegistry>,
    tasks: TaskTracker,
    released: mpsc::Sender<Released>,
}

impl RoomObserver for NodeObserver {
    fn room_started(&self, app: &AppName, room: &RoomName, publisher: &Publisher, takeover: bool) {
        tracing::info!(%app, %room, takeover, "room started");
        let hls_room = self.hls.start(app, room);
        let session = hls_room.session();
        let consumer = publisher.media().subscribe();
        self.tasks.spawn(streamhub_edge::hls::run_packager(
            consumer, hls_room, session,
        ));
    }

    fn room_ended(&self, app: &AppName, room: &RoomName, epoch: u64) {
        tracing::info!(%app, %room, epoch, "room ended");
        let r = Released {
            app: app.clone(),
            room: room.clone(),
            epoch,
        };
        // A full queue only means the lease expires instead of being released early.
        let _ = self.released.try_send(r);
    }
}

/// Resolves stream keys against the tenant state and claims rooms in the placement table.
struct NodeIngest {
    ctx: std::sync::Weak<NodeCtx>,
}

impl IngestBackend for NodeIngest {
    fn start_publish(
        &self,
        stream_key: String,
        remote: SocketAddr,
    ) -> futures::future::BoxFuture<'static, Result<Publisher, PublishError>> {
        let ctx = self.ctx.clone();
        Box::pin(async move {
            let ctx = ctx.upgrade().ok_or(PublishError::UnknownKey)?;
            let hash = sha256_hex(&stream_key);
            let ingress = ctx
                .raft
                .read(|s| s.ingress_by_key_hash(&hash).cloned())
                .filter(|i| i.kind == streamhub_cluster::state::IngressKind::Rtmp)
                .ok_or(PublishError::UnknownKey)?;
            ctx.rooms
                .check_busy(&ingress.app, &ingress.room, &ingress.id)?;
            let epoch = lease::claim(&ctx, &ingress.app, &ingress.room).await?;
            // The key may have been revoked while the claim was in flight.
            if ctx.raft.read(|s| !s.ingresses.contains_key(&ingress.id)) {
                return Err(PublishError::UnknownKey);
            }
            ctx.rooms.start_publish(PublishClaim {
                app: ingress.app,
                room: ingress.room,
                ingress_id: ingress.id,
                protocol: Protocol::Rtmp,
                remote,
                epoch,
            })
        })
    }
}

async fn healthz(State(ctx): State<Arc<NodeCtx>>) -> impl IntoResponse {
    if ctx.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn metrics(State(ctx): State<Arc<NodeCtx>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        ctx.metrics.render(&ctx),
    )
}

fn http_router(ctx: Arc<NodeCtx>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/ingest/ws", get(crate::wsmjpeg::upgrade))
        .route(
            "/publish/{app}/{room}",
            get(streamhub_edge::play::publish_page),
        )
        .with_state(ctx.clone())
        .merge(api::router(ctx.clone()))
        .merge(crate::whip::router(ctx.clone()))
        .merge(
            Router::new()
                .merge(streamhub_edge::hls::http::router(
                    ctx.hls.clone(),
                    ctx.hls_stats.clone(),
                    None,
                    BlockingLimits::default(),
                ))
                .merge(streamhub_edge::mjpeg::router(
                    Arc::new(RoomsMedia(ctx.rooms.clone())),
                    ctx.mjpeg_stats.clone(),
                    Default::default(),
                ))
                .merge(streamhub_edge::webrtc::http::whep_router(
                    ctx.webrtc.clone(),
                    Arc::new(RoomsMedia(ctx.rooms.clone())),
                ))
                .layer(axum::middleware::from_fn_with_state(
                    Arc::new(RaftKeys(ctx.raft.clone()))
                        as Arc<dyn streamhub_edge::access::KeySource>,
                    streamhub_edge::access::check,
                )),
        )
        .merge(streamhub_edge::play::router(ctx.steering.clone()))
}

/// Runs a node until `shutdown` is cancelled, then drains it.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir)?;
    let http = TcpListener::bind(settings.http).await?;
    let rtmp_listener = TcpListener::bind(settings.rtmp).await?;
    let rtmp_port = rtmp_listener.local_addr()?.port();
    let (identity, startup) = membership::prepare(&settings, NodeRole::Origin).await?;
    let endpoint = Endpoint::bind(settings.cluster, &identity, shutdown.clone())?;
    let raft = open_raft(&settings, endpoint, &startup).await?;
    let webrtc = streamhub_edge::webrtc::WebRtc::bind(settings.webrtc.clone(), shutdown.clone())
        .await
        .map_err(|e| anyhow::anyhow!("binding WebRTC UDP {}: {e}", settings.webrtc.udp))?;
    let tasks = TaskTracker::new();
    let hls = Arc::new(HlsRegistry::new(
        settings.hls.clone(),
        Arc::new(MediaCache::new(settings.cache_bytes)),
    ));
    let (released_tx, released_rx) = mpsc::channel(1024);
    let policy = GroupPolicy {
        target: settings.hls.target_duration,
    };
    let rooms = Rooms::new(
        Arc::new(NodeObserver {
            hls: hls.clone(),
            tasks: tasks.clone(),
            released: released_tx,
        }),
        policy,
    );
    let raft = Arc::new(raft);
    let steering = Arc::new(Steering {
        directory: Arc::new(RaftDirectory(raft.clone())),
        me: settings.node_name.clone(),
        region: settings.region.clone(),
        public_url: settings.public_base(),
        region_header: settings.region_header.clone(),
        policy: SteeringPolicy::default(),
    });
    let admin_user = std::env::var("ADMIN_USER").unwrap_or_else(|_| "admin".into());
    let admin_pass = std::env::var("ADMIN_PASS").ok().filter(|p| !p.is_empty());
    let ctx = Arc::new(NodeCtx {
        sessions: SessionKeys::load_or_create(&settings.data_dir)?,
        break_glass: admin_pass.clone().map(|p| (admin_user.clone(), p)),
        settings,
        raft,
        rooms,
        hls,
        hls_stats: Arc::new(HlsStats::default()),
        mjpeg_stats: Arc::new(MjpegStats::default()),
        relay_stats: Arc::new(RelayStats::default()),
        steering,
        rtmp_stats: Arc::new(RtmpStats::default()),
        ws_config: crate::wsmjpeg::WsConfig::default(),
        ws_stats: Arc::default(),
        rtsp: crate::rtsp::Pulls::default(),
        metrics: Metrics::new(),
        rtmp_port,
        ready: AtomicBool::new(false),
        tasks: tasks.clone(),
        shutdown: shutdown.clone(),
        heartbeats: lease::HeartbeatBatch::default(),
        webrtc,
    });
    register_services(&ctx);
    lease::register_heartbeat_service(&ctx);
    let relay_server = RelayServer::new(
        Arc::new(OriginRelaySource {
            ctx: Arc::downgrade(&ctx),
        }),
        ctx.relay_stats.clone(),
    );
    relay_server.register(ctx.raft.endpoint());
    let join_token = settle_membership(&ctx, startup).await?;
    let first = crate::bootstrap::first_start(&ctx, &admin_user, admin_pass.as_deref()).await?;

    let backend = Arc::new(NodeIngest {
        ctx: Arc::downgrade(&ctx),
    });
    tasks.spawn(rtmp::serve(
        rtmp_listener,
        backend,
        RtmpConfig::default(),
        shutdown.clone(),
        ctx.rtmp_stats.clone(),
    ));
    tasks.spawn(sweep_hls(ctx.hls.clone(), shutdown.clone()));
    tasks.spawn(crate::rtsp::run_supervisor(ctx.clone(), shutdown.clone()));
    tasks.spawn(lease::run_heartbeats(ctx.clone(), shutdown.clone()));
    tasks.spawn(lease::run_releases(
        ctx.clone(),
        released_rx,
        shutdown.clone(),
    ));
    let app = http_router(ctx.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(http, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    ctx.ready.store(true, Ordering::Release);
    println!(
        "{}",
        crate::bootstrap::banner(&ctx, &first, &admin_user, join_token.as_deref())
    );

    shutdown.cancelled().await;
    tracing::info!("shutting down");
    tasks.close();
    let drain = async {
        tasks.wait().await;
        let _ = server.await;
    };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 10 s");
    }
    if let Err(e) = ctx.raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    ctx.raft.endpoint().close().await;
    Ok(())
}

async fn open_raft(
    settings: &Settings,
    endpoint: Endpoint,
    startup: &Startup,
) -> anyhow::Result<RaftNode> {
    let raft_id = streamhub_cluster::raft::node_id_from_name(&settings.node_name);
    let start = match startup {
        Startup::Join { .. } => Start::Join,
        _ => Start::Bootstrap,
    };
    let mut config = streamhub_cluster::raft::default_config();
    config.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(settings.raft_snapshot_logs);
    config.max_in_snapshot_log_to_keep = (settings.raft_snapshot_logs / 5).min(1000);
    let addr = membership::advertised_cluster_addr(settings);
    Ok(
        RaftNode::open_with_config(&settings.data_dir, raft_id, addr, endpoint, start, config)
            .await?,
    )
}

/// The registry from this origin's replica.
struct RaftDirectory(Arc<RaftNode>);

impl NodeDirectory for RaftDirectory {
    fn nodes(&self) -> Arc<Vec<NodeRecord>> {
        Arc::new(self.0.read(|s| s.nodes.values().cloned().collect()))
    }
}

/// The relay serves this origin's live rooms; for a room live elsewhere it names the holder.
struct OriginRelaySource {
    ctx: std::sync::Weak<NodeCtx>,
}

impl RelaySource for OriginRelaySource {
    fn lookup(&self, app: &AppName, room: &RoomName) -> Result<MediaHandle, ErrorCode> {
        let ctx = self.ctx.upgrade().ok_or(ErrorCode::Internal)?;
        if let Some(media) = ctx.rooms.media(app, room) {
            return Ok(media);
        }
        let now = unix_now_ms();
        let holder = ctx.raft.read(|s: &TenantState| {
            s.placement(app, room)
                .filter(|p| p.lease_until_ms > now)
                .map(|p| p.node.clone())
        });
        match holder {
            Some(node) if node != ctx.settings.node_name => {
                Err(ErrorCode::NotHere { holder: Some(node) })
            }
            _ => Err(ErrorCode::UnknownRoom),
        }
    }
}

/// App keys from this origin's replica.
struct RaftKeys(Arc<RaftNode>);

impl streamhub_edge::access::KeySource for RaftKeys {
    fn app_key(
        &self,
        app: &AppName,
    ) -> futures::future::BoxFuture<'static, Option<streamhub_cluster::registry::AppKey>> {
        let key = self.0.read(|s| {
            s.apps
                .get(app)
                .map(|a| streamhub_cluster::registry::AppKey {
                    app: a.name.clone(),
                    key_id: a.key_id.clone(),
                    secret: a.secret.clone(),
                })
        });
        Box::pin(async move { key })
    }
}

/// MJPEG viewers of this origin read its live rooms directly.
struct RoomsMedia(Arc<Rooms>);

impl MediaLookup for RoomsMedia {
    fn media(
        &self,
        app: &AppName,
        room: &RoomName,
        _client: SocketAddr,
    ) -> futures::future::BoxFuture<'static, Option<Viewing>> {
        let media = self.0.media(app, room);
        Box::pin(async move {
            Some(Viewing {
                media: media?,
                hold: None,
            })
        })
    }
}

/// Answers followers asking for the leader's view of the cluster, and edges asking about the
/// tenant state.
fn register_services(ctx: &Arc<NodeCtx>) {
    let weak = Arc::downgrade(ctx);
    ctx.raft.endpoint().register(
        streamhub_cluster::transport::kinds::STATE_QUERY,
        service_fn(move |_peer, body| {
            let ctx = weak.upgrade();
            async move {
                let ctx =
                    ctx.ok_or_else(|| RemoteError::new("shutting_down", "node is stopping"))?;
                let q: StateQuery = serde_json::from_slice(&body)
                    .map_err(|e| RemoteError::new("bad_request", e.to_string()))?;
                let now = unix_now_ms();
                let answer = ctx.raft.read(|s| q.answer(s, now));
                serde_json::to_vec(&answer)
                    .map(bytes::Bytes::from)
                    .map_err(|e| RemoteError::new("internal", e.to_string()))
            }
        }),
    );
    let weak = Arc::downgrade(ctx);
    ctx.raft.endpoint().register(
        CLUSTER_STATUS,
        service_fn(move |_peer, _body| {
            let ctx = weak.upgrade();
            async move {
                let ctx =
                    ctx.ok_or_else(|| RemoteError::new("shutting_down", "node is stopping"))?;
                let v = ctx.local_cluster_status();
                Ok(bytes::Bytes::from(
                    serde_json::to_vec(&v).unwrap_or_default(),
                ))
            }
        }),
    );
}

/// Finishes this start's part in the cluster: a bootstrap stores the CA, registers itself and
/// mints a first join token (returned for the banner); a joiner waits until it is a voter.
async fn settle_membership(ctx: &Arc<NodeCtx>, startup: Startup) -> anyhow::Result<Option<String>> {
    match startup {
        Startup::Bootstrap { ca } => {
            let ca = streamhub_cluster::state::ClusterCa {
                cert_pem: ca.cert_pem,
                key_pem: ca.key_pem,
            };
            match ctx.raft.write(Command::InitCluster(ca)).await? {
                CommandResponse::Ok | CommandResponse::Exists { .. } => {}
                other => anyhow::bail!("initialising the cluster: {other:?}"),
            }
            register_self(ctx).await?;
            let (token, _) = crate::api::cluster::mint_join_token(ctx, 24 * 3600 * 1000)
                .await
                .map_err(|e| anyhow::anyhow!("minting a join token: {e}"))?;
            Ok(Some(token))
        }
        Startup::Join { .. } => {
            wait_until_voter(ctx).await?;
            Ok(None)
        }
        Startup::Restart => {
            wait_until_caught_up(ctx).await?;
            Ok(None)
        }
    }
}

/// A restarted member serves nothing until it has caught up with the group: its own state on
/// disk may lag what it acknowledged before it stopped (applied < committed), and after a crash
/// it may even believe it still leads an old term. Ready when it leads with a quorum
/// (`ensure_linearizable`), or when it has applied what the current leader has applied.
///
/// While it waits (at most [`QUIET_RESTART`]) it does not call elections: a node that comes back
/// before its peers' connections to it are re-established would otherwise time out, start
/// elections with ever higher terms and depose the healthy leader. The bound keeps a whole-cluster
/// restart (where nobody else can lead) from waiting for ever.
async fn wait_until_caught_up(ctx: &NodeCtx) -> anyhow::Result<()> {
    const QUIET_RESTART: Duration = Duration::from_secs(3);
    let started = std::time::Instant::now();
    let deadline = started + Duration::from_secs(120);
    let me = ctx.raft.node_id();
    let elect = |on: bool| ctx.raft.raft().runtime_config().elect(on);
    if ctx.raft.status().voters.len() > 1 {
        elect(false);
    }
    let result = loop {
        let st = ctx.raft.status();
        if st.voters.len() <= 1 {
            break Ok(());
        }
        if started.elapsed() > QUIET_RESTART {
            elect(true);
        }
        match st.leader {
            Some(l) if l == me => {
                let check = tokio::time::timeout(
                    Duration::from_secs(2),
                    ctx.raft.raft().ensure_linearizable(),
                )
                .await;
                if matches!(check, Ok(Ok(_))) {
                    break Ok(());
                }
            }
            Some(l) => {
                if let Some(target) = leader_applied(ctx, st.nodes.get(&l)).await {
                    if ctx.raft.status().last_applied >= Some(target) {
                        tracing::info!(applied = target, "caught up with the leader");
                        break Ok(());
                    }
                }
            }
            None => {}
        }
        if std::time::Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "could not catch up with the cluster within 120 s (status {st:?})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    elect(true);
    result
}

/// The last index the leader at `addr` has applied, asked over the cluster transport.
async fn leader_applied(ctx: &NodeCtx, addr: Option<&String>) -> Option<u64> {
    ctx.peer_status(addr).await?["lastApplied"].as_u64()
}

async fn register_self(ctx: &NodeCtx) -> anyhow::Result<()> {
    let s = &ctx.settings;
    let now = unix_now_ms();
    let record = NodeRecord {
        name: s.node_name.clone(),
        id: ctx.raft.node_id(),
        role: NodeRole::Origin,
        region: s.region.clone(),
        http_url: s.public_base(),
        rtmp_url: Some(ctx.rtmp_url()),
        cluster_addr: membership::advertised_cluster_addr(s),
        version: env!("CARGO_PKG_VERSION").to_string(),
        load: NodeLoad::default(),
        registered_at_ms: now,
        last_heartbeat_ms: now,
    };
    match ctx.raft.write(Command::RegisterNode(record)).await? {
        CommandResponse::Ok | CommandResponse::Exists { .. } => Ok(()),
        other => anyhow::bail!("registering this node: {other:?}"),
    }
}

/// A joiner is ready once it is a voter and has applied what the leader had committed.
async fn wait_until_voter(ctx: &NodeCtx) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let me = ctx.raft.node_id();
    loop {
        let st = ctx.raft.status();
        if st.voters.contains(&me) && st.leader.is_some() && st.last_applied.is_some() {
            tracing::info!(term = st.term, "joined the cluster as a voter");
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("not added to the cluster within 120 s (status {st:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sweep_hls(hls: Arc<HlsRegistry>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                hls.sweep(std::time::Instant::now());
            }
        }
    }
}
