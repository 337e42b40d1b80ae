//! One real `streamhub-origin` process: its ports, data dir and log file, and the faults a test
//! can inject into it.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::api::Api;
use crate::binary::{edge_binary, origin_binary};
use crate::poll::poll;
use crate::ports::{free_tcp, free_udp};
use crate::timeline::Timeline;
use crate::{ADMIN_PASS, ADMIN_USER};

/// How long a node may take to answer `/healthz` 200 after it is started.
pub const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a SIGTERM'd node may take to exit before it is killed.
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a joining node joins: the HTTP base URL of a member and a join token.
#[derive(Debug, Clone)]
pub struct Join {
    /// HTTP base URL of any origin of the cluster.
    pub url: String,
    /// Join token from `POST /cluster/join-tokens`.
    pub token: String,
}

/// Which binary a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `streamhub-origin`.
    Origin,
    /// `streamhub-edge`.
    Edge,
}

/// Everything a node is started with; kept so the node restarts on the same ports and dir.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Origin or edge.
    pub role: Role,
    /// `--region`.
    pub region: String,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// `--node-id`.
    pub name: String,
    /// `--http`.
    pub http: SocketAddr,
    /// `--rtmp`.
    pub rtmp: SocketAddr,
    /// `--cluster` (UDP).
    pub cluster: SocketAddr,
    /// `--webrtc-udp`: the WebRTC media port.
    pub webrtc: SocketAddr,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// stdout and stderr of every run of the node, appended.
    pub log: PathBuf,
    /// `--join`/`--join-token`, or none to bootstrap (or restart as the member it was).
    pub join: Option<Join>,
    /// Extra environment (e.g. `STREAMHUB_RAFT_SNAPSHOT_LOGS`).
    pub env: Vec<(String, String)>,
    /// The network namespace the node runs in (see [`crate::netns`]), if not the test's own.
    pub netns: Option<String>,
}

impl NodeConfig {
    /// A node named `name` on fresh loopback ports, with its data dir and log under `root`.
    pub fn new(name: &str, root: &std::path::Path) -> NodeConfig {
        NodeConfig {
            role: Role::Origin,
            region: "local".into(),
            args: Vec::new(),
            name: name.to_string(),
            http: free_tcp(),
            rtmp: free_tcp(),
            cluster: free_udp(),
            webrtc: free_udp(),
            data_dir: root.join(name).join("data"),
            log: root.join(name).join("node.log"),
            join: None,
            env: Vec::new(),
            netns: None,
        }
    }
}

/// A running (or stopped) origin process.
pub struct Node {
    cfg: NodeConfig,
    child: Option<Child>,
    /// Length of the log file when the current run started.
    log_offset: u64,
    runs: u32,
    paused: bool,
    timeline: Arc<Timeline>,
}

impl Node {
    /// Starts the process and returns at once (see [`Node::wait_healthy`]).
    pub fn spawn(cfg: NodeConfig, timeline: Arc<Timeline>) -> anyhow::Result<Node> {
        let mut node = Node {
            cfg,
            child: None,
            log_offset: 0,
            runs: 0,
            paused: false,
            timeline,
        };
        node.launch()?;
        Ok(node)
    }

