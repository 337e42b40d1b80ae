//! WHEP on the fan-out send path with one viewer on a bad link: the edge runs in its own network
//! namespace; one viewer (the `rtc` crate with its NACK generator and receiver reports, as a
//! browser) plays from a second address of the test's namespace, and iptables drop 5 % of the
//! packets to and from that address as they arrive and leave there. Two other viewers play from the
//! test's main address over a clean link (decrypting every packet themselves).
//!
//! - At 5 % loss the lossy viewer's video has (almost) no hole: the edge answers its NACKs
//!   from the room's shared history (`streamhub_webrtc_nack_resent_total` grows). Without
//!   NACK answers 5 % of its video would be missing.
//! - At 30 % loss its receiver reports show sustained loss: the edge marks it congested
//!   (`streamhub_webrtc_viewers_congested` 1, video dropped to the next keyframe) and clears
//!   the mark once the link is clean again.
//! - The clean viewers lose nothing all along.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streamhub_chaos_tests::netns::{self, Network};
use streamhub_chaos_tests::prom;
use streamhub_chaos_tests::require::{has_command, require};
use streamhub_chaos_tests::whep::{RtpTally, Viewer, ViewerOptions};
use streamhub_chaos_tests::{chaos_seed, Cluster, Node, Publisher};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "metrics-token-0123456789";
/// How long the 5 % phase lasts.
const LOSSY: Duration = Duration::from_secs(15);

