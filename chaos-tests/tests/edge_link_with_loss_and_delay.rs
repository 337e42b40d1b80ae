//! The edge <-> origin link degraded: 100 ms added delay (±10 ms jitter, a userspace proxy: the
//! kernel has no netem) and 5 % packet loss both ways (iptables random drop), with a 2.5 Mb/s
//! stream. Every segment the origin lists appears on the edge, none late (more than one target
//! duration after the origin) and none missing; the LL-HLS part delay of the edge behind the
//! origin is reported.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use streamhub_chaos_tests::hls;
use streamhub_chaos_tests::net::{DelayProxy, Rules};
use streamhub_chaos_tests::{chaos_seed, Cluster, Publisher};

const WATCH: Duration = Duration::from_secs(30);

/// First time each segment and part was listed, polling `url` every 50 ms until `until`.
async fn watch(
    url: String,
    until: Instant,
) -> (BTreeMap<u64, Instant>, BTreeMap<(u64, usize), Instant>) {
    let http = hls::client();
    let (mut segs, mut parts) = (BTreeMap::new(), BTreeMap::new());
    while Instant::now() < until {
        if let Ok(body) = hls::get_ok(&http, &url).await {
            let text = String::from_utf8_lossy(&body).to_string();
            let now = Instant::now();
            for n in hls::segments(&text) {
                segs.entry(n).or_insert(now);
            }
            let open = hls::preload_hint(&text).map(|(m, _)| m);
            for m in open.into_iter().chain(hls::segments(&text).last().copied()) {
                for (i, _) in hls::parts(&text, m).iter().enumerate() {
                    parts.entry((m, i)).or_insert(now);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (segs, parts)
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_link_with_loss_and_delay() {
    let seed = chaos_seed();
    let proxy =
        DelayProxy::start(Duration::from_millis(100), Duration::from_millis(10), seed).await;
    let advertise = proxy.addr().to_string();
    let mut c =
        Cluster::start_with_env(1, seed, &[("STREAMHUB_CLUSTER_ADVERTISE", &advertise)]).await;
    proxy.set_target(c.nodes[0].config().cluster);
    let key = c.admin(0).await.rtmp_ingress("live", "cam").await.unwrap();
    let edge = c.start_edge("edge-1", "local", 0, &[]).await;
    let _loss = Rules::loss(proxy.addr().port(), 0.05, c.timeline()).expect("iptables");
    c.note("edge <-> origin: +100 ms ±10 ms, 5% loss each way");
    let _publisher = Publisher::start_hd(&c.nodes[0].rtmp_url(&key));
    let http = hls::client();
    let origin_pl = c.nodes[0].url("/hls/live/cam/index.m3u8");
    let edge_pl = edge.url("/hls/live/cam/index.m3u8");
    hls::wait_segments(&http, &origin_pl, 1, Duration::from_secs(30))
        .await
        .unwrap();
    hls::wait_segments(&http, &edge_pl, 2, Duration::from_secs(40))
        .await
        .unwrap();
    let until = Instant::now() + WATCH;
    let (o, e) = tokio::join!(
        watch(origin_pl.clone(), until),
        watch(edge_pl.clone(), until)
    );
    let (o_segs, o_parts) = o;
    let (e_segs, e_parts) = e;
    // Segments the origin listed during the window, except the last two (the edge may not have
    // had time): each must be on the edge, within a target duration.
    let first_edge = *e_segs.keys().next().expect("the edge listed segments");
    let checked: Vec<u64> = o_segs
        .keys()
        .copied()
        .filter(|n| *n >= first_edge)
        .collect();
    let checked = &checked[..checked.len().saturating_sub(2)];
    assert!(checked.len() >= 8, "too few segments to judge: {checked:?}");
    let mut late = Vec::new();
    let mut delays = Vec::new();
    for n in checked {
        match e_segs.get(n) {
            None => late.push(format!("seg {n} missing on the edge")),
            Some(t) => {
                let d = t.saturating_duration_since(o_segs[n]);
                delays.push(d);
                if d > Duration::from_secs(2) {
                    late.push(format!("seg {n} {} ms late", ms(d)));
                }
            }
        }
    }
    let mut part_delays: Vec<Duration> = o_parts
        .iter()
        .filter_map(|(k, t)| e_parts.get(k).map(|e| e.saturating_duration_since(*t)))
        .collect();
    delays.sort();
    part_delays.sort();
    let pct = |v: &[Duration], q: f64| {
        v.get(((v.len().max(1) - 1) as f64 * q) as usize)
            .map_or(0, |d| ms(*d))
    };
    println!(
        "{} segments checked: edge behind origin p50 {} ms, max {} ms; {} parts: p50 {} ms, p99 {} ms; relay groups lost: {}",
        checked.len(),
        pct(&delays, 0.5),
        pct(&delays, 1.0),
        part_delays.len(),
        pct(&part_delays, 0.5),
        pct(&part_delays, 0.99),
        edge.metric("streamhub_relay_groups_lost_total").await.unwrap_or(f64::NAN)
    );
    assert!(late.is_empty(), "late or missing segments: {late:?}");
    c.note("done");
}
