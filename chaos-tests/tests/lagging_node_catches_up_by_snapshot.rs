//! A follower that is down while the others commit many more entries than the snapshot threshold
//! catches up when it comes back, through an installed snapshot (a line of its log mentions
//! installing a snapshot, e.g. "installed snapshot"), and ends with
//! every app.
//!
//! Every node runs with `STREAMHUB_RAFT_SNAPSHOT_LOGS=50` so the leader snapshots (and purges its
//! log) every 50 entries; the follower misses about ten times that.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use streamhub_chaos_tests::{chaos_seed, Api, Cluster};

const NODES: usize = 3;
const SNAPSHOT_LOGS: &str = "50";
/// Apps written while the follower is down.
const APPS_WHILE_DOWN: usize = 500;
const WRITERS: usize = 4;
const CATCH_UP: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_catches_up_by_snapshot() {
    let seed = chaos_seed();
    let mut c = Cluster::start_with_env(
        NODES,
        seed,
        &[("STREAMHUB_RAFT_SNAPSHOT_LOGS", SNAPSHOT_LOGS)],
    )
    .await;
    let leader = c.leader().await;
    let followers: Vec<usize> = (0..NODES).filter(|&i| i != leader).collect();
    let lagger = followers[c.rng.gen_range(0..followers.len())];
    let writer_node = followers.iter().copied().find(|&f| f != lagger).unwrap();

    if c.rng.gen_bool(0.5) {
        c.nodes[lagger].kill9();
    } else {
        let status = c.nodes[lagger].terminate().await;
        assert!(
            status.is_some(),
            "{} did not stop on SIGTERM",
            c.nodes[lagger].name()
        );
    }

    // Writes through both survivors (the leader and the other follower).
    let apis = Arc::new([c.admin(leader).await, c.admin(writer_node).await]);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        tasks.push(tokio::spawn(write_apps(apis.clone(), w)));
    }
    let mut written = BTreeSet::new();
    for t in tasks {
        written.extend(t.await.expect("writer task"));
    }
    c.note(format!(
        "{} apps written while {} was down",
        written.len(),
        c.nodes[lagger].name()
    ));

    c.nodes[lagger]
        .restart()
        .await
        .expect("restart the lagging follower");
    c.wait_apps(lagger, &written, CATCH_UP)
        .await
        .unwrap_or_else(|missing| {
            panic!(
                "{} lacks {} apps after catching up: {:?}",
                c.nodes[lagger].name(),
                missing.len(),
                missing.iter().take(10).collect::<Vec<_>>()
            )
        });
    c.note(format!("{} has every app", c.nodes[lagger].name()));
    let log = c.nodes[lagger].log_of_current_run();
    let line = log.lines().find(|l| {
        let l = l.to_lowercase();
        l.contains("snapshot") && l.contains("install")
    });
    assert!(
        line.is_some(),
        "{} caught up without logging a snapshot install; its log since the restart:\n{}",
        c.nodes[lagger].name(),
        tail(&log, 40)
    );
    println!("snapshot log line: {}", line.unwrap());

    // And the caught-up node takes writes.
    let api = c.admin(lagger).await;
    let r = api.create_app("after-catch-up").await.unwrap();
    assert_eq!(r.status, 201, "write through the caught-up node: {r:?}");
    c.wait_voters(lagger, NODES, CATCH_UP).await;
}

/// Writer `w` creates its share of the apps, alternating between the two APIs; every write must
/// be acknowledged (the cluster keeps a quorum throughout).
async fn write_apps(apis: Arc<[Api; 2]>, w: usize) -> Vec<String> {
    let mut names = Vec::new();
    for i in (w..APPS_WHILE_DOWN).step_by(WRITERS) {
        let name = format!("lag-{i}");
        // A write may wait for a snapshot or an election: the client waits longer than the
        // server's own write timeout, so a slow write is not mistaken for a refused one.
        let r = apis[i % 2]
            .with_timeout(Duration::from_secs(30))
            .create_app(&name)
            .await
            .unwrap();
        assert_eq!(
            r.status,
            201,
            "create {name} through {}: {r:?}",
            apis[i % 2].base()
        );
        names.push(name);
    }
    names
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
