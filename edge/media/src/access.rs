//! Who may watch: every request under `/hls/{app}/{room}/…`, `/live/{app}/{room}/…` and
//! `/whep/{app}/{room}` passes [`check`] before it is served, on origins and edges alike. In
//! order:
//!
//! 1. the room's **access** ([`RoomAccess`]: the app's playback mode, the room's backstage and
//!    hosts, the app's viewer quota), from the state (an origin) or an origin (an edge),
//!    remembered for a second ([`RoomPolicies`]);
//! 2. a presented **viewer token** (`?token=` or `Authorization: Bearer`) is verified:
//!    signature, expiry, issuer, room (`<app>-<room>`) and `canSubscribe` (401 if not);
//! 3. an app with `playback: token` needs one (401);
//! 4. a room in **backstage** is watched by its hosts only: a token whose identity is a host
//!    member, or that may publish there (425 Too Early for everyone else);
//! 5. the app's **viewer quota**: a viewer not already counted is refused (429) once the app's
//!    viewers, this node's now plus what the other nodes last reported, reach it; a play
//!    token's own cap (`maxViewers`) is counted per node.
//!
//! An HLS playlist fetched with `?token=` gets the token added to every URI it lists, so
//! players that know nothing of tokens (ffmpeg, VLC, hls.js, Safari) send it with every segment,
//! part and rendition request.
//!
//! Who verifies tokens: an origin with the app's keys (both signatures); an edge with the app's
//! public key for EdDSA tokens (offline), and by asking an origin for HS256 (LiveKit) tokens,
//! whose secret it never holds ([`TokenVerifier`]).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use futures::future::BoxFuture;
use streamhub_cluster::query::RoomAccess;
use streamhub_cluster::state::Playback;
use streamhub_shared::auth::AccessClaims;
use streamhub_shared::{AppName, RoomName};

use crate::http::error;

/// Checks an app's access tokens: signature, expiry and issuer.
pub trait TokenVerifier: Send + Sync + 'static {
    /// The claims of `token` if it is a valid token of `app`, else why not.
    fn verify(
        &self,
        app: &AppName,
        token: &str,
    ) -> BoxFuture<'static, Result<Arc<AccessClaims>, String>>;

    /// The claims of `token` if this verifier has them at hand (verified before and still
    /// valid): the common case of a player's every request, answered without a future.
    fn remembered(&self, _app: &AppName, _token: &str) -> Option<Arc<AccessClaims>> {
        None
    }
}

/// Says who may watch a room.
pub trait RoomPolicies: Send + Sync + 'static {
    /// The access of `app/room`: `Ok(None)` for an unknown app, `Err` when it cannot be
    /// known now (no origin answers).
    fn access(
        &self,
        app: &AppName,
        room: &RoomName,
    ) -> BoxFuture<'static, Result<Option<Arc<RoomAccess>>, String>>;

    /// The access of `app/room` if this policy source has it at hand (see
    /// [`TokenVerifier::remembered`]).
    fn remembered(&self, _app: &AppName, _room: &RoomName) -> Option<Option<Arc<RoomAccess>>> {
        None
    }
}

/// How long a verified token is remembered (at most; never past its expiry). A token of an app
/// deleted meanwhile plays on for at most this long.
const VERIFIED_TTL: Duration = Duration::from_secs(30);

/// A [`TokenVerifier`] that remembers what `inner` verified: a player presents the same token
/// with every playlist and segment request, and an Ed25519 verification costs ~40 µs where a
/// lookup costs ~1 µs (see docs/benchmarks.md). Refusals are not remembered.
pub struct Remembering<V> {
    inner: Arc<V>,
    /// By the token itself (a lookup by `&str` hashes it once and allocates nothing), with the
    /// app it was verified for: a hit for another app is a miss.
    verified: moka::sync::Cache<String, (AppName, Arc<AccessClaims>)>,
}

impl<V: TokenVerifier> Remembering<V> {
    /// Remembers up to 100 000 verified tokens of `inner`.
    pub fn new(inner: V) -> Self {
        Self {
            inner: Arc::new(inner),
            verified: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(VERIFIED_TTL)
                .build(),
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl<V: TokenVerifier> TokenVerifier for Remembering<V> {
    fn verify(
        &self,
        app: &AppName,
        token: &str,
    ) -> BoxFuture<'static, Result<Arc<AccessClaims>, String>> {
        if let Some(claims) = self.remembered(app, token) {
            return Box::pin(std::future::ready(Ok(claims)));
        }
        let (inner, cache) = (self.inner.clone(), self.verified.clone());
        let (app, token) = (app.clone(), token.to_string());
        Box::pin(async move {
            let claims = inner.verify(&app, &token).await?;
            cache.insert(token, (app, claims.clone()));
            Ok(claims)
        })
    }

    fn remembered(&self, app: &AppName, token: &str) -> Option<Arc<AccessClaims>> {
        self.verified
            .get(token)
            .filter(|(verified_for, claims)| verified_for == app && claims.exp > unix_now())
            .map(|(_, claims)| claims)
    }
}

/// How long a room's access is remembered: a go-live, a playback mode change or a quota reaches
/// every node within this (plus an edge's refresh of the load reports).
pub const ACCESS_TTL: Duration = Duration::from_secs(1);
/// How long an edge keeps using a room's last known access while no origin answers.
const ACCESS_STALE: Duration = Duration::from_secs(600);

/// A [`RoomPolicies`] that remembers what `inner` said for [`ACCESS_TTL`], and the last answer
/// for [`ACCESS_STALE`] when `inner` fails (an edge whose origins are unreachable keeps its
/// viewers' rules rather than opening or closing every room).
pub struct RememberingAccess<P> {
    inner: Arc<P>,
    /// What was said less than [`ACCESS_TTL`] ago: read without a future on every request.
    fresh: moka::sync::Cache<(AppName, RoomName), Option<Arc<RoomAccess>>>,
    /// The questions on their way: concurrent misses of one room ask `inner` once.
    asking: moka::future::Cache<(AppName, RoomName), Option<Arc<RoomAccess>>>,
    last: moka::future::Cache<(AppName, RoomName), Option<Arc<RoomAccess>>>,
}

impl<P: RoomPolicies> RememberingAccess<P> {
    /// Remembers up to 100 000 rooms' access.
    pub fn new(inner: P) -> Self {
        Self {
            inner: Arc::new(inner),
            fresh: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ACCESS_TTL)
                .build(),
            asking: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ACCESS_TTL)
                .build(),
            last: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ACCESS_STALE)
                .build(),
        }
    }
}

