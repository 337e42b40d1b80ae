//! A cluster of real origin processes formed through the public join flow.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;

use crate::api::{names, Api};
use crate::node::{Join, Node, NodeConfig, HEALTHY_TIMEOUT};
use crate::poll::poll;
use crate::seed;
use crate::timeline::Timeline;

/// Lines of each node's log printed when a test fails.
pub const LOG_TAIL_LINES: usize = 40;

/// How long a node that must be refused is watched ([`Cluster::assert_refused`]).
pub const REFUSAL_WATCH: Duration = Duration::from_secs(15);

/// How long a cluster may take to agree on a leader.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// `n` origins: node 0 bootstraps, the others join it with a join token minted through the API.
pub struct Cluster {
    /// The nodes, in start order; `nodes[i]` is named `origin-<i+1>`.
    pub nodes: Vec<Node>,
    /// With [`Cluster::start_in_netns`]: every node on its own host of this network (dropped
    /// after the nodes, which are killed first).
    pub netns: Option<Arc<crate::netns::Network>>,
    hosts: u8,
    /// The seed of this run.
    pub seed: u64,
    /// Randomness derived from the seed (which node to stop, garbage bytes...).
    pub rng: StdRng,
    timeline: Arc<Timeline>,
    env: Vec<(String, String)>,
    /// Every log file of a node made through this cluster (printed on failure).
    logs: Vec<(String, PathBuf)>,
    root: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Starts `n` origins and waits until node 0 lists `n` voters and every node is healthy.
    pub async fn start(n: usize, seed: u64) -> Cluster {
        Cluster::start_with_env(n, seed, &[]).await
    }

    /// As [`Cluster::start`], but every node (origins, and edges started later) runs in its
    /// own network namespace on one bridge: host `i+1` is `nodes[i]` ([`Cluster::host_of`]).
    pub async fn start_in_netns(n: usize, seed: u64) -> Cluster {
        let net = crate::netns::Network::new().expect("a bridge (root and iproute2 needed)");
        Cluster::make(n, seed, &[], Some(net)).await
    }

    /// As [`Cluster::start_in_netns`] on a network made beforehand (e.g. to start a proxy on
    /// its bridge first), with extra environment for every node.
    pub async fn start_on_network(
        n: usize,
        seed: u64,
        env: &[(&str, &str)],
        net: Arc<crate::netns::Network>,
    ) -> Cluster {
        Cluster::make(n, seed, env, Some(net)).await
    }

    /// The host number of node `i` in the cluster's network.
    pub fn host_of(&self, i: usize) -> u8 {
        (i + 1) as u8
    }

    /// As [`Cluster::start`], with extra environment for every node.
    pub async fn start_with_env(n: usize, seed: u64, env: &[(&str, &str)]) -> Cluster {
        Cluster::make(n, seed, env, None).await
    }

    async fn make(
        n: usize,
        seed: u64,
        env: &[(&str, &str)],
        netns: Option<Arc<crate::netns::Network>>,
    ) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("streamhub-chaos-")
            .tempdir()
            .expect("temp dir");
        let mut c = Cluster {
            nodes: Vec::new(),
            netns,
            hosts: 0,
            seed,
            rng: seed::rng(seed),
            timeline: Arc::new(Timeline::new()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            logs: Vec::new(),
            root: Some(root),
        };
        c.note(format!("seed={seed}; forming a cluster of {n} origins"));
        c.form(n).await;
        c
    }

    async fn form(&mut self, n: usize) {
        let first = self.config("origin-1", None);
        let node = Node::start(first, self.timeline.clone())
            .await
            .expect("bootstrap origin-1");
        self.nodes.push(node);
        let admin = self.nodes[0]
            .admin()
            .await
            .expect("admin login on origin-1");
        // Joiners join one at a time, as an operator would; each waits to be caught up.
        for i in 2..=n {
            let token = admin.join_token("origin").await.expect("mint a join token");
            let join = Join {
                url: self.nodes[0].url(""),
                token,
            };
            let cfg = self.config(&format!("origin-{i}"), Some(join));
            let node = Node::start(cfg, self.timeline.clone())
                .await
                .unwrap_or_else(|e| panic!("origin-{i} joins: {e:#}"));
            self.nodes.push(node);
        }
        let all: Vec<usize> = (0..n).collect();
        self.wait_voters(0, n, Duration::from_secs(60)).await;
        self.wait_all_healthy(&all).await;
        self.note(format!("cluster of {n} formed"));
    }

