//! ffmpeg pushes H.264 + AAC over RTMP; ffprobe reads the HLS back over HTTP and decodes it.

use std::time::Duration;

use streamhub_testkit::hls::{client, ffprobe_hls, get_text, wait_segments};
use streamhub_testkit::{poll, Origin, Publisher};

#[tokio::test(flavor = "multi_thread")]
async fn rtmp_publish_is_playable_as_hls() {
    let origin = Origin::start().await;
    let api = origin.admin().await;
    let key = api.rtmp_ingress("live", "cam1").await.unwrap();
    let publisher = Publisher::for_secs(&origin.rtmp_url(&key), 12);

    let playlist_url = origin.url("/hls/live/cam1/index.m3u8");
    let playlist = wait_segments(&client(), &playlist_url, 3, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(playlist.contains("#EXT-X-MAP:URI=\"init-"), "{playlist}");
    assert!(playlist.contains("#EXT-X-VERSION:"), "{playlist}");

    // TARGETDURATION is never below any segment's real duration.
    let target: f64 = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-TARGETDURATION:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("target duration");
    for d in playlist
        .lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .filter_map(|l| l.split(',').next()?.parse::<f64>().ok())
    {
        assert!(
            d <= target + 0.5,
            "segment {d}s > target {target}s\n{playlist}"
        );
        assert!(d > 0.5, "segment too short: {d}\n{playlist}");
    }

    // The rooms API shows the live room with its tracks.
    let r = api.get("/apps/live/rooms").await.unwrap();
    assert_eq!(r.status, 200);
    let rooms = r.body;
    let room = &rooms["data"][0];
    assert_eq!(room["room"], "cam1", "{rooms}");
    assert_eq!(room["publisher"]["protocol"], "rtmp");
    let tracks = room["tracks"].as_array().expect("tracks");
    let video = tracks
        .iter()
        .find(|t| t["kind"] == "video")
        .expect("video track");
    assert_eq!(video["codec"], "h264");
    assert_eq!(
        (video["width"].as_u64(), video["height"].as_u64()),
        (Some(320), Some(240))
    );
    assert!(video["bitrate"].as_u64().unwrap() > 0);
    let audio = tracks
        .iter()
        .find(|t| t["kind"] == "audio")
        .expect("audio track");
    assert_eq!(audio["codec"], "aac");
    assert_eq!(audio["sampleRate"], 44100);

    // Metrics reflect the live room, the publisher, HLS traffic and the Raft state.
    let (s, metrics) = get_text(&origin.url("/metrics")).await.unwrap();
    assert_eq!(s, 200);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert_eq!(value("streamhub_live_rooms"), 1.0);
    assert_eq!(value("streamhub_publishers{protocol=\"rtmp\"}"), 1.0);
    assert!(value("streamhub_hls_requests_total") >= 1.0);
    assert!(value("streamhub_hls_bytes_out_total") > 0.0);
    assert!(value("streamhub_rtmp_bytes_in_total") > 0.0);
    assert!(value("streamhub_raft_term") >= 1.0);
    assert_eq!(value("streamhub_raft_is_leader"), 1.0);
    assert!(value("streamhub_raft_applied_index") >= 3.0);

    // ffprobe decodes the HLS stream: real frames, both codecs, plausible duration.
    let probe = tokio::task::spawn_blocking(move || ffprobe_hls(&playlist_url))
        .await
        .unwrap()
        .unwrap();
    assert!(probe.codecs.contains(&"h264".to_string()), "{probe:?}");
    assert!(probe.codecs.contains(&"aac".to_string()), "{probe:?}");
    assert_eq!((probe.width, probe.height), (320, 240), "{probe:?}");
    // ffprobe follows the live playlist; at 25 fps, >= 100 decoded frames is >= 4 s of video
    // (a live playlist has no format duration, so frames are the measure).
    assert!(probe.video_frames >= 100, "decoded only {probe:?}");

    let (ok, err) = tokio::task::spawn_blocking(move || publisher.wait())
        .await
        .unwrap();
    assert!(ok, "ffmpeg publisher failed: {err}");

    // After the publisher ends, the room is no longer live and the playlist is closed.
    poll("room offline", Duration::from_secs(20), || async {
        let r = api
            .get("/apps/live/rooms")
            .await
            .map_err(|e| e.to_string())?;
        r.body["data"]
            .as_array()
            .is_some_and(|a| a.is_empty())
            .then_some(())
            .ok_or(format!("{:?}", r.body))
    })
    .await
    .unwrap();
    // The playlist closes once the publisher grace (5 s) is over without a publisher back.
    poll("playlist closed", Duration::from_secs(20), || async {
        let (_, playlist) = get_text(&origin.url("/hls/live/cam1/index.m3u8"))
            .await
            .map_err(|e| e.to_string())?;
        playlist
            .contains("#EXT-X-ENDLIST")
            .then_some(())
            .ok_or(playlist)
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn segments_are_fmp4_with_moof_and_init_has_moov() {
    let origin = Origin::start().await;
    let api = origin.admin().await;
    let key = api.rtmp_ingress("live", "boxes").await.unwrap();
    let _publisher = Publisher::start(&origin.rtmp_url(&key));
    let playlist = wait_segments(
        &client(),
        &origin.url("/hls/live/boxes/index.m3u8"),
        1,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let seg = playlist
        .lines()
        .find(|l| l.ends_with(".m4s"))
        .expect("segment uri")
        .to_string();
    let init = reqwest::get(origin.url("/hls/live/boxes/init.mp4"))
        .await
        .unwrap();
    assert_eq!(init.headers()["content-type"], "video/mp4");
    let init = init.bytes().await.unwrap();
    assert_eq!(&init[4..8], b"ftyp");
    assert!(init.windows(4).any(|w| w == b"moov"));
    assert!(init.windows(4).any(|w| w == b"avcC"));
    let seg = reqwest::get(origin.url(&format!("/hls/live/boxes/{seg}")))
        .await
        .unwrap();
    assert_eq!(seg.status(), 200);
    let seg = seg.bytes().await.unwrap();
    assert!(seg.windows(4).any(|w| w == b"moof"));
    assert!(seg.windows(4).any(|w| w == b"mdat"));
}
