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
use streamhub_cluster::raft::RaftNode;
use streamhub_cluster::state::{Command, CommandResponse};
use streamhub_edge::hls::{HlsConfig, HlsRegistry, HlsStats};
use streamhub_shared::{AppName, RoomName};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiError};
use crate::config::Settings;
use crate::credentials::{sha256_hex, SessionKeys};
use crate::metrics::Metrics;
use crate::rooms::{Protocol, PublishClaim, PublishError, Publisher, RoomObserver, Rooms};
use crate::rtmp::{self, IngestBackend, RtmpConfig, RtmpStats};

/// Everything a request handler may need. Shared read-only behind an `Arc`.
pub struct NodeCtx {
    pub settings: Settings,
    pub raft: RaftNode,
    pub rooms: Arc<Rooms>,
    pub sessions: SessionKeys,
    /// `ADMIN_USER`/`ADMIN_PASS` from the environment, accepted as a break-glass login.
    pub break_glass: Option<(String, String)>,
    pub hls: Arc<HlsRegistry>,
    pub hls_stats: Arc<HlsStats>,
    pub rtmp_stats: Arc<RtmpStats>,
    pub metrics: Metrics,
    /// The port RTMP is bound to (may differ from the setting when it was 0).
    pub rtmp_port: u16,
    pub ready: AtomicBool,
}

impl NodeCtx {
    /// Proposes a command through Raft and maps its outcome to an API result.
    pub async fn write(&self, cmd: Command) -> Result<(), ApiError> {
        match self.raft.write(cmd).await {
            Ok(CommandResponse::Ok) => Ok(()),
            Ok(CommandResponse::Exists { what }) => Err(ApiError::Conflict(what)),
            Ok(CommandResponse::NotFound { what }) => Err(ApiError::NotFound(what)),
            Err(e) => Err(ApiError::Unavailable(e.to_string())),
        }
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

/// Starts an HLS packager for every room that starts.
struct HlsObserver {
    hls: Arc<HlsRegistry>,
    tasks: TaskTracker,
}

impl RoomObserver for HlsObserver {
    fn room_started(&self, app: &AppName, room: &RoomName, publisher: &Publisher, takeover: bool) {
        tracing::info!(%app, %room, takeover, "room started");
        let hls_room = self.hls.start(app, room);
        let session = hls_room.session();
        let consumer = publisher.media().subscribe();
        self.tasks.spawn(streamhub_edge::hls::run_packager(
            consumer, hls_room, session,
        ));
    }
}

/// Resolves stream keys against the tenant state and claims rooms.
struct NodeIngest {
    ctx: std::sync::Weak<NodeCtx>,
}

impl IngestBackend for NodeIngest {
    fn start_publish(
        &self,
        stream_key: &str,
        remote: SocketAddr,
    ) -> Result<Publisher, PublishError> {
        let ctx = self.ctx.upgrade().ok_or(PublishError::UnknownKey)?;
        let hash = sha256_hex(stream_key);
        let ingress = ctx
            .raft
            .read(|s| s.ingress_by_key_hash(&hash).cloned())
            .ok_or(PublishError::UnknownKey)?;
        ctx.rooms.start_publish(PublishClaim {
            app: ingress.app,
            room: ingress.room,
            ingress_id: ingress.id,
            protocol: Protocol::Rtmp,
            remote,
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
        .with_state(ctx.clone())
        .merge(api::router(ctx.clone()))
        .merge(streamhub_edge::hls::http::router(
            ctx.hls.clone(),
            ctx.hls_stats.clone(),
        ))
}

/// Runs a node until `shutdown` is cancelled, then drains it.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir)?;
    let http = TcpListener::bind(settings.http).await?;
    let rtmp_listener = TcpListener::bind(settings.rtmp).await?;
    let rtmp_port = rtmp_listener.local_addr()?.port();
    let raft_id = streamhub_cluster::raft::node_id_from_name(&settings.node_name);
    let raft = RaftNode::open(&settings.data_dir, raft_id, settings.http.to_string()).await?;
    let tasks = TaskTracker::new();
    let hls = Arc::new(HlsRegistry::new(HlsConfig {
        target_duration: settings.hls_target,
        ..HlsConfig::default()
    }));
    let rooms = Rooms::new(Arc::new(HlsObserver {
        hls: hls.clone(),
        tasks: tasks.clone(),
    }));
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
        rtmp_stats: Arc::new(RtmpStats::default()),
        metrics: Metrics::new(),
        rtmp_port,
        ready: AtomicBool::new(false),
    });
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
    let app = http_router(ctx.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(http, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    ctx.ready.store(true, Ordering::Release);
    println!("{}", crate::bootstrap::banner(&ctx, &first, &admin_user));

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
    Ok(())
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