impl<P: RoomPolicies> RoomPolicies for RememberingAccess<P> {
    fn access(
        &self,
        app: &AppName,
        room: &RoomName,
    ) -> BoxFuture<'static, Result<Option<Arc<RoomAccess>>, String>> {
        if let Some(access) = self.remembered(app, room) {
            return Box::pin(std::future::ready(Ok(access)));
        }
        let key = (app.clone(), room.clone());
        let (inner, fresh, asking, last) = (
            self.inner.clone(),
            self.fresh.clone(),
            self.asking.clone(),
            self.last.clone(),
        );
        Box::pin(async move {
            let ask = {
                let (key, last) = (key.clone(), last.clone());
                async move {
                    let access = inner.access(&key.0, &key.1).await?;
                    last.insert(key.clone(), access.clone()).await;
                    fresh.insert(key, access.clone());
                    Ok::<_, String>(access)
                }
            };
            let asked = asking.try_get_with(key.clone(), ask).await;
            // The answer is in `fresh` now; a later miss asks again.
            asking.invalidate(&key).await;
            match asked {
                Ok(access) => Ok(access),
                Err(e) => match last.get(&key).await {
                    Some(known) => Ok(known),
                    None => Err(e.to_string()),
                },
            }
        })
    }

    fn remembered(&self, app: &AppName, room: &RoomName) -> Option<Option<Arc<RoomAccess>>> {
        self.fresh.get(&(app.clone(), room.clone()))
    }
}

/// Checks that verified `claims` let a viewer watch `app/room`.
pub fn viewer_grant(claims: &AccessClaims, app: &AppName, room: &RoomName) -> Result<(), String> {
    // `<app>-<room>`, compared without building it.
    let for_this = claims
        .video
        .room
        .strip_prefix(app.as_str())
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|r| r == room.as_str());
    if !for_this {
        return Err(format!(
            "the token is for room {:?}, not {:?}",
            claims.video.room,
            format!("{app}-{room}")
        ));
    }
    if !claims.video.can_subscribe {
        return Err("the token does not allow subscribing".into());
    }
    Ok(())
}

/// A presented token: where it came from matters to the playlist rewrite.
struct Presented {
    token: String,
    in_query: bool,
}

/// The token a request presents, if any: any non-empty `token=` of the query, else a Bearer
/// header (an empty query value cannot hide a header).
fn presented(req: &Request) -> Option<Presented> {
    let from_query = req.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, v)| k == "token" && !v.is_empty())
            .map(|(_, v)| v.into_owned())
    });
    match from_query {
        Some(token) => Some(Presented {
            token,
            in_query: true,
        }),
        None => crate::http::bearer(req.headers()).map(|t| Presented {
            token: t.to_string(),
            in_query: false,
        }),
    }
}

/// What a playback path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `/hls/…`: the playlist when `playlist`.
    Hls { playlist: bool },
    /// `/live/…`: MJPEG streams and frames.
    Live,
    /// `/whep/…`.
    Whep,
    /// `/play/…` and `/embed/…`: the player page (tokens and playback mode only; the page
    /// itself waits through backstage).
    Page,
    /// `/live/{app}/{room}/info`: what the room carries, for players choosing a protocol
    /// (token and backstage checked, not counted as a viewer).
    Info,
}

