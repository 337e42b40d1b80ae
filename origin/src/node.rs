//! An origin node, wired: its listeners, its services and the adapters between them and the
//! media plane. `run` owns every task and drains them on shutdown; the rules live in the
//! services (see the crate docs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::recording::{Recorder, RecorderConfig};
use anyhow::Context as _;
use axum::routing::get;
use axum::Router;
use futures::future::BoxFuture;
use streamhub_cluster::raft::{RaftNode, Start};
use streamhub_cluster::registry::SteeringPolicy;
use streamhub_cluster::state::{NodeLoad, NodeRecord, NodeRole};
use streamhub_cluster::transport::Endpoint;
use streamhub_media::access::{
    Gate, Remembering, RememberingAccess, RoomPolicies, TokenVerifier, ViewerTracker,
};
use streamhub_media::hls::{HlsRegistry, MediaCache};
use streamhub_media::metrics::PlaybackStats;
use streamhub_media::mjpeg::{MediaLookup, Viewing};
use streamhub_media::node::surface::Serving;
use streamhub_media::node::Health;
use streamhub_media::play::{NodeDirectory, Steering};
use streamhub_media::relay::{RelayServer, RelaySource};
use streamhub_media::webrtc::WebRtc;
use streamhub_shared::auth::AccessClaims;
use streamhub_shared::media::{GroupPolicy, MediaHandle};
use streamhub_shared::relay::ErrorCode;
use streamhub_shared::{AppName, RoomName};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::config::Settings;
use crate::credentials::{unix_now_ms, Sessions};
use crate::heartbeat::{HeartbeatBatch, Heartbeats};
use crate::keyring::Keyring;
use crate::membership::{self, Membership, Startup};
use crate::metrics::{Metrics, Sources};
use crate::placement::{Placement, Released};
use crate::rooms::{Publisher, RoomObserver, Rooms};
use crate::rtmp::{Ingest, RtmpConfig};
use crate::rtsp::Pulls;
use crate::services::{PublicUrls, Services};
use crate::tenants::Tenants;
use crate::wsmjpeg::WsIngest;

