//! [`Endpoint`]: the node's one QUIC endpoint, server and client on one UDP socket, carrying
//! request/response RPCs (one bidirectional stream each) dispatched by kind to [`RpcService`]s.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::error::{RemoteError, RpcError, TransportError};
use super::frame::{self, Status, MAX_BULK_REQUEST, REQUEST_HEADER_LEN, RESPONSE_HEADER_LEN};
use super::kinds::{callers, PeerRole};
use super::pki::{peer_cert, NodeIdentity};
use super::pool::{Dial, Lookup, Pool};
use super::tls::{self, Revoked};

/// Incoming connections accepted at once; more are refused (a cluster has few nodes).
const MAX_CONNECTIONS: usize = 1024;
/// How long one dial (UDP + TLS handshake) may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a peer may take to send a whole request once it opened the stream.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Application error code of a stream reset by the server (bad frame, shutdown).
const STREAM_ERROR: u32 = 1;
/// Application close code of a connection whose peer's certificate was revoked.
const REVOKED: u32 = 2;
/// The close reason sent with [`REVOKED`].
const REVOKED_REASON: &[u8] = b"certificate revoked: the node was removed from the cluster";

/// The authenticated peer of an incoming RPC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The peer's node name, from its verified certificate.
    pub name: String,
    /// The peer's role, from its verified certificate.
    pub role: PeerRole,
    /// The fingerprint of the peer's certificate (see `pki::cert_fingerprint`).
    pub fingerprint: String,
    /// The peer's UDP address.
    pub addr: SocketAddr,
}

/// A handler of one RPC kind.
pub trait RpcService: Send + Sync + 'static {
    /// Answers one request from `peer`. An `Err` reaches the caller as `RpcError::Remote`.
    fn handle(&self, peer: PeerInfo, body: Bytes)
        -> BoxFuture<'static, Result<Bytes, RemoteError>>;

    /// The largest request body this service accepts; bigger requests are refused with the
    /// remote error `frame_too_large` before anything is allocated.
    fn max_request_len(&self) -> usize {
        frame::DEFAULT_MAX_REQUEST
    }
}

/// An [`RpcService`] from an async closure.
pub struct ServiceFn<F> {
    f: F,
    max_request_len: usize,
}