/// The app and room of a playback path (`/hls/{app}/{room}/…`, `/live/{app}/{room}/…`), read
/// the way the routes read it (percent-decoded), so an encoded name cannot slip past the check.
fn room_of(path: &str) -> Option<(AppName, RoomName, Kind)> {
    let (kind, rest) = if let Some(r) = path.strip_prefix("/hls/") {
        let playlist = r.ends_with(".m3u8");
        (Kind::Hls { playlist }, r)
    } else if let Some(r) = path.strip_prefix("/live/") {
        if r.ends_with("/info") {
            (Kind::Info, r)
        } else {
            (Kind::Live, r)
        }
    } else if let Some(r) = path.strip_prefix("/whep/") {
        (Kind::Whep, r)
    } else if let Some(r) = path
        .strip_prefix("/play/")
        .or_else(|| path.strip_prefix("/embed/"))
    {
        (Kind::Page, r)
    } else {
        return None;
    };
    let mut it = rest.split('/');
    let decode = |s: &str| -> Option<String> {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    let (app, room) = (decode(it.next()?)?, decode(it.next()?)?);
    Some((AppName::new(app).ok()?, RoomName::new(room).ok()?, kind))
}

/// The longest token accepted (LiveKit tokens are a few hundred bytes).
const MAX_TOKEN_LEN: usize = 4096;

/// A viewer not seen for this long is no longer counted.
pub const VIEWER_TTL: Duration = Duration::from_secs(10);
/// Viewers tracked per app (the count saturates there).
const MAX_VIEWERS_PER_APP: usize = 100_000;
/// Apps tracked per node.
const MAX_APPS: usize = 10_000;

/// Who a viewer is, for counting: a token's identity, a play token's identity with the client
/// address (one play token is shared by many anonymous viewers), or the client address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ViewerKey {
    Identity(String),
    Anonymous(Option<String>, IpAddr),
}

/// How a viewer watches, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ViewProtocol {
    Hls,
    /// A part, a preload hint or a blocking playlist reload (`_HLS_msn`).
    LlHls,
    Whep,
    /// MJPEG streams and `frame.jpg`.
    Mjpeg,
}

impl ViewProtocol {
    pub const ALL: &'static [Self] = &[Self::Hls, Self::LlHls, Self::Whep, Self::Mjpeg];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hls => "hls",
            Self::LlHls => "ll-hls",
            Self::Whep => "whep",
            Self::Mjpeg => "mjpeg",
        }
    }
}

/// A viewer's last request: when, which room, how.
struct Seen {
    at: Instant,
    room: RoomName,
    protocol: ViewProtocol,
}

#[derive(Default)]
struct AppViewers {
    recent: HashMap<ViewerKey, Seen>,
    /// Viewers holding a stream open (MJPEG, WHEP sessions), by room and protocol.
    streams: HashMap<(RoomName, ViewProtocol), usize>,
    /// Media bytes sent to this app's viewers (kept while the app is tracked: a counter).
    egress: Arc<AtomicU64>,
}

impl AppViewers {
    fn prune(&mut self, now: Instant) {
        if let Some(deadline) = now.checked_sub(VIEWER_TTL) {
            self.recent.retain(|_, s| s.at > deadline);
        }
    }

    fn count(&self) -> u64 {
        (self.recent.len() + self.streams.values().sum::<usize>()) as u64
    }
}

/// Viewers of one room by protocol, as [`ViewerTracker::rooms`] gives them.
pub type RoomViewers = BTreeMap<(RoomName, ViewProtocol), u64>;

/// This node's viewers per app: what its load reports say and what its quota checks count.
#[derive(Default)]
pub struct ViewerTracker {
    // A std Mutex held for a map update, never across an `.await`.
    apps: Mutex<HashMap<AppName, AppViewers>>,
}

impl ViewerTracker {
    fn apps(&self) -> std::sync::MutexGuard<'_, HashMap<AppName, AppViewers>> {
        self.apps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `key` as a viewer of `app/room` by `protocol` now; the app's egress counter (none
    /// once [`MAX_APPS`] are tracked).
    fn touch(
        &self,
        app: &AppName,
        room: &RoomName,
        protocol: ViewProtocol,
        key: ViewerKey,
        now: Instant,
    ) -> Option<Arc<AtomicU64>> {
        let mut apps = self.apps();
        if !apps.contains_key(app) {
            if apps.len() >= MAX_APPS {
                return None;
            }
            apps.insert(app.clone(), AppViewers::default());
        }
        let viewers = apps.get_mut(app)?;
        // A known viewer is updated in place: one hash, nothing allocated.
        let full = viewers.recent.len() >= MAX_VIEWERS_PER_APP;
        match viewers.recent.get_mut(&key) {
            Some(seen) => {
                seen.at = now;
                seen.protocol = protocol;
                if seen.room != *room {
                    seen.room = room.clone();
                }
            }
            None if !full => {
                let seen = Seen {
                    at: now,
                    room: room.clone(),
                    protocol,
                };
                viewers.recent.insert(key, seen);
            }
            None => {}
        }
        Some(viewers.egress.clone())
    }

    /// Whether `key` counts as a viewer of `app` now.
    fn knows(&self, app: &AppName, key: &ViewerKey, now: Instant) -> bool {
        let apps = self.apps();
        let deadline = now.checked_sub(VIEWER_TTL);
        apps.get(app)
            .and_then(|v| v.recent.get(key))
            .is_some_and(|s| deadline.is_none_or(|d| s.at > d))
    }

    /// Viewers of `app` on this node now.
    pub fn count(&self, app: &AppName, now: Instant) -> u64 {
        let mut apps = self.apps();
        apps.get_mut(app).map_or(0, |v| {
            v.prune(now);
            v.count()
        })
    }

    /// Viewers with a play token's identity `sub` on this node now.
    fn count_play(&self, app: &AppName, sub: &str, now: Instant) -> usize {
        let deadline = now.checked_sub(VIEWER_TTL);
        self.apps().get(app).map_or(0, |v| {
            v.recent
                .iter()
                .filter(|(k, seen)| {
                    matches!(k, ViewerKey::Anonymous(Some(s), _) if s == sub)
                        && deadline.is_none_or(|d| seen.at > d)
                })
                .count()
        })
    }

