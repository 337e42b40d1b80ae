//! An edge node: joins the cluster (first start) or restarts as the member it was, registers in
//! the node registry through its heartbeats, pulls rooms from origins on demand and serves them
//! as HLS/LL-HLS and MJPEG, and steers viewers. `run` owns every task and drains them on
//! shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures::future::BoxFuture;
use streamhub_cluster::registry::SteeringPolicy;
use streamhub_cluster::state::{Heartbeat, NodeLoad, NodeRecord, NodeRole};
use streamhub_cluster::transport::{Endpoint, NodeIdentity};
use streamhub_shared::{AppName, RoomName};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::KeySource;
use crate::config::EdgeSettings;
use crate::hls::http::{BlockingLimits, RoomOpener};
use crate::hls::{HlsRegistry, HlsRoom, HlsStats, MediaCache};
use crate::metrics::{PlaybackMetrics, PlaybackSample};
use crate::mjpeg::{MediaLookup, MjpegStats, Viewing};
use crate::origins::Origins;
use crate::play::{NodeDirectory, Steering};
use crate::pull::Pulls;
use crate::relay::{RelayClient, RelayStats};

/// How often the edge heartbeats (the registry's TTL is 10 s).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// What the edge's HTTP handlers share.
pub struct EdgeCtx {
    pub settings: EdgeSettings,
    pub origins: Arc<Origins>,
    pub pulls: Arc<Pulls>,
    pub hls: Arc<HlsRegistry>,
    pub hls_stats: Arc<HlsStats>,
    pub mjpeg_stats: Arc<MjpegStats>,
    pub relay_stats: Arc<RelayStats>,
    pub webrtc: Arc<crate::webrtc::WebRtc>,
    registry: prometheus::Registry,
    metrics: PlaybackMetrics,
    ready: AtomicBool,
}

impl EdgeCtx {
    fn render_metrics(&self) -> String {
        self.metrics.sample(&PlaybackSample {
            hls: &self.hls_stats,
            cache: self.hls.cache(),
            relay: &self.relay_stats,
            mjpeg: &self.mjpeg_stats,
            webrtc: &self.webrtc.stats,
            viewers: self.pulls.viewers() as u64,
            rooms: self.pulls.list().len() as u64,
        });
        crate::metrics::render(&self.registry)
    }
}

struct PullOpener(Arc<Pulls>);

impl RoomOpener for PullOpener {
    fn open(
        &self,
        app: &AppName,
        room: &RoomName,
        client: SocketAddr,
    ) -> BoxFuture<'static, Option<Arc<HlsRoom>>> {
        let (pulls, app, room) = (self.0.clone(), app.clone(), room.clone());
        Box::pin(async move { pulls.open(&app, &room, client).await?.hls() })
    }
}

struct PullMedia(Arc<Pulls>);

impl MediaLookup for PullMedia {
    fn media(
        &self,
        app: &AppName,
        room: &RoomName,
        client: SocketAddr,
    ) -> BoxFuture<'static, Option<Viewing>> {
        let (pulls, app, room) = (self.0.clone(), app.clone(), room.clone());
        Box::pin(async move {
            let pulled = pulls.open(&app, &room, client).await?;
            Some(Viewing {
                media: pulled.media()?,
                hold: Some(Box::new(pulled.hold())),
            })
        })
    }
}

/// App keys from the origins, cached (see [`Origins::app_key`]).
struct OriginsKeys(Arc<Origins>);

impl KeySource for OriginsKeys {
    fn app_key(
        &self,
        app: &AppName,
    ) -> BoxFuture<'static, Option<streamhub_cluster::registry::AppKey>> {
        let (origins, app) = (self.0.clone(), app.clone());
        Box::pin(async move { origins.app_key(&app).await })
    }
}

struct OriginsDirectory(Arc<Origins>);

impl NodeDirectory for OriginsDirectory {
    fn nodes(&self) -> Arc<Vec<NodeRecord>> {
        self.0.nodes()
    }
}

/// Loads this edge's cluster identity, or joins through `--join` on the first start. Returns
/// the identity and the origins' cluster addresses learned from the join.
async fn identity(settings: &EdgeSettings) -> anyhow::Result<(NodeIdentity, Vec<String>)> {
    let dir = settings.data_dir.join("cluster");
    if NodeIdentity::exists(&dir) {
        let identity = NodeIdentity::load(&dir).context("loading the edge's cluster identity")?;
        if identity.name != settings.node_name {
            anyhow::bail!(
                "data dir {} belongs to node {:?}, not {:?}: start with --node-id {} or use another data dir",
                settings.data_dir.display(),
                identity.name,
                settings.node_name,
                identity.name
            );
        }
        return Ok((identity, Vec::new()));
    }
    let token = settings
        .join_token
        .as_deref()
        .context("first start: --join and --join-token are needed to join a cluster")?;
    anyhow::ensure!(!settings.join.is_empty(), "first start: --join is needed");
    let who = crate::join::Joiner {
        name: settings.node_name.clone(),
        role: NodeRole::Edge,
        cluster_addr: settings.advertised_cluster_addr(),
        http_url: settings.public_base(),
        rtmp_url: None,
        region: settings.region.clone(),
    };
    let (identity, answer) = crate::join::join(&settings.join, token, &who).await?;
    identity
        .save(&dir)
        .context("saving the edge's cluster identity")?;
    tracing::info!(voters = ?answer.voters, "joined the cluster as an edge");
    Ok((identity, answer.voters))
}

