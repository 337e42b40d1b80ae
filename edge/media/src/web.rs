//! The public web surface every node serves besides the media: the browser SDK
//! (`/sdk/streamhub.js`, `/sdk/streamhub.mjs`, and the same under a versioned name), the
//! per-app sample pages (`/samples/{app}`), the vendored Preact + htm module the dashboard uses,
//! and on an edge `/`, which points at an origin's dashboard. Nothing here needs a credential:
//! the pages call the API (and present tokens) themselves.

use std::sync::{Arc, LazyLock};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use streamhub_cluster::state::NodeRole;
use streamhub_shared::AppName;

use crate::http::error;
use crate::play::{unix_now_ms, Steering};

/// The SDK's version (also `StreamHub.version`); `/sdk/streamhub-<version>.js` never changes.
pub const SDK_VERSION: &str = "1.1.0";

const SDK_SOURCE: &str = include_str!("../assets/sdk/streamhub.js");
const SAMPLES_PAGE: &str = include_str!("../assets/web/samples.html");
/// The chromeless player page of `/embed/{app}/{room}`.
pub const EMBED_PAGE: &str = include_str!("../assets/web/embed.html");
/// Preact + hooks + htm (htm 3.1.1's standalone ES module), for the dashboard.
const PREACT_HTM: &str = include_str!("../assets/preact-htm.mjs");

/// The SDK as a classic script: defines `window.StreamHub`.
static SDK_SCRIPT: LazyLock<String> = LazyLock::new(|| {
    format!("(function () {{\n'use strict';\n{SDK_SOURCE}\nwindow.StreamHub = StreamHub;\n}})();\n")
});
/// The SDK as an ES module: `import StreamHub, { play, publish } from '/sdk/streamhub.mjs'`.
static SDK_MODULE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{SDK_SOURCE}\nexport default StreamHub;\nexport {{ play, publish, VERSION as version }};\n"
    )
});
/// Strong validators of the two builds (their content does not change while the node runs).
static SDK_ETAGS: LazyLock<(String, String)> =
    LazyLock::new(|| (etag_of(&SDK_SCRIPT), etag_of(&SDK_MODULE)));

fn etag_of(body: &str) -> String {
    // FNV-1a: a content fingerprint for caches, not a security boundary.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"sdk-{SDK_VERSION}-{h:016x}\"")
}

/// The routes of this module. `dashboard_here`: this node serves the dashboard at `/` itself
/// (origins); otherwise `/` answers with where it is (edges).
pub fn router(steering: Arc<Steering>, dashboard_here: bool) -> Router {
    let r = Router::new()
        .route("/sdk/{file}", get(sdk))
        .route("/samples/{app}", get(samples))
        .route("/assets/preact-htm.mjs", get(preact_htm));
    let r = if dashboard_here {
        r
    } else {
        r.route("/", get(elsewhere))
    };
    r.with_state(steering)
}