/// Wraps an async closure as an [`RpcService`] accepting bodies up to the default bound.
pub fn service_fn<F, Fut>(f: F) -> Arc<dyn RpcService>
where
    F: Fn(PeerInfo, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, RemoteError>> + Send + 'static,
{
    service_fn_with_limit(frame::DEFAULT_MAX_REQUEST, f)
}

/// Wraps an async closure as an [`RpcService`] accepting bodies up to `max_request_len`.
pub fn service_fn_with_limit<F, Fut>(max_request_len: usize, f: F) -> Arc<dyn RpcService>
where
    F: Fn(PeerInfo, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, RemoteError>> + Send + 'static,
{
    Arc::new(ServiceFn {
        f,
        max_request_len: max_request_len.min(MAX_BULK_REQUEST),
    })
}

impl<F, Fut> RpcService for ServiceFn<F>
where
    F: Fn(PeerInfo, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, RemoteError>> + Send + 'static,
{
    fn handle(
        &self,
        peer: PeerInfo,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, RemoteError>> {
        (self.f)(peer, body).boxed()
    }

    fn max_request_len(&self) -> usize {
        self.max_request_len
    }
}

/// A long-lived bidirectional stream accepted for a stream kind, with its connection (to open
/// more streams toward the peer, such as the relay's group streams).
pub struct IncomingStream {
    /// The authenticated peer.
    pub peer: PeerInfo,
    /// The connection the stream came on.
    pub conn: quinn::Connection,
    /// Our side of the stream.
    pub send: quinn::SendStream,
    /// The peer's side of the stream.
    pub recv: quinn::RecvStream,
}

/// A handler of streams of one kind: unlike an RPC, the stream stays open for as long as the
/// handler wants, carrying its own protocol after the accept.
pub trait StreamService: Send + Sync + 'static {
    /// Serves one stream until it is done; dropped (cancelled) when the endpoint shuts down.
    fn serve(&self, stream: IncomingStream) -> BoxFuture<'static, ()>;
}

/// A [`StreamService`] from an async closure.
pub fn stream_service_fn<F, Fut>(f: F) -> Arc<dyn StreamService>
where
    F: Fn(IncomingStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    struct StreamFn<F>(F);
    impl<F, Fut> StreamService for StreamFn<F>
    where
        F: Fn(IncomingStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        fn serve(&self, stream: IncomingStream) -> BoxFuture<'static, ()> {
            (self.0)(stream).boxed()
        }
    }
    Arc::new(StreamFn(f))
}

/// What serves a kind.
#[derive(Clone)]
enum Service {
    Rpc(Arc<dyn RpcService>),
    Stream(Arc<dyn StreamService>),
}

type Services = RwLock<HashMap<u16, Service>>;

/// What the accept loop and every connection task share.
struct Shared {
    /// A `std` lock: read once per request, written when services register; never held across
    /// `.await` (the handler is cloned out first).
    services: Services,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// Revoked certificate fingerprints, also checked by both TLS verifiers.
    revoked: Arc<Revoked>,
    /// Accepted connections by `stable_id`, with the peer's certificate fingerprint: closed when
    /// that certificate is revoked.
    live: Mutex<HashMap<usize, (String, quinn::Connection)>>,
}

impl Shared {
    fn service(&self, kind: u16) -> Option<Service> {
        let services = self.services.read().unwrap_or_else(PoisonError::into_inner);
        services.get(&kind).cloned()
    }

    /// Sets (`Some`) or removes (`None`) the service of `kind`.
    fn set_service(&self, kind: u16, service: Option<Service>) {
        let mut services = self
            .services
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match service {
            Some(s) => services.insert(kind, s),
            None => services.remove(&kind),
        };
    }
}

/// The node's cluster endpoint: accepts peers (mutual TLS against the cluster CA), serves RPCs
/// for registered kinds, and sends RPCs over pooled connections. Cloning is cheap and shares it.
///
/// It runs until the `shutdown` token given to [`bind`](Self::bind) is cancelled or
/// [`close`](Self::close) is called.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

struct Inner {
    quinn: quinn::Endpoint,
    client: quinn::ClientConfig,
    name: String,
    fingerprint: String,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.inner.name)
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Binds the endpoint to `addr` (port 0 picks one) and starts accepting peers.
    ///
    /// Must be called within a tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        identity: &NodeIdentity,
        shutdown: CancellationToken,
    ) -> Result<Self, TransportError> {
        let revoked = Arc::new(Revoked::default());
        let server = tls::server_config(identity, revoked.clone())?;
        let client = tls::client_config(identity, revoked.clone())?;
        let bind_err = |source| TransportError::Bind { addr, source };
        let socket = std::net::UdpSocket::bind(addr).map_err(bind_err)?;
        let quinn = quinn::Endpoint::new(
            quinn::EndpointConfig::new(tls::reset_key(identity)),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_err)?;
        let local_addr = quinn.local_addr().map_err(bind_err)?;
        let shared = Arc::new(Shared {
            services: RwLock::default(),
            tasks: TaskTracker::new(),
            shutdown: shutdown.child_token(),
            revoked,
            live: Mutex::default(),
        });
        shared
            .tasks
            .spawn(accept_loop(quinn.clone(), shared.clone()));
        tracing::info!(node = %identity.name, %local_addr, "cluster endpoint listening");
        Ok(Self {
            inner: Arc::new(Inner {
                quinn,
                client,
                name: identity.name.clone(),
                fingerprint: identity.fingerprint.clone(),
                local_addr,
                shared,
                pool: Arc::default(),
            }),
        })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// This node's name, as in its certificate.
    pub fn node_name(&self) -> &str {
        &self.inner.name
    }

    /// The fingerprint of this node's certificate (what a revocation names).
    pub fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    /// Serves RPCs of `kind` with `service`, replacing any previous service of that kind.
    pub fn register(&self, kind: u16, service: Arc<dyn RpcService>) {
        self.insert_service(kind, Service::Rpc(service));
    }

    /// Serves streams of `kind` with `service` (see [`open_stream`](Self::open_stream)),
    /// replacing any previous service of that kind.
    pub fn register_stream(&self, kind: u16, service: Arc<dyn StreamService>) {
        self.insert_service(kind, Service::Stream(service));
    }

    fn insert_service(&self, kind: u16, service: Service) {
        self.inner.shared.set_service(kind, Some(service));
    }

    /// Opens a long-lived stream of `kind` to `addr` and waits (within `timeout`) until the peer
    /// accepted it; the caller then speaks the kind's own protocol on it. Returns the connection
    /// too, on which the peer may open streams back.
    pub async fn open_stream(
        &self,
        addr: SocketAddr,
        kind: u16,
        timeout: Duration,
    ) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), RpcError> {
        let deadline = Instant::now() + timeout;
        let conn = self.connect(addr, deadline).await?;
        let open = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let _ = send.set_priority(i32::MAX);
            let header = frame::request_header(kind, 0, 0).map_err(|e| e.to_string())?;
            send.write_all(&header).await.map_err(|e| e.to_string())?;
            let mut answer = [0u8; RESPONSE_HEADER_LEN];
            recv.read_exact(&mut answer)
                .await
                .map_err(|e| format!("reading the accept: {e}"))?;
            Ok::<_, String>((send, recv, frame::decode_response_header(answer)))
        };
        match timeout_at(deadline, open).await {
            Ok(Ok((send, recv, Ok(h)))) if h.status == Status::Ok && h.len == 0 => {
                Ok((conn, send, recv))
            }
            Ok(Ok((_, _, Ok(h)))) if h.status == Status::UnknownKind => {
                Err(RpcError::UnknownKind(kind))
            }
            Ok(Ok((_, _, h))) => Err(RpcError::network(addr, format!("bad stream accept {h:?}"))),
            Ok(Err(reason)) => Err(RpcError::network(addr, reason)),
            Err(_) => Err(RpcError::network(addr, "stream not accepted in time")),
        }
    }

    /// Replaces the list of revoked certificate fingerprints (see `pki::cert_fingerprint`): from
    /// now on a handshake with such a certificate fails in either direction, and open
    /// connections to or from a newly revoked certificate are closed.
    pub fn set_revoked(&self, fingerprints: HashSet<String>) {
        let added = self.inner.shared.revoked.replace(fingerprints);
        if added.is_empty() {
            return;
        }
        let added: HashSet<String> = added.into_iter().collect();
        let live: Vec<quinn::Connection> = {
            let live = self
                .inner
                .shared
                .live
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            live.values()
                .filter(|(fp, _)| added.contains(fp))
                .map(|(_, conn)| conn.clone())
                .collect()
        };
        let pooled = self
            .inner
            .pool
            .matching(|conn| peer_cert(conn).is_some_and(|c| added.contains(&c.fingerprint)));
        for conn in live.into_iter().chain(pooled) {
            let name = peer_cert(&conn).map(|c| c.name).unwrap_or_default();
            tracing::warn!(peer = %name, remote = %conn.remote_address(), "closing the connection of a revoked cluster certificate");
            conn.close(REVOKED.into(), REVOKED_REASON);
        }
    }

    /// Whether the certificate with `fingerprint` is revoked here.
    pub fn is_revoked(&self, fingerprint: &str) -> bool {
        self.inner.shared.revoked.contains(fingerprint)
    }

    /// Stops serving `kind`; later requests of that kind get `UnknownKind`.
    pub fn unregister(&self, kind: u16) {
        self.inner.shared.set_service(kind, None);
    }

    /// Requires the peer at `addr` to present a certificate for node `name` from the next dial on
    /// (`None`: any cluster certificate, the default).
    pub fn expect_peer(&self, addr: SocketAddr, name: Option<String>) {
        self.inner.pool.expect_name(addr, name);
    }

    /// The pooled connection to `addr`, dialing it if needed (within the connect timeout).
    pub async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, RpcError> {
        self.connect(addr, Instant::now() + CONNECT_TIMEOUT).await
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        deadline: Instant,
    ) -> Result<quinn::Connection, RpcError> {
        if self.inner.shared.shutdown.is_cancelled() {
            return Err(RpcError::unreachable(addr, "local endpoint is shut down"));
        }
        let dial = match self.inner.pool.lookup(addr, Instant::now()) {
            Lookup::Live(conn) => return Ok(conn),
            Lookup::BackingOff { wait, last_error } => {
                return Err(RpcError::unreachable(
                    addr,
                    format!("backing off for {wait:?} after failed dial: {last_error}"),
                ))
            }
            Lookup::Dialing(dial) => dial,
            Lookup::Idle => {
                // Read outside `start_dial`: the pool's lock is not reentrant.
                let name = self.inner.pool.expected_name(addr);
                self.inner
                    .pool
                    .start_dial(addr, || self.spawn_dial(addr, name))
            }
        };
        match timeout_at(deadline, dial).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(reason)) => Err(RpcError::unreachable(addr, reason)),
            Err(_) => Err(RpcError::unreachable(
                addr,
                "dial still in progress at the deadline",
            )),
        }
    }

    /// Starts a dial of `addr` as a tracked task that records its outcome in the pool.
    fn spawn_dial(&self, addr: SocketAddr, name: Option<String>) -> Dial {
        let quinn = self.inner.quinn.clone();
        let client = self.inner.client.clone();
        let pool = self.inner.pool.clone();
        let task = self.inner.shared.tasks.spawn(async move {
            let server_name = name.as_deref().unwrap_or(tls::ANY_PEER);
            let dial = async {
                let connecting = quinn
                    .connect_with(client, addr, server_name)
                    .map_err(|e| e.to_string())?;
                connecting.await.map_err(|e| e.to_string())
            };
            let outcome = match tokio::time::timeout(CONNECT_TIMEOUT, dial).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("no handshake within {CONNECT_TIMEOUT:?}")),
            };
            match &outcome {
                Ok(conn) => {
                    tracing::debug!(%addr, "connected to cluster peer");
                    tokio::spawn(watch_revocation(conn.clone()));
                }
                Err(error) if is_revocation(error) => tracing::error!(
                    %addr, %error,
                    "cluster handshake refused because a certificate is revoked: if this node was removed from the cluster, wipe its data directory and join again with a new join token"
                ),
                Err(error) => tracing::debug!(%addr, %error, "cannot connect to cluster peer"),
            }
            pool.finish_dial(addr, &outcome, Instant::now());
            outcome
        });
        async move {
            task.await
                .unwrap_or_else(|e| Err(format!("dial task failed: {e}")))
        }
        .boxed()
        .shared()
    }

    /// Sends one request of `kind` to `addr` and waits for the answer, all within `timeout`.
    ///
    /// Bodies are bounded: at most [`MAX_BULK_REQUEST`](frame::MAX_BULK_REQUEST) here, and the
    /// peer's service may accept less.
    pub async fn request(
        &self,
        addr: SocketAddr,
        kind: u16,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, RpcError> {
        let deadline = Instant::now() + timeout;
        let header = frame::request_header(kind, body.len(), MAX_BULK_REQUEST).map_err(|_| {
            RpcError::TooLarge {
                len: body.len(),
                max: MAX_BULK_REQUEST,
            }
        })?;
        let conn = self.connect(addr, deadline).await?;
        let rx_before = conn.stats().udp_rx.datagrams;
        let (mut send, mut recv) = match timeout_at(deadline, conn.open_bi()).await {
            Ok(Ok(streams)) => streams,
            Ok(Err(e)) => return Err(RpcError::unreachable(addr, format!("connection lost: {e}"))),
            Err(_) => {
                return Err(RpcError::unreachable(
                    addr,
                    "no stream credit before the deadline",
                ))
            }
        };
        // Control traffic (Raft, heartbeats, state queries) goes before the relay's media.
        let _ = send.set_priority(i32::MAX);
        let write = async {
            send.write_all(&header).await?;
            send.write_all(&body).await?;
            send.finish().map_err(|_| quinn::WriteError::ClosedStream)
        };
        match timeout_at(deadline, write).await {
            // The server stops reading a request it refuses, but still answers it: read on.
            Ok(Ok(())) | Ok(Err(quinn::WriteError::Stopped(_))) => {}
            Ok(Err(quinn::WriteError::ConnectionLost(e))) => {
                return Err(RpcError::unreachable(addr, format!("connection lost: {e}")))
            }
            Ok(Err(e)) => return Err(RpcError::network(addr, format!("send failed: {e}"))),
            Err(_) => {
                drop_if_silent(&conn, rx_before);
                return Err(RpcError::network(
                    addr,
                    format!("send timed out after {timeout:?}"),
                ));
            }
        }
        match timeout_at(deadline, read_response(&mut recv)).await {
            Ok(Ok((Status::Ok, body))) => Ok(body),
            Ok(Ok((Status::RemoteError, body))) => Err(remote_error(addr, &body)),
            Ok(Ok((Status::UnknownKind, _))) => Err(RpcError::UnknownKind(kind)),
            Ok(Err(reason)) => Err(RpcError::network(addr, reason)),
            Err(_) => {
                drop_if_silent(&conn, rx_before);
                Err(RpcError::network(
                    addr,
                    format!("no response within {timeout:?}"),
                ))
            }
        }
    }

    /// Stops accepting, closes every connection, and waits (bounded) for handler tasks to end.
    pub async fn close(&self) {
        let shared = &self.inner.shared;
        shared.shutdown.cancel();
        self.inner.pool.clear();
        self.inner.quinn.close(0u32.into(), b"shutdown");
        shared.tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(node = %self.inner.name, "cluster endpoint tasks still running after close");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.quinn.wait_idle()).await;
    }
}

