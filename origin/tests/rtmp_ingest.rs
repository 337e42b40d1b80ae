//! RTMP ingest against a real node: bad clients, stalled publishers, takeover and revocation.
//! Each test keeps a healthy stream live and checks it is unaffected.

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use streamhub_testkit::hls::{client, get_text, wait_segments};
use streamhub_testkit::{poll, Api, Origin, Publisher};

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
        let (s, body) = get_text(url).await.map_err(|e| e.to_string())?;
        let n = last_msn(&body);
        (s == 200 && n > from && !body.contains("#EXT-X-ENDLIST"))
            .then_some(n)
            .ok_or(format!("{s}: {body}"))
    })
    .await
    .unwrap()
}

async fn rooms_live(api: &Api, app: &str) -> Vec<String> {
    let r = api.get(&format!("/apps/{app}/rooms")).await.unwrap();
    r.body["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x["room"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the playlist at `url` lists `n` segments; the playlist.
async fn segments(url: &str, n: usize) -> String {
    wait_segments(&client(), url, n, Duration::from_secs(30))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_clients_and_a_stalled_publisher_do_not_hurt_a_live_stream() {
    let origin = Origin::start().await;
    let api = origin.admin().await;
    let good_key = api.rtmp_ingress("live", "good").await.unwrap();
    let stall_key = api.rtmp_ingress("live", "stall").await.unwrap();
    let _good = Publisher::start(&origin.rtmp_url(&good_key));
    let url = origin.url("/hls/live/good/index.m3u8");
    let before = last_msn(&segments(&url, 2).await);
    let rtmp = origin.config().rtmp;

    // Garbage bytes, a half handshake and an idle socket.
    let mut garbage = TcpStream::connect(rtmp).unwrap();
    let noise: Vec<u8> = (0..64 * 1024).map(|i| (i * 7919 % 251) as u8).collect();
    let _ = garbage.write_all(&noise);
    let mut half = TcpStream::connect(rtmp).unwrap();
    half.write_all(&[3]).unwrap();
    half.write_all(&[0u8; 700]).unwrap();
    let _idle = TcpStream::connect(rtmp).unwrap();

    // A valid handshake with an unknown key: ffmpeg is refused and exits with an error (long
    // before the 30 s it would publish for).
    let mut refused = Publisher::for_secs(&origin.rtmp_url("rk_doesnotexist"), 30);
    let exit = refused.wait_exit(Duration::from_secs(25)).await;
    assert!(
        exit.is_some_and(|(status, _)| !status.success()),
        "unknown key must be refused: {exit:?}"
    );

    // A publisher that stalls mid-stream (SIGSTOP): its room goes offline after the idle timeout.
    let stalled = Publisher::start(&origin.rtmp_url(&stall_key));
    poll("stall room live", Duration::from_secs(30), || async {
        let live = rooms_live(&api, "live").await;
        live.contains(&"stall".to_string())
            .then_some(())
            .ok_or(format!("{live:?}"))
    })
    .await
    .unwrap();
    let pid = stalled.pid().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    poll("stalled room offline", Duration::from_secs(30), || async {
        let live = rooms_live(&api, "live").await;
        (!live.contains(&"stall".to_string()))
            .then_some(())
            .ok_or(format!("{live:?}"))
    })
    .await
    .unwrap();
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    drop(stalled);

    // The good stream kept producing segments through all of it, and the API still answers.
    playlist_advances(&url, before + 2, Duration::from_secs(30)).await;
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
    let key1 = api.rtmp_ingress("live", "stage").await.unwrap();
    let key2 = api.rtmp_ingress("live", "stage").await.unwrap();
    let url = origin.url("/hls/live/stage/index.m3u8");

    let mut first = Publisher::start(&origin.rtmp_url(&key1));
    let before = last_msn(&segments(&url, 2).await);

    // Another ingress for the same live room is refused, clearly, and the room stays up.
    let mut second = Publisher::for_secs(&origin.rtmp_url(&key2), 30);
    let exit = second.wait_exit(Duration::from_secs(25)).await;
    assert!(
        exit.is_some_and(|(status, _)| !status.success()),
        "second publisher for a live room must be refused: {exit:?}"
    );
    assert!(
        origin.log_text().contains("already live"),
        "busy refusal not logged"
    );
    assert!(!first.exited(), "the live publisher was dropped");

    // The same key reconnecting takes the room over at once; the old session is closed.
    let _again = Publisher::start(&origin.rtmp_url(&key1));
    poll("old session closed", Duration::from_secs(20), || {
        let exited = first.exited();
        async move { exited.then_some(()).ok_or("still publishing".to_string()) }
    })
    .await
    .unwrap();
    let after = playlist_advances(&url, before + 1, Duration::from_secs(30)).await;
    playlist_advances(&url, after, Duration::from_secs(30)).await;
    let (_, playlist) = get_text(&url).await.unwrap();
    assert!(playlist.contains("#EXT-X-DISCONTINUITY"), "{playlist}");
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_ingress_drops_its_live_publisher() {
    let origin = Origin::start().await;
    let api = origin.admin().await;
    let key = api.rtmp_ingress("live", "gone").await.unwrap();
    let list = api.get("/apps/live/ingress").await.unwrap();
    let id = list.body["data"][0]["ingressId"]
        .as_str()
        .unwrap()
        .to_string();
    let mut publisher = Publisher::start(&origin.rtmp_url(&key));
    segments(&origin.url("/hls/live/gone/index.m3u8"), 1).await;
    let r = api
        .delete(&format!("/apps/live/ingress/{id}"))
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{r:?}");
    poll("publisher dropped", Duration::from_secs(15), || {
        let exited = publisher.exited();
        async move { exited.then_some(()).ok_or("still publishing".to_string()) }
    })
    .await
    .unwrap();
    assert!(rooms_live(&api, "live").await.is_empty());
    let mut again = Publisher::for_secs(&origin.rtmp_url(&key), 30);
    let exit = again.wait_exit(Duration::from_secs(25)).await;
    assert!(
        exit.is_some_and(|(status, _)| !status.success()),
        "a revoked key must be refused: {exit:?}"
    );
}