    /// Starts the process and waits until `/healthz` answers 200.
    pub async fn start(cfg: NodeConfig, timeline: Arc<Timeline>) -> anyhow::Result<Node> {
        let mut node = Node::spawn(cfg, timeline)?;
        node.wait_healthy(HEALTHY_TIMEOUT).await?;
        Ok(node)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "{} is already running", self.cfg.name);
        std::fs::create_dir_all(&self.cfg.data_dir)?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.cfg.log)
            .with_context(|| format!("open {}", self.cfg.log.display()))?;
        self.log_offset = log.metadata()?.len();
        self.runs += 1;
        let at = self.timeline.elapsed().as_secs_f64();
        writeln!(
            log,
            "==== chaos harness: run #{} at +{at:.3}s ====",
            self.runs
        )?;
        let child = self
            .command(log.try_clone()?, log)
            .spawn()
            .with_context(|| format!("spawn {}", self.binary().display()))?;
        let how = match &self.cfg.join {
            Some(j) if self.runs == 1 => format!("joining via {}", j.url),
            Some(_) => "with --join (ignored if its data dir has state)".into(),
            None => "without --join".into(),
        };
        self.timeline.record(format!(
            "{} started (run #{}, pid {}, {how}, http {}, cluster udp {})",
            self.cfg.name,
            self.runs,
            child.id(),
            self.cfg.http,
            self.cfg.cluster
        ));
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    fn binary(&self) -> std::path::PathBuf {
        match self.cfg.role {
            Role::Origin => origin_binary(),
            Role::Edge => edge_binary(),
        }
    }

    fn command(&self, out: File, err: File) -> Command {
        let c = &self.cfg;
        let mut cmd = match &c.netns {
            // `ip netns exec` execs the node in place: the child's pid is the node's.
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(self.binary());
                cmd
            }
            None => Command::new(self.binary()),
        };
        cmd.arg("--data-dir")
            .arg(&c.data_dir)
            .args(["--http", &c.http.to_string()])
            .args(["--cluster", &c.cluster.to_string()])
            .args(["--webrtc-udp", &c.webrtc.to_string()])
            .args(["--node-id", &c.name])
            .args(["--region", &c.region])
            .args(&c.args);
        if !c.args.iter().any(|a| a == "--public-url") {
            cmd.args(["--public-url", &format!("http://{}", c.http)]);
        }
        if c.role == Role::Origin {
            cmd.args(["--rtmp", &c.rtmp.to_string()]);
        }
        if let Some(j) = &c.join {
            // The token goes by environment, as the docs advise (flags show in `ps`).
            cmd.args(["--join", &j.url])
                .env("STREAMHUB_JOIN_TOKEN", &j.token);
        }
        let log = std::env::var("CHAOS_LOG").unwrap_or_else(|_| {
            "info,openraft=warn,sled=warn,rtc_dtls=error,streamhub_edge=debug".into()
        });
        cmd.env("ADMIN_USER", ADMIN_USER)
            .env("NO_COLOR", "1")
            .env("ADMIN_PASS", ADMIN_PASS)
            .env("STREAMHUB_LOG", log)
            .envs(c.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        cmd
    }

    /// Waits until `/healthz` answers 200; fails at once if the process exits first.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let url = self.url("/healthz");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let start = Instant::now();
        let what = format!("{} /healthz 200", self.cfg.name);
        let res = poll(&what, timeout, || {
            let exited = self.exit_status();
            let (client, url) = (client.clone(), url.clone());
            async move {
                if let Some(status) = exited {
                    return Ok(Err(format!("process exited ({status})")));
                }
                match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => Ok(Ok(())),
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(format!("{e}")),
                }
            }
        })
        .await?;
        res.map_err(|e| anyhow::anyhow!("{what}: {e}\n{}", self.log_tail(40)))?;
        self.timeline.record(format!(
            "{} healthy after {} ms",
            self.cfg.name,
            start.elapsed().as_millis()
        ));
        Ok(())
    }

    /// The exit status if the process has exited (None while it runs or was never started).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// True while the process exists and is not stopped with SIGSTOP.
    pub fn is_serving(&mut self) -> bool {
        self.child.is_some() && !self.paused && self.exit_status().is_none()
    }

    /// kill -9 (no-op if not running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            self.timeline
                .record(format!("{} killed (SIGKILL)", self.cfg.name));
        }
        self.paused = false;
    }

    /// SIGSTOP: the process freezes but keeps its sockets (a hung node).
    pub fn sigstop(&mut self) {
        self.signal("STOP");
        self.paused = true;
    }

    /// SIGCONT after [`Node::sigstop`].
    pub fn sigcont(&mut self) {
        self.signal("CONT");
        self.paused = false;
    }

    fn signal(&self, sig: &str) {
        let Some(c) = &self.child else {
            panic!("{}: SIG{sig} to a node that is not running", self.cfg.name)
        };
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &c.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {} failed", c.id());
        self.timeline.record(format!("{} SIG{sig}", self.cfg.name));
    }

    /// Sends SIGTERM without waiting.
    pub fn send_sigterm(&mut self) {
        if self.paused {
            self.sigcont();
        }
        if self.child.is_some() {
            self.signal("TERM");
        }
    }

    /// SIGTERM and wait for the exit (SIGKILL after [`TERMINATE_TIMEOUT`]); returns the exit
    /// status, or None if it had to be killed.
    pub async fn terminate(&mut self) -> Option<ExitStatus> {
        self.send_sigterm();
        self.wait_exit(TERMINATE_TIMEOUT).await
    }

    /// Waits for the process to exit; kills it (and returns None) after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.exit_status() {
                self.child = None;
                self.timeline
                    .record(format!("{} exited ({status})", self.cfg.name));
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.timeline
            .record(format!("{} did not exit within {timeout:?}", self.cfg.name));
        self.kill9();
        None
    }

    /// Starts the process again on the same data dir and ports, waits for `/healthz`.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.respawn()?;
        self.wait_healthy(HEALTHY_TIMEOUT).await
    }

    /// Starts the process again on the same data dir and ports without waiting.
    pub fn respawn(&mut self) -> anyhow::Result<()> {
        if self.exit_status().is_some() {
            self.child = None;
        }
        self.launch()
    }

    /// Kills the node, deletes its data dir and starts it again (joining with `join`, or
    /// bootstrapping if None), then waits for `/healthz`.
    pub async fn wipe_and_restart(&mut self, join: Option<Join>) -> anyhow::Result<()> {
        self.kill9();
        std::fs::remove_dir_all(&self.cfg.data_dir)?;
        self.timeline
            .record(format!("{} data dir wiped", self.cfg.name));
        self.cfg.join = join;
        self.restart().await
    }

    /// `http://<http addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.cfg.http)
    }

    /// `rtmp://<rtmp addr>/live/<key>`.
    pub fn rtmp_url(&self, stream_key: &str) -> String {
        format!("rtmp://{}/live/{stream_key}", self.cfg.rtmp)
    }

    /// Text of `GET /metrics`, and the value of the sample named exactly `series` in it
    /// (e.g. `streamhub_relay_subscribed_total` or `x_total{peer="edge-1"}`).
    pub async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        let text = reqwest::get(self.url("/metrics")).await?.text().await?;
        text.lines()
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series)
                    .then(|| value.parse::<f64>().ok())
                    .flatten()
            })
            .with_context(|| format!("{series} not in /metrics of {}", self.cfg.name))
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `--node-id`.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The config the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// An unauthenticated API client.
    pub fn api(&self) -> Api {
        Api::new(&self.url(""))
    }

    /// An API client logged in as the admin on this node.
    pub async fn admin(&self) -> anyhow::Result<Api> {
        Api::login(&self.url(""), ADMIN_USER, ADMIN_PASS).await
    }

    /// The last `n` lines of the node's log (all runs).
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.cfg.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The log of the current (latest) run only.
    pub fn log_of_current_run(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.cfg.log) {
            if f.seek(SeekFrom::Start(self.log_offset)).is_ok() {
                let _ = f.read_to_string(&mut text);
            }
        }
        text
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
