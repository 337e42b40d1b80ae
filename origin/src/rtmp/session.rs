//! The server side of one RTMP connection, sans-IO: bytes and `now` in; bytes to send, events
//! and a deadline out. Wraps rml_rtmp's [`Handshake`] and [`ServerSession`] and applies the
//! ingest policy: only `publish` on the app `live`, one publish per connection, bounded frames,
//! a handshake deadline and an idle (no media) deadline.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use super::chunks::{ChunkError, ChunkWatch};
use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeError, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionError, ServerSessionEvent, ServerSessionResult,
};

/// The only RTMP application publishers may connect to (`rtmp://host/live/<streamKey>`).
pub const INGEST_APP: &str = "live";

/// Largest message a peer may declare before its publish is accepted (`connect`,
/// `createStream`, `publish` and their kin are a few hundred bytes).
pub const MAX_MESSAGE_BEFORE_PUBLISH: usize = 64 * 1024;

/// Limits of one session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Time allowed from the first byte to the end of the handshake.
    pub handshake_timeout: Duration,
    /// Time allowed without media, and from the handshake to the start of publishing.
    pub idle_timeout: Duration,
    /// Largest accepted audio or video message body.
    pub max_frame_bytes: usize,
}

/// Why a session ended with an error. Every error is final: send what is queued and close.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("RTMP handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("RTMP handshake not completed within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("peer closed the connection during the RTMP handshake")]
    HandshakeAborted,
    #[error("RTMP protocol error: {0}")]
    Protocol(#[from] ServerSessionError),
    #[error("no media for {0:?}")]
    Idle(Duration),
    #[error("RTMP chunk stream refused: {0}")]
    Chunk(#[from] ChunkError),
    #[error("RTMP library panicked on malformed input")]
    Panicked,
    #[error("no publish request is waiting for an answer")]
    NoPendingPublish,
    #[error("the session is already closed")]
    Closed,
}

impl SessionError {
    /// True when the peer never completed the handshake (counted apart from other failures).
    pub fn is_handshake(&self) -> bool {
        matches!(
            self,
            SessionError::Handshake(_)
                | SessionError::HandshakeTimeout(_)
                | SessionError::HandshakeAborted
        )
    }
}

/// Why the session refused a request on its own (before asking the backend).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("RTMP app {app:?} is not {INGEST_APP:?}")]
    WrongApp { app: String },
    #[error("playback over RTMP is not supported")]
    PlayNotSupported,
    #[error("publish without a stream key")]
    MissingStreamKey,
    #[error("a connection may publish only one stream")]
    SecondPublish,
}

/// What the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The peer asks to publish; answer with [`RtmpSession::accept_publish`] or
    /// [`RtmpSession::reject_publish`]. The key has its `?query` removed.
    PublishRequested { stream_key: String },
    /// The session refused a request and queued the error response: flush, then close.
    Refused(Refusal),
    /// One video message body (an FLV video tag body) with its RTMP timestamp in ms.
    Video { timestamp_ms: u32, data: Bytes },
    /// One audio message body (an FLV audio tag body) with its RTMP timestamp in ms.
    Audio { timestamp_ms: u32, data: Bytes },
    /// The peer stopped publishing.
    PublishFinished,
}

enum Phase {
    Handshake(Box<Handshake>),
    Active(Box<ServerSession>),
    Closed,
}

/// One RTMP server connection.
pub struct RtmpSession {
    config: SessionConfig,
    phase: Phase,
    transmit: Vec<u8>,
    events: VecDeque<SessionEvent>,
    deadline: Instant,
    pending_publish: Option<u32>,
    publishing: bool,
    received_any: bool,
    chunks: ChunkWatch,
}

impl RtmpSession {
    /// A session for a connection accepted at `now`; the handshake deadline starts now.
    pub fn new(config: SessionConfig, now: Instant) -> Self {
        let deadline = now + config.handshake_timeout;
        Self {
            config,
            phase: Phase::Handshake(Box::new(Handshake::new(PeerType::Server))),
            transmit: Vec::new(),
            events: VecDeque::new(),
            deadline,
            pending_publish: None,
            publishing: false,
            received_any: false,
            chunks: ChunkWatch::default(),
        }
    }

