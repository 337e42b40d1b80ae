//! Ingresses: stream keys that let an encoder publish into a room. The key is shown once;
//! deleting the ingress revokes the key at once and drops a live publisher.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use streamhub_cluster::state::{Command, Ingress, IngressKind};
use streamhub_shared::{AppName, RoomName};

use super::apps::{authorize_app, load_app};
use super::{data, data_with, ApiError, Json, Principal};
use crate::authz::Action;
use crate::credentials::{random_hex, random_token, sha256_hex, unix_now_ms};
use crate::rooms::Rooms;
use crate::services::Services;
use crate::tenants::Tenants;

/// Body of `POST /apps/:app/ingress`.
#[derive(Debug, Deserialize)]
pub struct CreateIngress {
    #[serde(rename = "type")]
    kind: String,
    room: String,
    name: Option<String>,
    /// For `type: "url"`: the source to pull (`rtsp://…`).
    url: Option<String>,
    /// For `type: "url"`: `tcp` (default) or `udp`.
    transport: Option<String>,
}

/// An ingress as the API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressView {
    ingress_id: String,
    #[serde(rename = "type")]
    kind: IngressKind,
    app: AppName,
    room: RoomName,
    room_name: String,
    name: Option<String>,
    url: String,
    /// For RTMP ingresses, when RTMPS is on: the same over TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    rtmps_url: Option<String>,
    live: bool,
    created_at_ms: u64,
    /// For pulled ingresses: `connecting`, `live` or `retrying`, and where and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transport: Option<String>,
}

fn view(s: &Services, i: &Ingress) -> IngressView {
    let status = s
        .tenants
        .read(|st| st.tenants.ingress_status.get(&i.id).cloned());
    let url = match i.kind {
        IngressKind::Url => match s.tenants.ingress_url(i) {
            Ok(url) => crate::rtsp::redacted(url.as_deref().unwrap_or_default()),
            Err(_) => "(sealed; this origin does not hold the cluster key yet)".into(),
        },
        IngressKind::Srt => s.urls.srt().unwrap_or_default(),
        _ => s.urls.rtmp(),
    };
    IngressView {
        state: match i.kind {
            IngressKind::Url => Some(
                status
                    .as_ref()
                    .map_or("connecting".into(), |s| s.state.clone()),
            ),
            _ => None,
        },
        last_error: status.as_ref().and_then(|s| s.last_error.clone()),
        node: status.as_ref().map(|s| s.node.clone()),
        transport: i.transport.clone(),
        ingress_id: i.id.clone(),
        kind: i.kind,
        app: i.app.clone(),
        room: i.room.clone(),
        room_name: format!("{}-{}", i.app, i.room),
        name: i.name.clone(),
        url,
        rtmps_url: match i.kind {
            IngressKind::Rtmp => s.urls.rtmps(),
            _ => None,
        },
        live: s
            .rooms
            .list(Some(&i.app))
            .iter()
            .any(|r| r.publisher == i.id),
        created_at_ms: i.created_at_ms,
    }
}

