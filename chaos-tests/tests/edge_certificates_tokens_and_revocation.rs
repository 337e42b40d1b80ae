//! Cluster trust with real processes (3 origins, edges):
//!
//! 1. An edge's own certificate (read from its data dir) calling each write, membership, Raft,
//!    key and status service of an origin is refused as `forbidden`, and nothing changes in the
//!    state; a heartbeat naming another node is refused; what an edge may ask for app keys holds
//!    no secret.
//! 2. Join tokens: a single-use token joins once and is refused the second time; a token minted
//!    for an edge cannot join an origin; a revoked token joins nobody; the list never shows a
//!    secret; no node's log holds a token.
//! 3. Revocation: removing an edge revokes its certificate; its open connections are closed
//!    within seconds, a new handshake with it fails, and restarted on its data dir it is
//!    refused, with a clear log line on both sides.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use streamhub_chaos_tests::{chaos_seed, poll, Cluster, Node};
use streamhub_cluster::state::{ApiKey, Command};
use streamhub_cluster::transport::kinds;
use streamhub_cluster::transport::{Endpoint, NodeIdentity, RpcError};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(5);

/// A client endpoint holding `node`'s own certificate and key (what an attacker who owns the
/// node's disk holds).
fn endpoint_of(node: &Node) -> Endpoint {
    let dir = node.config().data_dir.join("cluster");
    let identity = NodeIdentity::load(&dir).expect("the node's saved identity");
    Endpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        CancellationToken::new(),
    )
    .expect("bind a client endpoint")
}

fn forbidden(r: Result<Bytes, RpcError>, what: &str) {
    match r {
        Err(RpcError::Remote(e)) if e.code == "forbidden" => {}
        other => panic!("{what}: expected a forbidden refusal, got {other:?}"),
    }
}

