//! WebRTC on one UDP port per node: WHEP playback (every node) and WHIP ingest (origins).
//!
//! The `rtc` crate's sans-IO peer connection is driven here, one task per session, from a single
//! socket ([`mux`]): the node is an ICE-lite answerer with one host candidate, so a session needs
//! no port, no gathering and no trickle; the browser's checks tell it where the browser is.
//! Sessions are bounded ([`WebRtcConfig::max_sessions`], a share of it kept for publishers so a
//! flood of viewer offers cannot lock out ingest), one client address may hold only a few
//! offers that have not connected yet, session setup (its DTLS key) runs a few at a time off the
//! async workers, one that does not connect within [`CONNECT_TIMEOUT`] is dropped, and one whose
//! peer vanishes ends when ICE consent fails.

mod fanout;
mod gso;
pub mod http;
pub mod ingest;
pub mod mux;
mod outbox;
mod packets;
pub mod sdp;
mod session;
mod socket;

pub use session::is_keyframe_request;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use self::socket::MediaSocket;
use bytes::BytesMut;
use rand::distributions::Alphanumeric;
use rand::Rng;
use rtc::interceptor::Registry;
use rtc::interceptor::{NackGeneratorBuilder, NackResponderBuilder, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::certificate::RTCCertificate;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_rtcp_reports, configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::{
    MediaEngine, MIME_TYPE_H264, MIME_TYPE_OPUS,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use streamhub_shared::media::{CodecConfig, MediaHandle};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::node::surface::{ConnGuard, ConnLimiter};

use self::ingest::IngestSink;
use self::mux::Routes;
use self::sdp::OfferError;

/// Default media port of an origin (as LiveKit's single-port mode).
pub const DEFAULT_UDP_PORT: u16 = 7882;
/// Default media port of an edge (beside an origin on one host, as 3021 beside 3020).
pub const EDGE_DEFAULT_UDP_PORT: u16 = 7883;
/// A session that has not connected (ICE + DTLS) by then is dropped.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Datagrams queued for one session before the mux drops them.
const SESSION_QUEUE: usize = 512;
/// H.264 profiles registered for negotiation (browsers match on profile and constraints; any
/// of them decodes what we pass through).
const H264_PROFILES: &[(u8, &str)] = &[
    (102, "42001f"),
    (104, "42e01f"),
    (106, "4d001f"),
    (108, "64001f"),
    (110, "640c1f"),
];

/// Settings of the WebRTC side of a node.
#[derive(Debug, Clone)]
pub struct WebRtcConfig {
    /// The one UDP socket every session uses.
    pub udp: SocketAddr,
    /// The address advertised in answers (1:1 NAT); default: the bound address, or the address
    /// the client reached the HTTP endpoint on when bound to a wildcard.
    pub public_ip: Option<IpAddr>,
    /// Sessions at once (publishers and viewers); more are refused with 503.
    pub max_sessions: usize,
    /// Offers from one client address not connected yet; more are refused with 429.
    pub max_pending_per_address: usize,
    /// Session setups (DTLS key and certificate, SDP) computed at once.
    pub setup_concurrency: usize,
    /// Whether WHIP publishers use this node (origins): they then keep a share of the sessions
    /// ([`publisher_reserve`]). Edges have viewers only.
    pub publishers: bool,
    /// How viewers get their media.
    pub send_path: SendPath,
    /// Fan-out workers (default: one per core).
    pub fanout_workers: usize,
}

/// How WHEP viewers get their media.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SendPath {
    /// Per-core workers: each frame packetized once, per viewer a header and SRTP of our own
    /// into one buffer, `sendmmsg` across viewers ([`fanout`]).
    #[default]
    Fanout,
    /// The `rtc` peer connection's own pipeline (interceptors, its SRTP), one task per viewer.
    Rtc,
}

/// The share of `max_sessions` only publishers may take (at least one session).
pub fn publisher_reserve(max_sessions: usize) -> usize {
    (max_sessions / 10).max(1).min(max_sessions)
}

/// Default of [`WebRtcConfig::max_pending_per_address`].
pub const DEFAULT_MAX_PENDING_PER_ADDRESS: usize = 16;
/// How long an offer waits for a setup slot before it gets 503.
const SETUP_WAIT: Duration = Duration::from_secs(5);

impl Default for WebRtcConfig {
    fn default() -> Self {
        Self {
            udp: SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_UDP_PORT)),
            public_ip: None,
            max_sessions: 5_000,
            max_pending_per_address: DEFAULT_MAX_PENDING_PER_ADDRESS,
            setup_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            publishers: true,
            send_path: SendPath::default(),
            fanout_workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// Counters of the WebRTC side (rendered in `/metrics`).
#[derive(Debug, Default)]
pub struct WebRtcStats {
    /// Sessions now (any state).
    pub sessions: AtomicU64,
    /// Sessions that reached `connected`.
    pub connected_total: AtomicU64,
    /// Offers refused (bad SDP, no codec, limits).
    pub refused: AtomicU64,
    /// Datagrams from nobody we know (not a session's address, not a STUN check for one).
    pub garbage_datagrams: AtomicU64,
    /// Datagrams dropped because a session's queue was full.
    pub queue_drops: AtomicU64,
    /// Datagrams the socket would not take (a slow link loses packets, not the room).
    pub send_drops: AtomicU64,
    /// RTP packets sent to viewers.
    pub rtp_out: AtomicU64,
    /// RTP packets taken from publishers.
    pub rtp_in: AtomicU64,
    /// Publisher packets that could not be used.
    pub rtp_in_dropped: AtomicU64,
    /// Keyframe requests (PLI) sent to publishers.
    pub plis_sent: AtomicU64,
    /// Keyframe requests (PLI/FIR) received from viewers.
    pub viewer_keyframe_requests: AtomicU64,
    /// Viewer sessions that went on with the room's next publisher session (an encoder
    /// restart, a failover to another origin) instead of ending.
    pub viewer_rejoins: AtomicU64,
    /// Viewers now congested (sustained loss in their receiver reports, or packets the socket
    /// would not take): their video waits for keyframes (fan-out send path).
    pub viewers_congested: AtomicU64,
    /// Times a viewer became congested.
    pub congestion_events: AtomicU64,
    /// RTP packets sent again on a viewer's NACK (fan-out send path).
    pub nack_resent: AtomicU64,
    /// Viewer RTCP packets (NACKs, receiver reports) over their per-second allowance, dropped.
    pub rtcp_over_budget: AtomicU64,
}

/// What a session does.
pub enum Role {
    /// WHIP: receive the publisher's H.264/Opus into a room.
    Publish {
        sink: Box<dyn IngestSink>,
        /// Cancelled when the room is taken over, the key revoked or the node stops.
        stop: CancellationToken,
    },
    /// WHEP: send a room's H.264/Opus to a viewer.
    Play {
        media: MediaHandle,
        /// Held while the session lives (an edge keeps its relay subscription).
        hold: Option<Box<dyn Send + Sync>>,
        /// The viewer the access check admitted: counted while the session lives, and the
        /// bytes sent to it in its app's egress.
        viewer: Option<Arc<crate::access::ViewerHold>>,
        /// Where to find the room again when its publisher session ends: the viewer's session
        /// goes on with the next one (same SSRCs, sequence numbers and a forward timeline), so
        /// the player sees a pause, not a lost connection. `None`: the session ends with it.
        rejoin: Option<Rejoin>,
    },
}

/// How a viewer's session finds its room again (see [`Role::Play`]).
pub struct Rejoin {
    pub lookup: Arc<dyn crate::mjpeg::MediaLookup>,
    pub app: streamhub_shared::AppName,
    pub room: streamhub_shared::RoomName,
    /// The viewer's address (what the lookup counts it as).
    pub client: SocketAddr,
}

/// Why an offer was not answered.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Offer(#[from] OfferError),
    #[error("too many WebRTC sessions on this node ({0})")]
    Busy(usize),
    #[error("too many unconnected WebRTC offers from this address ({0})")]
    TooManyPending(usize),
    #[error("the offer could not be negotiated: {0}")]
    Negotiation(String),
}

/// A session slot taken for an offer ([`WebRtc::reserve`]); given back if the offer fails.
pub struct Reservation {
    /// Counts the offer against its address until the session connects or ends.
    pending: ConnGuard,
    permit: OwnedSemaphorePermit,
}

/// An answered offer.
#[derive(Debug)]
pub struct Opened {
    pub id: u64,
    pub answer: String,
}

/// One datagram for a session, boxed: a session's queue allocates its slots 32 at a time, 8
/// bytes each this way instead of 64 (2 KiB a block, one or two blocks per session otherwise).
type Datagram = Box<(SocketAddr, BytesMut)>;

/// A session's place in the node's tables (its id, its ICE route, its slot): given back when the
/// session ends, with the session itself.
pub(crate) struct Registered {
    web: Arc<WebRtc>,
    id: u64,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.web.forget(self.id, self.permit.take());
    }
}