    /// Feeds bytes read from the peer.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) -> Result<(), SessionError> {
        let result = self.input(now, bytes);
        if result.is_err() {
            self.phase = Phase::Closed;
        }
        result
    }

    fn input(&mut self, now: Instant, bytes: &[u8]) -> Result<(), SessionError> {
        self.received_any |= !bytes.is_empty();
        match &mut self.phase {
            Phase::Handshake(handshake) => match guard(|| handshake.process_bytes(bytes))? {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    self.transmit.extend_from_slice(&response_bytes);
                    Ok(())
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    self.transmit.extend_from_slice(&response_bytes);
                    self.start_session(now, &remaining_bytes)
                }
            },
            Phase::Active(session) => {
                // Declared lengths are checked before rml_rtmp buffers anything of a message:
                // small until a stream key is accepted, then the frame bound.
                let max = if self.publishing {
                    self.config.max_frame_bytes
                } else {
                    MAX_MESSAGE_BEFORE_PUBLISH
                };
                self.chunks.feed(bytes, max)?;
                let results = guard(|| session.handle_input(bytes))?;
                self.absorb(now, results)
            }
            Phase::Closed => Err(SessionError::Closed),
        }
    }

    fn start_session(&mut self, now: Instant, remaining: &[u8]) -> Result<(), SessionError> {
        let (session, results) = ServerSession::new(ServerSessionConfig::new())?;
        self.phase = Phase::Active(Box::new(session));
        // The peer must get to `publish` within the idle timeout; bytes alone do not extend it.
        self.deadline = now + self.config.idle_timeout;
        self.absorb(now, results)?;
        if remaining.is_empty() {
            return Ok(());
        }
        self.input(now, remaining)
    }

    /// Tells the session the time; fails once the handshake or idle deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        if now < self.deadline {
            return Ok(());
        }
        let error = match self.phase {
            Phase::Handshake(_) => SessionError::HandshakeTimeout(self.config.handshake_timeout),
            Phase::Active(_) => SessionError::Idle(self.config.idle_timeout),
            Phase::Closed => SessionError::Closed,
        };
        self.phase = Phase::Closed;
        Err(error)
    }

    /// The peer closed its side. Closing mid-handshake is an error (a port probe that sends
    /// nothing is not).
    pub fn handle_eof(&mut self) -> Result<(), SessionError> {
        let aborted = matches!(self.phase, Phase::Handshake(_)) && self.received_any;
        self.phase = Phase::Closed;
        if aborted {
            return Err(SessionError::HandshakeAborted);
        }
        Ok(())
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Instant {
        self.deadline
    }

    /// Bytes to send to the peer, in order, if any are queued.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.transmit.is_empty()).then(|| std::mem::take(&mut self.transmit))
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// True between an accepted publish and its end.
    pub fn is_publishing(&self) -> bool {
        self.publishing
    }

    /// Accepts the pending publish request; media events follow.
    pub fn accept_publish(&mut self, now: Instant) -> Result<(), SessionError> {
        let request = self
            .pending_publish
            .take()
            .ok_or(SessionError::NoPendingPublish)?;
        let Phase::Active(session) = &mut self.phase else {
            return Err(SessionError::Closed);
        };
        let results = guard(|| session.accept_request(request))?;
        self.publishing = true;
        self.deadline = now + self.config.idle_timeout;
        self.absorb(now, results)
    }

    /// Refuses the pending publish request; the peer gets an error status with `description`.
    pub fn reject_publish(&mut self, description: &str) -> Result<(), SessionError> {
        let request = self
            .pending_publish
            .take()
            .ok_or(SessionError::NoPendingPublish)?;
        self.reject(request, "NetStream.Publish.BadName", description)
    }

    fn reject(&mut self, request: u32, code: &str, description: &str) -> Result<(), SessionError> {
        let Phase::Active(session) = &mut self.phase else {
            return Err(SessionError::Closed);
        };
        let results = guard(|| session.reject_request(request, code, description))?;
        self.queue_packets(results);
        Ok(())
    }

    fn queue_packets(&mut self, results: Vec<ServerSessionResult>) {
        for result in results {
            if let ServerSessionResult::OutboundResponse(packet) = result {
                self.transmit.extend_from_slice(&packet.bytes);
            }
        }
    }

    fn absorb(
        &mut self,
        now: Instant,
        results: Vec<ServerSessionResult>,
    ) -> Result<(), SessionError> {
        for result in results {
            match result {
                ServerSessionResult::OutboundResponse(packet) => {
                    self.transmit.extend_from_slice(&packet.bytes)
                }
                ServerSessionResult::RaisedEvent(event) => self.on_event(now, event)?,
                ServerSessionResult::UnhandleableMessageReceived(payload) => {
                    tracing::trace!(type_id = payload.type_id, "unhandled RTMP message");
                }
            }
        }
        Ok(())
    }

    fn on_event(&mut self, now: Instant, event: ServerSessionEvent) -> Result<(), SessionError> {
        match event {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => self.on_connect(now, request_id, app_name),
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                stream_key,
                ..
            } => self.on_publish(request_id, &stream_key),
            ServerSessionEvent::PlayStreamRequested { request_id, .. } => self.refuse(
                request_id,
                "NetStream.Play.Failed",
                Refusal::PlayNotSupported,
            ),
            ServerSessionEvent::PublishStreamFinished { .. } if self.publishing => {
                self.publishing = false;
                self.events.push_back(SessionEvent::PublishFinished);
                Ok(())
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => self.on_media(now, true, timestamp.value, data),
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => self.on_media(now, false, timestamp.value, data),
            _ => Ok(()),
        }
    }

    fn on_connect(&mut self, now: Instant, request: u32, app: String) -> Result<(), SessionError> {
        let bare = app.split_once('?').map_or(app.as_str(), |(a, _)| a);
        if bare.trim_end_matches('/') != INGEST_APP {
            let code = "NetConnection.Connect.Rejected";
            return self.refuse(request, code, Refusal::WrongApp { app });
        }
        let Phase::Active(session) = &mut self.phase else {
            return Err(SessionError::Closed);
        };
        let results = guard(|| session.accept_request(request))?;
        self.absorb(now, results)
    }

    fn on_publish(&mut self, request: u32, stream_key: &str) -> Result<(), SessionError> {
        let code = "NetStream.Publish.BadName";
        if self.publishing || self.pending_publish.is_some() {
            return self.refuse(request, code, Refusal::SecondPublish);
        }
        let key = stream_key.split_once('?').map_or(stream_key, |(k, _)| k);
        if key.is_empty() {
            return self.refuse(request, code, Refusal::MissingStreamKey);
        }
        self.pending_publish = Some(request);
        self.events.push_back(SessionEvent::PublishRequested {
            stream_key: key.to_owned(),
        });
        Ok(())
    }

    fn refuse(&mut self, request: u32, code: &str, why: Refusal) -> Result<(), SessionError> {
        self.reject(request, code, &why.to_string())?;
        self.events.push_back(SessionEvent::Refused(why));
        Ok(())
    }

    fn on_media(
        &mut self,
        now: Instant,
        video: bool,
        timestamp_ms: u32,
        data: Bytes,
    ) -> Result<(), SessionError> {
        if !self.publishing {
            return Ok(());
        }
        // Larger messages were refused by their declared length (`ChunkWatch`).
        debug_assert!(data.len() <= self.config.max_frame_bytes);
        self.deadline = now + self.config.idle_timeout;
        self.events.push_back(if video {
            SessionEvent::Video { timestamp_ms, data }
        } else {
            SessionEvent::Audio { timestamp_ms, data }
        });
        Ok(())
    }
}

