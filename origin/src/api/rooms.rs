//! Rooms: `GET /apps/:app/rooms` (the live rooms of an app with their tracks), and rooms as
//! objects: created ahead of time, in backstage until go-live (`POST`, `GET`, `DELETE
//! /apps/:app/rooms/:room`, `.../go-live`, `.../stop-live`).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use streamhub_cluster::state::controls::MAX_MEMBERS;
use streamhub_cluster::state::{Command, GoLive, Member, MemberRole, RoomObject, RoomState};
use streamhub_shared::media::CodecConfig;
use streamhub_shared::{AppName, RoomName};

use super::apps::{authorize_app, load_app};
use super::{data, data_with, ApiError, Json, Principal};
use crate::authz::Action;
use crate::rooms::{RoomSummary, Rooms};
use crate::services::PublicUrls;
use crate::tenants::Tenants;

fn track_json(summary: &RoomSummary, i: usize, elapsed: f64) -> Value {
    let t = &summary.tracks[i];
    let bytes = summary.bytes_by_track.get(i).copied().unwrap_or(0);
    let bitrate = if elapsed > 0.0 {
        (bytes as f64 * 8.0 / elapsed) as u64
    } else {
        0
    };
    let mut v = json!({ "id": t.id, "codec": t.codec.name(), "bitrate": bitrate });
    match &t.codec {
        CodecConfig::H264 { width, height, .. } => {
            v["kind"] = "video".into();
            v["width"] = (*width).into();
            v["height"] = (*height).into();
        }
        CodecConfig::Aac {
            sample_rate,
            channels,
            ..
        } => {
            v["kind"] = "audio".into();
            v["sampleRate"] = (*sample_rate).into();
            v["channels"] = (*channels).into();
        }
        CodecConfig::Opus { channels } => {
            v["kind"] = "audio".into();
            v["sampleRate"] = 48_000.into();
            v["channels"] = (*channels).into();
        }
        CodecConfig::Jpeg { width, height } => {
            v["kind"] = "video".into();
            v["width"] = (*width).into();
            v["height"] = (*height).into();
        }
    }
    v
}

/// Room objects `GET /apps/:app/rooms?include=objects` lists at most (by name).
const MAX_LISTED_OBJECTS: usize = 1_000;

/// Query of `GET /apps/:app/rooms`.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    /// `objects`: also the room objects that are not live (backstage, ended).
    include: Option<String>,
}

/// `GET /apps/:app/rooms[?include=objects]` (any principal of the app): the rooms live here with
/// their tracks, and those live on other origins, each with its `viewers` (what every node that
/// is up reported in its last heartbeat); with `include=objects`, then the room objects that are
/// not live, with their `state`.
pub async fn list(
    State(tenants): State<Tenants>,
    State(live): State<Arc<Rooms>>,
    State(urls): State<PublicUrls>,
    who: Principal,
    Path(app): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let app = authorize_app(&who, &app, Action::Read)?;
    load_app(&tenants, &app)?;
    let objects = match q.include.as_deref() {
        None => false,
        Some("objects") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "include={other}: the only value is `objects`"
            )))
        }
    };
    let now = SystemTime::now();
    let mut rooms: Vec<Value> = live
        .list(Some(&app))
        .iter()
        .map(|r| {
            let elapsed = now.duration_since(r.started_at).unwrap_or_default().as_secs_f64();
            let started_ms = r
                .started_at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64;
            json!({
                "room": r.room,
                "roomName": format!("{}-{}", r.app, r.room),
                "publisher": { "protocol": r.protocol, "ingressId": r.publisher },
                "startedAtMs": started_ms,
                "tracks": (0..r.tracks.len()).map(|i| track_json(r, i, elapsed)).collect::<Vec<_>>(),
                "bytesIn": r.bytes_in,
                "origin": urls.node(),
                "epoch": r.epoch,
            })
        })
        .collect();
    // Rooms live on other origins, from the placement table (their tracks are known there).
    let now_ms = crate::credentials::unix_now_ms();
    let me = urls.node();
    let remote: Vec<Value> = tenants.read(|s| {
        s.placements
            .rooms
            .values()
            .filter(|p| p.app == app && p.node != me && p.is_live(now_ms))
            .map(|p| {
                json!({
                    "room": p.room,
                    "roomName": format!("{}-{}", p.app, p.room),
                    "origin": p.node,
                    "epoch": p.epoch,
                    "startedAtMs": p.since_ms,
                    "tracks": [],
                })
            })
            .collect()
    });
    rooms.extend(remote);
    let prefix = format!("{app}/");
    let viewers: std::collections::HashMap<String, u64> = tenants.read(|s| {
        let mut by_room = std::collections::HashMap::new();
        for n in s.registry.nodes.values() {
            if !streamhub_cluster::registry::is_up(n, now_ms) {
                continue;
            }
            for (k, v) in n.load.room_viewers.range(prefix.clone()..) {
                let Some(room) = k.strip_prefix(&prefix) else {
                    break;
                };
                *by_room.entry(room.to_string()).or_default() += u64::from(*v);
            }
        }
        by_room
    });
    let states: Vec<&'static str> = tenants.read(|s| {
        rooms
            .iter()
            .map(|r| {
                r["room"]
                    .as_str()
                    .and_then(|room| RoomName::new(room.to_string()).ok())
                    .map_or("live", |room| {
                        s.tenants.room_state(&app, &room, true).as_str()
                    })
            })
            .collect()
    });
    for (r, state) in rooms.iter_mut().zip(states) {
        let n = r["room"]
            .as_str()
            .and_then(|room| viewers.get(room))
            .copied();
        r["viewers"] = n.unwrap_or(0).into();
        // `backstage` for a publisher in a room that has not gone live yet.
        r["state"] = state.into();
    }
    if objects {
        let listed: std::collections::HashSet<String> = rooms
            .iter()
            .filter_map(|r| r["room"].as_str().map(str::to_string))
            .collect();
        let objects: Vec<Value> = tenants.read(|s| {
            s.tenants
                .room_objects
                .values()
                .filter(|o| o.app == app && !listed.contains(o.name.as_str()))
                .take(MAX_LISTED_OBJECTS)
                .map(|o| {
                    let state = s.tenants.room_state(&app, &o.name, false);
                    json!({
                        "room": o.name,
                        "roomName": format!("{}-{}", o.app, o.name),
                        "title": o.title,
                        "state": state.as_str(),
                        "createdAtMs": o.created_at_ms,
                        "object": true,
                    })
                })
                .collect()
        });
        rooms.extend(objects);
    }
    Ok(data(rooms))
}

