//! `GET /metrics`: Prometheus text exposition, sampled from the node's counters at scrape time.

use std::sync::Arc;

use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry};
use streamhub_cluster::raft::RaftNode;
use streamhub_media::hls::HlsRegistry;
use streamhub_media::metrics::{
    counter, gauge, gauge_vec, render, sync_counter, PlaybackMetrics, PlaybackSample, PlaybackStats,
};
use streamhub_media::node::MetricsSource;
use streamhub_media::webrtc::WebRtc;

use crate::rooms::{Protocol, Rooms};
use crate::rtmp::RtmpStats;
use crate::srt::SrtStats;
use crate::wsmjpeg::WsStats;

/// What an origin's metrics are sampled from.
pub struct Sources {
    pub rooms: Arc<Rooms>,
    pub playback: PlaybackStats,
    pub hls: Arc<HlsRegistry>,
    pub webrtc: Arc<WebRtc>,
    pub rtmp: Arc<RtmpStats>,
    pub srt: Arc<SrtStats>,
    pub ws: Arc<WsStats>,
    pub raft: Arc<RaftNode>,
    pub recorder: crate::recording::Recorder,
    pub webhooks: Arc<crate::webhooks::Stats>,
    /// This origin's viewers (it serves playback too).
    pub viewers: Arc<streamhub_media::access::ViewerTracker>,
}

/// The origin's `/metrics`: its Prometheus registry and where each value comes from.
pub struct Metrics {
    sources: Sources,
    registry: Registry,
    live_rooms: IntGauge,
    backfill_bytes: IntGauge,
    publishers: IntGaugeVec,
    app_usage: IntGaugeVec,
    app_quota: IntGaugeVec,
    playback: PlaybackMetrics,
    rtmp_connections: IntCounter,
    rtmp_refused: IntCounter,
    rtmp_handshake_failures: IntCounter,
    rtmp_connections_refused: IntCounter,
    rtmp_bytes_in: IntCounter,
    srt_connections: IntCounter,
    srt_rejected: IntCounter,
    srt_refused: IntCounter,
    srt_bytes_in: IntCounter,
    srt_restarts: IntCounter,
    srt_screened: IntCounter,
    srt_panics: IntCounter,
    ws_connections: IntCounter,
    frames_fenced: IntCounter,
    ws_refused: IntCounter,
    ws_frames_in: IntCounter,
    ws_frames_invalid: IntCounter,
    ws_frames_rate_limited: IntCounter,
    ws_bytes_in: IntCounter,
    raft_term: IntGauge,
    raft_leader: IntGauge,
    raft_is_leader: IntGauge,
    raft_applied: IntGauge,
    raft_last_log: IntGauge,
    raft_apply_lag: IntGauge,
    raft_replication_lag: IntGaugeVec,
    app_ingest: prometheus::IntCounterVec,
    spool_bytes: IntGauge,
    spool_limit: IntGauge,
    recordings: IntGauge,
    uploaded: IntCounter,
    webhook_attempts: prometheus::IntCounterVec,
    webhook_dropped: prometheus::IntCounterVec,
}