    /// Holds a streaming viewer of `app/room` by `protocol` while the guard lives.
    pub fn hold(
        self: &Arc<Self>,
        app: &AppName,
        room: &RoomName,
        protocol: ViewProtocol,
    ) -> ViewerHold {
        let mut apps = self.apps();
        let viewers = apps.entry(app.clone()).or_default();
        *viewers.streams.entry((room.clone(), protocol)).or_default() += 1;
        ViewerHold {
            tracker: self.clone(),
            app: app.clone(),
            room: room.clone(),
            protocol,
            egress: viewers.egress.clone(),
        }
    }

    /// Viewers per app now, by room and protocol (apps with none left out).
    pub fn rooms(&self, now: Instant) -> BTreeMap<AppName, RoomViewers> {
        let mut apps = self.apps();
        let mut out = BTreeMap::new();
        for (app, v) in apps.iter_mut() {
            v.prune(now);
            let mut rooms = RoomViewers::new();
            for seen in v.recent.values() {
                *rooms.entry((seen.room.clone(), seen.protocol)).or_default() += 1;
            }
            for (k, n) in &v.streams {
                if *n > 0 {
                    *rooms.entry(k.clone()).or_default() += *n as u64;
                }
            }
            if !rooms.is_empty() {
                out.insert(app.clone(), rooms);
            }
        }
        out
    }

    /// Viewers per room now, by `app/room` (every protocol together; the busiest
    /// [`MAX_ROOMS_REPORTED`]).
    ///
    /// [`MAX_ROOMS_REPORTED`]: streamhub_cluster::state::registry::MAX_ROOMS_REPORTED
    pub fn room_report(&self, now: Instant) -> BTreeMap<String, u32> {
        let mut all: BTreeMap<String, u64> = BTreeMap::new();
        for (app, rooms) in self.rooms(now) {
            for ((room, _), n) in rooms {
                *all.entry(format!("{app}/{room}")).or_default() += n;
            }
        }
        let mut all: Vec<(String, u32)> = all
            .into_iter()
            .map(|(k, n)| (k, n.min(u64::from(u32::MAX)) as u32))
            .collect();
        all.sort_by_key(|b| std::cmp::Reverse(b.1));
        all.truncate(streamhub_cluster::state::registry::MAX_ROOMS_REPORTED);
        all.into_iter().collect()
    }

