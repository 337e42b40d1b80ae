//! Viewer steering over HTTP, on every node: `GET /play/{app}/{room}` redirects (302) to the
//! best node's player page, and `GET /api/v1/apps/{app}/rooms/{room}/playback?region=R` names
//! that node and its HLS, WHEP and MJPEG URLs. The decision is
//! [`SteeringPolicy`](streamhub_cluster::registry::SteeringPolicy) over the registry.
//!
//! The client's region is `?region=`, else the configured header (a CDN or load balancer can
//! set one), else this node's region. `?avoid=<node>` leaves out a node the client could not
//! play from (a player whose edge died asks another node before the registry knows), unless no
//! other node is left; the answer's `alternates` name other nodes to ask next time. A redirect carries `?steered=<node>`: the node it names
//! serves the page instead of steering again, so a stale registry can never loop a viewer.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::json;
use streamhub_cluster::registry::{client_region, SteeringPolicy};
use streamhub_cluster::state::NodeRecord;
use streamhub_shared::{AppName, RoomName};

use crate::http::{error, room_names};

/// The registry as a node sees it.
pub trait NodeDirectory: Send + Sync + 'static {
    /// Every registered node.
    fn nodes(&self) -> Arc<Vec<NodeRecord>>;
}

/// Steering settings of a node.
pub struct Steering {
    /// Where the registry comes from.
    pub directory: Arc<dyn NodeDirectory>,
    /// This node's name.
    pub me: String,
    /// This node's region (the client's when nothing says otherwise).
    pub region: String,
    /// This node's public base URL (used when the registry knows no node at all).
    pub public_url: String,
    /// A request header carrying the client's region, if configured.
    pub region_header: Option<HeaderName>,
    /// The decision rules.
    pub policy: SteeringPolicy,
    /// This node's drain: while on, it steers no one to itself.
    pub draining: crate::drain::Draining,
}

/// Query of the steering routes.
#[derive(Debug, Default, Deserialize)]
pub struct SteerQuery {
    /// The client's region hint.
    pub region: Option<String>,
    /// Set by a redirect: the node that was chosen.
    pub steered: Option<String>,
    /// A node the client failed to play from: chosen only when no other node is left.
    pub avoid: Option<String>,
}

/// How many other nodes a playback answer names for the player to ask when its node fails.
pub const MAX_ALTERNATES: usize = 4;

/// Where a viewer should play from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The chosen node's name.
    pub node: String,
    /// Its region.
    pub region: String,
    /// Its public base URL.
    pub base: String,
    /// Why it was chosen.
    pub reason: &'static str,
}

impl Steering {
    /// The client's region from the query and the headers.
    pub fn region_of(&self, query: Option<&str>, headers: &HeaderMap) -> String {
        let header = self
            .region_header
            .as_ref()
            .and_then(|h| headers.get(h))
            .and_then(|v| v.to_str().ok());
        client_region(query, header, &self.region)
    }

    /// The best node for a client in `region` now, or this node when the registry is empty.
    pub fn choose(&self, region: &str) -> Option<Target> {
        self.choose_avoiding(region, None)
    }

    /// [`Steering::choose`] leaving out the node named `avoid` while another one is left.
    pub fn choose_avoiding(&self, region: &str, avoid: Option<&str>) -> Option<Target> {
        let nodes = self.directory.nodes();
        if nodes.is_empty() {
            return Some(Target {
                node: self.me.clone(),
                region: self.region.clone(),
                base: self.public_url.clone(),
                reason: "self",
            });
        }
        let now = unix_now_ms();
        // A draining node leaves itself out before the registry says so.
        let me_out = self.draining.is_on().then_some(self.me.as_str());
        let pick = |skip: &[Option<&str>]| {
            let left = nodes
                .iter()
                .filter(|n| !skip.contains(&Some(n.name.as_str())));
            self.policy.choose(left, Some(region), now)
        };
        let choice = pick(&[avoid, me_out]).or_else(|| pick(&[me_out]))?;
        Some(Target {
            node: choice.node.name.clone(),
            region: choice.node.region.clone(),
            base: choice.node.http_url.trim_end_matches('/').to_string(),
            reason: choice.reason.as_str(),
        })
    }

