//! SIGTERM of every origin at once, then a start of all of them on their data dirs: every app
//! written before is present on every node, and the cluster takes writes again.

use std::collections::BTreeSet;
use std::time::Duration;

use streamhub_chaos_tests::{chaos_seed, Cluster};

const NODES: usize = 3;
/// Apps written before the restart.
const APPS: usize = 60;
const CATCH_UP: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restart_keeps_state() {
    let seed = chaos_seed();
    let mut c = Cluster::start(NODES, seed).await;
    let mut apis = Vec::new();
    for i in 0..NODES {
        apis.push(c.admin(i).await);
    }
    let mut written = BTreeSet::new();
    for n in 0..APPS {
        let name = format!("before-{n}");
        let r = apis[n % NODES].create_app(&name).await.unwrap();
        assert_eq!(
            r.status,
            201,
            "create {name} through {}: {r:?}",
            c.nodes[n % NODES].name()
        );
        written.insert(name);
    }
    c.note(format!("{APPS} apps written"));

    // All at once, as a power cut with a clean shutdown would: nobody keeps quorum for the rest.
    for node in c.nodes.iter_mut() {
        node.send_sigterm();
    }
    for i in 0..NODES {
        let status = c.nodes[i].wait_exit(Duration::from_secs(20)).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "{} did not exit cleanly on SIGTERM: {status:?}\n{}",
            c.nodes[i].name(),
            c.nodes[i].log_tail(40)
        );
    }

    // They need each other for a quorum, so all are started before any is waited for.
    for node in c.nodes.iter_mut() {
        node.respawn().expect("respawn");
    }
    let all: Vec<usize> = (0..NODES).collect();
    c.wait_all_healthy(&all).await;
    let leader = c.leader().await;
    c.wait_voters(leader, NODES, CATCH_UP).await;

    let mut apis = Vec::new();
    for i in 0..NODES {
        apis.push(c.admin(i).await);
    }
    for i in 0..NODES {
        if let Err(missing) = c.wait_apps(i, &written, CATCH_UP).await {
            panic!(
                "{} lacks {} of {APPS} apps after the restart: {missing:?}",
                c.nodes[i].name(),
                missing.len()
            );
        }
    }
    c.note("every app present on every node");

    for (i, api) in apis.iter().enumerate() {
        let name = format!("after-{i}");
        let r = api.create_app(&name).await.unwrap();
        assert_eq!(
            r.status,
            201,
            "write through {} after the restart: {r:?}",
            c.nodes[i].name()
        );
        let r = api.get(&format!("/apps/{name}")).await.unwrap();
        assert_eq!(
            r.status,
            200,
            "read-your-writes on {}: {r:?}",
            c.nodes[i].name()
        );
        written.insert(name);
    }
    for i in 0..NODES {
        c.wait_apps(i, &written, CATCH_UP)
            .await
            .unwrap_or_else(|missing| {
                panic!("{} lacks new writes: {missing:?}", c.nodes[i].name())
            });
    }
}
