//! One origin pulls an RTSP ingress at a time (the room's placement lease decides); when it is
//! killed (-9), another origin takes the pull over once the lease has run out, and the room is
//! live again from the new origin.

use std::time::{Duration, Instant};

use serde_json::json;
use streamhub_chaos_tests::camera::RtspCamera;
use streamhub_chaos_tests::hls;
use streamhub_chaos_tests::ports::free_tcp;
use streamhub_chaos_tests::{chaos_seed, poll, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_pull_moves_to_another_origin() {
    let mut c = Cluster::start(3, chaos_seed()).await;
    let port = free_tcp().port();
    let _camera = RtspCamera::start(port);
    let api = c.admin(0).await;
    assert_eq!(api.create_app("cams").await.unwrap().status, 201);
    let r = api
        .post(
            "/apps/cams/ingress",
            json!({"type": "url", "room": "yard", "url": format!("rtsp://127.0.0.1:{port}/cam")}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.data()["ingressId"].as_str().unwrap().to_string();
    let live_on = |api: streamhub_chaos_tests::Api, id: String| async move {
        poll("the pull live", Duration::from_secs(40), || async {
            let r = api
                .get(&format!("/apps/cams/ingress/{id}"))
                .await
                .map_err(|e| format!("{e:#}"))?;
            let d = r.data();
            match (d["state"].as_str(), d["node"].as_str()) {
                (Some("live"), Some(node)) => Ok(node.to_string()),
                _ => Err(d.to_string()),
            }
        })
        .await
        .unwrap()
    };
    let first = live_on(api.clone(), id.clone()).await;
    c.note(format!("{first} pulls the camera"));
    let victim = c.index_of(&first).unwrap();
    let other = (victim + 1) % 3;
    let api = c.admin(other).await;
    c.nodes[victim].kill9();
    let killed = Instant::now();
    let second = poll("another origin pulls", Duration::from_secs(60), || async {
        let r = api
            .get(&format!("/apps/cams/ingress/{id}"))
            .await
            .map_err(|e| format!("{e:#}"))?;
        let d = r.data();
        match (d["state"].as_str(), d["node"].as_str()) {
            (Some("live"), Some(node)) if node != first => Ok(node.to_string()),
            _ => Err(d.to_string()),
        }
    })
    .await
    .unwrap();
    println!(
        "{first} killed; {second} pulls the camera {} ms later",
        killed.elapsed().as_millis()
    );
    let j = c.index_of(&second).unwrap();
    let http = hls::client();
    hls::wait_segments(
        &http,
        &c.nodes[j].url("/hls/cams/yard/index.m3u8"),
        1,
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    c.note("done");
}
