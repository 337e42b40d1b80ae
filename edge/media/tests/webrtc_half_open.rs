//! Thousands of offers that never connect (a flood of half-open WebRTC sessions): the node holds
//! at most its viewer slots of them (`max_sessions` less the publishers' share, which a
//! publisher still gets), refuses the rest at once (`Busy`, a 503 over HTTP), frees each
//! after the connect timeout, and a viewer already playing keeps getting every packet meanwhile
//! (no hole in its sequence numbers, whatever the machine's speed).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{frame, h264_room, Viewer};
use streamhub_media::webrtc::{publisher_reserve, OpenError, Role, CONNECT_TIMEOUT};

const MAX_SESSIONS: usize = 200;
const OFFERS: usize = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_sessions_are_bounded_and_time_out() {
    let node = common::node(MAX_SESSIONS).await;
    let mut room = h264_room();
    room.push(frame(0));
    let handle = room.handle();
    // 25 fps until the test ends.
    let pusher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(40));
        for i in 1.. {
            tick.tick().await;
            room.push(frame(i));
        }
    });
    // Every RTP sequence number the viewer receives, in every phase.
    let mut seqs: Vec<u16> = Vec::new();
    // A viewer that plays through the flood.
    let mut viewer = Viewer::new().await;
    let play = Role::Play {
        media: handle.clone(),
        hold: None,
        viewer: None,
        rejoin: None,
    };
    let slot = node.reserve([127, 0, 0, 1].into(), false).unwrap();
    let opened = node.open(slot, &viewer.offer(), play, None).unwrap();
    viewer.answer(opened.answer).unwrap();
    let mut before = 0u64;
    viewer
        .run(
            2.0,
            |_| false,
            |p| {
                before += 1;
                seqs.push(p.header.sequence_number);
            },
        )
        .await;
    assert!(viewer.connected && before > 0, "{before} packets before");

    // The flood: offers from peers that will never send a STUN check. One offer text serves
    // them all (a fresh ICE ufrag and DTLS certificate are made per session anyway).
    let offer = Viewer::new().await.offer();
    let node2 = node.clone();
    let media = handle.clone();
    let flood = tokio::task::spawn_blocking(move || {
        let (mut opened, mut busy) = (0, 0);
        for _ in 0..OFFERS {
            let play = Role::Play {
                media: media.clone(),
                hold: None,
                viewer: None,
                rejoin: None,
            };
            let result = node2
                .reserve([127, 0, 0, 1].into(), false)
                .and_then(|slot| node2.open(slot, &offer, play, None));
            match result {
                Ok(_) => opened += 1,
                Err(OpenError::Busy(n)) => {
                    assert_eq!(n, MAX_SESSIONS);
                    busy += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        (opened, busy)
    });
    let mut during = 0u64;
    let started = Instant::now();
    while !flood.is_finished() {
        viewer
            .run(
                0.5,
                |_| false,
                |p| {
                    during += 1;
                    seqs.push(p.header.sequence_number);
                },
            )
            .await;
    }
    let flood_secs = started.elapsed().as_secs_f64();
    let (opened, busy) = flood.await.unwrap();
    println!("{OFFERS} offers in {flood_secs:.1} s; {during} packets meanwhile");
    // The playing viewer holds one slot: the flood got the other viewer slots, no more; the
    // publishers' share is still free, and a publisher takes it.
    let viewer_slots = MAX_SESSIONS - publisher_reserve(MAX_SESSIONS);
    assert_eq!(opened, viewer_slots - 1);
    assert_eq!(busy, OFFERS - opened);
    assert_eq!(
        node.stats.sessions.load(Ordering::Relaxed),
        viewer_slots as u64
    );
    assert!(matches!(
        node.reserve([127, 0, 0, 1].into(), false),
        Err(OpenError::Busy(_))
    ));
    let publisher_slot = node.reserve([127, 0, 0, 1].into(), true);
    assert!(publisher_slot.is_ok(), "a publisher still gets in");
    drop(publisher_slot);
    assert!(during > 0, "the viewer got nothing during the flood");

    // The half-open sessions go after the connect timeout; the viewer stays and plays on.
    let mut after = 0u64;
    let deadline = Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(30);
    while node.stats.sessions.load(Ordering::Relaxed) > 1 {
        assert!(
            Instant::now() < deadline,
            "half-open sessions left: {}",
            node.stats.sessions.load(Ordering::Relaxed)
        );
        viewer
            .run(
                0.5,
                |_| false,
                |p| {
                    after += 1;
                    seqs.push(p.header.sequence_number);
                },
            )
            .await;
    }
    assert_eq!(
        node.stats.sessions.load(Ordering::Relaxed),
        1,
        "only the viewer"
    );
    assert!(after > 0, "the viewer got nothing after the flood");
    // Every packet from the first to the last arrived (the last few may still be on the way).
    let first = seqs[0];
    let rel: std::collections::BTreeSet<u16> = seqs.iter().map(|s| s.wrapping_sub(first)).collect();
    let last = *rel.last().unwrap();
    let holes: Vec<u16> = (0..last.saturating_sub(10))
        .filter(|s| !rel.contains(s))
        .collect();
    assert!(
        holes.is_empty(),
        "packets lost by the playing viewer: {holes:?}"
    );
    // And the freed slots take new sessions.
    let play = Role::Play {
        media: handle.clone(),
        hold: None,
        viewer: None,
        rejoin: None,
    };
    let slot = node.reserve([127, 0, 0, 1].into(), false).unwrap();
    assert!(node
        .open(slot, &Viewer::new().await.offer(), play, None)
        .is_ok());
    pusher.abort();
}

/// One address may hold only a few offers that have not connected; others are not affected, and
/// a slot comes back when its offer goes.
#[tokio::test]
async fn unconnected_offers_are_capped_per_address() {
    let config = streamhub_media::webrtc::WebRtcConfig {
        udp: "127.0.0.1:0".parse().unwrap(),
        max_sessions: 100,
        max_pending_per_address: 2,
        ..Default::default()
    };
    let node = streamhub_media::webrtc::WebRtc::bind(config, Default::default())
        .await
        .unwrap();
    let flooder: std::net::IpAddr = "198.51.100.1".parse().unwrap();
    let a = node.reserve(flooder, false).unwrap();
    let _b = node.reserve(flooder, true).unwrap();
    assert!(matches!(
        node.reserve(flooder, false),
        Err(OpenError::TooManyPending(2))
    ));
    assert!(node.reserve("198.51.100.2".parse().unwrap(), false).is_ok());
    drop(a);
    assert!(node.reserve(flooder, false).is_ok());
}
