//! A WebRTC viewer written on the `rtc` crate (sans-IO, one UDP socket per viewer): what the
//! media-plane tests and the WHEP load benchmark play rooms with. It offers receive-only video
//! (and audio if asked), takes the answer, and runs the connection while a test watches every
//! datagram and every RTP packet.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::interceptor::Registry;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use streamhub_shared::srtp::{IndexEstimate, Profile, Srtp};
use tokio::net::UdpSocket;

/// What a viewer asks for.
#[derive(Debug, Clone, Copy)]
pub struct ViewerOptions {
    /// Receive audio too.
    pub audio: bool,
    /// Run rtc's default interceptors (NACK, receiver reports): a browser-like viewer. Off for
    /// a lean load client.
    pub interceptors: bool,
    /// The address its socket binds (default 127.0.0.1).
    pub bind: Option<std::net::IpAddr>,
    /// Its socket's receive buffer in bytes, if not the system's default (a node sends a
    /// frame's packets to a viewer in one burst: a 720p keyframe is ~100 KB).
    pub receive_buffer: Option<usize>,
}

impl Default for ViewerOptions {
    fn default() -> Self {
        Self {
            audio: false,
            interceptors: true,
            bind: None,
            receive_buffer: None,
        }
    }
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The time or the stop signal came.
    Stopped,
    /// The connection failed.
    Failed,
}

/// One viewer: a receive-only peer connection on its own socket.
pub struct Viewer {
    pub pc: RTCPeerConnection,
    socket: UdpSocket,
    local: SocketAddr,
    /// Set once the connection has been connected.
    pub connected: bool,
}

impl Viewer {
    /// A browser-like video viewer (see [`ViewerOptions::default`]).
    pub async fn new() -> Viewer {
        Viewer::with(ViewerOptions::default())
            .await
            .expect("a WebRTC viewer on loopback")
    }

    /// A viewer with `options`, its offer made.
    pub async fn with(options: ViewerOptions) -> anyhow::Result<Viewer> {
        let ip = options
            .bind
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        let socket = UdpSocket::bind((ip, 0)).await?;
        receive_buffer(&socket, options.receive_buffer);
        let local = socket.local_addr()?;
        let mut media = MediaEngine::default();
        media.register_default_codecs()?;
        let mut builder = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build());
        if options.interceptors {
            let registry = register_default_interceptors(Registry::new(), &mut media)?;
            builder = builder.with_interceptor_registry(registry);
        }
        let mut pc = builder.with_media_engine(media).build(Instant::now())?;
        let kinds: &[RtpCodecKind] = if options.audio {
            &[RtpCodecKind::Video, RtpCodecKind::Audio]
        } else {
            &[RtpCodecKind::Video]
        };
        for &kind in kinds {
            let recv = RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                ..Default::default()
            };
            pc.add_transceiver_from_kind(kind, Some(recv))?;
        }
        let offer = pc.create_offer(None)?;
        pc.set_local_description(Instant::now(), offer)?;
        let host = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: local.ip().to_string(),
                port: local.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()?;
        pc.add_local_candidate(RTCIceCandidate::from(&host).to_json()?)?;
        Ok(Viewer {
            pc,
            socket,
            local,
            connected: false,
        })
    }

    /// The SDP offer to POST.
    pub fn offer(&self) -> String {
        self.pc
            .local_description()
            .map(|d| d.sdp)
            .unwrap_or_default()
    }

    /// Takes the server's answer.
    pub fn answer(&mut self, sdp: String) -> anyhow::Result<()> {
        let answer = RTCSessionDescription::answer(sdp)?;
        self.pc.set_remote_description(Instant::now(), answer)?;
        Ok(())
    }

    /// POSTs the offer to a WHEP URL (with `token` as the bearer, if any) and takes the answer;
    /// the session's resource URL (`Location`), to DELETE when done.
    pub async fn play(
        &mut self,
        http: &reqwest::Client,
        whep: &str,
        token: Option<&str>,
    ) -> anyhow::Result<Option<String>> {
        let mut req = http
            .post(whep)
            .header("content-type", "application/sdp")
            .body(self.offer());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(|l| reqwest::Url::parse(whep).and_then(|u| u.join(l)))
            .transpose()?
            .map(|u| u.to_string());
        let body = resp.text().await?;
        anyhow::ensure!(status == 201, "WHEP answered {status}: {body}");
        self.answer(body)?;
        Ok(location)
    }

    /// Runs the connection for `secs`: `lose` sees every datagram first (true: it is lost on the
    /// way), `rtp` every RTP packet that comes out.
    pub async fn run(
        &mut self,
        secs: f64,
        lose: impl FnMut(&[u8]) -> bool,
        rtp: impl FnMut(&rtc::rtp::Packet),
    ) -> RunEnd {
        let deadline = tokio::time::sleep(Duration::from_secs_f64(secs));
        self.run_until(deadline, lose, rtp).await
    }

    /// Runs the connection until `stop` resolves or the connection fails (see
    /// [`Viewer::run`]).
    pub async fn run_until(
        &mut self,
        stop: impl Future<Output = ()>,
        mut lose: impl FnMut(&[u8]) -> bool,
        mut rtp: impl FnMut(&rtc::rtp::Packet),
    ) -> RunEnd {
        let mut buf = vec![0u8; 2048];
        tokio::pin!(stop);
        loop {
            while let Some(msg) = self.pc.poll_write() {
                let _ = self
                    .socket
                    .try_send_to(&msg.message, msg.transport.peer_addr);
            }
            while let Some(ev) = self.pc.poll_event() {
                if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = ev {
                    self.connected |= s == RTCPeerConnectionState::Connected;
                    if s == RTCPeerConnectionState::Failed {
                        return RunEnd::Failed;
                    }
                }
            }
            while let Some(msg) = self.pc.poll_read() {
                if let RTCMessage::RtpPacket(_, p) = msg.message {
                    rtp(&p);
                }
            }
            let now = Instant::now();
            let wake = self
                .pc
                .poll_timeout()
                .unwrap_or(now + Duration::from_millis(50));
            tokio::select! {
                () = &mut stop => return RunEnd::Stopped,
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    let _ = self.pc.handle_timeout(Instant::now());
                }
                r = self.socket.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { return RunEnd::Failed };
                    if lose(&buf[..n]) {
                        continue;
                    }
                    self.feed(from, BytesMut::from(&buf[..n]));
                }
            }
        }
    }
}

