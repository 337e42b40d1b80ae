//! Dashboard users with roles per app: `POST/GET /users`, `PATCH/DELETE /users/:username`.
//! Passwords are stored as argon2id hashes; users sign in through `POST /auth/login`.
//!
//! Who may: `manage users` in every app a user has (or is given) a role in — an app's owner
//! for its app, a `*` owner for `*` bindings — and never a role above the caller's own.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use streamhub_cluster::state::controls::MAX_BINDINGS;
use streamhub_cluster::state::{Command, RoleBinding, User};
use streamhub_shared::AppName;

use super::{data, data_with, ApiError, Json, Principal};
use crate::authz::Action;
use crate::credentials::unix_now_ms;
use crate::login::LoginGuard;
use crate::tenants::Tenants;

/// The shortest password a user may be given.
const MIN_PASSWORD_LEN: usize = 10;
/// The longest password or username accepted.
const MAX_LEN: usize = 1024;

/// Body of `POST /users`.
#[derive(Debug, Deserialize)]
pub struct CreateUser {
    username: String,
    password: String,
    #[serde(default)]
    roles: Vec<RoleBinding>,
}

/// Body of `PATCH /users/:username`.
#[derive(Debug, Deserialize)]
pub struct UpdateUser {
    password: Option<String>,
    roles: Option<Vec<RoleBinding>>,
}

/// A user as the API shows it (never its password hash).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    username: String,
    roles: Vec<RoleBinding>,
    created_at_ms: u64,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        Self {
            username: u.username.clone(),
            roles: u.roles.clone(),
            created_at_ms: u.created_at_ms,
        }
    }
}

fn check_username(name: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "username must be 1 to 64 characters of a-z, A-Z, 0-9, '.', '_', '-', '@'".into(),
        ))
    }
}

fn check_password(password: &str) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if (MIN_PASSWORD_LEN..=MAX_LEN).contains(&chars) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "password must be {MIN_PASSWORD_LEN} to {MAX_LEN} characters"
        )))
    }
}

/// The app a binding names (`None` for `*`), checked.
fn binding_app(b: &RoleBinding) -> Result<Option<AppName>, ApiError> {
    if b.app == RoleBinding::ANY_APP {
        return Ok(None);
    }
    Ok(Some(AppName::new(b.app.clone())?))
}

/// Checks that the caller may manage users in, and grant, each of `roles`.
fn may_bind(who: &Principal, roles: &[RoleBinding]) -> Result<(), ApiError> {
    if roles.len() > MAX_BINDINGS {
        return Err(ApiError::BadRequest(format!(
            "a user holds at most {MAX_BINDINGS} roles"
        )));
    }
    for b in roles {
        let app = binding_app(b)?;
        match &app {
            Some(app) => who.check_app(app)?,
            None => who.check_global()?,
        }
        who.may(Action::ManageUsers, app.as_ref())?;
        who.may_grant(Some(b.role), app.as_ref())?;
    }
    Ok(())
}

/// `POST /users` `{username, password, roles}` -> the user (201).
pub async fn create(
    State(tenants): State<Tenants>,
    State(guard): State<LoginGuard>,
    who: Principal,
    Json(req): Json<CreateUser>,
) -> Result<Response, ApiError> {
    check_username(&req.username)?;
    check_password(&req.password)?;
    may_bind(&who, &req.roles)?;
    if req.roles.is_empty() {
        // A user with no role is only reachable by node-wide managers.
        who.check_global()?;
        who.may(Action::ManageUsers, None)?;
    }
    let user = User {
        username: req.username,
        password_hash: guard.hash(&req.password).await?,
        roles: req.roles,
        created_at_ms: unix_now_ms(),
        sessions_after_ms: 0,
    };
    tenants.write(Command::CreateUser(user.clone())).await?;
    tracing::info!(user = %user.username, by = %who.label(), "user created");
    Ok(data_with(StatusCode::CREATED, UserView::from(&user)))
}

/// `GET /users`: the users the caller may manage (with a role in one of its apps).
pub async fn list(
    State(tenants): State<Tenants>,
    who: Principal,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let users: Vec<UserView> = tenants.read(|s| {
        s.tenants
            .users
            .values()
            .filter(|u| may_see(&who, u))
            .map(UserView::from)
            .collect()
    });
    Ok(data(users))
}

/// Whether the caller manages `user`: node-wide, or in one of the user's apps.
fn may_see(who: &Principal, user: &User) -> bool {
    let node_wide = who.check_global().is_ok() && who.may_quietly(Action::ManageUsers, None);
    node_wide
        || user.roles.iter().any(|b| {
            binding_app(b).ok().flatten().is_some_and(|app| {
                who.check_app(&app).is_ok() && who.may_quietly(Action::ManageUsers, Some(&app))
            })
        })
}

/// The user, if the caller manages every app it has a role in.
fn managed(tenants: &Tenants, who: &Principal, username: &str) -> Result<User, ApiError> {
    let user = tenants
        .read(|s| s.tenants.users.get(username).cloned())
        .ok_or_else(|| ApiError::NotFound(format!("user {username}")))?;
    if user.roles.is_empty() {
        who.check_global()?;
        who.may(Action::ManageUsers, None)?;
    }
    may_bind(who, &user.roles)?;
    Ok(user)
}

/// `PATCH /users/:username` `{password?, roles?}`: a new password ends the user's sessions.
pub async fn update(
    State(tenants): State<Tenants>,
    State(guard): State<LoginGuard>,
    who: Principal,
    Path(username): Path<String>,
    Json(req): Json<UpdateUser>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    managed(&tenants, &who, &username)?;
    if let Some(roles) = &req.roles {
        may_bind(&who, roles)?;
    }
    let password_hash = match &req.password {
        Some(p) => {
            check_password(p)?;
            Some(guard.hash(p).await?)
        }
        None => None,
    };
    tenants
        .write(Command::UpdateUser {
            username: username.clone(),
            password_hash,
            roles: req.roles,
            at_ms: unix_now_ms(),
        })
        .await?;
    tracing::info!(user = %username, by = %who.label(), "user changed");
    let user = tenants
        .read(|s| s.tenants.users.get(&username).cloned())
        .ok_or_else(|| ApiError::NotFound(format!("user {username}")))?;
    Ok(data(UserView::from(&user)))
}

/// `DELETE /users/:username`: its sessions end at once (its next request is refused).
pub async fn delete(
    State(tenants): State<Tenants>,
    who: Principal,
    Path(username): Path<String>,
) -> Result<StatusCode, ApiError> {
    managed(&tenants, &who, &username)?;
    tenants.write(Command::DeleteUser { username }).await?;
    Ok(StatusCode::NO_CONTENT)
}
