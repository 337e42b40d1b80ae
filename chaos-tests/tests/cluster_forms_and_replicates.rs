//! Three origins form a cluster through a join token and replicate writes made through any of
//! them; the cluster refuses a join with a wrong token and a node that reuses a member's name,
//! and a node that receives 1000 garbage datagrams on its cluster (QUIC) port keeps serving.

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::time::Duration;

use rand::Rng;
use streamhub_chaos_tests::api::names;
use streamhub_chaos_tests::{chaos_seed, poll, Api, Cluster, Join};

/// How long a write may take to show up on another node.
const REPLICATION: Duration = Duration::from_secs(10);

/// How long a refused node is watched: it must exit non-zero or stay unhealthy this long.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_forms_and_replicates() {
    let seed = chaos_seed();
    let mut c = Cluster::start(3, seed).await;
    let leader = c.leader().await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let apis = [c.admin(0).await, c.admin(1).await, c.admin(2).await];

    // A write on the leader reaches both followers.
    let r = apis[leader].create_app("from-leader").await.unwrap();
    assert_eq!(r.status, 201, "create on the leader: {r:?}");
    for &f in &followers {
        wait_app(&apis[f], "from-leader").await;
    }

    // A write through a follower is forwarded, committed, visible at once on the node that
    // acknowledged it and soon on the others; the same name through another node is a conflict.
    let f = followers[c.rng.gen_range(0..2)];
    let r = apis[f].create_app("from-follower").await.unwrap();
    assert_eq!(
        r.status,
        201,
        "create through follower {}: {r:?}",
        c.nodes[f].name()
    );
    let r = apis[f].get("/apps/from-follower").await.unwrap();
    assert_eq!(
        r.status,
        200,
        "read-your-writes on {}: {r:?}",
        c.nodes[f].name()
    );
    for i in (0..3).filter(|&i| i != f) {
        wait_app(&apis[i], "from-follower").await;
    }
    let other = (f + 1) % 3;
    let r = apis[other].create_app("from-follower").await.unwrap();
    assert_eq!(
        r.status,
        409,
        "duplicate through {}: {r:?}",
        c.nodes[other].name()
    );
    c.note("writes replicated both ways");

    // The node registry lists the three origins, all up.
    let expected: BTreeSet<String> = c.nodes.iter().map(|n| n.name().to_string()).collect();
    let nodes_api = apis[followers[0]].clone();
    poll("GET /nodes lists 3 origins up", REPLICATION, || {
        let (api, expected) = (nodes_api.clone(), expected.clone());
        async move {
            let r = api.get("/nodes").await.map_err(|e| format!("{e:#}"))?;
            let up: BTreeSet<String> = r
                .data()
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| n["status"] == "up" && n["role"] == "origin")
                .filter_map(|n| n["name"].as_str().map(String::from))
                .collect();
            (r.status == 200 && up == expected)
                .then_some(())
                .ok_or_else(|| format!("{r:?}"))
        }
    })
    .await
    .unwrap();

    wrong_token_is_refused(&mut c, &apis[0]).await;
    name_collision_is_refused(&mut c, &apis).await;
    garbage_datagrams_are_survived(&mut c, &apis).await;
}

async fn wait_app(api: &Api, app: &str) {
    let path = format!("/apps/{app}");
    poll(&format!("{app} on {}", api.base()), REPLICATION, || {
        let (api, path) = (api.clone(), path.clone());
        async move {
            let r = api.get(&path).await.map_err(|e| format!("{e:#}"))?;
            (r.status == 200)
                .then_some(())
                .ok_or_else(|| format!("{r:?}"))
        }
    })
    .await
    .unwrap();
}