/// A member as `POST /apps/:app/rooms` takes it.
#[derive(Debug, Deserialize)]
pub struct MemberBody {
    identity: String,
    role: MemberRole,
}

/// Body of `POST /apps/:app/rooms`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateRoom {
    name: String,
    title: Option<String>,
    #[serde(default = "yes")]
    backstage: bool,
    #[serde(default)]
    members: Vec<MemberBody>,
    join_ahead_seconds: Option<u64>,
}

fn yes() -> bool {
    true
}

/// Body of `POST .../rooms/:room/go-live`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GoLiveBody {
    start_hls: Option<bool>,
    start_recording: Option<bool>,
}

/// A room as `GET /apps/:app/rooms/:room` shows it.
fn room_view(tenants: &Tenants, live: &Rooms, app: &AppName, room: &RoomName) -> Option<Value> {
    let now_ms = crate::credentials::unix_now_ms();
    tenants.read(|s| {
        let object = s.tenants.room_object(app, room);
        let placement = s.placements.live(app, room, now_ms);
        let publishing = placement.is_some() || live.media(app, room).is_some();
        // A room is known while it has an object or a publisher.
        if object.is_none() && !publishing {
            return None;
        }
        let state = s.tenants.room_state(app, room, publishing);
        Some(json!({
            "app": app,
            "name": room,
            "roomName": format!("{app}-{room}"),
            "title": object.and_then(|o| o.title.clone()),
            "state": state.as_str(),
            "backstage": state == RoomState::Backstage,
            "members": object.map(|o| o.members.clone()).unwrap_or_default(),
            "joinAheadSeconds": object.and_then(|o| o.join_ahead_seconds),
            "createdAtMs": object.map(|o| o.created_at_ms),
            "liveSinceMs": object.and_then(|o| o.live_since_ms),
            "endedAtMs": object.and_then(|o| o.ended_at_ms),
            "publishing": publishing,
            "origin": placement.map(|p| p.node.clone()),
            "hls": object.is_none_or(|o| o.hls),
            "created": object.is_some(),
        }))
    })
}

/// `POST /apps/:app/rooms` (`manage rooms`: operators and up) -> the room, in backstage unless
/// `backstage: false`.
pub async fn create(
    State(tenants): State<Tenants>,
    State(live): State<Arc<Rooms>>,
    who: Principal,
    Path(app): Path<String>,
    Json(req): Json<CreateRoom>,
) -> Result<Response, ApiError> {
    let app = authorize_app(&who, &app, Action::ManageRooms)?;
    let room = RoomName::new(req.name)?;
    if req.title.as_ref().is_some_and(|t| t.chars().count() > 256) {
        return Err(ApiError::BadRequest(
            "title must be at most 256 characters".into(),
        ));
    }
    if req.members.len() > MAX_MEMBERS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_MEMBERS} members"
        )));
    }
    if req
        .members
        .iter()
        .any(|m| m.identity.is_empty() || m.identity.chars().count() > 128)
    {
        return Err(ApiError::BadRequest(
            "a member's identity must be 1 to 128 characters".into(),
        ));
    }
    let now_ms = crate::credentials::unix_now_ms();
    let object = RoomObject {
        app: app.clone(),
        name: room.clone(),
        title: req.title,
        backstage: req.backstage,
        members: req
            .members
            .into_iter()
            .map(|m| Member {
                identity: m.identity,
                role: m.role,
            })
            .collect(),
        join_ahead_seconds: req.join_ahead_seconds,
        created_at_ms: now_ms,
        live_since_ms: (!req.backstage).then_some(now_ms),
        ended_at_ms: None,
        hls: true,
        record: false,
    };
    write_quota(&tenants, Command::CreateRoom(object)).await?;
    let view = room_view(&tenants, &live, &app, &room)
        .ok_or_else(|| ApiError::Internal("the room was created but cannot be read".into()))?;
    Ok(data_with(StatusCode::CREATED, view))
}

