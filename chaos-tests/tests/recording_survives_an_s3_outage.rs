//! S3 goes away for 20 s in the middle of a recording and comes back: nothing is lost. ffmpeg
//! publishes 60 s at 2.5 Mb/s (so 5 MiB S3 parts are due during the outage); while the server
//! is down the recording says S3 is unreachable and keeps its media in the spool; afterwards
//! the recording is `ready`, its MP4 holds every frame that was published, and the spool is
//! empty.

use std::time::Duration;

use serde_json::json;
use streamhub_chaos_tests::require::{has_command, require};
use streamhub_chaos_tests::{chaos_seed, hls, poll, Cluster, Publisher};
use streamhub_testkit::s3::{self, S3Server};

/// The HD publisher's rate and keyframe interval (frames).
const FPS: u64 = 30;
const GOP: u64 = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_survives_an_s3_outage() {
    if !require("ffmpeg", has_command("ffmpeg")) || !require("s3s-fs", s3::available()) {
        return;
    }
    let mut s3 = S3Server::start().await.unwrap();
    let c = Cluster::start_with_env(1, chaos_seed(), &[("STREAMHUB_RECORD_PART_MB", "5")]).await;
    let admin = c.admin(0).await;
    assert_eq!(admin.create_app("rec").await.unwrap().status, 201);
    let r = admin
        .put("/apps/rec/storage", s3.storage(s3::BUCKET, s3::SECRET_KEY))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    admin
        .patch("/apps/rec", json!({"record": "always"}))
        .await
        .unwrap();
    let key = admin.rtmp_ingress("rec", "show").await.unwrap();
    let url = c.nodes[0].rtmp_url(&key);
    // 60 s of the HD stream, then ffmpeg exits.
    let mut publisher = Publisher::start_hd_for_secs(&url, 60);
    let playlist = c.nodes[0].url("/hls/rec/show/index.m3u8");
    hls::wait_segments(&hls::client(), &playlist, 2, Duration::from_secs(30))
        .await
        .unwrap();
    let id = poll("recording", Duration::from_secs(30), || async {
        let r = admin
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

    tokio::time::sleep(Duration::from_secs(8)).await;
    c.note("S3 down for 20 s");
    s3.stop();
    let said = poll(
        "the recording says S3 is unreachable",
        Duration::from_secs(30),
        || async {
            let r = admin
                .get(&format!("/apps/rec/recordings/{id}"))
                .await
                .map_err(|e| e.to_string())?;
            match r.data()["reason"].as_str() {
                Some(why) if why.contains("unreachable") => Ok(r.data().clone()),
                _ => Err(format!("{r:?}")),
            }
        },
    )
    .await
    .unwrap();
    println!("during the outage: {said:#}");
    assert_eq!(said["state"], "recording", "{said}");
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(Duration::from_secs(2))).await;
    s3.resume().await.unwrap();
    c.note("S3 back");

    let (status, _) = publisher
        .wait_exit(Duration::from_secs(120))
        .await
        .expect("ffmpeg ends");
    assert!(status.success(), "{}", publisher.stderr());
    let rec = poll("ready", Duration::from_secs(120), || async {
        let r = admin
            .get(&format!("/apps/rec/recordings/{id}"))
            .await
            .map_err(|e| e.to_string())?;
        match r.data()["state"].as_str() {
            Some("ready" | "partial" | "failed") => Ok(r.data().clone()),
            _ => Err(format!("{r:?}")),
        }
    })
    .await
    .unwrap();
    println!("after the outage: {rec:#}");
    assert_eq!(rec["state"], "ready", "{rec}");
    assert!(rec.get("reason").is_none(), "the outage is over: {rec}");
    let uploads: usize = rec["parts"][0]["bytes"].as_u64().unwrap() as usize;
    assert!(uploads > 10 * 1024 * 1024, "several 5 MiB parts: {rec}");

    // Every published frame, less at most the group in flight when the room started.
    let mp4 = rec["urls"]["mp4"].as_str().unwrap();
    let frames = hls::ffmpeg_decode_frames(mp4, 90).unwrap();
    let published = 60 * FPS;
    println!("{frames} of {published} frames in the VOD");
    assert!(
        frames + GOP >= published && frames <= published,
        "{frames} of {published}"
    );
    let spool = c.nodes[0].config().data_dir.join("recordings");
    let left: Vec<_> = std::fs::read_dir(&spool)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "spool emptied: {left:?}");
    let spool_bytes = c.nodes[0]
        .metric("streamhub_recording_spool_bytes")
        .await
        .unwrap();
    assert_eq!(spool_bytes, 0.0);
}