/// Runs one call into rml_rtmp, turning a panic on malformed input (it has arithmetic that
/// overflows on some chunk sequences) into an error that closes only this connection.
fn guard<T, E>(f: impl FnOnce() -> Result<T, E>) -> Result<T, SessionError>
where
    SessionError: From<E>,
{
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result.map_err(SessionError::from),
        Err(_) => Err(SessionError::Panicked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rml_rtmp::sessions::{
        ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
        PublishRequestType,
    };
    use rml_rtmp::time::RtmpTimestamp;

    fn config() -> SessionConfig {
        SessionConfig {
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            max_frame_bytes: 1024,
        }
    }

    /// A real rml_rtmp client wired to a server session in memory.
    struct Harness {
        now: Instant,
        server: RtmpSession,
        client: ClientSession,
        client_events: Vec<ClientSessionEvent>,
        server_events: Vec<SessionEvent>,
    }

    impl Harness {
        /// Handshakes and creates both sessions.
        fn new() -> Self {
            let now = Instant::now();
            let mut server = RtmpSession::new(config(), now);
            let mut hs = Handshake::new(PeerType::Client);
            let mut to_server = hs.generate_outbound_p0_and_p1().unwrap();
            let remaining = loop {
                server.handle_input(now, &to_server).unwrap();
                let reply = server.poll_transmit().unwrap_or_default();
                match hs.process_bytes(&reply).unwrap() {
                    HandshakeProcessResult::InProgress { response_bytes } => {
                        to_server = response_bytes
                    }
                    HandshakeProcessResult::Completed {
                        response_bytes,
                        remaining_bytes,
                    } => {
                        server.handle_input(now, &response_bytes).unwrap();
                        break remaining_bytes;
                    }
                }
            };
            let (client, _) = ClientSession::new(ClientSessionConfig::new()).unwrap();
            let mut h = Self {
                now,
                server,
                client,
                client_events: Vec::new(),
                server_events: Vec::new(),
            };
            h.deliver(&remaining);
            h.pump();
            h
        }

        fn deliver(&mut self, bytes: &[u8]) {
            let results = self.client.handle_input(bytes).unwrap();
            self.client_results(results);
        }

        fn client_results(&mut self, results: Vec<ClientSessionResult>) {
            for r in results {
                match r {
                    ClientSessionResult::OutboundResponse(p) => {
                        self.server.handle_input(self.now, &p.bytes).unwrap()
                    }
                    ClientSessionResult::RaisedEvent(e) => self.client_events.push(e),
                    ClientSessionResult::UnhandleableMessageReceived(_) => {}
                }
            }
        }

        fn send(&mut self, r: ClientSessionResult) {
            self.client_results(vec![r]);
            self.pump();
        }

        /// Moves bytes both ways until neither side has anything to say.
        fn pump(&mut self) {
            while let Some(bytes) = self.server.poll_transmit() {
                self.deliver(&bytes);
            }
            while let Some(e) = self.server.poll_event() {
                self.server_events.push(e);
            }
        }

        fn connect(&mut self, app: &str) {
            let r = self.client.request_connection(app.into()).unwrap();
            self.send(r);
        }

        fn request_publish(&mut self, key: &str) {
            self.connect("live");
            let r = self
                .client
                .request_publishing(key.into(), PublishRequestType::Live)
                .unwrap();
            self.send(r);
        }

        fn publish(&mut self, key: &str) {
            self.request_publish(key);
            self.server.accept_publish(self.now).unwrap();
            self.pump();
            assert!(self
                .client_events
                .contains(&ClientSessionEvent::PublishRequestAccepted));
            self.server_events.clear();
        }
    }

    #[test]
    fn connect_publish_media_and_finish() {
        let mut h = Harness::new();
        h.request_publish("key1?token=abc");
        assert!(h
            .client_events
            .contains(&ClientSessionEvent::ConnectionRequestAccepted));
        assert_eq!(
            h.server_events,
            vec![SessionEvent::PublishRequested {
                stream_key: "key1".into()
            }]
        );
        h.server.accept_publish(h.now).unwrap();
        h.pump();
        assert!(h.server.is_publishing());
        h.server_events.clear();
        let video = Bytes::from_static(&[0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65]);
        let r = h
            .client
            .publish_video_data(video.clone(), RtmpTimestamp::new(40), false)
            .unwrap();
        h.send(r);
        let audio = Bytes::from_static(&[0xaf, 1, 0x21]);
        let r = h
            .client
            .publish_audio_data(audio.clone(), RtmpTimestamp::new(42), false)
            .unwrap();
        h.send(r);
        let r = h.client.stop_publishing().unwrap();
        h.client_results(r);
        h.pump();
        assert_eq!(
            h.server_events,
            vec![
                SessionEvent::Video {
                    timestamp_ms: 40,
                    data: video
                },
                SessionEvent::Audio {
                    timestamp_ms: 42,
                    data: audio
                },
                SessionEvent::PublishFinished,
            ]
        );
    }

    #[test]
    fn rejected_publish_sends_the_reason_to_the_client() {
        let mut h = Harness::new();
        h.request_publish("nope");
        h.server
            .reject_publish("unknown or revoked stream key")
            .unwrap();
        h.pump();
        assert!(!h.server.is_publishing());
        let told = h.client_events.iter().any(|e| {
            matches!(e, ClientSessionEvent::UnknownTransactionResultReceived { additional_values, .. }
                if format!("{additional_values:?}").contains("unknown or revoked stream key"))
        });
        assert!(told, "client events: {:?}", h.client_events);
    }

    #[test]
    fn other_apps_are_refused() {
        let mut h = Harness::new();
        h.connect("vod");
        assert_eq!(
            h.server_events,
            vec![SessionEvent::Refused(Refusal::WrongApp {
                app: "vod".into()
            })]
        );
        assert!(h.client_events.iter().any(|e| matches!(
            e,
            ClientSessionEvent::ConnectionRequestRejected { description } if description.contains("vod")
        )));
    }

    #[test]
    fn play_requests_are_refused() {
        let mut h = Harness::new();
        h.connect("live/");
        let r = h.client.request_playback("key1".into()).unwrap();
        h.send(r);
        assert_eq!(
            h.server_events,
            vec![SessionEvent::Refused(Refusal::PlayNotSupported)]
        );
    }

    #[test]
    fn empty_stream_key_is_refused() {
        let mut h = Harness::new();
        h.request_publish("?only=query");
        assert_eq!(
            h.server_events,
            vec![SessionEvent::Refused(Refusal::MissingStreamKey)]
        );
    }

    #[test]
    fn oversized_frame_closes_the_session() {
        let mut h = Harness::new();
        h.publish("key1");
        let big = Bytes::from(vec![0x17; 2048]);
        let r = h
            .client
            .publish_video_data(big, RtmpTimestamp::new(0), false)
            .unwrap();
        let ClientSessionResult::OutboundResponse(p) = r else {
            panic!("expected a packet");
        };
        let e = h.server.handle_input(h.now, &p.bytes).unwrap_err();
        assert!(matches!(
            e,
            SessionError::Chunk(ChunkError::TooLarge {
                len: 2048,
                max: 1024
            })
        ));
        assert!(matches!(
            h.server.handle_input(h.now, &[]),
            Err(SessionError::Closed)
        ));
    }

    #[test]
    fn a_large_declaration_before_publish_is_refused_by_its_header() {
        let mut h = Harness::new();
        h.connect("live");
        // A type-0 chunk header on stream 3 declaring a 16 MiB video message; no payload.
        let header = [0x03, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0];
        let e = h.server.handle_input(h.now, &header).unwrap_err();
        assert!(matches!(
            e,
            SessionError::Chunk(ChunkError::TooLarge {
                len: 0xff_ffff,
                max: MAX_MESSAGE_BEFORE_PUBLISH
            })
        ));
    }

    #[test]
    fn idle_deadline_moves_with_media_only() {
        let mut h = Harness::new();
        h.publish("key1");
        let t0 = h.now;
        assert_eq!(h.server.poll_timeout(), t0 + Duration::from_secs(10));
        h.now = t0 + Duration::from_secs(9);
        let r = h.client.send_ping_request().map(|(p, _)| p).unwrap();
        h.server.handle_input(h.now, &r.bytes).unwrap();
        assert_eq!(h.server.poll_timeout(), t0 + Duration::from_secs(10));
        let audio = Bytes::from_static(&[0xaf, 1, 0x21]);
        let r = h
            .client
            .publish_audio_data(audio, RtmpTimestamp::new(0), false)
            .unwrap();
        h.send(r);
        assert_eq!(h.server.poll_timeout(), t0 + Duration::from_secs(19));
        assert!(h
            .server
            .handle_timeout(t0 + Duration::from_secs(18))
            .is_ok());
        let e = h
            .server
            .handle_timeout(t0 + Duration::from_secs(19))
            .unwrap_err();
        assert!(matches!(e, SessionError::Idle(_)) && !e.is_handshake());
    }

    #[test]
    fn connected_but_never_publishing_times_out() {
        let mut h = Harness::new();
        h.connect("live");
        let e = h
            .server
            .handle_timeout(h.now + Duration::from_secs(10))
            .unwrap_err();
        assert!(matches!(e, SessionError::Idle(_)));
    }

    #[test]
    fn half_handshake_times_out() {
        let now = Instant::now();
        let mut s = RtmpSession::new(config(), now);
        s.handle_input(now, &[3, 0, 0, 0]).unwrap();
        assert!(s.handle_timeout(now + Duration::from_secs(4)).is_ok());
        let e = s.handle_timeout(now + Duration::from_secs(5)).unwrap_err();
        assert!(e.is_handshake(), "{e}");
    }

    #[test]
    fn eof_mid_handshake_is_a_handshake_failure_but_a_bare_probe_is_not() {
        let now = Instant::now();
        let mut s = RtmpSession::new(config(), now);
        s.handle_input(now, &[3; 10]).unwrap();
        assert!(s.handle_eof().unwrap_err().is_handshake());
        let mut probe = RtmpSession::new(config(), now);
        assert!(probe.handle_eof().is_ok());
        let mut h = Harness::new();
        h.publish("key1");
        assert!(h.server.handle_eof().is_ok());
    }

    #[test]
    fn garbage_instead_of_handshake_is_an_error() {
        let now = Instant::now();
        let mut s = RtmpSession::new(config(), now);
        let e = s
            .handle_input(now, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap_err();
        assert!(e.is_handshake(), "{e}");
    }

    #[test]
    fn chunk_length_underflow_in_rml_rtmp_is_refused_before_it() {
        let mut h = Harness::new();
        // A 300-byte message on chunk stream 3, cut after its first 128-byte chunk...
        let mut chunks = vec![0x03, 0, 0, 0, 0x00, 0x01, 0x2c, 0x09, 1, 0, 0, 0];
        chunks.extend([0u8; 128]);
        // ...then a type-1 header on the same chunk stream claiming a 10-byte message.
        chunks.extend([0x43, 0, 0, 0, 0, 0, 10, 0x09]);
        chunks.extend([0u8; 10]);
        // rml_rtmp 0.8 computes `10 - 128` in usize here and panics; the chunk watch refuses
        // the header first (and `guard` would contain the panic if it did not).
        let result = h.server.handle_input(h.now, &chunks);
        assert!(
            matches!(result, Err(SessionError::Chunk(ChunkError::Overrun))),
            "{result:?}"
        );
        assert!(matches!(
            h.server.handle_input(h.now, &[0]),
            Err(SessionError::Closed)
        ));
    }

    #[test]
    fn random_bytes_after_handshake_never_panic() {
        let mut seed = 0x0123_4567_89ab_cdefu64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..300 {
            let mut h = Harness::new();
            if round % 2 == 0 {
                h.publish("key1");
            }
            for _ in 0..20 {
                let len = (next() % 300) as usize;
                let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if h.server.handle_input(h.now, &bytes).is_err() {
                    break;
                }
                while h.server.poll_event().is_some() {}
            }
        }
    }
}
