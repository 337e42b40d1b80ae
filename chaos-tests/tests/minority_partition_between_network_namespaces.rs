//! The minority partition between hosts: every origin runs in its own network namespace, joined
//! to the others by veth pairs on a bridge, and the cut is iptables inside the minority's
//! namespace dropping everything from and to the other two hosts (the test's own address stays
//! reachable, so it can still ask the minority to write). Same assertions as the loopback
//! variant: the majority writes, the minority refuses, no split brain, catch-up after heal.

use streamhub_chaos_tests::require;
use streamhub_chaos_tests::scenarios::minority_partition;
use streamhub_chaos_tests::{chaos_seed, netns, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_partition_between_network_namespaces() {
    if !require(netns::NEEDS, netns::available()) {
        return;
    }
    let c = Cluster::start_in_netns(3, chaos_seed()).await;
    minority_partition(c, |c, minority| {
        let net = c.netns.as_ref().expect("a netns cluster");
        let peers: Vec<u8> = (0..3)
            .filter(|i| *i != minority)
            .map(|i| c.host_of(i))
            .collect();
        net.partition(c.host_of(minority), &peers, c.timeline())
            .expect("iptables in the namespace")
    })
    .await;
}
