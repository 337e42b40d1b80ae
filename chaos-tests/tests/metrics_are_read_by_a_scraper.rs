//! `/metrics` of an origin and an edge, read by a strict Prometheus text-format reader during a
//! run with three apps, behind `--metrics-token`: each app's viewer count (cluster-wide, from
//! the nodes' load reports) matches the HLS clients started for it on the edge, and the edge's
//! own per-app and per-room series count them by protocol (HLS, LL-HLS), with each app's
//! egress; the origin counts each app's ingest and exposes its Raft lag.

use std::time::Duration;

use serde_json::json;
use streamhub_chaos_tests::prom::{self, Sample};
use streamhub_chaos_tests::require::{has_command, require};
use streamhub_chaos_tests::{chaos_seed, hls, poll, Api, Cluster, Node, Publisher};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "metrics-token-0123456789";

async fn scrape(node: &Node) -> Result<Vec<Sample>, String> {
    let client = reqwest::Client::new();
    let url = node.url("/metrics");
    let anonymous = client.get(&url).send().await.map_err(|e| e.to_string())?;
    if anonymous.status() != 401 {
        return Err(format!(
            "/metrics of {} without the token: {}",
            node.name(),
            anonymous.status()
        ));
    }
    let r = client
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("/metrics of {}: {}", node.name(), r.status()));
    }
    let text = r.text().await.map_err(|e| e.to_string())?;
    // A malformed exposition fails the test at once (not a reason to poll again).
    Ok(prom::parse(&text).unwrap_or_else(|e| panic!("/metrics of {}: {e}", node.name())))
}

