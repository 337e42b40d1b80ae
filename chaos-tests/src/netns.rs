//! Nodes on their own network: one network namespace per node, each with a veth pair into a
//! bridge in the test's namespace (which has `.254` on it, so the test reaches every node), and
//! faults injected with iptables *inside* a node's namespace, as between real hosts. Needs root
//! and iproute2 (CI has both); [`available`] tells.
//!
//! Names carry the test process's id, so parallel test binaries never share a namespace, and
//! everything is deleted when the [`Network`] is dropped (after the nodes are killed).

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Arc;

use crate::timeline::Timeline;

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("{program} {args:?}: {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// What the namespace scenarios need.
pub const NEEDS: &str = "root, iproute2 and iptables (network namespaces)";

/// True when this process can make namespaces (root, iproute2 and iptables present).
pub fn available() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    root && Command::new("ip").arg("-V").output().is_ok()
        && Command::new("iptables").arg("-V").output().is_ok()
}

/// The kernel threads receiving for a veth pair made [`Network::nic_like`].
pub struct NicThreads {
    /// Receives what the host sends (its end in the bridge): the receivers' side.
    pub outer: u32,
    /// Receives what the host is sent (its end in its namespace): the host's side.
    pub inner: u32,
}

/// What the name of device `dev`'s threaded-NAPI kernel thread (`napi/<dev>-<id>`) starts
/// with, cut as the kernel cuts thread names (15 characters).
pub fn napi_thread_prefix(dev: &str) -> String {
    format!("napi/{dev}-").chars().take(15).collect()
}

/// The threaded-NAPI kernel thread of device `dev`: exactly one thread must have its name (a
/// name cut before its `-` could be another device's too).
fn napi_thread(dev: &str) -> anyhow::Result<u32> {
    let prefix = napi_thread_prefix(dev);
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(&prefix) {
            found.push(pid);
        }
    }
    match found[..] {
        [pid] => Ok(pid),
        [] => anyhow::bail!("no NAPI thread for {dev} (threaded NAPI not on?)"),
        _ => anyhow::bail!("NAPI threads {found:?} all match {prefix:?}: which is {dev}'s?"),
    }
}

/// A bridge and the namespaces of up to 250 hosts on one /24.
pub struct Network {
    tag: String,
    bridge: String,
    subnet: [u8; 3],
    hosts: std::sync::Mutex<Vec<String>>,
}

impl Network {
    /// A new, empty network (the bridge, with the test's own address `.254`).
    pub fn new() -> anyhow::Result<Arc<Network>> {
        let pid = std::process::id();
        let tag = format!("sh{}", pid % 100_000);
        let subnet = [10, 100 + (pid % 100) as u8, ((pid / 100) % 250) as u8];
        let bridge = format!("{tag}br");
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        let net = Network {
            tag,
            bridge: bridge.clone(),
            subnet,
            hosts: Default::default(),
        };
        let me = format!("{}/24", net.ip(254));
        run("ip", &["addr", "add", &me, "dev", &bridge])?;
        run("ip", &["link", "set", &bridge, "up"])?;
        Ok(Arc::new(net))
    }

