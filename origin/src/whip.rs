//! WHIP ingest (RFC 9725): `POST /whip/{app}/{room}` with an SDP offer and
//! `Authorization: Bearer <token>` — an access token of the app with `canPublish` for the room,
//! or an RTMP ingress's stream key for the room — claims the room as RTMP does, and answers
//! `201 Created` with the SDP answer and the session's `Location`; `DELETE` on it ends the
//! session. The publisher's H.264 and Opus go into the room's media as they arrive.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use streamhub_cluster::state::IngressKind;
use streamhub_edge::webrtc::http::{answered, cors, delete, offer_of, patch, reached_ip};
use streamhub_edge::webrtc::ingest::IngestSink;
use streamhub_edge::webrtc::Role;
use streamhub_shared::media::{Frame, TrackInfo};
use streamhub_shared::{AppName, RoomName};

use crate::api::ApiError;
use crate::credentials::sha256_hex;
use crate::node::NodeCtx;
use crate::rooms::{Protocol, PublishClaim, Publisher};

/// Prefix of the ingress id of a publisher admitted by an access token (not by an ingress key).
pub const TOKEN_PUBLISHER: &str = "token:";

/// The WHIP routes.
pub fn router(ctx: Arc<NodeCtx>) -> Router {
    Router::new()
        .route("/whip/{app}/{room}", post(offer))
        .route(
            "/whip/{app}/{room}/{id}",
            axum::routing::delete(end).patch(patch),
        )
        .with_state(ctx)
        .layer(cors())
}

/// The room publisher a WHIP session feeds.
struct PublisherSink(Publisher);

impl IngestSink for PublisherSink {
    fn set_tracks(&mut self, tracks: Vec<TrackInfo>) {
        self.0.set_tracks(tracks);
    }

    fn push(&mut self, frame: Frame) {
        self.0.push(frame);
    }

    fn keyframe_requests(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.0.media().keyframe_requests())
    }
}

async fn offer(
    State(ctx): State<Arc<NodeCtx>>,
    Path((app, room)): Path<(String, String)>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let offer = match offer_of(&headers, &body) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let (app, room, ingress_id) = match authenticate(&ctx, &app, &room, &headers) {
        Ok(x) => x,
        Err(e) => {
            tracing::info!(%remote, error = %e, "WHIP publisher refused");
            return e.into_response();
        }
    };
    // The SDP is checked before the room is claimed: a bad offer costs no placement.
    if let Err(e) = streamhub_edge::webrtc::sdp::offer_codecs(&offer)
        .and_then(|c| streamhub_edge::webrtc::sdp::check_publish(&c))
    {
        return answered(Err(e.into()), |_| String::new());
    }
    let publisher = match claim(&ctx, &app, &room, ingress_id, remote).await {
        Ok(x) => x,
        Err(e) => {
            tracing::info!(%remote, error = %e, "WHIP publisher refused");
            return e.into_response();
        }
    };
    let stop = publisher.stop_token();
    let role = Role::Publish {
        sink: Box::new(PublisherSink(publisher)),
        stop,
    };
    let result = ctx
        .webrtc
        .open_blocking(offer, role, reached_ip(&headers))
        .await;
    // On an error the publisher went with the role, and the room with it (its placement is
    // released as for any publisher that ends).
    if result.is_ok() {
        tracing::info!(%app, %room, %remote, "WHIP publisher admitted");
    }
    answered(result, |id| format!("/whip/{app}/{room}/{id}"))
}

async fn end(
    State(ctx): State<Arc<NodeCtx>>,
    Path((_app, _room, id)): Path<(String, String, String)>,
) -> Response {
    delete(&ctx.webrtc, &id)
}

/// Checks the bearer credential against the room; the ingress id it publishes as.
fn authenticate(
    ctx: &NodeCtx,
    app: &str,
    room: &str,
    headers: &HeaderMap,
) -> Result<(AppName, RoomName, String), ApiError> {
    let app = AppName::new(app.to_string())?;
    let room = RoomName::new(room.to_string())?;
    let credential = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "WHIP needs Authorization: Bearer <token with canPublish, or a stream key>".into(),
            )
        })?;
    let ingress_id = if credential.matches('.').count() == 2 {
        publish_token(ctx, &app, &room, credential)?
    } else {
        stream_key(ctx, &app, &room, credential)?
    };
    Ok((app, room, ingress_id))
}

/// Claims the room for this node and starts its publisher.
async fn claim(
    ctx: &NodeCtx,
    app: &AppName,
    room: &RoomName,
    ingress_id: String,
    remote: SocketAddr,
) -> Result<Publisher, ApiError> {
    let (app, room) = (app.clone(), room.clone());
    ctx.rooms
        .check_busy(&app, &room, &ingress_id)
        .map_err(ApiError::from)?;
    crate::lease::check_free(ctx, &app, &room).map_err(ApiError::from)?;
    let epoch = crate::lease::claim(ctx, &app, &room)
        .await
        .map_err(ApiError::from)?;
    let started = ctx
        .rooms
        .start_publish(PublishClaim {
            app: app.clone(),
            room: room.clone(),
            ingress_id,
            protocol: Protocol::Whip,
            remote,
            epoch,
        })
        .map_err(ApiError::from);
    if started.is_err() && ctx.rooms.media(&app, &room).is_none() {
        crate::lease::release(ctx, &app, &room, epoch).await;
    }
    started
}

/// An access token of the app, for this room, with `canPublish`; its identity names the
/// publisher (so the same identity may take its room over).
fn publish_token(
    ctx: &NodeCtx,
    app: &AppName,
    room: &RoomName,
    token: &str,
) -> Result<String, ApiError> {
    let key = ctx
        .raft
        .read(|s| {
            s.apps
                .get(app)
                .map(|a| (a.key_id.clone(), a.secret.clone()))
        })
        .ok_or_else(|| ApiError::Unauthorized(format!("unknown app {app}")))?;
    let claims = streamhub_shared::auth::verify(token, &key.0, key.1.as_bytes())
        .map_err(|e| ApiError::Unauthorized(format!("publish token refused: {e}")))?;
    let want = format!("{app}-{room}");
    if claims.video.room != want {
        return Err(ApiError::Forbidden(format!(
            "the token is for room {:?}, not {want:?}",
            claims.video.room
        )));
    }
    if !claims.video.can_publish {
        return Err(ApiError::Forbidden(
            "the token does not allow publishing".into(),
        ));
    }
    Ok(format!("{TOKEN_PUBLISHER}{}", claims.sub))
}

/// An RTMP ingress's stream key for this room.
fn stream_key(
    ctx: &NodeCtx,
    app: &AppName,
    room: &RoomName,
    key: &str,
) -> Result<String, ApiError> {
    let hash = sha256_hex(key);
    let ingress = ctx
        .raft
        .read(|s| s.ingress_by_key_hash(&hash).cloned())
        .filter(|i| i.kind == IngressKind::Rtmp)
        .ok_or_else(|| ApiError::Unauthorized("unknown or revoked stream key".into()))?;
    if &ingress.app != app || &ingress.room != room {
        return Err(ApiError::Forbidden(format!(
            "this key publishes to {}/{}, not {app}/{room}",
            ingress.app, ingress.room
        )));
    }
    Ok(ingress.id)
}
