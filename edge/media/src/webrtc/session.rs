//! One WebRTC session's task: drives its sans-IO peer connection from the datagrams the mux
//! routes to it, its timers, and (for a viewer) the room's frames.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use streamhub_shared::h264::AvcConfig;
use streamhub_shared::media::{
    CodecConfig, Frame, KeyframeGate, MediaConsumer, MediaHandle, RecvError, TrackId,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::fanout::{rtp_timestamp, Cmd, Stream, ViewerSend};
use super::gso::GsoBatch;
use super::ingest::{Ingest, AUDIO_WAITS_FOR_VIDEO};
use super::packets::PacketCache;
use super::{Datagram, Role, WebRtcStats, CONNECT_TIMEOUT};
use crate::mjpeg::Viewing;
use crate::wait::{changed, sleep_until};
use futures::future::BoxFuture;

/// RTP payload budget: 1200 bytes keeps a packet under any path MTU with SRTP and extensions.
const RTP_MTU: usize = 1200;
/// A WHIP publisher is asked for a keyframe this often, so groups (HLS segments, late-join
/// points) stay near the 2 s target; browsers send keyframes only when asked.
const KEYFRAME_INTERVAL: Duration = Duration::from_secs(2);
/// Keyframe requests after a loss are at most this frequent.
const PLI_MIN_GAP: Duration = Duration::from_millis(500);
/// How long a viewer's session waits for its room's next publisher session (an encoder that
/// reconnects, a failover to another origin) before it ends. Players give up on a session
/// that brings nothing for 6 s; this only bounds what a session holds.
const PUBLISHER_RETURN: Duration = Duration::from_secs(10);
/// How often a waiting viewer's session looks for its room.
const REJOIN_LOOK: Duration = Duration::from_millis(100);
/// Once connected, a fan-out session's peer-connection timers fire on this shared grid. The ICE
/// agent asks to run every 200 ms (its checks of the selected pair), which with a thousand
/// viewers was 5,000 separate wake-ups of the runtime a second, each a return from
/// `epoll_wait` and often a context switch; its deadlines tolerate lateness (keepalives every
/// 2 s, disconnection after 5 s), so the sessions' deadlines are rounded up to one instant and
/// the runtime wakes twice a second for all of them.
const TIMER_GRID: Duration = Duration::from_millis(500);

/// `t` rounded up to the next instant of [`TIMER_GRID`] (shared by the whole process).
fn on_grid(t: Instant) -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let grid = TIMER_GRID.as_nanos();
    let slots = t.saturating_duration_since(epoch).as_nanos().div_ceil(grid);
    epoch + Duration::from_nanos((slots * grid) as u64)
}

/// The senders a viewer session was given.
#[derive(Debug, Default)]
pub(super) struct Plan {
    pub video: Option<RTCRtpSenderId>,
    pub audio: Option<RTCRtpSenderId>,
    /// A publisher whose offer sends H.264: its audio waits for the video to start.
    pub expect_video: bool,
    /// A publisher whose offer sends Opus.
    pub audio_offered: bool,
}

pub(super) struct Session {
    pub id: u64,
    pub pc: RTCPeerConnection,
    pub plan: Plan,
    pub rx: mpsc::Receiver<Datagram>,
    pub socket: Arc<super::socket::MediaSocket>,
    pub udp: Arc<quinn_udp::UdpSocketState>,
    /// Outgoing datagrams being grouped for one GSO send.
    pub batch: GsoBatch,
    pub local: SocketAddr,
    pub stats: Arc<WebRtcStats>,
    pub cancel: CancellationToken,
    /// Payloads shared by the viewers of a frame.
    pub packets: Arc<PacketCache>,
    /// A publisher: its room's keyframe requests (from viewers, here or through edges).
    pub viewer_requests: Option<tokio::sync::watch::Receiver<u64>>,
    /// Counts this session against its client's unconnected offers until it connects.
    pub pending: Option<crate::node::surface::ConnGuard>,
    /// A viewer's admission (see [`Role::Play`]).
    pub viewer: Option<Arc<crate::access::ViewerHold>>,
    /// A viewer: where to find its room again when the publisher session ends.
    pub rejoin: Option<super::Rejoin>,
    /// Bytes sent and not yet added to the viewer's app egress (added by the 64 KiB: a shared
    /// counter is not touched per datagram).
    pub unreported: u64,
    /// A viewer on the fan-out send path: its worker.
    pub fanout: Option<mpsc::UnboundedSender<Cmd>>,
    /// Where the peer's DTLS and RTCP come from: where its media goes (fan-out path).
    pub media_addr: Option<SocketAddr>,
    /// Takes the session off the node's tables when it ends (dropped with it).
    pub _registered: super::Registered,
}

