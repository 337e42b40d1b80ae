//! The public HTTP surface of a node: its listeners (plain HTTP, HTTPS, or HTTP redirecting to
//! HTTPS), the limits no single client can exhaust, and who the client is behind a trusted
//! proxy.
//!
//! - **Connections**: a global cap and a per-address cap, checked at accept (a refused socket
//!   is closed at once); a TLS handshake must finish within [`HttpLimits::handshake_timeout`].
//! - **Requests**: a connection must send its first request within
//!   [`HttpLimits::header_timeout`] of its accept, a request's headers must arrive within as
//!   long of their first byte, a body within [`HttpLimits::body_timeout`]; a connection
//!   (HTTP/1 keep-alive or HTTP/2) with no request in flight for [`HttpLimits::idle_timeout`] is
//!   closed.
//! - **Client address**: the TCP peer, unless the peer is a trusted proxy
//!   (`--trusted-proxies`); then the `Forwarded` or `X-Forwarded-For` header names the client,
//!   for every limit, allow-list, steering decision and log line (handlers see it as
//!   `ConnectInfo`). From anyone else those headers are ignored.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use super::tls::Acceptor;

/// What one HTTP port allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once, all clients together.
    pub max_connections: usize,
    /// Connections open at once from one client address (trusted proxies are exempt).
    pub max_per_address: usize,
    /// Time to receive a request's headers, and from the accept to the first request.
    pub header_timeout: Duration,
    /// Time to receive a request's body.
    pub body_timeout: Duration,
    /// Time to finish a TLS handshake.
    pub handshake_timeout: Duration,
    /// The longest a connection stays open without a request in flight (after its first).
    pub idle_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_per_address: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Proxies whose forwarding headers name the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses a list of addresses and CIDR ranges.
    pub fn parse(list: &[String]) -> Result<Self, String> {
        list.iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{s:?} is not an address or CIDR range"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client of a request that `peer` sent: the nearest address, walking back from the
    /// peer through the forwarding headers, that is not a trusted proxy. Only a trusted peer's
    /// headers are read.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if !self.trusts(peer.ip()) {
            return peer;
        }
        let chain = forwarded_chain(headers);
        for ip in chain.iter().rev() {
            if !self.trusts(*ip) {
                return SocketAddr::new(*ip, 0);
            }
        }
        chain.first().map_or(peer, |ip| SocketAddr::new(*ip, 0))
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The addresses of a request's forwarding chain, client first: RFC 7239 `Forwarded` (its
/// `for=` parameters) if present, else `X-Forwarded-For`. Unparsable entries end the chain.
fn forwarded_chain(headers: &HeaderMap) -> Vec<IpAddr> {
    let forwarded: Vec<&str> = headers
        .get_all(header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let mut out = Vec::new();
    if !forwarded.is_empty() {
        for element in forwarded.iter().flat_map(|v| v.split(',')) {
            let Some(node) = element.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
            }) else {
                break;
            };
            match parse_node(node) {
                Some(ip) => out.push(ip),
                None => break,
            }
        }
        return out;
    }
    for v in headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for part in v.split(',') {
            match parse_node(part.trim()) {
                Some(ip) => out.push(ip),
                None => return out,
            }
        }
    }
    out
}

/// An address as forwarding headers write it: `1.2.3.4`, `1.2.3.4:5678`, `"[2001:db8::1]:80"`,
/// `2001:db8::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim_matches('"');
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = node.parse::<SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    let inner = node.strip_prefix('[')?.split(']').next()?;
    inner.parse::<IpAddr>().ok().map(canonical)
}

/// Middleware: handlers see the client behind a trusted proxy as their `ConnectInfo`.
pub async fn real_client(
    State(proxies): State<Arc<TrustedProxies>>,
    mut req: Request,
    next: Next,
) -> Response {
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() {
        let client = proxies.client(peer, req.headers());
        if client != peer {
            req.extensions_mut().insert(ConnectInfo(client));
        }
    }
    next.run(req).await
}

/// Open connections, counted globally and per address.
#[derive(Debug, Default)]
pub struct ConnLimiter {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    refused: AtomicU64,
}

