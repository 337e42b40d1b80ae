//! `POST /apps/:app/tokens`: LiveKit-compatible access tokens signed with the app's secret.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use streamhub_shared::auth::{mint as mint_token, AccessClaims, VideoGrant};
use streamhub_shared::ttl::parse_ttl;
use streamhub_shared::RoomName;

use super::apps::{authorize_app, load_app};
use super::{data_with, ApiError, Json, Principal};
use crate::credentials::unix_now;
use crate::services::PublicUrls;
use crate::tenants::Tenants;
use streamhub_media::play::Steering;

/// A TTL given as `"1h"`/`"30m"` or a number of seconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Ttl {
    Seconds(u64),
    Text(String),
}

/// Body of `POST /apps/:app/tokens`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRequest {
    room: String,
    identity: String,
    #[serde(default)]
    can_publish: bool,
    #[serde(default = "yes")]
    can_subscribe: bool,
    ttl: Option<Ttl>,
}

impl Ttl {
    /// The duration, validated like every TTL (1 s to 30 days).
    pub fn parse(self) -> Result<std::time::Duration, ApiError> {
        match self {
            Ttl::Seconds(s) => parse_ttl(&s.to_string()),
            Ttl::Text(t) => parse_ttl(&t),
        }
        .map_err(|e| ApiError::BadRequest(e.to_string()))
    }
}

fn yes() -> bool {
    true
}

/// `POST /apps/:app/tokens` (any principal of the app).
pub async fn mint(
    State(tenants): State<Tenants>,
    State(urls): State<PublicUrls>,
    State(steering): State<Arc<Steering>>,
    who: Principal,
    Path(app): Path<String>,
    Json(req): Json<TokenRequest>,
) -> Result<Response, ApiError> {
    let app = authorize_app(&who, &app)?;
    let room = RoomName::new(req.room)?;
    if req.identity.is_empty() || req.identity.chars().count() > 128 {
        return Err(ApiError::BadRequest(
            "identity must be 1 to 128 characters".into(),
        ));
    }
    let ttl = match req.ttl {
        None => std::time::Duration::from_secs(3600),
        Some(t) => t.parse()?,
    };
    let record = load_app(&tenants, &app)?;
    let now = unix_now();
    let namespaced = format!("{app}-{room}");
    let claims = AccessClaims {
        iss: record.key_id.clone(),
        sub: req.identity.clone(),
        nbf: now.saturating_sub(5),
        exp: now + ttl.as_secs(),
        video: VideoGrant {
            room: namespaced.clone(),
            room_join: true,
            can_publish: req.can_publish,
            can_subscribe: req.can_subscribe,
        },
    };
    let token = mint_token(&claims, record.secret.as_bytes());
    let base = urls.base();
    let ws_base = urls.ws_base();
    // The viewer's best node (same region first, then least loaded) plays the room.
    let play_base = steering
        .choose(urls.region())
        .map_or_else(|| base.to_string(), |t| t.base);
    let body = json!({
        "token": token,
        "app": app,
        "room": namespaced,
        "identity": req.identity,
        "expiresAt": claims.exp,
        "wsUrl": ws_base,
        "whipUrl": format!("{base}/whip/{app}/{room}"),
        "whepUrl": format!("{base}/whep/{app}/{room}"),
        "playUrl": format!("{play_base}/play/{app}/{room}"),
        "embedUrl": format!("{base}/embed/{app}/{room}"),
        "hlsUrl": format!("{base}/hls/{app}/{room}/index.m3u8"),
    });
    Ok(data_with(StatusCode::CREATED, body))
}
