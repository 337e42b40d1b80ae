//! Relay economy: 50 HLS viewers on one edge make exactly one relay subscription for the room
//! (its one subscription carries every track), and the origin's relay egress to that edge stays
//! about 1x the stream's bitrate (what the origin receives from the publisher).

use std::time::Duration;

use streamhub_chaos_tests::hls::{self, sibling};
use streamhub_chaos_tests::{chaos_seed, poll, Cluster, Publisher};

const VIEWERS: usize = 50;

/// One HLS viewer: reloads the playlist and fetches every new segment until `stop`.
async fn viewer(url: String, stop: tokio_util_like::Stop) -> u64 {
    let http = hls::client();
    let mut seen = std::collections::BTreeSet::new();
    let mut bytes = 0;
    while !stop.is_set() {
        if let Ok(body) = hls::get_ok(&http, &url).await {
            let text = String::from_utf8_lossy(&body).to_string();
            for n in hls::segments(&text) {
                if seen.insert(n) {
                    if let Ok(seg) =
                        hls::get_ok(&http, &sibling(&url, &format!("seg-{n}.m4s"))).await
                    {
                        bytes += seg.len() as u64;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bytes
}

mod tokio_util_like {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A shared stop flag.
    #[derive(Clone, Default)]
    pub struct Stop(Arc<AtomicBool>);

    impl Stop {
        pub fn set(&self) {
            self.0.store(true, Ordering::Relaxed);
        }
        pub fn is_set(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_subscribes_once_for_many_viewers() {
    let mut c = Cluster::start(1, chaos_seed()).await;
    let key = c.admin(0).await.rtmp_ingress("live", "cam").await.unwrap();
    let edge = c.start_edge("edge-1", "local", 0, &[]).await;
    let _publisher = Publisher::start(&c.nodes[0].rtmp_url(&key));
    let http = hls::client();
    let url = edge.url("/hls/live/cam/index.m3u8");
    hls::wait_segments(
        &http,
        &c.nodes[0].url("/hls/live/cam/index.m3u8"),
        1,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let stop = tokio_util_like::Stop::default();
    let viewers: Vec<_> = (0..VIEWERS)
        .map(|_| tokio::spawn(viewer(url.clone(), stop.clone())))
        .collect();
    c.note(format!("{VIEWERS} viewers on edge-1"));
    hls::wait_segments(&http, &url, 2, Duration::from_secs(30))
        .await
        .unwrap();
    poll("50 viewers counted", Duration::from_secs(20), || async {
        let v = edge
            .metric("streamhub_viewers")
            .await
            .map_err(|e| format!("{e:#}"))?;
        (v >= VIEWERS as f64).then_some(()).ok_or(format!("{v}"))
    })
    .await
    .unwrap();

    // Egress to the edge against ingest over the same window.
    let origin = &c.nodes[0];
    let egress = "streamhub_relay_egress_bytes_total{peer=\"edge-1\"}";
    let (e0, i0) = (
        origin.metric(egress).await.unwrap(),
        origin
            .metric("streamhub_rtmp_bytes_in_total")
            .await
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (e1, i1) = (
        origin.metric(egress).await.unwrap(),
        origin
            .metric("streamhub_rtmp_bytes_in_total")
            .await
            .unwrap(),
    );
    stop.set();
    let mut served = 0;
    for v in viewers {
        served += v.await.unwrap();
    }
    let ratio = (e1 - e0) / (i1 - i0);
    println!(
        "relay egress to edge-1: {:.0} kbit/s, RTMP ingest {:.0} kbit/s, ratio {ratio:.2}; {VIEWERS} viewers fetched {served} bytes",
        (e1 - e0) * 8.0 / 8000.0,
        (i1 - i0) * 8.0 / 8000.0
    );
    // One copy of the stream crosses the relay whatever the number of viewers (the counts of
    // subscriptions below prove it exactly); over a window the bytes also show it, within what
    // group boundaries and relay lag at the window's edges shift (50 copies would be 50).
    assert!(
        (0.5..=2.0).contains(&ratio),
        "relay egress / ingest = {ratio:.2}"
    );
    assert!(
        served as f64 > 10.0 * (e1 - e0),
        "the viewers got many times what the edge pulled"
    );

    assert_eq!(
        edge.metric("streamhub_relay_subscribed_total")
            .await
            .unwrap(),
        1.0,
        "one subscription"
    );
    assert_eq!(
        edge.metric("streamhub_relay_subscriptions").await.unwrap(),
        1.0
    );
    assert_eq!(
        origin
            .metric("streamhub_relay_subscribes_served_total")
            .await
            .unwrap(),
        1.0
    );
    c.note("done");
}
