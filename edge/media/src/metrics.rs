//! Prometheus metrics of the playback side (HLS, media cache, relay, MJPEG, viewers), shared by
//! edges and origins: registered into the node's registry, sampled from counters at scrape time.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::hls::{HlsStats, MediaCache};
use crate::mjpeg::MjpegStats;
use crate::relay::RelayStats;

/// The counters of a node's playback side, shared by its routes, its metrics and its load
/// reports.
#[derive(Debug, Clone, Default)]
pub struct PlaybackStats {
    pub hls: Arc<HlsStats>,
    pub mjpeg: Arc<MjpegStats>,
    pub relay: Arc<RelayStats>,
}

impl PlaybackStats {
    /// Media bytes this node has sent, to viewers and to other nodes (its egress).
    pub fn bytes_out(&self) -> u64 {
        self.hls.bytes_out.load(Relaxed)
            + self.mjpeg.bytes_out.load(Relaxed)
            + self.relay.bytes_out.load(Relaxed)
    }
}

/// What the playback metrics are sampled from.
pub struct PlaybackSample<'a> {
    pub hls: &'a HlsStats,
    pub cache: &'a MediaCache,
    pub relay: &'a RelayStats,
    pub mjpeg: &'a MjpegStats,
    pub webrtc: &'a crate::webrtc::WebRtcStats,
    /// Distinct viewers seen recently.
    pub viewers: u64,
    /// Rooms pulled from origins (edges) or live here (origins).
    pub rooms: u64,
}

