//! The degraded edge link between hosts: the origin and the edge each run in their own network
//! namespace on one bridge; the origin's cluster address is advertised through the delaying
//! proxy (+100 ms ±10 ms) on the test's bridge address, and 5 % loss both ways is iptables in the
//! edge's namespace on its traffic to and from the proxy. Same assertions as the loopback variant.

use std::time::Duration;

use streamhub_chaos_tests::net::DelayProxy;
use streamhub_chaos_tests::netns::{self, Network};
use streamhub_chaos_tests::require;
use streamhub_chaos_tests::scenarios::edge_link_degraded;
use streamhub_chaos_tests::{chaos_seed, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_link_with_loss_and_delay_between_namespaces() {
    if !require(netns::NEEDS, netns::available()) {
        return;
    }
    let seed = chaos_seed();
    let net = Network::new().expect("bridge");
    let bridge_ip = net.ip(254);
    let proxy = DelayProxy::start_on(
        bridge_ip.into(),
        Duration::from_millis(100),
        Duration::from_millis(10),
        seed,
    )
    .await;
    let advertise = proxy.addr().to_string();
    let c = Cluster::start_on_network(
        1,
        seed,
        &[("STREAMHUB_CLUSTER_ADVERTISE", &advertise)],
        net.clone(),
    )
    .await;
    proxy.set_target(c.nodes[0].config().cluster);
    edge_link_degraded(c, move |c, _edge| {
        // The edge is the cluster's second host.
        net.loss(c.host_of(1), bridge_ip, 0.05, c.timeline())
            .expect("iptables in the edge's namespace")
    })
    .await;
}
