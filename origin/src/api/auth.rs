//! Who is calling: a dashboard session (JWT) or an API key (`sk_…`, maybe app-scoped and
//! IP-restricted). Authorization decisions read the local replica of the tenant state.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use serde::Deserialize;
use streamhub_shared::AppName;

use super::{data, ApiError, Json};
use crate::authz::{decide, Action, Holder, Mode};
use streamhub_cluster::state::{Command, Role, RoleBinding};

use crate::credentials::Sessions;
use crate::login::LoginGuard;
use crate::tenants::Tenants;
use streamhub_media::http::ClientAddr;

/// Who an authenticated caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The bootstrap administrator (or the break-glass login).
    Admin { user: String },
    /// A dashboard user with roles.
    User { name: String },
    /// An API key; `app` set means it may only touch that app; `role` unset keeps what keys
    /// could always do within their scope.
    Key {
        id: String,
        app: Option<AppName>,
        role: Option<Role>,
    },
}

/// An authenticated caller, with what the authorization decision needs.
#[derive(Debug, Clone)]
pub struct Principal {
    pub caller: Caller,
    /// The caller's role bindings (a user's; a key with a role gets one).
    bindings: Vec<RoleBinding>,
    mode: Mode,
}

impl Principal {
    /// A principal of `caller` with `bindings`, decided under `mode`.
    pub fn new(caller: Caller, bindings: Vec<RoleBinding>, mode: Mode) -> Self {
        Self {
            caller,
            bindings,
            mode,
        }
    }

    /// How logs and refusals name the caller.
    pub fn label(&self) -> String {
        match &self.caller {
            Caller::Admin { user } => format!("admin:{user}"),
            Caller::User { name } => format!("user:{name}"),
            Caller::Key {
                id, app: Some(app), ..
            } => format!("key:{id}@{app}"),
            Caller::Key { id, app: None, .. } => format!("key:{id}"),
        }
    }

