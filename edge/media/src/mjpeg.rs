//! MJPEG fan-out of a room's JPEG track: `GET /live/{app}/{room}/mjpeg` streams every picture as
//! `multipart/x-mixed-replace`, `GET /live/{app}/{room}/frame.jpg` answers the latest one.
//!
//! A viewer's stream only produces a picture when the HTTP connection asks for the next chunk,
//! and then takes the newest one: a slow viewer skips pictures, never queues them, and holds no
//! position in the room's frame channel (which would pin every picture it has not read). Every
//! body shares the relayed frame's buffer; nothing is copied per viewer.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures::future::BoxFuture;
use streamhub_shared::media::{CodecConfig, MediaHandle};
use streamhub_shared::{AppName, Frame, RoomName, TrackId};

use crate::http::{room_names, ClientAddr};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The multipart boundary.
pub const BOUNDARY: &str = "streamhub-mjpeg-frame";
/// How long `frame.jpg` waits for a first picture in a room that just came up.
const FIRST_FRAME_WAIT: Duration = Duration::from_secs(3);
/// How long a stream whose camera left waits for it to come back (a camera that reboots or
/// reconnects, maybe with another resolution) before it ends.
pub const CAMERA_RETURN: Duration = Duration::from_secs(10);
/// How often a stream waiting for its camera looks for it.
const CAMERA_LOOK: Duration = Duration::from_millis(500);
/// Bounds of the MJPEG streams a node serves at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Streams per node.
    pub per_node: usize,
    /// Streams per client address: one client cannot take the node's streams.
    pub per_client: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            per_node: 10_000,
            per_client: 256,
        }
    }
}

/// A room's media and whatever keeps it available while a viewer watches.
pub struct Viewing {
    /// The room's media.
    pub media: MediaHandle,
    /// Held for as long as the viewer streams (an edge keeps its relay subscription).
    pub hold: Option<Box<dyn Send + Sync>>,
}

/// Finds a room's media for a viewer (an origin's live rooms, an edge's pulled rooms).
pub trait MediaLookup: Send + Sync + 'static {
    /// The media of `app/room` for the viewer at `client`, if the room is live.
    fn media(
        &self,
        app: &AppName,
        room: &RoomName,
        client: SocketAddr,
    ) -> BoxFuture<'static, Option<Viewing>>;
}

/// Counters of the MJPEG side.
#[derive(Debug, Default)]
pub struct MjpegStats {
    /// Streams open now.
    pub streams: AtomicU64,
    /// Pictures written to streams.
    pub frames_out: AtomicU64,
    /// Body bytes sent (streams and `frame.jpg`).
    pub bytes_out: AtomicU64,
    /// Pictures a slow viewer skipped.
    pub skipped: AtomicU64,
}

#[derive(Clone)]
struct MjpegState {
    lookup: Arc<dyn MediaLookup>,
    stats: Arc<MjpegStats>,
    streams: Arc<Semaphore>,
    per_client: usize,
    /// Streams per client address: a std Mutex held for one counter update.
    clients: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// The MJPEG routes.
pub fn router(
    lookup: Arc<dyn MediaLookup>,
    stats: Arc<MjpegStats>,
    limits: StreamLimits,
) -> Router {
    Router::new()
        .route("/live/{app}/{room}/mjpeg", get(stream))
        .route("/live/{app}/{room}/info", get(info))
        .route("/live/{app}/{room}/frame.jpg", get(frame_jpg))
        .with_state(MjpegState {
            lookup,
            stats,
            streams: Arc::new(Semaphore::new(limits.per_node)),
            per_client: limits.per_client,
            clients: Arc::default(),
        })
}

/// One stream slot of a client address; released when dropped.
struct ClientSlot {
    clients: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl ClientSlot {
    fn take(st: &MjpegState, ip: IpAddr) -> Option<Self> {
        let mut clients = st.clients.lock().unwrap_or_else(|e| e.into_inner());
        let n = clients.entry(ip).or_insert(0);
        if *n >= st.per_client {
            return None;
        }
        *n += 1;
        Some(Self {
            clients: st.clients.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = clients.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                clients.remove(&self.ip);
            }
        }
    }
}

use crate::http::error;

/// The room's JPEG track, or the answer to give.
async fn open(
    st: &MjpegState,
    app: &str,
    room: &str,
    client: SocketAddr,
) -> Result<(Viewing, TrackId), Response> {
    let (app, room) = room_names(app, room).map_err(|m| error(StatusCode::BAD_REQUEST, &m))?;
    let viewing = st
        .lookup
        .media(&app, &room, client)
        .await
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "no such live room"))?;
    let track = jpeg_track(&viewing.media)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "the room has no JPEG track"))?;
    Ok((viewing, track))
}

