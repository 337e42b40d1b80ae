//! `POST /apps/:app/tokens`: access tokens with LiveKit's claims, signed twice: `token` with the
//! app's Ed25519 key (what streamhub's WHIP, WHEP, HLS and MJPEG take, verifiable on edges with
//! the public key only) and `livekitToken` with its HS256 secret (what LiveKit clients expect;
//! verified by origins).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use streamhub_shared::auth::{mint as mint_hs256, AccessClaims, VideoGrant};
use streamhub_shared::ttl::parse_ttl;
use streamhub_shared::RoomName;

use super::apps::authorize_app;
use super::{data_with, ApiError, Json, Principal};
use crate::authz::Action;
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
    let app = authorize_app(&who, &app, Action::MintTokens)?;
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
    let signer = match tenants.app_signer(&app)? {
        Some(signer) => signer,
        None => {
            tenants.fresh().await;
            tenants
                .app_signer(&app)?
                .ok_or_else(|| ApiError::NotFound(format!("app {app}")))?
        }
    };
    let now = unix_now();
    let namespaced = format!("{app}-{room}");
    let claims = AccessClaims {
        iss: signer.key_id.clone(),
        sub: req.identity.clone(),
        nbf: now.saturating_sub(5),
        exp: now + ttl.as_secs(),
        max_viewers: None,
        video: VideoGrant {
            room: namespaced.clone(),
            room_join: true,
            can_publish: req.can_publish,
            can_subscribe: req.can_subscribe,
        },
    };
    let livekit_token = mint_hs256(&claims, signer.hs256.as_bytes());
    // An app made before key pairs gets one when the leader seals its secrets (seconds).
    let token = match &signer.ed {
        Some(ed) => ed.mint(&claims),
        None => livekit_token.clone(),
    };
    let base = urls.base();
    let ws_base = urls.ws_base();
    // The viewer's best node (same region first, then least loaded) plays the room.
    let play_base = steering
        .choose(urls.region())
        .map_or_else(|| base.to_string(), |t| t.base);
    let body = json!({
        "token": token,
        "livekitToken": livekit_token,
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

/// Body of `POST /apps/:app/play-tokens`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlayTokenRequest {
    room: String,
    ttl: Option<Ttl>,
    /// At most this many viewers watch with the token at once (per node).
    max_viewers: Option<u32>,
}

/// `POST /apps/:app/play-tokens` `{room, ttl?, maxViewers?}` (`mint tokens`): a public play
/// token for anonymous viewers of one room (watch only), for `/play` and embeds of a private
/// app. Revoked with the app's signing keys (`rotate-keys`).
pub async fn mint_play(
    State(tenants): State<Tenants>,
    State(urls): State<PublicUrls>,
    who: Principal,
    Path(app): Path<String>,
    Json(req): Json<PlayTokenRequest>,
) -> Result<Response, ApiError> {
    let app = authorize_app(&who, &app, Action::MintTokens)?;
    let room = RoomName::new(req.room)?;
    if req.max_viewers == Some(0) {
        return Err(ApiError::BadRequest("maxViewers must be at least 1".into()));
    }
    let ttl = match req.ttl {
        None => std::time::Duration::from_secs(24 * 3600),
        Some(t) => t.parse()?,
    };
    let signer = tenants
        .app_signer(&app)?
        .ok_or_else(|| ApiError::NotFound(format!("app {app}")))?;
    let ed = signer.ed.as_ref().ok_or_else(|| {
        ApiError::Unavailable("the app's key pair is being made; retry in a few seconds".into())
    })?;
    let now = unix_now();
    let claims = AccessClaims {
        iss: signer.key_id.clone(),
        sub: crate::credentials::random_token("play_", 12),
        nbf: now.saturating_sub(5),
        exp: now + ttl.as_secs(),
        max_viewers: req.max_viewers,
        video: VideoGrant {
            room: format!("{app}-{room}"),
            room_join: true,
            can_publish: false,
            can_subscribe: true,
        },
    };
    let token = ed.mint(&claims);
    let base = urls.base();
    let q = format!("token={token}");
    let body = json!({
        "token": token,
        "app": app,
        "room": room,
        "expiresAt": claims.exp,
        "maxViewers": req.max_viewers,
        "playUrl": format!("{base}/play/{app}/{room}?{q}"),
        "embedUrl": format!("{base}/embed/{app}/{room}?{q}"),
        "hlsUrl": format!("{base}/hls/{app}/{room}/index.m3u8?{q}"),
    });
    Ok(data_with(StatusCode::CREATED, body))
}
