//! Serves HLS rooms over HTTP from memory: `GET /hls/{app}/{room}/{file}` where `file` is
//! `index.m3u8`, `init.mp4` (the current init), `init-<8 hex>.mp4`, `seg-<n>.m4s` or
//! `part-<n>.<i>.m4s`.
//!
//! Every body is a clone of a `Bytes` the packager produced: no copy, no render per request.
//! Names are validated strictly before any lookup: a bad app, room or file name is a 400, a
//! valid name that is not here is a 404, both with the JSON error envelope.
//!
//! LL-HLS (RFC 8216bis section 6.2.5.2): `index.m3u8?_HLS_msn=M[&_HLS_part=P]` is held until the
//! playlist has segment M (or its part P), at most three target durations (then 503); a request
//! for the next part (the preload hint) is held until the part exists. Held requests are bounded
//! per node and per client address; beyond, they are answered 503 at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::http::ClientAddr;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use streamhub_shared::{AppName, RoomName};

use super::{HlsRegistry, HlsRoom, Progress};

/// Counters of the HLS HTTP side, exported as Prometheus metrics.
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
    /// Partial segments served.
    pub parts: AtomicU64,
    /// Blocking requests that waited (playlist reloads and preload-hinted parts).
    pub blocked: AtomicU64,
    /// Requests answered 404.
    pub not_found: AtomicU64,
    /// Requests answered 400.
    pub bad_requests: AtomicU64,
    /// Requests answered 503 (held too long, or too many held).
    pub unavailable: AtomicU64,
    /// Requests held right now.
    pub held: AtomicU64,
}

/// Bounds of held (blocking) requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockingLimits {
    /// Requests held at once on this node.
    pub per_node: usize,
    /// Requests held at once for one client address.
    pub per_client: usize,
}

impl Default for BlockingLimits {
    fn default() -> Self {
        Self {
            per_node: 16_384,
            per_client: 4_096,
        }
    }
}

/// Something that makes a room's HLS available when a viewer asks for it (an edge starts a relay
/// subscription); origins package their own rooms and need none.
pub trait RoomOpener: Send + Sync + 'static {
    /// A viewer wants `app/room` from `client`: resolve it if possible. Called on every request,
    /// so it must be cheap when the room is already here.
    fn open(
        &self,
        app: &AppName,
        room: &RoomName,
        client: SocketAddr,
    ) -> futures::future::BoxFuture<'static, Option<Arc<HlsRoom>>>;
}

const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";
const INIT_TYPE: &str = "video/mp4";
const SEGMENT_TYPE: &str = "video/iso.segment";
/// Segments never change once named; the playlist changes with every part.
const MEDIA_CACHE: &str = "max-age=60";
const PLAYLIST_CACHE: &str = "no-cache";

/// A file of a room, parsed from its strict name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HlsFile {
    Playlist,
    /// `init.mp4` (`None`) or `init-<8 hex>.mp4`.
    Init(Option<u32>),
    Segment(u64),
    Part(u64, u32),
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
                    let ok =
                        v.len() == 8 && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                    return ok
                        .then(|| u32::from_str_radix(v, 16).ok())
                        .flatten()
                        .map(|v| Self::Init(Some(v)));
                }
                if let Some(p) = name
                    .strip_prefix("part-")
                    .and_then(|s| s.strip_suffix(".m4s"))
                {
                    let (msn, index) = p.split_once('.')?;
                    return Some(Self::Part(canonical_number(msn)?, canonical_number(index)?));
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

/// The blocking request directives of a playlist request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Directives {
    msn: Option<u64>,
    part: Option<u32>,
}

impl Directives {
    fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut d = Directives::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "_HLS_msn" => d.msn = Some(canonical_number(v).ok_or("_HLS_msn must be a number")?),
                "_HLS_part" => {
                    d.part = Some(canonical_number(v).ok_or("_HLS_part must be a number")?)
                }
                // Delta updates are not offered (no CAN-SKIP-UNTIL): a full playlist is valid.
                _ => {}
            }
        }
        if d.part.is_some() && d.msn.is_none() {
            return Err("_HLS_part needs _HLS_msn".into());
        }
        Ok(d)
    }
}