/// The room's JPEG track, if it has one.
fn jpeg_track(media: &MediaHandle) -> Option<TrackId> {
    media
        .tracks()
        .iter()
        .find(|t| matches!(t.codec, CodecConfig::Jpeg { .. }))
        .map(|t| t.id)
}

/// `GET /live/{app}/{room}/info`: whether the room is live here and what it carries, so a
/// player picks MJPEG for a camera room and WHEP/HLS for the others. Always 200 for a valid
/// name (`live: false` when nothing publishes it), so a player waiting for a room does not
/// fill the browser's console with errors.
async fn info(
    State(st): State<MjpegState>,
    ClientAddr(client): ClientAddr,
    Path((app, room)): Path<(String, String)>,
) -> Response {
    let (app, room) = match room_names(&app, &room) {
        Ok(n) => n,
        Err(m) => return error(StatusCode::BAD_REQUEST, &m),
    };
    let body = match st.lookup.media(&app, &room, client).await {
        None => {
            serde_json::json!({ "live": false, "camera": false, "video": false, "audio": false })
        }
        Some(viewing) => {
            let tracks = viewing.media.tracks();
            let has = |f: fn(&CodecConfig) -> bool| tracks.iter().any(|t| f(&t.codec));
            serde_json::json!({
                "live": true,
                "camera": has(|c| matches!(c, CodecConfig::Jpeg { .. })),
                "video": has(|c| matches!(c, CodecConfig::H264 { .. })),
                "audio": has(|c| matches!(c, CodecConfig::Aac { .. } | CodecConfig::Opus { .. })),
            })
        }
    };
    (
        [
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            ),
        ],
        axum::Json(serde_json::json!({ "data": body })),
    )
        .into_response()
}

async fn frame_jpg(
    State(st): State<MjpegState>,
    ClientAddr(client): ClientAddr,
    Path((app, room)): Path<(String, String)>,
) -> Response {
    let (viewing, track) = match open(&st, &app, &room, client).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let media = &viewing.media;
    let latest = match media.latest_frame_of(track) {
        Some(f) => Some(f),
        None => {
            let mut newest = media.newest_group();
            let wait = async {
                loop {
                    newest.changed().await.ok()?;
                    if let Some(f) = media.latest_frame_of(track) {
                        return Some(f);
                    }
                }
            };
            tokio::time::timeout(FIRST_FRAME_WAIT, wait)
                .await
                .ok()
                .flatten()
        }
    };
    let Some(frame) = latest else {
        return error(StatusCode::NOT_FOUND, "no picture yet");
    };
    st.stats
        .bytes_out
        .fetch_add(frame.data.len() as u64, Ordering::Relaxed);
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            ),
        ],
        frame.data,
    )
        .into_response()
}