    /// Base URLs of up to [`MAX_ALTERNATES`] healthy nodes other than `chosen` (the client's
    /// region first, then by name): where a player asks steering again when its node fails.
    pub fn alternates(&self, chosen: &str, region: &str) -> Vec<String> {
        let nodes = self.directory.nodes();
        let now = unix_now_ms();
        let mut others: Vec<&NodeRecord> = nodes
            .iter()
            .filter(|n| n.name != chosen && self.policy.is_healthy(n, now))
            .filter(|n| n.draining_since_ms.is_none())
            .filter(|n| !(self.draining.is_on() && n.name == self.me))
            .collect();
        others.sort_by(|a, b| (a.region != region, &a.name).cmp(&(b.region != region, &b.name)));
        others
            .into_iter()
            .take(MAX_ALTERNATES)
            .map(|n| n.http_url.trim_end_matches('/').to_string())
            .collect()
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The playback URLs of `app/room` on the node at `base`.
pub fn playback_urls(base: &str, app: &AppName, room: &RoomName) -> serde_json::Value {
    json!({
        "hlsUrl": format!("{base}/hls/{app}/{room}/index.m3u8"),
        "whepUrl": format!("{base}/whep/{app}/{room}"),
        "mjpegUrl": format!("{base}/live/{app}/{room}/mjpeg"),
        "frameUrl": format!("{base}/live/{app}/{room}/frame.jpg"),
        "playUrl": format!("{base}/play/{app}/{room}"),
    })
}

/// The steering routes (`/play/...` and the playback API) of a node.
pub fn router(steering: Arc<Steering>) -> Router {
    Router::new()
        .route("/play/{app}/{room}", get(play))
        .route("/embed/{app}/{room}", get(play))
        .route("/assets/hls.light.min.js", get(hls_js))
        .route("/api/v1/apps/{app}/rooms/{room}/playback", get(playback))
        .with_state(steering)
}

fn names(app: &str, room: &str) -> Result<(AppName, RoomName), Box<Response>> {
    room_names(app, room).map_err(|m| Box::new(error(StatusCode::BAD_REQUEST, &m)))
}

/// `GET /api/v1/apps/{app}/rooms/{room}/playback?region=R`.
pub async fn playback(
    State(steering): State<Arc<Steering>>,
    Path((app, room)): Path<(String, String)>,
    Query(q): Query<SteerQuery>,
    headers: HeaderMap,
) -> Response {
    let (app, room) = match names(&app, &room) {
        Ok(n) => n,
        Err(resp) => return *resp,
    };
    let region = steering.region_of(q.region.as_deref(), &headers);
    let Some(t) = steering.choose_avoiding(&region, q.avoid.as_deref()) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy node to play from",
        );
    };
    let mut data = playback_urls(&t.base, &app, &room);
    data["alternates"] = steering.alternates(&t.node, &region).into();
    data["answeredBy"] = steering.me.clone().into();
    data["node"] = t.node.into();
    data["region"] = t.region.into();
    data["clientRegion"] = region.into();
    data["reason"] = t.reason.into();
    (
        [
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // Public (no credential): players on other sites ask it too (the SDK's `base`).
            (
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            ),
        ],
        axum::Json(json!({ "data": data })),
    )
        .into_response()
}