/// How many bytes a session sends between two additions to its app's egress counter.
const EGRESS_REPORT: u64 = 64 * 1024;

/// A sender's RTP state toward one viewer.
struct Out {
    sender: RTCRtpSenderId,
    track: TrackId,
    pt: u8,
    ssrc: u32,
    seq: u16,
    ts_base: u32,
    /// The track's clock (ticks per second of its frame times and of its RTP timestamps).
    clock: u32,
    /// The timestamp of the last packet sent and when it went.
    last: Option<(u32, Instant)>,
    /// The next frame continues the timeline from here (a new publisher session numbers its
    /// frames from its own start; the viewer's RTP timestamps go on forward).
    resume: Option<(u32, Instant)>,
    /// Video: waiting for a keyframe (start, or after frames were lost).
    waiting: bool,
}

impl Out {
    /// The RTP timestamp of a frame at `t` (in the track's clock).
    fn timestamp(&mut self, t: i64, now: Instant) -> u32 {
        rtp_timestamp(&mut self.ts_base, &mut self.resume, self.clock, t, now)
    }
}

/// Feeds a room's frames to a viewer.
struct Feeder {
    consumer: MediaConsumer,
    video: Option<Out>,
    audio: Option<Out>,
    /// The video's decoder configuration, parsed and as the catalog carries it (its buffer
    /// names the configuration in the shared packet cache).
    avc: Option<(AvcConfig, bytes::Bytes)>,
    /// A frame with pts != dts (B-frames) was seen and logged.
    warned_bframes: bool,
    /// Senders' state carried over from the previous publisher session, until a track of
    /// their kind shows (a new session's catalog can still lack one when the viewer goes on).
    carried: (Option<Out>, Option<Out>),
    /// Tracks this viewer sends nothing of (looked up once each).
    ignored: Vec<TrackId>,
}

/// Tracks a feeder remembers ignoring; past that it looks again (a catalog lookup per frame).
const MAX_IGNORED_TRACKS: usize = 16;

impl Feeder {
    /// True for a frame of a track this viewer neither sends nor knows to ignore.
    fn unmapped(&self, track: TrackId) -> bool {
        self.video.as_ref().is_none_or(|v| v.track != track)
            && self.audio.as_ref().is_none_or(|a| a.track != track)
            && !self.ignored.contains(&track)
    }
}

