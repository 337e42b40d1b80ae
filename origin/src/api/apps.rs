//! Apps (tenants): create, list, read, rename, delete.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use streamhub_cluster::state::{App, Command, Playback, Quotas, RecordMode};
use streamhub_shared::AppName;

use super::{data, data_with, ApiError, Json, Principal};
use crate::authz::Action;
use crate::rooms::Rooms;
use crate::tenants::Tenants;

/// Body of `POST /apps`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateApp {
    name: String,
    display_name: Option<String>,
}

/// Body of `PATCH /apps/:app`: each field present is changed.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateApp {
    #[serde(default, deserialize_with = "present")]
    display_name: Option<Option<String>>,
    playback: Option<Playback>,
    backstage_by_default: Option<bool>,
    /// `off` | `always`.
    record: Option<RecordMode>,
}

/// A field that is present (even `null`) is `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
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
    playback: Playback,
    backstage_by_default: bool,
    record: RecordMode,
    /// Whether recordings have somewhere to go (see `GET /apps/:app/storage`).
    storage: bool,
}

impl From<&App> for AppView {
    fn from(a: &App) -> Self {
        Self {
            name: a.name.clone(),
            display_name: a.display_name.clone(),
            key_id: a.key_id.clone(),
            verify_key: a.verify_key.clone(),
            created_at_ms: a.created_at_ms,
            playback: a.settings.playback,
            backstage_by_default: a.settings.backstage_by_default,
            record: a.settings.record,
            storage: a.storage.is_some(),
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
    who.may(Action::ManageApps, None)?;
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
            .filter(|a| who.sees(&a.name))
            .map(AppView::from)
            .collect()
    });
    Ok(data(apps))
}

/// Parses the `:app` path segment and checks the caller may touch it.
pub fn authorize_app(who: &Principal, app: &str, action: Action) -> Result<AppName, ApiError> {
    let app = AppName::new(app)?;
    who.check_app(&app)?;
    match action.rule().1 {
        crate::authz::Scope::App => who.may(action, Some(&app))?,
        crate::authz::Scope::Node => who.may(action, None)?,
    }
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
    let app = authorize_app(&who, &app, Action::Read)?;
    Ok(data(AppView::from(&load_app(&tenants, &app)?)))
}

/// `PATCH /apps/:app` `{displayName?, playback?, backstageByDefault?}` (`change app settings`:
/// the app's admins and owners).
pub async fn update(
    State(tenants): State<Tenants>,
    who: Principal,
    Path(app): Path<String>,
    Json(req): Json<UpdateApp>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let app = authorize_app(&who, &app, Action::ManageSettings)?;
    if let Some(display_name) = req.display_name {
        check_display_name(&display_name)?;
        tenants
            .write(Command::UpdateApp {
                name: app.clone(),
                display_name,
            })
            .await?;
    }
    if req.playback.is_some() || req.backstage_by_default.is_some() || req.record.is_some() {
        tenants
            .write(Command::SetAppSettings {
                app: app.clone(),
                playback: req.playback,
                backstage_by_default: req.backstage_by_default,
                record: req.record,
            })
            .await?;
        tracing::info!(%app, playback = ?req.playback, backstage_by_default = ?req.backstage_by_default, record = ?req.record, "app settings changed");
    }
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
    let app = authorize_app(&who, &app, Action::ManageKeys)?;
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
    let app = authorize_app(&who, &app, Action::ManageApps)?;
    who.check_global()?;
    tenants
        .write(Command::DeleteApp { name: app.clone() })
        .await?;
    let ended = rooms.revoke_app(&app);
    tracing::info!(%app, ended, "app deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Body of `PUT /apps/:app/quotas`: every limit at once; an absent one is unlimited.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutQuotas {
    live_rooms: Option<u64>,
    publishers: Option<u64>,
    viewers: Option<u64>,
    ingest_kbps: Option<u64>,
    ingresses: Option<u64>,
    recording_hours_per_month: Option<u64>,
}

/// `PUT /apps/:app/quotas` (`set quotas`: global admins) -> the quotas and usage.
pub async fn put_quotas(
    State(tenants): State<Tenants>,
    State(rooms): State<Arc<Rooms>>,
    who: Principal,
    Path(app): Path<String>,
    Json(req): Json<PutQuotas>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let app = authorize_app(&who, &app, Action::SetQuotas)?;
    who.check_global()?;
    let quotas = Quotas {
        live_rooms: req.live_rooms,
        publishers: req.publishers,
        viewers: req.viewers,
        ingest_kbps: req.ingest_kbps,
        ingresses: req.ingresses,
        recording_hours_per_month: req.recording_hours_per_month,
    };
    tenants
        .write(Command::SetQuotas {
            app: app.clone(),
            quotas,
        })
        .await?;
    tracing::info!(%app, by = %who.label(), "quotas set");
    Ok(data(quotas_view(&tenants, &rooms, &app)?))
}

/// `GET /apps/:app/quotas` (any reader of the app): the quotas and what the app uses now.
pub async fn get_quotas(
    State(tenants): State<Tenants>,
    State(rooms): State<Arc<Rooms>>,
    who: Principal,
    Path(app): Path<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let app = authorize_app(&who, &app, Action::Read)?;
    Ok(data(quotas_view(&tenants, &rooms, &app)?))
}

/// What an app uses now, cluster-wide (viewers as the nodes last reported them).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub live_rooms: u64,
    pub publishers: u64,
    pub viewers: u64,
    /// The highest ingest bitrate of a room live on this origin (averaged since it started).
    pub ingest_kbps: u64,
    pub ingresses: u64,
    pub rooms: u64,
    pub recording_hours_this_month: u64,
}

/// The usage of `app` from this origin's replica.
pub fn usage(tenants: &Tenants, rooms: &Rooms, app: &AppName) -> Usage {
    let now_ms = crate::credentials::unix_now_ms();
    let ingest_kbps = rooms
        .list(Some(app))
        .iter()
        .map(|r| {
            let secs = std::time::SystemTime::now()
                .duration_since(r.started_at)
                .unwrap_or_default()
                .as_millis()
                .max(1) as u64;
            r.bytes_in * 8 / secs
        })
        .max()
        .unwrap_or(0);
    tenants.read(|s| Usage {
        live_rooms: s.tenants.live_rooms(&s.placements, app, now_ms, None).len() as u64,
        publishers: s
            .placements
            .rooms
            .values()
            .filter(|p| &p.app == app && p.is_live(now_ms))
            .count() as u64,
        viewers: s
            .registry
            .nodes
            .values()
            .filter_map(|n| n.load.app_viewers.get(app.as_str()))
            .map(|v| u64::from(*v))
            .sum(),
        ingest_kbps,
        ingresses: s.tenants.ingress_count(app) as u64,
        rooms: s
            .tenants
            .room_objects
            .values()
            .filter(|r| &r.app == app)
            .count() as u64,
        // Recording lands with the recording issue: nothing is recorded yet.
        recording_hours_this_month: 0,
    })
}

fn quotas_view(
    tenants: &Tenants,
    rooms: &Rooms,
    app: &AppName,
) -> Result<serde_json::Value, ApiError> {
    let record = load_app(tenants, app)?;
    let mut view =
        serde_json::to_value(&record.quotas).map_err(|e| ApiError::Internal(e.to_string()))?;
    view["usage"] = serde_json::to_value(usage(tenants, rooms, app))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(view)
}