async fn stream(
    State(st): State<MjpegState>,
    ClientAddr(client): ClientAddr,
    Path((app, room)): Path<(String, String)>,
) -> Response {
    let names = match room_names(&app, &room) {
        Ok(names) => names,
        Err(m) => return error(StatusCode::BAD_REQUEST, &m),
    };
    let Ok(permit) = st.streams.clone().try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many MJPEG viewers on this node",
        );
    };
    let Some(slot) = ClientSlot::take(&st, client.ip()) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many MJPEG streams from this address",
        );
    };
    let (viewing, track) = match open(&st, &app, &room, client).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    if !viewing.media.is_live() {
        return error(StatusCode::NOT_FOUND, "no such live room");
    }
    st.stats.streams.fetch_add(1, Ordering::Relaxed);
    let first = viewing.media.latest_frame_of(track);
    let viewer = Viewer {
        newest: viewing.media.newest_group(),
        last: None,
        media: viewing.media,
        track,
        first,
        pending: VecDeque::new(),
        stats: st.stats.clone(),
        lookup: st.lookup.clone(),
        room: names,
        client,
        _hold: viewing.hold,
        _permit: permit,
        _slot: slot,
    };
    let body = futures::stream::unfold(viewer, |mut v| async move {
        let chunk = v.next_chunk().await?;
        Some((Ok::<Bytes, Infallible>(chunk), v))
    });
    let content_type = format!("multipart/x-mixed-replace; boundary={BOUNDARY}");
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_str(&content_type)
                    .unwrap_or(HeaderValue::from_static("multipart/x-mixed-replace")),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// One MJPEG viewer's stream state.
struct Viewer {
    newest: tokio::sync::watch::Receiver<Option<u64>>,
    /// The group of the last picture sent.
    last: Option<u64>,
    media: MediaHandle,
    track: TrackId,
    first: Option<Frame>,
    /// Chunks of the picture being written: part header, picture, trailing CRLF.
    pending: VecDeque<Bytes>,
    stats: Arc<MjpegStats>,
    /// Where to find the room again when its camera comes back.
    lookup: Arc<dyn MediaLookup>,
    room: (AppName, RoomName),
    client: SocketAddr,
    _hold: Option<Box<dyn Send + Sync>>,
    _permit: OwnedSemaphorePermit,
    _slot: ClientSlot,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.stats.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Viewer {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(chunk) = self.pending.pop_front() {
            return Some(chunk);
        }
        let frame = match self.first.take() {
            Some(f) => f,
            None => self.next_frame().await?,
        };
        if let Some(last) = self.last {
            let skipped = frame.group.saturating_sub(last + 1);
            self.stats.skipped.fetch_add(skipped, Ordering::Relaxed);
        }
        self.last = Some(frame.group);
        let head = format!(
            "--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
            frame.data.len()
        );
        self.stats.frames_out.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_out.fetch_add(
            (head.len() + frame.data.len() + 2) as u64,
            Ordering::Relaxed,
        );
        self.pending.push_back(frame.data);
        self.pending.push_back(Bytes::from_static(b"\r\n"));
        Some(Bytes::from(head))
    }

    /// The newest picture once there is one newer than the last sent, following the camera
    /// across a reconnect; `None` once the room has ended for [`CAMERA_RETURN`].
    async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.media.latest_frame_of(self.track) {
                if self.last.is_none_or(|l| f.group > l) {
                    return Some(f);
                }
            }
            if self.newest.changed().await.is_err() {
                self.rejoin().await?;
            }
        }
    }

    /// The camera left: waits (bounded) for the room to be live again with a JPEG track, and
    /// goes on with its new media.
    async fn rejoin(&mut self) -> Option<()> {
        let deadline = tokio::time::Instant::now() + CAMERA_RETURN;
        let (app, room) = &self.room;
        loop {
            tokio::time::sleep(CAMERA_LOOK).await;
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            let Some(v) = self.lookup.media(app, room, self.client).await else {
                continue;
            };
            if !v.media.is_live() {
                continue;
            }
            let Some(track) = jpeg_track(&v.media) else {
                continue;
            };
            self.newest = v.media.newest_group();
            self.media = v.media;
            self.track = track;
            // A new publisher numbers its groups from its own start.
            self.last = None;
            self._hold = v.hold;
            return Some(());
        }
    }
}