/// A counted connection; uncounted on drop.
pub struct ConnGuard {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.limiter.total.fetch_sub(1, Ordering::AcqRel);
        let mut per_ip = self
            .limiter
            .per_ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

impl ConnLimiter {
    /// Counts a connection from `ip` if it keeps the total under `max_total` and the address's
    /// own count under `max_per_address` (`exempt` skips the per-address cap: trusted proxies).
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        exempt: bool,
        max_total: usize,
        max_per_address: usize,
    ) -> Option<ConnGuard> {
        let ip = canonical(ip);
        let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = per_ip.get(&ip).copied().unwrap_or(0);
        if self.total.load(Ordering::Acquire) >= max_total || (!exempt && mine >= max_per_address) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.total.fetch_add(1, Ordering::AcqRel);
        per_ip.insert(ip, mine + 1);
        Some(ConnGuard {
            limiter: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Connections refused by a cap so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// What a listener does with its connections.
#[derive(Clone)]
pub enum Role {
    /// Serves the router in clear.
    Plain,
    /// Serves the router over TLS.
    Tls(Acceptor),
    /// Answers every request but `/healthz` with a redirect to this HTTPS base
    /// (`https://host:port`).
    RedirectTo(String),
}

/// The listeners of a node's HTTP surface and what they share.
pub struct Surface {
    /// The listeners and their roles.
    pub listeners: Vec<(TcpListener, Role)>,
    pub limits: HttpLimits,
    pub proxies: Arc<TrustedProxies>,
    /// Open and refused connections of every listener.
    pub connections: Arc<ConnLimiter>,
}

/// A router being served: started by [`Serving::start`], drained by
/// [`Serving::until_shutdown`].
pub struct Serving {
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// How long shutdown waits for requests in flight and node tasks.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

impl Serving {
    /// Serves `router` on every listener of `surface` (handlers see the client's address as
    /// `ConnectInfo<SocketAddr>`) until `shutdown` fires; then no new connection is accepted and
    /// requests in flight finish.
    pub fn start(surface: Surface, router: Router, shutdown: CancellationToken) -> Self {
        let router = router
            .layer(axum::middleware::from_fn_with_state(
                surface.proxies.clone(),
                real_client,
            ))
            .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
                surface.limits.body_timeout,
            ));
        let tasks = TaskTracker::new();
        for (listener, role) in surface.listeners {
            let app = match &role {
                Role::RedirectTo(base) => redirect_router(base.clone(), router.clone()),
                _ => router.clone(),
            };
            let accept = Accept {
                listener,
                role,
                app,
                limits: surface.limits,
                proxies: surface.proxies.clone(),
                connections: surface.connections.clone(),
                shutdown: shutdown.clone(),
                tasks: tasks.clone(),
            };
            tasks.spawn(accept.run());
        }
        Self { tasks, shutdown }
    }

    /// Waits for `shutdown`, then drains: `tasks` are closed and awaited with the server, for at
    /// most [`DRAIN_TIMEOUT`].
    pub async fn until_shutdown(self, tasks: &TaskTracker) {
        self.shutdown.cancelled().await;
        tracing::info!("shutting down");
        tasks.close();
        self.tasks.close();
        let drain = async {
            tasks.wait().await;
            self.tasks.wait().await;
        };
        if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
            tracing::warn!("some tasks did not stop within {DRAIN_TIMEOUT:?}");
        }
    }
}

/// Redirects every request but `/healthz` (load balancers' plain-HTTP health checks) to the
/// same path and query under `base`.
fn redirect_router(base: String, router: Router) -> Router {
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let base = base.clone();
            async move {
                if req.uri().path() == "/healthz" {
                    return next.run(req).await;
                }
                let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                (
                    StatusCode::PERMANENT_REDIRECT,
                    [(header::LOCATION, format!("{base}{path}"))],
                )
                    .into_response()
            }
        },
    ))
}