/// The WebRTC side of a node.
pub struct WebRtc {
    socket: Arc<MediaSocket>,
    /// GSO-capable sends on `socket`.
    udp: Arc<quinn_udp::UdpSocketState>,
    local: SocketAddr,
    public_ip: Option<IpAddr>,
    routes: Mutex<Routes<mpsc::Sender<Datagram>>>,
    sessions: Mutex<HashMap<u64, CancellationToken>>,
    /// Sessions anyone may take.
    shared: Arc<Semaphore>,
    /// Sessions only publishers may take.
    reserved: Arc<Semaphore>,
    max_sessions: usize,
    /// Offers not connected yet, per client address.
    pending: Arc<ConnLimiter>,
    max_pending_per_address: usize,
    /// Session setups running now.
    setups: Semaphore,
    pub stats: Arc<WebRtcStats>,
    packets: Arc<packets::PacketCache>,
    /// The viewers' send path ([`SendPath::Fanout`]); `None`: the `rtc` pipeline.
    fanout: Option<fanout::Fanout>,
    /// Spreads viewers over the fan-out workers.
    next_worker: AtomicU64,
    /// The DTLS certificate of this node's sessions and when it was made (see
    /// [`WebRtc::certificate`]).
    certificate: Mutex<Option<(RTCCertificate, Instant)>>,
    shutdown: CancellationToken,
}