/// Whether a handshake error is a revoked certificate (ours refused by the peer, or the peer's
/// refused here).
fn is_revocation(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("revoked")
}

/// Logs, once, that the peer closed a connection because this node's certificate was revoked
/// (at once, or at the end of the handshake: in TLS 1.3 the server checks the client's
/// certificate after the client considers itself connected).
async fn watch_revocation(conn: quinn::Connection) {
    let revoked = match conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(close) => close.error_code == REVOKED.into(),
        quinn::ConnectionError::ConnectionClosed(close) => {
            close.error_code == quinn::TransportErrorCode::crypto(CERTIFICATE_REVOKED_ALERT)
                || is_revocation(&String::from_utf8_lossy(&close.reason))
        }
        _ => false,
    };
    if revoked {
        tracing::error!(
            remote = %conn.remote_address(),
            "a cluster peer refused this node: its certificate is revoked (the node was removed from the cluster); wipe its data directory and join again with a new join token"
        );
    }
}

/// The TLS alert `certificate_revoked`.
const CERTIFICATE_REVOKED_ALERT: u8 = 44;

/// Closes a pooled connection on which nothing at all arrived during a timed-out request: not
/// even the ACK of the request's own packets. That is a peer that died (or restarted: the new
/// process does not know the connection) without closing it; waiting for QUIC's idle timeout
/// would fail every request to it for seconds. The next request redials. A live but slow peer
/// still ACKs, so its connection is kept.
fn drop_if_silent(conn: &quinn::Connection, rx_before: u64) {
    if conn.stats().udp_rx.datagrams == rx_before {
        tracing::debug!(remote = %conn.remote_address(), "peer silent during a request: dropping the connection");
        conn.close(0u32.into(), b"peer silent");
    }
}