/// Counts held requests per node and per client; a permit releases its slot when dropped.
#[derive(Debug, Default)]
struct Holds {
    limits: BlockingLimits,
    stats: Arc<HlsStats>,
    // A std Mutex held for one counter update.
    state: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

struct HoldPermit<'a> {
    holds: &'a Holds,
    ip: IpAddr,
}

impl Holds {
    fn acquire(&self, ip: IpAddr) -> Option<HoldPermit<'_>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_ip) = &mut *state;
        let mine = per_ip.get(&ip).copied().unwrap_or(0);
        if *total >= self.limits.per_node || mine >= self.limits.per_client {
            return None;
        }
        *total += 1;
        self.stats.held.store(*total as u64, Ordering::Relaxed);
        per_ip.insert(ip, mine + 1);
        Some(HoldPermit { holds: self, ip })
    }
}

impl Drop for HoldPermit<'_> {
    fn drop(&mut self) {
        let mut state = self.holds.state.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_ip) = &mut *state;
        *total = total.saturating_sub(1);
        self.holds
            .stats
            .held
            .store(*total as u64, Ordering::Relaxed);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

#[derive(Clone)]
struct HttpState {
    registry: Arc<HlsRegistry>,
    stats: Arc<HlsStats>,
    opener: Option<Arc<dyn RoomOpener>>,
    holds: Arc<Holds>,
}

/// The routes serving every room of `registry`, counting into `stats`; `opener` makes rooms
/// available on demand (edges).
pub fn router(
    registry: Arc<HlsRegistry>,
    stats: Arc<HlsStats>,
    opener: Option<Arc<dyn RoomOpener>>,
    limits: BlockingLimits,
) -> Router {
    // One catch-all route parsed by hand: the raw path is checked before any percent-decoding,
    // so an encoded slash or dot can never reach a name.
    let holds = Arc::new(Holds {
        limits,
        stats: stats.clone(),
        state: Mutex::default(),
    });
    Router::new()
        .route("/hls/{*path}", get(serve))
        .with_state(HttpState {
            registry,
            stats,
            opener,
            holds,
        })
}

async fn serve(
    State(state): State<HttpState>,
    ClientAddr(client): ClientAddr,
    uri: Uri,
) -> Response {
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
    let directives = match file {
        HlsFile::Playlist => match Directives::parse(uri.query()) {
            Ok(d) => d,
            Err(message) => return error(&state.stats, StatusCode::BAD_REQUEST, &message),
        },
        _ => Directives::default(),
    };
    let hls = match state.registry.room(&app, &room) {
        Some(hls) => hls,
        None => match &state.opener {
            Some(opener) => match opener.open(&app, &room, client).await {
                Some(hls) => hls,
                None => return error(&state.stats, StatusCode::NOT_FOUND, "no such live room"),
            },
            None => return error(&state.stats, StatusCode::NOT_FOUND, "no such live room"),
        },
    };
    if let Some(opener) = &state.opener {
        // Keeps the relay subscription alive while viewers keep asking (cheap when open).
        let _ = opener.open(&app, &room, client).await;
    }
    match file {
        HlsFile::Playlist if directives.msn.is_some() => {
            blocking_playlist(&state, &hls, directives, client).await
        }
        HlsFile::Part(msn, index) => part(&state, &hls, msn, index, client).await,
        HlsFile::Playlist => {
            // A pull that has just started lists its back-filled window a moment later: a short
            // or empty playlist would send the player to the wrong place, or look like an error.
            if let Some(until) = settling(&state, &hls) {
                let settled = || hls.settled();
                if let Err(refused) = hold_until(&state, &hls, client, until, settled).await {
                    return refused;
                }
            }
            let (body, content_type, cache) = (hls.playlist(), PLAYLIST_TYPE, PLAYLIST_CACHE);
            ok(&state.stats, file, body, content_type, cache)
        }
        HlsFile::Segment(msn) => match lookup(&hls, file) {
            Some((body, content_type, cache)) => ok(&state.stats, file, body, content_type, cache),
            None => missing(&state, &hls, client, file, msn, None).await,
        },
        HlsFile::Init(_) => match lookup(&hls, file) {
            Some((body, content_type, cache)) => ok(&state.stats, file, body, content_type, cache),
            None => error(&state.stats, StatusCode::NOT_FOUND, "no such segment"),
        },
    }
}

