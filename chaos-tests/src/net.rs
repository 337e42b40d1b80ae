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