/// What decrypting viewers counted ([`Viewer::run_decrypting`]); shared by many viewers.
#[derive(Debug, Default)]
pub struct RtpTally {
    /// Viewers that connected.
    pub connected: AtomicU64,
    /// RTP packets received, authenticated and decrypted (added by the 32).
    pub packets: AtomicU64,
    /// Their payload bytes.
    pub bytes: AtomicU64,
    /// Packets each stream's sequence numbers say were sent, first to last (added when a
    /// viewer stops).
    pub expected: AtomicU64,
    /// Of those, never received.
    pub lost: AtomicU64,
    /// Packets of an authenticated stream that failed SRTP authentication.
    pub auth_failures: AtomicU64,
    /// Packets of streams that never authenticated (not for this viewer's session).
    pub foreign: AtomicU64,
}

/// One received stream's sequence accounting.
#[derive(Debug, Default)]
struct SeqCount {
    estimate: IndexEstimate,
    first: u64,
    highest: u64,
    received: u64,
}

impl Viewer {
    /// Hands a datagram from `from` to the peer connection.
    fn feed(&mut self, from: SocketAddr, message: BytesMut) {
        let _ = self.pc.handle_read(TaggedBytesMut {
            now: Instant::now(),
            transport: TransportContext {
                local_addr: self.local,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message,
        });
    }

    /// Runs the connection until `stop` like [`Viewer::run_until`], but receives media as cheaply
    /// as the node sends it: once DTLS is done, RTP is authenticated and decrypted here with the
    /// negotiated keys (the peer connection keeps ICE, DTLS and RTCP), and every stream's
    /// sequence numbers are checked for loss. Adds what it counted to `tally` when it stops.
    pub async fn run_decrypting(
        &mut self,
        stop: impl Future<Output = ()>,
        tally: &RtpTally,
    ) -> RunEnd {
        let mut batch = Batch::new();
        let mut media = MediaCount::default();
        tokio::pin!(stop);
        // One timer for the whole run, moved only when the connection's deadline moves: a media
        // packet costs a receive and a decryption, not a timer and the connection's polling.
        let sleep = tokio::time::sleep(Duration::from_millis(50));
        tokio::pin!(sleep);
        let mut armed = None;
        let end = 'run: loop {
            while let Some(msg) = self.pc.poll_write() {
                let _ = self
                    .socket
                    .try_send_to(&msg.message, msg.transport.peer_addr);
            }
            while let Some(ev) = self.pc.poll_event() {
                if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = ev {
                    if s == RTCPeerConnectionState::Connected && !self.connected {
                        self.connected = true;
                        tally.connected.fetch_add(1, Ordering::Relaxed);
                    }
                    if s == RTCPeerConnectionState::Failed {
                        break 'run RunEnd::Failed;
                    }
                }
            }
            while self.pc.poll_read().is_some() {}
            if media.srtp.is_none() && self.connected {
                media.srtp = self.pc.srtp_keys().and_then(|k| {
                    use rtc::srtp::protection_profile::ProtectionProfile as P;
                    let profile = match k.profile {
                        P::AeadAes128Gcm => Profile::AeadAes128Gcm,
                        P::Aes128CmHmacSha1_80 => Profile::AesCm128HmacSha1_80,
                        _ => return None,
                    };
                    Srtp::new(profile, &k.remote_master_key, &k.remote_master_salt).ok()
                });
            }
            let wake = self
                .pc
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_millis(50));
            if armed != Some(wake) {
                sleep.as_mut().reset(tokio::time::Instant::from_std(wake));
                armed = Some(wake);
            }
            let socket = &self.socket;
            // Media is taken inside the receive: only what the connection must see (STUN, DTLS,
            // RTCP, media before the keys) comes out of it.
            let other = async {
                loop {
                    socket.readable().await?;
                    // Fewer than asked for: the queue was empty. Saying `WouldBlock` then clears
                    // the readiness seen before the receive (a datagram that came in since keeps
                    // its own), which saves the receive that would only say so.
                    let mut n = 0;
                    let got = socket.try_io(tokio::io::Interest::READABLE, || {
                        n = batch.recv(socket.as_raw_fd())?;
                        if n < BATCH {
                            return Err(std::io::ErrorKind::WouldBlock.into());
                        }
                        Ok(())
                    });
                    match got {
                        Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => return Err(e),
                        _ => {}
                    }
                    let mut others = Vec::new();
                    for i in 0..n {
                        let (len, from) = batch.got[i];
                        let buf = &mut batch.bufs[i];
                        if !media.take(buf, len, tally) {
                            others.push((BytesMut::from(&buf[..len]), from));
                        }
                    }
                    if !others.is_empty() {
                        return Ok::<_, std::io::Error>(others);
                    }
                    // A socket that stays full must not keep the runtime's thread.
                    tokio::task::consume_budget().await;
                }
            };
            tokio::select! {
                () = &mut stop => break 'run RunEnd::Stopped,
                () = &mut sleep => {
                    armed = None;
                    let _ = self.pc.handle_timeout(Instant::now());
                }
                r = other => {
                    let Ok(others) = r else { break 'run RunEnd::Failed };
                    for (message, from) in others {
                        self.feed(from, message);
                    }
                }
            }
        };
        media.add_to(tally);
        end
    }
}

