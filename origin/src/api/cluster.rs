//! Cluster membership and the node registry: join tokens, joining, status, removal.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

use streamhub_cluster::join::JoinRequest;
use streamhub_cluster::state::{JoinToken, NodeRole};

use super::tokens::Ttl;
use super::{data, data_with, ApiError, Json, Principal};
use crate::authz::Action;
use crate::membership::Membership;

/// How long a join token lasts unless asked otherwise.
const DEFAULT_JOIN_TTL: Duration = Duration::from_secs(15 * 60);
/// The longest a join token may last.
const MAX_JOIN_TTL: Duration = Duration::from_secs(24 * 3600);
/// The most joins one token may allow.
const MAX_JOIN_USES: u32 = 100;

/// Body of `POST /cluster/join-tokens`.
#[derive(Debug, Deserialize)]
pub struct JoinTokenRequest {
    role: NodeRole,
    uses: Option<u32>,
    ttl: Option<Ttl>,
}

/// A join token as listed: everything but its secret.
fn token_view(t: &JoinToken) -> Value {
    json!({
        "id": t.id,
        "role": t.role,
        "usesLeft": t.uses_left,
        "expiresAtMs": t.expires_at_ms,
        "createdAtMs": t.created_at_ms,
    })
}

/// `POST /cluster/join-tokens` `{role, uses?, ttl?}` (admin or global key) ->
/// `{id, token, role, usesLeft, expiresAtMs}`: the token is shown here once.
pub async fn create_join_token(
    State(membership): State<Membership>,
    who: Principal,
    Json(req): Json<JoinTokenRequest>,
) -> Result<Response, ApiError> {
    who.check_global()?;
    who.may(Action::ManageCluster, None)?;
    let ttl = match req.ttl {
        None => DEFAULT_JOIN_TTL,
        Some(t) => t.parse()?,
    };
    if ttl > MAX_JOIN_TTL {
        return Err(ApiError::BadRequest(format!(
            "a join token lasts at most {}h",
            MAX_JOIN_TTL.as_secs() / 3600
        )));
    }
    let uses = req.uses.unwrap_or(1);
    if !(1..=MAX_JOIN_USES).contains(&uses) {
        return Err(ApiError::BadRequest(format!(
            "uses must be 1 to {MAX_JOIN_USES}"
        )));
    }
    let (token, record) = membership
        .mint_join_token(req.role, uses, ttl.as_millis() as u64)
        .await?;
    let mut view = token_view(&record);
    view["token"] = token.into();
    Ok(data_with(StatusCode::CREATED, view))
}

/// `GET /cluster/join-tokens` (admin or global key): the valid tokens, without their secrets.
pub async fn list_join_tokens(
    State(membership): State<Membership>,
    who: Principal,
) -> Result<axum::Json<Value>, ApiError> {
    who.check_global()?;
    who.may(Action::ManageCluster, None)?;
    let tokens: Vec<Value> = membership.join_tokens().iter().map(token_view).collect();
    Ok(data(tokens))
}

/// `DELETE /cluster/join-tokens/:id` (admin or global key): revokes a token.
pub async fn delete_join_token(
    State(membership): State<Membership>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    who.check_global()?;
    who.may(Action::ManageCluster, None)?;
    if id.len() > 64 {
        return Err(ApiError::NotFound(format!("join token {id:.64}")));
    }
    membership.delete_join_token(&id).await?;
    Ok(StatusCode::NO_CONTENT)
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
pub async fn nodes(
    State(membership): State<Membership>,
    who: Principal,
) -> Result<axum::Json<Value>, ApiError> {
    who.may(Action::ReadCluster, None)?;
    Ok(data(membership.nodes()))
}

/// `GET /cluster` (any principal): leader, term, voters, learners and each node's applied index
/// and health.
pub async fn status(
    State(membership): State<Membership>,
    who: Principal,
) -> Result<axum::Json<Value>, ApiError> {
    who.may(Action::ReadCluster, None)?;
    Ok(data(membership.status().await))
}

/// `POST /cluster/nodes/:name/drain` (admin or global key): the node leaves steering at once
/// (no new viewer), an edge ends its WHEP sessions (their players move) and serves the rest
/// until it stops; `DELETE` ends the drain. A node restarted after the drain began is no
/// longer draining. Answers the node's record (`drainingSinceMs`).
pub async fn drain(
    State(membership): State<Membership>,
    who: Principal,
    Path(name): Path<String>,
    method: axum::http::Method,
) -> Result<axum::Json<Value>, ApiError> {
    who.check_global()?;
    who.may(Action::ManageCluster, None)?;
    let on = method == axum::http::Method::POST;
    Ok(data(membership.drain(&name, on).await?))
}

/// `POST /cluster/nodes/:name/remove` (admin or global key).
pub async fn remove(
    State(membership): State<Membership>,
    who: Principal,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    who.check_global()?;
    who.may(Action::ManageCluster, None)?;
    membership.remove(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