fn http_router(ctx: Arc<EdgeCtx>) -> Router {
    let steering = Arc::new(Steering {
        directory: Arc::new(OriginsDirectory(ctx.origins.clone())),
        me: ctx.settings.node_name.clone(),
        region: ctx.settings.region.clone(),
        public_url: ctx.settings.public_base(),
        region_header: ctx.settings.region_header.clone(),
        policy: SteeringPolicy::default(),
    });
    let limits = BlockingLimits {
        per_client: ctx.settings.max_held_per_client,
        ..BlockingLimits::default()
    };
    let playback = Router::new()
        .merge(crate::hls::http::router(
            ctx.hls.clone(),
            ctx.hls_stats.clone(),
            Some(Arc::new(PullOpener(ctx.pulls.clone()))),
            limits,
        ))
        .merge(crate::mjpeg::router(
            Arc::new(PullMedia(ctx.pulls.clone())),
            ctx.mjpeg_stats.clone(),
            Default::default(),
        ))
        .merge(crate::webrtc::http::whep_router(
            ctx.webrtc.clone(),
            Arc::new(PullMedia(ctx.pulls.clone())),
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(OriginsKeys(ctx.origins.clone())) as Arc<dyn KeySource>,
            crate::access::check,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(ctx.clone())
        .merge(playback)
        .merge(crate::play::router(steering))
}

async fn healthz(State(ctx): State<Arc<EdgeCtx>>) -> impl IntoResponse {
    if ctx.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn metrics(State(ctx): State<Arc<EdgeCtx>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        ctx.render_metrics(),
    )
}

/// Runs an edge until `shutdown` is cancelled, then drains it.
pub async fn run(settings: EdgeSettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating {}", settings.data_dir.display()))?;
    let http = TcpListener::bind(settings.http)
        .await
        .with_context(|| format!("binding HTTP {}", settings.http))?;
    let webrtc = crate::webrtc::WebRtc::bind(settings.webrtc.clone(), shutdown.clone())
        .await
        .with_context(|| format!("binding WebRTC UDP {}", settings.webrtc.udp))?;
    let (identity, voters) = identity(&settings).await?;
    let endpoint = Endpoint::bind(settings.cluster, &identity, shutdown.clone())?;
    let origins = Origins::new(endpoint.clone(), voters, Some(settings.data_dir.clone()));
    if let Err(e) = origins.refresh().await {
        tracing::warn!(error = %e, "no origin answered yet; serving and retrying");
    }
    let tasks = TaskTracker::new();
    let relay_stats = Arc::new(RelayStats::default());
    let hls = Arc::new(HlsRegistry::new(
        settings.hls.clone(),
        Arc::new(MediaCache::new(settings.cache_bytes)),
    ));
    let relay = RelayClient::new(endpoint.clone(), relay_stats.clone());
    let pulls = Pulls::new(
        origins.clone(),
        relay,
        hls.clone(),
        settings.linger,
        tasks.clone(),
        shutdown.clone(),
    );
    let registry = prometheus::Registry::new();
    let ctx = Arc::new(EdgeCtx {
        metrics: PlaybackMetrics::new(&registry),
        registry,
        settings,
        origins: origins.clone(),
        pulls,
        hls,
        hls_stats: Arc::default(),
        mjpeg_stats: Arc::default(),
        relay_stats,
        webrtc,
        ready: AtomicBool::new(false),
    });
    tasks.spawn(origins.clone().run_refresh(shutdown.clone()));
    tasks.spawn(run_heartbeats(ctx.clone(), shutdown.clone()));
    let app = http_router(ctx.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(http, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    ctx.ready.store(true, Ordering::Release);
    println!("{}", banner(&ctx));

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
    endpoint.close().await;
    Ok(())
}

fn banner(ctx: &EdgeCtx) -> String {
    let s = &ctx.settings;
    let base = s.public_base();
    format!(
        "streamhub edge {} ({}) ready\n  origins        {}\n  watch (HLS)    {base}/hls/<app>/<room>/index.m3u8\n  watch (MJPEG)  {base}/live/<app>/<room>/mjpeg\n  watch (WHEP)   {base}/whep/<app>/<room>  (media on udp {})\n  steering       {base}/play/<app>/<room>\n  metrics        {base}/metrics",
        s.node_name,
        s.region,
        ctx.origins.addrs().join(", "),
        ctx.webrtc.local_addr(),
    )
}

/// Every [`HEARTBEAT_EVERY`]: this edge's load, through any origin, to the registry.
async fn run_heartbeats(ctx: Arc<EdgeCtx>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sampler = crate::load::LoadSampler::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let bytes = ctx.hls_stats.bytes_out.load(Ordering::Relaxed)
            + ctx.mjpeg_stats.bytes_out.load(Ordering::Relaxed);
        let (egress_bps, cpu) = sampler.sample(bytes);
        let beat = Heartbeat {
            node: ctx.settings.node_name.clone(),
            load: NodeLoad {
                rooms: ctx.pulls.list().len() as u32,
                publishers: 0,
                viewers: ctx.pulls.viewers() as u32,
                egress_bps,
                cpu,
            },
        };
        if let Err(e) = ctx.origins.heartbeat(&beat).await {
            tracing::warn!(error = %e, "heartbeat not delivered");
        }
    }
}
