//! One client opens 10,000 LL-HLS blocking reloads on an edge at once: the edge never holds more
//! than its per-client bound (here 100; sampled from its `streamhub_hls_held` gauge throughout),
//! refuses what is over the bound with 503 "too many held requests" instead of queueing it,
//! answers every request, stays up, and another viewer is served normally throughout.
//!
//! How many of the 10,000 end up 200 is not a promise: held requests complete (and free their
//! slots) as the flood goes on, so a slower machine answers more of them 200. The promise is the
//! bound at every instant, checked by sampling.

use std::time::{Duration, Instant};

use streamhub_chaos_tests::hls;
use streamhub_chaos_tests::{chaos_seed, Cluster, Publisher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PER_CLIENT: usize = 100;

/// 10,000 requests, or fewer where the open-file limit (which the edge inherits) is lower:
/// `.ci/run` raises it; a developer shell may be at 1024.
fn flood_size() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft: usize = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(1024);
    10_000.min(soft.saturating_sub(300))
}

/// How one flood request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Answer {
    /// 200: held until the segment existed (or served at once once it did).
    Ok,
    /// 503 "too many held requests": refused at the bound.
    OverBound,
    /// Any other status (the code), or 0 when no answer came.
    Other(u16),
}

/// How long one flood request may take to connect, and then to be answered. 10,000 connections
/// at once overflow the edge's accept queue (4096) for a while: the kernel drops those
/// handshakes and TCP retries them with backoff (1, 3, 7, 15, 31 s after the first try), so on a
/// loaded machine a request may first reach the edge after 31 s. Answered late is answered.
const PATIENCE: Duration = Duration::from_secs(60);