/// A write whose refusal is a quota (429) rather than an internal error.
async fn write_quota(tenants: &Tenants, cmd: Command) -> Result<(), ApiError> {
    match tenants.write_answer(cmd).await? {
        streamhub_cluster::state::CommandResponse::Refused { why } => {
            Err(ApiError::TooManyRequests {
                message: why,
                retry_after_secs: 10,
            })
        }
        _ => Ok(()),
    }
}

/// `GET /apps/:app/rooms/:room` (any reader of the app): its lifecycle state
/// (`backstage`, `live`, `ended`), members and publisher.
pub async fn get(
    State(tenants): State<Tenants>,
    State(live): State<Arc<Rooms>>,
    who: Principal,
    Path((app, room)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    let app = authorize_app(&who, &app, Action::Read)?;
    let room = RoomName::new(room)?;
    load_app(&tenants, &app)?;
    room_view(&tenants, &live, &app, &room)
        .map(data)
        .ok_or_else(|| ApiError::NotFound(format!("room {app}/{room}")))
}

/// `POST .../rooms/:room/go-live` `{startHls?, startRecording?}` (`manage rooms`): opens the
/// room to every viewer (within a second on every node).
pub async fn go_live(
    State(tenants): State<Tenants>,
    State(live): State<Arc<Rooms>>,
    who: Principal,
    Path((app, room)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    let app = authorize_app(&who, &app, Action::ManageRooms)?;
    let room = RoomName::new(room)?;
    let req: GoLiveBody = if body.is_empty() {
        GoLiveBody::default()
    } else {
        streamhub_media::http::parse_body(&body)?
    };
    let record = req.start_recording.unwrap_or(false);
    set_live(
        &tenants,
        &app,
        &room,
        true,
        req.start_hls.unwrap_or(true),
        record,
    )
    .await?;
    let mut view = room_view(&tenants, &live, &app, &room)
        .ok_or_else(|| ApiError::NotFound(format!("room {app}/{room}")))?;
    if record {
        let has_storage = tenants.read(|s| {
            s.tenants
                .apps
                .get(&app)
                .is_some_and(|a| a.storage.is_some())
        });
        view["recording"] = if has_storage {
            let id = super::recordings::start_recording(&tenants, &app, &room).await?;
            json!({"requested": true, "id": id, "state": "recording"})
        } else {
            json!({
                "requested": true,
                "available": false,
                "reason": format!("app {app} has no storage: PUT /api/v1/apps/{app}/storage"),
            })
        };
    }
    Ok(data(view))
}

/// `POST .../rooms/:room/stop-live` (`manage rooms`): back to backstage.
pub async fn stop_live(
    State(tenants): State<Tenants>,
    State(live): State<Arc<Rooms>>,
    who: Principal,
    Path((app, room)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    let app = authorize_app(&who, &app, Action::ManageRooms)?;
    let room = RoomName::new(room)?;
    set_live(&tenants, &app, &room, false, true, false).await?;
    room_view(&tenants, &live, &app, &room)
        .map(data)
        .ok_or_else(|| ApiError::NotFound(format!("room {app}/{room}")))
}

async fn set_live(
    tenants: &Tenants,
    app: &AppName,
    room: &RoomName,
    live: bool,
    hls: bool,
    record: bool,
) -> Result<(), ApiError> {
    load_app(tenants, app)?;
    let change = GoLive {
        app: app.clone(),
        room: room.clone(),
        live,
        hls,
        record,
        at_ms: crate::credentials::unix_now_ms(),
    };
    write_quota(tenants, Command::SetRoomLive(change)).await?;
    tracing::info!(%app, %room, live, "room lifecycle changed");
    Ok(())
}

/// `DELETE /apps/:app/rooms/:room` (`manage rooms`): forgets a room created ahead of time.
pub async fn delete(
    State(tenants): State<Tenants>,
    who: Principal,
    Path((app, room)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let app = authorize_app(&who, &app, Action::ManageRooms)?;
    let room = RoomName::new(room)?;
    tenants.write(Command::DeleteRoom { app, room }).await?;
    Ok(StatusCode::NO_CONTENT)
}
