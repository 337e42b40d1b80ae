//! A single-voter `RaftNode` on disk: writes are acknowledged durably and survive a restart.

use std::path::Path;
use std::time::Duration;

use openraft::ServerState;
use streamhub_cluster::raft::{node_id_from_name, RaftNode, Start};
use streamhub_cluster::state::{App, Command, CommandResponse};
use streamhub_cluster::transport::{Endpoint, NodeIdentity};
use streamhub_shared::AppName;
use tokio_util::sync::CancellationToken;

const NODE: &str = "origin-1";
const ADDR: &str = "127.0.0.1:4433";

fn app(name: &str) -> App {
    App {
        name: AppName::new(name).expect("app name"),
        display_name: None,
        key_id: format!("ak_{name}"),
        secret: "00".into(),
        created_at_ms: 1,
        signing_key: None,
        verify_key: None,
        settings: Default::default(),
        quotas: Default::default(),
        storage: None,
    }
}

/// A loopback cluster endpoint with a throwaway CA: a single voter never dials anyone.
fn endpoint() -> Endpoint {
    let (identity, _ca) = NodeIdentity::bootstrap("test", "origin-1", "origin").expect("identity");
    Endpoint::bind(
        "127.0.0.1:0".parse().expect("addr"),
        &identity,
        CancellationToken::new(),
    )
    .expect("bind")
}

async fn open(dir: &Path) -> RaftNode {
    RaftNode::open(
        dir,
        node_id_from_name(NODE),
        ADDR.into(),
        endpoint(),
        Start::Bootstrap,
    )
    .await
    .expect("open raft node")
}

fn has_app(node: &RaftNode, name: &str) -> bool {
    let name = AppName::new(name).expect("app name");
    node.read(|s| s.tenants.apps.contains_key(&name))
}

#[tokio::test]
async fn app_survives_restart_and_the_log_continues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path()).await;
    let status = node.status();
    assert_eq!(status.state, ServerState::Leader);
    assert_eq!(status.leader, Some(node_id_from_name(NODE)));
    assert_eq!(status.voters, vec![node_id_from_name(NODE)]);

    let created = node
        .write(Command::CreateApp(app("a")))
        .await
        .expect("write");
    assert_eq!(created, CommandResponse::Ok);
    assert!(has_app(&node, "a"));
    let again = node
        .write(Command::CreateApp(app("a")))
        .await
        .expect("write");
    assert!(matches!(again, CommandResponse::Exists { .. }));
    let index_before = node.status().last_log_index.expect("log index");
    node.shutdown().await.expect("shutdown");
    drop(node);

    let node = open(dir.path()).await;
    assert!(has_app(&node, "a"), "app lost across restart");
    let status = node.status();
    assert_eq!(status.state, ServerState::Leader, "{status:?}");
    assert_eq!(status.last_applied, status.last_log_index, "{status:?}");
    let created = node
        .write(Command::CreateApp(app("b")))
        .await
        .expect("write");
    assert_eq!(created, CommandResponse::Ok);
    let status = node.status();
    let index_after = status.last_log_index.expect("log index");
    assert!(
        index_after > index_before,
        "{index_after} after {index_before}"
    );
    assert_eq!(status.last_applied, status.last_log_index);
    assert!(has_app(&node, "a") && has_app(&node, "b"));
    node.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn two_hundred_acknowledged_writes_survive_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path()).await;
    for i in 0..200 {
        let response = node
            .write(Command::CreateApp(app(&format!("app-{i}"))))
            .await
            .expect("write");
        assert_eq!(response, CommandResponse::Ok, "write {i}");
    }
    node.shutdown().await.expect("shutdown");
    drop(node);

    let node = open(dir.path()).await;
    assert_eq!(node.read(|s| s.tenants.apps.len()), 200);
    assert!((0..200).all(|i| has_app(&node, &format!("app-{i}"))));
    node.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn restart_from_snapshot_with_purged_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path()).await;
    for i in 0..10 {
        node.write(Command::CreateApp(app(&format!("s-{i}"))))
            .await
            .expect("write");
    }
    let snapshot_index = node.status().last_applied.expect("applied");
    node.raft()
        .trigger()
        .snapshot()
        .await
        .expect("trigger snapshot");
    node.raft()
        .wait(Some(Duration::from_secs(10)))
        .snapshot(
            node.metrics().last_applied.expect("applied"),
            "snapshot built",
        )
        .await
        .expect("snapshot");
    for i in 10..15 {
        node.write(Command::CreateApp(app(&format!("s-{i}"))))
            .await
            .expect("write");
    }
    node.raft()
        .trigger()
        .purge_log(snapshot_index)
        .await
        .expect("purge");
    node.raft()
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.purged.map(|p| p.index) == Some(snapshot_index),
            "log purged",
        )
        .await
        .expect("purged");
    node.shutdown().await.expect("shutdown");
    drop(node);

    let node = open(dir.path()).await;
    assert_eq!(node.read(|s| s.tenants.apps.len()), 15);
    let metrics = node.metrics();
    assert_eq!(metrics.purged.map(|p| p.index), Some(snapshot_index));
    assert_eq!(metrics.snapshot.map(|s| s.index), Some(snapshot_index));
    node.write(Command::CreateApp(app("after")))
        .await
        .expect("write after restart");
    assert!(has_app(&node, "after"));
    node.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_second_open_of_a_live_data_dir_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = open(dir.path()).await;
    let err = RaftNode::open(
        dir.path(),
        node_id_from_name(NODE),
        ADDR.into(),
        endpoint(),
        Start::Bootstrap,
    )
    .await
    .expect_err("the data dir is locked");
    assert!(
        matches!(err, streamhub_cluster::raft::RaftError::OpenDb { .. }),
        "{err:?}"
    );
    node.shutdown().await.expect("shutdown");
}
