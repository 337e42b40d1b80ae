//! Who is calling: a dashboard session (JWT) or an API key (`sk_…`, maybe app-scoped and
//! IP-restricted). Authorization decisions read the local replica of the tenant state.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use serde::Deserialize;
use streamhub_shared::AppName;

use super::{data, ApiError, Json};
use crate::credentials::{sha256_hex, unix_now, verify_password};
use crate::node::NodeCtx;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The dashboard administrator.
    Admin { user: String },
    /// An API key; `app` set means it may only touch that app.
    Key { id: String, app: Option<AppName> },
}

impl Principal {
    /// Refuses callers scoped to another app.
    pub fn check_app(&self, app: &AppName) -> Result<(), ApiError> {
        match self {
            Principal::Key { app: Some(a), .. } if a != app => Err(ApiError::Forbidden(format!(
                "this API key is scoped to app {a} and cannot touch app {app}"
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses app-scoped keys (for operations on the whole node).
    pub fn check_global(&self) -> Result<(), ApiError> {
        match self {
            Principal::Key { app: Some(a), .. } => Err(ApiError::Forbidden(format!(
                "this API key is scoped to app {a}; this operation needs a global key"
            ))),
            _ => Ok(()),
        }
    }

    /// The app this caller is confined to, if any.
    pub fn scope(&self) -> Option<&AppName> {
        match self {
            Principal::Key { app, .. } => app.as_ref(),
            Principal::Admin { .. } => None,
        }
    }
}

impl FromRequestParts<Arc<NodeCtx>> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<NodeCtx>) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer header".into()))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::Unauthorized("Authorization must be 'Bearer <token>'".into())
            })?;
        let remote = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        if token.starts_with("sk_") {
            return key_principal(ctx, token, remote);
        }
        match ctx.sessions.check(token) {
            Some(claims) => Ok(Principal::Admin { user: claims.sub }),
            None => Err(ApiError::Unauthorized("invalid or expired token".into())),
        }
    }
}

fn key_principal(
    ctx: &NodeCtx,
    token: &str,
    remote: Option<IpAddr>,
) -> Result<Principal, ApiError> {
    let hash = sha256_hex(token);
    let key = ctx
        .raft
        .read(|s| s.api_key_by_hash(&hash).cloned())
        .ok_or_else(|| ApiError::Unauthorized("unknown or revoked API key".into()))?;
    if !key.allow_ips.is_empty() {
        let allowed = remote.is_some_and(|ip| ip_allowed(&key.allow_ips, ip));
        if !allowed {
            return Err(ApiError::Forbidden(format!(
                "API key {} is not allowed from this address",
                key.id
            )));
        }
    }
    Ok(Principal::Key {
        id: key.id,
        app: key.app,
    })
}

/// True if `ip` is in one of the addresses or CIDR ranges.
pub fn ip_allowed(list: &[String], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    list.iter().any(|entry| {
        entry
            .parse::<ipnet::IpNet>()
            .map(|net| net.contains(&ip))
            .or_else(|_| entry.parse::<IpAddr>().map(|a| a == ip))
            .unwrap_or(false)
    })
}

/// Body of `POST /auth/login`.
#[derive(Debug, Deserialize)]
pub struct LoginRequest {
    username: String,
    password: String,
}

/// `POST /auth/login` -> `{data:{token}}`.
pub async fn login(
    State(ctx): State<Arc<NodeCtx>>,
    Json(req): Json<LoginRequest>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let admin = ctx.raft.read(|s| s.admin.clone());
    let stored_ok = admin.as_ref().is_some_and(|a| a.username == req.username) && {
        let phc = admin
            .as_ref()
            .map(|a| a.password_hash.clone())
            .unwrap_or_default();
        let pw = req.password.clone();
        // argon2 is deliberately slow: keep it off the async workers.
        tokio::task::spawn_blocking(move || verify_password(&pw, &phc))
            .await
            .unwrap_or(false)
    };
    let break_glass = ctx.break_glass.as_ref().is_some_and(|(u, p)| {
        u == &req.username && constant_time_eq(p.as_bytes(), req.password.as_bytes())
    });
    if !(stored_ok || break_glass) {
        tracing::warn!(user = %req.username, "failed dashboard login");
        return Err(ApiError::Unauthorized("wrong username or password".into()));
    }
    let token = ctx.sessions.issue(&req.username, unix_now());
    Ok(data(
        serde_json::json!({ "token": token, "expiresIn": crate::credentials::SESSION_TTL_SECS }),
    ))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_allow_list_matches_addresses_and_ranges() {
        let list = vec!["10.0.0.0/8".to_string(), "192.168.1.7".to_string()];
        assert!(ip_allowed(&list, "10.1.2.3".parse().unwrap()));
        assert!(ip_allowed(&list, "192.168.1.7".parse().unwrap()));
        assert!(ip_allowed(&list, "::ffff:10.0.0.1".parse().unwrap()));
        assert!(!ip_allowed(&list, "192.168.1.8".parse().unwrap()));
        assert!(!ip_allowed(&[], "10.0.0.1".parse().unwrap()));
    }
}
