//! A three-voter Raft group in one process, each voter on its own loopback QUIC endpoint and sled
//! dir: joining, forwarded writes with read-your-writes, leader failover, restart catch-up, and
//! catch-up by snapshot.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use openraft::{Config, SnapshotPolicy};
use streamhub_cluster::raft::{
    default_config, node_id_from_name, MembershipError, NodeId, RaftNode, Start,
};
use streamhub_cluster::state::{ApiKey, Command, CommandResponse};
use streamhub_cluster::transport::pki::{create_ca, issue_node_cert, CaBundle};
use streamhub_cluster::transport::{kinds, Endpoint, NodeIdentity};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Short timeouts so elections and snapshots happen within a test's patience.
fn test_config() -> Config {
    Config {
        heartbeat_interval: 100,
        election_timeout_min: 700,
        election_timeout_max: 1400,
        install_snapshot_timeout: 3000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(50),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..default_config()
    }
}

struct Member {
    name: String,
    id: NodeId,
    dir: PathBuf,
    identity: NodeIdentity,
    addr: SocketAddr,
    endpoint: Endpoint,
    node: RaftNode,
}

impl Member {
    async fn open(ca: &CaBundle, root: &Path, name: &str, start: Start) -> Self {
        let (cert, key) = issue_node_cert(ca, name, "origin").unwrap();
        let identity = NodeIdentity::from_pem(ca.cert_pem.clone(), cert, key).unwrap();
        let endpoint = bind(&identity, "127.0.0.1:0".parse().unwrap()).await;
        let dir = root.join(name);
        Self::start(name, dir, identity, endpoint, start).await
    }

    async fn start(
        name: &str,
        dir: PathBuf,
        identity: NodeIdentity,
        endpoint: Endpoint,
        start: Start,
    ) -> Self {
        let addr = endpoint.local_addr();
        let id = node_id_from_name(name);
        let node = RaftNode::open_with_config(
            &dir,
            id,
            addr.to_string(),
            endpoint.clone(),
            start,
            test_config(),
        )
        .await
        .unwrap();
        Self {
            name: name.into(),
            id,
            dir,
            identity,
            addr,
            endpoint,
            node,
        }
    }

    /// Stops the node like a process exit; returns what a restart needs.
    async fn stop(self) -> (String, PathBuf, NodeIdentity, SocketAddr) {
        self.node.shutdown().await.unwrap();
        self.endpoint.close().await;
        (self.name, self.dir, self.identity, self.addr)
    }

    async fn restart(stopped: (String, PathBuf, NodeIdentity, SocketAddr)) -> Self {
        let (name, dir, identity, addr) = stopped;
        let endpoint = bind(&identity, addr).await;
        // A restart is a `Join` start: the state on disk wins anyway.
        Self::start(&name, dir, identity, endpoint, Start::Join).await
    }

    fn has_key(&self, id: &str) -> bool {
        self.node.read(|s| s.tenants.api_keys.contains_key(id))
    }
}