/// A node's DTLS certificate is replaced this often (new sessions get the new one).
const CERTIFICATE_LIFETIME: Duration = Duration::from_secs(24 * 3600);

impl WebRtc {
    /// Binds the media port and starts routing its datagrams.
    pub async fn bind(
        config: WebRtcConfig,
        shutdown: CancellationToken,
    ) -> std::io::Result<Arc<Self>> {
        let socket = Arc::new(MediaSocket::bind(config.udp)?);
        let udp = Arc::new(quinn_udp::UdpSocketState::new((&*socket).into())?);
        let local = socket.local_addr()?;
        let reserve = if config.publishers {
            publisher_reserve(config.max_sessions)
        } else {
            0
        };
        buffers(&socket);
        let stats: Arc<WebRtcStats> = Arc::default();
        let packets: Arc<packets::PacketCache> = Arc::default();
        let fanout = (config.send_path == SendPath::Fanout).then(|| {
            fanout::Fanout::start(
                config.fanout_workers,
                socket.clone(),
                udp.max_gso_segments(),
                stats.clone(),
                packets.clone(),
                shutdown.clone(),
            )
        });
        let me = Arc::new(Self {
            socket,
            udp,
            local,
            public_ip: config.public_ip,
            routes: Mutex::new(Routes::default()),
            sessions: Mutex::new(HashMap::new()),
            shared: Arc::new(Semaphore::new(config.max_sessions - reserve)),
            reserved: Arc::new(Semaphore::new(reserve)),
            max_sessions: config.max_sessions,
            pending: Arc::default(),
            max_pending_per_address: config.max_pending_per_address.max(1),
            setups: Semaphore::new(config.setup_concurrency.max(1)),
            stats,
            packets,
            fanout,
            next_worker: AtomicU64::new(0),
            certificate: Mutex::new(None),
            shutdown,
        });
        tokio::spawn(me.clone().recv_loop());
        tracing::info!(%local, "WebRTC media port bound");
        Ok(me)
    }