/// Runs a node until `shutdown` is cancelled, then drains it.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let s = &settings.node;
    let tasks = TaskTracker::new();
    let (surface, tls) = streamhub_media::node::open_surface(s, &tasks, &shutdown).await?;
    let rtmp_listener = streamhub_media::node::bind(settings.rtmp, "RTMP").await?;
    let rtmps_listener = match settings.rtmps {
        Some(addr) => Some(streamhub_media::node::bind(addr, "RTMPS").await?),
        None => None,
    };
    let rtmps_port = match &rtmps_listener {
        Some(l) => Some(l.local_addr()?.port()),
        None => None,
    };
    let srt_listener = match settings.srt {
        Some(addr) => Some(
            srt_tokio::SrtListener::builder()
                .bind(addr)
                .await
                .with_context(|| format!("binding SRT {addr}"))?,
        ),
        None => None,
    };
    let srt_port = settings.srt.map(|a| a.port());
    let urls = PublicUrls::new(s, rtmp_listener.local_addr()?.port(), rtmps_port, srt_port);
    let (identity, startup) = membership::prepare(s, urls.rtmp()).await?;
    let endpoint = Endpoint::bind(s.cluster, &identity, shutdown.clone())?;
    let keyring = Keyring::load(streamhub_cluster::join::identity_dir(&s.data_dir))?;
    keyring.register_service(&endpoint);
    if let Startup::Join { answer } = &startup {
        // Before the state arrives: without the key its secrets cannot be opened.
        keyring
            .fetch_at_join(&endpoint, &answer.voters, Duration::from_secs(60))
            .await?;
    }
    forget_node_session_secret(&s.data_dir);
    let raft = Arc::new(open_raft(&settings, endpoint, &startup).await?);
    let webrtc = WebRtc::bind(s.webrtc.clone(), shutdown.clone())
        .await
        .with_context(|| format!("binding WebRTC UDP {}", s.webrtc.udp))?;
    let stats = PlaybackStats::default();
    let hls = Arc::new(HlsRegistry::new(
        s.hls.clone(),
        Arc::new(MediaCache::new(s.cache_bytes)),
    ));
    let (released_tx, released_rx) = mpsc::channel(1024);
    let tenants = Tenants::new(raft.clone(), keyring.clone());
    let recorder = Recorder::new(
        tenants.clone(),
        s.node_name.clone(),
        RecorderConfig {
            spool_dir: s.data_dir.join("recordings"),
            spool_bytes: settings.record_spool_bytes,
            part_bytes: settings.record_part_bytes,
            resume: settings.record_resume,
        },
        tasks.clone(),
    );
    let rooms = Rooms::new(
        Arc::new(NodeObserver {
            hls: hls.clone(),
            tasks: tasks.clone(),
            released: released_tx,
            recorder: recorder.clone(),
        }),
        GroupPolicy {
            target: s.hls.target_duration,
        },
    );
    rooms.keep_history(s.hls.window);
    let placement = Placement::new(raft.clone(), s.node_name.clone());
    let admission = Arc::new(Admission::new(
        tenants.clone(),
        Arc::new(placement.clone()),
        rooms.clone(),
    ));
    let membership = Membership::new(
        tenants.clone(),
        s.node_name.clone(),
        tasks.clone(),
        shutdown.clone(),
    );
    let health = Health::default();
    let viewers = Arc::new(ViewerTracker::default());
    let heartbeats = Arc::new(Heartbeats {
        raft: raft.clone(),
        me: s.node_name.clone(),
        fingerprint: identity.fingerprint.clone(),
        health: health.clone(),
        batch: HeartbeatBatch::default(),
        rooms: rooms.clone(),
        admission: admission.clone(),
        placement: placement.clone(),
        stats: stats.clone(),
        viewers: viewers.clone(),
    });
    membership.register_services();
    heartbeats.register_service();
    // Serves edges while it lives: kept to the end of `run`.
    let relay = RelayServer::new(
        Arc::new(OriginRelaySource {
            rooms: rooms.clone(),
            placement: placement.clone(),
            me: s.node_name.clone(),
        }),
        stats.relay.clone(),
    );
    relay.register(raft.endpoint());
    membership
        .settle(
            startup,
            own_record(&settings, &urls, &raft, &identity.fingerprint),
        )
        .await?;
    tasks.spawn(keyring.clone().maintain(raft.clone(), shutdown.clone()));
    tasks.spawn(crate::trust::run_revocations(
        raft.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(crate::trust::run_health(
        raft.clone(),
        health.clone(),
        s.data_dir.clone(),
        shutdown.clone(),
    ));
    let admin_user = std::env::var("ADMIN_USER").unwrap_or_else(|_| "admin".into());
    let admin_pass = std::env::var("ADMIN_PASS").ok().filter(|p| !p.is_empty());
    let first = crate::bootstrap::first_start(&tenants, &admin_user, admin_pass.as_deref()).await?;

    let ingest = Ingest::new(
        admission.clone(),
        RtmpConfig {
            max_per_address: settings.ingest_max_per_address,
            ..RtmpConfig::default()
        },
    );
    let rtmp_stats = ingest.stats.clone();
    tasks.spawn(crate::rtmp::serve(
        rtmp_listener,
        None,
        ingest.clone(),
        shutdown.clone(),
    ));
    let srt_stats = Arc::new(crate::srt::SrtStats::default());
    if let Some(listener) = srt_listener {
        tasks.spawn(crate::srt::serve(
            settings.srt.expect("bound"),
            listener,
            admission.clone(),
            crate::srt::SrtConfig {
                max_per_address: settings.ingest_max_per_address,
                ..Default::default()
            },
            srt_stats.clone(),
            shutdown.clone(),
        ));
    }
    if let (Some(listener), Some(tls)) = (rtmps_listener, &tls) {
        tasks.spawn(crate::rtmp::serve(
            listener,
            Some(tls.acceptor(&[])),
            ingest,
            shutdown.clone(),
        ));
    }
    let rtsp = Arc::new(Pulls::new(
        admission.clone(),
        placement.clone(),
        tenants.clone(),
        s.node_name.clone(),
        tasks.clone(),
    ));
    tasks.spawn(sweep_hls(hls.clone(), shutdown.clone()));
    tasks.spawn(rtsp.clone().run_supervisor(shutdown.clone()));
    tasks.spawn(heartbeats.clone().run(shutdown.clone()));
    tasks.spawn(heartbeats.clone().run_expiry(shutdown.clone()));
    tasks.spawn(heartbeats.run_leases(shutdown.clone()));
    tasks.spawn(placement.run_releases(released_rx, shutdown.clone()));
    tasks.spawn(recorder.clone().run(shutdown.clone()));
    let webhooks = crate::webhooks::Webhooks::new(
        tenants.clone(),
        s.node_name.clone(),
        settings.webhook_allow_private,
    )?;
    tasks.spawn(webhooks.clone().run(shutdown.clone()));

    let ws = Arc::new(WsIngest::default());
    let metrics = Arc::new(Metrics::new(Sources {
        rooms: rooms.clone(),
        playback: stats.clone(),
        hls: hls.clone(),
        webrtc: webrtc.clone(),
        rtmp: rtmp_stats,
        srt: srt_stats,
        ws: ws.stats.clone(),
        raft: raft.clone(),
        recorder: recorder.clone(),
        webhooks: webhooks.stats(),
        viewers: viewers.clone(),
    }));
    let services = Services {
        tenants: tenants.clone(),
        sessions: Sessions::new(tenants.clone(), admin_pass.map(|p| (admin_user.clone(), p)))?,
        login: {
            let login = crate::login::LoginGuard::default();
            login.warm_up();
            login
        },
        admission,
        rooms,
        membership,
        urls: urls.clone(),
        steering: Arc::new(Steering {
            directory: Arc::new(RaftDirectory(raft.clone())),
            me: s.node_name.clone(),
            region: s.region.clone(),
            public_url: s.public_base(),
            region_header: s.region_header.clone(),
            policy: SteeringPolicy::default(),
            draining: Default::default(),
        }),
        webrtc: webrtc.clone(),
        rtsp,
        ws,
        shutdown: shutdown.clone(),
        authz: crate::api::Authz(settings.authz),
        viewers,
        recorder,
        webhooks,
    };
    let router = http_router(&settings, services, &hls, &stats).merge(
        streamhub_media::node::routes(health.clone(), metrics, s.metrics_token.as_deref()),
    );
    let serving = Serving::start(surface, router, shutdown.clone());
    health.set_ready();
    println!(
        "{}",
        crate::bootstrap::banner(&urls, webrtc.local_addr(), &first, &admin_user)
    );
    serving.until_shutdown(&tasks).await;
    drop(relay);
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    raft.endpoint().close().await;
    Ok(())
}

/// The HTTP routes of an origin: the API, ingest (WHIP, WebSocket-MJPEG), the publish page,
/// and playback of its own rooms behind the viewer-token check.
fn http_router(
    settings: &Settings,
    services: Services,
    hls: &Arc<HlsRegistry>,
    stats: &PlaybackStats,
) -> Router {
    let media = Arc::new(RoomsMedia(services.rooms.clone()));
    let gate = Gate {
        verifier: Arc::new(Remembering::new(TenantKeys(services.tenants.clone()))),
        rooms: Arc::new(RememberingAccess::new(StateAccess(
            services.tenants.clone(),
        ))),
        viewers: services.viewers.clone(),
        me: settings.node.node_name.clone(),
    };
    let playback = Router::new()
        .merge(streamhub_media::hls::http::router(
            hls.clone(),
            stats.hls.clone(),
            None,
            settings.node.blocking,
        ))
        .merge(streamhub_media::mjpeg::router(
            media.clone(),
            stats.mjpeg.clone(),
            Default::default(),
        ))
        .merge(streamhub_media::webrtc::http::whep_router(
            services.webrtc.clone(),
            media,
            Default::default(),
        ))
        .merge(streamhub_media::play::router(services.steering.clone()))
        .layer(axum::middleware::from_fn_with_state(
            gate,
            streamhub_media::access::check,
        ));
    Router::new()
        .route("/ingest/ws", get(crate::wsmjpeg::upgrade))
        .route(
            "/publish/{app}/{room}",
            get(streamhub_media::play::publish_page),
        )
        .with_state(services.clone())
        .merge(crate::api::router(services.clone()))
        .merge(crate::whip::router(services.clone()))
        .merge(crate::dashboard::router())
        .merge(streamhub_media::web::router(
            services.steering.clone(),
            true,
        ))
        .merge(playback)
}

async fn open_raft(
    settings: &Settings,
    endpoint: Endpoint,
    startup: &Startup,
) -> anyhow::Result<RaftNode> {
    let s = &settings.node;
    let raft_id = streamhub_cluster::raft::node_id_from_name(&s.node_name);
    let start = match startup {
        Startup::Join { .. } => Start::Join,
        _ => Start::Bootstrap,
    };
    let mut config = streamhub_cluster::raft::default_config();
    config.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(settings.raft_snapshot_logs);
    config.max_in_snapshot_log_to_keep = (settings.raft_snapshot_logs / 5).min(1000);
    let addr = s.advertised_cluster_addr();
    Ok(RaftNode::open_with_config(&s.data_dir, raft_id, addr, endpoint, start, config).await?)
}

/// Removes the per-node session secret of versions before sessions were cluster-wide: it
/// signs nothing any more.
fn forget_node_session_secret(data_dir: &std::path::Path) {
    let old = data_dir.join("jwt-secret");
    if old.is_file() && std::fs::remove_file(&old).is_ok() {
        tracing::info!(path = %old.display(), "removed the old per-node session secret (sessions are cluster-wide now)");
    }
}

/// This origin's record in the registry (written when it bootstraps a cluster).
fn own_record(
    settings: &Settings,
    urls: &PublicUrls,
    raft: &RaftNode,
    fingerprint: &str,
) -> NodeRecord {
    let s = &settings.node;
    let now = unix_now_ms();
    NodeRecord {
        name: s.node_name.clone(),
        id: raft.node_id(),
        role: NodeRole::Origin,
        region: s.region.clone(),
        http_url: s.public_base(),
        rtmp_url: Some(urls.rtmp()),
        cluster_addr: s.advertised_cluster_addr(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        load: NodeLoad::default(),
        registered_at_ms: now,
        last_heartbeat_ms: now,
        cert_fingerprint: Some(fingerprint.to_string()),
        draining_since_ms: None,
        boot: 0,
        draining_boot: 0,
    }
}

/// Starts an HLS packager for every room that starts, and queues the release of the placement
/// of every room that ends.
struct NodeObserver {
    hls: Arc<HlsRegistry>,
    tasks: TaskTracker,
    released: mpsc::Sender<Released>,
    recorder: Recorder,
}

impl RoomObserver for NodeObserver {
    fn room_started(&self, app: &AppName, room: &RoomName, publisher: &Publisher, takeover: bool) {
        tracing::info!(%app, %room, takeover, "room started");
        let hls_room = self.hls.start(app, room);
        let session = hls_room.session();
        let consumer = publisher.media().subscribe();
        self.recorder
            .room_started(app, room, hls_room.clone(), publisher.media().handle());
        self.tasks.spawn(streamhub_media::hls::run_packager(
            consumer, hls_room, session,
        ));
    }

    fn room_ended(&self, app: &AppName, room: &RoomName, epoch: u64, why: &'static str) {
        tracing::info!(%app, %room, epoch, why, "room ended");
        self.recorder.room_ended(app, room);
        let r = Released {
            app: app.clone(),
            room: room.clone(),
            epoch,
            why,
        };
        // A full queue only means the lease expires instead of being released early.
        let _ = self.released.try_send(r);
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

/// The registry from this origin's replica.
struct RaftDirectory(Arc<RaftNode>);

impl NodeDirectory for RaftDirectory {
    fn nodes(&self) -> Arc<Vec<NodeRecord>> {
        Arc::new(
            self.0
                .read(|s| s.registry.nodes.values().cloned().collect()),
        )
    }
}

/// The relay serves this origin's live rooms; for a room live elsewhere it names the holder.
struct OriginRelaySource {
    rooms: Arc<Rooms>,
    placement: Placement,
    me: String,
}

impl RelaySource for OriginRelaySource {
    fn lookup(&self, app: &AppName, room: &RoomName) -> Result<MediaHandle, ErrorCode> {
        if let Some(media) = self.rooms.media(app, room) {
            return Ok(media);
        }
        match self.placement.holder(app, room) {
            Some(node) if node != self.me => Err(ErrorCode::NotHere { holder: Some(node) }),
            _ => Err(ErrorCode::UnknownRoom),
        }
    }
}

/// Viewer tokens checked with this origin's keys (both signatures).
struct TenantKeys(Tenants);

impl TokenVerifier for TenantKeys {
    fn verify(
        &self,
        app: &AppName,
        token: &str,
    ) -> BoxFuture<'static, Result<Arc<AccessClaims>, String>> {
        let (tenants, app, token) = (self.0.clone(), app.clone(), token.to_string());
        Box::pin(async move { tenants.verify_token(&app, &token).await.map(Arc::new) })
    }
}

/// Who may watch a room, from this origin's replica.
struct StateAccess(Tenants);

impl RoomPolicies for StateAccess {
    fn access(
        &self,
        app: &AppName,
        room: &RoomName,
    ) -> BoxFuture<'static, Result<Option<Arc<streamhub_cluster::query::RoomAccess>>, String>> {
        let access = self
            .0
            .read(|s| streamhub_cluster::query::RoomAccess::of(s, app, room))
            .map(Arc::new);
        Box::pin(async move { Ok(access) })
    }
}

/// Viewers of this origin read its live rooms directly.
struct RoomsMedia(Arc<Rooms>);

impl MediaLookup for RoomsMedia {
    fn media(
        &self,
        app: &AppName,
        room: &RoomName,
        _client: SocketAddr,
    ) -> BoxFuture<'static, Option<Viewing>> {
        let media = self.0.media(app, room);
        Box::pin(async move {
            Some(Viewing {
                media: media?,
                hold: None,
            })
        })
    }
}
