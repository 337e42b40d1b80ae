//! SRT ingest over a lossy link between hosts: the origin runs in its own network namespace,
//! ffmpeg (libsrt, Debian's) publishes MPEG-TS to it from the test's namespace with the URL the
//! SRT ingress gives (stream id and passphrase), and 5 % of packets are dropped both ways
//! (iptables in the origin's namespace). SRT's retransmissions must hide the loss: the room's
//! HLS keeps growing in real time, and its newest segments decode without a missing frame.
//!
//! And the handshake case that loss once broke (a CI run): the listener's answer to the caller's
//! conclusion is lost, the caller repeats its conclusion, and the listener must answer it again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use streamhub_chaos_tests::netns::{self, Network};
use streamhub_chaos_tests::ports::free_udp;
use streamhub_chaos_tests::require::{has_command, require};
use streamhub_chaos_tests::{chaos_seed, hls, Api, Cluster, Publisher};
use streamhub_testkit::Origin;
use tokio::net::UdpSocket;

/// App `live` and an SRT ingress for its room `cam`: the publish URL the API gives (once).
async fn srt_ingress(admin: &Api) -> String {
    assert_eq!(admin.create_app("live").await.unwrap().status, 201);
    let r = admin
        .post("/apps/live/ingress", json!({"type": "srt", "room": "cam"}))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    r.data()["url"].as_str().unwrap().to_string()
}

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
    let url = srt_ingress(&c.admin(0).await).await;
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

/// Whether `datagram` is an SRT conclusion handshake (the control header, then the handshake's
/// type field at offset 36: -1).
fn is_conclusion(datagram: &[u8]) -> bool {
    datagram.len() >= 40
        && datagram[0] & 0x80 != 0
        && u16::from_be_bytes([datagram[0] & 0x7f, datagram[1]]) == 0
        && datagram[36..40] == [0xff; 4]
}

/// A UDP relay for one caller in front of `server`, dropping the server's first `drop`
/// conclusion answers; returns its address and the count of answers it dropped.
async fn lossy_relay(server: SocketAddr, drop: u32) -> (SocketAddr, Arc<AtomicU32>) {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(server).await.unwrap();
    let address = front.local_addr().unwrap();
    let dropped = Arc::new(AtomicU32::new(0));
    let (caller_tx, mut caller_rx) = tokio::sync::watch::channel(None::<SocketAddr>);
    {
        let (front, back) = (front.clone(), back.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                caller_tx.send_replace(Some(from));
                let _ = back.send(&buf[..n]).await;
            }
        });
    }
    let counted = dropped.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok(n) = back.recv(&mut buf).await {
            if is_conclusion(&buf[..n]) && counted.load(Ordering::Relaxed) < drop {
                counted.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let caller = *caller_rx.borrow_and_update();
            if let Some(caller) = caller {
                let _ = front.send_to(&buf[..n], caller).await;
            }
        }
    });
    (address, dropped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srt_handshake_survives_a_lost_conclusion_answer() {
    if !require("ffmpeg", has_command("ffmpeg") && has_command("ffprobe")) {
        return;
    }
    let srt = free_udp();
    let origin = Origin::start_with(|cfg| cfg.args.extend(["--srt".into(), srt.to_string()])).await;
    let url = srt_ingress(&origin.admin().await).await;
    let query = url.split_once('?').expect("the ingress URL has a query").1;

    let (relay, dropped) = lossy_relay(srt, 1).await;
    let mut publisher = Publisher::start_srt(&format!("srt://{relay}?{query}"));
    let playlist = origin.url("/hls/live/cam/index.m3u8");
    let client = hls::client();
    hls::wait_segments(&client, &playlist, 2, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}\n{} conclusion answer(s) dropped\nffmpeg: {}",
                dropped.load(Ordering::Relaxed),
                publisher.stderr()
            )
        });
    // The case ran: the first answer never reached ffmpeg, a repeated one did.
    assert_eq!(dropped.load(Ordering::Relaxed), 1);
    assert!(!publisher.exited(), "{}", publisher.stderr());
    publisher.stop();
}