    /// The bound media address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    async fn recv_loop(self: Arc<Self>) {
        // quinn-udp turns on UDP GRO where the kernel has it (it must, for GSO sends): one
        // receive may then hold several datagrams of one sender, `stride` bytes each, so the
        // buffer takes a whole coalesced batch and is split here.
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let received = tokio::select! {
                () = self.shutdown.cancelled() => break,
                r = self.socket.recv_with(|s| {
                    let mut meta = [quinn_udp::RecvMeta::default()];
                    let mut bufs = [std::io::IoSliceMut::new(&mut buf)];
                    self.udp.recv(s.into(), &mut bufs, &mut meta).map(|_| meta[0])
                }) => match r {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "media socket failed");
                        break;
                    }
                },
            };
            let meta = match received {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                // ICMP errors surface here on Linux (a viewer's port closed): not ours to stop on.
                Err(e) => {
                    tracing::trace!(error = %e, "media socket read");
                    continue;
                }
            };
            let stride = meta.stride.max(1);
            for datagram in buf[..meta.len].chunks(stride) {
                self.route(meta.addr, datagram);
            }
        }
    }

    /// Hands one datagram to the session it belongs to.
    fn route(&self, from: SocketAddr, datagram: &[u8]) {
        let route = self
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .route(from, datagram);
        match route {
            Some((_, tx)) => {
                if tx
                    .try_send(Box::new((from, BytesMut::from(datagram))))
                    .is_err()
                {
                    self.stats.queue_drops.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                self.stats.garbage_datagrams.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Takes a session slot for an offer from `client` (a publisher's from the shared slots or
    /// the publishers' share), before any work is done for it: `TooManyPending` when the address
    /// already has its share of unconnected offers, `Busy` when the node is full.
    pub fn reserve(&self, client: IpAddr, publisher: bool) -> Result<Reservation, OpenError> {
        let result = self.try_reserve(client, publisher);
        if result.is_err() {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn try_reserve(&self, client: IpAddr, publisher: bool) -> Result<Reservation, OpenError> {
        let pending = self
            .pending
            .admit(client, false, usize::MAX, self.max_pending_per_address)
            .ok_or(OpenError::TooManyPending(self.max_pending_per_address))?;
        let permit = match self.shared.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) if publisher => self
                .reserved
                .clone()
                .try_acquire_owned()
                .map_err(|_| OpenError::Busy(self.max_sessions))?,
            Err(_) => return Err(OpenError::Busy(self.max_sessions)),
        };
        Ok(Reservation { pending, permit })
    }

    /// Answers an offer and starts its session on `slot`. `reached`: the local address the
    /// client's HTTP request arrived on (advertised when the media socket is bound to a
    /// wildcard).
    pub fn open(
        self: &Arc<Self>,
        slot: Reservation,
        offer: &str,
        role: Role,
        reached: Option<IpAddr>,
    ) -> Result<Opened, OpenError> {
        let result = self.try_open(slot, offer, role, reached);
        if result.is_err() {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// [`open`](Self::open) off the async workers and a few at a time: a session's setup makes
    /// its DTLS key and certificate, CPU work a burst of offers must not run on the reactor nor
    /// spread over every blocking thread.
    pub async fn open_blocking(
        self: &Arc<Self>,
        slot: Reservation,
        offer: String,
        role: Role,
        reached: Option<IpAddr>,
    ) -> Result<Opened, OpenError> {
        let Ok(Ok(_setup)) = tokio::time::timeout(SETUP_WAIT, self.setups.acquire()).await else {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(OpenError::Busy(self.max_sessions));
        };
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.open(slot, &offer, role, reached))
            .await
            .unwrap_or_else(|e| Err(OpenError::Negotiation(format!("session setup failed: {e}"))))
    }

    fn try_open(
        self: &Arc<Self>,
        slot: Reservation,
        offer: &str,
        role: Role,
        reached: Option<IpAddr>,
    ) -> Result<Opened, OpenError> {
        let codecs = sdp::offer_codecs(offer)?;
        match &role {
            Role::Publish { .. } => sdp::check_publish(&codecs)?,
            Role::Play { media, .. } => {
                let tracks = media.tracks();
                let h264 = tracks
                    .iter()
                    .any(|t| matches!(t.codec, CodecConfig::H264 { .. }));
                let opus = tracks
                    .iter()
                    .any(|t| matches!(t.codec, CodecConfig::Opus { .. }));
                sdp::check_play(&codecs, h264, opus)?;
            }
        }
        let Reservation { pending, permit } = slot;
        let ufrag = random_string(16);
        let pwd = random_string(32);
        let advertise = self.advertised_ip(reached);
        let neg = |e: rtc::shared::error::Error| OpenError::Negotiation(e.to_string());
        let fanout = match (&role, &self.fanout) {
            (Role::Play { .. }, Some(f)) => {
                Some(f.worker(self.next_worker.fetch_add(1, Ordering::Relaxed)))
            }
            _ => None,
        };
        let certificate = self.certificate().map_err(neg)?;
        // A fan-out viewer's peer connection keeps only the part of the offer it uses: one
        // H.264 profile, of which only ours of the same profile is registered (each codec
        // registered is copied into every step of the negotiation).
        let (offer, h264) = if fanout.is_some() {
            let offer = sdp::trim_play_offer(offer);
            let h264 = sdp::h264_profile(&offer).and_then(|offered| {
                H264_PROFILES
                    .iter()
                    .position(|(_, id)| sdp::same_h264_profile(&offered, id))
            });
            (offer, h264)
        } else {
            (offer.to_string(), None)
        };
        let mut pc = if fanout.is_some() {
            build_fanout_viewer(&ufrag, &pwd, certificate, h264)
        } else {
            build_peer_connection(&ufrag, &pwd, certificate)
        }
        .map_err(neg)?;
        let mut plan = session::Plan {
            expect_video: matches!(role, Role::Publish { .. }) && codecs.h264,
            audio_offered: matches!(role, Role::Publish { .. }) && codecs.opus,
            ..Default::default()
        };
        match &role {
            Role::Publish { .. } => {
                let recv = || {
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Recvonly,
                        ..Default::default()
                    })
                };
                if codecs.video {
                    pc.add_transceiver_from_kind(RtpCodecKind::Video, recv())
                        .map_err(neg)?;
                }
                if codecs.audio {
                    pc.add_transceiver_from_kind(RtpCodecKind::Audio, recv())
                        .map_err(neg)?;
                }
            }
            Role::Play { media, .. } => {
                let tracks = media.tracks();
                if tracks
                    .iter()
                    .any(|t| matches!(t.codec, CodecConfig::H264 { .. }))
                {
                    let ssrc = rand::random::<u32>();
                    plan.video = Some(
                        pc.add_track(track(
                            RtpCodecKind::Video,
                            ssrc,
                            h264_codec(h264.map_or(104, |i| H264_PROFILES[i].0)).rtp_codec,
                        ))
                        .map_err(neg)?,
                    );
                }
                let opus = tracks
                    .iter()
                    .any(|t| matches!(t.codec, CodecConfig::Opus { .. }));
                if opus && codecs.opus {
                    let ssrc = rand::random::<u32>();
                    plan.audio = Some(
                        pc.add_track(track(RtpCodecKind::Audio, ssrc, opus_codec().rtp_codec))
                            .map_err(neg)?,
                    );
                }
            }
        }
        let offer = RTCSessionDescription::offer(offer).map_err(neg)?;
        pc.set_remote_description(Instant::now(), offer)
            .map_err(neg)?;
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: advertise.to_string(),
                port: self.local.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .map_err(neg)?;
        let init = RTCIceCandidate::from(&candidate).to_json().map_err(neg)?;
        pc.add_local_candidate(init).map_err(neg)?;
        let answer = pc.create_answer(None).map_err(neg)?;
        pc.set_local_description(Instant::now(), answer)
            .map_err(neg)?;
        let answer = pc
            .local_description()
            .map(|d| d.sdp)
            .ok_or_else(|| OpenError::Negotiation("no local description".into()))?;

        // The session resource's id is random: knowing one session's URL (the `Location` that
        // `DELETE` ends it with) tells nothing about another's.
        let cancel = self.shutdown.child_token();
        let id = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            let id = loop {
                let id = rand::random::<u64>() >> 1;
                if id != 0 && !sessions.contains_key(&id) {
                    break id;
                }
            };
            sessions.insert(id, cancel.clone());
            id
        };
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, ufrag, tx);
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        let s = session::Session {
            id,
            pc,
            plan,
            rx,
            socket: self.socket.clone(),
            udp: self.udp.clone(),
            batch: gso::GsoBatch::default(),
            local: SocketAddr::new(advertise, self.local.port()),
            stats: self.stats.clone(),
            cancel,
            viewer_requests: None,
            packets: self.packets.clone(),
            pending: Some(pending),
            viewer: None,
            rejoin: None,
            unreported: 0,
            fanout,
            media_addr: None,
            _registered: Registered {
                web: self.clone(),
                id,
                permit: Some(permit),
            },
        };
        // The session's future is spawned as it is, not inside a block that then calls it: a
        // block would keep its own copy of the session (~10 KiB) beside the one in the future.
        match (role, s.fanout.clone()) {
            (
                Role::Play {
                    media,
                    hold,
                    viewer,
                    rejoin,
                },
                Some(worker),
            ) => tokio::spawn(Box::new(s).play(worker, media, hold, viewer, rejoin)),
            (role, _) => tokio::spawn(Box::new(s).run(role)),
        };
        Ok(Opened { id, answer })
    }

    fn forget(&self, id: u64, permit: Option<OwnedSemaphorePermit>) {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.stats.sessions.fetch_sub(1, Ordering::Relaxed);
        drop(permit);
    }

    /// Ends every session (a draining edge tells its viewers' players to move); returns how
    /// many there were.
    pub fn close_all(&self) -> usize {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.values().for_each(CancellationToken::cancel);
        sessions.len()
    }

    /// Whether the session `id` lives.
    pub fn is_open(&self, id: u64) -> bool {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&id)
    }

    /// Ends a session (`DELETE` on its resource); false if there is none.
    pub fn close(&self, id: u64) -> bool {
        let token = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned();
        token.map(|t| t.cancel()).is_some()
    }

    /// The DTLS certificate for a new session: one per node (made on first use, replaced after
    /// [`CERTIFICATE_LIFETIME`]), not one per session. A session's identity is its certificate's
    /// fingerprint in the SDP its peer got over HTTPS; sharing it costs no security (as in
    /// browsers, which reuse theirs too) and saves a key generation and ~10 KiB per session.
    fn certificate(&self) -> rtc::shared::error::Result<RTCCertificate> {
        let mut c = self.certificate.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cert, made)) = c.as_ref() {
            if made.elapsed() < CERTIFICATE_LIFETIME {
                return Ok(cert.clone());
            }
        }
        let provider = rtc::crypto::default_provider()
            .map_err(|e| rtc::shared::error::Error::Other(e.to_string()))?;
        let cert = RTCCertificate::generate(
            provider.crypto(),
            rtc::crypto::SignatureScheme::EcdsaP256Sha256,
            rtc::peer_connection::certificate::CertificateParams::new(vec!["streamhub".to_owned()])
                .map_err(|e| rtc::shared::error::Error::Other(e.to_string()))?,
        )?;
        *c = Some((cert.clone(), Instant::now()));
        Ok(cert)
    }

    fn advertised_ip(&self, reached: Option<IpAddr>) -> IpAddr {
        if let Some(ip) = self.public_ip {
            return ip;
        }
        if !self.local.ip().is_unspecified() {
            return self.local.ip();
        }
        reached
            .filter(|ip| !ip.is_unspecified())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }
}