fn remote_error(addr: SocketAddr, body: &[u8]) -> RpcError {
    match serde_json::from_slice::<RemoteError>(body) {
        Ok(e) => RpcError::Remote(e),
        Err(e) => RpcError::network(addr, format!("malformed remote error: {e}")),
    }
}

async fn read_response(recv: &mut quinn::RecvStream) -> Result<(Status, Bytes), String> {
    let mut header = [0u8; RESPONSE_HEADER_LEN];
    recv.read_exact(&mut header)
        .await
        .map_err(|e| format!("reading response header: {e}"))?;
    let header = frame::decode_response_header(header).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; header.len as usize];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| format!("reading response body: {e}"))?;
    Ok((header.status, body.into()))
}

async fn accept_loop(quinn: quinn::Endpoint, shared: Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            incoming = quinn.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        if quinn.open_connections() >= MAX_CONNECTIONS {
            tracing::warn!(remote = %incoming.remote_address(), "too many cluster connections; refused");
            incoming.refuse();
            continue;
        }
        shared
            .tasks
            .spawn(serve_connection(incoming, shared.clone()));
    }
    quinn.close(0u32.into(), b"shutdown");
}

#[tracing::instrument(skip_all, fields(remote = %incoming.remote_address()))]
async fn serve_connection(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let remote = incoming.remote_address();
    let handshake = async { incoming.accept()?.await };
    let conn = tokio::select! {
        () = shared.shutdown.cancelled() => return,
        conn = handshake => match conn {
            Ok(conn) => conn,
            Err(error) if is_revocation(&error.to_string()) => {
                tracing::warn!(%error, "refused a revoked cluster certificate (a node removed from the cluster tried to connect)");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "cluster peer handshake failed");
                return;
            }
        },
    };
    let Some(cert) = peer_cert(&conn) else {
        tracing::warn!("cluster peer certificate carries no node name; closing");
        conn.close(STREAM_ERROR.into(), b"no node name");
        return;
    };
    let Some(role) = PeerRole::from_ou(cert.role.as_deref()) else {
        tracing::warn!(peer = %cert.name, role = ?cert.role, "cluster peer certificate carries no known role; closing");
        conn.close(STREAM_ERROR.into(), b"no role");
        return;
    };
    // Listed first, checked after: a revocation racing this handshake either sees the
    // connection in the list or is seen here.
    let id = conn.stable_id();
    shared
        .live
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id, (cert.fingerprint.clone(), conn.clone()));
    if shared.revoked.contains(&cert.fingerprint) {
        conn.close(REVOKED.into(), REVOKED_REASON);
    }
    tracing::debug!(peer = %cert.name, role = role.as_str(), "cluster peer connected");
    let peer = PeerInfo {
        name: cert.name,
        role,
        fingerprint: cert.fingerprint,
        addr: remote,
    };
    serve_streams(&conn, &peer, &shared).await;
    shared
        .live
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&id);
}

