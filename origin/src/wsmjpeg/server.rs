//! The WebSocket-MJPEG endpoint: authenticate and claim the room before the upgrade (so a device
//! gets a plain HTTP status it can log), then one task per device that reads pictures into the
//! room, pings it, and closes it when it goes silent, is taken over, or its key is revoked.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use streamhub_media::http::ApiError;
use streamhub_shared::{AppName, RoomName};

use super::gate::{Gate, Outcome};
use super::{WsConfig, WsIngest, WsStats};
use crate::admission::{Admission, Credential, PublishRequest};
use crate::rooms::{Protocol, Publisher};

/// Close code: the key was revoked (do not retry with it).
const CLOSE_POLICY: u16 = 1008;
/// How long the server waits for the device's Close after sending its own. A loaded device
/// can take well over a second to read; closing sooner resets the connection and the device
/// loses the Close frame (and its reason) to a broken pipe.
const CLOSE_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(5);
/// Close code: going away (idle, node stopping).
const CLOSE_AWAY: u16 = 1001;
/// Close code: a message over the size bound.
const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: try again later (the room was taken over or placed elsewhere).
const CLOSE_TRY_LATER: u16 = 1013;

/// Query of `GET /ingest/ws`.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    app: String,
    room: String,
    /// The device key, for libraries that cannot set an `Authorization` header.
    key: Option<String>,
}

/// `GET /ingest/ws?app=<app>&room=<room>` with `Authorization: Bearer wsk_…` (or `&key=`):
/// anyone, the device key decides.
pub async fn upgrade(
    State(admission): State<Arc<Admission>>,
    State(ingest): State<Arc<WsIngest>>,
    State(shutdown): State<tokio_util::sync::CancellationToken>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    match admit(&admission, &query, &headers, remote).await {
        Ok(publisher) => {
            ingest.stats.connections.fetch_add(1, Ordering::Relaxed);
            let config = ingest.config.clone();
            let stats = ingest.stats.clone();
            ws.max_message_size(config.max_message_bytes)
                .max_frame_size(config.max_message_bytes)
                .on_upgrade(move |socket| async move {
                    let grant = publisher.grant().clone();
                    let revoked = move || !admission.holds(&grant);
                    run(socket, publisher, config, stats, shutdown, revoked).await
                })
        }
        // At a quota the device gets the reason in a Close frame: a browser's WebSocket (and
        // most device libraries) cannot read the status of a refused upgrade.
        Err(ApiError::TooManyRequests { message, .. }) => {
            ingest.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%remote, reason = %message, "WebSocket-MJPEG device refused: quota");
            ws.on_upgrade(move |mut socket| async move {
                let frame = CloseFrame {
                    code: CLOSE_QUOTA,
                    reason: close_reason(&message).into(),
                };
                let _ = socket.send(Message::Close(Some(frame))).await;
            })
        }
        Err(e) => {
            ingest.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%remote, error = %e, "WebSocket-MJPEG device refused");
            e.into_response()
        }
    }
}

/// Close code of a device refused at one of its app's quotas (application range).
pub const CLOSE_QUOTA: u16 = 4429;

/// `reason` cut to what a Close frame holds (123 bytes), at a character boundary.
fn close_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

/// Admits the device into the room it names (before the upgrade, so a refusal is a plain HTTP
/// status the device can log).
async fn admit(
    admission: &Admission,
    query: &WsQuery,
    headers: &HeaderMap,
    remote: SocketAddr,
) -> Result<Publisher, ApiError> {
    let app = AppName::new(query.app.clone())?;
    let room = RoomName::new(query.room.clone())?;
    let key = streamhub_media::http::bearer(headers)
        .map(str::to_string)
        .or_else(|| query.key.clone())
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "a device key (wsk_…) is needed: Authorization: Bearer or ?key=".into(),
            )
        })?;
    let req = PublishRequest {
        room: Some((app, room)),
        credential: Credential::DeviceKey(key),
        protocol: Protocol::Ws,
        remote,
    };
    Ok(admission.admit(req).await?)
}