/// Socket buffers of the media port: a keyframe to thousands of viewers leaves in one burst,
/// and their RTCP arrives together. Asks for 4 MiB each way (the kernel caps it at
/// `net.core.wmem_max` / `rmem_max`).
fn buffers(socket: &MediaSocket) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4 << 20;
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: a valid socket and a c_int option value of the right size.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "media socket buffer size");
        }
    }
}

fn random_string(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn h264_codec(pt: u8) -> RTCRtpCodecParameters {
    let profile = H264_PROFILES
        .iter()
        .find(|(p, _)| *p == pt)
        .map_or("42e01f", |(_, id)| id);
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_H264.to_owned(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: format!(
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile}"
            ),
            rtcp_feedback: vec![],
        },
        payload_type: pt,
    }
}

fn opus_codec() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: 111,
    }
}

fn track(kind: RtpCodecKind, ssrc: u32, codec: RTCRtpCodec) -> MediaStreamTrack {
    let name = match kind {
        RtpCodecKind::Audio => "audio",
        _ => "video",
    };
    MediaStreamTrack::new(
        "streamhub".to_string(),
        name.to_string(),
        name.to_string(),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    )
}

/// RTP packets kept per outgoing stream to answer NACKs (a power of two, as rtc requires).
const NACK_HISTORY: u16 = 512;