/// `POST /apps/:app/ingress` -> `{ingressId, url, streamKey, roomName}` (any principal of the
/// app; a pulled `url` ingress only a global one).
pub async fn create(
    State(services): State<Services>,
    who: Principal,
    Path(app): Path<String>,
    Json(req): Json<CreateIngress>,
) -> Result<Response, ApiError> {
    let app = authorize_app(&who, &app, Action::ManageIngress)?;
    let kind = match req.kind.as_str() {
        "rtmp" => IngressKind::Rtmp,
        "url" => IngressKind::Url,
        "srt" if services.urls.srt().is_some() => IngressKind::Srt,
        "srt" => {
            return Err(ApiError::BadRequest(
                "SRT ingest is not enabled on this origin (start it with --srt ADDR)".into(),
            ))
        }
        other => {
            return Err(ApiError::BadRequest(format!(
            "ingress type {other:?} is not supported (rtmp, srt, url; WebSocket cameras use /ws-ingest)"
        )))
        }
    };
    let (url, transport) = match kind {
        IngressKind::Url => {
            // The node connects wherever the URL points: only global principals may do that.
            who.check_global()?;
            let url = req
                .url
                .as_deref()
                .ok_or_else(|| ApiError::BadRequest("type url needs a url".into()))?;
            (
                Some(crate::rtsp::check_url(url)?),
                Some(crate::rtsp::check_transport(req.transport.as_deref())?),
            )
        }
        _ => (None, None),
    };
    let room = RoomName::new(req.room)?;
    if req.name.as_ref().is_some_and(|n| n.chars().count() > 128) {
        return Err(ApiError::BadRequest(
            "name must be at most 128 characters".into(),
        ));
    }
    load_app(&services.tenants, &app)?;
    let stream_key = random_token("rk_", 32);
    let id = format!("in_{}", random_hex(8));
    // A pulled URL may carry the camera's credentials: it is stored sealed.
    let url = url
        .map(|u| services.tenants.seal_ingress_url(&id, &u))
        .transpose()?;
    // SRT streams are encrypted with a passphrase of their own (SRT takes 10 to 79 bytes).
    let passphrase = (kind == IngressKind::Srt).then(|| random_hex(16));
    let sealed_passphrase = passphrase
        .as_deref()
        .map(|p| services.tenants.seal_ingress_passphrase(&id, p))
        .transpose()?;
    let ingress = Ingress {
        id,
        app,
        room,
        name: req.name,
        kind,
        key_hash: sha256_hex(&stream_key),
        created_at_ms: unix_now_ms(),
        url,
        transport,
        passphrase: sealed_passphrase,
    };
    services
        .tenants
        .write(Command::CreateIngress(ingress.clone()))
        .await?;
    let mut body = serde_json::to_value(view(&services, &ingress))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if let (Some(base), Some(passphrase)) = (services.urls.srt(), &passphrase) {
        // What ffmpeg and OBS take as is; shown once, like the key.
        body["url"] = serde_json::Value::String(srt_url(&base, &stream_key, passphrase));
        body["passphrase"] = serde_json::Value::String(passphrase.clone());
    }
    if matches!(kind, IngressKind::Rtmp | IngressKind::Srt) {
        body["streamKey"] = serde_json::Value::String(stream_key);
    }
    Ok(data_with(StatusCode::CREATED, body))
}

/// The complete URL of an SRT ingress: the stream id carries the key (`publish:<key>`), and
/// 1316-byte packets hold seven TS packets.
pub fn srt_url(base: &str, key: &str, passphrase: &str) -> String {
    format!("{base}?streamid=publish:{key}&passphrase={passphrase}&pkt_size=1316")
}

/// `GET /apps/:app/ingress` (any principal of the app).
pub async fn list(
    State(services): State<Services>,
    who: Principal,
    Path(app): Path<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let app = authorize_app(&who, &app, Action::Read)?;
    load_app(&services.tenants, &app)?;
    let all: Vec<Ingress> = services.tenants.read(|s| {
        s.tenants
            .ingresses
            .values()
            .filter(|i| i.app == app && i.kind != IngressKind::Ws)
            .cloned()
            .collect()
    });
    Ok(data(
        all.iter().map(|i| view(&services, i)).collect::<Vec<_>>(),
    ))
}

fn find(tenants: &Tenants, app: &AppName, id: &str) -> Result<Ingress, ApiError> {
    tenants
        .ingress(id)
        .filter(|i| &i.app == app)
        .ok_or_else(|| ApiError::NotFound(format!("ingress {id}")))
}

/// `GET /apps/:app/ingress/:id` (any principal of the app).
pub async fn get(
    State(services): State<Services>,
    who: Principal,
    Path((app, id)): Path<(String, String)>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let app = authorize_app(&who, &app, Action::Read)?;
    Ok(data(view(&services, &find(&services.tenants, &app, &id)?)))
}

/// `DELETE /apps/:app/ingress/:id` (any principal of the app): revokes the key and drops its
/// live publisher (here at once, on other origins within a heartbeat).
pub async fn delete(
    State(tenants): State<Tenants>,
    State(rooms): State<Arc<Rooms>>,
    State(rtsp): State<Arc<crate::rtsp::Pulls>>,
    who: Principal,
    Path((app, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let app = authorize_app(&who, &app, Action::ManageIngress)?;
    tenants
        .write(Command::DeleteIngress {
            app: app.clone(),
            id: id.clone(),
        })
        .await?;
    rtsp.stop(&id);
    let dropped = rooms.revoke(&id, "kicked");
    tracing::info!(%app, ingress = %id, dropped, "ingress deleted");
    Ok(StatusCode::NO_CONTENT)
}