    /// The address of host `n` (1..=250).
    pub fn ip(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], n)
    }

    /// The namespace of host `n`.
    pub fn ns(&self, n: u8) -> String {
        format!("{}h{n}", self.tag)
    }

    /// Gives the test's own namespace address `ip(n)` too (besides `.254`): a second client
    /// the network can treat differently. Goes with the bridge.
    pub fn add_own_address(&self, n: u8) -> anyhow::Result<Ipv4Addr> {
        let addr = format!("{}/24", self.ip(n));
        run("ip", &["addr", "add", &addr, "dev", &self.bridge])?;
        Ok(self.ip(n))
    }

    /// Host `n`'s veth pair: its end in the bridge (in the test's namespace) and its end in
    /// its own namespace.
    pub fn veth(&self, n: u8) -> (String, String) {
        (format!("{}v{n}", self.tag), format!("{}i{n}", self.tag))
    }

    /// Makes host `n`: its namespace (loopback up), a veth into the bridge, address `ip(n)`.
    pub fn add_host(&self, n: u8) -> anyhow::Result<String> {
        let ns = self.ns(n);
        let (outer, inner) = self.veth(n);
        run("ip", &["netns", "add", &ns])?;
        self.hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ns.clone());
        run(
            "ip",
            &[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ],
        )?;
        run("ip", &["link", "set", &inner, "netns", &ns])?;
        run("ip", &["link", "set", &outer, "master", &self.bridge])?;
        run("ip", &["link", "set", &outer, "up"])?;
        let addr = format!("{}/24", self.ip(n));
        let exec = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns.as_str()];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        exec(&["ip", "link", "set", "lo", "up"])?;
        exec(&["ip", "addr", "add", &addr, "dev", &inner])?;
        exec(&["ip", "link", "set", &inner, "up"])?;
        Ok(ns)
    }

    /// Makes host `n`'s veth pair receive as two machines' NICs do, for benchmarks that count
    /// one node's CPU alone. A veth delivers each packet inside the sender's `sendmsg`: the
    /// receiver's work (bridge, IP, UDP, waking the receiving socket) is counted on the
    /// sender's core. With GRO and UDP GRO forwarding on, each end receives through NAPI, and
    /// threaded NAPI gives each end a kernel thread that the caller pins where the receiver
    /// runs. Each end gets a FIFO qdisc: a full NAPI ring then holds the sender back, as a
    /// NIC's full ring does, instead of dropping (Linux >= 6.16; older kernels drop). The
    /// host's end does not offload UDP segmentation: the host's kernel cuts its GSO batches
    /// into datagrams, as for a NIC without that offload (a veth would otherwise pass a batch
    /// whole and the receiver cut it). Needs `ethtool` (root). Returns the two receiving
    /// threads.
    pub fn nic_like(&self, n: u8) -> anyhow::Result<NicThreads> {
        let ns = self.ns(n);
        let (outer, inner) = self.veth(n);
        let gro = ["gro", "on", "rx-udp-gro-forwarding", "on"];
        run("ethtool", &[&["-K", outer.as_str()][..], &gro[..]].concat())?;
        std::fs::write(format!("/sys/class/net/{outer}/threaded"), "1")?;
        run(
            "tc",
            &[
                "qdisc", "replace", "dev", &outer, "root", "pfifo", "limit", "20000",
            ],
        )?;
        let exec = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns.as_str()];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        let no_uso = ["tx-udp-segmentation", "off"];
        exec(
            &[
                &["ethtool", "-K", inner.as_str()][..],
                &gro[..],
                &no_uso[..],
            ]
            .concat(),
        )?;
        let threaded = format!("echo 1 > /sys/class/net/{inner}/threaded");
        exec(&["sh", "-c", &threaded])?;
        exec(&[
            "tc", "qdisc", "replace", "dev", &inner, "root", "pfifo", "limit", "20000",
        ])?;
        Ok(NicThreads {
            outer: napi_thread(&outer)?,
            inner: napi_thread(&inner)?,
        })
    }

    /// Cuts host `n` off from hosts `peers` (both directions, every protocol), with iptables in
    /// its own namespace; the test's address stays reachable. Removed when the guard drops.
    pub fn partition(
        &self,
        n: u8,
        peers: &[u8],
        timeline: Arc<Timeline>,
    ) -> anyhow::Result<Partition> {
        let ips: Vec<Ipv4Addr> = peers.iter().map(|p| self.ip(*p)).collect();
        let what = format!(
            "host {} cut off from {ips:?} (iptables in its namespace)",
            self.ip(n)
        );
        self.install(n, &ips, &[], what, timeline)
    }

    /// Drops each packet between host `n` and `peer` (either way) with probability `p`, with
    /// iptables in host `n`'s namespace (`peer` may be the test's own address, `ip(254)`).
    pub fn loss(
        &self,
        n: u8,
        peer: Ipv4Addr,
        p: f64,
        timeline: Arc<Timeline>,
    ) -> anyhow::Result<Partition> {
        let prob = p.to_string();
        let extra = [
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &prob,
        ];
        let what = format!("{}% loss between host {} and {peer}", p * 100.0, self.ip(n));
        self.install(n, &[peer], &extra, what, timeline)
    }

    fn install(
        &self,
        n: u8,
        peers: &[Ipv4Addr],
        extra: &[&str],
        what: String,
        timeline: Arc<Timeline>,
    ) -> anyhow::Result<Partition> {
        let ns = self.ns(n);
        let mut rules = Vec::new();
        for peer in peers {
            let peer = peer.to_string();
            for (chain, dir) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
                let mut r = vec![chain.to_string(), dir.to_string(), peer.clone()];
                r.extend(extra.iter().map(|s| s.to_string()));
                rules.push(r);
            }
        }
        for r in &rules {
            iptables(Some(&ns), "-I", r)?;
        }
        timeline.record(format!("network: {what}"));
        Ok(Partition {
            ns: Some(ns),
            rules,
            what,
            timeline,
        })
    }

    /// Drops each packet to or from the test's own address `own` (see
    /// [`add_own_address`](Self::add_own_address)) with probability `p`, with iptables in the
    /// test's namespace, on arrival (INPUT) and departure (OUTPUT) there: the node's packets
    /// leave it as sent (a drop in its own OUTPUT chain would tell its `sendmsg`, which a
    /// real link does not) and are lost on the way in.
    pub fn loss_at_own(
        &self,
        own: Ipv4Addr,
        p: f64,
        timeline: Arc<Timeline>,
    ) -> anyhow::Result<Partition> {
        let prob = p.to_string();
        let own = own.to_string();
        let rules: Vec<Vec<String>> = [("INPUT", "-d"), ("OUTPUT", "-s")]
            .iter()
            .map(|(chain, dir)| {
                [
                    chain,
                    dir,
                    own.as_str(),
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    prob.as_str(),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect()
            })
            .collect();
        for r in &rules {
            iptables(None, "-I", r)?;
        }
        let what = format!("{}% loss to and from {own} (the test's side)", p * 100.0);
        timeline.record(format!("network: {what}"));
        Ok(Partition {
            ns: None,
            rules,
            what,
            timeline,
        })
    }
}

/// Inserts (`-I`) or deletes (`-D`) a DROP rule, in namespace `ns` or the test's own.
fn iptables(ns: Option<&str>, op: &str, rule: &[String]) -> anyhow::Result<()> {
    let mut args: Vec<&str> = match ns {
        Some(ns) => vec!["netns", "exec", ns, "iptables", op],
        None => vec![op],
    };
    args.extend(rule.iter().map(String::as_str));
    args.extend(["-j", "DROP"]);
    match ns {
        Some(_) => run("ip", &args),
        None => run("iptables", &args),
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in self
            .hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            // Deleting the namespace deletes its veth end, and with it the peer in the bridge.
            let _ = run("ip", &["netns", "del", &ns]);
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}

/// A partition that lasts while this guard lives.
pub struct Partition {
    /// `None`: the test's own namespace.
    ns: Option<String>,
    rules: Vec<Vec<String>>,
    what: String,
    timeline: Arc<Timeline>,
}

impl Drop for Partition {
    fn drop(&mut self) {
        for r in &self.rules {
            if let Err(e) = iptables(self.ns.as_deref(), "-D", r) {
                eprintln!("removing a partition rule: {e}");
            }
        }
        self.timeline
            .record(format!("network: healed ({})", self.what));
    }
}