/// A viewer's peer connection on the fan-out path: no interceptors (the fan-out sends its
/// media, sender reports and NACK answers itself; nothing else may protect its SSRCs' packets),
/// no header extensions, and only the SRTP profiles [`streamhub_shared::srtp`] implements.
fn build_fanout_viewer(
    ufrag: &str,
    pwd: &str,
    certificate: RTCCertificate,
    h264: Option<usize>,
) -> rtc::shared::error::Result<RTCPeerConnection> {
    use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
    let mut media = MediaEngine::default();
    match h264 {
        Some(i) => register_codecs_of(&mut media, &H264_PROFILES[i..=i])?,
        None => register_codecs(&mut media)?,
    }
    let settings = setting_engine(ufrag, pwd)
        .with_srtp_protection_profiles(vec![
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        ])
        .build();
    RTCPeerConnectionBuilder::new()
        .with_configuration(
            RTCConfigurationBuilder::new()
                .with_certificates(vec![certificate])
                .build(),
        )
        .with_setting_engine(settings)
        .with_media_engine(media)
        .with_interceptor_registry(
            Registry::new().with(Slot::Custom(DELIVER_RTCP_SLOT), DeliverRtcp::default()),
        )
        .build(Instant::now())
}

/// Where [`DeliverRtcp`] sits: nearest the application.
const DELIVER_RTCP_SLOT: usize = 20_000;

