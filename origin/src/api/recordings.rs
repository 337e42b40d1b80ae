//! Recording: each app's storage, starting and stopping a room's recording by hand, and the VOD
//! index (see `crate::recording`).
//!
//! Who may call what: reading the storage settings and the recordings is `read` (every role of
//! the app); setting or testing the storage is `manage settings` (admin); starting, stopping
//! and deleting recordings is `manage recordings` (operator). The VOD playlist URL is public and
//! carries its own signature and expiry.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use streamhub_cluster::seal::place;
use streamhub_cluster::state::{Command, PartState, Recording, RecordingChange, Storage};
use streamhub_shared::{AppName, RoomName};

use super::apps::{authorize_app, load_app};
use super::{data, ApiError, Json, Principal};
use crate::authz::Action;
use crate::recording::s3::Store;
use crate::recording::{bucket_of, vod};
use crate::services::PublicUrls;
use crate::tenants::Tenants;

/// How long the URLs of a recording (presigned S3 URLs, the signed playlist) stay valid.
pub const URL_TTL: Duration = Duration::from_secs(6 * 3600);
/// Longest field of the storage settings.
const MAX_FIELD: usize = 1024;

/// `PUT /apps/:app/storage`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PutStorage {
    endpoint: String,
    region: String,
    bucket: String,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    path_style: bool,
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    session_token: Option<String>,
}

/// Storage as the API shows it: never the secret or the session token.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StorageView {
    endpoint: String,
    region: String,
    bucket: String,
    prefix: String,
    path_style: bool,
    access_key_id: String,
    session_token: bool,
}

impl From<&Storage> for StorageView {
    fn from(s: &Storage) -> Self {
        Self {
            endpoint: s.endpoint.clone(),
            region: s.region.clone(),
            bucket: s.bucket.clone(),
            prefix: s.prefix.clone(),
            path_style: s.path_style,
            access_key_id: s.access_key_id.clone(),
            session_token: s.session_token.is_some(),
        }
    }
}

