//! Origin failover under an edge: the origin holding a live room (a Raft follower) is killed
//! (-9) while a viewer plays it from an edge; the encoder retries its backup origin at once each
//! time it is refused. The leader declares the silent holder dead after `DEAD_AFTER_MS` (2.5 s)
//! without a lease renewal instead of waiting out its 10 s lease, the backup origin takes the
//! room (a publish that arrives meanwhile waits for the decision), and the edge, whose relay
//! stalled, finds the new holder: the same playlist goes on, numbering forward, a discontinuity
//! marking the new session. Figures: `failover_bench` (docs/benchmarks.md).

use std::time::Duration;

use streamhub_chaos_tests::scenarios::{origin_failover, Holder};
use streamhub_chaos_tests::{chaos_seed, Cluster};

/// The dead holder's full lease (10 s): without declaring it dead early, no other origin could
/// take its room before this (less the half-second heartbeat period) after the kill.
const FULL_LEASE: Duration = Duration::from_secs(9);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_follows_the_room_to_a_new_origin() {
    let mut c = Cluster::start(3, chaos_seed()).await;
    let f = origin_failover(&mut c, Holder::Follower).await;
    assert!(
        f.accepted < FULL_LEASE,
        "the backup origin took the room {:?} after the kill: the dead holder was not declared dead early",
        f.accepted
    );
    // The edge follows the placement as soon as its relay stalls, rather than waiting out the
    // dead holder's QUIC timeouts: bounded well under those, with room for a loaded machine.
    let lag = f.edge_media.saturating_sub(f.origin_media);
    assert!(
        lag <= Duration::from_secs(8),
        "new media on the edge {lag:?} after the new origin had it"
    );
    c.note("done");
}
