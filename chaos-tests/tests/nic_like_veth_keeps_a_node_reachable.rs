//! The benchmarks' NIC-like veth (`Network::nic_like`, used by `whep_bench NETNS=1` to count an
//! edge's CPU alone): both ends of a node's veth receive through threaded NAPI, each in a
//! kernel thread of its own, behind a FIFO qdisc, and the node stays reachable through it.

use std::process::Command;
use std::time::Duration;

use streamhub_chaos_tests::netns::{self, Network};
use streamhub_chaos_tests::require;
use streamhub_chaos_tests::{chaos_seed, Cluster};

fn ethtool_present() -> bool {
    Command::new("ethtool").arg("--version").output().is_ok()
}

fn output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect(program);
    assert!(out.status.success(), "{program} {args:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nic_like_veth_keeps_a_node_reachable() {
    let needs = format!("{} and ethtool", netns::NEEDS);
    if !require(&needs, netns::available() && ethtool_present()) {
        return;
    }
    let net = Network::new().expect("bridge");
    let c = Cluster::start_on_network(1, chaos_seed(), &[], net.clone()).await;
    let host = c.host_of(0);
    let threads = net.nic_like(host).expect("NIC-like veth");

    assert_ne!(threads.outer, threads.inner);
    for pid in [threads.outer, threads.inner] {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert!(comm.starts_with("napi/"), "thread {pid} is {comm:?}");
    }
    // The host's end, inside its namespace: UDP GRO forwarding (NAPI for UDP) and a FIFO.
    let ns = net.ns(host);
    let inner = output("ip", &["netns", "exec", &ns, "ip", "-o", "link", "show"]);
    let inner = inner
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap().to_string())
        .find(|name| name != "lo")
        .expect("the host's veth");
    let features = output("ip", &["netns", "exec", &ns, "ethtool", "-k", &inner]);
    assert!(features.contains("rx-udp-gro-forwarding: on"), "{features}");
    let qdisc = output(
        "ip",
        &["netns", "exec", &ns, "tc", "qdisc", "show", "dev", &inner],
    );
    assert!(qdisc.contains("pfifo"), "{qdisc}");

    // Traffic crosses both ends (TCP to the node and back, through the bridge).
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for _ in 0..20 {
        let r = http.get(c.nodes[0].url("/healthz")).send().await;
        assert!(
            r.as_ref().is_ok_and(|r| r.status().is_success()),
            "the node through its NIC-like veth: {r:?}"
        );
    }
}
