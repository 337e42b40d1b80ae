//! An edge node: joins the cluster (first start) or restarts as the member it was, registers in
//! the node registry through its heartbeats, pulls rooms from origins on demand and serves them
//! as HLS/LL-HLS, MJPEG and WHEP, and steers viewers. `run` is wiring only: it owns every task
//! and drains them on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::Router;
use futures::future::BoxFuture;
use streamhub_cluster::join::{self, Joiner};
use streamhub_cluster::load::LoadSampler;
use streamhub_cluster::registry::{process_boot, SteeringPolicy, HEARTBEAT_EVERY};
use streamhub_cluster::state::{Heartbeat, NodeLoad, NodeRecord, NodeRole};
use streamhub_cluster::transport::{Endpoint, NodeIdentity};
use streamhub_media::access::{
    Gate, Remembering, RememberingAccess, RoomPolicies, TokenVerifier, ViewerTracker,
};
use streamhub_media::drain::{Draining, DRAINING_HEADER};
use streamhub_media::hls::http::RoomOpener;
use streamhub_media::hls::{HlsRegistry, HlsRoom, MediaCache};
use streamhub_media::metrics::{PlaybackMetrics, PlaybackSample, PlaybackStats};
use streamhub_media::mjpeg::{MediaLookup, Viewing};
use streamhub_media::node::surface::Serving;
use streamhub_media::node::{Health, MetricsSource};
use streamhub_media::play::{NodeDirectory, Steering};
use streamhub_media::relay::RelayClient;
use streamhub_media::webrtc::WebRtc;
use streamhub_shared::{AppName, RoomName};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::EdgeSettings;
use crate::origins::Origins;
use crate::pull::Pulls;

