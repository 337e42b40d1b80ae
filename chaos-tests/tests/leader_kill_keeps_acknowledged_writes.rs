//! kill -9 of the Raft leader under concurrent writes loses no acknowledged write, and reads stay
//! consistent while the cluster fails over and the killed node rejoins.
//!
//! Four writer tasks create apps through the three origins in turn and record every write that
//! was acknowledged (201) with the node that acknowledged it and when. Three reader tasks read
//! `GET /apps` on the origins in turn. The checker asserts, for every successful read of node X by
//! reader R that started at time t:
//!
//! 1. monotonic reads: the set of apps is a superset of the set R's previous read of X returned
//!    (apps are never deleted in this test, and a node's applied state only moves forward, also
//!    across its own kill and restart);
//! 2. read-your-writes: every app acknowledged by X before t is in the read (the API contract
//!    says the node that acknowledged a write sees it).
//!
//! Readers read a node only while the harness considers it up (from just before its kill until
//! its restart answers `/healthz` 200); a read that fails is not a read. At the end, every
//! acknowledged app must be present on every node: 0 acknowledged writes lost.
//!
//! Printed: `leader_kill_to_first_write_ms` (from the kill to the acknowledgement of the first
//! write that was sent after the kill) and counts of writes and reads.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streamhub_chaos_tests::{chaos_seed, poll, Api, Cluster};

const NODES: usize = 3;
const WRITERS: usize = 4;
const READERS: usize = 3;
/// Writes acknowledged before the leader is killed.
const WARMUP_ACKS: usize = 150;
/// Writes acknowledged after the kill before the killed node is restarted.
const ACKS_WHILE_DOWN: usize = 100;
/// Writes acknowledged by the restarted node before the writers stop.
const ACKS_BY_RESTARTED: usize = 30;
const PHASE_TIMEOUT: Duration = Duration::from_secs(60);
/// Liveness bound: a new leader takes writes this soon after the kill.
const FAILOVER_BOUND: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct Ack {
    name: String,
    node: usize,
    sent: Instant,
    at: Instant,
}

/// What the writers, readers and the test share. Each Mutex is held only for a push or a copy,
/// never across an `.await`.
struct Run {
    apis: Mutex<Vec<Api>>,
    up: [AtomicBool; NODES],
    acks: Mutex<Vec<Ack>>,
    violations: Mutex<Vec<String>>,
    stop_writers: AtomicBool,
    stop_readers: AtomicBool,
    reads: AtomicU64,
    failed_writes: AtomicU64,
}

impl Run {
    fn api(&self, node: usize) -> Api {
        self.apis.lock().unwrap()[node].clone()
    }

    fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap().clone()
    }

    fn count_acks(&self, f: impl Fn(&Ack) -> bool) -> usize {
        self.acks.lock().unwrap().iter().filter(|a| f(a)).count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_keeps_acknowledged_writes() {
    let seed = chaos_seed();
    let mut c = Cluster::start(NODES, seed).await;
    let mut apis = Vec::new();
    for i in 0..NODES {
        apis.push(c.admin(i).await);
    }
    let run = Arc::new(Run {
        apis: Mutex::new(apis),
        up: std::array::from_fn(|_| AtomicBool::new(true)),
        acks: Mutex::new(Vec::new()),
        violations: Mutex::new(Vec::new()),
        stop_writers: AtomicBool::new(false),
        stop_readers: AtomicBool::new(false),
        reads: AtomicU64::new(0),
        failed_writes: AtomicU64::new(0),
    });
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(run.clone(), w)))
        .collect();
    let readers: Vec<_> = (0..READERS)
        .map(|r| tokio::spawn(reader(run.clone(), r)))
        .collect();

    wait_acks(&c, &run, "warm-up writes", |_| true, WARMUP_ACKS).await;
    let old = c.leader().await;
    run.up[old].store(false, Ordering::SeqCst);
    let kill_at = Instant::now();
    c.nodes[old].kill9();

    let first = wait_acks(
        &c,
        &run,
        "a write sent after the kill",
        |a| a.sent >= kill_at,
        1,
    )
    .await;
    let failover = first.iter().map(|a| a.at - kill_at).min().unwrap();
    println!("leader_kill_to_first_write_ms={}", failover.as_millis());
    c.note(format!(
        "first write after the kill acknowledged after {} ms",
        failover.as_millis()
    ));
    assert!(
        failover < FAILOVER_BOUND,
        "writes resumed only after {failover:?}"
    );
    let new = c.leader().await;
    assert_ne!(new, old, "the killed node is still reported as leader");
    wait_acks(
        &c,
        &run,
        "writes while down",
        |a| a.sent >= kill_at,
        ACKS_WHILE_DOWN,
    )
    .await;

    c.nodes[old]
        .restart()
        .await
        .expect("restart the killed leader");
    run.apis.lock().unwrap()[old] = c.admin(old).await;
    run.up[old].store(true, Ordering::SeqCst);
    c.note(format!(
        "{} back, readers include it again",
        c.nodes[old].name()
    ));
    let restarted_at = Instant::now();
    wait_acks(
        &c,
        &run,
        "writes through the restarted node",
        |a| a.node == old && a.sent >= restarted_at,
        ACKS_BY_RESTARTED,
    )
    .await;

    run.stop_writers.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer task");
    }
    // One more round of reads after the last acknowledgement, then stop the readers.
    let reads_now = run.reads.load(Ordering::SeqCst);
    poll("a final round of reads", PHASE_TIMEOUT, || {
        let n = run.reads.load(Ordering::SeqCst);
        async move {
            (n >= reads_now + 2 * NODES as u64)
                .then_some(())
                .ok_or(n.to_string())
        }
    })
    .await
    .unwrap();
    run.stop_readers.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.expect("reader task");
    }
    c.note("writers and readers stopped");

    let acked: BTreeSet<String> = run.acks().into_iter().map(|a| a.name).collect();
    println!(
        "acknowledged_writes={} failed_or_unknown_writes={} checked_reads={}",
        acked.len(),
        run.failed_writes.load(Ordering::SeqCst),
        run.reads.load(Ordering::SeqCst)
    );
    let violations = run.violations.lock().unwrap().clone();
    assert!(
        violations.is_empty(),
        "{} read violations:\n{}",
        violations.len(),
        violations
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut lost = HashMap::new();
    for i in 0..NODES {
        if let Err(missing) = c.wait_apps(i, &acked, PHASE_TIMEOUT).await {
            lost.insert(c.nodes[i].name().to_string(), missing);
        }
    }
    assert!(
        lost.is_empty(),
        "acknowledged writes lost (of {}): {lost:?}",
        acked.len()
    );
    c.wait_voters(new, NODES, PHASE_TIMEOUT).await;
    c.note("0 acknowledged writes lost on every node");
}

