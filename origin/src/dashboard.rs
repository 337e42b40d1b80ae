//! The dashboard: a single page app at `/` (Preact + htm, no build step), served from assets
//! compiled into the binary. It signs in through `POST /api/v1/auth/login` and calls the REST
//! API with the session it gets; the pages themselves are public (they hold no data).
//!
//! Served with a content security policy (scripts and styles from this node only, media and
//! API calls to any node of the cluster for the previews) and `frame-ancestors 'none'`, so
//! another site cannot frame the dashboard to trick a signed-in operator into clicks.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("../assets/dashboard/index.html");
const APP: &str = include_str!("../assets/dashboard/app.mjs");
const CSS: &str = include_str!("../assets/dashboard/app.css");

/// The policy of the dashboard's pages (see the module docs).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data: blob: http: https:; media-src 'self' blob: http: https:; \
     connect-src 'self' http: https: ws: wss:; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'self'";

/// `/` and the dashboard's assets.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route(
            "/dashboard/app.mjs",
            get(|| asset(APP, "application/javascript")),
        )
        .route("/dashboard/app.css", get(|| asset(CSS, "text/css")))
}

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        INDEX,
    )
        .into_response()
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    let kind = HeaderValue::from_str(&format!("{kind}; charset=utf-8"))
        .unwrap_or(HeaderValue::from_static("text/plain"));
    (
        [
            (header::CONTENT_TYPE, kind),
            // Revalidated on each load: a new binary brings new assets.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    #[tokio::test]
    async fn the_dashboard_is_served_from_the_binary_and_cannot_be_framed() {
        let app: Router = router();
        let r = app
            .clone()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::X_FRAME_OPTIONS], "DENY");
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"));
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        assert!(String::from_utf8_lossy(&body).contains("/dashboard/app.mjs"));
        let js = app
            .oneshot(
                Request::get("/dashboard/app.mjs")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(js.status(), StatusCode::OK);
        assert!(js.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/javascript"));
    }
}
