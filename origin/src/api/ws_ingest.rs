//! WebSocket-MJPEG device keys: `POST /apps/:app/ws-ingest {room, name?}` mints a `wsk_…` key
//! (shown once, stored as a SHA-256 hash in the Raft state); list, get, revoke. Revoking a key
//! disconnects its device at once on this origin, and within a heartbeat (2 s) on any other.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use streamhub_cluster::state::{Command, Ingress, IngressKind};
use streamhub_shared::RoomName;

use super::apps::{authorize_app, load_app};
use super::{data, data_with, ApiError, Json, Principal};
use crate::authz::Action;
use crate::credentials::{random_hex, random_token, sha256_hex, unix_now_ms};
use crate::rooms::Rooms;
use crate::services::{PublicUrls, Services};
use crate::tenants::Tenants;

/// Body of `POST /apps/:app/ws-ingest`.
#[derive(Debug, Deserialize)]
pub struct CreateWsIngest {
    room: String,
    name: Option<String>,
}

fn view(urls: &PublicUrls, rooms: &Rooms, i: &Ingress) -> Value {
    let base = urls.base();
    let ws_base = urls.ws_base();
    let (app, room) = (&i.app, &i.room);
    json!({
        "ingressId": i.id,
        "type": "ws",
        "app": app,
        "room": room,
        "roomName": format!("{app}-{room}"),
        "name": i.name,
        "wsUrl": format!("{ws_base}/ingest/ws?app={app}&room={room}"),
        "mjpegUrl": format!("{base}/live/{app}/{room}/mjpeg"),
        "frameUrl": format!("{base}/live/{app}/{room}/frame.jpg"),
        "live": rooms.list(Some(app)).iter().any(|r| r.publisher == i.id),
        "createdAtMs": i.created_at_ms,
    })
}

/// `POST /apps/:app/ws-ingest` (any principal of the app) -> `{streamKey: "wsk_…", wsUrl,
/// mjpegUrl, …}`.
pub async fn create(
    State(services): State<Services>,
    who: Principal,
    Path(app): Path<String>,
    Json(req): Json<CreateWsIngest>,
) -> Result<Response, ApiError> {
    let app = authorize_app(&who, &app, Action::ManageIngress)?;
    let room = RoomName::new(req.room)?;
    if req.name.as_ref().is_some_and(|n| n.chars().count() > 128) {
        return Err(ApiError::BadRequest(
            "name must be at most 128 characters".into(),
        ));
    }
    load_app(&services.tenants, &app)?;
    let key = random_token("wsk_", 32);
    let ingress = Ingress {
        id: format!("ws_{}", random_hex(8)),
        app,
        room,
        name: req.name,
        kind: IngressKind::Ws,
        key_hash: sha256_hex(&key),
        url: None,
        transport: None,
        passphrase: None,
        created_at_ms: unix_now_ms(),
    };
    services
        .tenants
        .write(Command::CreateIngress(ingress.clone()))
        .await?;
    let mut body = view(&services.urls, &services.rooms, &ingress);
    body["streamKey"] = key.into();
    Ok(data_with(StatusCode::CREATED, body))
}

fn keys_of(tenants: &Tenants, app: &streamhub_shared::AppName) -> Vec<Ingress> {
    tenants.read(|s| {
        s.tenants
            .ingresses
            .values()
            .filter(|i| &i.app == app && i.kind == IngressKind::Ws)
            .cloned()
            .collect()
    })
}

/// `GET /apps/:app/ws-ingest` (any principal of the app): the device keys (without their
/// secrets).
pub async fn list(
    State(services): State<Services>,
    who: Principal,
    Path(app): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let app = authorize_app(&who, &app, Action::Read)?;
    load_app(&services.tenants, &app)?;
    Ok(data(
        keys_of(&services.tenants, &app)
            .iter()
            .map(|i| view(&services.urls, &services.rooms, i))
            .collect::<Vec<_>>(),
    ))
}

/// `DELETE /apps/:app/ws-ingest/:id` (any principal of the app): revokes the key and
/// disconnects its device.
pub async fn delete(
    State(tenants): State<Tenants>,
    State(rooms): State<Arc<Rooms>>,
    who: Principal,
    Path((app, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let app = authorize_app(&who, &app, Action::ManageIngress)?;
    if !keys_of(&tenants, &app).iter().any(|i| i.id == id) {
        return Err(ApiError::NotFound(format!("device key {id}")));
    }
    tenants
        .write(Command::DeleteIngress {
            app: app.clone(),
            id: id.clone(),
        })
        .await?;
    let dropped = rooms.revoke(&id, "kicked");
    tracing::info!(%app, key = %id, dropped, "device key revoked");
    Ok(StatusCode::NO_CONTENT)
}
