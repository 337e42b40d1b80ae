//! Serves HLS rooms over HTTP from memory: `GET /hls/{app}/{room}/{file}` where `file` is
//! `index.m3u8`, `init.mp4`, `init-<v>.mp4` or `seg-<n>.m4s`.
//!
//! Every body is a clone of a `Bytes` the packager produced: no copy, no render per request.
//! Names are validated strictly before any lookup: a bad app, room or file name is a 400, a
//! valid name that is not here is a 404, both with the JSON error envelope.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use streamhub_shared::{AppName, RoomName};

use super::{HlsRegistry, HlsRoom};

/// Counters of the HLS HTTP side, exported by the origin as Prometheus metrics.
#[derive(Debug, Default)]
pub struct HlsStats {
    /// Every request under `/hls/`.
    pub requests: AtomicU64,
    /// Body bytes of successful responses.
    pub bytes_out: AtomicU64,
    /// Playlists served.
    pub playlists: AtomicU64,
    /// Init and media segments served.
    pub segments: AtomicU64,
    /// Requests answered 404.
    pub not_found: AtomicU64,
    /// Requests answered 400.
    pub bad_requests: AtomicU64,
}

const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";
const INIT_TYPE: &str = "video/mp4";
const SEGMENT_TYPE: &str = "video/iso.segment";
/// Segments never change once named; the playlist changes with every segment.
const MEDIA_CACHE: &str = "max-age=60";
const PLAYLIST_CACHE: &str = "no-cache";

/// A file of a room, parsed from its strict name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HlsFile {
    Playlist,
    /// `init.mp4` (`None`) or `init-<v>.mp4`.
    Init(Option<u32>),
    Segment(u64),
}

impl HlsFile {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "index.m3u8" => Some(Self::Playlist),
            "init.mp4" => Some(Self::Init(None)),
            _ => {
                if let Some(v) = name
                    .strip_prefix("init-")
                    .and_then(|s| s.strip_suffix(".mp4"))
                {
                    return canonical_number(v).map(|v| Self::Init(Some(v)));
                }
                let n = name.strip_prefix("seg-")?.strip_suffix(".m4s")?;
                canonical_number(n).map(Self::Segment)
            }
        }
    }
}

/// A decimal number in its one canonical spelling (no sign, no leading zero, no overflow).
fn canonical_number<T: FromStr + ToString>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: T = s.parse().ok()?;
    (n.to_string() == s).then_some(n)
}

#[derive(Debug, Clone)]
struct HttpState {
    registry: Arc<HlsRegistry>,
    stats: Arc<HlsStats>,
}

/// The routes serving every room of `registry`, counting into `stats`.
pub fn router(registry: Arc<HlsRegistry>, stats: Arc<HlsStats>) -> Router {
    // One catch-all route parsed by hand: the raw path is checked before any percent-decoding,
    // so an encoded slash or dot can never reach a name.
    Router::new()
        .route("/hls/{*path}", get(serve))
        .with_state(HttpState { registry, stats })
}

async fn serve(State(state): State<HttpState>, uri: Uri) -> Response {
    state.stats.requests.fetch_add(1, Ordering::Relaxed);
    let rest = uri.path().strip_prefix("/hls/").unwrap_or_default();
    if rest.contains('%') {
        let message = "percent-encoded HLS paths are not accepted";
        return error(&state.stats, StatusCode::BAD_REQUEST, message);
    }
    let [app, room, file] = match rest.split('/').collect::<Vec<_>>()[..] {
        [app, room, file] => [app, room, file],
        _ => return error(&state.stats, StatusCode::NOT_FOUND, "no such HLS resource"),
    };
    let (app, room, file) = match parse_names(app, room, file) {
        Ok(names) => names,
        Err(message) => return error(&state.stats, StatusCode::BAD_REQUEST, &message),
    };
    let Some(hls) = state.registry.room(&app, &room) else {
        return error(&state.stats, StatusCode::NOT_FOUND, "no such live room");
    };
    match lookup(&hls, file) {
        Some((body, content_type, cache)) => ok(&state.stats, file, body, content_type, cache),
        None => error(&state.stats, StatusCode::NOT_FOUND, "no such segment"),
    }
}

fn parse_names(app: &str, room: &str, file: &str) -> Result<(AppName, RoomName, HlsFile), String> {
    let app = AppName::new(app).map_err(|e| e.to_string())?;
    let room = RoomName::new(room).map_err(|e| e.to_string())?;
    let file = HlsFile::parse(file).ok_or_else(|| {
        "file must be index.m3u8, init.mp4, init-<n>.mp4 or seg-<n>.m4s".to_string()
    })?;
    Ok((app, room, file))
}

fn lookup(room: &HlsRoom, file: HlsFile) -> Option<(Bytes, &'static str, &'static str)> {
    match file {
        HlsFile::Playlist => Some((room.playlist(), PLAYLIST_TYPE, PLAYLIST_CACHE)),
        HlsFile::Init(version) => room.init(version).map(|b| (b, INIT_TYPE, MEDIA_CACHE)),
        HlsFile::Segment(n) => room.segment(n).map(|b| (b, SEGMENT_TYPE, MEDIA_CACHE)),
    }
}

fn ok(
    stats: &HlsStats,
    file: HlsFile,
    body: Bytes,
    content_type: &'static str,
    cache: &'static str,
) -> Response {
    let counter = match file {
        HlsFile::Playlist => &stats.playlists,
        HlsFile::Init(_) | HlsFile::Segment(_) => &stats.segments,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    stats
        .bytes_out
        .fetch_add(body.len() as u64, Ordering::Relaxed);
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
            (
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            ),
        ],
        body,
    )
        .into_response()
}