/// How long after a pull starts here a request for a segment or part of its window that is not
/// here yet is held: the back-filled window arrives within a round trip or two.
pub const BACKFILL_HOLD: Duration = Duration::from_secs(2);

/// Until when a room that a node pulling rooms (an edge) has just started is settling: its
/// back-fill on the way (see [`HlsRoom::settled`]), for at most [`BACKFILL_HOLD`]. A node that
/// packages its own rooms has nothing coming.
fn settling(state: &HttpState, hls: &HlsRoom) -> Option<tokio::time::Instant> {
    state.opener.as_ref()?;
    let until = hls.started_at() + BACKFILL_HOLD;
    (Instant::now() < until && !hls.settled()).then(|| tokio::time::Instant::from_std(until))
}

/// A segment (or part) this node does not have. Held, not refused, when it will exist soon: the
/// segment being cut or the next two (a viewer moved here from another node asks for what it
/// would ask for there), within the hold bounds; or any of the window while a new pull's
/// back-fill is on its way. 404 for the rest: what no node has.
async fn missing(
    state: &HttpState,
    hls: &HlsRoom,
    client: SocketAddr,
    file: HlsFile,
    msn: u64,
    part: Option<u32>,
) -> Response {
    let what = if part.is_some() {
        "no such part"
    } else {
        "no such segment"
    };
    let here = || match part {
        None => hls.segment(msn).is_some(),
        Some(i) => hls.part(msn, i).is_some(),
    };
    loop {
        if here() || hls.is_ended() {
            break;
        }
        let now = *hls.subscribe().borrow();
        let ahead = now.last_segment.is_none_or(|s| msn > s);
        let soon = ahead && now.last_msn().is_none_or(|l| msn <= l.saturating_add(2));
        if soon && hls.settled() {
            // Held until it exists (or the progress passes it without it: a lost group).
            let until = tokio::time::Instant::now() + hold_limit(hls);
            let done = || here() || hls.subscribe().borrow().has(msn, part);
            if let Err(refused) = hold_until(state, hls, client, until, done).await {
                return refused;
            }
            break;
        }
        let Some(until) = settling(state, hls) else {
            break;
        };
        // The back-fill may bring it; once the pull has settled, look again.
        let done = || here() || hls.settled();
        if let Err(refused) = hold_until(state, hls, client, until, done).await {
            return refused;
        }
        if !hls.settled() {
            break;
        }
    }
    match lookup(hls, file) {
        Some((body, content_type, cache)) => ok(&state.stats, file, body, content_type, cache),
        None => error(&state.stats, StatusCode::NOT_FOUND, what),
    }
}

/// Holds a request until `ready` or `until`, looking again at each change of the room's
/// progress, within the per-node and per-client bounds of held requests (the 503 when they are
/// reached). `ready` runs outside the progress lock (it may look at the room).
async fn hold_until(
    state: &HttpState,
    hls: &HlsRoom,
    client: SocketAddr,
    until: tokio::time::Instant,
    mut ready: impl FnMut() -> bool,
) -> Result<(), Response> {
    if ready() {
        return Ok(());
    }
    let Some(_permit) = state.holds.acquire(client.ip()) else {
        return Err(error(
            &state.stats,
            StatusCode::SERVICE_UNAVAILABLE,
            "too many held requests",
        ));
    };
    state.stats.blocked.fetch_add(1, Ordering::Relaxed);
    let mut progress = hls.subscribe();
    while !ready() {
        match tokio::time::timeout_at(until, progress.changed()).await {
            Ok(Ok(())) => {}
            // Past `until`, or the room is gone.
            _ => break,
        }
    }
    Ok(())
}

