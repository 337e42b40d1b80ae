//! The skeleton both node binaries share: their common settings ([`config`]), what a process
//! sets up once ([`init`]: crypto provider, logging, the shutdown signal) and the routes every
//! node serves beside its own ([`Health`], `/metrics`).

pub mod config;
pub mod surface;
pub mod tls;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

/// Sets up what every node process needs once, before anything else: the rustls crypto
/// provider (two backends are linked; both binaries pick ring), logging with `log` as the
/// filter, and a token cancelled on SIGINT or SIGTERM. Call it inside the tokio runtime.
pub fn init(log: &str) -> CancellationToken {
    let shutdown = init_logging(log);
    tokio::spawn(cancel_on_signal(shutdown.clone(), None));
    shutdown
}

/// The process-wide setup of [`init`], without the signal handling.
fn init_logging(log: &str) -> CancellationToken {
    // Everything the node creates (sled files, keys, caches) is for its owner only.
    // SAFETY: umask only sets the process's file mode mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    CancellationToken::new()
}

/// [`init`] for a node that drains on SIGTERM (edges): the first SIGTERM cancels the second
/// token (the node drains, then cancels the first itself); SIGINT or a second SIGTERM cancels
/// the first token at once.
pub fn init_draining(log: &str) -> (CancellationToken, CancellationToken) {
    let shutdown = init_logging(log);
    let drain = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone(), Some(drain.clone())));
    (shutdown, drain)
}

async fn cancel_on_signal(shutdown: CancellationToken, drain: Option<CancellationToken>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => match &drain {
                Some(d) if !d.is_cancelled() => {
                    tracing::info!("SIGTERM: draining (another SIGTERM or SIGINT stops now)");
                    d.cancel();
                }
                _ => break,
            },
            () = shutdown.cancelled() => return,
        }
    }
    shutdown.cancel();
}

/// Creates the node's data dir (owner only) and binds its HTTP port(s): the first things a node
/// does, so a wrong path or a taken port stops it at once with a clear error. With TLS, starts
/// the certificate source (returned for other TLS ports, e.g. RTMPS).
pub async fn open_surface(
    settings: &config::NodeSettings,
    tasks: &tokio_util::task::TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<(surface::Surface, Option<tls::Tls>)> {
    use anyhow::Context as _;
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating {}", settings.data_dir.display()))?;
    let dir = settings.data_dir.display();
    for fixed in owner_only(&settings.data_dir)
        .with_context(|| format!("checking the permissions of {dir}"))?
    {
        tracing::warn!(path = %fixed, "was readable by other users: now owner-only");
    }
    let http = bind(settings.http, "HTTP").await?;
    let tls = match &settings.tls {
        Some(t) => Some(
            tls::Tls::start(t, &settings.data_dir, tasks, shutdown.clone())
                .await
                .context("starting TLS")?,
        ),
        None => None,
    };
    let listeners = match (&tls, settings.https) {
        (None, _) => vec![(http, surface::Role::Plain)],
        (Some(tls), None) => vec![(http, surface::Role::Tls(tls.acceptor(&HTTP_ALPN)))],
        (Some(tls), Some(addr)) => {
            let https = bind(addr, "HTTPS").await?;
            vec![
                (https, surface::Role::Tls(tls.acceptor(&HTTP_ALPN))),
                (http, surface::Role::RedirectTo(settings.public_base())),
            ]
        }
    };
    let surface = surface::Surface {
        listeners,
        limits: settings.http_limits,
        proxies: Arc::new(settings.trusted_proxies.clone()),
        connections: Arc::default(),
    };
    Ok((surface, tls))
}

/// The ALPN protocols of the HTTPS port.
const HTTP_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Connections the kernel completes and queues for a listener until it accepts them. Past it,
/// a burst of clients arriving at once (a crowd at a stream's start, a flood) has handshakes
/// dropped, which TCP retries with backoff: seconds, up to tens of seconds, for those clients.
/// Linux caps it at `net.core.somaxconn` (4096 by default); tokio's `bind` asks for 128.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener with a [`LISTEN_BACKLOG`] queue, naming what it is for in the error.
pub async fn bind(
    addr: std::net::SocketAddr,
    what: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context as _;
    let listen = || {
        let socket = match addr {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        // As tokio's `bind` does: a restarted node rebinds while old connections linger.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().with_context(|| format!("binding {what} {addr}"))
}

/// Makes `dir` and everything under it owner-only (directories 0700, files 0600 or 0700 when
/// executable); returns what was wider. Symlinks are not followed.
pub fn owner_only(dir: &std::path::Path) -> std::io::Result<Vec<String>> {
    use std::os::unix::fs::PermissionsExt;
    let mut fixed = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            let owner = mode & 0o700;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(owner))?;
            fixed.push(format!("{} ({mode:o})", path.display()));
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(fixed)
}

/// Whether the node serves: `GET /healthz` answers `200 ok` once the node is ready and while no
/// problem is set and it does not drain, `503` with the reason otherwise (a load balancer stops
/// sending requests to a draining node; it still serves the ones it gets).
#[derive(Debug, Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
    problem: Arc<std::sync::RwLock<Option<String>>>,
    draining: crate::drain::Draining,
}

impl Health {
    /// A node whose health check reports `draining` as well.
    pub fn with_draining(draining: crate::drain::Draining) -> Health {
        Health {
            draining,
            ..Health::default()
        }
    }

    /// From now on the node is ready.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether the node is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Sets (`Some`) or clears (`None`) what keeps the node from serving; a change is logged.
    pub fn set_problem(&self, problem: Option<String>) {
        let mut current = self
            .problem
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current == problem {
            return;
        }
        match &problem {
            Some(p) => tracing::error!(problem = %p, "node unhealthy"),
            None => tracing::info!("node healthy again"),
        }
        *current = problem;
    }

    /// What keeps a ready node from serving, if anything.
    pub fn problem(&self) -> Option<String> {
        self.problem
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Ready, with no problem.
    pub fn is_healthy(&self) -> bool {
        self.is_ready() && self.problem().is_none()
    }
}

async fn healthz(State(health): State<Health>) -> impl IntoResponse {
    if !health.is_ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting".to_string());
    }
    match health.problem() {
        None if health.draining.is_on() => {
            (StatusCode::SERVICE_UNAVAILABLE, "draining".to_string())
        }
        None => (StatusCode::OK, "ok".to_string()),
        Some(p) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {p}")),
    }
}

/// What renders a node's Prometheus metrics at scrape time.
pub trait MetricsSource: Send + Sync + 'static {
    /// The text exposition format.
    fn render(&self) -> String;
}