fn check_storage(req: &PutStorage) -> Result<(), ApiError> {
    let bad = |m: &str| Err(ApiError::BadRequest(m.into()));
    let url = url::Url::parse(&req.endpoint)
        .map_err(|e| ApiError::BadRequest(format!("endpoint: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return bad("endpoint must be an http:// or https:// URL");
    }
    for (name, v) in [
        ("region", &req.region),
        ("bucket", &req.bucket),
        ("accessKeyId", &req.access_key_id),
        ("secretAccessKey", &req.secret_access_key),
    ] {
        if v.is_empty() {
            return Err(ApiError::BadRequest(format!("{name} must not be empty")));
        }
    }
    let all = [
        &req.endpoint,
        &req.region,
        &req.bucket,
        &req.prefix,
        &req.access_key_id,
        &req.secret_access_key,
    ];
    if all.iter().any(|v| v.len() > MAX_FIELD)
        || req
            .session_token
            .as_ref()
            .is_some_and(|t| t.len() > 4 * MAX_FIELD)
    {
        return bad("a storage field is too long");
    }
    let bucket_ok = (3..=63).contains(&req.bucket.len())
        && req
            .bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !bucket_ok {
        return bad("bucket must be 3 to 63 lowercase letters, digits, '-' or '.'");
    }
    if req.prefix.starts_with('/') || req.prefix.contains("..") {
        return bad("prefix must not start with '/' or contain '..'");
    }
    Ok(())
}

/// `PUT /apps/:app/storage` (`manage settings`): where the app's recordings go. The secret
/// and the session token are sealed with the cluster key.
pub async fn put_storage(
    State(tenants): State<Tenants>,
    who: Principal,
    Path(app): Path<String>,
    Json(req): Json<PutStorage>,
) -> Result<axum::Json<Value>, ApiError> {
    let app = authorize_app(&who, &app, Action::ManageSettings)?;
    load_app(&tenants, &app)?;
    check_storage(&req)?;
    let keyring = tenants.keyring();
    let storage = Storage {
        endpoint: req.endpoint.trim_end_matches('/').to_string(),
        region: req.region,
        bucket: req.bucket,
        prefix: req.prefix.trim_matches('/').to_string(),
        path_style: req.path_style,
        access_key_id: req.access_key_id,
        secret_access_key: keyring.seal(
            &place::storage_secret(app.as_str()),
            req.secret_access_key.as_bytes(),
        )?,
        session_token: match req.session_token {
            Some(t) => Some(keyring.seal(&place::storage_token(app.as_str()), t.as_bytes())?),
            None => None,
        },
    };
    let view = StorageView::from(&storage);
    tenants
        .write(Command::SetStorage {
            app: app.clone(),
            storage: Some(storage),
        })
        .await?;
    tracing::info!(%app, endpoint = view.endpoint, bucket = view.bucket, "recording storage set");
    Ok(data(view))
}

/// `GET /apps/:app/storage` (`read`): the storage without its secrets.
pub async fn get_storage(
    State(tenants): State<Tenants>,
    who: Principal,
    Path(app): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let app = authorize_app(&who, &app, Action::Read)?;
    let record = load_app(&tenants, &app)?;
    let storage = record
        .storage
        .as_ref()
        .ok_or_else(|| ApiError::NotFound(format!("storage of app {app}")))?;
    Ok(data(StorageView::from(storage)))
}

/// `DELETE /apps/:app/storage` (`manage settings`): recordings have nowhere to go any more.
pub async fn delete_storage(
    State(tenants): State<Tenants>,
    who: Principal,
    Path(app): Path<String>,
) -> Result<StatusCode, ApiError> {
    let app = authorize_app(&who, &app, Action::ManageSettings)?;
    load_app(&tenants, &app)?;
    tenants
        .write(Command::SetStorage { app, storage: None })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /apps/:app/storage/test` (`manage settings`): writes, reads back and deletes a small
/// object; `{ok, step?, kind?, error?}` says what failed in plain words.
pub async fn test_storage(
    State(tenants): State<Tenants>,
    who: Principal,
    Path(app): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let app = authorize_app(&who, &app, Action::ManageSettings)?;
    load_app(&tenants, &app)?;
    let bucket = bucket_of(&tenants, &app).map_err(ApiError::NotFound)?;
    let store = Store::new(&bucket);
    let started = std::time::Instant::now();
    // Bounded: an endpoint that swallows packets answers within the client's timeouts, and this
    // caps the whole test below them.
    let outcome = tokio::time::timeout(Duration::from_secs(30), store.check()).await;
    let ms = started.elapsed().as_millis() as u64;
    Ok(data(match outcome {
        Ok(Ok(())) => json!({"ok": true, "tookMs": ms}),
        Ok(Err((step, e))) => json!({
            "ok": false,
            "step": step,
            "kind": e.kind(),
            "error": format!("{step} failed: {e}"),
            "tookMs": ms,
        }),
        Err(_) => json!({
            "ok": false,
            "step": "write",
            "kind": "unreachable",
            "error": format!("no answer from {} within 30 s", bucket.endpoint),
            "tookMs": ms,
        }),
    }))
}

/// `POST /apps/:app/rooms/:room/recording` (`manage recordings`): starts recording the room
/// (now if it is live, else from its next publish).
pub async fn start(
    State(tenants): State<Tenants>,
    who: Principal,
    Path((app, room)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let app = authorize_app(&who, &app, Action::ManageRecordings)?;
    let room = RoomName::new(room)?;
    let record = load_app(&tenants, &app)?;
    if record.storage.is_none() {
        return Err(ApiError::Conflict(format!(
            "a place to record to: app {app} has no storage (PUT /api/v1/apps/{app}/storage)"
        )));
    }
    let id = start_recording(&tenants, &app, &room).await?;
    let rec = recording(&tenants, &app, &id)?;
    Ok((StatusCode::CREATED, data(view(&rec, None))).into_response())
}

/// Starts a recording of `app/room`; its id (the one already recording, if any).
pub async fn start_recording(
    tenants: &Tenants,
    app: &AppName,
    room: &RoomName,
) -> Result<String, ApiError> {
    match crate::recording::start(tenants, app, room).await {
        Ok(id) => Ok(id),
        Err(crate::tenants::WriteError::Exists(_)) => tenants
            .read(|s| s.recordings.active(app, room).map(|r| r.id.clone()))
            .ok_or_else(|| ApiError::Conflict(format!("recording of {app}/{room}"))),
        Err(e) => Err(e.into()),
    }
}

/// `DELETE /apps/:app/rooms/:room/recording` (`manage recordings`): stops recording the room;
/// what was recorded finishes uploading.
pub async fn stop(
    State(tenants): State<Tenants>,
    who: Principal,
    Path((app, room)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    let app = authorize_app(&who, &app, Action::ManageRecordings)?;
    let room = RoomName::new(room)?;
    load_app(&tenants, &app)?;
    let id = tenants
        .read(|s| s.recordings.active(&app, &room).map(|r| r.id.clone()))
        .ok_or_else(|| ApiError::NotFound(format!("recording of room {app}/{room}")))?;
    tenants
        .write(Command::Recording {
            id: id.clone(),
            change: RecordingChange::Stop {
                at_ms: crate::credentials::unix_now_ms(),
            },
        })
        .await?;
    let rec = recording(&tenants, &app, &id)?;
    Ok(data(view(&rec, None)))
}

fn recording(tenants: &Tenants, app: &AppName, id: &str) -> Result<Recording, ApiError> {
    tenants
        .read(|s| s.recordings.recordings.get(id).cloned())
        .filter(|r| &r.app == app)
        .ok_or_else(|| ApiError::NotFound(format!("recording {id}")))
}

/// The API's view of a recording; `urls` when asked for one recording.
fn view(rec: &Recording, urls: Option<Value>) -> Value {
    let mut tracks: Vec<&str> = rec
        .parts
        .iter()
        .flat_map(|p| p.tracks.iter().map(String::as_str))
        .collect();
    tracks.sort_unstable();
    tracks.dedup();
    let mut v = json!({
        "id": rec.id,
        "room": rec.room,
        "state": rec.state,
        "startedAtMs": rec.started_at_ms,
        "durationMs": rec.duration_ms(),
        "bytes": rec.bytes(),
        "tracks": tracks,
        "parts": rec.parts.iter().map(|p| json!({
            "index": p.index,
            "node": p.node,
            "state": p.state,
            "key": p.key,
            "durationMs": p.duration_ms(),
            "bytes": p.bytes(),
            "startedAtMs": p.started_at_ms,
            "continues": p.continues,
        })).collect::<Vec<_>>(),
    });
    if let Some(stopped) = rec.stopped_at_ms {
        v["stoppedAtMs"] = json!(stopped);
    }
    if let Some(reason) = &rec.reason {
        v["reason"] = json!(reason);
    }
    if let Some(urls) = urls {
        v["urls"] = urls;
    }
    v
}

/// `GET /apps/:app/recordings` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    room: Option<String>,
    /// Recordings started after this (Unix ms), or an id to page after.
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /apps/:app/recordings?room=&after=&limit=` (`read`): newest first, paged (`next` is
/// the `after` of the next page).
pub async fn list(
    State(tenants): State<Tenants>,
    who: Principal,
    Path(app): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let app = authorize_app(&who, &app, Action::Read)?;
    load_app(&tenants, &app)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be 1 to 500".into()));
    }
    let room = q.room.map(RoomName::new).transpose()?;
    // `after`: a cursor (`<startedAtMs>.<id>`, from `next`) or a time (Unix ms).
    let after: Option<(u64, Option<String>)> = match q.after.as_deref() {
        None | Some("") => None,
        Some(a) => match a.split_once('.') {
            Some((t, id)) => Some((
                t.parse()
                    .map_err(|_| ApiError::BadRequest("after: bad cursor".into()))?,
                Some(id.to_string()),
            )),
            None => Some((
                a.parse().map_err(|_| {
                    ApiError::BadRequest("after must be Unix ms or a cursor from next".into())
                })?,
                None,
            )),
        },
    };
    let mut all: Vec<Recording> = tenants.read(|s| {
        s.recordings
            .recordings
            .values()
            .filter(|r| r.app == app && room.as_ref().is_none_or(|room| &r.room == room))
            .cloned()
            .collect()
    });
    // Newest first; ties by id.
    all.sort_by(|a, b| (b.started_at_ms, &b.id).cmp(&(a.started_at_ms, &a.id)));
    let page: Vec<&Recording> = all
        .iter()
        .filter(|r| match &after {
            None => true,
            // A time: those started after it.
            Some((t, None)) => r.started_at_ms > *t,
            // A cursor: those after it in this order.
            Some((t, Some(id))) => (r.started_at_ms, &r.id) < (*t, id),
        })
        .take(limit + 1)
        .collect();
    let more = page.len() > limit;
    let shown: Vec<Value> = page.iter().take(limit).map(|r| view(r, None)).collect();
    let mut body = json!({ "data": shown });
    if more {
        if let Some(last) = page.get(limit - 1) {
            body["next"] = json!(format!("{}.{}", last.started_at_ms, last.id));
        }
    }
    Ok(axum::Json(body))
}

/// `GET /apps/:app/recordings/:id` (`read`): with `urls` (`hls`, `mp4`) valid for
/// [`URL_TTL`] once something is uploaded.
pub async fn get(
    State(tenants): State<Tenants>,
    State(urls): State<PublicUrls>,
    who: Principal,
    Path((app, id)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    let app = authorize_app(&who, &app, Action::Read)?;
    let rec = recording(&tenants, &app, &id)?;
    let playable = rec.playable_parts();
    let links = if playable.is_empty() {
        None
    } else {
        let bucket = bucket_of(&tenants, &app).map_err(ApiError::Conflict)?;
        let store = Store::new(&bucket);
        let mut mp4 = Vec::new();
        for p in &playable {
            mp4.push(
                store
                    .presign_get(&p.key, URL_TTL)
                    .await
                    .map_err(|e| ApiError::Internal(format!("presigning: {e}")))?,
            );
        }
        let exp = crate::credentials::unix_now_ms() / 1000 + URL_TTL.as_secs();
        let key = tenants.keyring().key()?.derive("vod playlist urls v1");
        let sig = vod::sign(&key, app.as_str(), &rec.id, exp);
        let hls = format!(
            "{}/vod/{app}/{}/index.m3u8?exp={exp}&sig={sig}",
            urls.base(),
            rec.id
        );
        Some(json!({
            "hls": hls,
            "mp4": mp4.first(),
            "mp4Parts": mp4,
            "expiresAtMs": exp * 1000,
        }))
    };
    Ok(data(view(&rec, links)))
}

/// `DELETE /apps/:app/recordings/:id` (`manage recordings`): removes its objects from the
/// bucket, then its entry. A recording still recording is stopped first (409 asks to stop it).
pub async fn delete(
    State(tenants): State<Tenants>,
    who: Principal,
    Path((app, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let app = authorize_app(&who, &app, Action::ManageRecordings)?;
    let rec = recording(&tenants, &app, &id)?;
    if rec.is_recording() {
        return Err(ApiError::Conflict(format!(
            "recording {id} is recording: stop it first (DELETE …/rooms/{}/recording)",
            rec.room
        )));
    }
    if let Ok(bucket) = bucket_of(&tenants, &app) {
        let store = Store::new(&bucket);
        for p in &rec.parts {
            let gone = match (&p.upload_id, p.state) {
                (Some(upload), PartState::Open) => store.abort_upload(&p.key, upload).await,
                _ => store.delete(&p.key).await,
            };
            if let Err(e) = gone {
                return Err(ApiError::Unavailable(format!(
                    "cannot delete {} from the bucket: {e}",
                    p.key
                )));
            }
        }
    }
    tenants
        .write(Command::Recording {
            id,
            change: RecordingChange::Delete,
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The signed playlist URL's query.
#[derive(Debug, Deserialize)]
pub struct VodQuery {
    exp: u64,
    sig: String,
}

/// `GET /vod/:app/:id/index.m3u8?exp=&sig=` (public, signed): the recording's HLS VOD playlist,
/// its URIs presigned until `exp`.
pub async fn playlist(
    State(tenants): State<Tenants>,
    Path((app, id, file)): Path<(String, String, String)>,
    Query(q): Query<VodQuery>,
) -> Result<Response, ApiError> {
    if file != "index.m3u8" {
        return Err(ApiError::NotFound("route".into()));
    }
    let app = AppName::new(app)?;
    let now = crate::credentials::unix_now_ms() / 1000;
    let key = tenants.keyring().key()?.derive("vod playlist urls v1");
    if !vod::verify(&key, app.as_str(), &id, q.exp, &q.sig, now) {
        return Err(ApiError::Forbidden(
            "this playlist URL is not valid (expired or altered): get a new one from the API"
                .into(),
        ));
    }
    let rec = recording(&tenants, &app, &id)?;
    let bucket = bucket_of(&tenants, &app).map_err(ApiError::Conflict)?;
    let store = Store::new(&bucket);
    let ttl = Duration::from_secs(q.exp.saturating_sub(now).max(60));
    let mut parts = Vec::new();
    for p in rec.playable_parts() {
        let url = store
            .presign_get(&p.key, ttl)
            .await
            .map_err(|e| ApiError::Internal(format!("presigning: {e}")))?;
        parts.push((p, url));
    }
    if parts.is_empty() {
        return Err(ApiError::NotFound(format!(
            "uploaded media of recording {id}"
        )));
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/vnd.apple.mpegurl"),
            (header::CACHE_CONTROL, "private, max-age=60"),
        ],
        vod::playlist(&parts),
    )
        .into_response())
}
