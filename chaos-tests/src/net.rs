//! Network faults between local nodes, injected from outside them with iptables (the run is
//! root, as CI is). Every node listens on 127.0.0.1, so a node's cluster traffic is told apart by
//! its UDP port: isolating that port in both directions is a partition of that node from every
//! other node (and every edge), and a random-drop rule on it is packet loss. Rules are removed
//! when the guard is dropped, so a failing test leaves no rule behind.

use std::process::Command;
use std::sync::Arc;

use crate::timeline::Timeline;

/// iptables rules that stay while this guard lives.
pub struct Rules {
    rules: Vec<Vec<String>>,
    what: String,
    timeline: Arc<Timeline>,
}

fn iptables(args: &[String]) -> anyhow::Result<()> {
    let status = Command::new("iptables")
        .args(args)
        .status()
        .map_err(|e| anyhow::anyhow!("iptables (apt-get install iptables; run as root): {e}"))?;
    anyhow::ensure!(status.success(), "iptables {args:?} failed ({status})");
    Ok(())
}

fn rule(direction: &str, port: u16, extra: &[&str]) -> Vec<String> {
    let mut r: Vec<String> = [
        "INPUT",
        "-i",
        "lo",
        "-p",
        "udp",
        direction,
        &port.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    r.extend(extra.iter().map(|s| s.to_string()));
    r.extend(["-j", "DROP"].iter().map(|s| s.to_string()));
    r
}

impl Rules {
    fn install(
        rules: Vec<Vec<String>>,
        what: String,
        timeline: Arc<Timeline>,
    ) -> anyhow::Result<Rules> {
        for r in &rules {
            let mut args = vec!["-I".to_string()];
            args.extend(r.iter().cloned());
            iptables(&args)?;
        }
        timeline.record(format!("network: {what}"));
        Ok(Rules {
            rules,
            what,
            timeline,
        })
    }

    /// Drops every UDP packet to or from `port` (a node's cluster endpoint): that node is cut off.
    pub fn isolate(port: u16, timeline: Arc<Timeline>) -> anyhow::Result<Rules> {
        let rules = vec![rule("--dport", port, &[]), rule("--sport", port, &[])];
        Rules::install(rules, format!("udp port {port} isolated"), timeline)
    }

    /// Drops each UDP packet to or from `port` with probability `p`.
    pub fn loss(port: u16, p: f64, timeline: Arc<Timeline>) -> anyhow::Result<Rules> {
        let prob = format!("{p}");
        let extra = [
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            prob.as_str(),
        ];
        let rules = vec![rule("--dport", port, &extra), rule("--sport", port, &extra)];
        Rules::install(
            rules,
            format!("{:.0}% loss on udp port {port}", p * 100.0),
            timeline,
        )
    }
}

impl Drop for Rules {
    fn drop(&mut self) {
        for r in &self.rules {
            let mut args = vec!["-D".to_string()];
            args.extend(r.iter().cloned());
            let _ = iptables(&args);
        }
        self.timeline
            .record(format!("network healed: {}", self.what));
    }
}

/// A UDP relay that adds a delay (with jitter) to every datagram, both ways, between the clients
/// that send to it and one target: the kernel here has no `tc netem`, so delay is made in user
/// space. Each client gets its own upstream socket, so the target sees one peer per client.
/// Datagrams keep their order (jitter never reorders, as on most real paths).
pub struct DelayProxy {
    addr: std::net::SocketAddr,
    target: Arc<std::sync::Mutex<Option<std::net::SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    /// A proxy on a free loopback port; traffic flows once [`set_target`](Self::set_target).
    pub async fn start(
        delay: std::time::Duration,
        jitter: std::time::Duration,
        seed: u64,
    ) -> DelayProxy {
        DelayProxy::start_on([127, 0, 0, 1].into(), delay, jitter, seed).await
    }

    /// As [`start`](Self::start), on a free port of `ip` (e.g. the test's address on a
    /// [`crate::netns::Network`] bridge).
    pub async fn start_on(
        ip: std::net::IpAddr,
        delay: std::time::Duration,
        jitter: std::time::Duration,
        seed: u64,
    ) -> DelayProxy {
        use rand::{Rng, SeedableRng};
        use std::collections::HashMap;
        use std::net::SocketAddr;
        use tokio::net::UdpSocket;
        use tokio::sync::mpsc;
        use tokio::time::Instant;

        let front = Arc::new(UdpSocket::bind((ip, 0)).await.expect("bind proxy"));
        let addr = front.local_addr().unwrap();
        let target: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
        let t = target.clone();
        let task = tokio::spawn(async move {
            let rng = Arc::new(std::sync::Mutex::new(rand::rngs::StdRng::seed_from_u64(
                seed,
            )));
            let hold = move |rng: &std::sync::Mutex<rand::rngs::StdRng>| {
                let j = jitter.as_micros() as u64;
                let extra = if j == 0 {
                    0
                } else {
                    rng.lock().unwrap().gen_range(0..=j)
                };
                delay + std::time::Duration::from_micros(extra)
            };
            // One delayed sender per direction and client: a FIFO of (due, datagram).
            let spawn_line = |sock: Arc<UdpSocket>, to: Option<SocketAddr>| {
                let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
                tokio::spawn(async move {
                    let mut last = Instant::now();
                    while let Some((due, data)) = rx.recv().await {
                        let due = due.max(last);
                        last = due;
                        tokio::time::sleep_until(due).await;
                        let _ = match to {
                            Some(to) => sock.send_to(&data, to).await,
                            None => sock.send(&data).await,
                        };
                    }
                });
                tx
            };
            let mut clients: HashMap<SocketAddr, mpsc::UnboundedSender<(Instant, Vec<u8>)>> =
                HashMap::new();
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, from)) = front.recv_from(&mut buf).await else {
                    return;
                };
                let Some(to) = *t.lock().unwrap() else {
                    continue;
                };
                let up = clients.entry(from).or_insert_with(|| {
                    let back = Arc::new(
                        std::net::UdpSocket::bind((ip, 0))
                            .and_then(|s| {
                                s.connect(to)?;
                                s.set_nonblocking(true)?;
                                Ok(s)
                            })
                            .and_then(UdpSocket::from_std)
                            .expect("upstream socket"),
                    );
                    // Replies from the target go back to this client, delayed too.
                    let down = spawn_line(front.clone(), Some(from));
                    let (b, rng2) = (back.clone(), rng.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65_536];
                        while let Ok(n) = b.recv(&mut buf).await {
                            let due = Instant::now() + hold(&rng2);
                            if down.send((due, buf[..n].to_vec())).is_err() {
                                return;
                            }
                        }
                    });
                    spawn_line(back, None)
                });
                let due = Instant::now() + hold(&rng);
                let _ = up.send((due, buf[..n].to_vec()));
            }
        });
        DelayProxy { addr, target, task }
    }

    /// Where clients send.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Where datagrams go.
    pub fn set_target(&self, target: std::net::SocketAddr) {
        *self.target.lock().unwrap() = Some(target);
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