/// `GET /play/{app}/{room}`: a redirect to the best node, or the player page on that node.
async fn play(
    State(steering): State<Arc<Steering>>,
    Path((app, room)): Path<(String, String)>,
    Query(q): Query<SteerQuery>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let (app, room) = match names(&app, &room) {
        Ok(n) => n,
        Err(resp) => return *resp,
    };
    if q.steered.as_deref() != Some(steering.me.as_str()) {
        let region = steering.region_of(q.region.as_deref(), &headers);
        match steering.choose(&region) {
            Some(t) if t.node != steering.me => {
                // The viewer's own parameters (token, mode) follow the redirect.
                let pairs = url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
                    .filter(|(k, _)| k != "steered" && k != "region");
                let kept: String = url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(pairs)
                    .finish();
                let page = if uri.path().starts_with("/embed/") {
                    "embed"
                } else {
                    "play"
                };
                let mut to = format!("{}/{page}/{app}/{room}?steered={}", t.base, t.node);
                if !kept.is_empty() {
                    to.push('&');
                    to.push_str(&kept);
                }
                return (
                    StatusCode::FOUND,
                    [
                        (header::LOCATION, to),
                        (header::CACHE_CONTROL, "no-cache".to_string()),
                    ],
                )
                    .into_response();
            }
            Some(_) => {}
            None => {
                let message = "no healthy node to play from";
                return error(StatusCode::SERVICE_UNAVAILABLE, message);
            }
        }
    }
    if uri.path().starts_with("/embed/") {
        return Html(crate::web::EMBED_PAGE).into_response();
    }
    Html(player_page(&app, &room)).into_response()
}

/// The player page (the room is read from its path): WebRTC (WHEP) first, HLS through the
/// bundled hls.js (or natively) when WHEP is refused or does not connect.
pub const PLAYER_PAGE: &str = include_str!("../assets/player.html");
/// The WHIP test page of origins: publishes the device's camera and microphone.
pub const PUBLISH_PAGE: &str = include_str!("../assets/publish.html");
/// hls.js (light build), served from the node itself.
const HLS_JS: &str = include_str!("../assets/hls.light.min.js");

fn player_page(_app: &AppName, _room: &RoomName) -> &'static str {
    PLAYER_PAGE
}

/// `GET /assets/hls.light.min.js`.
async fn hls_js() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        HLS_JS,
    )
        .into_response()
}

