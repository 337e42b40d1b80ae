//! What webhook delivery gives on one origin with a local receiver (the test kit's, on
//! loopback):
//!
//! 1. **Latency**: `N` events, one every 50 ms (each an ingress created through the API), to one
//!    endpoint that answers 200 at once; for each, the time from the event's `createdAtMs` (set
//!    by the origin before the Raft write) to its arrival at the receiver. p50, p99, max.
//! 2. **Throughput**: the receiver is down while `N` events are made; then it comes back, and
//!    the time from the first to the last delivery gives events per second, for one endpoint
//!    and for four endpoints (each its own ordered queue).
//!
//! ```sh
//! cargo build --release -p streamhub-origin -p streamhub-chaos-tests --bin webhook_bench
//! STREAMHUB_ORIGIN_BIN=$PWD/target/release/streamhub-origin EVENTS=300 target/release/webhook_bench
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use streamhub_chaos_tests::webhook::{Mode, Receiver};
use streamhub_chaos_tests::{Api, Node, NodeConfig, Timeline};

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn hook(api: &Api, app: &str, url: &str) {
    let r = api
        .post(
            &format!("/apps/{app}/webhooks"),
            json!({"url": url, "events": ["ingress.created"]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
}

async fn make_events(api: &Api, app: &str, n: usize, gap: Duration) {
    for i in 0..n {
        let r = api
            .post(
                &format!("/apps/{app}/ingress"),
                json!({"type": "rtmp", "room": format!("r{i}")}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{r:?}");
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
}

/// Waits until `want` deliveries were answered 200; their arrival times.
async fn delivered(rx: &Receiver, want: usize) -> Vec<(u64, Value)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let ok: Vec<(u64, Value)> = rx
            .received()
            .into_iter()
            .filter(|r| r.answered == 200)
            .map(|r| (r.at_ms, serde_json::from_slice(&r.body).unwrap()))
            .collect();
        if ok.len() >= want {
            return ok;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {want} delivered",
            ok.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn throughput(api: &Api, app: &str, endpoints: usize, n: usize) -> f64 {
    assert_eq!(api.create_app(app).await.unwrap().status, 201);
    let rx = Receiver::start().await.unwrap();
    for _ in 0..endpoints {
        hook(api, app, &rx.url()).await;
    }
    rx.set(Mode::Down).await.unwrap();
    make_events(api, app, n, Duration::ZERO).await;
    // Past the first retries: the queue is full when the receiver returns.
    tokio::time::sleep(Duration::from_secs(2)).await;
    rx.set(Mode::Ok).await.unwrap();
    let got = delivered(&rx, n * endpoints).await;
    let first = got.iter().map(|(t, _)| *t).min().unwrap();
    let last = got.iter().map(|(t, _)| *t).max().unwrap();
    (n * endpoints) as f64 / ((last - first).max(1) as f64 / 1000.0)
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    assert!(n < 1000, "EVENTS must stay under the per-app log (1000)");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::new("origin-bench", dir.path());
    cfg.env
        .push(("STREAMHUB_WEBHOOK_ALLOW_PRIVATE".into(), "1".into()));
    let origin = Node::start(cfg, Arc::new(Timeline::quiet())).await.unwrap();
    let api = origin.admin().await.unwrap();

    assert_eq!(api.create_app("latency").await.unwrap().status, 201);
    let rx = Receiver::start().await.unwrap();
    hook(&api, "latency", &rx.url()).await;
    make_events(&api, "latency", n, Duration::from_millis(50)).await;
    let got = delivered(&rx, n).await;
    let mut lat: Vec<u64> = got
        .iter()
        .map(|(at, b)| at.saturating_sub(b["createdAtMs"].as_u64().unwrap()))
        .collect();
    lat.sort_unstable();
    println!(
        "latency over {n} events: p50 {} ms, p99 {} ms, max {} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );

    let one = throughput(&api, "burst1", 1, n).await;
    println!("throughput, 1 endpoint: {one:.0} events/s ({n} events)");
    let four = throughput(&api, "burst4", 4, n).await;
    println!("throughput, 4 endpoints: {four:.0} deliveries/s ({n} events each)");
}
