//! Origin failover under an edge: the origin holding a live room (a Raft follower) is killed
//! (-9) while a viewer plays it from an edge; the encoder retries its backup origin at once each
//! time it is refused. The leader declares the silent holder dead after `DEAD_AFTER_MS` (2.5 s)
//! without a lease renewal instead of waiting out its 10 s lease, the backup origin takes the
//! room (a publish that arrives meanwhile waits for the decision), and the edge, whose relay
//! stalled, finds the new holder: the same playlist goes on, numbering forward, a discontinuity
//! marking the new session. Figures: `failover_bench` (docs/benchmarks.md).

use streamhub_chaos_tests::scenarios::{origin_failover, Holder};
use streamhub_chaos_tests::{chaos_seed, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_follows_the_room_to_a_new_origin() {
    let mut c = Cluster::start(3, chaos_seed()).await;
    let f = origin_failover(&mut c, Holder::Follower).await;
    f.assert_moved_early();
    c.note("done");
}
