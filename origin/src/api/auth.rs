//! Who is calling: a dashboard session (JWT) or an API key (`sk_…`, maybe app-scoped and
//! IP-restricted). Authorization decisions read the local replica of the tenant state.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use serde::Deserialize;
use streamhub_shared::AppName;

use super::{data, ApiError, Json};
use crate::credentials::{verify_password, Sessions};
use crate::tenants::Tenants;

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

impl<S> FromRequestParts<S> for Principal
where
    S: Send + Sync,
    Tenants: FromRef<S>,
    Sessions: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let token = streamhub_media::http::bearer(&parts.headers).ok_or_else(|| {
            ApiError::Unauthorized("an Authorization: Bearer <token> header is needed".into())
        })?;
        let remote = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        if token.starts_with("sk_") {
            return key_principal(&Tenants::from_ref(state), token, remote);
        }
        match Sessions::from_ref(state).check(token) {
            Some(claims) => Ok(Principal::Admin { user: claims.sub }),
            None => Err(ApiError::Unauthorized("invalid or expired token".into())),
        }
    }
}

fn key_principal(
    tenants: &Tenants,
    token: &str,
    remote: Option<IpAddr>,
) -> Result<Principal, ApiError> {
    let key = tenants
        .api_key_by_secret(token)
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

/// `POST /auth/login` -> `{data:{token}}` (anyone; the credentials decide).
pub async fn login(
    State(tenants): State<Tenants>,
    State(sessions): State<Sessions>,
    Json(req): Json<LoginRequest>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let admin = tenants.admin();
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
    if !(stored_ok || sessions.is_break_glass(&req.username, &req.password)) {
        tracing::warn!(user = %req.username, "failed dashboard login");
        return Err(ApiError::Unauthorized("wrong username or password".into()));
    }
    let token = sessions.issue(&req.username);
    Ok(data(
        serde_json::json!({ "token": token, "expiresIn": crate::credentials::SESSION_TTL_SECS }),
    ))
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
