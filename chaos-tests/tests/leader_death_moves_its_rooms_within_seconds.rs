//! The worst case of an origin failover: the origin holding a live room is also the Raft
//! leader. It is killed (-9) while a viewer plays the room from an edge and the encoder retries
//! its backup origin at once each time it is refused. An election comes first; the new leader
//! lets every live node's heartbeat reach it (1 s), then declares the silent holder dead, and the
//! room moves as in the follower case. Figures: `failover_bench` (docs/benchmarks.md).

use streamhub_chaos_tests::scenarios::{origin_failover, Holder};
use streamhub_chaos_tests::{chaos_seed, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_death_moves_its_rooms_within_seconds() {
    let mut c = Cluster::start(3, chaos_seed()).await;
    let f = origin_failover(&mut c, Holder::Leader).await;
    f.assert_moved_early();
    c.note("done");
}
