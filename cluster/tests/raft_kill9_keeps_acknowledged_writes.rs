//! A writer process is killed with SIGKILL mid-stream; every write it saw acknowledged is still
//! there when the data dir is reopened.
//!
//! The test re-runs its own binary as the writer (the ignored `writer_process` test, enabled by an
//! env var), so the kill hits a real process with the real sled files, no mock.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use streamhub_cluster::raft::{node_id_from_name, RaftNode, Start};
use streamhub_cluster::state::{App, Command, CommandResponse};
use streamhub_cluster::transport::{Endpoint, NodeIdentity};
use streamhub_shared::AppName;
use tokio_util::sync::CancellationToken;

const DIR_ENV: &str = "STREAMHUB_TEST_RAFT_WRITER_DIR";
const ACKS_BEFORE_KILL: usize = 100;

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

/// The writer: writes apps forever, printing `ack <name>` after each acknowledged write.
#[tokio::test]
#[ignore = "run as a child process by kill9_keeps_acknowledged_writes"]
async fn writer_process() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let node = RaftNode::open(
        dir.as_ref(),
        node_id_from_name("w"),
        "127.0.0.1:1".into(),
        endpoint(),
        Start::Bootstrap,
    )
    .await
    .expect("open");
    let mut out = std::io::stdout().lock();
    for i in 0.. {
        let name = format!("app-{i}");
        let response = node.write(Command::CreateApp(app(&name))).await;
        assert_eq!(response.expect("write"), CommandResponse::Ok);
        writeln!(out, "ack {name}").expect("stdout");
        out.flush().expect("stdout");
    }
}

#[tokio::test]
async fn kill9_keeps_acknowledged_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Process::new(std::env::current_exe().expect("test binary"))
        .args(["writer_process", "--exact", "--ignored", "--nocapture"])
        .env(DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn writer");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut acked = Vec::new();
    while acked.len() < ACKS_BEFORE_KILL {
        assert!(
            Instant::now() < deadline,
            "writer too slow: {} acks",
            acked.len()
        );
        let line = lines.next().expect("writer exited early").expect("read");
        if let Some(name) = line.strip_prefix("ack ") {
            acked.push(name.to_owned());
        }
    }
    child.kill().expect("SIGKILL writer");
    // Acks printed before the kill are still in the pipe: they count too.
    acked.extend(
        lines
            .map_while(Result::ok)
            .filter_map(|l| l.strip_prefix("ack ").map(str::to_owned)),
    );
    child.wait().expect("reap writer");

    let node = RaftNode::open(
        dir.path(),
        node_id_from_name("w"),
        "127.0.0.1:1".into(),
        endpoint(),
        Start::Bootstrap,
    )
    .await
    .expect("reopen after kill");
    let missing: Vec<&String> = node.read(|s| {
        acked
            .iter()
            .filter(|n| {
                !s.tenants
                    .apps
                    .contains_key(&AppName::new(n.as_str()).expect("name"))
            })
            .collect()
    });
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    assert!(node.read(|s| s.tenants.apps.len()) >= acked.len());
    node.write(Command::CreateApp(app("after-kill")))
        .await
        .expect("write after kill");
    node.shutdown().await.expect("shutdown");
}
