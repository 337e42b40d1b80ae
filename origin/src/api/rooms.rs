//! `GET /apps/:app/rooms`: the live rooms of an app with their tracks.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use serde_json::{json, Value};
use streamhub_shared::media::CodecConfig;

use super::apps::{authorize_app, load_app};
use super::{data, ApiError, Principal};
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

/// `GET /apps/:app/rooms` (any principal of the app): the rooms live here with their tracks, and
/// those live on other origins.
pub async fn list(
    State(tenants): State<Tenants>,
    State(live): State<Arc<Rooms>>,
    State(urls): State<PublicUrls>,
    who: Principal,
    Path(app): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let app = authorize_app(&who, &app)?;
    load_app(&tenants, &app)?;
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
    Ok(data(rooms))
}