fn error(stats: &HlsStats, status: StatusCode, message: &str) -> Response {
    let code = match status {
        StatusCode::NOT_FOUND => {
            stats.not_found.fetch_add(1, Ordering::Relaxed);
            "not_found"
        }
        _ => {
            stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            "bad_request"
        }
    };
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static(PLAYLIST_CACHE),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            ),
        ],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::{HlsConfig, Segment};
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn setup() -> (Router, Arc<HlsRegistry>, Arc<HlsStats>) {
        let registry = Arc::new(HlsRegistry::new(HlsConfig::default()));
        let stats = Arc::new(HlsStats::default());
        let room = registry.start(
            &AppName::new("live").unwrap(),
            &RoomName::new("cam").unwrap(),
        );
        let session = room.session();
        room.set_init(session, Bytes::from_static(b"init-bytes"));
        for msn in [0, 2] {
            let segment = Segment {
                msn,
                duration_secs: 2.0,
                discontinuity: false,
                data: Bytes::from(format!("segment {msn}")),
            };
            room.publish(session, segment);
        }
        (router(registry.clone(), stats.clone()), registry, stats)
    }

    async fn get(app: &Router, uri: &str) -> (StatusCode, Option<String>, String, Bytes) {
        let req = Request::builder().uri(uri).body(Body::empty()).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        let cors = resp
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, ctype, cors, body)
    }

    fn envelope(body: &Bytes) -> (String, String) {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        let code = v["error"]["code"].as_str().unwrap().to_string();
        let message = v["error"]["message"].as_str().unwrap().to_string();
        (code, message)
    }

    #[tokio::test]
    async fn serves_playlist_init_and_segments() {
        let (app, _, stats) = setup();
        let (status, ctype, cors, body) = get(&app, "/hls/live/cam/index.m3u8").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ctype.as_deref(), Some(PLAYLIST_TYPE));
        assert_eq!(cors, "*");
        assert!(std::str::from_utf8(&body).unwrap().contains("seg-2.m4s"));

        let (status, ctype, _, body) = get(&app, "/hls/live/cam/init.mp4").await;
        assert_eq!(
            (status, ctype.as_deref()),
            (StatusCode::OK, Some(INIT_TYPE))
        );
        assert_eq!(body, "init-bytes");

        let req = Request::builder()
            .uri("/hls/live/cam/seg-2.m4s")
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], SEGMENT_TYPE);
        assert_eq!(resp.headers()[header::CACHE_CONTROL], MEDIA_CACHE);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        assert_eq!(body, "segment 2");

        assert_eq!(stats.requests.load(Ordering::Relaxed), 3);
        assert_eq!(stats.playlists.load(Ordering::Relaxed), 1);
        assert_eq!(stats.segments.load(Ordering::Relaxed), 2);
        assert!(stats.bytes_out.load(Ordering::Relaxed) > 19);
    }

    #[tokio::test]
    async fn unknown_room_and_segment_are_404() {
        let (app, _, stats) = setup();
        for uri in [
            "/hls/live/other/index.m3u8",
            "/hls/live/cam/seg-1.m4s",
            "/hls/live/cam/seg-99.m4s",
            "/hls/live/cam/init-3.mp4",
            "/hls/live/cam/a/b/index.m3u8",
            "/hls/live/index.m3u8",
        ] {
            let (status, ctype, _, body) = get(&app, uri).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
            assert_eq!(ctype.as_deref(), Some("application/json"), "{uri}");
            assert_eq!(envelope(&body).0, "not_found", "{uri}");
        }
        assert_eq!(stats.not_found.load(Ordering::Relaxed), 6);
    }

    #[tokio::test]
    async fn bad_names_and_traversal_are_400() {
        let (app, _, stats) = setup();
        for uri in [
            "/hls/../cam/index.m3u8",
            "/hls/live/../index.m3u8",
            "/hls/live/cam/..",
            "/hls/live%2F..%2Fx/cam/index.m3u8",
            "/hls/live/cam%2F..%2Fother/index.m3u8",
            "/hls/live/cam/..%2Findex.m3u8",
            "/hls/Live/cam/index.m3u8",
            "/hls/live/cam/seg-01.m4s",
            "/hls/live/cam/seg--1.m4s",
            "/hls/live/cam/seg-1.m4s.bak",
            "/hls/live/cam/seg-99999999999999999999999.m4s",
            "/hls/live/cam/index.m3u8%00",
            "/hls/live/cam/%ff",
            "/hls/live/cam/seg%2D2.m4s",
        ] {
            let (status, ctype, _, body) = get(&app, uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(ctype.as_deref(), Some("application/json"), "{uri}");
            let (code, message) = envelope(&body);
            assert_eq!(code, "bad_request", "{uri}");
            assert!(!message.is_empty());
        }
        assert_eq!(stats.bad_requests.load(Ordering::Relaxed), 14);
    }

    #[test]
    fn file_names_are_strict() {
        assert_eq!(HlsFile::parse("index.m3u8"), Some(HlsFile::Playlist));
        assert_eq!(HlsFile::parse("init.mp4"), Some(HlsFile::Init(None)));
        assert_eq!(HlsFile::parse("init-2.mp4"), Some(HlsFile::Init(Some(2))));
        assert_eq!(HlsFile::parse("seg-0.m4s"), Some(HlsFile::Segment(0)));
        assert_eq!(
            HlsFile::parse("seg-18446744073709551615.m4s"),
            Some(HlsFile::Segment(u64::MAX))
        );
        for bad in [
            "",
            "seg-.m4s",
            "seg-+1.m4s",
            "seg- 1.m4s",
            "SEG-1.m4s",
            "index.m3u",
            "init-.mp4",
        ] {
            assert_eq!(HlsFile::parse(bad), None, "{bad:?}");
        }
    }
}
