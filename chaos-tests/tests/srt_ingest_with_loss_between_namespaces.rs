//! SRT ingest over a lossy link between hosts: the origin runs in its own network namespace,
//! ffmpeg (libsrt, Debian's) publishes MPEG-TS to it from the test's namespace with the URL the
//! SRT ingress gives (stream id and passphrase), and 5 % of packets are dropped both ways
//! (iptables in the origin's namespace). SRT's retransmissions must hide the loss: the room's
//! HLS keeps growing in real time, and its newest segments decode without a missing frame.

use std::time::{Duration, Instant};

use serde_json::json;
use streamhub_chaos_tests::netns::{self, Network};
use streamhub_chaos_tests::require::{has_command, require};
use streamhub_chaos_tests::{chaos_seed, hls, Cluster, Publisher};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srt_ingest_with_loss_between_namespaces() {
    if !require(netns::NEEDS, netns::available())
        || !require("ffmpeg", has_command("ffmpeg") && has_command("ffprobe"))
    {
        return;
    }
    let net = Network::new().expect("bridge");
    let c = Cluster::start_on_network(
        1,
        chaos_seed(),
        &[("STREAMHUB_SRT", "0.0.0.0:9000")],
        net.clone(),
    )
    .await;
    let admin = c.admin(0).await;
    assert_eq!(admin.create_app("live").await.unwrap().status, 201);
    let r = admin
        .post("/apps/live/ingress", json!({"type": "srt", "room": "cam"}))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let url = r.data()["url"].as_str().unwrap().to_string();
    let origin_ip = net.ip(c.host_of(0));
    assert!(
        url.starts_with(&format!("srt://{origin_ip}:9000?streamid=publish:")),
        "{url}"
    );

    let _loss = net
        .loss(c.host_of(0), net.ip(254), 0.05, c.timeline())
        .expect("iptables in the origin's namespace");
    let mut publisher = Publisher::start_srt(&url);
    let playlist = c.nodes[0].url("/hls/live/cam/index.m3u8");
    let client = hls::client();
    hls::wait_segments(&client, &playlist, 2, Duration::from_secs(45))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nffmpeg: {}", publisher.stderr()));
    // Real time through the loss: 12 s of media in at most 20 s of wall time.
    let first = hls::segments(&hls::get_text(&playlist).await.unwrap().1)
        .last()
        .copied()
        .unwrap();
    let started = Instant::now();
    let last = loop {
        let text = hls::get_text(&playlist).await.unwrap().1;
        let last = hls::segments(&text).last().copied().unwrap_or(first);
        if last >= first + 6 {
            break last;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "only {} segments in {:?}\nffmpeg: {}",
            last - first,
            started.elapsed(),
            publisher.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "{} segments in {:?} with 5 % loss",
        last - first,
        started.elapsed()
    );
    // The newest segments decode whole: 25 fps, a 2 s segment is 50 frames; none lost.
    for seq in [last - 1, last] {
        let url = hls::sibling(&playlist, &format!("seg-{seq}.m4s"));
        let init = {
            let text = hls::get_text(&playlist).await.unwrap().1;
            let map = text
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\""))
                .unwrap()
                .trim_end_matches('"')
                .to_string();
            hls::get_ok(&client, &hls::sibling(&playlist, &map))
                .await
                .unwrap()
        };
        let mut media = init;
        media.extend(hls::get_ok(&client, &url).await.unwrap());
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &media).unwrap();
        let path = file.path().display().to_string();
        let frames = tokio::task::spawn_blocking(move || hls::ffmpeg_decode_frames(&path, 10))
            .await
            .unwrap()
            .unwrap();
        assert!(
            (49..=51).contains(&frames),
            "segment {seq}: {frames} frames"
        );
    }
    assert!(!publisher.exited(), "{}", publisher.stderr());
    publisher.stop();
}
