//! The skeleton both node binaries share: their common settings ([`config`]), what a process
//! sets up once ([`init`]: crypto provider, logging, the shutdown signal) and the routes every
//! node serves beside its own ([`Health`], `/metrics`).

pub mod config;

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
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    shutdown
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    shutdown.cancel();
}

/// Creates the node's data dir and binds its HTTP port: the first things a node does, so a
/// wrong path or a taken port stops it at once with a clear error.
pub async fn open_http(settings: &config::NodeSettings) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context as _;
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating {}", settings.data_dir.display()))?;
    tokio::net::TcpListener::bind(settings.http)
        .await
        .with_context(|| format!("binding HTTP {}", settings.http))
}

/// Whether the node serves: `GET /healthz` answers `200 ok` once the node is ready, `503` before.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<AtomicBool>);

impl Health {
    /// From now on the node is ready.
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether the node is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

async fn healthz(State(health): State<Health>) -> impl IntoResponse {
    if health.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

/// What renders a node's Prometheus metrics at scrape time.
pub trait MetricsSource: Send + Sync + 'static {
    /// The text exposition format.
    fn render(&self) -> String;
}

async fn metrics(State(source): State<Arc<dyn MetricsSource>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        source.render(),
    )
}

/// `GET /healthz` and `GET /metrics`, served by every node.
pub fn routes(health: Health, metrics_source: Arc<dyn MetricsSource>) -> Router {
    Router::new()
        .route("/healthz", get(healthz).with_state(health))
        .route("/metrics", get(metrics).with_state(metrics_source))
}