/// The cluster still has exactly the three original voters, and `stranger` is not a member.
async fn assert_membership_unchanged(c: &Cluster, api: &Api, stranger: Option<&str>) {
    let s = api.cluster().await.unwrap();
    let voters = names(&s, "voters");
    let expected: BTreeSet<String> = c.nodes.iter().map(|n| n.name().to_string()).collect();
    assert_eq!(voters, expected, "voters changed: {s}");
    if let Some(stranger) = stranger {
        assert!(
            !names(&s, "learners").contains(stranger),
            "{stranger} is a learner: {s}"
        );
        let listed = s["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["name"] == stranger);
        assert!(!listed, "{stranger} is listed as a cluster node: {s}");
    }
}

async fn wrong_token_is_refused(c: &mut Cluster, api: &Api) {
    // A real token with one character of its secret changed: right format, right cluster
    // fingerprint, wrong secret.
    let mut token: Vec<char> = api.join_token("origin").await.unwrap().chars().collect();
    let at = token.iter().position(|&ch| ch == '_').map_or(0, |p| p + 1);
    token[at] = if token[at] == 'a' { 'b' } else { 'a' };
    let join = Join {
        url: c.nodes[0].url(""),
        token: token.into_iter().collect(),
    };
    let mut bad = c.spawn_extra("origin-badtoken", Some(join));
    let how = c.assert_refused(&mut bad).await;
    c.note(format!("join with a wrong token refused: {how}"));
    drop(bad);
    assert_membership_unchanged(c, api, Some("origin-badtoken")).await;
}

async fn name_collision_is_refused(c: &mut Cluster, apis: &[Api; 3]) {
    // A new node on an empty data dir with a valid token but the name of a live member.
    let victim = 1;
    let name = c.nodes[victim].name().to_string();
    let join = c.join_via(0).await;
    let mut impostor = c.spawn_extra(&name, Some(join));
    let how = c.assert_refused(&mut impostor).await;
    c.note(format!("node id collision ({name}) refused: {how}"));
    drop(impostor);
    assert_membership_unchanged(c, &apis[0], None).await;
    // The real member is unharmed: healthy, and writes through it still commit.
    c.nodes[victim]
        .wait_healthy(Duration::from_secs(10))
        .await
        .unwrap();
    let r = apis[victim].create_app("after-impostor").await.unwrap();
    assert_eq!(
        r.status, 201,
        "write through {name} after the impostor: {r:?}"
    );
    for api in apis {
        wait_app(api, "after-impostor").await;
    }
}

async fn garbage_datagrams_are_survived(c: &mut Cluster, apis: &[Api; 3]) {
    let target = c.leader().await;
    let addr = c.nodes[target].config().cluster;
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    for n in 0..1000 {
        let d = garbage_datagram(&mut c.rng, n % 2 == 0);
        // A full socket buffer may refuse a datagram; that is the network dropping it.
        let _ = sock.send_to(&d, addr);
    }
    c.note(format!(
        "1000 garbage datagrams sent to {} ({addr})",
        c.nodes[target].name()
    ));
    assert!(
        c.nodes[target].is_serving(),
        "{} died from garbage datagrams",
        c.nodes[target].name()
    );
    c.nodes[target]
        .wait_healthy(Duration::from_secs(10))
        .await
        .unwrap();
    for (i, api) in apis.iter().enumerate() {
        let name = format!("after-garbage-{i}");
        let r = api.create_app(&name).await.unwrap();
        assert_eq!(
            r.status,
            201,
            "write through {} after garbage: {r:?}",
            c.nodes[i].name()
        );
        wait_app(&apis[target], &name).await;
    }
    assert_membership_unchanged(c, &apis[target], None).await;
}

/// Random bytes; with `quic_like`, a QUIC v1 long-header Initial prefix so the datagram gets past
/// the endpoint's first checks and into connection-level parsing.
fn garbage_datagram(rng: &mut impl Rng, quic_like: bool) -> Vec<u8> {
    let len = if quic_like {
        rng.gen_range(1200..=1400)
    } else {
        rng.gen_range(1..=1400)
    };
    let mut d: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
    if quic_like {
        d[0] = 0xc0 | (d[0] & 0x0f); // long header, Initial
        d[1..5].copy_from_slice(&1u32.to_be_bytes()); // version 1
        d[5] = 8; // destination connection id length
        d[14] = 8; // source connection id length
    }
    d
}
