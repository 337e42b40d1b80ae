//! Who is calling: a dashboard session (JWT) or an API key (`sk_…`, maybe app-scoped and
//! IP-restricted). Authorization decisions read the local replica of the tenant state.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use serde::Deserialize;
use streamhub_shared::AppName;

use super::{data, ApiError, Json};
use streamhub_cluster::state::Command;

use crate::credentials::Sessions;
use crate::login::LoginGuard;
use crate::tenants::Tenants;
use streamhub_media::http::ClientAddr;

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
        let principal = if token.starts_with("sk_") {
            key_principal(&Tenants::from_ref(state), token, remote).await
        } else {
            match Sessions::from_ref(state).check(token) {
                Some(claims) => Ok(Principal::Admin { user: claims.sub }),
                None => Err(ApiError::Unauthorized(
                    "invalid, expired or logged-out session".into(),
                )),
            }
        };
        if let Ok(p) = &principal {
            crate::audit::record_principal(&parts.extensions, p);
        }
        principal
    }
}

async fn key_principal(
    tenants: &Tenants,
    token: &str,
    remote: Option<IpAddr>,
) -> Result<Principal, ApiError> {
    let key = match tenants.api_key_by_secret(token) {
        Some(key) => key,
        None => {
            // Maybe created a moment ago through another origin: confirm before refusing.
            tenants.fresh().await;
            tenants
                .api_key_by_secret(token)
                .ok_or_else(|| ApiError::Unauthorized("unknown or revoked API key".into()))?
        }
    };
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

/// The longest username or password accepted (argon2 hashes whatever it is given).
const MAX_CREDENTIAL_LEN: usize = 1024;
/// The shortest new admin password.
const MIN_PASSWORD_LEN: usize = 10;

/// Body of `POST /auth/login`.
#[derive(Debug, Deserialize)]
pub struct LoginRequest {
    username: String,
    password: String,
}

/// Checks `password` against the stored admin's (argon2 on a hashing permit; an unknown user
/// costs the same).
async fn admin_password_ok(
    tenants: &Tenants,
    guard: &LoginGuard,
    user: &str,
    password: &str,
) -> Result<bool, ApiError> {
    let phc = tenants
        .admin()
        .filter(|a| a.username == user)
        .map(|a| a.password_hash);
    guard.verify(password, phc).await
}

/// `POST /auth/login` -> `{data:{token, expiresIn}}` (anyone; the credentials decide). Every
/// attempt, refused or not, is in the audit log; attempts are throttled per client address and
/// per username (429 with `Retry-After`).
pub async fn login(
    State(tenants): State<Tenants>,
    State(sessions): State<Sessions>,
    State(guard): State<LoginGuard>,
    ClientAddr(client): ClientAddr,
    audit: crate::audit::Audit,
    Json(req): Json<LoginRequest>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    audit.principal(format!("login:{}", truncate(&req.username)));
    if req.username.len() > MAX_CREDENTIAL_LEN || req.password.len() > MAX_CREDENTIAL_LEN {
        return Err(ApiError::BadRequest(format!(
            "username and password are at most {MAX_CREDENTIAL_LEN} bytes"
        )));
    }
    let attempt = guard.begin(client.ip(), &req.username)?;
    let ok = admin_password_ok(&tenants, &guard, &req.username, &req.password).await?
        || sessions.is_break_glass(&req.username, &req.password);
    if !ok {
        tracing::warn!(user = %truncate(&req.username), %client, "failed dashboard login");
        return Err(ApiError::Unauthorized("wrong username or password".into()));
    }
    attempt.succeeded();
    let (token, claims) = sessions.issue(&req.username)?;
    audit.principal(format!("admin:{}", claims.sub));
    Ok(data(
        serde_json::json!({ "token": token, "expiresIn": crate::credentials::SESSION_TTL_SECS }),
    ))
}

/// A username as logged: at most 64 characters.
fn truncate(user: &str) -> String {
    user.chars().take(64).collect()
}

/// The session a request presents, checked, or 401.
fn session_of(
    parts: &axum::http::HeaderMap,
    sessions: &Sessions,
) -> Result<crate::credentials::SessionClaims, ApiError> {
    let token = streamhub_media::http::bearer(parts).ok_or_else(|| {
        ApiError::Unauthorized("an Authorization: Bearer <session> header is needed".into())
    })?;
    if token.starts_with("sk_") {
        return Err(ApiError::BadRequest(
            "this ends a dashboard session; API keys are revoked with DELETE /api/v1/api-keys/:id"
                .into(),
        ));
    }
    sessions
        .check(token)
        .ok_or_else(|| ApiError::Unauthorized("invalid, expired or logged-out session".into()))
}

/// `POST /auth/logout` (the session itself): ends the session on every origin.
pub async fn logout(
    State(tenants): State<Tenants>,
    State(sessions): State<Sessions>,
    audit: crate::audit::Audit,
    headers: axum::http::HeaderMap,
) -> Result<axum::http::StatusCode, ApiError> {
    let claims = session_of(&headers, &sessions)?;
    audit.principal(format!("admin:{}", claims.sub));
    tenants
        .write(Command::RevokeSession {
            jti: claims.jti,
            exp: claims.exp,
            now: crate::credentials::unix_now(),
        })
        .await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Body of `POST /auth/password`.
#[derive(Debug, Deserialize)]
pub struct PasswordChange {
    current: String,
    new: String,
}

/// `POST /auth/password` `{current, new}` (an admin session): changes the admin's password
/// and ends every other session; answers a new session token.
pub async fn change_password(
    State(tenants): State<Tenants>,
    State(sessions): State<Sessions>,
    State(guard): State<LoginGuard>,
    audit: crate::audit::Audit,
    headers: axum::http::HeaderMap,
    Json(req): Json<PasswordChange>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let claims = session_of(&headers, &sessions)?;
    audit.principal(format!("admin:{}", claims.sub));
    let chars = req.new.chars().count();
    if !(MIN_PASSWORD_LEN..=MAX_CREDENTIAL_LEN).contains(&chars)
        || req.current.len() > MAX_CREDENTIAL_LEN
    {
        return Err(ApiError::BadRequest(format!(
            "the new password must be {MIN_PASSWORD_LEN} to {MAX_CREDENTIAL_LEN} characters"
        )));
    }
    if !admin_password_ok(&tenants, &guard, &claims.sub, &req.current).await? {
        return Err(ApiError::Forbidden("the current password is wrong".into()));
    }
    let password_hash = guard.hash(&req.new).await?;
    tenants
        .write(Command::SetAdminPassword {
            password_hash,
            at_ms: crate::credentials::unix_now_ms(),
        })
        .await?;
    let (token, _) = sessions.issue(&claims.sub)?;
    Ok(data(
        serde_json::json!({ "token": token, "expiresIn": crate::credentials::SESSION_TTL_SECS }),
    ))
}

/// `POST /auth/rotate-session-key` (admin or global key): a new cluster session key; every
/// dashboard session ends on every origin (log in again). Refused while sessions are signed
/// with `STREAMHUB_JWT_SECRET`, which is rotated by changing it on every origin.
pub async fn rotate_session_key(
    State(tenants): State<Tenants>,
    State(sessions): State<Sessions>,
    who: Principal,
) -> Result<axum::http::StatusCode, ApiError> {
    who.check_global()?;
    if sessions.from_environment() {
        return Err(ApiError::Conflict(format!(
            "sessions are signed with {}: change it on every origin",
            crate::credentials::SESSION_KEY_ENV
        )));
    }
    let sealed = tenants.keyring().seal(
        streamhub_cluster::seal::place::SESSION_KEY,
        crate::credentials::random_hex(32).as_bytes(),
    )?;
    tenants.write(Command::RotateSessionKey { sealed }).await?;
    tracing::info!("session key rotated: every dashboard session ended");
    Ok(axum::http::StatusCode::NO_CONTENT)
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