/// How long a blocking request may be held: three target durations (RFC 8216bis).
fn hold_limit(hls: &HlsRoom) -> Duration {
    hls.config().target_duration.saturating_mul(3)
}

/// Holds a request until segment `msn` (part `part`, if given) exists, for at most
/// [`hold_limit`], within the per-node and per-client bounds: whether it appeared, or the 503
/// when the bound is reached (the request is refused at once, never queued).
async fn hold(
    state: &HttpState,
    hls: &HlsRoom,
    client: SocketAddr,
    msn: u64,
    part: Option<u32>,
) -> Result<bool, Response> {
    let until = tokio::time::Instant::now() + hold_limit(hls);
    let appeared = || hls.subscribe().borrow().has(msn, part);
    hold_until(state, hls, client, until, appeared).await?;
    Ok(appeared())
}

async fn blocking_playlist(
    state: &HttpState,
    hls: &HlsRoom,
    d: Directives,
    client: SocketAddr,
) -> Response {
    let msn = d.msn.unwrap_or(0);
    let mut progress = hls.subscribe();
    let now = *progress.borrow_and_update();
    if let Err(message) = check_advance(&now, msn, d.part) {
        return error(&state.stats, StatusCode::BAD_REQUEST, &message);
    }
    if !now.has(msn, d.part) && !hls.is_ended() {
        let appeared = match hold(state, hls, client, msn, d.part).await {
            Ok(appeared) => appeared,
            Err(refused) => return refused,
        };
        if !appeared && !hls.is_ended() {
            let message = "the requested segment or part did not appear in time";
            return error(&state.stats, StatusCode::SERVICE_UNAVAILABLE, message);
        }
    }
    ok(
        &state.stats,
        HlsFile::Playlist,
        hls.playlist(),
        PLAYLIST_TYPE,
        PLAYLIST_CACHE,
    )
}

/// Refuses directives too far ahead of the playlist (RFC 8216bis: more than two segments past
/// the last one, or more than the Advance Part Limit of three parts past the last part).
fn check_advance(now: &Progress, msn: u64, part: Option<u32>) -> Result<(), String> {
    let last = now.last_msn();
    if msn > last.map_or(2, |l| l.saturating_add(2)) {
        return Err(format!(
            "_HLS_msn {msn} is too far ahead of the playlist ({last:?})"
        ));
    }
    if let (Some(p), Some((open, parts))) = (part, now.open) {
        if msn == open && p > parts.saturating_add(3) {
            return Err(format!(
                "_HLS_part {p} is too far ahead of the open segment ({parts} parts)"
            ));
        }
    }
    Ok(())
}

async fn part(
    state: &HttpState,
    hls: &HlsRoom,
    msn: u64,
    index: u32,
    client: SocketAddr,
) -> Response {
    if let Some(body) = hls.part(msn, index) {
        return ok(
            &state.stats,
            HlsFile::Part(msn, index),
            body,
            SEGMENT_TYPE,
            MEDIA_CACHE,
        );
    }
    // Only the hinted part (or the one right after it) is worth waiting for.
    let hinted = hls.next_part().is_some_and(|(m, i)| {
        (m == msn && (i == index || i + 1 == index)) || (m + 1 == msn && index == 0)
    });
    if !hinted || hls.is_ended() {
        return missing(
            state,
            hls,
            client,
            HlsFile::Part(msn, index),
            msn,
            Some(index),
        )
        .await;
    }
    if let Err(refused) = hold(state, hls, client, msn, Some(index)).await {
        return refused;
    }
    match hls.part(msn, index) {
        Some(body) => ok(
            &state.stats,
            HlsFile::Part(msn, index),
            body,
            SEGMENT_TYPE,
            MEDIA_CACHE,
        ),
        None => error(&state.stats, StatusCode::NOT_FOUND, "no such part"),
    }
}