/// `GET /publish/{app}/{room}` (origins): the WHIP test page.
pub async fn publish_page(Path((app, room)): Path<(String, String)>) -> Response {
    match names(&app, &room) {
        Ok(_) => Html(PUBLISH_PAGE).into_response(),
        Err(resp) => *resp,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use streamhub_cluster::state::{NodeLoad, NodeRole};
    use tower::ServiceExt;

    /// A registry that never changes.
    pub(crate) struct Fixed(pub(crate) Arc<Vec<NodeRecord>>);

    impl NodeDirectory for Fixed {
        fn nodes(&self) -> Arc<Vec<NodeRecord>> {
            self.0.clone()
        }
    }

    /// A node of `role` in `region` whose last heartbeat was `age_ms` ago.
    pub(crate) fn node(name: &str, role: NodeRole, region: &str, age_ms: u64) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            id: 1,
            role,
            region: region.into(),
            http_url: format!("http://{name}.example"),
            rtmp_url: None,
            cluster_addr: "127.0.0.1:1".into(),
            version: "0".into(),
            load: NodeLoad::default(),
            registered_at_ms: 0,
            last_heartbeat_ms: unix_now_ms() - age_ms,
            cert_fingerprint: None,
            draining_since_ms: None,
            boot: 0,
            draining_boot: 0,
        }
    }

    fn app(me: &str) -> Router {
        let nodes = vec![
            node("origin-1", NodeRole::Origin, "eu", 0),
            node("edge-eu", NodeRole::Edge, "eu", 0),
            node("edge-us", NodeRole::Edge, "us", 0),
            node("edge-dead", NodeRole::Edge, "ap", 60_000),
        ];
        router(Arc::new(Steering {
            directory: Arc::new(Fixed(Arc::new(nodes))),
            me: me.into(),
            region: "eu".into(),
            public_url: format!("http://{me}.example"),
            region_header: Some(HeaderName::from_static("x-client-region")),
            policy: SteeringPolicy::default(),
            draining: Default::default(),
        }))
    }

    async fn get(app: &Router, uri: &str, region_header: Option<&str>) -> Response {
        let mut req = Request::builder().uri(uri);
        if let Some(r) = region_header {
            req = req.header("x-client-region", r);
        }
        app.clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn play_redirects_to_the_same_region_edge_and_the_edge_serves_the_page() {
        let origin = app("origin-1");
        let resp = get(&origin, "/play/live/cam?region=us", None).await;
        assert_eq!(resp.status(), StatusCode::FOUND);
        assert_eq!(
            resp.headers()[header::LOCATION],
            "http://edge-us.example/play/live/cam?steered=edge-us"
        );
        let resp = get(
            &origin,
            "/embed/live/cam?region=us&token=a.b.c&mode=hls",
            None,
        )
        .await;
        assert_eq!(
            resp.headers()[header::LOCATION],
            "http://edge-us.example/embed/live/cam?steered=edge-us&token=a.b.c&mode=hls",
            "the viewer's token and mode follow the redirect"
        );
        let resp = get(&origin, "/play/live/cam", Some("us")).await;
        assert_eq!(
            resp.headers()[header::LOCATION],
            "http://edge-us.example/play/live/cam?steered=edge-us"
        );
        let resp = get(&origin, "/play/live/cam", None).await;
        assert!(
            resp.headers()[header::LOCATION]
                .to_str()
                .unwrap()
                .contains("edge-eu"),
            "own region by default"
        );
        let resp = get(&origin, "/play/live/cam?region=ap", None).await;
        let to = resp.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            !to.contains("edge-dead"),
            "a node past its TTL is never chosen: {to}"
        );

        let edge = app("edge-us");
        let resp = get(&edge, "/play/live/cam?steered=edge-us", None).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let page = std::str::from_utf8(&body).unwrap();
        assert!(page.contains("/whep"), "WHEP first");
        assert!(
            page.contains("/assets/hls.light.min.js"),
            "hls.js from the node"
        );
        let resp = get(&edge, "/assets/hls.light.min.js", None).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn playback_names_the_node_and_its_urls() {
        let origin = app("origin-1");
        let resp = get(
            &origin,
            "/api/v1/apps/live/rooms/cam/playback?region=us",
            None,
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["data"]["node"], "edge-us");
        assert_eq!(v["data"]["reason"], "same_region_edge");
        assert_eq!(
            v["data"]["hlsUrl"],
            "http://edge-us.example/hls/live/cam/index.m3u8"
        );
        assert_eq!(
            v["data"]["mjpegUrl"],
            "http://edge-us.example/live/live/cam/mjpeg"
        );
        let resp = get(&origin, "/api/v1/apps/Bad/rooms/cam/playback", None).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn a_player_avoids_the_node_it_could_not_play_from() {
        let origin = app("origin-1");
        let data = |resp: Response| async move {
            assert_eq!(resp.status(), StatusCode::OK);
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()["data"].clone()
        };
        let path = "/api/v1/apps/live/rooms/cam/playback?region=us";
        let v = data(get(&origin, path, None).await).await;
        assert_eq!(v["node"], "edge-us");
        assert_eq!(v["answeredBy"], "origin-1");
        // The other nodes to ask, the client's region first; never the chosen one.
        assert_eq!(
            v["alternates"],
            serde_json::json!(["http://edge-eu.example", "http://origin-1.example"])
        );
        // The edge failed the player: the next best node, and the edge is offered back.
        let v = data(get(&origin, &format!("{path}&avoid=edge-us"), None).await).await;
        assert_eq!(v["node"], "edge-eu");
        assert_eq!(v["reason"], "other_region_edge");
        assert_eq!(
            v["alternates"],
            serde_json::json!(["http://edge-us.example", "http://origin-1.example"])
        );
        // An unknown name changes nothing.
        let v = data(get(&origin, &format!("{path}&avoid=nobody"), None).await).await;
        assert_eq!(v["node"], "edge-us");
    }
}