/// A viewer token of `app` for identity `who`.
async fn token(api: &Api, app: &str, who: &str) -> String {
    let r = api
        .post(
            &format!("/apps/{app}/tokens"),
            json!({"room": "cam", "identity": who, "canSubscribe": true}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    r.data()["token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_read_by_a_scraper_and_count_each_apps_viewers() {
    if !require("ffmpeg", has_command("ffmpeg")) {
        return;
    }
    let mut c =
        Cluster::start_with_env(1, chaos_seed(), &[("STREAMHUB_METRICS_TOKEN", TOKEN)]).await;
    let edge = c.start_edge("edge-1", "local", 0, &[]).await;
    let api = c.admin(0).await;
    let apps = [("m1", 1usize), ("m2", 2), ("m3", 3)];
    let mut publishers = Vec::new();
    for (app, _) in apps {
        assert_eq!(api.create_app(app).await.unwrap().status, 201);
        // Token playback: each viewer is counted by its identity (anonymous viewers from one
        // address would count once).
        let r = api
            .patch(&format!("/apps/{app}"), json!({"playback": "token"}))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        let key = api.rtmp_ingress(app, "cam").await.unwrap();
        publishers.push(Publisher::start(&c.nodes[0].rtmp_url(&key)));
    }
    let stop = CancellationToken::new();
    let mut viewers = Vec::new();
    for (app, n) in apps {
        for i in 0..n {
            let token = token(&api, app, &format!("viewer-{i}")).await;
            // The third viewer of m3 reloads as an LL-HLS player does (`_HLS_msn`, answered at
            // once for a segment the playlist has).
            let ll = if i == 2 { "&_HLS_msn=0" } else { "" };
            let url = edge.url(&format!("/hls/{app}/cam/index.m3u8?token={token}{ll}"));
            let stop = stop.clone();
            viewers.push(tokio::spawn(async move {
                let client = hls::client();
                while !stop.is_cancelled() {
                    let _ = hls::get(&client, &url).await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }));
        }
    }
    poll(
        "each app's viewers in the origin's /metrics",
        Duration::from_secs(60),
        || async {
            let s = scrape(&c.nodes[0]).await?;
            let counts: Vec<Option<f64>> = apps
                .iter()
                .map(|(app, _)| {
                    prom::find(
                        &s,
                        "streamhub_app_usage",
                        &[("app", *app), ("kind", "viewers")],
                    )
                })
                .collect();
            let want: Vec<Option<f64>> = apps.iter().map(|(_, n)| Some(*n as f64)).collect();
            (counts == want)
                .then_some(())
                .ok_or(format!("viewers by app {counts:?}, want {want:?}"))
        },
    )
    .await
    .unwrap();
    // The edge's exposition reads too: it served the HLS viewers, and counts them per app and
    // per room by protocol, with the bytes each app's viewers took.
    let by_protocol = [
        ("m1", "hls", 1.0),
        ("m2", "hls", 2.0),
        ("m3", "hls", 2.0),
        ("m3", "ll-hls", 1.0),
    ];
    poll(
        "the edge's viewers by app, room and protocol",
        Duration::from_secs(30),
        || async {
            let s = scrape(&edge).await?;
            for (app, protocol, want) in by_protocol {
                let per_app = prom::find(
                    &s,
                    "streamhub_app_viewers",
                    &[("app", app), ("protocol", protocol)],
                );
                let per_room = prom::find(
                    &s,
                    "streamhub_room_viewers",
                    &[("app", app), ("room", "cam"), ("protocol", protocol)],
                );
                if per_app != Some(want) || per_room != Some(want) {
                    return Err(format!(
                        "{app} {protocol}: app {per_app:?}, room {per_room:?}, want {want}"
                    ));
                }
            }
            Ok(())
        },
    )
    .await
    .unwrap();
    // Viewers are counted from their first request, maybe before their room's first segment
    // (heartbeats report them within half a second): wait until each app's viewers took bytes.
    poll(
        "each app's egress on the edge",
        Duration::from_secs(30),
        || async {
            let s = scrape(&edge).await?;
            let egress: Vec<Option<f64>> = apps
                .iter()
                .map(|(app, _)| {
                    prom::find(&s, "streamhub_app_egress_bytes_total", &[("app", *app)])
                })
                .collect();
            egress
                .iter()
                .all(|e| e.is_some_and(|e| e > 0.0))
                .then_some(())
                .ok_or(format!("egress by app {egress:?}"))
        },
    )
    .await
    .unwrap();
    let s = scrape(&edge).await.unwrap();
    let served = prom::find(&s, "streamhub_hls_requests_total", &[]).unwrap_or(0.0);
    assert!(served >= 6.0, "the edge served {served} HLS requests");
    let hls_bytes = prom::find(&s, "streamhub_hls_bytes_out_total", &[]).unwrap_or(0.0);
    let mut egress = 0.0;
    for (app, _) in apps {
        let e = prom::find(&s, "streamhub_app_egress_bytes_total", &[("app", app)]);
        assert!(
            e.is_some_and(|e| e > 0.0),
            "{app}'s egress on the edge: {e:?}"
        );
        egress += e.unwrap_or(0.0);
    }
    // Every HLS body the edge sent went to one of these viewers, counted in its app's egress
    // after the token was added to its URIs (so at least as large), but for the responses in
    // flight at the scrape (counted by the HLS side first).
    assert!(
        hls_bytes > 0.0 && egress + 64.0 * 1024.0 >= hls_bytes,
        "egress {egress}, HLS {hls_bytes}"
    );
    // Every series the Grafana dashboard draws is one the nodes expose (those that exist only
    // once something happened: quotas set, events dropped).
    let origin = scrape(&c.nodes[0]).await.unwrap();
    for (app, _) in apps {
        let ingest = prom::find(&origin, "streamhub_app_ingest_bytes_total", &[("app", app)]);
        assert!(
            ingest.is_some_and(|b| b > 10_000.0),
            "{app}'s ingest on the origin: {ingest:?}"
        );
    }
    let last_log = prom::find(&origin, "streamhub_raft_last_log_index", &[]).unwrap_or(0.0);
    assert!(last_log > 0.0, "the origin's Raft log: {last_log}");
    let lag = prom::find(&origin, "streamhub_raft_apply_lag_entries", &[]);
    assert!(
        lag.is_some_and(|l| l >= 0.0 && l <= last_log),
        "apply lag {lag:?}"
    );
    let exposed: std::collections::HashSet<&str> = origin
        .iter()
        .chain(s.iter())
        .map(|x| x.name.as_str())
        .collect();
    let dashboard = include_str!("../../deploy/grafana/streamhub.json");
    let mut drawn: Vec<&str> = dashboard
        .match_indices("streamhub_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|n| *n != "streamhub_" && !n.starts_with("streamhub_overview"))
        .collect();
    drawn.sort_unstable();
    drawn.dedup();
    assert!(drawn.len() >= 10, "{drawn:?}");
    for name in drawn {
        let only_sometimes = [
            "streamhub_app_quota",
            "streamhub_webhook_dropped_total",
            "streamhub_webhook_attempts_total",
        ];
        assert!(
            exposed.contains(name) || only_sometimes.contains(&name),
            "the dashboard draws {name}, which no node exposes"
        );
    }
    stop.cancel();
    for v in viewers {
        let _ = v.await;
    }
    for mut p in publishers {
        p.stop();
    }
}