/// Binds, retrying while the previous socket on `addr` is still being released.
async fn bind(identity: &NodeIdentity, addr: SocketAddr) -> Endpoint {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Endpoint::bind(addr, identity, CancellationToken::new()) {
            Ok(ep) => return ep,
            Err(e) => assert!(Instant::now() < deadline, "cannot bind {addr}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `cond` every 20 ms until it holds, failing the test after `secs`.
async fn until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn key(id: &str) -> Command {
    Command::CreateApiKey(ApiKey {
        id: id.into(),
        name: format!("key {id}"),
        app: None,
        allow_ips: vec![],
        hash: format!("hash-{id}"),
        prefix: "sk_test".into(),
        created_at_ms: 0,
        role: None,
    })
}

/// Node 1 bootstraps; node 2 joins through node 1, node 3 through node 2 (forwarded).
async fn three_nodes(root: &Path) -> (CaBundle, Vec<Member>) {
    let ca = create_ca("test").unwrap();
    let n1 = Member::open(&ca, root, "n1", Start::Bootstrap).await;
    let n2 = Member::open(&ca, root, "n2", Start::Join).await;
    let n3 = Member::open(&ca, root, "n3", Start::Join).await;
    n1.node.add_voter(n2.id, n2.addr.to_string()).await.unwrap();
    n2.node.add_voter(n3.id, n3.addr.to_string()).await.unwrap();
    let members = vec![n1, n2, n3];
    let mut all: Vec<NodeId> = members.iter().map(|m| m.id).collect();
    all.sort_unstable();
    until(10, "every node sees three voters", || {
        members.iter().all(|m| {
            let mut voters = m.node.status().voters;
            voters.sort_unstable();
            voters == all
        })
    })
    .await;
    (ca, members)
}

fn leader_index(members: &[Member]) -> Option<usize> {
    members
        .iter()
        .position(|m| m.node.status().leader == Some(m.id))
}

/// The leader's index once there is one (an election can happen at any time on a loaded
/// machine: no test assumes which node leads).
async fn wait_leader(members: &[Member]) -> usize {
    until(15, "a leader", || leader_index(members).is_some()).await;
    leader_index(members).expect("a leader")
}

/// The indexes of the members that are not `leader`.
fn followers(members: &[Member], leader: usize) -> (usize, usize) {
    let f: Vec<usize> = (0..members.len()).filter(|i| *i != leader).collect();
    (f[0], f[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_forward_failover_and_restart_catch_up() {
    let root = tempfile::tempdir().unwrap();
    let (_ca, mut members) = three_nodes(root.path()).await;
    let leader = wait_leader(&members).await;
    let (f1, f2) = followers(&members, leader);
    let status = members[leader].node.status();
    assert_eq!(status.learners, Vec::<NodeId>::new());
    assert_eq!(status.nodes.len(), 3);
    assert_eq!(status.nodes[&members[2].id], members[2].addr.to_string());

    // A write on a follower is forwarded, and readable there at once.
    let follower = &members[f2];
    assert_eq!(
        follower.node.write(key("k1")).await.unwrap(),
        CommandResponse::Ok
    );
    assert!(follower.has_key("k1"), "read-your-writes on the follower");
    // The leader reports every follower's replication progress.
    until(5, "replication metrics", || {
        let status = members[leader].node.status();
        status.replication.values().all(|m| m.is_some())
    })
    .await;
    // (Only the leader knows them; a follower that just won an election would too.)
    if leader_index(&members) == Some(leader) {
        assert!(members[f1]
            .node
            .status()
            .replication
            .values()
            .all(Option::is_none));
    }

    // Same id at another address is refused, from any member.
    let err = members[f1]
        .node
        .add_voter(members[f2].id, "127.0.0.1:1".into())
        .await
        .unwrap_err();
    assert!(
        matches!(err, MembershipError::IdCollision { .. }),
        "{err:?}"
    );
    // The same id at the same address is a no-op.
    members[f1]
        .node
        .add_voter(members[f2].id, members[f2].addr.to_string())
        .await
        .unwrap();

    // The leader goes away: the survivors elect a new one and keep taking writes.
    let leader = wait_leader(&members).await;
    let old = members.remove(leader).stop().await;
    until(15, "a new leader among the survivors", || {
        leader_index(&members).is_some()
    })
    .await;
    for (i, m) in members.iter().enumerate() {
        let id = format!("after-failover-{i}");
        assert_eq!(m.node.write(key(&id)).await.unwrap(), CommandResponse::Ok);
        assert!(m.has_key(&id));
    }

    // The old leader restarts on its dir and catches up.
    let back = Member::restart(old).await;
    until(15, "the restarted node catches up", || {
        back.has_key("after-failover-0") && back.has_key("after-failover-1")
    })
    .await;
    assert!(back.has_key("k1"));
    // And it takes writes again (forwarded to the new leader).
    assert_eq!(
        back.node.write(key("k-back")).await.unwrap(),
        CommandResponse::Ok
    );
    assert!(back.has_key("k-back"));

    members.push(back);
    for m in members {
        m.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_purged_entries_catches_up_by_snapshot() {
    let root = tempfile::tempdir().unwrap();
    let (_ca, mut members) = three_nodes(root.path()).await;
    let leader = wait_leader(&members).await;
    let (_, lagger) = followers(&members, leader);
    // The two that stay are members[0] and members[1] after the lagger is taken out; writes go
    // through either (followers forward them).
    members[0].node.write(key("before")).await.unwrap();
    let n3_id = members[lagger].id;
    until(15, "the lagger has the first write", || {
        members[lagger].has_key("before")
    })
    .await;
    let lagging = members.remove(lagger);
    let lagging_last = lagging.node.status().last_log_index.unwrap();
    let stopped = lagging.stop().await;

    for i in 0..120 {
        members[0].node.write(key(&format!("k{i}"))).await.unwrap();
    }
    // Whichever of the two leads now purged its log past what the lagger has.
    until(20, "the leader purged what the lagger lacks", || {
        members.iter().any(|m| {
            let st = m.node.status();
            st.leader == Some(m.id) && st.purged.is_some_and(|p| p > lagging_last + 1)
        })
    })
    .await;
    let leader_purged = members
        .iter()
        .map(|m| m.node.status())
        .filter(|st| st.leader == Some(st.node_id))
        .find_map(|st| st.purged)
        .unwrap_or(lagging_last + 2);

    let back = Member::restart(stopped).await;
    assert_eq!(back.id, n3_id);
    until(30, "the lagger caught up", || back.has_key("k119")).await;
    let status = back.node.status();
    // Entries (lagging_last, leader_purged] existed nowhere but in a snapshot.
    assert!(
        status.snapshot.is_some_and(|s| s >= leader_purged),
        "n3 snapshot {:?}, leader purged {leader_purged}",
        status.snapshot
    );
    assert!(back.has_key("k0") && back.has_key("before"));

    members.push(back);
    for m in members {
        m.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_leaves_the_membership() {
    let root = tempfile::tempdir().unwrap();
    let (_ca, members) = three_nodes(root.path()).await;
    let n3 = members[2].id;
    // Removal is forwarded from a follower to the leader.
    members[1].node.remove_node(n3).await.unwrap();
    until(5, "n3 is gone from the membership", || {
        !members[0].node.status().nodes.contains_key(&n3)
    })
    .await;
    // Idempotent.
    members[0].node.remove_node(n3).await.unwrap();
    // Two voters still make a quorum.
    members[1].node.write(key("two")).await.unwrap();
    assert!(members[1].has_key("two"));
    for m in members {
        m.stop().await;
    }
}

/// A write that speaks for a node (a room claim) is refused when another origin forwards it,
/// taken when the node itself does; a read barrier on a follower sees every write acknowledged
/// before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_writes_speak_only_for_their_sender_and_barriers_are_fresh() {
    let root = tempfile::tempdir().unwrap();
    let ca = create_ca("test").unwrap();
    let n1 = Member::open(&ca, root.path(), "n1", Start::Bootstrap).await;
    let (cert, pem_key) = issue_node_cert(&ca, "origin-9", "origin").unwrap();
    let other = bind(
        &NodeIdentity::from_pem(ca.cert_pem.clone(), cert, pem_key).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let claim = |node: &str| Command::ClaimRoom {
        app: streamhub_shared::AppName::new("a").unwrap(),
        room: streamhub_shared::RoomName::new("r").unwrap(),
        node: node.into(),
        at_ms: 1,
        lease_ms: 10_000,
        protocol: None,
        publisher: None,
    };
    let send = |cmd: Command| {
        let other = other.clone();
        let addr = n1.addr;
        async move {
            let body = bytes::Bytes::from(serde_json::to_vec(&cmd).unwrap());
            let answer = other
                .request(
                    addr,
                    streamhub_cluster::transport::kinds::CLIENT_WRITE,
                    body,
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
            String::from_utf8(answer.to_vec()).unwrap()
        }
    };
    let refused = send(claim("n1")).await;
    assert!(refused.contains("Forbidden"), "{refused}");
    assert!(n1.node.read(|s| s.placements.rooms.is_empty()));
    let taken = send(claim("origin-9")).await;
    assert!(taken.contains("\"claimed\""), "{taken}");

    let n2 = Member::open(&ca, root.path(), "n2", Start::Join).await;
    n1.node.add_voter(n2.id, n2.addr.to_string()).await.unwrap();
    for i in 0..20 {
        n1.node.write(key(&format!("b{i}"))).await.unwrap();
        let follower = if n1.node.status().leader == Some(n1.id) {
            &n2
        } else {
            &n1
        };
        follower.node.barrier(Duration::from_secs(5)).await.unwrap();
        let id = format!("b{i}");
        assert!(
            follower.node.read(|s| s.tenants.api_keys.contains_key(&id)),
            "{id} not seen after the barrier"
        );
    }
    other.close().await;
}

/// Asks the node at `to` the pre-vote question from `from`; `Some(leaderAlive)` or `None` if
/// it could not be asked.
async fn leader_alive(from: &Endpoint, to: SocketAddr) -> Option<bool> {
    let body = bytes::Bytes::from_static(b"null");
    let answer = from
        .request(to, kinds::RAFT_PRE_VOTE, body, Duration::from_secs(2))
        .await
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&answer).ok()?;
    v["leaderAlive"].as_bool()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_vote_answers_whether_a_leader_is_heard_and_only_to_origins() {
    let root = tempfile::tempdir().unwrap();
    let (ca, mut members) = three_nodes(root.path()).await;
    wait_leader(&members).await;
    // A healthy group: the leader and both followers (heartbeats every 100 ms) hear a leader.
    let addrs: Vec<SocketAddr> = members.iter().map(|m| m.addr).collect();
    let asker = members[0].endpoint.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut answers = Vec::new();
        for a in &addrs {
            answers.push(leader_alive(&asker, *a).await);
        }
        if answers.iter().all(|a| *a == Some(true)) {
            break;
        }
        assert!(Instant::now() < deadline, "answers: {answers:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An edge may not ask (the question is for voters).
    let (cert, key) = issue_node_cert(&ca, "edge-1", "edge").unwrap();
    let edge_id = NodeIdentity::from_pem(ca.cert_pem.clone(), cert, key).unwrap();
    let edge = bind(&edge_id, "127.0.0.1:0".parse().unwrap()).await;
    let refused = edge
        .request(
            addrs[1],
            kinds::RAFT_PRE_VOTE,
            bytes::Bytes::from_static(b"null"),
            Duration::from_secs(2),
        )
        .await;
    assert!(refused.is_err(), "an edge got an answer: {refused:?}");
    edge.close().await;

    // The leader goes: a survivor stops hearing it (past the shortest election timeout)
    // before the survivors elect a new one, which they then hear.
    let leader = wait_leader(&members).await;
    members.remove(leader).stop().await;
    let survivor = members[0].addr;
    let asker = members[1].endpoint.clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    loop {
        let a = leader_alive(&asker, survivor).await;
        if seen.last() != Some(&a) {
            seen.push(a);
        }
        if seen.contains(&Some(false)) && a == Some(true) {
            break;
        }
        assert!(Instant::now() < deadline, "answers over time: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until(15, "a new leader among the survivors", || {
        leader_index(&members).is_some()
    })
    .await;
    for m in members {
        m.stop().await;
    }
}