/// A metric's value in the node's `/metrics` (0 if absent).
async fn metric(http: &reqwest::Client, node: &Node, name: &str) -> f64 {
    let text = http
        .get(node.url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let samples = prom::parse(&text).unwrap_or_else(|e| panic!("/metrics: {e}\n{text}"));
    prom::find(&samples, name, &[]).unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Polls `name` on `node` until `ok` holds for its value, for at most `within`.
async fn wait_metric(
    http: &reqwest::Client,
    node: &Node,
    name: &str,
    within: Duration,
    ok: impl Fn(f64) -> bool,
) -> f64 {
    let start = Instant::now();
    loop {
        let v = metric(http, node, name).await;
        if ok(v) || start.elapsed() > within {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_viewer_on_a_lossy_link() {
    if !require(netns::NEEDS, netns::available()) || !require("ffmpeg", has_command("ffmpeg")) {
        return;
    }
    let net = Network::new().expect("bridge");
    let lossy_ip = net.add_own_address(253).expect("a second address");
    let clean_ip = net.ip(254);
    let mut c = Cluster::start_on_network(
        1,
        chaos_seed(),
        &[("STREAMHUB_METRICS_TOKEN", TOKEN)],
        net.clone(),
    )
    .await;
    let key = c.admin(0).await.rtmp_ingress("live", "cam").await.unwrap();
    let edge = c.start_edge("edge-1", "local", 0, &[]).await;
    let mut publisher = Publisher::start(&c.nodes[0].rtmp_url(&key));
    let http = reqwest::Client::new();
    let whep = edge.url("/whep/live/cam");
    // The room is live on the edge (WHEP answers 404 until it is).
    let start = Instant::now();
    loop {
        let r = http.get(edge.url("/hls/live/cam/index.m3u8")).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "room never live on the edge\n{}",
            publisher.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Two clean viewers for the whole run.
    let stop = CancellationToken::new();
    let tally = Arc::new(RtpTally::default());
    let mut clean = Vec::new();
    for _ in 0..2 {
        let (http, whep, tally, stop) = (http.clone(), whep.clone(), tally.clone(), stop.clone());
        clean.push(tokio::spawn(async move {
            let mut v = Viewer::with(ViewerOptions {
                audio: true,
                interceptors: false,
                bind: Some(clean_ip.into()),
                receive_buffer: None,
            })
            .await
            .unwrap();
            v.play(&http, &whep, None).await.unwrap();
            v.run_decrypting(stop.cancelled(), &tally).await
        }));
    }

    // The lossy viewer: video sequence numbers with when they arrived.
    let _loss = net
        .loss_at_own(lossy_ip, 0.05, c.timeline())
        .expect("iptables");
    let seen: Arc<Mutex<Vec<(Instant, u16)>>> = Arc::default();
    let lossy = {
        let (http, whep, seen, stop) = (http.clone(), whep.clone(), seen.clone(), stop.clone());
        tokio::spawn(async move {
            let mut v = Viewer::with(ViewerOptions {
                audio: true,
                interceptors: true,
                bind: Some(lossy_ip.into()),
                receive_buffer: None,
            })
            .await
            .unwrap();
            // The offer itself may be lost on the way: WHEP is HTTP (TCP), it is not.
            v.play(&http, &whep, None).await.unwrap();
            v.run_until(
                stop.cancelled(),
                |_| false,
                |p| {
                    if p.header.payload_type != 111 {
                        seen.lock()
                            .unwrap()
                            .push((Instant::now(), p.header.sequence_number));
                    }
                },
            )
            .await;
            v.connected
        })
    };
    let phase1 = Instant::now();
    tokio::time::sleep(LOSSY).await;
    let video: Vec<u16> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t < phase1 + LOSSY)
        .map(|(_, s)| *s)
        .collect();
    assert!(
        video.len() > 200,
        "{} video packets in {LOSSY:?}",
        video.len()
    );
    // Holes in the sequence, from the first packet to the last but the newest few (still
    // being recovered when the phase ended).
    let first = video[0];
    let rel: std::collections::BTreeSet<u16> =
        video.iter().map(|s| s.wrapping_sub(first)).collect();
    let last = *rel.last().unwrap();
    let span = last.saturating_sub(30);
    let holes = (0..span).filter(|s| !rel.contains(s)).count();
    let resent = metric(&http, &edge, "streamhub_webrtc_nack_resent_total").await;
    println!(
        "5 % loss: {} video packets, {holes} holes in {span}, {resent} resent",
        video.len()
    );
    assert!(resent > 0.0, "the edge resent nothing");
    assert!(
        (holes as f64) < f64::from(span) * 0.01,
        "{holes} of {span} video packets never recovered at 5 % loss"
    );

    // Sustained heavy loss: congested, then clean again.
    drop(_loss);
    let heavy = net
        .loss_at_own(lossy_ip, 0.3, c.timeline())
        .expect("iptables");
    let congested = wait_metric(
        &http,
        &edge,
        "streamhub_webrtc_viewers_congested",
        Duration::from_secs(20),
        |v| v >= 1.0,
    )
    .await;
    assert_eq!(
        congested, 1.0,
        "the lossy viewer was never marked congested"
    );
    assert!(metric(&http, &edge, "streamhub_webrtc_congestion_events_total").await >= 1.0);
    drop(heavy);
    let after = wait_metric(
        &http,
        &edge,
        "streamhub_webrtc_viewers_congested",
        Duration::from_secs(20),
        |v| v == 0.0,
    )
    .await;
    assert_eq!(after, 0.0, "still congested after the link came back");

    stop.cancel();
    assert!(lossy.await.unwrap(), "the lossy viewer connected");
    for v in clean {
        v.await.unwrap();
    }
    let (packets, expected, lost) = (
        tally.packets.load(std::sync::atomic::Ordering::Relaxed),
        tally.expected.load(std::sync::atomic::Ordering::Relaxed),
        tally.lost.load(std::sync::atomic::Ordering::Relaxed),
    );
    println!("clean viewers: {packets} packets, {lost} lost of {expected}");
    assert_eq!(
        tally.connected.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    assert_eq!(
        tally
            .auth_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(packets > 2 * 50 * 20, "{packets} packets");
    assert_eq!(
        lost, 0,
        "a clean viewer lost packets while another's link was bad"
    );
    assert!(!publisher.exited(), "{}", publisher.stderr());
    publisher.stop();
}