/// Hands every RTCP packet the viewer sends to the application (the session reads its NACKs,
/// receiver reports and keyframe requests); `rtc` ends inbound RTCP at its chain's end
/// otherwise.
#[derive(Default)]
struct DeliverRtcp {
    reads: std::collections::VecDeque<rtc::interceptor::TaggedPacket>,
    writes: std::collections::VecDeque<rtc::interceptor::TaggedPacket>,
}

impl rtc::sansio::Protocol<rtc::interceptor::TaggedPacket, rtc::interceptor::TaggedPacket, ()>
    for DeliverRtcp
{
    type Rout = rtc::interceptor::TaggedPacket;
    type Wout = rtc::interceptor::TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: rtc::interceptor::TaggedPacket) -> Result<(), Self::Error> {
        if matches!(msg.message.packet, rtc::interceptor::Packet::Rtcp(_)) {
            msg.message
                .add(rtc::interceptor::Attribute::DeliverToApplication);
        }
        self.reads.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, msg: rtc::interceptor::TaggedPacket) -> Result<(), Self::Error> {
        self.writes.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.writes.pop_front()
    }
}

impl rtc::interceptor::Interceptor for DeliverRtcp {
    fn bind_local_stream(&mut self, _: &rtc::interceptor::StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &rtc::interceptor::StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &rtc::interceptor::StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &rtc::interceptor::StreamInfo) {}
}