#[derive(Clone)]
struct MetricsState {
    source: Arc<dyn MetricsSource>,
    token: Option<Arc<str>>,
}

async fn metrics(
    State(m): State<MetricsState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    if let Some(want) = &m.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !crate::http::constant_time_eq(given.as_bytes(), want.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "metrics need the bearer token (--metrics-token)\n",
            )
                .into_response();
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.source.render(),
    )
        .into_response()
}

/// `GET /healthz` and `GET /metrics` (behind `metrics_token` as a bearer token, if set),
/// served by every node.
pub fn routes(
    health: Health,
    metrics_source: Arc<dyn MetricsSource>,
    metrics_token: Option<&str>,
) -> Router {
    let state = MetricsState {
        source: metrics_source,
        token: metrics_token.map(Arc::from),
    };
    Router::new()
        .route("/healthz", get(healthz).with_state(health))
        .route("/metrics", get(metrics).with_state(state))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// More clients than tokio's default queue (128) connect while the node accepts none (a
    /// crowd arriving faster than it accepts): every handshake completes and waits in the
    /// queue. With a queue of 128 the others' handshakes are dropped, retried and dropped
    /// again for as long as nothing is accepted.
    #[tokio::test]
    async fn a_crowd_of_handshakes_waits_in_the_listen_queue() {
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(
            somaxconn >= 1024,
            "net.core.somaxconn is {somaxconn}: the kernel caps the listen queue below what \
             this test (and a node under a crowd) needs"
        );
        let listener = super::bind("127.0.0.1:0".parse().unwrap(), "test")
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        // 500: well over 128, and under a developer shell's 1024 open files.
        let connects = (0..500).map(|_| {
            tokio::time::timeout(
                Duration::from_secs(10),
                tokio::net::TcpStream::connect(addr),
            )
        });
        let results = futures::future::join_all(connects).await;
        let refused = results.iter().filter(|r| !matches!(r, Ok(Ok(_)))).count();
        assert_eq!(
            refused, 0,
            "of 500 handshakes, not completed in 10 s with none accepted"
        );
        drop(listener);
    }
}