    /// A config for a new node named `name` under this cluster's temp dir, with the cluster's
    /// environment; its log is printed if the test fails.
    pub fn config(&mut self, name: &str, join: Option<Join>) -> NodeConfig {
        let root = self.root.as_ref().expect("cluster root").path();
        let mut cfg = NodeConfig::new(name, root);
        if cfg.data_dir.exists() {
            // A second node with the same name (an impostor) gets its own dir.
            let n = self.logs.len();
            cfg.data_dir = root.join(format!("{name}.{n}")).join("data");
            cfg.log = root.join(format!("{name}.{n}")).join("node.log");
        }
        cfg.join = join;
        cfg.env = self.env.clone();
        if let Some(net) = &self.netns {
            self.hosts += 1;
            let host = self.hosts;
            let ns = net
                .add_host(host)
                .unwrap_or_else(|e| panic!("namespace of {name}: {e:#}"));
            let ip = std::net::IpAddr::V4(net.ip(host));
            cfg.netns = Some(ns);
            cfg.http = (ip, 3020).into();
            cfg.rtmp = (ip, 1935).into();
            cfg.cluster = (ip, 4433).into();
            cfg.webrtc = (ip, 7882).into();
        }
        self.logs.push((name.to_string(), cfg.log.clone()));
        cfg
    }

    /// Starts an edge named `name` in `region` that joins through origin `via` (with `args`
    /// added), waits until it is healthy and returns it. Its log is printed if the test fails.
    pub async fn start_edge(
        &mut self,
        name: &str,
        region: &str,
        via: usize,
        args: &[&str],
    ) -> Node {
        let join = self.join_via_as(via, "edge").await;
        let mut cfg = self.config(name, Some(join));
        cfg.role = crate::node::Role::Edge;
        cfg.region = region.to_string();
        cfg.args = args.iter().map(|a| a.to_string()).collect();
        Node::start(cfg, self.timeline.clone())
            .await
            .unwrap_or_else(|e| panic!("edge {name} starts: {e:#}"))
    }

    /// Starts a node outside `nodes` (e.g. one that must be refused) without waiting for it.
    pub fn spawn_extra(&mut self, name: &str, join: Option<Join>) -> Node {
        let cfg = self.config(name, join);
        Node::spawn(cfg, self.timeline.clone()).expect("spawn extra node")
    }

    /// Starts an edge outside `nodes` (e.g. one that must be refused) without waiting for it.
    pub fn spawn_extra_edge(&mut self, name: &str, join: Option<Join>) -> Node {
        let mut cfg = self.config(name, join);
        cfg.role = crate::node::Role::Edge;
        Node::spawn(cfg, self.timeline.clone()).expect("spawn extra edge")
    }

