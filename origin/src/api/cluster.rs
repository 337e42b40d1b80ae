//! Cluster membership and the node registry: join tokens, joining, status, removal.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use streamhub_cluster::join::JoinRequest;

use super::tokens::Ttl;
use super::{data, data_with, ApiError, Json, Principal};
use crate::membership::Membership;

/// Body of `POST /cluster/join-tokens`.
#[derive(Debug, Default, Deserialize)]
pub struct JoinTokenRequest {
    ttl: Option<Ttl>,
}

/// `POST /cluster/join-tokens` (admin or global key).
pub async fn create_join_token(
    State(membership): State<Membership>,
    who: Principal,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    who.check_global()?;
    // The body is optional: empty means the default TTL.
    let req: JoinTokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        JoinTokenRequest::default()
    } else {
        streamhub_media::http::parse_body(&body)?
    };
    let ttl = match req.ttl {
        None => std::time::Duration::from_secs(3600),
        Some(t) => t.parse()?,
    };
    let (token, expires_at_ms) = membership.mint_join_token(ttl.as_millis() as u64).await?;
    Ok(data_with(
        StatusCode::CREATED,
        json!({ "token": token, "expiresAtMs": expires_at_ms }),
    ))
}

/// `POST /cluster/join`: authenticated by the join token in the body.
pub async fn join(
    State(membership): State<Membership>,
    Json(req): Json<JoinRequest>,
) -> Result<Response, ApiError> {
    let answer = membership.admit(req).await?;
    Ok(data_with(StatusCode::CREATED, answer))
}

/// `GET /nodes` (any principal): the registry.
pub async fn nodes(State(membership): State<Membership>, _who: Principal) -> axum::Json<Value> {
    data(membership.nodes())
}

/// `GET /cluster` (any principal): leader, term, voters, learners and each node's applied index
/// and health.
pub async fn status(State(membership): State<Membership>, _who: Principal) -> axum::Json<Value> {
    data(membership.status().await)
}

/// `POST /cluster/nodes/:name/remove` (admin or global key).
pub async fn remove(
    State(membership): State<Membership>,
    who: Principal,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    who.check_global()?;
    membership.remove(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