fn register_codecs(media: &mut MediaEngine) -> rtc::shared::error::Result<()> {
    register_codecs_of(media, H264_PROFILES)
}

/// Registers the H.264 profiles of `h264` and Opus.
fn register_codecs_of(
    media: &mut MediaEngine,
    h264: &[(u8, &str)],
) -> rtc::shared::error::Result<()> {
    for (pt, _) in h264 {
        let mut c = h264_codec(*pt);
        c.rtp_codec.rtcp_feedback = video_feedback();
        media.register_codec(c, RtpCodecKind::Video)?;
    }
    media.register_codec(opus_codec(), RtpCodecKind::Audio)
}

fn setting_engine(ufrag: &str, pwd: &str) -> SettingEngineBuilder {
    SettingEngineBuilder::new()
        .with_lite(true)
        .with_ice_credentials(ufrag.to_string(), pwd.to_string())
        .with_answering_dtls_role(RTCDtlsRole::Server)
        // Consent: a peer that stops answering is disconnected after 5 s and failed after 10 s.
        .with_ice_timeouts(
            Some(Duration::from_secs(5)),
            Some(Duration::from_secs(10)),
            Some(Duration::from_secs(2)),
        )
}

fn build_peer_connection(
    ufrag: &str,
    pwd: &str,
    certificate: RTCCertificate,
) -> rtc::shared::error::Result<RTCPeerConnection> {
    let mut media = MediaEngine::default();
    register_codecs(&mut media)?;
    // The default interceptors, with a shorter NACK history: 512 packets is 1.7 s of a 2.5 Mb/s
    // stream (10 s at 200 kb/s), longer than any retransmission that can still arrive in time.
    // Its entries reference the payloads every viewer of a frame shares (see `packets`).
    let registry = Registry::new()
        .with(
            Slot::NackResponder,
            NackResponderBuilder::new().with_size(NACK_HISTORY).build(),
        )
        .with(Slot::NackGenerator, NackGeneratorBuilder::new().build());
    configure_simulcast_extension_headers(&mut media)?;
    let registry = configure_twcc_receiver_only(registry, &mut media)?;
    let registry = configure_rtcp_reports(registry);
    let settings = setting_engine(ufrag, pwd).build();
    RTCPeerConnectionBuilder::new()
        .with_configuration(
            RTCConfigurationBuilder::new()
                .with_certificates(vec![certificate])
                .build(),
        )
        .with_setting_engine(settings)
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build(Instant::now())
}

fn video_feedback() -> Vec<rtc::rtp_transceiver::rtp_sender::RTCPFeedback> {
    use rtc::rtp_transceiver::rtp_sender::RTCPFeedback;
    [("ccm", "fir"), ("nack", ""), ("nack", "pli")]
        .iter()
        .map(|(t, p)| RTCPFeedback {
            typ: (*t).to_owned(),
            parameter: (*p).to_owned(),
        })
        .collect()
}