/// `GET /sdk/streamhub.js`, `/sdk/streamhub.mjs`, `/sdk/streamhub-<version>.{js,mjs}`.
async fn sdk(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let (stem, module) = match file.strip_suffix(".mjs") {
        Some(stem) => (stem, true),
        None => match file.strip_suffix(".js") {
            Some(stem) => (stem, false),
            None => return error(StatusCode::NOT_FOUND, "no such SDK file"),
        },
    };
    let versioned = match stem.strip_prefix("streamhub") {
        Some("") => false,
        Some(v) if v.strip_prefix('-') == Some(SDK_VERSION) => true,
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                &format!("no such SDK file (this node serves version {SDK_VERSION})"),
            )
        }
    };
    let (body, etag) = if module {
        (SDK_MODULE.as_str(), SDK_ETAGS.1.as_str())
    } else {
        (SDK_SCRIPT.as_str(), SDK_ETAGS.0.as_str())
    };
    let cache = if versioned {
        "public, max-age=31536000, immutable"
    } else {
        "public, max-age=300"
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let common = [
        (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        (
            header::ETAG,
            HeaderValue::from_str(etag).unwrap_or(HeaderValue::from_static("\"sdk\"")),
        ),
        // Module scripts from another site need CORS.
        (
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        ),
        (
            header::HeaderName::from_static("x-streamhub-sdk-version"),
            HeaderValue::from_static(SDK_VERSION),
        ),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/javascript; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// `GET /samples/{app}`: the sample pages (publisher, viewer, camera viewer) of an app.
async fn samples(Path(app): Path<String>) -> Response {
    if let Err(e) = AppName::new(app) {
        return error(StatusCode::BAD_REQUEST, &e.to_string());
    }
    ([(header::CACHE_CONTROL, "no-cache")], Html(SAMPLES_PAGE)).into_response()
}

async fn preact_htm() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=86400"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        PREACT_HTM,
    )
        .into_response()
}

/// `GET /` on an edge: the dashboard lives on the origins; redirect to one that is up (this
/// node's region first), or say so when none is known.
async fn elsewhere(State(steering): State<Arc<Steering>>) -> Response {
    let now = unix_now_ms();
    let nodes = steering.directory.nodes();
    let mut origins: Vec<_> = nodes
        .iter()
        .filter(|n| n.role == NodeRole::Origin && streamhub_cluster::registry::is_up(n, now))
        .collect();
    origins.sort_by_key(|n| (n.region != steering.region, n.name.clone()));
    match origins.first() {
        Some(o) => {
            let to = format!("{}/", o.http_url.trim_end_matches('/'));
            (
                StatusCode::FOUND,
                [
                    (header::LOCATION, to),
                    (header::CACHE_CONTROL, "no-cache".to_string()),
                ],
            )
                .into_response()
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CACHE_CONTROL, "no-cache")],
            Html(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>streamhub edge</title>\
                 <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"></head><body>\
                 <h1>streamhub edge</h1><p>This node is an edge: it plays rooms (<code>/play/&lt;app&gt;/&lt;room&gt;</code>). \
                 The dashboard is on the origins, and no origin is known to be up right now.</p></body></html>",
            ),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::play::tests::{node, Fixed};
    use axum::body::Body;
    use axum::http::Request;
    use streamhub_cluster::registry::SteeringPolicy;
    use streamhub_cluster::state::NodeRecord;
    use tower::ServiceExt;

    fn app(nodes: Vec<NodeRecord>, dashboard_here: bool) -> Router {
        router(
            Arc::new(Steering {
                directory: Arc::new(Fixed(Arc::new(nodes))),
                me: "e1".into(),
                region: "eu".into(),
                public_url: "http://e1:3020".into(),
                region_header: None,
                policy: SteeringPolicy::default(),
                draining: Default::default(),
            }),
            dashboard_here,
        )
    }

    async fn get(app: &Router, uri: &str, inm: Option<&str>) -> Response {
        let mut req = Request::get(uri);
        if let Some(v) = inm {
            req = req.header(header::IF_NONE_MATCH, v);
        }
        app.clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn text(resp: Response) -> String {
        let b = axum::body::to_bytes(resp.into_body(), 1 << 22)
            .await
            .unwrap();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_sdk_is_served_as_a_script_and_a_module_with_cache_validators() {
        let a = app(vec![], true);
        let js = get(&a, "/sdk/streamhub.js", None).await;
        assert_eq!(js.status(), StatusCode::OK);
        assert_eq!(js.headers()[header::CACHE_CONTROL], "public, max-age=300");
        assert_eq!(js.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        let etag = js.headers()[header::ETAG].to_str().unwrap().to_string();
        let body = text(js).await;
        assert!(
            body.contains("window.StreamHub = StreamHub"),
            "classic script"
        );
        assert!(body.contains(&format!("const VERSION = '{SDK_VERSION}'")));
        let mjs = text(get(&a, "/sdk/streamhub.mjs", None).await).await;
        assert!(mjs.contains("export default StreamHub;"));
        assert!(!mjs.contains("window.StreamHub ="));
        // Revalidation and the immutable versioned name.
        let again = get(&a, "/sdk/streamhub.js", Some(&etag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let v = get(&a, &format!("/sdk/streamhub-{SDK_VERSION}.mjs"), None).await;
        assert_eq!(v.status(), StatusCode::OK);
        assert!(v.headers()[header::CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("immutable"));
        for missing in [
            "/sdk/streamhub-0.0.1.js",
            "/sdk/other.js",
            "/sdk/streamhub.css",
        ] {
            assert_eq!(get(&a, missing, None).await.status(), StatusCode::NOT_FOUND);
        }
    }

    #[tokio::test]
    async fn samples_need_a_valid_app_name() {
        let a = app(vec![], true);
        let ok = get(&a, "/samples/live", None).await;
        assert_eq!(ok.status(), StatusCode::OK);
        assert!(text(ok).await.contains("/sdk/streamhub.mjs"));
        assert_eq!(
            get(&a, "/samples/Not_An_App", None).await.status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test]
    async fn an_edge_sends_the_dashboard_to_an_origin_of_its_region() {
        let nodes = vec![
            node("o-us", NodeRole::Origin, "us", 0),
            node("o-eu", NodeRole::Origin, "eu", 0),
            node("e1", NodeRole::Edge, "eu", 0),
        ];
        let r = get(&app(nodes, false), "/", None).await;
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(r.headers()[header::LOCATION], "http://o-eu.example/");
        let r = get(
            &app(vec![node("e1", NodeRole::Edge, "eu", 0)], false),
            "/",
            None,
        )
        .await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(text(r).await.contains("dashboard is on the origins"));
        // An origin serves `/` itself (not this router).
        assert_eq!(
            get(&app(vec![], true), "/", None).await.status(),
            StatusCode::NOT_FOUND
        );
    }
}
