//! Storage that cannot work, three ways: wrong credentials, a bucket that does not exist, an
//! endpoint nothing listens on. For each, the storage test answers what failed in plain words
//! (`auth`, `bucket`, `unreachable`), a recording started by hand on a live room gets a clear
//! state (`failed` with the reason, or still going with the reason while S3 cannot be reached),
//! and the live stream goes on (HLS segments keep coming).

use std::time::Duration;

use serde_json::{json, Value};
use streamhub_chaos_tests::require::{has_command, require};
use streamhub_chaos_tests::{chaos_seed, hls, poll, Api, Cluster, Publisher};
use streamhub_testkit::s3::{self, S3Server};

async fn put_storage(admin: &Api, app: &str, endpoint: &str, bucket: &str, secret: &str) {
    let body = json!({
        "endpoint": endpoint,
        "region": "us-east-1",
        "bucket": bucket,
        "pathStyle": true,
        "accessKeyId": s3::ACCESS_KEY,
        "secretAccessKey": secret,
    });
    let r = admin
        .put(&format!("/apps/{app}/storage"), body)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
}

/// The recording of `app/cam`, once `done` says it shows what is wrong.
async fn wait_recording(admin: &Api, app: &str, done: impl Fn(&Value) -> bool) -> Value {
    poll(
        &format!("the recording of {app} says what is wrong"),
        Duration::from_secs(60),
        || async {
            let r = admin
                .get(&format!("/apps/{app}/recordings?room=cam"))
                .await
                .map_err(|e| e.to_string())?;
            match r.body["data"].as_array().and_then(|a| a.first()) {
                Some(rec) if done(rec) => Ok(rec.clone()),
                _ => Err(format!("{r:?}")),
            }
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_bad_storage_never_stops_the_stream() {
    if !require("ffmpeg", has_command("ffmpeg")) || !require("s3s-fs", s3::available()) {
        return;
    }
    let s3 = S3Server::start().await.unwrap();
    let nowhere = format!("http://{}", streamhub_testkit::ports::free_tcp());
    let c = Cluster::start(1, chaos_seed()).await;
    let admin = c.admin(0).await;
    let cases: [(&str, String, &str, &str, &str); 3] = [
        (
            "badkey",
            s3.endpoint(),
            s3::BUCKET,
            "not-the-secret",
            "auth",
        ),
        (
            "nobucket",
            s3.endpoint(),
            "no-such-bucket",
            s3::SECRET_KEY,
            "bucket",
        ),
        (
            "offline",
            nowhere,
            s3::BUCKET,
            s3::SECRET_KEY,
            "unreachable",
        ),
    ];
    let mut publishers = Vec::new();
    for (app, endpoint, bucket, secret, kind) in &cases {
        assert_eq!(admin.create_app(app).await.unwrap().status, 201);
        put_storage(&admin, app, endpoint, bucket, secret).await;
        let r = admin
            .post(&format!("/apps/{app}/storage/test"), json!({}))
            .await
            .unwrap();
        println!("{app}: storage test {:#}", r.data());
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.data()["ok"], false, "{r:?}");
        assert_eq!(r.data()["kind"], *kind, "{r:?}");
        assert!(
            r.data()["error"]
                .as_str()
                .unwrap()
                .starts_with("write failed"),
            "{r:?}"
        );
        let key = admin.rtmp_ingress(app, "cam").await.unwrap();
        publishers.push(Publisher::start(&c.nodes[0].rtmp_url(&key)));
        let url = c.nodes[0].url(&format!("/hls/{app}/cam/index.m3u8"));
        hls::wait_segments(&hls::client(), &url, 1, Duration::from_secs(30))
            .await
            .unwrap();
        let r = admin
            .post(&format!("/apps/{app}/rooms/cam/recording"), json!({}))
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(r.data()["state"], "recording", "{r:?}");
    }

    let bad_key = wait_recording(&admin, "badkey", |r| r["state"] == "failed").await;
    println!("badkey: {bad_key:#}");
    assert!(
        bad_key["reason"]
            .as_str()
            .unwrap()
            .contains("credentials refused"),
        "{bad_key}"
    );
    let no_bucket = wait_recording(&admin, "nobucket", |r| r["state"] == "failed").await;
    println!("nobucket: {no_bucket:#}");
    assert!(
        no_bucket["reason"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{no_bucket}"
    );
    let offline = wait_recording(&admin, "offline", |r| r.get("reason").is_some()).await;
    println!("offline: {offline:#}");
    assert_eq!(offline["state"], "recording", "still recording: {offline}");
    let reason = offline["reason"].as_str().unwrap();
    assert!(
        reason.contains("unreachable") && reason.contains("retrying"),
        "{offline}"
    );

    // Every live stream went on: each playlist gains segments after all this.
    for (app, ..) in &cases {
        let url = c.nodes[0].url(&format!("/hls/{app}/cam/index.m3u8"));
        let http = hls::client();
        let text = hls::get_text(&url).await.unwrap().1;
        let last = *hls::segments(&text).last().expect("segments");
        hls::wait_segment(&http, &url, last + 2, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{app}: the live stream stopped: {e:#}"));
    }
    for p in &mut publishers {
        assert!(!p.exited(), "ffmpeg kept publishing: {}", p.stderr());
    }
}
