//! The audit log: every state-changing API call and every login attempt, as one JSON object per
//! line on the `audit` tracing target (`RUST_LOG`/`--log` can route or silence it like any
//! target). Fields:
//!
//! - `ts`: Unix milliseconds;
//! - `principal`: `admin:<user>`, `user:<name>`, `key:<id>` (app-scoped keys add `@<app>`), `login:<user>`
//!   for a refused login, or `anonymous`;
//! - `app`: the app the call touched (from the path), or `null`;
//! - `action`: the method and the route pattern (`POST /api/v1/apps/{app}/tokens`);
//! - `status`: the HTTP status answered;
//! - `source`: the client's address: the socket's peer, or the client a trusted proxy names.
//!
//! Secrets never appear: request bodies are not logged, and paths are logged as their pattern.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{Extensions, Method};
use axum::middleware::Next;
use axum::response::Response;
use serde::Serialize;

use crate::api::Principal;

/// The tracing target of audit lines.
pub const TARGET: &str = "audit";

/// Who a request turned out to be, filled in by whatever authenticated it.
#[derive(Debug, Clone, Default)]
struct Slot(Arc<Mutex<Option<String>>>);

/// A handler's handle on its request's audit line (to name the principal of a login).
#[derive(Debug, Clone, Default)]
pub struct Audit(Slot);

impl Audit {
    /// Names who made the request.
    pub fn principal(&self, who: String) {
        *self.0 .0.lock().unwrap_or_else(PoisonError::into_inner) = Some(who);
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Audit {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Audit(
            parts.extensions.get::<Slot>().cloned().unwrap_or_default(),
        ))
    }
}

/// Records the authenticated principal of a request (called by the [`Principal`] extractor).
pub fn record_principal(extensions: &Extensions, principal: &Principal) {
    let Some(slot) = extensions.get::<Slot>() else {
        return;
    };
    let who = principal.label();
    *slot.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(who);
}

#[derive(Serialize)]
struct Line<'a> {
    ts: u64,
    principal: &'a str,
    app: Option<&'a str>,
    action: String,
    status: u16,
    source: Option<SocketAddr>,
}

/// Whether a request is audited: every call that may change state, and logins.
fn audited(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The app a path names: `/api/v1/apps/<app>/…` (or `/apps/<app>/…` as the nested API
/// router sees it).
fn app_of(path: &str) -> Option<&str> {
    let path = path.strip_prefix("/api/v1").unwrap_or(path);
    let rest = path.strip_prefix("/apps/")?;
    let app = rest.split('/').next()?;
    (!app.is_empty() && app.len() <= 64).then_some(app)
}

/// Middleware of the API: writes the audit line of each audited request once it is answered.
pub async fn layer(mut req: Request, next: Next) -> Response {
    if !audited(req.method()) {
        return next.run(req).await;
    }
    let slot = Slot::default();
    req.extensions_mut().insert(slot.clone());
    let method = req.method().clone();
    let pattern = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "(no route)".to_string(), |p| p.as_str().to_string());
    let path = req.uri().path().to_string();
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let response = next.run(req).await;
    let principal = slot
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .unwrap_or_else(|| "anonymous".into());
    let line = Line {
        ts: crate::credentials::unix_now_ms(),
        principal: &principal,
        app: app_of(&path),
        action: format!("{method} {pattern}"),
        status: response.status().as_u16(),
        source,
    };
    if let Ok(json) = serde_json::to_string(&line) {
        tracing::info!(target: TARGET, "{json}");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_app_of_a_path() {
        assert_eq!(app_of("/api/v1/apps/demo/tokens"), Some("demo"));
        assert_eq!(app_of("/api/v1/apps/demo"), Some("demo"));
        assert_eq!(app_of("/apps/demo/ingress"), Some("demo"));
        assert_eq!(app_of("/api/v1/apps"), None);
        assert_eq!(app_of("/api/v1/api-keys"), None);
        assert!(audited(&Method::POST) && audited(&Method::DELETE) && !audited(&Method::GET));
    }
}
