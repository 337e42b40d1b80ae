//! The benchmarks' NIC-like veth (`Network::nic_like`, used by `whep_bench NETNS=1` to count an
//! edge's CPU alone): both ends of a node's veth receive through threaded NAPI, each in a
//! kernel thread of its own, behind a FIFO qdisc; UDP to the node goes through NAPI, and the
//! node stays reachable.

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
    let (outer, inner) = net.veth(host);
    let ns = net.ns(host);
    let in_ns = |args: &[&str]| {
        let mut all = vec!["netns", "exec", ns.as_str()];
        all.extend_from_slice(args);
        output("ip", &all)
    };

    // Each end receives in a thread of its own.
    for (pid, dev) in [(threads.outer, &outer), (threads.inner, &inner)] {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        let prefix = netns::napi_thread_prefix(dev);
        assert!(
            comm.starts_with(&prefix),
            "thread {pid} of {dev} is {comm:?}"
        );
    }
    // Both ends: UDP through NAPI, a FIFO; the host's end cuts its own GSO batches.
    let outer_features = output("ethtool", &["-k", &outer]);
    assert!(
        outer_features.contains("rx-udp-gro-forwarding: on"),
        "{outer_features}"
    );
    let outer_qdisc = output("tc", &["qdisc", "show", "dev", &outer]);
    assert!(outer_qdisc.contains("pfifo"), "{outer_qdisc}");
    let features = in_ns(&["ethtool", "-k", &inner]);
    assert!(features.contains("rx-udp-gro-forwarding: on"), "{features}");
    assert!(features.contains("tx-udp-segmentation: off"), "{features}");
    let qdisc = in_ns(&["tc", "qdisc", "show", "dev", &inner]);
    assert!(qdisc.contains("pfifo"), "{qdisc}");

    // UDP to the host is received through its end's NAPI (veth counts what NAPI took in).
    let napi_packets = || {
        in_ns(&["ethtool", "-S", &inner])
            .lines()
            .find_map(|l| l.trim().strip_prefix("rx_queue_0_xdp_packets:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("veth NAPI counter")
    };
    let before = napi_packets();
    let udp = std::net::UdpSocket::bind((net.ip(254), 0)).unwrap();
    let to = (c.nodes[0].config().http.ip(), 9);
    for _ in 0..200 {
        udp.send_to(&[0u8; 200], to).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while napi_packets() < before + 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "200 datagrams, NAPI took in {}",
            napi_packets() - before
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

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
