//! WHIP ingest (RFC 9725): `POST /whip/{app}/{room}` with an SDP offer and
//! `Authorization: Bearer <token>` — an access token of the app with `canPublish` for the room,
//! or an RTMP ingress's stream key for the room — claims the room as RTMP does, and answers
//! `201 Created` with the SDP answer and the session's `Location`; `DELETE` on it ends the
//! session. The publisher's H.264 and Opus go into the room's media as they arrive.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use streamhub_media::http::{bearer, ApiError};
use streamhub_media::webrtc::http::{answered, cors, delete, offer_of, patch, reached_ip};
use streamhub_media::webrtc::ingest::IngestSink;
use streamhub_media::webrtc::{Role, WebRtc};
use streamhub_shared::media::{Frame, TrackInfo};
use streamhub_shared::{AppName, RoomName};

use crate::admission::{Admission, Credential, PublishRequest};
use crate::rooms::{Protocol, Publisher};
use crate::services::Services;

/// The WHIP routes (anyone; the bearer credential decides).
pub fn router(services: Services) -> Router {
    Router::new()
        .route("/whip/{app}/{room}", post(offer))
        .route(
            "/whip/{app}/{room}/{id}",
            axum::routing::delete(end).patch(patch),
        )
        .with_state(services)
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
    State(admission): State<Arc<Admission>>,
    State(webrtc): State<Arc<WebRtc>>,
    Path((app, room)): Path<(String, String)>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let offer = match offer_of(&headers, &body) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let req = match request(&app, &room, &headers, remote) {
        Ok(req) => req,
        Err(e) => return e.into_response(),
    };
    // The credential and the SDP are checked before the room is claimed: a bad offer costs no
    // placement.
    if let Err(e) = admission.authenticate(&req) {
        tracing::info!(%remote, error = %e, "WHIP publisher refused");
        return ApiError::from(e).into_response();
    }
    if let Err(e) = streamhub_media::webrtc::sdp::offer_codecs(&offer)
        .and_then(|c| streamhub_media::webrtc::sdp::check_publish(&c))
    {
        return answered(Err(e.into()), |_| String::new());
    }
    // A slot first: a flood of offers is refused before any room is claimed.
    let slot = match webrtc.reserve(remote.ip(), true) {
        Ok(slot) => slot,
        Err(e) => return answered(Err(e), |_| String::new()),
    };
    let publisher = match admission.admit(req).await {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(%remote, error = %e, "WHIP publisher refused");
            return ApiError::from(e).into_response();
        }
    };
    let stop = publisher.stop_token();
    let role = Role::Publish {
        sink: Box::new(PublisherSink(publisher)),
        stop,
    };
    let result = webrtc
        .open_blocking(slot, offer, role, reached_ip(&headers))
        .await;
    // On an error the publisher went with the role, and the room with it (its placement is
    // released as for any publisher that ends).
    if result.is_ok() {
        tracing::info!(%app, %room, %remote, "WHIP publisher admitted");
    }
    answered(result, |id| format!("/whip/{app}/{room}/{id}"))
}

async fn end(
    State(webrtc): State<Arc<WebRtc>>,
    Path((_app, _room, id)): Path<(String, String, String)>,
) -> Response {
    delete(&webrtc, &id)
}

/// The publish request of a WHIP offer: the room of the path, and the bearer credential (an
/// access token has two dots; anything else is a stream key).
fn request(
    app: &str,
    room: &str,
    headers: &HeaderMap,
    remote: SocketAddr,
) -> Result<PublishRequest, ApiError> {
    let app = AppName::new(app.to_string())?;
    let room = RoomName::new(room.to_string())?;
    let credential = bearer(headers).ok_or_else(|| {
        ApiError::Unauthorized(
            "WHIP needs Authorization: Bearer <token with canPublish, or a stream key>".into(),
        )
    })?;
    let credential = if credential.matches('.').count() == 2 {
        Credential::AccessToken(credential.to_string())
    } else {
        Credential::StreamKey(credential.to_string())
    };
    Ok(PublishRequest {
        room: Some((app, room)),
        credential,
        protocol: Protocol::Whip,
        remote,
    })
}
