//! Thousands of offers that never connect (a flood of half-open WebRTC sessions): the node holds
//! at most `max_sessions` of them, refuses the rest at once (`Busy`, a 503 over HTTP), frees each
//! after the connect timeout, and a viewer already playing keeps getting every frame meanwhile.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{frame, h264_room, Viewer};
use streamhub_edge::webrtc::{OpenError, Role, CONNECT_TIMEOUT};

const MAX_SESSIONS: usize = 200;
const OFFERS: usize = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_sessions_are_bounded_and_time_out() {
    let node = common::node(MAX_SESSIONS).await;
    let mut room = h264_room();
    room.push(frame(0));
    let handle = room.handle();
    let pusher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(40));
        for i in 1.. {
            tick.tick().await;
            room.push(frame(i));
            if i == 25 * 30 {
                break;
            }
        }
    });
    // A viewer that plays through the flood.
    let mut viewer = Viewer::new().await;
    let play = Role::Play {
        media: handle.clone(),
        hold: None,
    };
    let opened = node.open(&viewer.offer(), play, None).unwrap();
    viewer.answer(opened.answer);
    let mut before = 0u64;
    viewer.run(2.0, |_| false, |_| before += 1).await;
    assert!(viewer.connected && before > 50, "{before} packets before");

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
            };
            match node2.open(&offer, play, None) {
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
        viewer.run(0.5, |_| false, |_| during += 1).await;
    }
    let flood_secs = started.elapsed().as_secs_f64();
    let (opened, busy) = flood.await.unwrap();
    let flooded_at = Instant::now();
    println!("{OFFERS} offers in {flood_secs:.1} s");
    // The playing viewer holds one slot: the flood got the others, no more.
    assert_eq!(opened, MAX_SESSIONS - 1);
    assert_eq!(busy, OFFERS - opened);
    assert_eq!(
        node.stats.sessions.load(Ordering::Relaxed),
        MAX_SESSIONS as u64
    );
    // 3 packets a frame at 25 fps: the viewer kept getting (nearly) all of them.
    let expected = 75.0 * flood_secs;
    assert!(
        during as f64 >= 0.8 * expected,
        "{during} packets during the flood"
    );

    // The half-open sessions go after the connect timeout; the viewer stays.
    let mut after = 0u64;
    let wait = CONNECT_TIMEOUT + Duration::from_secs(3);
    viewer
        .run(wait.as_secs_f64(), |_| false, |_| after += 1)
        .await;
    assert_eq!(
        node.stats.sessions.load(Ordering::Relaxed),
        1,
        "only the viewer"
    );
    assert!(flooded_at.elapsed() <= wait + Duration::from_secs(2));
    assert!(
        after >= (wait.as_secs() * 25 * 3 * 8 / 10),
        "{after} packets after"
    );
    // And the freed slots take new sessions.
    let play = Role::Play {
        media: handle.clone(),
        hold: None,
    };
    assert!(node.open(&Viewer::new().await.offer(), play, None).is_ok());
    pusher.abort();
}