impl Metrics {
    /// Registers every metric, sampled from `sources`.
    pub fn new(sources: Sources) -> Self {
        let r = Registry::new();
        let publishers = IntGaugeVec::new(
            Opts::new("streamhub_publishers", "Live publishers by protocol"),
            &["protocol"],
        )
        .expect("valid metric");
        r.register(Box::new(publishers.clone()))
            .expect("unique metric");
        let app_usage = IntGaugeVec::new(
            Opts::new(
                "streamhub_app_usage",
                "What each app uses now, cluster-wide, by kind (live_rooms, publishers, viewers, ingresses, rooms)",
            ),
            &["app", "kind"],
        )
        .expect("valid metric");
        r.register(Box::new(app_usage.clone()))
            .expect("unique metric");
        let app_quota = IntGaugeVec::new(
            Opts::new(
                "streamhub_app_quota",
                "Each app's quotas by kind (absent: unlimited)",
            ),
            &["app", "kind"],
        )
        .expect("valid metric");
        r.register(Box::new(app_quota.clone()))
            .expect("unique metric");
        Self {
            app_usage,
            app_quota,
            live_rooms: gauge(
                &r,
                "streamhub_live_rooms",
                "Rooms with a live publisher on this node",
            ),
            backfill_bytes: gauge(
                &r,
                "streamhub_backfill_history_bytes",
                "Bytes of complete groups the rooms of this node keep for edges that back-fill",
            ),
            publishers,
            playback: PlaybackMetrics::new(&r),
            rtmp_connections: counter(
                &r,
                "streamhub_rtmp_connections_total",
                "RTMP connections accepted",
            ),
            rtmp_refused: counter(
                &r,
                "streamhub_rtmp_publish_refused_total",
                "RTMP publishes refused",
            ),
            rtmp_handshake_failures: counter(
                &r,
                "streamhub_rtmp_handshake_failures_total",
                "RTMP connections that failed the handshake",
            ),
            rtmp_connections_refused: counter(
                &r,
                "streamhub_rtmp_connections_refused_total",
                "RTMP and RTMPS connections closed at once at the node or per-address connection limit",
            ),
            rtmp_bytes_in: counter(&r, "streamhub_rtmp_bytes_in_total", "RTMP bytes received"),
            srt_connections: counter(
                &r,
                "streamhub_srt_connections_total",
                "SRT connection requests",
            ),
            srt_rejected: counter(
                &r,
                "streamhub_srt_rejected_total",
                "SRT connection requests rejected before accept (cap, unknown key, bad stream id)",
            ),
            srt_refused: counter(
                &r,
                "streamhub_srt_publish_refused_total",
                "SRT publishes refused by admission",
            ),
            srt_bytes_in: counter(&r, "streamhub_srt_bytes_in_total", "SRT payload bytes received"),
            srt_restarts: counter(
                &r,
                "streamhub_srt_listener_restarts_total",
                "times the SRT listener died on a handshake and was bound again",
            ),
            srt_screened: counter(
                &r,
                "streamhub_srt_datagrams_screened_total",
                "SRT datagrams refused before parsing (shapes that panic the SRT library's parser)",
            ),
            srt_panics: counter(
                &r,
                "streamhub_srt_parser_panics_total",
                "SRT datagrams or handshake steps that panicked the SRT library and were dropped",
            ),
            ws_connections: counter(
                &r,
                "streamhub_ws_connections_total",
                "WebSocket-MJPEG devices accepted",
            ),
            ws_refused: counter(
                &r,
                "streamhub_ws_refused_total",
                "WebSocket-MJPEG devices refused (key, room busy)",
            ),
            frames_fenced: counter(
                &r,
                "streamhub_publish_frames_fenced_total",
                "Frames held back because their session's placement lease was not seen renewed in time (a frozen or cut-off origin)",
            ),
            ws_frames_in: counter(
                &r,
                "streamhub_ws_frames_total",
                "WebSocket-MJPEG pictures accepted",
            ),
            ws_frames_invalid: counter(
                &r,
                "streamhub_ws_frames_invalid_total",
                "WebSocket messages dropped as invalid (text, not a whole JPEG, too large)",
            ),
            ws_frames_rate_limited: counter(
                &r,
                "streamhub_ws_frames_rate_limited_total",
                "WebSocket-MJPEG pictures dropped by the rate limit",
            ),
            ws_bytes_in: counter(
                &r,
                "streamhub_ws_bytes_in_total",
                "WebSocket-MJPEG picture bytes accepted",
            ),
            raft_term: gauge(&r, "streamhub_raft_term", "Current Raft term"),
            spool_bytes: gauge(
                &r,
                "streamhub_recording_spool_bytes",
                "Recorded media on disk not yet uploaded",
            ),
            spool_limit: gauge(
                &r,
                "streamhub_recording_spool_limit_bytes",
                "The recording spool's bound (--record-spool-mb)",
            ),
            recordings: gauge(
                &r,
                "streamhub_recordings_active",
                "Recordings this origin is recording now",
            ),
            uploaded: counter(
                &r,
                "streamhub_recording_uploaded_bytes_total",
                "Recorded bytes uploaded to S3",
            ),
            webhook_attempts: counter_vec(
                &r,
                "streamhub_webhook_attempts_total",
                "Webhook delivery attempts this origin made, by app and outcome (delivered, \
                 retrying, failed)",
                &["app", "outcome"],
            ),
            app_ingest: counter_vec(
                &r,
                "streamhub_app_ingest_bytes_total",
                "Media bytes this origin received from each app's publishers (rate * 8: the \
                 app's ingest bitrate here)",
                &["app"],
            ),
            raft_last_log: gauge(
                &r,
                "streamhub_raft_last_log_index",
                "Index of the last entry in this node's Raft log",
            ),
            raft_apply_lag: gauge(
                &r,
                "streamhub_raft_apply_lag_entries",
                "Log entries this node holds but has not applied to its state yet",
            ),
            raft_replication_lag: gauge_vec(
                &r,
                "streamhub_raft_replication_lag_entries",
                "On the leader: entries each member (by Raft id) is behind the leader's log (how \
                 far a follower trails the commits)",
                &["peer"],
            ),
            webhook_dropped: counter_vec(
                &r,
                "streamhub_webhook_dropped_total",
                "Events pushed out of an app's log before an endpoint that wanted them took them \
                 (cluster-wide, by app)",
                &["app"],
            ),
            raft_leader: gauge(
                &r,
                "streamhub_raft_leader_id",
                "Raft node id of the current leader (0 if none)",
            ),
            raft_is_leader: gauge(
                &r,
                "streamhub_raft_is_leader",
                "1 if this node is the Raft leader",
            ),
            raft_applied: gauge(
                &r,
                "streamhub_raft_applied_index",
                "Last log index applied to the state machine",
            ),
            registry: r,
            sources,
        }
    }

