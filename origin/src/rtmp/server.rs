//! The tokio driver: accepts connections under a global and a per-address cap (RTMP in clear, or
//! RTMPS: the same after a TLS handshake), and per connection moves bytes and time into an
//! [`RtmpSession`] and frames out to the room's [`Publisher`].

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use streamhub_media::node::surface::{ConnGuard, ConnLimiter};
use streamhub_media::node::tls::Acceptor;
use streamhub_shared::media::{CodecConfig, TrackInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use super::session::{RtmpSession, SessionError, SessionEvent};
use super::tracks::{TrackAssembler, TrackError, TrackEvent};
use super::{IngestBackend, RtmpConfig, RtmpStats};
use crate::rooms::Publisher;

const READ_BUFFER: usize = 64 * 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long a refused peer gets to read our error status before the socket is dropped.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// What the RTMP and RTMPS listeners of a node share: the backend, the limits, the counters and
/// the open connections (the caps count both listeners together).
#[derive(Clone)]
pub struct Ingest {
    pub backend: Arc<dyn IngestBackend>,
    pub config: Arc<RtmpConfig>,
    pub stats: Arc<RtmpStats>,
    pub connections: Arc<ConnLimiter>,
}

impl Ingest {
    /// A fresh set of counters and connections for `backend` under `config`.
    pub fn new(backend: Arc<dyn IngestBackend>, config: RtmpConfig) -> Self {
        Self {
            backend,
            config: Arc::new(config),
            stats: Arc::default(),
            connections: Arc::default(),
        }
    }
}

/// A stream a session runs on: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Accepts RTMP publishers on `listener` (RTMPS when `tls` is given) until `shutdown` fires, then
/// closes every connection and waits for their tasks to end.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Acceptor>,
    ingest: Ingest,
    shutdown: CancellationToken,
) {
    let mut admission = Admission {
        ingest,
        tls,
        shutdown: shutdown.clone(),
        tasks: JoinSet::new(),
        next_conn: 0,
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(joined) = admission.tasks.join_next(), if !admission.tasks.is_empty() => {
                log_join(joined)
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => admission.admit(stream, remote),
                Err(e) => {
                    warn!(error = %e, "rtmp accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener); // new peers are refused by the OS while we drain
    let mut tasks = admission.tasks;
    debug!(
        open = tasks.len(),
        "rtmp listener stopping, draining connections"
    );
    while let Some(joined) = tasks.join_next().await {
        log_join(joined);
    }
}

/// The listener's side of every connection: the shared ingest, the owned tasks.
struct Admission {
    ingest: Ingest,
    tls: Option<Acceptor>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    next_conn: u64,
}

impl Admission {
    /// Spawns the connection's task, or closes it at once when a cap is reached.
    fn admit(&mut self, stream: TcpStream, remote: SocketAddr) {
        let stats = &self.ingest.stats;
        let config = &self.ingest.config;
        stats.connections_total.fetch_add(1, Relaxed);
        let Some(guard) = self.ingest.connections.admit(
            remote.ip(),
            false,
            config.max_connections,
            config.max_per_address,
        ) else {
            stats.connections_refused.fetch_add(1, Relaxed);
            debug!(%remote, "rtmp connection refused: connection limit reached");
            return; // dropping the stream closes it
        };
        self.next_conn += 1;
        let span = tracing::info_span!(
            "rtmp",
            conn = self.next_conn,
            tls = self.tls.is_some(),
            %remote,
            app = tracing::field::Empty,
            room = tracing::field::Empty
        );
        let task = open(
            stream,
            remote,
            self.tls.clone(),
            self.ingest.clone(),
            self.shutdown.clone(),
            guard,
        );
        self.tasks.spawn(task.instrument(span));
    }
}

/// Runs one accepted connection: its TLS handshake first (within the RTMP handshake deadline)
/// on an RTMPS port, then the session.
async fn open(
    stream: TcpStream,
    remote: SocketAddr,
    tls: Option<Acceptor>,
    ingest: Ingest,
    shutdown: CancellationToken,
    _guard: ConnGuard,
) {
    // Only small control responses are written; do not delay them.
    let _ = stream.set_nodelay(true);
    let started = Instant::now();
    let stream: Box<dyn Io> = match tls {
        None => Box::new(stream),
        Some(acceptor) => {
            let limit = ingest.config.handshake_timeout;
            let handshake = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = tokio::time::timeout(limit, acceptor.accept(stream)) => r,
            };
            match handshake {
                Ok(Ok(Some(tls))) => Box::new(tls),
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    ingest.stats.handshake_failures.fetch_add(1, Relaxed);
                    debug!(error = %e, "rtmps TLS handshake failed");
                    return;
                }
                Err(_) => {
                    ingest.stats.handshake_failures.fetch_add(1, Relaxed);
                    debug!("rtmps TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let conn = Connection {
        // The RTMP handshake deadline counts from the TCP accept, TLS included.
        session: RtmpSession::new(ingest.config.session_config(), started),
        stream,
        remote,
        backend: ingest.backend.clone(),
        config: ingest.config.clone(),
        shutdown,
        stats: ingest.stats.clone(),
        publish: None,
    };
    conn.run().await;
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined {
        error!(error = %e, "rtmp connection task failed");
    }
}

/// How a connection ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    PeerClosed,
    PublishFinished,
    Refused,
    /// The room was taken over, its key revoked, or the node is stopping.
    Cancelled,
    Shutdown,
}

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("media refused: {0}")]
    Media(TrackError),
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    #[error("peer did not read our responses within {0:?}")]
    WriteTimeout(Duration),
}

/// A live publish on this connection.
struct Publish {
    publisher: Publisher,
    tracks: TrackAssembler,
    events: Vec<TrackEvent>,
    dropped_tags: u64,
}

/// One accepted connection: the socket, its session, and once accepted, its publish.
struct Connection {
    stream: Box<dyn Io>,
    remote: SocketAddr,
    session: RtmpSession,
    backend: Arc<dyn IngestBackend>,
    config: Arc<RtmpConfig>,
    shutdown: CancellationToken,
    stats: Arc<RtmpStats>,
    publish: Option<Publish>,
}

impl Connection {
    /// Runs the connection to its end and logs how it ended.
    async fn run(mut self) {
        let result = self.drive().await;
        if matches!(result, Ok(End::Refused)) {
            self.linger().await;
        }
        let publishing = self.publish.is_some();
        match result {
            Ok(end) if publishing => info!(?end, "rtmp publish ended"),
            Ok(end) => debug!(?end, "rtmp connection closed"),
            Err(ConnectionError::Session(e)) if e.is_handshake() => {
                self.stats.handshake_failures.fetch_add(1, Relaxed);
                debug!(error = %e, "rtmp handshake failed");
            }
            Err(e) if publishing => warn!(error = %e, "rtmp publish ended"),
            Err(e) => debug!(error = %e, "rtmp connection failed"),
        }
        if let Some(p) = self.publish.as_ref().filter(|p| p.dropped_tags > 0) {
            warn!(
                dropped = p.dropped_tags,
                "rtmp publisher sent malformed media tags"
            );
        }
    }

    async fn drive(&mut self) -> Result<End, ConnectionError> {
        let mut buf = vec![0u8; READ_BUFFER];
        loop {
            let end = self.handle_events().await?;
            self.flush().await?;
            if let Some(end) = end {
                return Ok(end);
            }
            let deadline = tokio::time::Instant::from_std(self.session.poll_timeout());
            let cancelled = publisher_cancelled(self.publish.as_ref().map(|p| &p.publisher));
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Ok(End::Shutdown),
                _ = cancelled => return Ok(End::Cancelled),
                _ = tokio::time::sleep_until(deadline) => {
                    self.session.handle_timeout(Instant::now())?;
                }
                read = self.stream.read(&mut buf) => {
                    let n = read?;
                    if n == 0 {
                        self.session.handle_eof()?;
                        return Ok(End::PeerClosed);
                    }
                    self.stats.bytes_in.fetch_add(n as u64, Relaxed);
                    self.session.handle_input(Instant::now(), &buf[..n])?;
                }
            }
        }
    }

    /// Acts on the session's events; returns how the connection must end, if it must.
    async fn handle_events(&mut self) -> Result<Option<End>, ConnectionError> {
        while let Some(event) = self.session.poll_event() {
            match event {
                SessionEvent::PublishRequested { stream_key } => {
                    if let Some(end) = self.start_publish(&stream_key).await? {
                        return Ok(Some(end));
                    }
                }
                SessionEvent::Refused(why) => {
                    self.stats.publish_refused.fetch_add(1, Relaxed);
                    warn!(remote = %self.remote, reason = %why, "rtmp request refused");
                    return Ok(Some(End::Refused));
                }
                SessionEvent::Video { timestamp_ms, data } => {
                    self.media(true, timestamp_ms, data)?
                }
                SessionEvent::Audio { timestamp_ms, data } => {
                    self.media(false, timestamp_ms, data)?
                }
                SessionEvent::PublishFinished => return Ok(Some(End::PublishFinished)),
            }
        }
        Ok(None)
    }

    async fn start_publish(&mut self, stream_key: &str) -> Result<Option<End>, ConnectionError> {
        let claim = self
            .backend
            .start_publish(stream_key.to_string(), self.remote);
        let result = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return Ok(Some(End::Shutdown)),
            r = claim => r,
        };
        match result {
            Ok(publisher) => {
                self.session.accept_publish(Instant::now())?;
                let span = tracing::Span::current();
                span.record("app", publisher.app().as_str());
                span.record("room", publisher.room().as_str());
                info!(key = %redact(stream_key), "rtmp publish started");
                self.publish = Some(Publish {
                    publisher,
                    tracks: TrackAssembler::new(),
                    events: Vec::new(),
                    dropped_tags: 0,
                });
                Ok(None)
            }
            Err(e) => {
                self.stats.publish_refused.fetch_add(1, Relaxed);
                warn!(remote = %self.remote, key = %redact(stream_key), reason = %e, "rtmp publish refused");
                self.session.reject_publish(&e.to_string())?;
                Ok(Some(End::Refused))
            }
        }
    }

    /// Turns one tag into track catalogs and frames for the room.
    fn media(
        &mut self,
        video: bool,
        timestamp_ms: u32,
        data: Bytes,
    ) -> Result<(), ConnectionError> {
        let Some(p) = self.publish.as_mut() else {
            return Ok(());
        };
        let result = if video {
            p.tracks.video(timestamp_ms, &data, &mut p.events)
        } else {
            p.tracks.audio(timestamp_ms, &data, &mut p.events)
        };
        for event in p.events.drain(..) {
            match event {
                TrackEvent::Tracks(tracks) => {
                    info!(tracks = %describe(&tracks), "rtmp tracks");
                    p.publisher.set_tracks(tracks);
                }
                TrackEvent::Frame(frame) => p.publisher.push(frame),
            }
        }
        match result {
            Err(e) if e.is_fatal() => Err(ConnectionError::Media(e)),
            Err(e) => {
                if p.dropped_tags == 0 {
                    warn!(error = %e, "rtmp dropping malformed media tag");
                }
                p.dropped_tags += 1;
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// Writes everything the session queued, giving up on a peer that stops reading.
    async fn flush(&mut self) -> Result<(), ConnectionError> {
        let limit = self.config.idle_timeout;
        while let Some(bytes) = self.session.poll_transmit() {
            tokio::select! {
                written = tokio::time::timeout(limit, self.stream.write_all(&bytes)) => {
                    written.map_err(|_| ConnectionError::WriteTimeout(limit))??;
                }
                _ = self.shutdown.cancelled() => return Ok(()),
            }
        }
        Ok(())
    }

    /// After a refusal: half-close and let the peer read the error status before the socket goes
    /// (closing with unread input would send a reset that can discard it).
    async fn linger(&mut self) {
        let mut sink = [0u8; 4096];
        let drain = async {
            self.stream.shutdown().await?;
            while self.stream.read(&mut sink).await? > 0 {}
            Ok::<_, io::Error>(())
        };
        tokio::select! {
            _ = tokio::time::timeout(REFUSAL_LINGER, drain) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }
}

async fn publisher_cancelled(publisher: Option<&Publisher>) {
    match publisher {
        Some(p) => p.cancelled().await,
        None => std::future::pending().await,
    }
}

/// A one-line catalog for logs, e.g. `h264 1280x720, aac 48000Hz 2ch`.
fn describe(tracks: &[TrackInfo]) -> String {
    let each = tracks.iter().map(|t| match &t.codec {
        CodecConfig::H264 { width, height, .. } => format!("h264 {width}x{height}"),
        CodecConfig::Aac {
            sample_rate,
            channels,
            ..
        } => format!("aac {sample_rate}Hz {channels}ch"),
        CodecConfig::Jpeg { width, height } => format!("jpeg {width}x{height}"),
        CodecConfig::Opus { channels } => format!("opus {channels}ch"),
    });
    each.collect::<Vec<_>>().join(", ")
}

/// Stream keys are credentials: log only enough to tell them apart.
fn redact(key: &str) -> String {
    let shown: String = key.chars().take(4).collect();
    format!("{shown}…")
}

#[cfg(test)]
mod tests {
    //! Against the real listener on loopback, driven by rml_rtmp's own client over TCP, with the
    //! real room registry behind a small backend.

    use super::*;
    use crate::admission::{Basis, Grant, Refusal};
    use crate::rooms::{Protocol, PublishClaim, RoomObserver, Rooms};
    use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
    use rml_rtmp::sessions::{
        ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
        PublishRequestType,
    };
    use rml_rtmp::time::RtmpTimestamp;
    use streamhub_shared::{AppName, RoomName};

    struct NoObserver;
    impl RoomObserver for NoObserver {
        fn room_started(&self, _: &AppName, _: &RoomName, _: &Publisher, _: bool) {}
    }

    /// Keys `key1` and `key2` map to one room of one ingress; anything else is unknown.
    struct Backend(Arc<Rooms>);
    impl IngestBackend for Backend {
        fn start_publish(
            &self,
            key: String,
            remote: SocketAddr,
        ) -> futures::future::BoxFuture<'_, Result<Publisher, Refusal>> {
            let result = if !matches!(key.as_str(), "key1" | "key2") {
                Err(Refusal::NotFound("unknown or revoked stream key".into()))
            } else {
                self.0.start_publish(PublishClaim {
                    grant: Grant {
                        app: AppName::new("demo").expect("app"),
                        room: RoomName::new("cam").expect("room"),
                        publisher: "ingress-1".into(),
                        basis: Basis::Ingress("ingress-1".into()),
                    },
                    protocol: Protocol::Rtmp,
                    remote,
                    epoch: 1,
                    claimed_at_ms: crate::credentials::unix_now_ms(),
                })
            };
            Box::pin(std::future::ready(result))
        }
    }

    struct Server {
        addr: SocketAddr,
        rooms: Arc<Rooms>,
        stats: Arc<RtmpStats>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start(config: RtmpConfig) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let rooms = Rooms::new(Arc::new(NoObserver), Default::default());
        let shutdown = CancellationToken::new();
        let ingest = Ingest::new(Arc::new(Backend(rooms.clone())), config);
        let stats = ingest.stats.clone();
        let task = tokio::spawn(serve(listener, None, ingest, shutdown.clone()));
        Server {
            addr,
            rooms,
            stats,
            shutdown,
            task,
        }
    }

    fn short() -> RtmpConfig {
        RtmpConfig {
            handshake_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(500),
            ..RtmpConfig::default()
        }
    }

    const DEADLINE: Duration = Duration::from_secs(5);

    /// Polls `cond` until it holds or the deadline passes.
    async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + DEADLINE;
        while Instant::now() < end {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cond()
    }

    /// True if the server closes `stream` within the deadline (EOF or reset).
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 4096];
        let read_to_end = async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(DEADLINE, read_to_end).await.is_ok()
    }

    struct Client {
        stream: TcpStream,
        session: ClientSession,
        events: Vec<ClientSessionEvent>,
    }

    impl Client {
        async fn handshake(addr: SocketAddr) -> Client {
            Self::handshake_from("127.0.0.1", addr).await
        }

        async fn handshake_from(local: &str, addr: SocketAddr) -> Client {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind(SocketAddr::new(local.parse().unwrap(), 0))
                .unwrap();
            let mut stream = socket.connect(addr).await.unwrap();
            let mut hs = Handshake::new(PeerType::Client);
            let p0p1 = hs.generate_outbound_p0_and_p1().unwrap();
            stream.write_all(&p0p1).await.unwrap();
            let mut buf = vec![0u8; 8192];
            let remaining = loop {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed during handshake");
                match hs.process_bytes(&buf[..n]).unwrap() {
                    HandshakeProcessResult::InProgress { response_bytes } => {
                        stream.write_all(&response_bytes).await.unwrap()
                    }
                    HandshakeProcessResult::Completed {
                        response_bytes,
                        remaining_bytes,
                    } => {
                        stream.write_all(&response_bytes).await.unwrap();
                        break remaining_bytes;
                    }
                }
            };
            let (session, _) = ClientSession::new(ClientSessionConfig::new()).unwrap();
            let mut client = Client {
                stream,
                session,
                events: Vec::new(),
            };
            client.input(&remaining).await;
            client
        }

        async fn input(&mut self, bytes: &[u8]) {
            let results = self.session.handle_input(bytes).unwrap();
            for r in results {
                self.send(r).await;
            }
        }

        async fn send(&mut self, r: ClientSessionResult) {
            match r {
                ClientSessionResult::OutboundResponse(p) => {
                    self.stream.write_all(&p.bytes).await.unwrap()
                }
                ClientSessionResult::RaisedEvent(e) => self.events.push(e),
                ClientSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }

        /// Reads until an event matches; false on close or deadline.
        async fn wait_for(&mut self, pred: impl Fn(&ClientSessionEvent) -> bool) -> bool {
            let mut buf = vec![0u8; 8192];
            let end = Instant::now() + DEADLINE;
            while !self.events.iter().any(&pred) {
                let left = end.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, self.stream.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => self.input(&buf[..n]).await,
                    _ => return false,
                }
            }
            true
        }

        async fn request_publish(addr: SocketAddr, key: &str) -> Client {
            let mut c = Client::handshake(addr).await;
            let r = c.session.request_connection("live".into()).unwrap();
            c.send(r).await;
            assert!(
                c.wait_for(|e| *e == ClientSessionEvent::ConnectionRequestAccepted)
                    .await
            );
            let r = c
                .session
                .request_publishing(key.into(), PublishRequestType::Live)
                .unwrap();
            c.send(r).await;
            c
        }

        async fn publish(addr: SocketAddr, key: &str) -> Client {
            let mut c = Client::request_publish(addr, key).await;
            assert!(
                c.wait_for(|e| *e == ClientSessionEvent::PublishRequestAccepted)
                    .await
            );
            c
        }

        async fn audio(&mut self, body: &'static [u8], ms: u32) {
            let r = self
                .session
                .publish_audio_data(Bytes::from_static(body), RtmpTimestamp::new(ms), false)
                .unwrap();
            self.send(r).await;
        }
    }

    #[tokio::test]
    async fn published_audio_reaches_the_room() {
        let server = start(RtmpConfig::default()).await;
        let mut c = Client::publish(server.addr, "key1").await;
        let live = server.rooms.list(None);
        assert_eq!(live.len(), 1);
        c.audio(&[0xaf, 0, 0x12, 0x10], 0).await;
        c.audio(&[0xaf, 1, 0x21, 0x10, 0x04], 0).await;
        assert!(
            eventually(|| {
                let rooms = server.rooms.list(None);
                // The AAC track and its transcoded Opus companion (for WebRTC viewers).
                rooms.first().is_some_and(|r| {
                    r.bytes_in == 3 && r.tracks.len() == 2 && r.tracks[1].codec.name() == "opus"
                })
            })
            .await
        );
        drop(c);
        assert!(eventually(|| server.rooms.list(None).is_empty()).await);
    }

    #[tokio::test]
    async fn unknown_key_is_refused_with_a_reason_and_closed() {
        let server = start(RtmpConfig::default()).await;
        let mut c = Client::request_publish(server.addr, "stolen").await;
        let told = c
            .wait_for(|e| format!("{e:?}").contains("unknown or revoked stream key"))
            .await;
        assert!(told, "{:?}", c.events);
        assert!(closed(&mut c.stream).await);
        assert_eq!(server.stats.publish_refused.load(Relaxed), 1);
        assert!(server.rooms.list(None).is_empty());
    }

    #[tokio::test]
    async fn takeover_closes_the_previous_publisher() {
        let server = start(RtmpConfig::default()).await;
        let mut first = Client::publish(server.addr, "key1").await;
        let _second = Client::publish(server.addr, "key2").await;
        assert!(closed(&mut first.stream).await);
        assert_eq!(
            server.rooms.list(None).len(),
            1,
            "the new session holds the room"
        );
    }

    #[tokio::test]
    async fn stalled_publisher_is_closed_and_its_room_ends() {
        let server = start(short()).await;
        let mut c = Client::publish(server.addr, "key1").await;
        assert_eq!(server.rooms.list(None).len(), 1);
        assert!(closed(&mut c.stream).await);
        assert!(eventually(|| server.rooms.list(None).is_empty()).await);
    }

    #[tokio::test]
    async fn bad_handshakes_are_closed_and_counted_without_harming_others() {
        // Short handshakes, but the good publisher (silent until the bad ones are dealt with)
        // must not reach its idle timeout on a loaded machine: that is another test.
        let server = start(RtmpConfig {
            idle_timeout: Duration::from_secs(30),
            ..short()
        })
        .await;
        let mut good = Client::publish(server.addr, "key1").await;
        let mut garbage = TcpStream::connect(server.addr).await.unwrap();
        garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut half = TcpStream::connect(server.addr).await.unwrap();
        half.write_all(&[3; 100]).await.unwrap();
        let mut quitter = TcpStream::connect(server.addr).await.unwrap();
        quitter.write_all(&[3; 100]).await.unwrap();
        drop(quitter);
        assert!(closed(&mut garbage).await);
        assert!(closed(&mut half).await, "handshake timeout");
        assert!(eventually(|| server.stats.handshake_failures.load(Relaxed) == 3).await);
        good.audio(&[0xaf, 0, 0x12, 0x10], 0).await;
        good.audio(&[0xaf, 1, 0x21], 0).await;
        assert!(
            eventually(|| server
                .rooms
                .list(None)
                .first()
                .is_some_and(|r| r.bytes_in == 1))
            .await
        );
    }

    #[tokio::test]
    async fn connections_over_the_bound_are_closed_at_once() {
        let config = RtmpConfig {
            max_connections: 1,
            ..RtmpConfig::default()
        };
        let server = start(config).await;
        let _held = Client::handshake(server.addr).await;
        let mut over = TcpStream::connect(server.addr).await.unwrap();
        assert!(closed(&mut over).await);
        assert_eq!(server.stats.connections_refused.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn one_address_cannot_take_every_connection() {
        let server = start(RtmpConfig {
            max_per_address: 2,
            ..RtmpConfig::default()
        })
        .await;
        let _a = TcpStream::connect(server.addr).await.unwrap();
        let _b = TcpStream::connect(server.addr).await.unwrap();
        let mut over = TcpStream::connect(server.addr).await.unwrap();
        assert!(closed(&mut over).await);
        assert_eq!(server.stats.connections_refused.load(Relaxed), 1);
        // Another address still gets in and publishes (the listener is on 127.0.0.1; connect
        // from 127.0.0.2).
        let mut c = Client::handshake_from("127.0.0.2", server.addr).await;
        let r = c.session.request_connection("live".into()).unwrap();
        c.send(r).await;
        assert!(
            c.wait_for(|e| *e == ClientSessionEvent::ConnectionRequestAccepted)
                .await
        );
    }

    #[tokio::test]
    async fn shutdown_closes_connections_and_drains() {
        let server = start(RtmpConfig::default()).await;
        let mut c = Client::publish(server.addr, "key1").await;
        server.shutdown.cancel();
        tokio::time::timeout(DEADLINE, server.task)
            .await
            .expect("serve returns")
            .unwrap();
        assert!(closed(&mut c.stream).await);
        assert!(server.rooms.list(None).is_empty());
    }
}