/// Reads a counter's value from a sample.
type CounterFn = fn(&PlaybackSample<'_>) -> u64;
/// Reads a gauge's value from a sample.
type GaugeFn = fn(&PlaybackSample<'_>) -> i64;

/// The playback metrics.
pub struct PlaybackMetrics {
    counters: Vec<(IntCounter, CounterFn)>,
    gauges: Vec<(IntGauge, GaugeFn)>,
    relay_egress: IntCounterVec,
}

/// A counter registered in `r`.
pub fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric name");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

/// A gauge registered in `r`.
pub fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric name");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

/// Brings a monotonic counter up to `value` (sources are atomics that only grow).
pub fn sync_counter(c: &IntCounter, value: u64) {
    let cur = c.get();
    if value > cur {
        c.inc_by(value - cur);
    }
}

type CounterDef = (&'static str, &'static str, CounterFn);
type GaugeDef = (&'static str, &'static str, GaugeFn);

const COUNTERS: &[CounterDef] = &[
    ("streamhub_hls_requests_total", "HLS requests", |s| {
        s.hls.requests.load(Relaxed)
    }),
    (
        "streamhub_hls_bytes_out_total",
        "HLS body bytes sent",
        |s| s.hls.bytes_out.load(Relaxed),
    ),
    ("streamhub_hls_parts_total", "LL-HLS parts served", |s| {
        s.hls.parts.load(Relaxed)
    }),
    (
        "streamhub_hls_blocked_total",
        "HLS requests held (blocking reload, preload hint)",
        |s| s.hls.blocked.load(Relaxed),
    ),
    (
        "streamhub_hls_unavailable_total",
        "HLS requests answered 503",
        |s| s.hls.unavailable.load(Relaxed),
    ),
    ("streamhub_cache_hits_total", "Media cache hits", |s| {
        s.cache.hits()
    }),
    ("streamhub_cache_misses_total", "Media cache misses", |s| {
        s.cache.misses()
    }),
    (
        "streamhub_relay_subscribes_served_total",
        "Relay subscriptions accepted from subscribers",
        |s| s.relay.subscribes.load(Relaxed),
    ),
    (
        "streamhub_relay_bytes_out_total",
        "Relay bytes sent to subscribers",
        |s| s.relay.bytes_out.load(Relaxed),
    ),
    (
        "streamhub_relay_groups_sent_total",
        "Relay groups sent completely",
        |s| s.relay.groups_sent.load(Relaxed),
    ),
    (
        "streamhub_relay_groups_dropped_total",
        "Relay groups reset for a subscriber that fell behind",
        |s| s.relay.groups_dropped.load(Relaxed),
    ),
    (
        "streamhub_relay_subscribed_total",
        "Relay subscriptions made to origins",
        |s| s.relay.subscribed.load(Relaxed),
    ),
    (
        "streamhub_relay_bytes_in_total",
        "Relay bytes received from origins",
        |s| s.relay.bytes_in.load(Relaxed),
    ),
    (
        "streamhub_relay_groups_received_total",
        "Relay group streams received",
        |s| s.relay.groups_received.load(Relaxed),
    ),
    (
        "streamhub_relay_groups_lost_total",
        "Relay groups lost on the way (reset, skipped, stuck)",
        |s| s.relay.groups_lost.load(Relaxed),
    ),
    (
        "streamhub_relay_keyframe_requests_total",
        "Keyframe requests (viewer PLI/FIR) received from relay subscribers",
        |s| s.relay.keyframe_requests.load(Relaxed),
    ),
    (
        "streamhub_relay_keyframe_requests_sent_total",
        "Keyframe requests forwarded to origins for local viewers",
        |s| s.relay.keyframe_requests_sent.load(Relaxed),
    ),
    (
        "streamhub_relay_malformed_total",
        "Malformed relay messages or streams received",
        |s| s.relay.malformed.load(Relaxed),
    ),
    (
        "streamhub_relay_unknown_streams_total",
        "Relay group streams for no known subscription",
        |s| s.relay.unknown_streams.load(Relaxed),
    ),
    (
        "streamhub_mjpeg_frames_out_total",
        "MJPEG pictures sent",
        |s| s.mjpeg.frames_out.load(Relaxed),
    ),
    (
        "streamhub_mjpeg_bytes_out_total",
        "MJPEG body bytes sent",
        |s| s.mjpeg.bytes_out.load(Relaxed),
    ),
    (
        "streamhub_webrtc_connected_total",
        "WebRTC sessions that connected (ICE + DTLS)",
        |s| s.webrtc.connected_total.load(Relaxed),
    ),
    (
        "streamhub_webrtc_refused_total",
        "WHIP/WHEP offers refused (bad SDP, no usable codec, session limit)",
        |s| s.webrtc.refused.load(Relaxed),
    ),
    (
        "streamhub_webrtc_garbage_datagrams_total",
        "Datagrams on the media port from no known session",
        |s| s.webrtc.garbage_datagrams.load(Relaxed),
    ),
    (
        "streamhub_webrtc_queue_drops_total",
        "Datagrams dropped because a session's queue was full",
        |s| s.webrtc.queue_drops.load(Relaxed),
    ),
    (
        "streamhub_webrtc_send_drops_total",
        "Datagrams the media socket would not take",
        |s| s.webrtc.send_drops.load(Relaxed),
    ),
    (
        "streamhub_webrtc_rtp_out_total",
        "RTP packets sent to WHEP viewers",
        |s| s.webrtc.rtp_out.load(Relaxed),
    ),
    (
        "streamhub_webrtc_rtp_in_total",
        "RTP packets taken from WHIP publishers",
        |s| s.webrtc.rtp_in.load(Relaxed),
    ),
    (
        "streamhub_webrtc_rtp_in_dropped_total",
        "WHIP RTP packets that could not be used",
        |s| s.webrtc.rtp_in_dropped.load(Relaxed),
    ),
    (
        "streamhub_webrtc_plis_sent_total",
        "Keyframe requests (PLI) sent to WHIP publishers",
        |s| s.webrtc.plis_sent.load(Relaxed),
    ),
    (
        "streamhub_webrtc_viewer_keyframe_requests_total",
        "Keyframe requests (PLI/FIR) received from WebRTC viewers",
        |s| s.webrtc.viewer_keyframe_requests.load(Relaxed),
    ),
];

const GAUGES: &[GaugeDef] = &[
    (
        "streamhub_cache_bytes",
        "Bytes held by the media cache",
        |s| s.cache.weighted_size() as i64,
    ),
    (
        "streamhub_hls_held",
        "Blocking HLS requests held now",
        |s| s.hls.held.load(Relaxed) as i64,
    ),
    (
        "streamhub_relay_subscriptions_served",
        "Relay subscriptions being served now",
        |s| s.relay.served.load(Relaxed) as i64,
    ),
    (
        "streamhub_relay_subscriptions",
        "Relay subscriptions to origins open now",
        |s| s.relay.active.load(Relaxed) as i64,
    ),
    ("streamhub_mjpeg_streams", "MJPEG streams open now", |s| {
        s.mjpeg.streams.load(Relaxed) as i64
    }),
    (
        "streamhub_webrtc_sessions",
        "WebRTC sessions now (any state)",
        |s| s.webrtc.sessions.load(Relaxed) as i64,
    ),
    (
        "streamhub_viewers",
        "Distinct viewers seen in the last 10 s",
        |s| s.viewers as i64,
    ),
    (
        "streamhub_playback_rooms",
        "Rooms served by this node's playback side",
        |s| s.rooms as i64,
    ),
];

impl PlaybackMetrics {
    /// Registers every playback metric in `r`.
    pub fn new(r: &Registry) -> Self {
        let relay_egress = IntCounterVec::new(
            Opts::new(
                "streamhub_relay_egress_bytes_total",
                "Relay bytes sent, per subscribing node",
            ),
            &["peer"],
        )
        .expect("valid metric");
        r.register(Box::new(relay_egress.clone()))
            .expect("unique metric");
        Self {
            counters: COUNTERS
                .iter()
                .map(|(name, help, f)| (counter(r, name, help), *f))
                .collect(),
            gauges: GAUGES
                .iter()
                .map(|(name, help, f)| (gauge(r, name, help), *f))
                .collect(),
            relay_egress,
        }
    }

    /// Updates every metric from `s`.
    pub fn sample(&self, s: &PlaybackSample<'_>) {
        for (c, f) in &self.counters {
            sync_counter(c, f(s));
        }
        for (g, f) in &self.gauges {
            g.set(f(s));
        }
        for (peer, bytes) in s.relay.per_peer_bytes() {
            sync_counter(
                &self.relay_egress.with_label_values(&[peer.as_str()]),
                bytes,
            );
        }
    }
}

/// Renders `r` in the Prometheus text format.
pub fn render(r: &Registry) -> String {
    use prometheus::Encoder;
    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&r.gather(), &mut out)
        .expect("text encoding into a Vec cannot fail");
    String::from_utf8(out).unwrap_or_default()
}