    /// Samples the node and renders the text format.
    /// Usage and quotas per app, from this origin's replica (apps deleted since the last scrape
    /// disappear).
    fn sample_apps(&self) {
        let now_ms = crate::credentials::unix_now_ms();
        self.app_usage.reset();
        self.app_quota.reset();
        self.sources.raft.read(|s| {
            for (name, app) in &s.tenants.apps {
                let publishers = s
                    .placements
                    .rooms
                    .values()
                    .filter(|p| &p.app == name && p.is_live(now_ms))
                    .count();
                let viewers: u64 = s
                    .registry
                    .nodes
                    .values()
                    .filter_map(|n| n.load.app_viewers.get(name.as_str()))
                    .map(|v| u64::from(*v))
                    .sum();
                let rooms = s
                    .tenants
                    .room_objects
                    .values()
                    .filter(|r| &r.app == name)
                    .count();
                let usage = [
                    (
                        "live_rooms",
                        s.tenants
                            .live_rooms(&s.placements, name, now_ms, None)
                            .len() as u64,
                    ),
                    ("publishers", publishers as u64),
                    ("viewers", viewers),
                    ("ingresses", s.tenants.ingress_count(name) as u64),
                    ("rooms", rooms as u64),
                ];
                for (kind, v) in usage {
                    self.app_usage
                        .with_label_values(&[name.as_str(), kind])
                        .set(v as i64);
                }
                let q = &app.quotas;
                let quotas = [
                    ("live_rooms", q.live_rooms),
                    ("publishers", q.publishers),
                    ("viewers", q.viewers),
                    ("ingest_kbps", q.ingest_kbps),
                    ("ingresses", q.ingresses),
                    ("recording_hours_per_month", q.recording_hours_per_month),
                ];
                for (kind, v) in quotas {
                    if let Some(v) = v {
                        self.app_quota
                            .with_label_values(&[name.as_str(), kind])
                            .set(v.min(i64::MAX as u64) as i64);
                    }
                }
            }
        });
    }