    fn holder(&self) -> Holder<'_> {
        match &self.caller {
            Caller::Admin { .. } => Holder::Superuser,
            Caller::Key { role: None, .. } => Holder::Unroled,
            _ => Holder::Bindings(&self.bindings),
        }
    }

    /// The authorization decision for `action` in `app` (`None`: node-wide), under the mode:
    /// `off` allows, `log` logs a denial and allows, `on` refuses it (403).
    pub fn may(&self, action: Action, app: Option<&AppName>) -> Result<(), ApiError> {
        if self.mode == Mode::Off {
            return Ok(());
        }
        let decision = decide(&self.holder(), action, app);
        if decision.allowed {
            return Ok(());
        }
        let principal = self.label();
        let app_name = app.map_or("*", |a| a.as_str());
        if self.mode == Mode::Log {
            tracing::warn!(
                %principal,
                action = %action.as_str(),
                app = %app_name,
                rule = %decision.rule,
                "authz would deny (STREAMHUB_AUTHZ_ENFORCE=log: allowed)"
            );
            return Ok(());
        }
        tracing::info!(
            %principal,
            action = %action.as_str(),
            app = %app_name,
            rule = %decision.rule,
            "authz denied"
        );
        Err(ApiError::Forbidden(format!(
            "{principal} may not {} in {}: {}",
            action.as_str(),
            app.map_or_else(|| "the whole node".to_string(), |a| format!("app {a}")),
            decision.rule
        )))
    }

    /// The highest role the caller holds in `app` (`None`: node-wide, `*` bindings only);
    /// `None` for the administrator and keys without a role, who hold every role.
    fn best_role(&self, app: Option<&AppName>) -> Option<Option<Role>> {
        match self.holder() {
            Holder::Superuser | Holder::Unroled => None,
            Holder::Bindings(b) => Some(b.iter().filter(|b| b.covers(app)).map(|b| b.role).max()),
        }
    }

    /// Refuses (under `on`; logs under `log`) handing out `role` in `app` above the caller's
    /// own: a key or user made by a caller never holds more than it. `None` asks for every
    /// role (a key without a role).
    pub fn may_grant(&self, role: Option<Role>, app: Option<&AppName>) -> Result<(), ApiError> {
        if self.mode == Mode::Off {
            return Ok(());
        }
        let Some(mine) = self.best_role(app) else {
            return Ok(());
        };
        let within = match (role, mine) {
            (Some(wanted), Some(held)) => wanted <= held,
            // Every role: only for whoever holds every role.
            (None, _) | (_, None) => false,
        };
        if within {
            return Ok(());
        }
        let wanted = role.map_or("every role (no role)", |r| r.as_str());
        let held = mine.map_or("none", |r| r.as_str());
        let place = app.map_or_else(|| "every app (*)".to_string(), |a| format!("app {a}"));
        let principal = self.label();
        if self.mode == Mode::Log {
            tracing::warn!(%principal, action = "grant", app = %place, rule = %format!("{wanted} > {held}"), "authz would deny (STREAMHUB_AUTHZ_ENFORCE=log: allowed)");
            return Ok(());
        }
        Err(ApiError::Forbidden(format!(
            "{principal} may not grant {wanted} in {place}: it holds {held} there"
        )))
    }

    /// The decision for `action` in `app` without logging or refusing (for filtering lists);
    /// `off` allows everything.
    pub fn may_quietly(&self, action: Action, app: Option<&AppName>) -> bool {
        self.mode == Mode::Off || decide(&self.holder(), action, app).allowed
    }

    /// Whether the caller sees `app` in lists: a key's scope; a user's bindings (unless
    /// authorization is off).
    pub fn sees(&self, app: &AppName) -> bool {
        match &self.caller {
            Caller::Key { app: Some(a), .. } => a == app,
            Caller::User { .. } if self.mode != Mode::Off => {
                self.bindings.iter().any(|b| b.covers(Some(app)))
            }
            _ => true,
        }
    }

    /// Refuses callers scoped to another app.
    pub fn check_app(&self, app: &AppName) -> Result<(), ApiError> {
        match &self.caller {
            Caller::Key { app: Some(a), .. } if a != app => Err(ApiError::Forbidden(format!(
                "this API key is scoped to app {a} and cannot touch app {app}"
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses app-scoped keys (for operations on the whole node).
    pub fn check_global(&self) -> Result<(), ApiError> {
        match &self.caller {
            Caller::Key { app: Some(a), .. } => Err(ApiError::Forbidden(format!(
                "this API key is scoped to app {a}; this operation needs a global key"
            ))),
            _ => Ok(()),
        }
    }

    /// The app this caller is confined to, if any.
    pub fn scope(&self) -> Option<&AppName> {
        match &self.caller {
            Caller::Key { app, .. } => app.as_ref(),
            _ => None,
        }
    }
}

/// The authorization mode of this origin (`STREAMHUB_AUTHZ_ENFORCE`).
#[derive(Debug, Clone, Copy)]
pub struct Authz(pub Mode);

impl<S> FromRequestParts<S> for Principal
where
    S: Send + Sync,
    Tenants: FromRef<S>,
    Sessions: FromRef<S>,
    Authz: FromRef<S>,
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
        let mode = Authz::from_ref(state).0;
        let tenants = Tenants::from_ref(state);
        let principal = if token.starts_with("sk_") {
            key_principal(&tenants, token, remote, mode).await
        } else {
            let sessions = Sessions::from_ref(state);
            match sessions.check(token) {
                Some(claims) => session_principal(&tenants, &sessions, claims.sub, mode),
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

/// The principal of a valid session of `user`: the administrator, or a user that still exists
/// (with the roles it has now).
fn session_principal(
    tenants: &Tenants,
    sessions: &Sessions,
    user: String,
    mode: Mode,
) -> Result<Principal, ApiError> {
    let (is_admin, roles) = tenants.read(|s| {
        let admin = s.tenants.admin.as_ref().is_some_and(|a| a.username == user);
        (admin, s.tenants.users.get(&user).map(|u| u.roles.clone()))
    });
    if is_admin || sessions.is_break_glass_user(&user) {
        return Ok(Principal::new(Caller::Admin { user }, Vec::new(), mode));
    }
    match roles {
        Some(roles) => Ok(Principal::new(Caller::User { name: user }, roles, mode)),
        None => Err(ApiError::Unauthorized(format!(
            "user {user} no longer exists"
        ))),
    }
}

async fn key_principal(
    tenants: &Tenants,
    token: &str,
    remote: Option<IpAddr>,
    mode: Mode,
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
    let bindings = key
        .role
        .map(|role| RoleBinding {
            app: key
                .app
                .as_ref()
                .map_or_else(|| RoleBinding::ANY_APP.to_string(), |a| a.to_string()),
            role,
        })
        .into_iter()
        .collect();
    Ok(Principal::new(
        Caller::Key {
            id: key.id,
            app: key.app,
            role: key.role,
        },
        bindings,
        mode,
    ))
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

/// Checks `password` against the stored admin's or user's (argon2 on a hashing permit; an
/// unknown user costs the same).
async fn password_ok(
    tenants: &Tenants,
    guard: &LoginGuard,
    user: &str,
    password: &str,
) -> Result<bool, ApiError> {
    let phc = tenants.read(|s| {
        s.tenants
            .admin
            .as_ref()
            .filter(|a| a.username == user)
            .map(|a| a.password_hash.clone())
            .or_else(|| s.tenants.users.get(user).map(|u| u.password_hash.clone()))
    });
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
    let ok = password_ok(&tenants, &guard, &req.username, &req.password).await?
        || sessions.is_break_glass(&req.username, &req.password);
    if !ok {
        tracing::warn!(user = %truncate(&req.username), %client, "failed dashboard login");
        return Err(ApiError::Unauthorized("wrong username or password".into()));
    }
    attempt.succeeded();
    let (token, claims) = sessions.issue(&req.username)?;
    audit.principal(session_label(&tenants, &claims.sub));
    Ok(data(
        serde_json::json!({ "token": token, "expiresIn": crate::credentials::SESSION_TTL_SECS }),
    ))
}

/// How the audit log names a session's user.
fn session_label(tenants: &Tenants, user: &str) -> String {
    let is_user = tenants.read(|s| s.tenants.users.contains_key(user));
    if is_user {
        format!("user:{user}")
    } else {
        format!("admin:{user}")
    }
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
    audit.principal(session_label(&tenants, &claims.sub));
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
    audit.principal(session_label(&tenants, &claims.sub));
    let chars = req.new.chars().count();
    if !(MIN_PASSWORD_LEN..=MAX_CREDENTIAL_LEN).contains(&chars)
        || req.current.len() > MAX_CREDENTIAL_LEN
    {
        return Err(ApiError::BadRequest(format!(
            "the new password must be {MIN_PASSWORD_LEN} to {MAX_CREDENTIAL_LEN} characters"
        )));
    }
    if !password_ok(&tenants, &guard, &claims.sub, &req.current).await? {
        return Err(ApiError::Forbidden("the current password is wrong".into()));
    }
    let password_hash = guard.hash(&req.new).await?;
    let at_ms = crate::credentials::unix_now_ms();
    let is_user = tenants.read(|s| s.tenants.users.contains_key(&claims.sub));
    let change = if is_user {
        Command::UpdateUser {
            username: claims.sub.clone(),
            password_hash: Some(password_hash),
            roles: None,
            at_ms,
        }
    } else {
        Command::SetAdminPassword {
            password_hash,
            at_ms,
        }
    };
    tenants.write(change).await?;
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
    who.may(Action::ManageCluster, None)?;
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