/// Waits until at least `n` acknowledgements match `f`; returns those.
async fn wait_acks(
    c: &Cluster,
    run: &Run,
    what: &str,
    f: impl Fn(&Ack) -> bool,
    n: usize,
) -> Vec<Ack> {
    let got = poll(what, PHASE_TIMEOUT, || {
        let acks: Vec<Ack> = run.acks().into_iter().filter(|a| f(a)).collect();
        async move {
            if acks.len() >= n {
                Ok(acks)
            } else {
                Err(format!("{} of {n}", acks.len()))
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    c.note(format!(
        "{what}: {} acknowledged (total {})",
        got.len(),
        run.count_acks(|_| true)
    ));
    got
}

/// Creates `w<w>-<i>` through origin `(w + i) % NODES` until told to stop; records each 201.
async fn writer(run: Arc<Run>, w: usize) {
    let mut i = 0usize;
    while !run.stop_writers.load(Ordering::SeqCst) {
        i += 1;
        let node = (w + i) % NODES;
        let name = format!("w{w}-{i}");
        let api = run.api(node);
        let sent = Instant::now();
        match api.create_app(&name).await {
            Ok(r) if r.status == 201 => {
                let at = Instant::now();
                run.acks.lock().unwrap().push(Ack {
                    name,
                    node,
                    sent,
                    at,
                });
            }
            // Refused, 503 while there is no leader, or timed out: not acknowledged (it may or
            // may not exist; the checker does not care about it).
            _ => {
                run.failed_writes.fetch_add(1, Ordering::SeqCst);
                // Pace retries so a down node does not turn this loop into a busy spin.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Reads `GET /apps` on the origins in turn and checks monotonic reads and read-your-writes.
async fn reader(run: Arc<Run>, r: usize) {
    let mut last: [Option<BTreeSet<String>>; NODES] = Default::default();
    let mut k = r;
    while !run.stop_readers.load(Ordering::SeqCst) {
        k += 1;
        let node = k % NODES;
        if !run.up[node].load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
            continue;
        }
        let api = run.api(node);
        let started = Instant::now();
        let Ok(seen) = api.app_names().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        run.reads.fetch_add(1, Ordering::SeqCst);
        let mut bad = Vec::new();
        if let Some(prev) = &last[node] {
            let gone: Vec<&String> = prev.difference(&seen).take(5).collect();
            if !gone.is_empty() {
                bad.push(format!(
                    "reader {r}, node {node}: read shrank by {} apps since the previous read, e.g. {gone:?}",
                    prev.len() - prev.intersection(&seen).count()
                ));
            }
        }
        let unseen: Vec<String> = run
            .acks()
            .into_iter()
            .filter(|a| a.node == node && a.at < started && !seen.contains(&a.name))
            .map(|a| a.name)
            .collect();
        if !unseen.is_empty() {
            bad.push(format!(
                "reader {r}, node {node}: {} apps acknowledged by this node before the read are missing, e.g. {:?}",
                unseen.len(),
                &unseen[..unseen.len().min(5)]
            ));
        }
        if !bad.is_empty() {
            run.violations.lock().unwrap().extend(bad);
        }
        last[node] = Some(seen);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}
