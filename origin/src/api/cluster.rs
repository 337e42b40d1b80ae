//! Cluster membership and the node registry: join tokens, joining, status, removal.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use streamhub_cluster::state::{Command, JoinToken, NodeLoad, NodeRecord, NodeRole};
use streamhub_cluster::transport::pki;

use super::tokens::Ttl;
use super::{data, data_with, ApiError, Json, Principal};
use crate::credentials::{random_hex, random_token, sha256_hex, unix_now_ms};
use crate::node::NodeCtx;

/// A node whose last heartbeat is older than this is shown `down` and not steered to.
pub const NODE_TTL_MS: u64 = 10_000;

pub use streamhub_edge::join::JOIN_TOKEN_PREFIX;

/// Mints a join token: `shj_<secret>.<first 16 hex of the CA fingerprint>`, so the joiner can
/// check it reached the right cluster before trusting the CA it is sent.
pub async fn mint_join_token(ctx: &NodeCtx, ttl_ms: u64) -> Result<(String, u64), ApiError> {
    let ca = ctx
        .raft
        .read(|s| s.cluster_ca.clone())
        .ok_or_else(|| ApiError::Unavailable("the cluster CA is not initialised yet".into()))?;
    let fp = pki::ca_fingerprint(&ca.cert_pem).map_err(|e| ApiError::Internal(e.to_string()))?;
    let token = format!("{}.{}", random_token(JOIN_TOKEN_PREFIX, 32), &fp[..16]);
    let now = unix_now_ms();
    let expires_at_ms = now + ttl_ms;
    ctx.write(Command::CreateJoinToken(JoinToken {
        id: format!("jt_{}", random_hex(6)),
        hash: sha256_hex(&token),
        expires_at_ms,
        created_at_ms: now,
    }))
    .await?;
    Ok((token, expires_at_ms))
}

/// Body of `POST /cluster/join-tokens`.
#[derive(Debug, Deserialize)]
pub struct JoinTokenRequest {
    ttl: Option<Ttl>,
}

/// `POST /cluster/join-tokens` (admin or global key).
pub async fn create_join_token(
    State(ctx): State<Arc<NodeCtx>>,
    who: Principal,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    who.check_global()?;
    // The body is optional: empty means the default TTL.
    let req: JoinTokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        JoinTokenRequest { ttl: None }
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?
    };
    let ttl = match req.ttl {
        None => std::time::Duration::from_secs(3600),
        Some(t) => t.parse()?,
    };
    let (token, expires_at_ms) = mint_join_token(&ctx, ttl.as_millis() as u64).await?;
    Ok(data_with(
        StatusCode::CREATED,
        json!({ "token": token, "expiresAtMs": expires_at_ms }),
    ))
}

pub use streamhub_cluster::registry::{JoinAnswer, JoinRequest};

/// `POST /cluster/join`: authenticated by the join token in the body.
pub async fn join(
    State(ctx): State<Arc<NodeCtx>>,
    Json(req): Json<JoinRequest>,
) -> Result<Response, ApiError> {
    pki::validate_node_name(&req.name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let hash = sha256_hex(&req.token);
    let now = unix_now_ms();
    if ctx
        .raft
        .read(|s| s.join_token_by_hash(&hash, now).is_none())
    {
        tracing::warn!(node = %req.name, "join refused: unknown or expired join token");
        return Err(ApiError::Unauthorized(
            "unknown or expired join token".into(),
        ));
    }
    let ca = ctx
        .raft
        .read(|s| s.cluster_ca.clone())
        .ok_or_else(|| ApiError::Unavailable("the cluster CA is not initialised yet".into()))?;
    let node_id = streamhub_cluster::raft::node_id_from_name(&req.name);
    let cert = pki::sign_node_csr(
        &pki::CaBundle {
            cert_pem: ca.cert_pem.clone(),
            key_pem: ca.key_pem.clone(),
        },
        &req.csr,
        &req.name,
        role_str(req.role),
    )
    .map_err(|e| ApiError::BadRequest(format!("certificate request refused: {e}")))?;
    let record = NodeRecord {
        name: req.name.clone(),
        id: node_id,
        role: req.role,
        region: req.region.clone(),
        http_url: req.http_url.clone(),
        rtmp_url: req.rtmp_url.clone(),
        cluster_addr: req.cluster_addr.clone(),
        version: req.version.clone(),
        load: NodeLoad::default(),
        registered_at_ms: now,
        last_heartbeat_ms: now,
    };
    ctx.write(Command::RegisterNode(record)).await.map_err(|e| match e {
        ApiError::Conflict(what) => {
            tracing::warn!(node = %req.name, %what, "join refused: name or id already in the cluster");
            ApiError::Conflict(format!("{what}: remove it first (POST /api/v1/cluster/nodes/:name/remove)"))
        }
        other => other,
    })?;
    if req.role == NodeRole::Origin {
        ctx.spawn_add_voter(node_id, req.cluster_addr.clone(), req.name.clone());
    }
    tracing::info!(node = %req.name, role = role_str(req.role), "node admitted to the cluster");
    let voters = ctx.raft.status().nodes.values().cloned().collect();
    Ok(data_with(
        StatusCode::CREATED,
        JoinAnswer {
            ca_cert: ca.cert_pem,
            cert,
            node_id,
            voters,
        },
    ))
}

fn role_str(r: NodeRole) -> &'static str {
    match r {
        NodeRole::Origin => "origin",
        NodeRole::Edge => "edge",
    }
}

/// True if a node heartbeated within [`NODE_TTL_MS`] of `now_ms`.
pub fn is_up(n: &NodeRecord, now_ms: u64) -> bool {
    now_ms.saturating_sub(n.last_heartbeat_ms) <= NODE_TTL_MS
}

/// `GET /nodes`: the registry.
pub async fn nodes(State(ctx): State<Arc<NodeCtx>>, _who: Principal) -> axum::Json<Value> {
    let now = unix_now_ms();
    let list: Vec<Value> = ctx.raft.read(|s| {
        s.nodes
            .values()
            .map(|n| {
                let mut v = serde_json::to_value(n).unwrap_or_default();
                v["status"] = if is_up(n, now) { "up" } else { "down" }.into();
                v["lastHeartbeatMs"] = n.last_heartbeat_ms.into();
                v
            })
            .collect()
    });
    data(list)
}

/// `GET /cluster`: leader, term, voters, learners and each node's applied index and health.
pub async fn status(State(ctx): State<Arc<NodeCtx>>, _who: Principal) -> axum::Json<Value> {
    data(ctx.cluster_status().await)
}

/// `POST /cluster/nodes/:name/remove` (admin or global key).
pub async fn remove(
    State(ctx): State<Arc<NodeCtx>>,
    who: Principal,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    who.check_global()?;
    let record = ctx
        .raft
        .read(|s| s.nodes.get(&name).cloned())
        .ok_or_else(|| ApiError::NotFound(format!("node {name}")))?;
    if record.role == NodeRole::Origin {
        ctx.raft
            .remove_node(record.id)
            .await
            .map_err(|e| ApiError::Unavailable(format!("membership change failed: {e}")))?;
    }
    ctx.write(Command::RemoveNode { name: name.clone() })
        .await?;
    tracing::info!(node = %name, "node removed from the cluster");
    Ok(StatusCode::NO_CONTENT)
}
