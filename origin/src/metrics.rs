//! `GET /metrics`: Prometheus text exposition, sampled from the node's counters at scrape time.

use prometheus::{Encoder, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use streamhub_edge::metrics::{PlaybackMetrics, PlaybackSample};

use crate::node::NodeCtx;
use crate::rooms::Protocol;

/// The node's Prometheus registry.
pub struct Metrics {
    registry: Registry,
    live_rooms: IntGauge,
    publishers: IntGaugeVec,
    playback: PlaybackMetrics,
    rtmp_connections: IntCounter,
    rtmp_refused: IntCounter,
    rtmp_handshake_failures: IntCounter,
    rtmp_connections_refused: IntCounter,
    rtmp_bytes_in: IntCounter,
    ws_connections: IntCounter,
    ws_refused: IntCounter,
    ws_frames_in: IntCounter,
    ws_frames_invalid: IntCounter,
    ws_frames_rate_limited: IntCounter,
    ws_bytes_in: IntCounter,
    raft_term: IntGauge,
    raft_leader: IntGauge,
    raft_is_leader: IntGauge,
    raft_applied: IntGauge,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric name");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric name");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

/// Brings a monotonic counter up to `value` (sources are atomics that only grow).
fn sync_counter(c: &IntCounter, value: u64) {
    let cur = c.get();
    if value > cur {
        c.inc_by(value - cur);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        let publishers = IntGaugeVec::new(
            Opts::new("streamhub_publishers", "Live publishers by protocol"),
            &["protocol"],
        )
        .expect("valid metric");
        r.register(Box::new(publishers.clone()))
            .expect("unique metric");
        Self {
            live_rooms: gauge(
                &r,
                "streamhub_live_rooms",
                "Rooms with a live publisher on this node",
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
                "RTMP connections closed at the connection limit",
            ),
            rtmp_bytes_in: counter(&r, "streamhub_rtmp_bytes_in_total", "RTMP bytes received"),
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
        }
    }

    /// Samples the node and renders the text format.
    pub fn render(&self, ctx: &NodeCtx) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let by_proto = ctx.rooms.publishers_by_protocol();
        self.live_rooms.set(by_proto.values().sum::<usize>() as i64);
        for &p in Protocol::ALL {
            self.publishers
                .with_label_values(&[p.as_str()])
                .set(by_proto.get(&p).copied().unwrap_or(0) as i64);
        }
        self.playback.sample(&PlaybackSample {
            hls: &ctx.hls_stats,
            cache: ctx.hls.cache(),
            relay: &ctx.relay_stats,
            mjpeg: &ctx.mjpeg_stats,
            webrtc: &ctx.webrtc.stats,
            viewers: 0,
            rooms: ctx.hls.len() as u64,
        });
        sync_counter(
            &self.rtmp_connections,
            ctx.rtmp_stats.connections_total.load(Relaxed),
        );
        sync_counter(
            &self.rtmp_refused,
            ctx.rtmp_stats.publish_refused.load(Relaxed),
        );
        sync_counter(
            &self.rtmp_handshake_failures,
            ctx.rtmp_stats.handshake_failures.load(Relaxed),
        );
        sync_counter(
            &self.rtmp_connections_refused,
            ctx.rtmp_stats.connections_refused.load(Relaxed),
        );
        sync_counter(&self.rtmp_bytes_in, ctx.rtmp_stats.bytes_in.load(Relaxed));
        let ws = &ctx.ws_stats;
        sync_counter(&self.ws_connections, ws.connections.load(Relaxed));
        sync_counter(&self.ws_refused, ws.refused.load(Relaxed));
        sync_counter(&self.ws_frames_in, ws.frames_in.load(Relaxed));
        sync_counter(&self.ws_frames_invalid, ws.frames_invalid.load(Relaxed));
        sync_counter(
            &self.ws_frames_rate_limited,
            ws.frames_rate_limited.load(Relaxed),
        );
        sync_counter(&self.ws_bytes_in, ws.bytes_in.load(Relaxed));
        let m = ctx.raft.status();
        self.raft_term.set(m.term as i64);
        self.raft_leader.set(m.leader.unwrap_or(0) as i64);
        self.raft_is_leader
            .set(i64::from(m.leader == Some(m.node_id)));
        self.raft_applied.set(m.last_applied.unwrap_or(0) as i64);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).unwrap_or_default()
    }
}