impl Session {
    /// The session boxed: an async fn keeps its arguments twice (as passed, and as the body's
    /// binding), which for a ~9 KiB session is ~9 KiB more per session.
    pub async fn run(mut self: Box<Self>, role: Role) {
        let (mut ingest, stop, media, _hold) = match role {
            Role::Publish { sink, stop } => {
                self.viewer_requests = sink.keyframe_requests();
                let grace = if self.plan.expect_video {
                    AUDIO_WAITS_FOR_VIDEO
                } else {
                    Duration::ZERO
                };
                let ingest = Ingest::new(sink, grace, self.plan.audio_offered);
                (Some(ingest), Some(stop), None, None)
            }
            Role::Play {
                media,
                hold,
                viewer,
                rejoin,
            } => {
                self.viewer = viewer;
                self.rejoin = rejoin;
                (None, None, Some(media), hold)
            }
        };
        let mut _hold = _hold;
        let stop = stop.unwrap_or_default();
        let connect_by = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let mut connected = false;
        let mut feeder: Option<Feeder> = None;
        // A viewer whose room's publisher session ended: its feeder's state while it waits for
        // the next session, until when it waits, and the lookup under way.
        let mut paused: Option<(Feeder, tokio::time::Instant)> = None;
        let mut looking: Option<BoxFuture<'static, Option<Viewing>>> = None;
        let mut look_at = tokio::time::Instant::now();
        // Publisher side: the kind of each incoming track, and where to send keyframe requests.
        let mut kinds: HashMap<String, (RtpCodecKind, u8)> = HashMap::new();
        let mut video_rx: Option<(RTCRtpReceiverId, u32)> = None;
        let mut viewers_asked = false;
        // Keyframe requests to the publisher (after a loss, for viewers) or from a viewer.
        let mut gate = KeyframeGate::new(PLI_MIN_GAP);
        let mut keyframes = tokio::time::interval(KEYFRAME_INTERVAL);
        let end = 'run: loop {
            self.flush();
            while let Some(ev) = self.pc.poll_event() {
                match ev {
                    RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) => match s {
                        RTCPeerConnectionState::Connected if !connected => {
                            connected = true;
                            self.pending = None;
                            self.stats.connected_total.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(session = self.id, "WebRTC session connected");
                            if let Some(m) = media.as_ref() {
                                match self.start_feeder(m, &mut None) {
                                    Some(f) => feeder = Some(f),
                                    None => break 'run "the room went offline",
                                }
                            }
                        }
                        RTCPeerConnectionState::Failed => break 'run "ICE/DTLS failed (peer gone)",
                        RTCPeerConnectionState::Closed => break 'run "closed",
                        _ => {}
                    },
                    RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                        if let Some(r) = self.pc.rtp_receiver(init.receiver_id) {
                            let track = r.track();
                            let kind = track.kind();
                            let ssrc = track.ssrcs().next();
                            let channels = ssrc
                                .and_then(|s| track.codec(s))
                                .map_or(2, |c| c.channels.clamp(1, 2) as u8);
                            kinds.insert(init.track_id.clone(), (kind, channels));
                            if kind == RtpCodecKind::Video {
                                if let Some(ssrc) = ssrc {
                                    video_rx = Some((init.receiver_id, ssrc));
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            while let Some(msg) = self.pc.poll_read() {
                let (track_id, p) = match (ingest.as_mut(), msg.message) {
                    (Some(_), RTCMessage::RtpPacket(track_id, p)) => (track_id, p),
                    (None, RTCMessage::RtcpPacket(_, packets)) => {
                        // A viewer lost the picture: ask the room's publisher for a keyframe.
                        if packets.iter().any(|p| is_keyframe_request(p.as_ref())) {
                            self.stats
                                .viewer_keyframe_requests
                                .fetch_add(1, Ordering::Relaxed);
                            if let Some(f) = feeder.as_ref() {
                                if gate.request(Instant::now()) {
                                    f.consumer.request_keyframe();
                                }
                            }
                        }
                        continue;
                    }
                    _ => continue,
                };
                let Some(ing) = ingest.as_mut() else { continue };
                self.stats.rtp_in.fetch_add(1, Ordering::Relaxed);
                let r = match kinds.get(&track_id) {
                    Some((RtpCodecKind::Video, _)) => ing.video(
                        p.header.sequence_number,
                        p.header.timestamp,
                        p.header.marker,
                        &p.payload,
                    ),
                    Some((RtpCodecKind::Audio, ch)) => {
                        ing.audio(p.header.timestamp, &p.payload, *ch)
                    }
                    _ => Ok(()),
                };
                if r.is_err() {
                    self.stats.rtp_in_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let (Some(ing), Some((rid, ssrc))) = (ingest.as_ref(), video_rx) {
                let now = Instant::now();
                let send = if ing.want_keyframe || viewers_asked {
                    gate.request(now)
                } else {
                    gate.poll(now)
                };
                viewers_asked = false;
                if send {
                    self.pli(rid, ssrc);
                    self.flush();
                }
            }
            // A viewer's request held back by the gate goes when its gap is over.
            if let (None, Some(f)) = (ingest.as_ref(), feeder.as_ref()) {
                if gate.poll(Instant::now()) {
                    f.consumer.request_keyframe();
                }
            }
            let now = Instant::now();
            let wake = self
                .pc
                .poll_timeout()
                .unwrap_or(now + Duration::from_secs(3600));
            if wake <= now {
                if let Err(e) = self.pc.handle_timeout(now) {
                    tracing::debug!(session = self.id, error = %e, "timeout handling");
                }
                continue;
            }
            let publishing_video = ingest.is_some() && video_rx.is_some();
            let pli_due = gate
                .due()
                .filter(|_| publishing_video || feeder.is_some())
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => break 'run "closed by request or node stop",
                () = stop.cancelled() => break 'run "the room was taken over or its key revoked",
                d = self.rx.recv() => {
                    let Some(d) = d else { break 'run "routes gone" };
                    let (from, bytes) = *d;
                    self.read(from, bytes);
                }
                () = tokio::time::sleep_until(connect_by), if !connected => {
                    break 'run "did not connect in time";
                }
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    if let Err(e) = self.pc.handle_timeout(Instant::now()) {
                        tracing::debug!(session = self.id, error = %e, "timeout handling");
                    }
                }
                r = next_frame(&mut feeder) => match r {
                    Ok(frame) => {
                        if let Some(f) = feeder.as_mut() {
                            if f.unmapped(frame.track) {
                                self.take_up(f, frame.track);
                            }
                            send_frame(&mut self.pc, f, &frame, &self.stats, &self.packets);
                        }
                    }
                    Err(RecvError::Closed) => {
                        let Some(f) = feeder.take().filter(|_| self.rejoin.is_some()) else {
                            break 'run "the publisher has gone";
                        };
                        let now = tokio::time::Instant::now();
                        paused = Some((f, now + PUBLISHER_RETURN));
                        look_at = now;
                        tracing::debug!(session = self.id, "publisher session ended; waiting for the next");
                    }
                    Err(RecvError::Lagged(_) | RecvError::Gap { .. }) => {
                        // Frames were lost: resume at the next keyframe.
                        if let Some(v) = feeder.as_mut().and_then(|f| f.video.as_mut()) {
                            v.waiting = true;
                        }
                    }
                },
                _ = keyframes.tick(), if publishing_video && connected => {
                    if let Some((rid, ssrc)) = video_rx {
                        self.pli(rid, ssrc);
                        gate.sent(Instant::now());
                    }
                }
                Ok(()) = changed(&mut self.viewer_requests), if publishing_video => {
                    viewers_asked = true;
                }
                () = sleep_until(pli_due), if pli_due.is_some() => {}
                () = tokio::time::sleep_until(look_at), if paused.is_some() && looking.is_none() => {
                    let Some(l) = self.look_again(paused.as_ref().map(|p| p.1)) else {
                        break 'run "the publisher has gone";
                    };
                    looking = Some(l);
                    look_at = tokio::time::Instant::now() + REJOIN_LOOK;
                }
                v = next_lookup(&mut looking) => {
                    looking = None;
                    let Some(v) = v.filter(|v| v.media.is_live()) else { continue };
                    if paused.is_none() {
                        continue;
                    }
                    if let Some(f) = self.start_feeder(&v.media, &mut paused) {
                        feeder = Some(f);
                        _hold = Some(Box::new(v.hold));
                        self.stats.viewer_rejoins.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(session = self.id, "went on with the room's next publisher session");
                    }
                }
            }
        };
        tracing::debug!(session = self.id, reason = end, "WebRTC session ended");
        let _ = self.pc.close();
        self.flush();
        if let Some(v) = &self.viewer {
            v.sent(std::mem::take(&mut self.unreported));
        }
    }

    /// A viewer on the fan-out path: once connected its media goes through its worker; this
    /// task keeps ICE, DTLS and the RTCP the viewer sends (NACKs and loss reports to the
    /// worker, keyframe requests to the room), and finds the room again when its publisher
    /// session ends.
    pub async fn play(
        mut self: Box<Self>,
        worker: mpsc::UnboundedSender<Cmd>,
        media: MediaHandle,
        hold: Option<Box<dyn Send + Sync>>,
        viewer: Option<Arc<crate::access::ViewerHold>>,
        rejoin: Option<super::Rejoin>,
    ) {
        self.viewer = viewer;
        self.rejoin = rejoin;
        let (mut media, mut _hold) = (media, hold);
        let connect_by = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let mut connected = false;
        // The worker has the viewer: its state comes back here if the publisher session ends.
        let mut ended: Option<oneshot::Receiver<Box<ViewerSend>>> = None;
        let mut paused: Option<(Box<ViewerSend>, tokio::time::Instant)> = None;
        let mut looking: Option<BoxFuture<'static, Option<Viewing>>> = None;
        let mut look_at = tokio::time::Instant::now();
        let mut gate = KeyframeGate::new(PLI_MIN_GAP);
        let mut budget = RtcpBudget::default();
        let mut told_addr = None;
        let end = 'run: loop {
            self.flush();
            while let Some(ev) = self.pc.poll_event() {
                if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = ev {
                    match s {
                        RTCPeerConnectionState::Connected if !connected => {
                            connected = true;
                            self.pending = None;
                            self.stats.connected_total.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(session = self.id, "WebRTC session connected");
                            let Some(send) = self.viewer_send() else {
                                break 'run "no SRTP keys or media address after the handshake";
                            };
                            told_addr = Some(send.dest);
                            ended = Some(join(&worker, send, &media));
                            // What the negotiation left that a viewer does not read again.
                            self.pc.release_negotiation_text();
                        }
                        RTCPeerConnectionState::Failed => break 'run "ICE/DTLS failed (peer gone)",
                        RTCPeerConnectionState::Closed => break 'run "closed",
                        _ => {}
                    }
                }
            }
            while let Some(msg) = self.pc.poll_read() {
                let RTCMessage::RtcpPacket(_, packets) = msg.message else {
                    continue;
                };
                for p in &packets {
                    let any = p.as_any();
                    if is_keyframe_request(p.as_ref()) {
                        self.stats
                            .viewer_keyframe_requests
                            .fetch_add(1, Ordering::Relaxed);
                        if gate.request(Instant::now()) {
                            media.request_keyframe();
                        }
                    } else if let Some(n) = any.downcast_ref::<TransportLayerNack>() {
                        let seqs: Vec<u16> = n
                            .nacks
                            .iter()
                            .flat_map(|p| p.packet_list())
                            .take(MAX_NACKED)
                            .collect();
                        if !budget.take(Instant::now(), seqs.len() as u32, 0) {
                            self.stats.rtcp_over_budget.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let _ = worker.send(Cmd::Nack {
                            id: self.id,
                            ssrc: n.media_ssrc,
                            seqs,
                        });
                    } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                        for r in &rr.reports {
                            if !budget.take(Instant::now(), 0, 1) {
                                self.stats.rtcp_over_budget.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            let _ = worker.send(Cmd::Loss {
                                id: self.id,
                                ssrc: r.ssrc,
                                fraction: r.fraction_lost,
                            });
                        }
                    }
                }
            }
            // The peer moved to another address (ICE chose another pair).
            if let (Some(a), Some(told)) = (self.media_addr, told_addr) {
                if a != told {
                    told_addr = Some(a);
                    let _ = worker.send(Cmd::Dest {
                        id: self.id,
                        dest: a,
                    });
                }
            }
            // A request held back by the gate goes when its gap is over.
            if connected && gate.poll(Instant::now()) {
                media.request_keyframe();
            }
            let now = Instant::now();
            let wake = self
                .pc
                .poll_timeout()
                .unwrap_or(now + Duration::from_secs(3600));
            if wake <= now {
                if let Err(e) = self.pc.handle_timeout(now) {
                    tracing::debug!(session = self.id, error = %e, "timeout handling");
                }
                continue;
            }
            let wake = if connected { on_grid(wake) } else { wake };
            let pli_due = gate
                .due()
                .filter(|_| connected)
                .map(tokio::time::Instant::from_std);
            // Drained: the pipeline's queues give their buffers back while the viewer idles
            // (~18 KiB a viewer otherwise; it gets a few packets a second).
            self.pc.release_idle_buffers();
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => break 'run "closed by request or node stop",
                d = self.rx.recv() => {
                    let Some(d) = d else { break 'run "routes gone" };
                    let (from, bytes) = *d;
                    self.read(from, bytes);
                }
                () = tokio::time::sleep_until(connect_by), if !connected => {
                    break 'run "did not connect in time";
                }
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    if let Err(e) = self.pc.handle_timeout(Instant::now()) {
                        tracing::debug!(session = self.id, error = %e, "timeout handling");
                    }
                }
                r = next_ended(&mut ended) => {
                    ended = None;
                    let Ok(send) = r else { break 'run "the fan-out worker stopped" };
                    if self.rejoin.is_none() {
                        break 'run "the publisher has gone";
                    }
                    let now = tokio::time::Instant::now();
                    paused = Some((send, now + PUBLISHER_RETURN));
                    look_at = now;
                    tracing::debug!(session = self.id, "publisher session ended; waiting for the next");
                }
                () = sleep_until(pli_due), if pli_due.is_some() => {}
                () = tokio::time::sleep_until(look_at), if paused.is_some() && looking.is_none() => {
                    let Some(l) = self.look_again(paused.as_ref().map(|p| p.1)) else {
                        break 'run "the publisher has gone";
                    };
                    looking = Some(l);
                    look_at = tokio::time::Instant::now() + REJOIN_LOOK;
                }
                v = next_lookup(&mut looking) => {
                    looking = None;
                    let Some(v) = v.filter(|v| v.media.is_live()) else { continue };
                    let Some((send, _)) = paused.take() else { continue };
                    media = v.media.clone();
                    ended = Some(join(&worker, send, &media));
                    _hold = Some(Box::new(v.hold));
                    self.stats.viewer_rejoins.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(session = self.id, "went on with the room's next publisher session");
                }
            }
        };
        tracing::debug!(session = self.id, reason = end, "WebRTC session ended");
        let _ = worker.send(Cmd::Leave(self.id));
        let _ = self.pc.close();
        self.flush();
    }

    /// The viewer's send state for the fan-out worker, once DTLS is done: its SRTP keys (what
    /// it sends), its streams (SSRC and payload type of each sender), where its media goes.
    fn viewer_send(&mut self) -> Option<Box<ViewerSend>> {
        use rtc::srtp::protection_profile::ProtectionProfile as P;
        use streamhub_shared::srtp::{Profile, Srtp};
        let keys = self.pc.srtp_keys()?;
        let profile = match keys.profile {
            P::AeadAes128Gcm => Profile::AeadAes128Gcm,
            P::Aes128CmHmacSha1_80 => Profile::AesCm128HmacSha1_80,
            other => {
                tracing::warn!(session = self.id, ?other, "SRTP profile not implemented");
                return None;
            }
        };
        let srtp = Srtp::new(profile, &keys.local_master_key, &keys.local_master_salt).ok()?;
        let video = self
            .plan
            .video
            .and_then(|s| self.sender_ssrc_pt(s, "video/h264"))
            .map(|(ssrc, pt)| Stream::new(ssrc, pt, true));
        let audio = self
            .plan
            .audio
            .and_then(|s| self.sender_ssrc_pt(s, "audio/opus"))
            .map(|(ssrc, pt)| Stream::new(ssrc, pt, false));
        Some(Box::new(ViewerSend::new(
            self.id,
            self.media_addr?,
            srtp,
            video,
            audio,
            self.viewer.clone(),
        )))
    }

    /// A viewer waiting for its room's next publisher session (until `until`): the next look
    /// for it, or `None` when the wait is over (or the session cannot wait).
    fn look_again(
        &self,
        until: Option<tokio::time::Instant>,
    ) -> Option<BoxFuture<'static, Option<Viewing>>> {
        let r = self.rejoin.as_ref()?;
        (tokio::time::Instant::now() < until?).then(|| r.lookup.media(&r.app, &r.room, r.client))
    }

    fn read(&mut self, from: SocketAddr, bytes: BytesMut) {
        // DTLS (20-63) and RTP/RTCP (128-191) come on the pair ICE chose: media goes there.
        if matches!(bytes.first(), Some(20..=63 | 128..=191)) {
            self.media_addr = Some(from);
        }
        let r = self.pc.handle_read(TaggedBytesMut {
            now: Instant::now(),
            transport: TransportContext {
                local_addr: self.local,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: bytes,
        });
        if let Err(e) = r {
            // One bad datagram from a known address ends nothing.
            tracing::trace!(session = self.id, error = %e, "datagram not taken");
        }
    }

    /// Sends what the connection has to send, a frame's packets in one GSO batch; a full socket
    /// buffer drops (counted).
    fn flush(&mut self) {
        let max = self.udp.max_gso_segments().max(1);
        while let Some(msg) = self.pc.poll_write() {
            let dest = msg.transport.peer_addr;
            if !self.batch.fits(dest, msg.message.len(), max) {
                self.send_batch();
            }
            self.batch.add(dest, &msg.message);
        }
        self.send_batch();
    }

    fn send_batch(&mut self) {
        if let Some(r) = self.batch.ready() {
            let transmit = quinn_udp::Transmit {
                destination: r.dest,
                ecn: None,
                contents: r.contents,
                segment_size: r.segment,
                src_ip: None,
            };
            match self.udp.send((&*self.socket).into(), &transmit) {
                Ok(()) => {
                    if let Some(v) = &self.viewer {
                        self.unreported += r.contents.len() as u64;
                        if self.unreported >= EGRESS_REPORT {
                            v.sent(std::mem::take(&mut self.unreported));
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let n = r.datagrams as u64;
                    self.stats.send_drops.fetch_add(n, Ordering::Relaxed);
                }
                Err(_) => {}
            }
        }
        self.batch.clear();
    }

    fn pli(&mut self, rid: RTCRtpReceiverId, media_ssrc: u32) {
        if let Some(mut r) = self.pc.rtp_receiver(rid) {
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc,
            };
            if r.write_rtcp(Instant::now(), vec![Box::new(pli)]).is_ok() {
                self.stats.plis_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Subscribes the viewer to the room on the newest group and sends that group at once (it
    /// starts on a keyframe, so the first picture decodes immediately). With the feeder of the
    /// room's previous publisher session (`before`), the viewer's RTP streams go on: same SSRCs,
    /// the next sequence numbers, timestamps forward from the last sent.
    fn start_feeder(
        &mut self,
        media: &streamhub_shared::media::MediaHandle,
        before: &mut Option<(Feeder, tokio::time::Instant)>,
    ) -> Option<Feeder> {
        let (snapshot, consumer) = media.subscribe_latest()?;
        let carried = match before.take() {
            // Senders that never got their track in that session carry the older state on.
            Some((f, _)) => (f.video.or(f.carried.0), f.audio.or(f.carried.1)),
            None => (None, None),
        };
        let mut f = Feeder {
            consumer,
            video: None,
            audio: None,
            avc: None,
            warned_bframes: false,
            carried,
            ignored: Vec::new(),
        };
        let tracks = f.consumer.tracks();
        for t in tracks.iter() {
            self.adopt(&mut f, t);
        }
        for frame in &snapshot {
            send_frame(&mut self.pc, &mut f, frame, &self.stats, &self.packets);
        }
        Some(f)
    }

    /// A frame of a track the viewer does not map yet: its sender takes it if the viewer has
    /// one of its kind without a track (a track that showed after the viewer started).
    fn take_up(&mut self, f: &mut Feeder, track: TrackId) {
        let tracks = f.consumer.tracks();
        let Some(t) = tracks.iter().find(|t| t.id == track) else {
            return;
        };
        if !self.adopt(f, t) && f.ignored.len() < MAX_IGNORED_TRACKS {
            f.ignored.push(track);
        }
    }

    /// Maps `track` to the viewer's sender of its kind, if that sender has no track yet; true
    /// if it did.
    fn adopt(&mut self, f: &mut Feeder, t: &streamhub_shared::TrackInfo) -> bool {
        match &t.codec {
            CodecConfig::H264 { avcc, .. } if f.video.is_none() => {
                let Some(sender) = self.plan.video else {
                    return false;
                };
                f.avc = AvcConfig::parse(avcc).ok().map(|c| (c, avcc.clone()));
                f.video = self.out(sender, t, "video/h264", f.carried.0.take());
                f.video.is_some()
            }
            CodecConfig::Opus { .. } if f.audio.is_none() => {
                let Some(sender) = self.plan.audio else {
                    return false;
                };
                f.audio = self.out(sender, t, "audio/opus", f.carried.1.take());
                f.audio.is_some()
            }
            _ => false,
        }
    }

    /// A sender's RTP state for `track`: new, or going on from `before` (same SSRC, next
    /// sequence number, timestamps forward from its last packet).
    fn out(
        &mut self,
        sender: RTCRtpSenderId,
        track: &streamhub_shared::TrackInfo,
        mime: &str,
        before: Option<Out>,
    ) -> Option<Out> {
        let (ssrc, pt) = self.sender_ssrc_pt(sender, mime)?;
        let clock = Some(track.timescale).filter(|c| *c > 0)?;
        let mut out = Out {
            sender,
            track: track.id,
            pt,
            ssrc,
            seq: rand::random(),
            ts_base: rand::random(),
            clock,
            last: None,
            resume: None,
            waiting: true,
        };
        if let Some(b) = before.filter(|b| b.ssrc == ssrc) {
            out.seq = b.seq;
            out.ts_base = b.ts_base;
            out.last = b.last;
            // A clock that changed cannot continue the old timeline's numbers: it starts anew.
            out.resume = if b.clock == clock {
                b.last.or(b.resume)
            } else {
                None
            };
        }
        Some(out)
    }
}

impl Session {
    /// The SSRC and negotiated payload type of a sender of `mime` (H.264: packetization mode 1).
    fn sender_ssrc_pt(&mut self, sender: RTCRtpSenderId, mime: &str) -> Option<(u32, u8)> {
        let mut s = self.pc.rtp_sender(sender)?;
        let ssrc = s.track().ssrcs().last()?;
        let params = s.get_parameters();
        let pt = params
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| {
                c.rtp_codec.mime_type.eq_ignore_ascii_case(mime)
                    && (mime != "video/h264"
                        || c.rtp_codec.sdp_fmtp_line.contains("packetization-mode=1"))
            })?
            .payload_type;
        Some((ssrc, pt))
    }
}

/// Hands a viewer to its worker for the room of `media`; the receiver gets its state back if
/// the room's publisher session ends first.
fn join(
    worker: &mpsc::UnboundedSender<Cmd>,
    viewer: Box<ViewerSend>,
    media: &MediaHandle,
) -> oneshot::Receiver<Box<ViewerSend>> {
    let (tx, rx) = oneshot::channel();
    let _ = worker.send(Cmd::Join {
        viewer,
        media: media.clone(),
        ended: tx,
    });
    rx
}

async fn next_ended(
    ended: &mut Option<oneshot::Receiver<Box<ViewerSend>>>,
) -> Result<Box<ViewerSend>, oneshot::error::RecvError> {
    match ended.as_mut() {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}

/// What one viewer's RTCP may ask of its fan-out worker per second: sequence numbers to
/// resend (a 2.5 Mb/s stream is ~300 packets a second: all of them lost, and asked twice) and
/// loss reports (browsers send one or two a second per stream). More is dropped (counted): a
/// viewer flooding NACKs or reports must not take its worker from the other viewers.
const NACKED_PER_SEC: u32 = 1_000;
const REPORTS_PER_SEC: u32 = 20;

/// A viewer's RTCP allowance ([`NACKED_PER_SEC`], [`REPORTS_PER_SEC`]), per second.
#[derive(Debug, Default)]
struct RtcpBudget {
    since: Option<Instant>,
    nacked: u32,
    reports: u32,
}

impl RtcpBudget {
    /// Takes `nacked` sequence numbers and `reports` loss reports from this second's allowance;
    /// false (nothing taken) if they do not fit.
    fn take(&mut self, now: Instant, nacked: u32, reports: u32) -> bool {
        if self
            .since
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
        {
            *self = Self {
                since: Some(now),
                ..Self::default()
            };
        }
        if self.nacked + nacked > NACKED_PER_SEC || self.reports + reports > REPORTS_PER_SEC {
            return false;
        }
        self.nacked += nacked;
        self.reports += reports;
        true
    }
}

/// Sequence numbers taken from one NACK packet (a burst of loss asks at most this many again).
const MAX_NACKED: usize = 256;

/// True for a PLI or FIR: the sender of it needs a keyframe.
pub fn is_keyframe_request(p: &dyn rtc::rtcp::Packet) -> bool {
    let any = p.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

async fn next_lookup(looking: &mut Option<BoxFuture<'static, Option<Viewing>>>) -> Option<Viewing> {
    match looking.as_mut() {
        Some(l) => l.await,
        None => std::future::pending().await,
    }
}

async fn next_frame(feeder: &mut Option<Feeder>) -> Result<Frame, RecvError> {
    match feeder.as_mut() {
        Some(f) => f.consumer.recv().await,
        None => std::future::pending().await,
    }
}

fn send_frame(
    pc: &mut RTCPeerConnection,
    f: &mut Feeder,
    frame: &Frame,
    stats: &WebRtcStats,
    packets: &PacketCache,
) {
    let now = Instant::now();
    if let Some(v) = f.video.as_mut().filter(|v| v.track == frame.track) {
        if v.waiting && !frame.keyframe {
            return;
        }
        v.waiting = false;
        if frame.pts != frame.dts && !f.warned_bframes {
            // WebRTC has no reordering: browsers show B-frame streams with stutter.
            f.warned_bframes = true;
            tracing::warn!(
                "the room's H.264 has B-frames; WebRTC viewers will see stutter (publish with -bf 0 or -tune zerolatency)"
            );
        }
        let Some((avc, avcc)) = f.avc.as_ref() else {
            return;
        };
        // Parameter sets in band before every keyframe: a viewer joining or recovering needs them.
        let payloads = packets.h264(frame, avc, avcc, frame.keyframe, RTP_MTU);
        let ts = v.timestamp(frame.pts, now);
        write(pc, v, ts, &payloads, stats, now);
    } else if let Some(a) = f.audio.as_mut().filter(|a| a.track == frame.track) {
        let ts = a.timestamp(frame.dts, now);
        write(pc, a, ts, std::slice::from_ref(&frame.data), stats, now);
    }
}

fn write(
    pc: &mut RTCPeerConnection,
    o: &mut Out,
    timestamp: u32,
    payloads: &[bytes::Bytes],
    stats: &WebRtcStats,
    now: Instant,
) {
    let Some(mut sender) = pc.rtp_sender(o.sender) else {
        return;
    };
    let n = payloads.len();
    for (i, payload) in payloads.iter().enumerate() {
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::Header {
                version: 2,
                marker: i + 1 == n,
                payload_type: o.pt,
                sequence_number: o.seq,
                timestamp,
                ssrc: o.ssrc,
                ..Default::default()
            },
            payload: payload.clone(),
        };
        o.seq = o.seq.wrapping_add(1);
        o.last = Some((timestamp, now));
        if sender.write_rtp(now, packet).is_ok() {
            stats.rtp_out.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connected_sessions_wake_together_and_never_early() {
        let t = Instant::now() + Duration::from_millis(3);
        let a = on_grid(t);
        assert!(a >= t, "never before its deadline");
        assert!(a - t <= TIMER_GRID);
        // Deadlines within one slot of the grid share one instant; the next slot is a grid later.
        let b = on_grid(t + Duration::from_millis(1));
        assert!(b == a || b - a == TIMER_GRID);
        assert_eq!(on_grid(a), a, "an instant on the grid stays");
        assert_eq!(on_grid(a + Duration::from_nanos(1)), a + TIMER_GRID);
        let c = on_grid(a - TIMER_GRID / 2);
        assert_eq!(c, a);
    }

    #[test]
    fn a_viewers_rtcp_asks_at_most_its_allowance_per_second() {
        let mut b = RtcpBudget::default();
        let t0 = Instant::now();
        assert!(b.take(t0, 600, 0));
        assert!(!b.take(t0, 600, 0), "over the NACK allowance");
        assert!(b.take(t0, 400, 0), "what is left fits");
        for _ in 0..REPORTS_PER_SEC {
            assert!(b.take(t0, 0, 1));
        }
        assert!(!b.take(t0, 0, 1), "over the report allowance");
        assert!(b.take(t0 + Duration::from_secs(1), 1000, 1), "a new second");
    }
}
