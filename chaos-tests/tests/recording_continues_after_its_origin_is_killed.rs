//! The origin recording a room is killed with SIGKILL mid-recording. What it had uploaded is
//! listed as a `partial` part and plays; when it restarts, what its spool kept is uploaded as a
//! part of its own that continues the partial one; when the publisher comes back on another
//! origin, the same recording goes on there as its next part, and the whole VOD plays in media
//! order.

use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};
use streamhub_chaos_tests::require::{has_command, require};
use streamhub_chaos_tests::{chaos_seed, hls, poll, Api, Cluster, Publisher};
use streamhub_testkit::s3::{self, S3Server};

/// The HD publisher's frame rate and keyframe interval (frames).
const FPS: u64 = 30;
const GOP: u64 = 60;

async fn recording(api: &Api, id: &str) -> Result<Value, String> {
    let r = api
        .get(&format!("/apps/rec/recordings/{id}"))
        .await
        .map_err(|e| format!("{e:#}"))?;
    if r.status != 200 {
        return Err(format!("{r:?}"));
    }
    Ok(r.data().clone())
}

fn parts(rec: &Value) -> Vec<Value> {
    rec["parts"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_continues_after_its_origin_is_killed() {
    if !require("ffmpeg", has_command("ffmpeg")) || !require("s3s-fs", s3::available()) {
        return;
    }
    let s3 = S3Server::start().await.unwrap();
    let mut c = Cluster::start_with_env(
        3,
        chaos_seed(),
        &[
            ("STREAMHUB_RECORD_PART_MB", "5"),
            // The room comes back well within this, however slow the machine.
            ("STREAMHUB_RECORD_RESUME_SECS", "600"),
        ],
    )
    .await;
    let victim = c.rng.gen_range(0..3);
    let backup = (victim + 1) % 3;
    let (victim_name, backup_name) = (
        c.nodes[victim].name().to_string(),
        c.nodes[backup].name().to_string(),
    );
    let api = c.admin(backup).await;
    assert_eq!(api.create_app("rec").await.unwrap().status, 201);
    let r = api
        .put("/apps/rec/storage", s3.storage(s3::BUCKET, s3::SECRET_KEY))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    api.patch("/apps/rec", json!({"record": "always"}))
        .await
        .unwrap();
    let key = api.rtmp_ingress("rec", "show").await.unwrap();

    c.note(format!("publishing to {victim_name}"));
    let mut publisher = Publisher::start_hd_for_secs(&c.nodes[victim].rtmp_url(&key), 120);
    let id = poll("a recording", Duration::from_secs(40), || async {
        let r = api
            .get("/apps/rec/recordings?room=show")
            .await
            .map_err(|e| e.to_string())?;
        r.body["data"][0]["id"]
            .as_str()
            .map(str::to_string)
            .ok_or(format!("{r:?}"))
    })
    .await
    .unwrap();
    // A first 5 MiB S3 part lands (about 17 s of the HD stream), then a few more seconds are
    // spooled and not uploaded when the origin dies.
    poll("a first S3 part", Duration::from_secs(90), || async {
        let rec = recording(&api, &id).await?;
        let landed = parts(&rec)
            .first()
            .and_then(|p| p["bytes"].as_u64())
            .unwrap_or(0);
        (landed > 0).then_some(()).ok_or(rec.to_string())
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    c.note(format!("SIGKILL {victim_name}"));
    c.nodes[victim].kill9();
    publisher.stop();

    // The part it left open is completed with what landed: partial, and it plays.
    let rec = poll(
        "the dead origin's part is partial",
        Duration::from_secs(90),
        || async {
            let rec = recording(&api, &id).await?;
            let first = parts(&rec).first().cloned().unwrap_or_default();
            (rec["state"] == "partial" && first["state"] == "partial" && rec["urls"].is_object())
                .then(|| rec.clone())
                .ok_or(rec.to_string())
        },
    )
    .await
    .unwrap();
    println!("after the kill: {rec:#}");
    let first = &parts(&rec)[0];
    assert_eq!(first["node"], victim_name.as_str(), "{rec}");
    let uploaded_ms = first["durationMs"].as_u64().unwrap();
    assert!(uploaded_ms >= 10_000, "{rec}");
    let vod = rec["urls"]["hls"].as_str().unwrap().to_string();
    let frames = hls::ffmpeg_decode_frames(&vod, 90).unwrap();
    let expected = uploaded_ms * FPS / 1000;
    println!("the partial VOD decodes {frames} frames ({uploaded_ms} ms uploaded)");
    assert!(
        frames + FPS >= expected && frames <= expected + FPS,
        "{frames} frames for {uploaded_ms} ms"
    );

    // The origin comes back: the rest of its spool becomes the part that continues part 0.
    c.note(format!("restart {victim_name}"));
    c.nodes[victim].restart().await.unwrap();
    let rec = poll(
        "the spooled remainder is uploaded",
        Duration::from_secs(90),
        || async {
            let rec = recording(&api, &id).await?;
            let done = parts(&rec)
                .iter()
                .any(|p| p["continues"] == 0 && p["state"] == "complete");
            done.then(|| rec.clone()).ok_or(rec.to_string())
        },
    )
    .await
    .unwrap();
    println!("after the restart: {rec:#}");
    let remainder = parts(&rec)
        .into_iter()
        .find(|p| p["continues"] == 0)
        .unwrap();
    assert_eq!(remainder["node"], victim_name.as_str());
    assert!(remainder["durationMs"].as_u64().unwrap() >= 2_000, "{rec}");
    assert_eq!(rec["state"], "partial", "still open for the room: {rec}");
    let spool = c.nodes[victim].config().data_dir.join("recordings");
    poll(
        "the victim's spool empties",
        Duration::from_secs(10),
        || {
            let left: Vec<_> = std::fs::read_dir(&spool)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            async move { left.is_empty().then_some(()).ok_or(format!("{left:?}")) }
        },
    )
    .await
    .unwrap();

    // The encoder comes back on another origin: the same recording goes on there.
    c.note(format!("publishing to {backup_name}"));
    let mut republisher = Publisher::start_hd_for_secs(&c.nodes[backup].rtmp_url(&key), 20);
    let (status, _) = republisher
        .wait_exit(Duration::from_secs(120))
        .await
        .expect("ffmpeg ends");
    assert!(status.success(), "{}", republisher.stderr());
    let rec = poll("settled", Duration::from_secs(90), || async {
        let rec = recording(&api, &id).await?;
        match rec["state"].as_str() {
            Some("partial" | "ready" | "failed") if rec.get("stoppedAtMs").is_some() => Ok(rec),
            _ => Err(rec.to_string()),
        }
    })
    .await
    .unwrap();
    println!("at the end: {rec:#}");
    assert_eq!(rec["state"], "partial", "part 0 lost its tail: {rec}");
    let all = parts(&rec);
    assert_eq!(all.len(), 3, "{rec}");
    let next = all
        .iter()
        .find(|p| p["node"] == backup_name.as_str())
        .expect("a part recorded by the backup origin");
    assert_eq!(next["state"], "complete", "{rec}");
    assert!(next["continues"].is_null(), "{rec}");
    let next_ms = next["durationMs"].as_u64().unwrap();
    assert!(next_ms + 2 * GOP * 1000 / FPS >= 20_000, "{rec}");
    assert_eq!(rec["urls"]["mp4Parts"].as_array().unwrap().len(), 3);
    // The whole VOD plays, in media order: the victim's parts before the backup's.
    let total_ms = rec["durationMs"].as_u64().unwrap();
    let vod = rec["urls"]["hls"].as_str().unwrap().to_string();
    let playlist = hls::get_text(&vod).await.unwrap().1;
    let remainder_key = remainder["key"].as_str().unwrap();
    let next_key = next["key"].as_str().unwrap();
    let at = |key: &str| playlist.find(key).unwrap_or(usize::MAX);
    assert!(at(remainder_key) < at(next_key), "{playlist}");
    let frames = hls::ffmpeg_decode_frames(&vod, 120).unwrap();
    let expected = total_ms * FPS / 1000;
    println!("the whole VOD decodes {frames} frames ({total_ms} ms)");
    assert!(
        frames + 2 * FPS >= expected && frames <= expected + 2 * FPS,
        "{frames} frames for {total_ms} ms"
    );
    c.note("done");
}
