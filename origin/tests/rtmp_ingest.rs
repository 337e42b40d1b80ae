//! RTMP ingest against a real node: bad clients, stalled publishers, takeover and revocation.
//! Each test keeps a healthy stream live and checks it is unaffected.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Media sequence number of the newest segment in a playlist.
fn last_msn(playlist: &str) -> u64 {
    let first: u64 = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    first + playlist.matches("#EXTINF").count() as u64
}

async fn playlist_advances(url: &str, from: u64, timeout: Duration) -> u64 {
    poll("playlist to advance", timeout, || async {
        let (s, body) = get_text(url).await;
        let n = last_msn(&body);
        (s == 200 && n > from && !body.contains("#EXT-X-ENDLIST")).then_some(n)
    })
    .await
}

async fn rooms_live(api: &Api, app: &str) -> Vec<String> {
    let (_, r) = api.get(&format!("/api/v1/apps/{app}/rooms")).await;
    r["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x["room"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_clients_and_a_stalled_publisher_do_not_hurt_a_live_stream() {
    let origin = Origin::start().await;
    let api = origin.admin().await;
    let good_key = api.app_with_ingress("live", "good").await;
    let stall_key = api.app_with_ingress("live", "stall").await;
    let _good = Publisher::start(&origin.rtmp_url(&good_key), 40);
    let url = origin.url("/hls/live/good/index.m3u8");
    let before = last_msn(&wait_segments(&url, 2, Duration::from_secs(30)).await);

    // Garbage bytes, a half handshake and an idle socket.
    let mut garbage = TcpStream::connect(origin.rtmp).unwrap();
    let noise: Vec<u8> = (0..64 * 1024).map(|i| (i * 7919 % 251) as u8).collect();
    let _ = garbage.write_all(&noise);
    let mut half = TcpStream::connect(origin.rtmp).unwrap();
    half.write_all(&[3]).unwrap();
    half.write_all(&[0u8; 700]).unwrap();
    let _idle = TcpStream::connect(origin.rtmp).unwrap();

    // A valid handshake with an unknown key: ffmpeg is refused and exits with an error.
    let t = Instant::now();
    let (ok, _) = Publisher::start(&origin.rtmp_url("rk_doesnotexist"), 5).wait();
    assert!(!ok, "unknown key must be refused");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "refusal took {:?}",
        t.elapsed()
    );

    // A publisher that stalls mid-stream (SIGSTOP): its room goes offline after the idle timeout.
    let stalled = Publisher::start(&origin.rtmp_url(&stall_key), 60);
    poll("stall room live", Duration::from_secs(20), || async {
        rooms_live(&api, "live")
            .await
            .contains(&"stall".to_string())
            .then_some(())
    })
    .await;
    let pid = stalled.child.id().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    poll("stalled room offline", Duration::from_secs(25), || async {
        (!rooms_live(&api, "live")
            .await
            .contains(&"stall".to_string()))
        .then_some(())
    })
    .await;
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    drop(stalled);

    // The good stream kept producing segments through all of it, and the API still answers.
    playlist_advances(&url, before + 2, Duration::from_secs(20)).await;
    assert!(rooms_live(&api, "live").await.contains(&"good".to_string()));
    assert!(
        origin.log_text().contains("unknown or revoked stream key"),
        "refusal not logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn same_key_takes_over_and_another_key_for_a_live_room_is_refused() {
    let origin = Origin::start().await;
    let api = origin.admin().await;
    let key1 = api.app_with_ingress("live", "stage").await;
    let r = api
        .post(
            "/api/v1/apps/live/ingress",
            serde_json::json!({"type": "rtmp", "room": "stage"}),
        )
        .await;
    let key2 = r.1["data"]["streamKey"].as_str().unwrap().to_string();
    let url = origin.url("/hls/live/stage/index.m3u8");

    let mut first = Publisher::start(&origin.rtmp_url(&key1), 60);
    let before = last_msn(&wait_segments(&url, 2, Duration::from_secs(30)).await);

    // Another ingress for the same live room is refused, clearly, and the room stays up.
    let (ok, _) = Publisher::start(&origin.rtmp_url(&key2), 5).wait();
    assert!(!ok, "second publisher for a live room must be refused");
    assert!(
        origin.log_text().contains("already live"),
        "busy refusal not logged"
    );
    assert!(!first.exited(), "the live publisher was dropped");

    // The same key reconnecting takes the room over at once; the old session is closed.
    let _second = Publisher::start(&origin.rtmp_url(&key1), 60);
    poll("old session closed", Duration::from_secs(10), || {
        let exited = first.exited();
        async move { exited.then_some(()) }
    })
    .await;
    let after = playlist_advances(&url, before + 1, Duration::from_secs(20)).await;
    playlist_advances(&url, after, Duration::from_secs(20)).await;
    let (_, playlist) = get_text(&url).await;
    assert!(playlist.contains("#EXT-X-DISCONTINUITY"), "{playlist}");
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_ingress_drops_its_live_publisher() {
    let origin = Origin::start().await;
    let api = origin.admin().await;
    let key = api.app_with_ingress("live", "gone").await;
    let (_, list) = api.get("/api/v1/apps/live/ingress").await;
    let id = list["data"][0]["ingressId"].as_str().unwrap().to_string();
    let mut publisher = Publisher::start(&origin.rtmp_url(&key), 60);
    wait_segments(
        &origin.url("/hls/live/gone/index.m3u8"),
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        api.delete(&format!("/api/v1/apps/live/ingress/{id}"))
            .await
            .0,
        204
    );
    poll("publisher dropped", Duration::from_secs(5), || {
        let exited = publisher.exited();
        async move { exited.then_some(()) }
    })
    .await;
    assert!(rooms_live(&api, "live").await.is_empty());
    let (ok, _) = Publisher::start(&origin.rtmp_url(&key), 5).wait();
    assert!(!ok, "a revoked key must be refused");
}