    /// Watches a node that must not become a member: it either exits non-zero, or runs without
    /// ever answering `/healthz` 200 for [`REFUSAL_WATCH`] (then it is killed). Returns how it
    /// was refused, and records it.
    pub async fn assert_refused(&self, node: &mut Node) -> String {
        let health = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("http client");
        let start = std::time::Instant::now();
        let how = loop {
            if let Some(status) = node.exit_status() {
                assert!(
                    !status.success(),
                    "{} exited with success instead of being refused\n{}",
                    node.name(),
                    node.log_tail(LOG_TAIL_LINES)
                );
                break format!("exited ({status})");
            }
            if start.elapsed() >= REFUSAL_WATCH {
                node.kill9();
                break format!("never healthy in {REFUSAL_WATCH:?}");
            }
            if let Ok(r) = health.get(node.url("/healthz")).send().await {
                assert!(
                    !r.status().is_success(),
                    "{} became healthy although it must be refused\n{}",
                    node.name(),
                    node.log_tail(LOG_TAIL_LINES)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        self.note(format!("{} refused: {how}", node.name()));
        how
    }

    /// Records a test event in the fault timeline.
    pub fn note(&self, event: impl Into<String>) {
        self.timeline.record(event);
    }

    /// The shared timeline (for tasks that record events).
    pub fn timeline(&self) -> Arc<Timeline> {
        self.timeline.clone()
    }

    /// A join descriptor for a new origin: a fresh single-use token minted through node `via`.
    pub async fn join_via(&self, via: usize) -> Join {
        self.join_via_as(via, "origin").await
    }

    /// A join descriptor for a new node of `role`, minted through node `via`.
    pub async fn join_via_as(&self, via: usize, role: &str) -> Join {
        let admin = self.nodes[via].admin().await.expect("admin login");
        Join {
            url: self.nodes[via].url(""),
            token: admin.join_token(role).await.expect("mint a join token"),
        }
    }

    /// Admin API client of node `i`.
    pub async fn admin(&self, i: usize) -> Api {
        self.nodes[i]
            .admin()
            .await
            .unwrap_or_else(|e| panic!("admin login on {}: {e:#}", self.nodes[i].name()))
    }

    /// Index of the node named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name() == name)
    }

    /// Index of the current leader: a running node that says it is the leader and that some
    /// running node names as leader. Polls until there is one.
    pub async fn leader(&mut self) -> usize {
        let serving: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_serving())
            .collect();
        let names: Vec<String> = self.nodes.iter().map(|n| n.name().to_string()).collect();
        let mut apis: Vec<(usize, Option<Api>)> = serving.iter().map(|&i| (i, None)).collect();
        let start = std::time::Instant::now();
        loop {
            // Log in lazily: a node may not take logins yet while it restarts.
            for (i, api) in apis.iter_mut() {
                if api.is_none() {
                    *api = self.nodes[*i].admin().await.ok();
                }
            }
            let ready: Vec<(usize, Api)> = apis
                .iter()
                .filter_map(|(i, a)| a.clone().map(|a| (*i, a)))
                .collect();
            match find_leader(&ready, &names).await {
                Ok(leader) => {
                    self.note(format!("leader is {}", names[leader]));
                    return leader;
                }
                Err(seen) if start.elapsed() >= LEADER_TIMEOUT => {
                    panic!("no leader after {LEADER_TIMEOUT:?}: {seen}")
                }
                Err(_) => tokio::time::sleep(crate::poll::POLL_INTERVAL).await,
            }
        }
    }

    /// Waits until `GET /cluster` on node `via` lists `n` voters.
    pub async fn wait_voters(&self, via: usize, n: usize, timeout: Duration) {
        let api = self.admin(via).await;
        let what = format!("{n} voters on {}", self.nodes[via].name());
        poll(&what, timeout, || {
            let api = api.clone();
            async move {
                let s = api.cluster().await.map_err(|e| format!("{e:#}"))?;
                let voters = names(&s, "voters");
                (voters.len() == n)
                    .then_some(())
                    .ok_or_else(|| s.to_string())
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Waits until `/healthz` of each node in `which` answers 200.
    pub async fn wait_all_healthy(&mut self, which: &[usize]) {
        for &i in which {
            self.nodes[i]
                .wait_healthy(HEALTHY_TIMEOUT)
                .await
                .unwrap_or_else(|e| panic!("{e:#}"));
        }
    }

    /// Waits until node `i` lists every app of `expected` in `GET /apps`; if the deadline passes,
    /// returns what its latest answer lacked (or every app if it never answered).
    pub async fn wait_apps(
        &self,
        i: usize,
        expected: &BTreeSet<String>,
        timeout: Duration,
    ) -> Result<(), BTreeSet<String>> {
        let api = self.admin(i).await;
        let start = std::time::Instant::now();
        let mut missing = expected.clone();
        loop {
            if let Ok(have) = api.app_names().await {
                missing = expected.difference(&have).cloned().collect();
                if missing.is_empty() {
                    return Ok(());
                }
            }
            if start.elapsed() >= timeout {
                return Err(missing);
            }
            tokio::time::sleep(crate::poll::POLL_INTERVAL).await;
        }
    }
}

async fn find_leader(apis: &[(usize, Api)], names: &[String]) -> Result<usize, String> {
    let mut seen = Vec::new();
    for (i, api) in apis {
        let s = match api.cluster().await {
            Ok(s) => s,
            Err(e) => {
                seen.push(format!("{}: {e:#}", names[*i]));
                continue;
            }
        };
        let leader = s["leader"].as_str().unwrap_or("");
        seen.push(format!(
            "{} says leader={leader:?} term={}",
            names[*i], s["term"]
        ));
        let Some(l) = names.iter().position(|n| n == leader) else {
            continue;
        };
        let Some((_, lapi)) = apis.iter().find(|(j, _)| *j == l) else {
            continue;
        };
        if let Ok(ls) = lapi.cluster().await {
            if ls["leader"].as_str() == Some(leader) {
                return Ok(l);
            }
        }
    }
    Err(seen.join("; "))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        eprintln!(
            "\n======== chaos test failed: seed={} (replay with CHAOS_SEED={}) ========",
            self.seed, self.seed
        );
        eprintln!("fault timeline:\n{}", self.timeline.render());
        for (name, log) in &self.logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!(
                "---- last {} lines of {name} ({}) ----",
                tail.len(),
                log.display()
            );
            eprintln!("{}", tail.join("\n"));
        }
        if let Some(root) = self.root.take() {
            let kept = root.keep();
            eprintln!("data dirs and logs kept in {}", kept.display());
        }
    }
}