/// Datagrams taken per receive: a frame's packets come in a burst.
const BATCH: usize = 4;

/// One `recvmmsg`'s buffers.
struct Batch {
    bufs: Vec<[u8; 2048]>,
    /// Each received datagram's length and source.
    got: [(usize, SocketAddr); BATCH],
}

impl Batch {
    fn new() -> Self {
        Self {
            bufs: vec![[0u8; 2048]; BATCH],
            got: [(0, SocketAddr::from(([0, 0, 0, 0], 0))); BATCH],
        }
    }

    /// Up to [`BATCH`] datagrams from `fd` without blocking; `WouldBlock` if none.
    fn recv(&mut self, fd: std::os::fd::RawFd) -> std::io::Result<usize> {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..BATCH {
            iovs[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            iovs[i].iov_len = self.bufs[i].len();
            hdrs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            hdrs[i].msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at this function's live arrays and `self.bufs`.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            let from = sockaddr(&addrs[i]).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "unknown address family")
            })?;
            self.got[i] = (hdrs[i].msg_len as usize, from);
        }
        Ok(n)
    }
}

/// An IPv4 or IPv6 socket address from the kernel.
fn sockaddr(a: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match a.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a `sockaddr_in`.
            let a = unsafe { &*(a as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a `sockaddr_in6`.
            let a = unsafe { &*(a as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            let port = u16::from_be(a.sin6_port);
            let v6 = std::net::SocketAddrV6::new(ip, port, a.sin6_flowinfo, a.sin6_scope_id);
            Some(SocketAddr::V6(v6))
        }
        _ => None,
    }
}

/// A decrypting viewer's media accounting ([`Viewer::run_decrypting`]).
#[derive(Default)]
struct MediaCount {
    /// The remote side's SRTP keys, once DTLS is done.
    srtp: Option<Srtp>,
    /// By SSRC: a viewer has two or three.
    streams: Vec<(u32, SeqCount)>,
    /// Not yet added to the shared tally.
    packets: u64,
    bytes: u64,
}

impl MediaCount {
    /// Authenticates, decrypts and counts `buf[..n]` if it is SRTP of this session; `false` for
    /// anything else (or anything before the keys), which the peer connection must see.
    fn take(&mut self, buf: &mut [u8], n: usize, tally: &RtpTally) -> bool {
        let (Some(s), Some(seq)) = (self.srtp.as_ref(), rtp_seq(&buf[..n])) else {
            return false;
        };
        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let at = match self.streams.iter().position(|(s, _)| *s == ssrc) {
            Some(at) => at,
            None => {
                self.streams.push((ssrc, SeqCount::default()));
                self.streams.len() - 1
            }
        };
        let st = &mut self.streams[at].1;
        let index = st.estimate.guess(seq);
        match s.unprotect_rtp(buf, n, index) {
            Ok((header, end)) => {
                st.first = if st.received == 0 {
                    index
                } else {
                    st.first.min(index)
                };
                st.highest = st.highest.max(index);
                st.received += 1;
                st.estimate.seen(index);
                self.packets += 1;
                self.bytes += (end - header) as u64;
                // Shared counters by the 32 packets: live enough for a benchmark's window,
                // without a contended add per packet.
                if self.packets == 32 {
                    tally.packets.fetch_add(self.packets, Ordering::Relaxed);
                    tally.bytes.fetch_add(self.bytes, Ordering::Relaxed);
                    (self.packets, self.bytes) = (0, 0);
                }
            }
            // A stream that never authenticated is someone else's (a session of an earlier
            // viewer on this port, still sending): not ours to count, as a browser drops an
            // unknown SSRC.
            Err(_) if st.received == 0 => {
                tally.foreign.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                tally.auth_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        true
    }

    /// Adds what is left, and every stream's loss, to `tally`.
    fn add_to(&self, tally: &RtpTally) {
        tally.packets.fetch_add(self.packets, Ordering::Relaxed);
        tally.bytes.fetch_add(self.bytes, Ordering::Relaxed);
        for (_, st) in self.streams.iter().filter(|(_, s)| s.received > 0) {
            let expected = st.highest - st.first + 1;
            tally.expected.fetch_add(expected, Ordering::Relaxed);
            tally
                .lost
                .fetch_add(expected.saturating_sub(st.received), Ordering::Relaxed);
        }
    }
}

/// Sets the receive buffer of `socket` to `bytes` (past `net.core.rmem_max` where the process
/// may: root).
fn receive_buffer(socket: &UdpSocket, bytes: Option<usize>) {
    let Some(bytes) = bytes else { return };
    let size = bytes.min(i32::MAX as usize) as libc::c_int;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
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
        if r == 0 {
            return;
        }
    }
}

/// The RTP sequence number of a (S)RTP datagram of a dynamic payload type; RTCP, STUN and DTLS
/// are `None`. (SRTP leaves the header in the clear.)
pub fn rtp_seq(d: &[u8]) -> Option<u16> {
    let pt = d.get(1)? & 0x7f;
    (d.len() >= 12 && d[0] >> 6 == 2 && (96..=127).contains(&pt))
        .then(|| u16::from_be_bytes([d[2], d[3]]))
}