/// Runs an edge until `shutdown` is cancelled. Once `terminate` is cancelled (SIGTERM) it
/// drains first: see [`drain_then_stop`].
pub async fn run(
    settings: EdgeSettings,
    shutdown: CancellationToken,
    terminate: CancellationToken,
) -> anyhow::Result<()> {
    let s = &settings.node;
    let tasks = TaskTracker::new();
    let (surface, _tls) = streamhub_media::node::open_surface(s, &tasks, &shutdown).await?;
    let webrtc = WebRtc::bind(s.webrtc.clone(), shutdown.clone())
        .await
        .with_context(|| format!("binding WebRTC UDP {}", s.webrtc.udp))?;
    let (identity, voters) = identity(&settings).await?;
    let endpoint = Endpoint::bind(s.cluster, &identity, shutdown.clone())?;
    let origins = Origins::new(endpoint.clone(), voters, Some(s.data_dir.clone()));
    if let Err(e) = origins.refresh().await {
        tracing::warn!(error = %e, "no origin answered yet; serving and retrying");
    }
    let stats = PlaybackStats::default();
    let hls = Arc::new(HlsRegistry::new(
        s.hls.clone(),
        Arc::new(MediaCache::new(s.cache_bytes)),
    ));
    let pulls = Pulls::new(
        origins.clone(),
        RelayClient::new(endpoint.clone(), stats.relay.clone()),
        hls.clone(),
        settings.linger,
        tasks.clone(),
        shutdown.clone(),
    );
    let viewers = Arc::new(ViewerTracker::default());
    let registry = prometheus::Registry::new();
    let metrics = Arc::new(EdgeMetrics {
        playback: PlaybackMetrics::new(&registry),
        registry,
        stats: stats.clone(),
        hls: hls.clone(),
        pulls: pulls.clone(),
        webrtc: webrtc.clone(),
        viewers: viewers.clone(),
    });
    let draining = Draining::default();
    let health = Health::with_draining(draining.clone());
    let gate = Gate {
        verifier: Arc::new(Remembering::new(OriginsKeys(origins.clone()))),
        rooms: Arc::new(RememberingAccess::new(OriginsAccess(origins.clone()))),
        viewers: viewers.clone(),
        me: s.node_name.clone(),
    };
    let router = http_router(
        &settings, &origins, &pulls, &hls, &stats, &webrtc, gate, &draining,
    )
    .merge(streamhub_media::node::routes(
        health.clone(),
        metrics,
        s.metrics_token.as_deref(),
    ))
    .layer(axum::middleware::map_response_with_state(
        (
            draining.clone(),
            HeaderValue::try_from(s.node_name.as_str())?,
        ),
        mark_draining,
    ));
    tasks.spawn(origins.clone().run_refresh(shutdown.clone()));
    let drain = Drain {
        draining,
        webrtc: webrtc.clone(),
        beat_now: Arc::new(tokio::sync::Notify::new()),
    };
    tasks.spawn(run_heartbeats(
        s.node_name.clone(),
        origins.clone(),
        pulls.clone(),
        stats,
        viewers,
        drain.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(drain_then_stop(
        terminate,
        settings.drain,
        pulls,
        drain,
        shutdown.clone(),
    ));
    let serving = Serving::start(surface, router, shutdown.clone());
    health.set_ready();
    println!("{}", banner(&settings, &origins, &webrtc));
    serving.until_shutdown(&tasks).await;
    endpoint.close().await;
    Ok(())
}

/// Loads this edge's cluster identity, or joins through `--join` on the first start. Returns
/// the identity and the origins' cluster addresses learned from the join.
async fn identity(settings: &EdgeSettings) -> anyhow::Result<(NodeIdentity, Vec<String>)> {
    let s = &settings.node;
    if let Some(identity) = join::existing_identity(&s.data_dir, &s.node_name)? {
        return Ok((identity, Vec::new()));
    }
    let who = Joiner {
        name: s.node_name.clone(),
        role: NodeRole::Edge,
        cluster_addr: s.advertised_cluster_addr(),
        http_url: s.public_base(),
        rtmp_url: None,
        region: s.region.clone(),
        ca_root: s.join_ca_root.clone(),
    };
    let (identity, answer) =
        join::join_and_save(&s.data_dir, &s.join, s.join_token.as_deref(), &who).await?;
    tracing::info!(voters = ?answer.voters, "joined the cluster as an edge");
    Ok((identity, answer.voters))
}

/// What a drain acts on.
#[derive(Clone)]
struct Drain {
    draining: Draining,
    webrtc: Arc<WebRtc>,
    /// Sends a heartbeat now (the cluster learns of a SIGTERM drain at once).
    beat_now: Arc<tokio::sync::Notify>,
}

impl Drain {
    /// The node began draining (`why`): its WHEP sessions end, which tells their players to
    /// ask steering again (it leaves this node out now).
    fn began(&self, why: &str) {
        let ended = self.webrtc.close_all();
        tracing::info!(
            why,
            whep_sessions_ended = ended,
            "draining: no new viewers; players are told to move"
        );
    }
}

/// Marks every answer of a draining node with [`DRAINING_HEADER`] (exposed to other origins on
/// every CORS answer): the player page and the SDK move their HLS players on seeing it.
async fn mark_draining(
    State((draining, me)): State<(Draining, HeaderValue)>,
    mut resp: axum::response::Response,
) -> axum::response::Response {
    let h = resp.headers_mut();
    // Readable by pages on other origins whether or not it is there (a page asking for a header
    // it may not read gets a console error).
    if h.contains_key(axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        h.append(
            axum::http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(DRAINING_HEADER),
        );
    }
    if draining.is_on() {
        h.insert(DRAINING_HEADER, me);
    }
    resp
}

/// The shortest drain after SIGTERM (unless `--drain-secs` is shorter).
const MIN_DRAIN: Duration = Duration::from_secs(2);

/// On SIGTERM: drains (leaves steering, ends WHEP sessions, says so in its heartbeats) and keeps
/// serving until its viewers are gone or `grace` has passed, then stops the node.
async fn drain_then_stop(
    terminate: CancellationToken,
    grace: Duration,
    pulls: Arc<Pulls>,
    drain: Drain,
    shutdown: CancellationToken,
) {
    tokio::select! {
        () = shutdown.cancelled() => return,
        () = terminate.cancelled() => {}
    }
    if drain.draining.set_by_signal() {
        drain.began("SIGTERM");
    }
    drain.beat_now.notify_one();
    let started = tokio::time::Instant::now();
    let until = started + grace;
    // Long enough for a load balancer to see `/healthz` answer 503 even with no viewer left.
    let at_least = started + grace.min(MIN_DRAIN);
    loop {
        let whep = drain
            .webrtc
            .stats
            .sessions
            .load(std::sync::atomic::Ordering::Relaxed) as usize;
        let left = pulls.viewers() + whep;
        let now = tokio::time::Instant::now();
        if (left == 0 && now >= at_least) || now >= until {
            tracing::info!(viewers_left = left, "drained: stopping");
            shutdown.cancel();
            return;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// The playback routes, each resolving rooms through the pulls from origins.
#[allow(clippy::too_many_arguments)]
fn http_router(
    settings: &EdgeSettings,
    origins: &Arc<Origins>,
    pulls: &Arc<Pulls>,
    hls: &Arc<HlsRegistry>,
    stats: &PlaybackStats,
    webrtc: &Arc<WebRtc>,
    gate: Gate,
    draining: &Draining,
) -> Router {
    let s = &settings.node;
    let steering = Arc::new(Steering {
        directory: Arc::new(OriginsDirectory(origins.clone())),
        me: s.node_name.clone(),
        region: s.region.clone(),
        public_url: s.public_base(),
        region_header: s.region_header.clone(),
        policy: SteeringPolicy::default(),
        draining: draining.clone(),
    });
    let media = Arc::new(PullMedia(pulls.clone()));
    Router::new()
        .merge(streamhub_media::hls::http::router(
            hls.clone(),
            stats.hls.clone(),
            Some(Arc::new(PullOpener(pulls.clone()))),
            s.blocking,
        ))
        .merge(streamhub_media::mjpeg::router(
            media.clone(),
            stats.mjpeg.clone(),
            Default::default(),
        ))
        .merge(streamhub_media::webrtc::http::whep_router(
            webrtc.clone(),
            media,
            draining.clone(),
        ))
        .merge(streamhub_media::play::router(steering.clone()))
        .layer(axum::middleware::from_fn_with_state(
            gate,
            streamhub_media::access::check,
        ))
        // The SDK, the sample pages and `/` (pointing at an origin): public, no viewer check.
        .merge(streamhub_media::web::router(steering, false))
}

fn banner(settings: &EdgeSettings, origins: &Origins, webrtc: &WebRtc) -> String {
    let s = &settings.node;
    let base = s.public_base();
    format!(
        "streamhub edge {} ({}) ready\n  origins        {}\n  watch (HLS)    {base}/hls/<app>/<room>/index.m3u8\n  watch (MJPEG)  {base}/live/<app>/<room>/mjpeg\n  watch (WHEP)   {base}/whep/<app>/<room>  (media on udp {})\n  steering       {base}/play/<app>/<room>\n  metrics        {base}/metrics",
        s.node_name,
        s.region,
        origins.addrs().join(", "),
        webrtc.local_addr(),
    )
}

/// Every [`HEARTBEAT_EVERY`]: this edge's load, through any origin, to the registry.
async fn run_heartbeats(
    node: String,
    origins: Arc<Origins>,
    pulls: Arc<Pulls>,
    stats: PlaybackStats,
    viewers: Arc<ViewerTracker>,
    drain: Drain,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sampler = LoadSampler::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            () = drain.beat_now.notified() => {}
        }
        let (egress_bps, cpu) = sampler.sample(stats.bytes_out());
        let beat = Heartbeat {
            node: node.clone(),
            load: NodeLoad {
                rooms: pulls.list().len() as u32,
                publishers: 0,
                viewers: pulls.viewers() as u32,
                egress_bps,
                cpu,
                app_viewers: viewers.report(std::time::Instant::now()),
                room_viewers: viewers.room_report(std::time::Instant::now()),
            },
            // Set by the origin from this node's certificate.
            cert_fingerprint: None,
            draining: drain.draining.by_signal(),
            boot: process_boot(),
        };
        match origins.heartbeat(&beat).await {
            Ok(Some(answer)) => {
                if drain.draining.set_by_cluster(answer.draining) {
                    drain.began("the cluster drains this node");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "heartbeat not delivered"),
        }
    }
}

/// The edge's `/metrics`: the playback side.
struct EdgeMetrics {
    registry: prometheus::Registry,
    playback: PlaybackMetrics,
    stats: PlaybackStats,
    hls: Arc<HlsRegistry>,
    pulls: Arc<Pulls>,
    webrtc: Arc<WebRtc>,
    viewers: Arc<ViewerTracker>,
}

impl MetricsSource for EdgeMetrics {
    fn render(&self) -> String {
        self.playback.sample(&PlaybackSample {
            hls: &self.stats.hls,
            cache: self.hls.cache(),
            relay: &self.stats.relay,
            mjpeg: &self.stats.mjpeg,
            webrtc: &self.webrtc.stats,
            viewers: self.pulls.viewers() as u64,
            rooms: self.pulls.list().len() as u64,
            tracker: &self.viewers,
        });
        streamhub_media::metrics::render(&self.registry)
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

/// Viewer tokens checked with what the origins give an edge (see [`Origins::verify_token`]).
struct OriginsKeys(Arc<Origins>);

impl TokenVerifier for OriginsKeys {
    fn verify(
        &self,
        app: &AppName,
        token: &str,
    ) -> BoxFuture<'static, Result<Arc<streamhub_shared::auth::AccessClaims>, String>> {
        let (origins, app, token) = (self.0.clone(), app.clone(), token.to_string());
        Box::pin(async move { origins.verify_token(&app, &token).await.map(Arc::new) })
    }
}

/// Who may watch a room, as an origin says (see [`Origins::room_access`]).
struct OriginsAccess(Arc<Origins>);

impl RoomPolicies for OriginsAccess {
    fn access(
        &self,
        app: &AppName,
        room: &RoomName,
    ) -> BoxFuture<'static, Result<Option<Arc<streamhub_cluster::query::RoomAccess>>, String>> {
        let (origins, app, room) = (self.0.clone(), app.clone(), room.clone());
        Box::pin(async move { origins.room_access(&app, &room).await })
    }
}

struct OriginsDirectory(Arc<Origins>);

impl NodeDirectory for OriginsDirectory {
    fn nodes(&self) -> Arc<Vec<NodeRecord>> {
        self.0.nodes()
    }
}
