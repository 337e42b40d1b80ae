//! NACK recovery on a real WHEP session: a node's `WebRtc` on a loopback UDP port sends a room's
//! H.264 to a viewer built on the `rtc` crate with its default interceptors (it NACKs what it
//! misses). The viewer throws away the first copy of every tenth video packet; the node must
//! resend each from its packet history, so the viewer ends with no hole in the sequence.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{frame, h264_room, rtp_seq, Viewer};
use streamhub_media::webrtc::{Role, SendPath};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_video_packets_are_resent_on_nack() {
    run(SendPath::Fanout).await;
}

/// The same on the `rtc` pipeline (`--webrtc-send-path rtc`, kept for comparison).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_video_packets_are_resent_on_nack_on_the_rtc_path() {
    run(SendPath::Rtc).await;
}

async fn run(path: SendPath) {
    let node = common::node_on(10, path).await;
    let mut room = h264_room();
    room.push(frame(0));
    let mut viewer = Viewer::new().await;
    let play = Role::Play {
        media: room.handle(),
        hold: None,
        viewer: None,
        rejoin: None,
    };
    let slot = node.reserve([127, 0, 0, 1].into(), false).unwrap();
    let opened = node.open(slot, &viewer.offer(), play, None).unwrap();
    viewer.answer(opened.answer).unwrap();

    // Frames at 25 fps from the room while the viewer drops the first copy of every 10th packet,
    // until the viewer has seen 300 packets (however long the connection took to come up).
    let pusher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(40));
        for i in 1.. {
            tick.tick().await;
            room.push(frame(i));
        }
    });
    let mut first: Option<u16> = None;
    let mut dropped = BTreeSet::new();
    let mut received = BTreeSet::new();
    let mut resent = 0;
    let lose = |d: &[u8]| {
        let Some(seq) = rtp_seq(d) else { return false };
        // Never the very first packet: a receiver cannot NACK what came before its first one
        // (browsers neither), so that loss would be unrecoverable by design, not by a bug.
        let start = *first.get_or_insert(seq);
        seq != start && seq % 10 == 3 && dropped.insert(seq)
    };
    let mut seen = Vec::new();
    let mut lose = lose;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < 300 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} packets in 60 s",
            seen.len()
        );
        viewer
            .run(0.5, &mut lose, |p| seen.push(p.header.sequence_number))
            .await;
    }
    // A little longer, so the last drops get their resends.
    viewer
        .run(1.0, |_| false, |p| seen.push(p.header.sequence_number))
        .await;
    pusher.abort();
    assert!(viewer.connected, "the viewer connected");
    for seq in seen {
        assert!(received.insert(seq), "sequence number {seq} twice");
        if dropped.contains(&seq) {
            resent += 1;
        }
    }
    // 3 packets a frame; one in ten dropped once.
    assert!(received.len() >= 300, "{} packets", received.len());
    assert!(dropped.len() >= 20, "{} dropped", dropped.len());
    // Sequence numbers start at random: count from the first one on the wire (the first packet
    // of the first keyframe), modulo 2^16.
    let first = first.expect("a packet");
    let rel: BTreeSet<u16> = received.iter().map(|s| s.wrapping_sub(first)).collect();
    let last = *rel.last().unwrap();
    // Every packet but the last few (maybe still being recovered at the deadline) arrived.
    let holes: Vec<u16> = (0..last.saturating_sub(10))
        .filter(|s| !rel.contains(s))
        .collect();
    assert!(holes.is_empty(), "never recovered: {holes:?}");
    assert!(
        resent >= dropped.len() - 3,
        "{resent} of {} resent",
        dropped.len()
    );
    assert!(
        node.stats
            .rtp_out
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 250
    );
}