/// Sends one raw HTTP request and reads how it was answered.
async fn raw_get(addr: String, path: String) -> Answer {
    let Ok(Ok(mut s)) = tokio::time::timeout(PATIENCE, tokio::net::TcpStream::connect(&addr)).await
    else {
        eprintln!("flood request: no connection within {PATIENCE:?}");
        return Answer::Other(0);
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if let Err(e) = s.write_all(req.as_bytes()).await {
        eprintln!("flood request: write failed: {e}");
        return Answer::Other(0);
    }
    let mut resp = Vec::new();
    let read = tokio::time::timeout(PATIENCE, s.read_to_end(&mut resp)).await;
    if !matches!(read, Ok(Ok(_))) || resp.len() < 12 {
        // Which way it failed, for a failure's diagnosis.
        eprintln!(
            "flood request: no answer ({}; {} bytes read)",
            match read {
                Err(_) => format!("{PATIENCE:?} passed"),
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(_)) => "closed".to_string(),
            },
            resp.len()
        );
        return Answer::Other(0);
    }
    let code: u16 = std::str::from_utf8(&resp[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&resp);
    match code {
        200 => Answer::Ok,
        503 if text.contains("too many held requests") => Answer::OverBound,
        other => {
            let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
            eprintln!(
                "flood request answered {other}: {}",
                &body[..body.len().min(300)]
            );
            Answer::Other(other)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_survives_a_blocking_reload_flood() {
    let mut c = Cluster::start(1, chaos_seed()).await;
    let key = c.admin(0).await.rtmp_ingress("live", "cam").await.unwrap();
    let per_client = PER_CLIENT.to_string();
    let edge = c
        .start_edge(
            "edge-1",
            "local",
            0,
            // The HLS hold bound is under test here, not the connection caps: the flood's
            // 10,000 connections from one address would otherwise meet the per-address cap
            // (256, see `no_single_client_exhausts_a_node`) first. Nor the pull's linger: on a
            // loaded 2-core machine (after the iptables and namespace tests, in a full run) the
            // kernel can hold off every new flood connection for over 10 s, no request reaches
            // the room, and the pull would end as idle under the 100 held ones (a weakness of
            // its own, noted for issue 24: a held request does not keep its pull alive).
            &[
                "--linger-secs",
                "120",
                "--hls-max-held-per-client",
                &per_client,
                "--http-max-per-address",
                "20000",
                "--http-max-connections",
                "20000",
            ],
        )
        .await;
    let _publisher = Publisher::start(&c.nodes[0].rtmp_url(&key));
    let http = hls::client();
    let url = edge.url("/hls/live/cam/index.m3u8");
    let text = hls::wait_segments(&http, &url, 1, Duration::from_secs(30))
        .await
        .unwrap();
    let (msn, part) = hls::preload_hint(&text).unwrap();
    // The segment after the one being written: valid, seconds away, so every request would be
    // held until it is complete.
    let path = format!("/hls/live/cam/index.m3u8?_HLS_msn={}", msn + 1);
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let flood_n = flood_size();
    assert!(
        flood_n > 2 * PER_CLIENT,
        "raise the open-file limit (ulimit -n)"
    );
    c.note(format!("flooding edge-1 with {flood_n} blocking reloads"));
    // The sampler's connection is open before the flood fills the edge's accept queue.
    let sampler = reqwest::Client::new();
    sampler.get(edge.url("/metrics")).send().await.unwrap();
    let started = Instant::now();
    let sampling = tokio::spawn({
        let metrics = edge.url("/metrics");
        async move {
            let http = sampler;
            let mut max = 0.0f64;
            while started.elapsed() < Duration::from_secs(8) {
                if let Ok(r) = http.get(&metrics).send().await {
                    let text = r.text().await.unwrap_or_default();
                    if let Some(v) = text
                        .lines()
                        .find_map(|l| l.strip_prefix("streamhub_hls_held "))
                        .and_then(|v| v.trim().parse::<f64>().ok())
                    {
                        max = max.max(v);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            max
        }
    });
    // Another viewer, from another address, already playing: its connection is open before the
    // flood fills the accept queue (a new one could wait out TCP's retries behind the flood).
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let (status, _) = hls::get(&other, &url).await.unwrap();
    assert_eq!(status, 200, "the other viewer's playlist before the flood");
    let flood: Vec<_> = (0..flood_n)
        .map(|_| tokio::spawn(raw_get(addr.clone(), path.clone())))
        .collect();
    // Meanwhile the other viewer plays on.
    let blocked = format!("{url}?_HLS_msn={msn}&_HLS_part={part}");
    let (status, body) = hls::get(&other, &blocked).await.unwrap();
    assert_eq!(
        status,
        200,
        "another viewer's blocking reload: {}",
        String::from_utf8_lossy(&body)
    );
    let mut codes = std::collections::BTreeMap::new();
    for f in flood {
        *codes.entry(f.await.unwrap()).or_insert(0usize) += 1;
    }
    println!(
        "{flood_n} blocking reloads from one client answered in {} ms: {codes:?}",
        started.elapsed().as_millis()
    );
    let ok = codes.get(&Answer::Ok).copied().unwrap_or(0);
    let refused = codes.get(&Answer::OverBound).copied().unwrap_or(0);
    let max_held = sampling.await.unwrap();
    println!("most requests held at once: {max_held}");
    assert!(
        max_held >= 50.0,
        "the flood was held up to the bound: {max_held}"
    );
    assert!(
        max_held <= (PER_CLIENT + 1) as f64,
        "never more than the bound (+1 other viewer) held: {max_held}"
    );
    assert!(
        refused >= 1,
        "requests over the bound are refused, not queued: {codes:?}"
    );
    assert_eq!(
        ok + refused,
        flood_n,
        "every request answered: 200 once its segment existed, or 503 at the bound: {codes:?}"
    );
    let health = http.get(edge.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "the edge stays up");
    assert!(
        edge.metric("streamhub_hls_unavailable_total")
            .await
            .unwrap()
            >= refused as f64
    );
    c.note("done");
}