/// Why a device's session ended.
#[derive(Debug)]
enum End {
    /// The device closed (its Close is answered).
    Closed,
    Idle,
    /// The session was cancelled: key revoked, or the room taken over or placed elsewhere.
    Stopped,
    TooBig,
    NodeStopping,
    Error(String),
}

#[tracing::instrument(skip_all, fields(app = %publisher.app(), room = %publisher.room()))]
async fn run(
    mut socket: WebSocket,
    mut publisher: Publisher,
    config: WsConfig,
    stats: Arc<WsStats>,
    shutdown: tokio_util::sync::CancellationToken,
    revoked: impl Fn() -> bool,
) {
    tracing::info!("WebSocket-MJPEG device connected");
    let mut gate = Gate::new(config.clone());
    let mut ping = tokio::time::interval(config.ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let stopped = publisher.stop_token();
    let end = loop {
        tokio::select! {
            msg = socket.recv() => {
                let Some(msg) = msg else { break End::Closed };
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) if e.to_string().to_lowercase().contains("too long")
                        || e.to_string().to_lowercase().contains("too big") => break End::TooBig,
                    Err(e) => break End::Error(e.to_string()),
                };
                last_heard = Instant::now();
                let outcome = match msg {
                    Message::Binary(data) => gate.binary(data, Instant::now()),
                    Message::Text(_) => gate.text(),
                    Message::Close(_) => break End::Closed,
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                take(&mut publisher, outcome, &stats);
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= config.idle_timeout {
                    stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                    break End::Idle;
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break End::Closed;
                }
            }
            () = stopped.cancelled() => break End::Stopped,
            () = shutdown.cancelled() => break End::NodeStopping,
        }
    };
    match &end {
        End::Error(e) => tracing::info!(error = %e, "WebSocket-MJPEG device gone"),
        other => tracing::info!(end = ?other, "WebSocket-MJPEG device gone"),
    }
    let close = match &end {
        End::Idle => Some((CLOSE_AWAY, "no picture or pong for too long")),
        End::NodeStopping => Some((CLOSE_AWAY, "the node is stopping")),
        End::TooBig => Some((CLOSE_TOO_BIG, "message over the size bound")),
        End::Stopped if revoked() => Some((CLOSE_POLICY, "device key revoked")),
        End::Stopped => Some((CLOSE_TRY_LATER, "room taken over or placed elsewhere")),
        // Answer the device's own Close so the closing handshake completes.
        End::Closed => Some((1000, "")),
        End::Error(_) => None,
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        // The room ends now, not after the closing handshake.
        drop(publisher);
        if socket.send(Message::Close(Some(frame))).await.is_ok() && !matches!(end, End::Closed) {
            // The closing handshake: read (and drop) what the device still sends until its
            // Close, bounded, so the connection is not reset under the device's last reads.
            let drain = async {
                while let Some(Ok(msg)) = socket.recv().await {
                    if matches!(msg, Message::Close(_)) {
                        break;
                    }
                }
            };
            // A stopping node does not hold its shutdown for slow devices.
            let wait = if matches!(end, End::NodeStopping) {
                std::time::Duration::from_secs(1)
            } else {
                CLOSE_HANDSHAKE
            };
            let _ = tokio::time::timeout(wait, drain).await;
        }
    }
    // Otherwise dropping the publisher here ends the room.
}

fn take(publisher: &mut Publisher, outcome: Outcome, stats: &WsStats) {
    match outcome {
        Outcome::Frame { frame, tracks } => {
            if let Some(tracks) = tracks {
                publisher.set_tracks(tracks);
            }
            stats.frames_in.fetch_add(1, Ordering::Relaxed);
            stats
                .bytes_in
                .fetch_add(frame.data.len() as u64, Ordering::Relaxed);
            publisher.push(frame);
        }
        Outcome::Dropped(super::gate::Refusal::RateLimited(_)) => {
            stats.frames_rate_limited.fetch_add(1, Ordering::Relaxed);
        }
        Outcome::Dropped(why) => {
            stats.frames_invalid.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%why, "message dropped");
        }
    }
}
