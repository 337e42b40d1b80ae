//! A minority partition: one origin of three is cut off from the others (iptables on loopback
//! drops its cluster traffic by port). The majority keeps taking writes; the cut-off origin
//! refuses them (no split brain: nothing it was asked to write ever appears); once the partition
//! heals it catches up with every write the majority took. The same scenario between network
//! namespaces: `minority_partition_between_network_namespaces.rs`.

use streamhub_chaos_tests::net::Rules;
use streamhub_chaos_tests::scenarios::minority_partition;
use streamhub_chaos_tests::{chaos_seed, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_partition_refuses_writes_and_catches_up() {
    let c = Cluster::start(3, chaos_seed()).await;
    minority_partition(c, |c, minority| {
        let port = c.nodes[minority].config().cluster.port();
        Rules::isolate(port, c.timeline()).expect("iptables")
    })
    .await;
}
