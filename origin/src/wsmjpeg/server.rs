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
use streamhub_cluster::state::IngressKind;
use streamhub_shared::{AppName, RoomName};

use super::gate::{Gate, Outcome};
use super::{WsConfig, WsStats};
use crate::api::ApiError;
use crate::credentials::sha256_hex;
use crate::node::NodeCtx;
use crate::rooms::{Protocol, PublishClaim, PublishError, Publisher};

/// Close code: the device broke the policy (taken over, key revoked).
const CLOSE_POLICY: u16 = 1008;
/// Close code: going away (idle, node stopping).
const CLOSE_AWAY: u16 = 1001;

/// Query of `GET /ingest/ws`.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    app: String,
    room: String,
    /// The device key, for libraries that cannot set an `Authorization` header.
    key: Option<String>,
}

fn key_of(headers: &HeaderMap, query: &WsQuery) -> Option<String> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|v| v.trim().to_string());
    bearer
        .or_else(|| query.key.clone())
        .filter(|k| !k.is_empty())
}

/// `GET /ingest/ws?app=<app>&room=<room>` with `Authorization: Bearer wsk_…` (or `&key=`).
pub async fn upgrade(
    State(ctx): State<Arc<NodeCtx>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    match admit(&ctx, &query, &headers, remote).await {
        Ok(publisher) => {
            ctx.ws_stats.connections.fetch_add(1, Ordering::Relaxed);
            let config = ctx.ws_config.clone();
            let stats = ctx.ws_stats.clone();
            ws.max_message_size(config.max_message_bytes)
                .max_frame_size(config.max_message_bytes)
                .on_upgrade(move |socket| run(socket, publisher, config, stats))
        }
        Err(e) => {
            ctx.ws_stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%remote, error = %e, "WebSocket-MJPEG device refused");
            e.into_response()
        }
    }
}

/// Checks the key against the room and claims the room for this node.
async fn admit(
    ctx: &NodeCtx,
    query: &WsQuery,
    headers: &HeaderMap,
    remote: SocketAddr,
) -> Result<Publisher, ApiError> {
    let app = AppName::new(query.app.clone())?;
    let room = RoomName::new(query.room.clone())?;
    let key = key_of(headers, query).ok_or_else(|| {
        ApiError::Unauthorized(
            "a device key (wsk_…) is needed: Authorization: Bearer or ?key=".into(),
        )
    })?;
    let hash = sha256_hex(&key);
    let ingress = ctx
        .raft
        .read(|s| s.ingress_by_key_hash(&hash).cloned())
        .filter(|i| i.kind == IngressKind::Ws)
        .ok_or_else(|| ApiError::Unauthorized("unknown or revoked device key".into()))?;
    if ingress.app != app || ingress.room != room {
        return Err(ApiError::Forbidden(format!(
            "this key publishes to {}/{}, not {app}/{room}",
            ingress.app, ingress.room
        )));
    }
    let epoch = crate::lease::claim(ctx, &app, &room)
        .await
        .map_err(publish_error)?;
    if ctx.raft.read(|s| !s.ingresses.contains_key(&ingress.id)) {
        return Err(ApiError::Unauthorized("the device key was revoked".into()));
    }
    ctx.rooms
        .start_publish(PublishClaim {
            app,
            room,
            ingress_id: ingress.id,
            protocol: Protocol::Ws,
            remote,
            epoch,
        })
        .map_err(publish_error)
}

fn publish_error(e: PublishError) -> ApiError {
    match e {
        PublishError::UnknownKey => ApiError::Unauthorized(e.to_string()),
        PublishError::RoomBusy { .. } | PublishError::LiveElsewhere { .. } => {
            ApiError::Conflict(e.to_string())
        }
        PublishError::Unavailable(m) => ApiError::Unavailable(m),
    }
}

/// Why a device's session ended.
#[derive(Debug)]
enum End {
    Closed,
    Idle,
    Revoked,
    Error(String),
}

#[tracing::instrument(skip_all, fields(app = %publisher.app(), room = %publisher.room()))]
async fn run(
    mut socket: WebSocket,
    mut publisher: Publisher,
    config: WsConfig,
    stats: Arc<WsStats>,
) {
    tracing::info!("WebSocket-MJPEG device connected");
    let mut gate = Gate::new(config.clone());
    let mut ping = tokio::time::interval(config.ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let end = loop {
        tokio::select! {
            msg = socket.recv() => {
                let Some(msg) = msg else { break End::Closed };
                let msg = match msg {
                    Ok(m) => m,
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
            () = publisher.cancelled() => break End::Revoked,
        }
    };
    match &end {
        End::Error(e) => tracing::info!(error = %e, "WebSocket-MJPEG device gone"),
        other => tracing::info!(end = ?other, "WebSocket-MJPEG device gone"),
    }
    let close = match &end {
        End::Idle => Some((CLOSE_AWAY, "no picture or pong for too long")),
        End::Revoked => Some((CLOSE_POLICY, "key revoked or room taken over")),
        End::Closed | End::Error(_) => None,
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = socket.send(Message::Close(Some(frame))).await;
    }
    // Dropping the publisher ends the room.
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