fn parse_names(app: &str, room: &str, file: &str) -> Result<(AppName, RoomName, HlsFile), String> {
    let (app, room) = crate::http::room_names(app, room)?;
    let file = HlsFile::parse(file).ok_or_else(|| {
        "file must be index.m3u8, init.mp4, init-<8 hex>.mp4, seg-<n>.m4s or part-<n>.<i>.m4s"
            .to_string()
    })?;
    Ok((app, room, file))
}

fn lookup(room: &HlsRoom, file: HlsFile) -> Option<(Bytes, &'static str, &'static str)> {
    match file {
        HlsFile::Playlist => Some((room.playlist(), PLAYLIST_TYPE, PLAYLIST_CACHE)),
        HlsFile::Init(id) => room.init(id).map(|b| (b, INIT_TYPE, MEDIA_CACHE)),
        HlsFile::Segment(n) => room.segment(n).map(|b| (b, SEGMENT_TYPE, MEDIA_CACHE)),
        HlsFile::Part(n, i) => room.part(n, i).map(|b| (b, SEGMENT_TYPE, MEDIA_CACHE)),
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
        HlsFile::Part(..) => &stats.parts,
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
    let counter = match status {
        StatusCode::NOT_FOUND => &stats.not_found,
        StatusCode::SERVICE_UNAVAILABLE => &stats.unavailable,
        _ => &stats.bad_requests,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    crate::http::error(status, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::{HlsConfig, Part, Segment};
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    const INIT: &[u8] = b"init-bytes";

    fn part(msn: u64, index: u32) -> Part {
        Part {
            msn,
            index,
            duration_secs: 0.25,
            independent: index == 0,
            discontinuity: false,
            data: Bytes::from(format!("part {msn}.{index};")),
        }
    }

    struct Setup {
        app: Router,
        room: Arc<HlsRoom>,
        stats: Arc<HlsStats>,
        init: u32,
    }

    impl Setup {
        fn publish_part(&self, msn: u64, index: u32) {
            self.room
                .publish_part(self.room.session(), self.init, part(msn, index));
        }
    }

    /// Segment 0 complete (2 parts), segment 1 open with one part.
    fn setup_with(config: HlsConfig, limits: BlockingLimits) -> Setup {
        let registry = Arc::new(HlsRegistry::new(config, Arc::default()));
        let stats = Arc::new(HlsStats::default());
        let room = registry.start(
            &AppName::new("live").unwrap(),
            &RoomName::new("cam").unwrap(),
        );
        let session = room.session();
        let init = room.set_init(session, Bytes::from_static(INIT)).unwrap();
        let s = Setup {
            app: router(registry, stats.clone(), None, limits),
            room,
            stats,
            init,
        };
        s.publish_part(0, 0);
        s.publish_part(0, 1);
        let segment = Segment {
            msn: 0,
            duration_secs: 0.5,
            discontinuity: false,
            parts: 2,
            data: Bytes::from_static(b"part 0.0;part 0.1;"),
        };
        s.room.publish(session, init, segment);
        s.publish_part(1, 0);
        s
    }

    fn setup() -> Setup {
        setup_with(HlsConfig::default(), BlockingLimits::default())
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
    async fn serves_playlist_init_segments_and_parts() {
        let s = setup();
        let (status, ctype, cors, body) = get(&s.app, "/hls/live/cam/index.m3u8").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ctype.as_deref(), Some(PLAYLIST_TYPE));
        assert_eq!(cors, "*");
        let text = std::str::from_utf8(&body).unwrap();
        assert!(
            text.contains("seg-0.m4s") && text.contains("part-1.0.m4s"),
            "{text}"
        );
        let map = format!("init-{:08x}.mp4", s.init);
        assert!(text.contains(&map), "{text}");

        for uri in [
            "/hls/live/cam/init.mp4".to_string(),
            format!("/hls/live/cam/{map}"),
        ] {
            let (status, ctype, _, body) = get(&s.app, &uri).await;
            assert_eq!(
                (status, ctype.as_deref()),
                (StatusCode::OK, Some(INIT_TYPE))
            );
            assert_eq!(body, INIT);
        }
        let (status, ctype, _, body) = get(&s.app, "/hls/live/cam/seg-0.m4s").await;
        assert_eq!(
            (status, ctype.as_deref()),
            (StatusCode::OK, Some(SEGMENT_TYPE))
        );
        let (_, _, _, p0) = get(&s.app, "/hls/live/cam/part-0.0.m4s").await;
        let (_, _, _, p1) = get(&s.app, "/hls/live/cam/part-0.1.m4s").await;
        assert_eq!(
            [p0, p1].concat(),
            body.to_vec(),
            "parts concatenate to the segment"
        );

        assert_eq!(s.stats.playlists.load(Ordering::Relaxed), 1);
        assert_eq!(s.stats.segments.load(Ordering::Relaxed), 3);
        assert_eq!(s.stats.parts.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn blocking_reload_returns_when_the_part_exists_and_not_before() {
        let s = setup();
        let app = s.app.clone();
        let held = tokio::spawn(async move {
            get(&app, "/hls/live/cam/index.m3u8?_HLS_msn=1&_HLS_part=1").await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!held.is_finished(), "answered before part 1.1 existed");
        s.publish_part(1, 1);
        let (status, _, _, body) = tokio::time::timeout(Duration::from_secs(2), held)
            .await
            .expect("answered once the part exists")
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(std::str::from_utf8(&body).unwrap().contains("part-1.1.m4s"));
        // already there: answered at once
        let (status, _, _, _) = get(&s.app, "/hls/live/cam/index.m3u8?_HLS_msn=0").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(s.stats.blocked.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn the_segment_being_cut_is_held_until_it_exists() {
        let s = setup();
        let app = s.app.clone();
        // Segment 1 is open: a viewer moved here from another node may ask for it already.
        let held = tokio::spawn(async move { get(&app, "/hls/live/cam/seg-1.m4s").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!held.is_finished());
        s.publish_part(1, 1);
        let segment = Segment {
            msn: 1,
            duration_secs: 0.5,
            discontinuity: false,
            parts: 2,
            data: Bytes::from_static(b"part 1.0;part 1.1;"),
        };
        s.room.publish(s.room.session(), s.init, segment);
        let (status, _, _, body) = held.await.unwrap();
        assert_eq!(
            (status, body),
            (StatusCode::OK, Bytes::from("part 1.0;part 1.1;"))
        );
        // More than two segments ahead: nothing to wait for.
        let (status, _, _, _) = get(&s.app, "/hls/live/cam/seg-5.m4s").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn preload_hinted_part_is_held_until_it_exists() {
        let s = setup();
        let app = s.app.clone();
        let held = tokio::spawn(async move { get(&app, "/hls/live/cam/part-1.1.m4s").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!held.is_finished());
        s.publish_part(1, 1);
        let (status, _, _, body) = held.await.unwrap();
        assert_eq!((status, body), (StatusCode::OK, Bytes::from("part 1.1;")));
        // far from the hint: 404 at once
        let (status, _, _, _) = get(&s.app, "/hls/live/cam/part-9.0.m4s").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn bad_directives_are_400_and_timeouts_503() {
        let config = HlsConfig {
            target_duration: Duration::from_millis(100),
            ..HlsConfig::default()
        };
        let s = setup_with(config, BlockingLimits::default());
        for q in [
            "_HLS_msn=4",
            "_HLS_msn=1&_HLS_part=5",
            "_HLS_part=1",
            "_HLS_msn=x",
            "_HLS_msn=01",
            "_HLS_msn=1&_HLS_part=-1",
        ] {
            let (status, _, _, body) = get(&s.app, &format!("/hls/live/cam/index.m3u8?{q}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{q}");
            assert_eq!(envelope(&body).0, "bad_request");
        }
        let started = std::time::Instant::now();
        let (status, _, _, body) = get(&s.app, "/hls/live/cam/index.m3u8?_HLS_msn=3").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(envelope(&body).0, "unavailable");
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "held 3 target durations"
        );
    }

    #[tokio::test]
    async fn held_requests_are_bounded_per_client() {
        let limits = BlockingLimits {
            per_node: 100,
            per_client: 2,
        };
        let s = setup_with(HlsConfig::default(), limits);
        let held: Vec<_> = (0..2)
            .map(|_| {
                let app = s.app.clone();
                tokio::spawn(async move {
                    get(&app, "/hls/live/cam/index.m3u8?_HLS_msn=2&_HLS_part=0")
                        .await
                        .0
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, _, _, _) = get(&s.app, "/hls/live/cam/index.m3u8?_HLS_msn=2").await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "a third hold is refused at once"
        );
        let (status, _, _, _) = get(&s.app, "/hls/live/cam/index.m3u8").await;
        assert_eq!(status, StatusCode::OK, "plain reloads still work");
        s.publish_part(1, 1);
        s.room.publish(
            s.room.session(),
            s.init,
            Segment {
                msn: 1,
                duration_secs: 0.5,
                discontinuity: false,
                parts: 2,
                data: Bytes::new(),
            },
        );
        s.publish_part(2, 0);
        for h in held {
            assert_eq!(h.await.unwrap(), StatusCode::OK);
        }
        let (status, _, _, _) =
            get(&s.app, "/hls/live/cam/index.m3u8?_HLS_msn=2&_HLS_part=0").await;
        assert_eq!(status, StatusCode::OK, "slots are released");
    }

    #[tokio::test]
    async fn unknown_room_and_segment_are_404() {
        let s = setup();
        for uri in [
            "/hls/live/other/index.m3u8",
            "/hls/live/cam/seg-4.m4s",
            "/hls/live/cam/seg-99.m4s",
            "/hls/live/cam/init-00000003.mp4",
            "/hls/live/cam/a/b/index.m3u8",
            "/hls/live/index.m3u8",
        ] {
            let (status, ctype, _, body) = get(&s.app, uri).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
            assert_eq!(ctype.as_deref(), Some("application/json"), "{uri}");
            assert_eq!(envelope(&body).0, "not_found", "{uri}");
        }
        assert_eq!(s.stats.not_found.load(Ordering::Relaxed), 6);
    }

    #[tokio::test]
    async fn bad_names_and_traversal_are_400() {
        let s = setup();
        let bad = [
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
            "/hls/live/cam/init-3.mp4",
            "/hls/live/cam/init-0000000G.mp4",
            "/hls/live/cam/part-1.m4s",
            "/hls/live/cam/part-1.01.m4s",
        ];
        for uri in bad {
            let (status, ctype, _, body) = get(&s.app, uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(ctype.as_deref(), Some("application/json"), "{uri}");
            let (code, message) = envelope(&body);
            assert_eq!(code, "bad_request", "{uri}");
            assert!(!message.is_empty());
        }
        assert_eq!(
            s.stats.bad_requests.load(Ordering::Relaxed),
            bad.len() as u64
        );
    }

    #[test]
    fn file_names_are_strict() {
        assert_eq!(HlsFile::parse("index.m3u8"), Some(HlsFile::Playlist));
        assert_eq!(HlsFile::parse("init.mp4"), Some(HlsFile::Init(None)));
        assert_eq!(
            HlsFile::parse("init-00ab12ff.mp4"),
            Some(HlsFile::Init(Some(0x00ab_12ff)))
        );
        assert_eq!(HlsFile::parse("seg-0.m4s"), Some(HlsFile::Segment(0)));
        assert_eq!(HlsFile::parse("part-7.3.m4s"), Some(HlsFile::Part(7, 3)));
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
            "init-ABCDEF12.mp4",
            "part-1..m4s",
            "part-.1.m4s",
            "part-1.2.3.m4s",
        ] {
            assert_eq!(HlsFile::parse(bad), None, "{bad:?}");
        }
    }
}
