//! An app recording `always` to a real S3 server (`s3s-fs`): ffmpeg publishes 30 s over RTMP;
//! within seconds of the end the recording is `ready`; the MP4 object probes as H.264 + AAC of
//! 30 s (± a segment) with every published video frame; its HLS VOD playlist (an origin URL
//! signed until it expires, whose URIs are presigned S3 URLs) decodes with ffmpeg; the storage
//! settings never show the secret; deleting the recording removes its object and its entry.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use streamhub_chaos_tests::require::{has_command, require};
use streamhub_chaos_tests::{chaos_seed, hls, poll, Api, Cluster, Publisher};
use streamhub_testkit::s3::{self, S3Server};

/// Publishes this long (ffmpeg `-t`).
const SECS: u32 = 30;
/// testsrc's rate.
const FPS: u64 = 25;

/// Sets app `app`'s storage on `s3` with the given prefix and secret; the answer.
async fn put_storage(admin: &Api, app: &str, s3: &S3Server, secret: &str) -> Value {
    let mut body = s3.storage(s3::BUCKET, secret);
    body["prefix"] = json!("tenant-a");
    let r = admin
        .put(&format!("/apps/{app}/storage"), body)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    r.data().clone()
}

/// ffprobe's streams and format of `url`, as JSON.
fn probe(url: &str) -> Value {
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,nb_read_frames,codec_type:format=duration",
            "-of",
            "json",
            url,
        ])
        .output()
        .expect("ffprobe");
    assert!(
        out.status.success(),
        "ffprobe {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_uploads_a_playable_vod() {
    if !require("ffmpeg", has_command("ffmpeg")) || !require("s3s-fs", s3::available()) {
        return;
    }
    let s3 = S3Server::start().await.unwrap();
    let c = Cluster::start(1, chaos_seed()).await;
    let admin = c.admin(0).await;
    assert_eq!(admin.create_app("rec").await.unwrap().status, 201);

    // Storage: the secret goes in, never comes out; the storage test passes.
    let secret = s3::SECRET_KEY;
    let shown = put_storage(&admin, "rec", &s3, secret).await;
    assert!(!shown.to_string().contains(secret), "{shown}");
    let r = admin.get("/apps/rec/storage").await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.data()["bucket"], s3::BUCKET);
    assert!(!r.data().to_string().contains(secret), "{r:?}");
    let r = admin
        .post("/apps/rec/storage/test", json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.data()["ok"], true, "{r:?}");

    let r = admin
        .patch("/apps/rec", json!({"record": "always"}))
        .await
        .unwrap();
    assert_eq!(r.data()["record"], "always", "{r:?}");
    let key = admin.rtmp_ingress("rec", "show").await.unwrap();
    c.note("publishing 30 s");
    let mut publisher = Publisher::for_secs(&c.nodes[0].rtmp_url(&key), SECS);

    // While it records: listed as `recording`.
    let listed = poll("a recording listed", Duration::from_secs(30), || async {
        let r = admin
            .get("/apps/rec/recordings?room=show")
            .await
            .map_err(|e| e.to_string())?;
        match r.body["data"].as_array().and_then(|a| a.first()) {
            Some(rec) => Ok(rec.clone()),
            None => Err(format!("{r:?}")),
        }
    })
    .await
    .unwrap();
    assert_eq!(listed["state"], "recording", "{listed}");
    let id = listed["id"].as_str().unwrap().to_string();

    let (status, _) = publisher
        .wait_exit(Duration::from_secs(SECS as u64 + 60))
        .await
        .expect("ffmpeg ends after 30 s");
    assert!(status.success(), "ffmpeg: {}", publisher.stderr());
    let ended = Instant::now();
    c.note("publisher done");
    let rec = poll(
        "the recording is ready",
        Duration::from_secs(60),
        || async {
            let r = admin
                .get(&format!("/apps/rec/recordings/{id}"))
                .await
                .map_err(|e| e.to_string())?;
            match r.data()["state"].as_str() {
                Some("ready") => Ok(r.data().clone()),
                Some("failed") | Some("partial") => Ok(r.data().clone()),
                _ => Err(format!("{r:?}")),
            }
        },
    )
    .await
    .unwrap();
    println!(
        "ready {:.1} s after the publisher ended: {rec:#}",
        ended.elapsed().as_secs_f64()
    );
    assert_eq!(rec["state"], "ready", "{rec}");
    assert!(rec.get("reason").is_none(), "{rec}");
    let duration_ms = rec["durationMs"].as_u64().unwrap();
    assert!(
        (28_000..=32_500).contains(&duration_ms),
        "30 s ± a segment: {rec}"
    );
    assert_eq!(rec["tracks"], json!(["aac", "h264"]), "{rec}");
    let object = rec["parts"][0]["key"].as_str().unwrap().to_string();
    assert!(object.starts_with("tenant-a/rec/show/"), "{object}");
    let stored = s3.object(&object).expect("the object is in the bucket");
    assert_eq!(stored.len() as u64, rec["bytes"].as_u64().unwrap(), "{rec}");

    // The MP4 from its presigned URL: H.264 + AAC, 30 s, every frame.
    let mp4 = rec["urls"]["mp4"].as_str().expect("an mp4 URL").to_string();
    let p = probe(&mp4);
    println!("ffprobe of the MP4: {p}");
    let streams = p["streams"].as_array().unwrap();
    let codecs: Vec<&str> = streams
        .iter()
        .filter_map(|s| s["codec_name"].as_str())
        .collect();
    assert!(codecs.contains(&"h264") && codecs.contains(&"aac"), "{p}");
    let duration: f64 = p["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap();
    assert!((28.0..=32.5).contains(&duration), "{p}");
    let frames: u64 = streams
        .iter()
        .find(|s| s["codec_type"] == "video")
        .and_then(|s| s["nb_read_frames"].as_str())
        .and_then(|n| n.parse().ok())
        .unwrap();
    // What ffmpeg published, less at most the group in flight when the room started.
    let published = SECS as u64 * FPS;
    assert!(
        frames + FPS >= published && frames <= published,
        "{frames} of {published} frames recorded"
    );

    // The HLS VOD from the signed playlist URL decodes to the same frames.
    let hls_url = rec["urls"]["hls"].as_str().expect("an HLS URL").to_string();
    let (status, text) = hls::get_text(&hls_url).await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("#EXT-X-PLAYLIST-TYPE:VOD") && text.contains("#EXT-X-ENDLIST"));
    let decoded = hls::ffmpeg_decode_frames(&hls_url, SECS + 10).unwrap();
    assert_eq!(decoded, frames, "the HLS VOD decodes every recorded frame");
    // An altered or expired playlist URL is refused.
    let altered = hls_url.replace("sig=", "sig=00");
    assert_eq!(hls::get_text(&altered).await.unwrap().0, 403);

    // Nothing left in the spool.
    let spool = c.nodes[0].config().data_dir.join("recordings");
    let left: Vec<_> = std::fs::read_dir(&spool)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "spool emptied: {left:?}");

    // Delete: the object and the entry go.
    let r = admin
        .delete(&format!("/apps/rec/recordings/{id}"))
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{r:?}");
    assert!(s3.object(&object).is_none(), "{:?}", s3.keys());
    let r = admin
        .get(&format!("/apps/rec/recordings/{id}"))
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{r:?}");
}