struct Accept {
    listener: TcpListener,
    role: Role,
    app: Router,
    limits: HttpLimits,
    proxies: Arc<TrustedProxies>,
    connections: Arc<ConnLimiter>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Accept {
    async fn run(self) {
        loop {
            let (stream, peer) = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let exempt = self.proxies.trusts(peer.ip());
            let Some(guard) = self.connections.admit(
                peer.ip(),
                exempt,
                self.limits.max_connections,
                self.limits.max_per_address,
            ) else {
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let conn = Conn {
                role: self.role.clone(),
                app: self.app.clone(),
                limits: self.limits,
                shutdown: self.shutdown.clone(),
                peer,
            };
            self.tasks.spawn(async move {
                let _guard = guard;
                conn.serve(stream).await;
            });
        }
    }
}

struct Conn {
    role: Role,
    app: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
    peer: SocketAddr,
}

impl Conn {
    async fn serve(self, stream: TcpStream) {
        match self.role.clone() {
            Role::Tls(acceptor) => {
                let handshake =
                    tokio::time::timeout(self.limits.handshake_timeout, acceptor.accept(stream))
                        .await;
                match handshake {
                    Ok(Ok(Some(tls))) => self.serve_io(TokioIo::new(tls)).await,
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(peer = %self.peer, "TLS handshake timed out"),
                }
            }
            Role::Plain | Role::RedirectTo(_) => self.serve_io(TokioIo::new(stream)).await,
        }
    }

    async fn serve_io<I>(self, io: I)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::default());
        let peer = self.peer;
        let app = self.app;
        let seen = activity.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let app = app.clone();
                let busy = seen.begin();
                async move {
                    let response = app
                        .oneshot(req.map(axum::body::Body::new))
                        .await
                        .unwrap_or_else(|e: Infallible| match e {});
                    drop(busy);
                    Ok::<_, Infallible>(response)
                }
            });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(20)))
            .keep_alive_timeout(Duration::from_secs(20))
            .max_concurrent_streams(256);
        let conn = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        let (first, idle) = (self.limits.header_timeout, self.limits.idle_timeout);
        let stopping = tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended");
                }
                return;
            }
            () = self.shutdown.cancelled() => "shutting down",
            () = activity.idle_for(first, idle) => "idle",
        };
        tracing::trace!(%peer, why = stopping, "closing HTTP connection");
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
    }
}

/// Requests in flight on a connection, whether any began, and when the last one ended.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    any: std::sync::atomic::AtomicBool,
    last: Mutex<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            any: std::sync::atomic::AtomicBool::new(false),
            last: Mutex::new(Instant::now()),
        }
    }
}

struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.any.store(true, Ordering::Release);
        Busy(self.clone())
    }

    /// Resolves once no request has been in flight for `limit`, or `first` passed from the
    /// accept without any request (a connection that never sends one; hyper's header timeout
    /// starts only with the first byte).
    async fn idle_for(&self, first: Duration, limit: Duration) {
        loop {
            let last = *self.last.lock().unwrap_or_else(PoisonError::into_inner);
            let quiet = last.elapsed();
            let limit = if self.any.load(Ordering::Acquire) {
                limit
            } else {
                first
            };
            if self.in_flight.load(Ordering::Acquire) == 0 && quiet >= limit {
                return;
            }
            tokio::time::sleep(limit.saturating_sub(quiet).max(Duration::from_secs(1))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let proxies = TrustedProxies::parse(&["10.0.0.0/8".into(), "192.0.2.1".into()]).unwrap();
        let proxy: SocketAddr = "10.1.1.1:5000".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "198.51.100.7, 10.2.2.2")]);
        assert_eq!(proxies.client(proxy, &h).ip().to_string(), "198.51.100.7");
        assert_eq!(
            proxies.client(stranger, &h),
            stranger,
            "spoofed from outside"
        );
        // The client cannot hide behind a forged entry: the nearest untrusted address counts.
        let forged = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.7")]);
        assert_eq!(
            proxies.client(proxy, &forged).ip().to_string(),
            "198.51.100.7"
        );
        let rfc = headers(&[(
            "forwarded",
            "for=\"[2001:db8::7]:4711\";proto=https, for=192.0.2.1",
        )]);
        assert_eq!(proxies.client(proxy, &rfc).ip().to_string(), "2001:db8::7");
        assert_eq!(proxies.client(proxy, &HeaderMap::new()), proxy);
        let garbage = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(proxies.client(proxy, &garbage), proxy);
        assert!(TrustedProxies::parse(&["nope".into()]).is_err());
        assert!(proxies.trusts("::ffff:10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn connections_are_capped_globally_and_per_address() {
        let limits = (3, 2);
        let l = Arc::new(ConnLimiter::default());
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        let a1 = l.admit(a, false, limits.0, limits.1).unwrap();
        let _a2 = l.admit(a, false, limits.0, limits.1).unwrap();
        assert!(
            l.admit(a, false, limits.0, limits.1).is_none(),
            "per address"
        );
        let _b1 = l.admit(b, false, limits.0, limits.1).unwrap();
        assert!(
            l.admit(b, true, limits.0, limits.1).is_none(),
            "global, even for a proxy"
        );
        drop(a1);
        assert!(l.admit(a, false, limits.0, limits.1).is_some());
        assert_eq!(l.refused(), 2);
    }
}