/// What the state holds that an edge's writes could change.
async fn state_of(c: &Cluster) -> Value {
    let api = c.admin(0).await;
    let keys = api.get("/api-keys").await.unwrap();
    let apps = api.app_names().await.unwrap();
    let st = api.cluster().await.unwrap();
    json!({
        "keys": keys.data().as_array().map(|k| k.iter().map(|k| k["id"].clone()).collect::<Vec<_>>()),
        "apps": apps,
        "voters": st["voters"],
        "learners": st["learners"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_certificates_tokens_and_revocation() {
    let seed = chaos_seed();
    let mut c = Cluster::start(3, seed).await;
    let edge = c.start_edge("edge-1", "local", 0, &[]).await;
    let leader = c.leader().await;
    let origin_addr = c.nodes[leader].config().cluster;
    let before = state_of(&c).await;

    // 1. The edge's certificate against each service an edge must not reach.
    let stolen = endpoint_of(&edge);
    let evil_key = Command::CreateApiKey(ApiKey {
        id: "ak_from_edge".into(),
        name: "evil".into(),
        app: None,
        allow_ips: vec![],
        hash: "0".repeat(64),
        prefix: "sk_evil".into(),
        created_at_ms: 1,
        role: None,
    });
    let write = Bytes::from(serde_json::to_vec(&evil_key).unwrap());
    let join = Bytes::from(json!({"node_id": 42, "addr": "127.0.0.1:9"}).to_string());
    let leave = Bytes::from(json!({"node_id": 1}).to_string());
    for (kind, body, what) in [
        (kinds::CLIENT_WRITE, write, "client write"),
        (kinds::JOIN_CLUSTER, join, "join as voter"),
        (kinds::LEAVE_CLUSTER, leave, "remove a voter"),
        (kinds::RAFT_APPEND, Bytes::from_static(b"{}"), "raft append"),
        (kinds::RAFT_VOTE, Bytes::from_static(b"{}"), "raft vote"),
        (
            kinds::RAFT_SNAPSHOT,
            Bytes::from_static(b"{}"),
            "raft snapshot",
        ),
        (kinds::CLUSTER_KEY, Bytes::new(), "the cluster key"),
        (kinds::READ_INDEX, Bytes::new(), "read index"),
        (kinds::CLUSTER_STATUS, Bytes::new(), "cluster status"),
    ] {
        for i in 0..3 {
            let addr = c.nodes[i].config().cluster;
            forbidden(
                stolen.request(addr, kind, body.clone(), T).await,
                &format!("{what} on origin {i}"),
            );
        }
    }
    // A heartbeat for another node, through the service edges may use.
    let other = c.nodes[1].name().to_string();
    let beat = json!({"node": other, "load": {"rooms": 0, "publishers": 0, "viewers": 0, "egressBps": 0, "cpu": 0.0}});
    forbidden(
        stolen
            .request(
                origin_addr,
                kinds::HEARTBEAT,
                Bytes::from(beat.to_string()),
                T,
            )
            .await,
        "heartbeat for another node",
    );
    // What an edge may ask about an app is its public key: nothing that mints a token.
    let q = json!({"q": "app_key", "app": "demo"}).to_string();
    let answer = stolen
        .request(origin_addr, kinds::STATE_QUERY, Bytes::from(q), T)
        .await
        .expect("an edge may ask for an app's verify key");
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert!(
        answer["key"]["verifyKey"].is_string(),
        "no verify key: {answer}"
    );
    assert!(
        answer["key"].get("secret").is_none() && !answer.to_string().contains("enc1:"),
        "an edge got secret material: {answer}"
    );
    // Nothing changed (a refused write that slipped through would show within a heartbeat).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        state_of(&c).await,
        before,
        "the state changed after refused calls"
    );
    c.note("edge certificate refused on every origin-only service");

    // 2. Join tokens.
    let admin = c.admin(leader).await;
    let minted = admin
        .post("/cluster/join-tokens", json!({"role": "edge"}))
        .await
        .unwrap();
    assert_eq!(minted.status, 201, "{:?}", minted.body);
    let d = minted.data().clone();
    assert_eq!(d["role"], "edge");
    assert_eq!(d["usesLeft"], 1);
    let ttl_ms = d["expiresAtMs"].as_u64().unwrap() as i64 - now_ms() as i64;
    assert!(
        (0..=16 * 60_000).contains(&ttl_ms),
        "default lifetime is minutes: {ttl_ms} ms"
    );
    let single = d["token"].as_str().unwrap().to_string();
    let listed = admin.get("/cluster/join-tokens").await.unwrap();
    assert_eq!(listed.status, 200);
    assert!(
        listed
            .data()
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == d["id"]),
        "{:?}",
        listed.body
    );
    assert!(
        !listed.body.to_string().contains(&single)
            && !listed.body.to_string().contains("\"token\""),
        "the list shows a secret: {:?}",
        listed.body
    );
    let url = c.nodes[leader].url("");
    let join = |token: &str| streamhub_chaos_tests::node::Join {
        url: url.clone(),
        token: token.to_string(),
    };
    let mut edge2 = c.spawn_extra_edge("edge-2", Some(join(&single)));
    edge2
        .wait_healthy(Duration::from_secs(30))
        .await
        .expect("the first use of a single-use token joins");
    let mut edge3 = c.spawn_extra_edge("edge-3", Some(join(&single)));
    let how = c.assert_refused(&mut edge3).await;
    assert!(
        read_log(&edge3).contains("used-up join token"),
        "the second use is refused as used up:\n{}",
        read_log(&edge3)
    );
    c.note(format!("single-use token refused the second time: {how}"));
    let for_edge = admin.join_token("edge").await.unwrap();
    let mut origin4 = c.spawn_extra("origin-4", Some(join(&for_edge)));
    let how = c.assert_refused(&mut origin4).await;
    assert!(
        read_log(&origin4).contains("minted for edge"),
        "an edge's token joining an origin is refused for its role:\n{}",
        read_log(&origin4)
    );
    c.note(format!("edge token refused for an origin: {how}"));
    let revoked = admin
        .post(
            "/cluster/join-tokens",
            json!({"role": "origin", "ttl": "5m"}),
        )
        .await
        .unwrap();
    let id = revoked.data()["id"].as_str().unwrap().to_string();
    let r = admin
        .delete(&format!("/cluster/join-tokens/{id}"))
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{:?}", r.body);
    let mut origin5 = c.spawn_extra(
        "origin-5",
        Some(join(revoked.data()["token"].as_str().unwrap())),
    );
    c.assert_refused(&mut origin5).await;
    c.note("revoked token refused");
    for token in [&single, &for_edge] {
        let secret = token.split('.').next().unwrap();
        for node in c.nodes.iter().chain([&edge, &edge2, &edge3, &origin4]) {
            assert!(
                !read_log(node).contains(secret),
                "{} logged a join token",
                node.name()
            );
        }
    }
    assert_membership(&c, &["origin-1", "origin-2", "origin-3"]).await;

    // 3. Revocation: remove edge-1 while it runs.
    let r = admin
        .post("/cluster/nodes/edge-1/remove", json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{:?}", r.body);
    let removed_at = Instant::now();
    c.note("edge-1 removed");
    // Its connections are closed and a new handshake fails.
    poll(
        "the removed edge's certificate refused",
        Duration::from_secs(10),
        || {
            let stolen = &stolen;
            async move {
                let q = json!({"q": "nodes"}).to_string();
                match stolen
                    .request(origin_addr, kinds::STATE_QUERY, Bytes::from(q), T)
                    .await
                {
                    Err(e) => Ok(e.to_string()),
                    Ok(_) => Err("still answered".to_string()),
                }
            }
        },
    )
    .await
    .unwrap();
    poll(
        "the edge told its certificate is revoked",
        Duration::from_secs(10),
        || {
            let log = read_log(&edge);
            async move {
                log.contains("certificate is revoked")
                    .then_some(())
                    .ok_or("no revocation line in the edge's log".to_string())
            }
        },
    )
    .await
    .unwrap();
    c.note(format!(
        "edge-1's connections closed {:.1}s after its removal",
        removed_at.elapsed().as_secs_f64()
    ));
    let origins_said = c
        .nodes
        .iter()
        .any(|n| read_log(n).contains("closing the connection of a revoked cluster certificate"));
    assert!(
        origins_said,
        "no origin logged closing the revoked connection"
    );
    // Restarted on its data dir, it is refused at the handshake, and both sides say so.
    let mut edge = edge;
    edge.kill9();
    edge.respawn().unwrap();
    poll(
        "the restarted removed edge refused, both sides saying so",
        Duration::from_secs(20),
        || {
            let edge_log = edge.log_of_current_run();
            let origin_logs: String = c.nodes.iter().map(read_log).collect();
            async move {
                let edge_side = edge_log.contains("certificate is revoked");
                let origin_side = origin_logs.contains("refused a revoked cluster certificate");
                (edge_side && origin_side).then_some(()).ok_or(format!(
                    "edge says so: {edge_side}, an origin says so: {origin_side}"
                ))
            }
        },
    )
    .await
    .unwrap();
    // The state never changed on its account.
    assert!(
        !admin
            .get("/nodes")
            .await
            .unwrap()
            .body
            .to_string()
            .contains("\"edge-1\""),
        "the removed edge is registered again"
    );
    edge.kill9();
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn read_log(node: &Node) -> String {
    std::fs::read_to_string(&node.config().log).unwrap_or_default()
}

/// The voters are exactly `names`.
async fn assert_membership(c: &Cluster, names: &[&str]) {
    let st = c.admin(0).await.cluster().await.unwrap();
    let voters = streamhub_chaos_tests::api::names(&st, "voters");
    let want: std::collections::BTreeSet<String> = names.iter().map(|s| s.to_string()).collect();
    assert_eq!(voters, want, "{st}");
}