async fn serve_streams(conn: &quinn::Connection, peer: &PeerInfo, shared: &Arc<Shared>) {
    loop {
        let (send, recv) = tokio::select! {
            () = shared.shutdown.cancelled() => {
                conn.close(0u32.into(), b"shutdown");
                break;
            }
            streams = conn.accept_bi() => match streams {
                Ok(streams) => streams,
                Err(error) => {
                    tracing::debug!(peer = %peer.name, %error, "cluster peer connection ended");
                    break;
                }
            },
        };
        shared.tasks.spawn(serve_stream(
            send,
            recv,
            peer.clone(),
            conn.clone(),
            shared.clone(),
        ));
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    peer: PeerInfo,
    conn: quinn::Connection,
    shared: Arc<Shared>,
) {
    // Answers and control messages go before media streams (see `Endpoint::request`).
    let _ = send.set_priority(i32::MAX);
    let outcome = tokio::select! {
        () = shared.shutdown.cancelled() => Err("shutting down".to_owned()),
        outcome = answer(&mut send, &mut recv, &peer, &shared) => outcome,
    };
    let outcome = match outcome {
        Ok(Some(service)) => {
            let stream = IncomingStream {
                peer,
                conn,
                send,
                recv,
            };
            tokio::select! {
                () = shared.shutdown.cancelled() => {}
                () = service.serve(stream) => {}
            }
            return;
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(reason) = outcome {
        tracing::debug!(peer = %peer.name, %reason, "rpc stream failed; resetting");
        let _ = send.reset(STREAM_ERROR.into());
        let _ = recv.stop(STREAM_ERROR.into());
    }
}

/// Reads one request, runs its handler and writes the response; for a stream kind, accepts the
/// stream and hands back its service.
async fn answer(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    peer: &PeerInfo,
    shared: &Shared,
) -> Result<Option<Arc<dyn StreamService>>, String> {
    let read_deadline = Instant::now() + REQUEST_READ_TIMEOUT;
    let mut header = [0u8; REQUEST_HEADER_LEN];
    read_before(recv, &mut header, read_deadline).await?;
    let header = frame::decode_request_header(header);
    if !callers(header.kind).admit(peer.role) {
        tracing::warn!(
            peer = %peer.name, role = peer.role.as_str(), kind = format_args!("{:#06x}", header.kind),
            "refused a cluster call this node's role may not make"
        );
        let _ = recv.stop(0u32.into());
        let error = RemoteError::new(
            "forbidden",
            format!(
                "kind {:#06x} may only be called by origins; this certificate is an {}'s",
                header.kind,
                peer.role.as_str()
            ),
        );
        return respond_error(send, &error).await.map(|()| None);
    }
    let service = match shared.service(header.kind) {
        None => {
            let _ = recv.stop(0u32.into());
            return respond(send, Status::UnknownKind, &[]).await.map(|()| None);
        }
        Some(Service::Stream(service)) => {
            let accept = frame::encode_response(Status::Ok, &[]).map_err(|e| e.to_string())?;
            send.write_all(&accept)
                .await
                .map_err(|e| format!("accepting stream: {e}"))?;
            return Ok(Some(service));
        }
        Some(Service::Rpc(service)) => service,
    };
    if let Err(e) = frame::checked_len(header.len.into(), service.max_request_len()) {
        let _ = recv.stop(0u32.into());
        let error = RemoteError::new("frame_too_large", e.to_string());
        return respond_error(send, &error).await.map(|()| None);
    }
    let mut body = vec![0u8; header.len as usize];
    read_before(recv, &mut body, read_deadline).await?;
    // A caller that gave up (timeout) stops reading: drop its handler rather than keep it.
    let gone = send.stopped();
    let handled = tokio::select! {
        handled = service.handle(peer.clone(), body.into()) => handled,
        _ = gone => return Err("caller gave up before the answer".into()),
    };
    let written = match handled {
        Ok(answer) => match frame::encode_response(Status::Ok, &answer) {
            Ok(frame) => write_frame(send, &frame).await,
            Err(e) => {
                respond_error(send, &RemoteError::new("response_too_large", e.to_string())).await
            }
        },
        Err(error) => respond_error(send, &error).await,
    };
    written.map(|()| None)
}

async fn read_before(
    recv: &mut quinn::RecvStream,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(), String> {
    match timeout_at(deadline, recv.read_exact(buf)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("reading request: {e}")),
        Err(_) => Err(format!(
            "request not received within {REQUEST_READ_TIMEOUT:?}"
        )),
    }
}

async fn respond_error(send: &mut quinn::SendStream, error: &RemoteError) -> Result<(), String> {
    let body = serde_json::to_vec(error).map_err(|e| e.to_string())?;
    respond(send, Status::RemoteError, &body).await
}

async fn respond(send: &mut quinn::SendStream, status: Status, body: &[u8]) -> Result<(), String> {
    let frame = frame::encode_response(status, body).map_err(|e| e.to_string())?;
    write_frame(send, &frame).await
}

async fn write_frame(send: &mut quinn::SendStream, frame: &[u8]) -> Result<(), String> {
    send.write_all(frame)
        .await
        .map_err(|e| format!("writing response: {e}"))?;
    send.finish()
        .map_err(|e| format!("finishing response: {e}"))
}
