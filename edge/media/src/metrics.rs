//! Prometheus metrics of the playback side (HLS, media cache, relay, MJPEG, viewers), shared by
//! edges and origins: registered into the node's registry, sampled from counters at scrape time.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::access::{ViewProtocol, ViewerTracker};

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
    /// This node's viewers by app, room and protocol, and its egress by app.
    pub tracker: &'a ViewerTracker,
}

/// Apps with their own label in the per-app viewer series (the busiest); the rest are summed
/// under `app="_other"`.
pub const APP_LABELS: usize = 100;
/// Rooms per app with their own label in `streamhub_room_viewers` (the busiest); the rest of
/// the app's rooms are summed under `room="_other"`.
pub const ROOM_LABELS: usize = 10;
/// The label of what is summed beyond [`APP_LABELS`] or [`ROOM_LABELS`].
pub const OTHER: &str = "_other";

/// Reads a counter's value from a sample.
type CounterFn = fn(&PlaybackSample<'_>) -> u64;
/// Reads a gauge's value from a sample.
type GaugeFn = fn(&PlaybackSample<'_>) -> i64;

/// The playback metrics.
pub struct PlaybackMetrics {
    counters: Vec<(IntCounter, CounterFn)>,
    gauges: Vec<(IntGauge, GaugeFn)>,
    relay_egress: IntCounterVec,
    app_viewers: IntGaugeVec,
    room_viewers: IntGaugeVec,
    app_egress: IntCounterVec,
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
    (
        "streamhub_webrtc_viewer_rejoins_total",
        "WebRTC viewer sessions that went on with their room's next publisher session",
        |s| s.webrtc.viewer_rejoins.load(Relaxed),
    ),
    (
        "streamhub_webrtc_congestion_events_total",
        "Times a WebRTC viewer became congested (sustained loss or a full socket): video dropped to the next keyframe",
        |s| s.webrtc.congestion_events.load(Relaxed),
    ),
    (
        "streamhub_webrtc_nack_resent_total",
        "RTP packets sent again to WebRTC viewers on their NACKs",
        |s| s.webrtc.nack_resent.load(Relaxed),
    ),
    (
        "streamhub_webrtc_rtcp_over_budget_total",
        "WebRTC viewer NACKs and receiver reports over their per-second allowance, dropped",
        |s| s.webrtc.rtcp_over_budget.load(Relaxed),
    ),
];

const GAUGES: &[GaugeDef] = &[
    (
        "streamhub_webrtc_viewers_congested",
        "WebRTC viewers congested now: their video waits for keyframes until their loss reports are clean",
        |s| s.webrtc.viewers_congested.load(Relaxed) as i64,
    ),
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
        let app_viewers = gauge_vec(
            r,
            "streamhub_app_viewers",
            "Viewers on this node by app and protocol (hls, ll-hls, whep, mjpeg); the busiest 100 \
             apps, the rest under app=\"_other\"",
            &["app", "protocol"],
        );
        let room_viewers = gauge_vec(
            r,
            "streamhub_room_viewers",
            "Viewers on this node by room and protocol; the busiest 10 rooms of each labelled app, \
             the rest under room=\"_other\"",
            &["app", "room", "protocol"],
        );
        let app_egress = IntCounterVec::new(
            Opts::new(
                "streamhub_app_egress_bytes_total",
                "Media bytes this node sent to each app's viewers (HLS, MJPEG and frame bodies, \
                 WHEP datagrams)",
            ),
            &["app"],
        )
        .expect("valid metric");
        r.register(Box::new(app_egress.clone()))
            .expect("unique metric");
        Self {
            app_viewers,
            room_viewers,
            app_egress,
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
        self.sample_viewers(s.tracker);
    }

    /// The per-app and per-room viewer gauges (labels bounded by [`APP_LABELS`] and
    /// [`ROOM_LABELS`]), and the per-app egress counters.
    fn sample_viewers(&self, tracker: &ViewerTracker) {
        let mut apps: Vec<_> = tracker
            .rooms(std::time::Instant::now())
            .into_iter()
            .collect();
        let total = |rooms: &crate::access::RoomViewers| rooms.values().sum::<u64>();
        apps.sort_by_key(|(_, rooms)| std::cmp::Reverse(total(rooms)));
        self.app_viewers.reset();
        self.room_viewers.reset();
        let mut other = [0u64; 4];
        for (i, (app, rooms)) in apps.iter().enumerate() {
            let mut by_protocol = [0u64; 4];
            for ((_, p), n) in rooms {
                by_protocol[*p as usize] += n;
            }
            if i >= APP_LABELS {
                for (o, n) in other.iter_mut().zip(by_protocol) {
                    *o += n;
                }
                continue;
            }
            for p in ViewProtocol::ALL {
                let n = by_protocol[*p as usize];
                if n > 0 {
                    self.app_viewers
                        .with_label_values(&[app.as_str(), p.as_str()])
                        .set(n as i64);
                }
            }
            self.sample_rooms(app.as_str(), rooms);
        }
        for p in ViewProtocol::ALL {
            let n = other[*p as usize];
            if n > 0 {
                self.app_viewers
                    .with_label_values(&[OTHER, p.as_str()])
                    .set(n as i64);
            }
        }
        for (app, bytes) in tracker.egress() {
            sync_counter(&self.app_egress.with_label_values(&[app.as_str()]), bytes);
        }
    }

    fn sample_rooms(&self, app: &str, rooms: &crate::access::RoomViewers) {
        let mut by_room: std::collections::BTreeMap<&str, u64> = Default::default();
        for ((room, _), n) in rooms {
            *by_room.entry(room.as_str()).or_default() += n;
        }
        let mut order: Vec<(&str, u64)> = by_room.into_iter().collect();
        order.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let labelled: std::collections::HashSet<&str> =
            order.iter().take(ROOM_LABELS).map(|(r, _)| *r).collect();
        let mut other = [0u64; 4];
        for ((room, p), n) in rooms {
            if labelled.contains(room.as_str()) {
                self.room_viewers
                    .with_label_values(&[app, room.as_str(), p.as_str()])
                    .set(*n as i64);
            } else {
                other[*p as usize] += n;
            }
        }
        for p in ViewProtocol::ALL {
            let n = other[*p as usize];
            if n > 0 {
                self.room_viewers
                    .with_label_values(&[app, OTHER, p.as_str()])
                    .set(n as i64);
            }
        }
    }
}

/// A labelled gauge registered in `r`.
pub fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
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