    fn sample(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.sample_apps();
        let src = &self.sources;
        let by_proto = src.rooms.publishers_by_protocol();
        self.live_rooms.set(by_proto.values().sum::<usize>() as i64);
        self.backfill_bytes
            .set(i64::try_from(src.rooms.history_bytes()).unwrap_or(i64::MAX));
        for &p in Protocol::ALL {
            self.publishers
                .with_label_values(&[p.as_str()])
                .set(by_proto.get(&p).copied().unwrap_or(0) as i64);
        }
        self.playback.sample(&PlaybackSample {
            hls: &src.playback.hls,
            cache: src.hls.cache(),
            relay: &src.playback.relay,
            mjpeg: &src.playback.mjpeg,
            webrtc: &src.webrtc.stats,
            viewers: src
                .viewers
                .report(std::time::Instant::now())
                .values()
                .map(|v| u64::from(*v))
                .sum(),
            rooms: src.hls.len() as u64,
            tracker: &src.viewers,
        });
        for (app, bytes) in src.rooms.ingest_bytes_by_app() {
            sync_counter(&self.app_ingest.with_label_values(&[app.as_str()]), bytes);
        }
        sync_counter(
            &self.rtmp_connections,
            src.rtmp.connections_total.load(Relaxed),
        );
        sync_counter(&self.rtmp_refused, src.rtmp.publish_refused.load(Relaxed));
        sync_counter(
            &self.rtmp_handshake_failures,
            src.rtmp.handshake_failures.load(Relaxed),
        );
        sync_counter(
            &self.rtmp_connections_refused,
            src.rtmp.connections_refused.load(Relaxed),
        );
        sync_counter(&self.rtmp_bytes_in, src.rtmp.bytes_in.load(Relaxed));
        sync_counter(
            &self.srt_connections,
            src.srt.connections_total.load(Relaxed),
        );
        sync_counter(&self.srt_rejected, src.srt.rejected.load(Relaxed));
        sync_counter(&self.srt_refused, src.srt.publish_refused.load(Relaxed));
        sync_counter(&self.srt_bytes_in, src.srt.bytes_in.load(Relaxed));
        sync_counter(&self.srt_restarts, src.srt.listener_restarts.load(Relaxed));
        // Process-wide in the SRT library (one SRT listener per node).
        sync_counter(&self.srt_screened, srt_tokio::screened_datagrams());
        sync_counter(&self.srt_panics, srt_tokio::caught_panics());
        sync_counter(&self.frames_fenced, src.rooms.frames_fenced());
        let ws = &src.ws;
        sync_counter(&self.ws_connections, ws.connections.load(Relaxed));
        sync_counter(&self.ws_refused, ws.refused.load(Relaxed));
        sync_counter(&self.ws_frames_in, ws.frames_in.load(Relaxed));
        sync_counter(&self.ws_frames_invalid, ws.frames_invalid.load(Relaxed));
        sync_counter(
            &self.ws_frames_rate_limited,
            ws.frames_rate_limited.load(Relaxed),
        );
        sync_counter(&self.ws_bytes_in, ws.bytes_in.load(Relaxed));
        let (used, limit) = src.recorder.spool();
        self.spool_bytes.set(used as i64);
        self.spool_limit.set(limit as i64);
        self.recordings.set(src.recorder.active() as i64);
        sync_counter(&self.uploaded, src.recorder.uploaded_bytes());
        for (app, counts) in src.webhooks.by_app() {
            for (outcome, n) in crate::webhooks::Stats::OUTCOMES.iter().zip(counts) {
                sync_counter(
                    &self
                        .webhook_attempts
                        .with_label_values(&[app.as_str(), outcome]),
                    n,
                );
            }
        }
        let dropped: Vec<(String, u64)> = src.raft.read(|s| {
            s.events
                .apps
                .iter()
                .filter(|(_, a)| a.dropped > 0)
                .map(|(app, a)| (app.to_string(), a.dropped))
                .collect()
        });
        for (app, n) in dropped {
            sync_counter(&self.webhook_dropped.with_label_values(&[&app]), n);
        }
        let m = src.raft.status();
        self.raft_term.set(m.term as i64);
        self.raft_leader.set(m.leader.unwrap_or(0) as i64);
        self.raft_is_leader
            .set(i64::from(m.leader == Some(m.node_id)));
        self.raft_applied.set(m.last_applied.unwrap_or(0) as i64);
        let last_log = m.last_log_index.unwrap_or(0);
        self.raft_last_log.set(last_log as i64);
        self.raft_apply_lag
            .set(last_log.saturating_sub(m.last_applied.unwrap_or(0)) as i64);
        self.raft_replication_lag.reset();
        if m.leader == Some(m.node_id) {
            for (id, matched) in &m.replication {
                let behind = last_log.saturating_sub(matched.unwrap_or(0));
                self.raft_replication_lag
                    .with_label_values(&[id.to_string().as_str()])
                    .set(behind as i64);
            }
        }
    }
}

impl MetricsSource for Metrics {
    fn render(&self) -> String {
        self.sample();
        render(&self.registry)
    }
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::IntCounterVec {
    let c = prometheus::IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}
