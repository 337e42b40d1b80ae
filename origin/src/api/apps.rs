//! Apps (tenants): create, list, read, rename, delete.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use streamhub_cluster::state::{App, Command};
use streamhub_shared::AppName;

use super::{data, data_with, ApiError, Json, Principal};
use crate::rooms::Rooms;
use crate::tenants::Tenants;

/// Body of `POST /apps`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateApp {
    name: String,
    display_name: Option<String>,
}

/// Body of `PATCH /apps/:app`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateApp {
    display_name: Option<String>,
}

/// An app as the API shows it (the signing secrets are never shown; the public key of its
/// EdDSA tokens is).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppView {
    name: AppName,
    display_name: Option<String>,
    key_id: String,
    verify_key: Option<String>,
    created_at_ms: u64,
}

impl From<&App> for AppView {
    fn from(a: &App) -> Self {
        Self {
            name: a.name.clone(),
            display_name: a.display_name.clone(),
            key_id: a.key_id.clone(),
            verify_key: a.verify_key.clone(),
            created_at_ms: a.created_at_ms,
        }
    }
}

fn check_display_name(d: &Option<String>) -> Result<(), ApiError> {
    match d {
        Some(s) if s.chars().count() > 128 => Err(ApiError::BadRequest(
            "displayName must be at most 128 characters".into(),
        )),
        _ => Ok(()),
    }
}

/// `POST /apps` (admin or global key).
pub async fn create(
    State(tenants): State<Tenants>,
    who: Principal,
    Json(req): Json<CreateApp>,
) -> Result<Response, ApiError> {
    who.check_global()?;
    let name = AppName::new(req.name)?;
    check_display_name(&req.display_name)?;
    let app = tenants.new_app(name, req.display_name)?;
    tenants.write(Command::CreateApp(app.clone())).await?;
    Ok(data_with(StatusCode::CREATED, AppView::from(&app)))
}

/// `GET /apps`: every app, or the key's own app for an app-scoped key.
pub async fn list(
    State(tenants): State<Tenants>,
    who: Principal,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let apps: Vec<AppView> = tenants.read(|s| {
        s.tenants
            .apps
            .values()
            .filter(|a| who.scope().is_none_or(|x| x == &a.name))
            .map(AppView::from)
            .collect()
    });
    Ok(data(apps))
}

/// Parses the `:app` path segment and checks the caller may touch it.
pub fn authorize_app(who: &Principal, app: &str) -> Result<AppName, ApiError> {
    let app = AppName::new(app)?;
    who.check_app(&app)?;
    Ok(app)
}

/// The app record, or 404.
pub fn load_app(tenants: &Tenants, app: &AppName) -> Result<App, ApiError> {
    tenants
        .app(app)
        .ok_or_else(|| ApiError::NotFound(format!("app {app}")))
}

/// `GET /apps/:app` (any principal of the app).
pub async fn get(
    State(tenants): State<Tenants>,
    who: Principal,
    Path(app): Path<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let app = authorize_app(&who, &app)?;
    Ok(data(AppView::from(&load_app(&tenants, &app)?)))
}

/// `PATCH /apps/:app` (any principal of the app).
pub async fn update(
    State(tenants): State<Tenants>,
    who: Principal,
    Path(app): Path<String>,
    Json(req): Json<UpdateApp>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let app = authorize_app(&who, &app)?;
    check_display_name(&req.display_name)?;
    tenants
        .write(Command::UpdateApp {
            name: app.clone(),
            display_name: req.display_name,
        })
        .await?;
    Ok(data(AppView::from(&load_app(&tenants, &app)?)))
}

/// `POST /apps/:app/rotate-keys` (any principal of the app): new key id and signing keys;
/// every token signed before is refused from now on, and publishers admitted by one end within
/// a heartbeat on every origin.
pub async fn rotate_keys(
    State(tenants): State<Tenants>,
    who: Principal,
    Path(app): Path<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let app = authorize_app(&who, &app)?;
    load_app(&tenants, &app)?;
    let keys = tenants.new_app_keys(&app)?;
    tenants
        .write(Command::RotateAppKeys {
            name: app.clone(),
            key_id: crate::credentials::random_token("ak_", 16),
            keys,
        })
        .await?;
    tracing::info!(%app, "app signing keys rotated");
    Ok(data(AppView::from(&load_app(&tenants, &app)?)))
}

/// `DELETE /apps/:app` (admin or global key): removes the app, its ingresses and app keys, and
/// ends its live rooms (here at once, on other origins within a heartbeat).
pub async fn delete(
    State(tenants): State<Tenants>,
    State(rooms): State<Arc<Rooms>>,
    who: Principal,
    Path(app): Path<String>,
) -> Result<StatusCode, ApiError> {
    let app = authorize_app(&who, &app)?;
    who.check_global()?;
    tenants
        .write(Command::DeleteApp { name: app.clone() })
        .await?;
    let ended = rooms.revoke_app(&app);
    tracing::info!(%app, ended, "app deleted");
    Ok(StatusCode::NO_CONTENT)
}
