//! `GET /apps/:app/rooms`: the live rooms of an app with their tracks.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use serde_json::{json, Value};
use streamhub_shared::media::CodecConfig;

use super::apps::{authorize_app, load_app};
use super::{data, ApiError, Principal};
use crate::node::NodeCtx;
use crate::rooms::RoomSummary;

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

/// `GET /apps/:app/rooms`.
pub async fn list(
    State(ctx): State<Arc<NodeCtx>>,
    who: Principal,
    Path(app): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let app = authorize_app(&who, &app)?;
    load_app(&ctx, &app)?;
    let now = SystemTime::now();
    let mut rooms: Vec<Value> = ctx
        .rooms
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
                "publisher": { "protocol": r.protocol, "ingressId": r.ingress_id },
                "startedAtMs": started_ms,
                "tracks": (0..r.tracks.len()).map(|i| track_json(r, i, elapsed)).collect::<Vec<_>>(),
                "bytesIn": r.bytes_in,
                "origin": ctx.settings.node_name,
                "epoch": r.epoch,
            })
        })
        .collect();
    // Rooms live on other origins, from the placement table (their tracks are known there).
    let now_ms = crate::credentials::unix_now_ms();
    let me = &ctx.settings.node_name;
    let remote: Vec<Value> = ctx.raft.read(|s| {
        s.placements
            .values()
            .filter(|p| p.app == app && &p.node != me && p.lease_until_ms > now_ms)
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
