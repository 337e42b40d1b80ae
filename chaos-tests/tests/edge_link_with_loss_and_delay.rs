//! The edge <-> origin link degraded: 100 ms added delay (±10 ms jitter, a userspace proxy: the
//! kernel has no netem) and 5 % packet loss both ways (iptables random drop on the proxy's
//! loopback port), with a 2.5 Mb/s stream. Every segment the origin lists appears on the edge,
//! none late (more than one target duration after the origin) and none missing; the LL-HLS part
//! delay of the edge behind the origin is reported; a WebSocket camera room plays as MJPEG on
//! the edge through the same link. The same between network namespaces:
//! `edge_link_with_loss_and_delay_between_namespaces.rs`.

use std::time::Duration;

use streamhub_chaos_tests::net::{DelayProxy, Rules};
use streamhub_chaos_tests::scenarios::edge_link_degraded;
use streamhub_chaos_tests::{chaos_seed, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_link_with_loss_and_delay() {
    let seed = chaos_seed();
    let proxy =
        DelayProxy::start(Duration::from_millis(100), Duration::from_millis(10), seed).await;
    let advertise = proxy.addr().to_string();
    let c = Cluster::start_with_env(1, seed, &[("STREAMHUB_CLUSTER_ADVERTISE", &advertise)]).await;
    proxy.set_target(c.nodes[0].config().cluster);
    let port = proxy.addr().port();
    edge_link_degraded(c, |c, _edge| {
        Rules::loss(port, 0.05, c.timeline()).expect("iptables")
    })
    .await;
}