    /// Media bytes sent to each app's viewers by this node since it started.
    pub fn egress(&self) -> Vec<(AppName, u64)> {
        self.apps()
            .iter()
            .map(|(a, v)| (a.clone(), v.egress.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Viewers per app now (the busiest [`MAX_APPS_REPORTED`]), forgetting apps with none.
    ///
    /// [`MAX_APPS_REPORTED`]: streamhub_cluster::state::registry::MAX_APPS_REPORTED
    pub fn report(&self, now: Instant) -> BTreeMap<String, u32> {
        let mut apps = self.apps();
        // An app that sent bytes stays tracked (its egress is a counter), up to MAX_APPS.
        apps.retain(|_, v| {
            v.prune(now);
            v.count() > 0 || v.egress.load(Ordering::Relaxed) > 0
        });
        let mut all: Vec<(String, u32)> = apps
            .iter()
            .filter(|(_, v)| v.count() > 0)
            .map(|(a, v)| (a.to_string(), v.count().min(u64::from(u32::MAX)) as u32))
            .collect();
        all.sort_by_key(|b| std::cmp::Reverse(b.1));
        all.truncate(streamhub_cluster::state::registry::MAX_APPS_REPORTED);
        all.into_iter().collect()
    }
}

/// A streaming viewer, counted while this lives (see [`ViewerTracker::hold`]).
pub struct ViewerHold {
    tracker: Arc<ViewerTracker>,
    app: AppName,
    room: RoomName,
    protocol: ViewProtocol,
    egress: Arc<AtomicU64>,
}

impl ViewerHold {
    /// Counts `bytes` sent to this viewer in its app's egress.
    pub fn sent(&self, bytes: u64) {
        self.egress.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Drop for ViewerHold {
    fn drop(&mut self) {
        if let Some(v) = self.tracker.apps().get_mut(&self.app) {
            let key = (self.room.clone(), self.protocol);
            if let Some(n) = v.streams.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    v.streams.remove(&key);
                }
            }
        }
    }
}

/// A viewer admitted to a streaming path (WHEP): the handler keeps it for the session.
#[derive(Clone)]
pub struct AdmittedViewer(pub Arc<ViewerHold>);

/// What [`check`] needs.
#[derive(Clone)]
pub struct Gate {
    pub verifier: Arc<dyn TokenVerifier>,
    pub rooms: Arc<dyn RoomPolicies>,
    pub viewers: Arc<ViewerTracker>,
    /// This node's name (its own report is replaced by its live count).
    pub me: String,
}

/// Why a request may not be served.
struct Denied(StatusCode, String);

impl Gate {
    /// The decision for one request: the verified claims (if a token was presented), or the
    /// answer to give.
    async fn decide(
        &self,
        app: &AppName,
        room: &RoomName,
        kind: Kind,
        token: Option<&str>,
        client: IpAddr,
    ) -> Result<(Option<Arc<AccessClaims>>, Option<ViewerKey>), Denied> {
        let access = match self.rooms.remembered(app, room) {
            Some(known) => Ok(known),
            None => self.rooms.access(app, room).await,
        };
        let access = match access {
            Ok(Some(access)) => access,
            // An unknown app: the route answers (404), a token cannot be for it.
            Ok(None) => return Ok((None, None)),
            Err(why) => {
                return Err(Denied(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot check who may watch {app}/{room} now: {why}"),
                ))
            }
        };
        let claims = match token {
            Some(t) if t.len() > MAX_TOKEN_LEN => {
                return Err(Denied(
                    StatusCode::UNAUTHORIZED,
                    "viewer token refused: too long".into(),
                ))
            }
            Some(t) => {
                let verified = match self.verifier.remembered(app, t) {
                    Some(claims) => Ok(claims),
                    None => self.verifier.verify(app, t).await,
                };
                let claims = verified
                    .and_then(|c| viewer_grant(&c, app, room).map(|()| c))
                    .map_err(|why| {
                        Denied(
                            StatusCode::UNAUTHORIZED,
                            format!("viewer token refused: {why}"),
                        )
                    })?;
                Some(claims)
            }
            None => None,
        };
        if access.playback == Playback::Token && claims.is_none() {
            return Err(Denied(
                StatusCode::UNAUTHORIZED,
                format!(
                    "app {app} plays with a viewer token only: add ?token=<token> \
                     (or Authorization: Bearer <token>)"
                ),
            ));
        }
        if kind == Kind::Page {
            return Ok((claims, None));
        }
        if access.backstage {
            let host = claims
                .as_ref()
                .is_some_and(|c| c.video.can_publish || access.hosts.contains(&c.sub));
            if !host {
                return Err(Denied(
                    StatusCode::TOO_EARLY,
                    format!("room {app}/{room} is not live yet (backstage): only its hosts watch"),
                ));
            }
        }
        if kind == Kind::Info {
            return Ok((claims, None));
        }
        let key = match &claims {
            Some(c) if c.max_viewers.is_some() => ViewerKey::Anonymous(Some(c.sub.clone()), client),
            Some(c) => ViewerKey::Identity(c.sub.clone()),
            None => ViewerKey::Anonymous(None, client),
        };
        self.check_quotas(app, &access, claims.as_deref(), &key)?;
        Ok((claims, Some(key)))
    }

    /// Refuses a viewer not counted yet once the app, or its play token, is full.
    fn check_quotas(
        &self,
        app: &AppName,
        access: &RoomAccess,
        claims: Option<&AccessClaims>,
        key: &ViewerKey,
    ) -> Result<(), Denied> {
        let capped = claims.is_some_and(|c| c.max_viewers.is_some());
        if access.viewer_quota.is_none() && !capped {
            // No limit to check: the common case costs no lookup here.
            return Ok(());
        }
        let now = Instant::now();
        if self.viewers.knows(app, key, now) {
            return Ok(());
        }
        if let (Some(cap), Some(c)) = (claims.and_then(|c| c.max_viewers), claims) {
            if self.viewers.count_play(app, &c.sub, now) >= cap as usize {
                return Err(Denied(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("quota: this play token is watched by its {cap} viewers already"),
                ));
            }
        }
        if let Some(limit) = access.viewer_quota {
            let elsewhere: u64 = access
                .viewers
                .iter()
                .filter(|(node, _)| **node != self.me)
                .map(|(_, v)| v)
                .sum();
            let here = self.viewers.count(app, now);
            if here + elsewhere >= limit {
                return Err(Denied(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "quota: app {app} has {} of {limit} viewers",
                        here + elsewhere
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The largest playlist rewritten with a token (playlists are a few KiB).
const MAX_PLAYLIST: usize = 1 << 20;

/// Middleware: decides who may watch before the request is served (see the module docs).
pub async fn check(State(gate): State<Gate>, mut req: Request, next: Next) -> Response {
    let Some((app, room, kind)) = room_of(req.uri().path()) else {
        // Bad names are answered (400) by the route itself.
        return next.run(req).await;
    };
    // CORS preflights, and a WHEP session's own resource (its unguessable URL is the
    // credential), pass; the offer that opened it was checked.
    let method = req.method().clone();
    if method == axum::http::Method::OPTIONS
        || (kind == Kind::Whep && method != axum::http::Method::POST)
    {
        return next.run(req).await;
    }
    let token = presented(&req);
    let client = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let decided = gate
        .decide(
            &app,
            &room,
            kind,
            token.as_ref().map(|t| t.token.as_str()),
            client,
        )
        .await;
    let key = match decided {
        Ok((_, key)) => key,
        Err(Denied(status, why)) => return error(status, &why),
    };
    let streaming = match kind {
        Kind::Whep => req.method() == axum::http::Method::POST,
        Kind::Live => req.uri().path().ends_with("/mjpeg"),
        _ => false,
    };
    let protocol = view_protocol(kind, req.uri());
    let (hold, egress) = match key {
        Some(_) if streaming => {
            let hold = Arc::new(gate.viewers.hold(&app, &room, protocol));
            req.extensions_mut().insert(AdmittedViewer(hold.clone()));
            (Some(hold), None)
        }
        Some(key) => {
            let egress = gate
                .viewers
                .touch(&app, &room, protocol, key, Instant::now());
            (None, egress)
        }
        None => (None, None),
    };
    let resp = next.run(req).await;
    let resp = match (kind, token) {
        (Kind::Hls { playlist: true }, Some(t))
            if t.in_query && resp.status() == StatusCode::OK =>
        {
            with_token(resp, &t.token).await
        }
        // An MJPEG stream is counted, and its bytes, for as long as its body is being sent.
        (Kind::Live, _) if hold.is_some() => return hold_body(resp, hold),
        _ => resp,
    };
    if let (Some(egress), Some(len)) =
        (egress, axum::body::HttpBody::size_hint(resp.body()).exact())
    {
        if resp.status().is_success() {
            egress.fetch_add(len, Ordering::Relaxed);
        }
    }
    resp
}

/// How a request of `kind` watches: LL-HLS for parts (`part-<msn>.<i>.m4s`) and blocking
/// playlist reloads.
fn view_protocol(kind: Kind, uri: &axum::http::Uri) -> ViewProtocol {
    match kind {
        Kind::Hls { playlist } => {
            let ll = if playlist {
                uri.query().is_some_and(|q| q.contains("_HLS_msn="))
            } else {
                uri.path()
                    .rsplit('/')
                    .next()
                    .is_some_and(|f| f.starts_with("part-"))
            };
            if ll {
                ViewProtocol::LlHls
            } else {
                ViewProtocol::Hls
            }
        }
        Kind::Whep => ViewProtocol::Whep,
        Kind::Live | Kind::Page | Kind::Info => ViewProtocol::Mjpeg,
    }
}

/// Keeps `hold` with the response body until the stream ends, counting what it sends.
fn hold_body(resp: Response, hold: Option<Arc<ViewerHold>>) -> Response {
    use futures::StreamExt as _;
    let (parts, body) = resp.into_parts();
    let stream = body.into_data_stream().map(move |chunk| {
        if let (Some(h), Ok(c)) = (&hold, &chunk) {
            h.sent(c.len() as u64);
        }
        chunk
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// The playlist `resp` with `token` added to every URI it lists.
async fn with_token(resp: Response, token: &str) -> Response {
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_PLAYLIST).await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "playlist too large");
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let rewritten = add_token(text, token);
    parts.headers.remove(header::CONTENT_LENGTH);
    // The rewritten playlist holds a credential: never in a shared cache.
    parts.headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    Response::from_parts(parts, Body::from(rewritten))
}

/// `playlist` with `token=<token>` appended to each URI line and each `URI="…"` attribute.
pub fn add_token(playlist: &str, token: &str) -> String {
    // JWTs are URL-safe (base64url and dots): encoded only when they are not.
    let safe = token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let encoded: std::borrow::Cow<'_, str> = if safe {
        token.into()
    } else {
        url::form_urlencoded::byte_serialize(token.as_bytes())
            .collect::<String>()
            .into()
    };
    let uris = playlist.matches(".m").count() + 1;
    let mut out = String::with_capacity(playlist.len() + uris * (encoded.len() + 7));
    let with = |out: &mut String, uri: &str| {
        out.push_str(uri);
        out.push(if uri.contains('?') { '&' } else { '?' });
        out.push_str("token=");
        out.push_str(&encoded);
    };
    for line in playlist.lines() {
        if line.is_empty() {
        } else if !line.starts_with('#') {
            with(&mut out, line);
        } else if let Some(start) = line.find("URI=\"") {
            let value = start + 5;
            match line[value..].find('"') {
                Some(len) => {
                    out.push_str(&line[..value]);
                    with(&mut out, &line[value..value + len]);
                    out.push_str(&line[value + len..]);
                }
                None => out.push_str(line),
            }
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamhub_shared::auth::{mint, VideoGrant};

    fn token(room: &str, can_subscribe: bool, exp_in: i64) -> String {
        let now = unix_now() as i64;
        let claims = AccessClaims {
            iss: "key-1".into(),
            sub: "viewer".into(),
            nbf: (now - 5) as u64,
            exp: (now + exp_in) as u64,
            max_viewers: None,
            video: VideoGrant {
                room: room.into(),
                room_join: true,
                can_publish: false,
                can_subscribe,
            },
        };
        mint(&claims, b"00112233")
    }

    fn check(t: &str, app: &AppName, room: &RoomName, secret: &[u8]) -> Result<(), String> {
        let claims =
            streamhub_shared::auth::verify(t, "key-1", secret).map_err(|e| e.to_string())?;
        viewer_grant(&claims, app, room)
    }

    #[test]
    fn checks_room_grant_after_signature_and_expiry() {
        let (app, room) = (AppName::new("live").unwrap(), RoomName::new("cam").unwrap());
        let s = b"00112233";
        assert!(check(&token("live-cam", true, 60), &app, &room, s).is_ok());
        assert!(check(&token("live-other", true, 60), &app, &room, s).is_err());
        assert!(check(&token("live-cam", false, 60), &app, &room, s).is_err());
        assert!(check(&token("live-cam", true, -10), &app, &room, s).is_err());
        assert!(check(&token("live-cam", true, 60), &app, &room, b"ffff").is_err());
        assert!(check("garbage", &app, &room, s).is_err());
    }

    /// Counts the verifications that reach it.
    struct Counting(std::sync::atomic::AtomicUsize);

    impl TokenVerifier for Counting {
        fn verify(
            &self,
            _: &AppName,
            token: &str,
        ) -> BoxFuture<'static, Result<Arc<AccessClaims>, String>> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let r = streamhub_shared::auth::verify(token, "key-1", b"00112233")
                .map(Arc::new)
                .map_err(|e| e.to_string());
            Box::pin(async move { r })
        }
    }

    #[tokio::test]
    async fn remembers_valid_tokens_only() {
        let v = Remembering::new(Counting(Default::default()));
        let app = AppName::new("live").unwrap();
        let good = token("live-cam", true, 60);
        for _ in 0..5 {
            assert!(v.verify(&app, &good).await.is_ok());
        }
        assert_eq!(v.inner.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        let other = AppName::new("other").unwrap();
        assert!(v.verify(&other, &good).await.is_ok(), "keyed by app too");
        assert_eq!(v.inner.0.load(std::sync::atomic::Ordering::SeqCst), 2);
        for _ in 0..3 {
            assert!(v.verify(&app, "garbage").await.is_err());
        }
        assert_eq!(v.inner.0.load(std::sync::atomic::Ordering::SeqCst), 5);
    }

    #[test]
    fn finds_the_room_of_playback_paths() {
        let r = room_of("/hls/live/cam/index.m3u8").unwrap();
        assert_eq!((r.0.as_str(), r.1.as_str()), ("live", "cam"));
        assert_eq!(r.2, Kind::Hls { playlist: true });
        let r = room_of("/live/li%76e/c%61m/mjpeg").unwrap();
        assert_eq!(
            (r.0.as_str(), r.1.as_str()),
            ("live", "cam"),
            "decoded like the routes"
        );
        assert!(room_of("/live/cams/door/mjpeg").is_some());
        assert_eq!(room_of("/play/live/cam").unwrap().2, Kind::Page);
        assert_eq!(room_of("/embed/live/cam").unwrap().2, Kind::Page);
        assert_eq!(room_of("/live/live/cam/info").unwrap().2, Kind::Info);
        assert_eq!(room_of("/live/live/cam/mjpeg").unwrap().2, Kind::Live);
        assert!(room_of("/hls/Bad/cam/index.m3u8").is_none());
        assert!(room_of("/api/v1/apps").is_none());
    }

    #[test]
    fn tells_hls_from_ll_hls() {
        let p = |kind, uri: &str| view_protocol(kind, &uri.parse().unwrap());
        let (list, media) = (Kind::Hls { playlist: true }, Kind::Hls { playlist: false });
        assert_eq!(p(list, "/hls/a/r/index.m3u8"), ViewProtocol::Hls);
        assert_eq!(
            p(list, "/hls/a/r/index.m3u8?_HLS_msn=7&_HLS_part=1"),
            ViewProtocol::LlHls
        );
        assert_eq!(p(media, "/hls/a/r/seg-7.m4s"), ViewProtocol::Hls);
        assert_eq!(
            p(media, "/hls/a/r/part-7.1.m4s?token=x"),
            ViewProtocol::LlHls
        );
        assert_eq!(p(Kind::Live, "/live/a/r/mjpeg"), ViewProtocol::Mjpeg);
        assert_eq!(p(Kind::Whep, "/whep/a/r"), ViewProtocol::Whep);
    }

    #[test]
    fn a_token_reaches_every_uri_of_a_playlist() {
        let playlist = "#EXTM3U\n#EXT-X-MAP:URI=\"init-1.mp4\"\n#EXT-X-PART:DURATION=0.5,URI=\"p.7.0.m4s\"\n#EXTINF:2.0,\nseg-7.m4s\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"p.8.1.m4s\"\n#EXT-X-RENDITION-REPORT:URI=\"index.m3u8?x=1\",LAST-MSN=8\n";
        let out = add_token(playlist, "a.b+c");
        assert!(
            out.contains("#EXT-X-MAP:URI=\"init-1.mp4?token=a.b%2Bc\"\n"),
            "{out}"
        );
        let jwt = add_token("seg-1.m4s\n", "eyJ0.e-y_J.sig");
        assert_eq!(
            jwt, "seg-1.m4s?token=eyJ0.e-y_J.sig\n",
            "a JWT goes in as it is"
        );
        assert!(out.contains("URI=\"p.7.0.m4s?token=a.b%2Bc\""), "{out}");
        assert!(out.contains("\nseg-7.m4s?token=a.b%2Bc\n"), "{out}");
        assert!(out.contains("URI=\"p.8.1.m4s?token=a.b%2Bc\""), "{out}");
        assert!(
            out.contains("URI=\"index.m3u8?x=1&token=a.b%2Bc\",LAST-MSN=8"),
            "{out}"
        );
        assert!(out.starts_with("#EXTM3U\n#EXT-X-MAP"));
    }

    #[test]
    fn viewers_are_counted_once_and_forgotten_after_the_ttl() {
        let tracker = Arc::new(ViewerTracker::default());
        let app = AppName::new("a").unwrap();
        let t0 = Instant::now();
        let ip = IpAddr::from([10, 0, 0, 1]);
        let (cam, desk) = (
            RoomName::new("cam").unwrap(),
            RoomName::new("desk").unwrap(),
        );
        let anon = || ViewerKey::Anonymous(None, ip);
        let egress = tracker.touch(&app, &cam, ViewProtocol::Hls, anon(), t0);
        egress.unwrap().fetch_add(100, Ordering::Relaxed);
        // The same viewer again, now on another room by LL-HLS: still one viewer.
        tracker.touch(&app, &desk, ViewProtocol::LlHls, anon(), t0);
        tracker.touch(
            &app,
            &cam,
            ViewProtocol::Hls,
            ViewerKey::Identity("ann".into()),
            t0,
        );
        let hold = tracker.hold(&app, &cam, ViewProtocol::Whep);
        hold.sent(50);
        assert_eq!(tracker.count(&app, t0), 3);
        assert_eq!(tracker.report(t0)["a"], 3);
        let rooms = &tracker.rooms(t0)[&app];
        assert_eq!(rooms[&(cam.clone(), ViewProtocol::Hls)], 1);
        assert_eq!(rooms[&(desk.clone(), ViewProtocol::LlHls)], 1);
        assert_eq!(rooms[&(cam.clone(), ViewProtocol::Whep)], 1);
        assert_eq!(rooms.len(), 3);
        assert_eq!(tracker.egress(), vec![(app.clone(), 150)]);
        drop(hold);
        let later = t0 + VIEWER_TTL + Duration::from_secs(1);
        assert_eq!(tracker.count(&app, later), 0);
        assert!(tracker.report(later).is_empty());
        assert!(tracker.rooms(later).is_empty());
        assert_eq!(
            tracker.egress(),
            vec![(app, 150)],
            "the egress counter stays"
        );
    }

    struct Fixed(RoomAccess);

    impl RoomPolicies for Fixed {
        fn access(
            &self,
            _: &AppName,
            _: &RoomName,
        ) -> BoxFuture<'static, Result<Option<Arc<RoomAccess>>, String>> {
            let a = Arc::new(self.0.clone());
            Box::pin(async move { Ok(Some(a)) })
        }
    }

    struct Keys;

    impl TokenVerifier for Keys {
        fn verify(
            &self,
            _: &AppName,
            t: &str,
        ) -> BoxFuture<'static, Result<Arc<AccessClaims>, String>> {
            let r = streamhub_shared::auth::verify(t, "key-1", b"00112233")
                .map(Arc::new)
                .map_err(|e| e.to_string());
            Box::pin(async move { r })
        }
    }

    fn gate(access: RoomAccess) -> Gate {
        Gate {
            verifier: Arc::new(Keys),
            rooms: Arc::new(Fixed(access)),
            viewers: Arc::default(),
            me: "edge-1".into(),
        }
    }

    fn access() -> RoomAccess {
        RoomAccess {
            playback: Playback::Public,
            backstage: false,
            hosts: vec![],
            viewer_quota: None,
            viewers: BTreeMap::new(),
        }
    }

    fn claims_token(sub: &str, publish: bool) -> String {
        let now = unix_now();
        mint(
            &AccessClaims {
                iss: "key-1".into(),
                sub: sub.into(),
                nbf: now - 5,
                exp: now + 60,
                max_viewers: None,
                video: VideoGrant {
                    room: "live-cam".into(),
                    room_join: true,
                    can_publish: publish,
                    can_subscribe: true,
                },
            },
            b"00112233",
        )
    }

    async fn status(g: &Gate, kind: Kind, token: Option<&str>, ip: u8) -> StatusCode {
        let (app, room) = (AppName::new("live").unwrap(), RoomName::new("cam").unwrap());
        match g
            .decide(&app, &room, kind, token, IpAddr::from([10, 0, 0, ip]))
            .await
        {
            Ok((_, Some(key))) => {
                g.viewers
                    .touch(&app, &room, ViewProtocol::Hls, key, Instant::now());
                StatusCode::OK
            }
            Ok(_) => StatusCode::OK,
            Err(Denied(s, _)) => s,
        }
    }

    #[tokio::test]
    async fn token_playback_backstage_and_quota_decide_in_that_order() {
        let hls = Kind::Hls { playlist: true };
        let viewer = claims_token("ann", false);
        let host = claims_token("hoster", false);
        let publisher = claims_token("cam", true);

        let g = gate(RoomAccess {
            playback: Playback::Token,
            ..access()
        });
        assert_eq!(status(&g, hls, None, 1).await, StatusCode::UNAUTHORIZED);
        assert_eq!(
            status(&g, Kind::Page, None, 1).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(&g, hls, Some("bad"), 1).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(status(&g, hls, Some(&viewer), 1).await, StatusCode::OK);

        let g = gate(RoomAccess {
            backstage: true,
            hosts: vec!["hoster".into()],
            ..access()
        });
        assert_eq!(status(&g, hls, None, 1).await, StatusCode::TOO_EARLY);
        assert_eq!(
            status(&g, hls, Some(&viewer), 1).await,
            StatusCode::TOO_EARLY
        );
        assert_eq!(
            status(&g, Kind::Page, None, 1).await,
            StatusCode::OK,
            "the page waits"
        );
        assert_eq!(status(&g, hls, Some(&host), 1).await, StatusCode::OK);
        assert_eq!(
            status(&g, Kind::Whep, Some(&publisher), 1).await,
            StatusCode::OK
        );

        let g = gate(RoomAccess {
            viewer_quota: Some(3),
            viewers: BTreeMap::from([("edge-2".to_string(), 1), ("edge-1".to_string(), 9)]),
            ..access()
        });
        // One elsewhere (this node's own stale report is not counted): two more fit here.
        assert_eq!(status(&g, hls, None, 1).await, StatusCode::OK);
        assert_eq!(status(&g, hls, None, 2).await, StatusCode::OK);
        assert_eq!(
            status(&g, hls, None, 3).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            status(&g, hls, None, 1).await,
            StatusCode::OK,
            "a counted viewer goes on"
        );
    }
}
