//! A WHEP viewer's session outlives its room's publisher session: the room's media ends (an
//! encoder that reconnects, an origin failover on an edge) and a new one starts under the same
//! name; the viewer's session goes on with it instead of ending. On the wire the viewer sees
//! one RTP stream: the same SSRC, sequence numbers without a hole, timestamps that keep going
//! forward by about the pause although the new session numbers its frames from zero.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{frame, h264_room, Viewer};
use futures::future::BoxFuture;
use streamhub_media::mjpeg::{MediaLookup, Viewing};
use streamhub_media::webrtc::{Rejoin, Role, SendPath};
use streamhub_shared::media::MediaHandle;
use streamhub_shared::{AppName, RoomName};
use tower::ServiceExt;

/// The room's current media, as a node's lookup would find it.
#[derive(Default)]
struct Current(Mutex<Option<MediaHandle>>);

impl MediaLookup for Current {
    fn media(
        &self,
        _app: &AppName,
        _room: &RoomName,
        _client: SocketAddr,
    ) -> BoxFuture<'static, Option<Viewing>> {
        let media = self.0.lock().unwrap().clone();
        Box::pin(async move {
            Some(Viewing {
                media: media?,
                hold: None,
            })
        })
    }
}

/// One RTP packet as the viewer got it.
struct Got {
    at: Instant,
    ssrc: u32,
    seq: u16,
    ts: u32,
}

impl Got {
    fn of(p: &rtc::rtp::Packet) -> Got {
        Got {
            at: Instant::now(),
            ssrc: p.header.ssrc,
            seq: p.header.sequence_number,
            ts: p.header.timestamp,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_goes_on_with_the_rooms_next_publisher_session() {
    run(SendPath::Fanout).await;
}

/// The same on the `rtc` pipeline (`--webrtc-send-path rtc`, kept for comparison).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_goes_on_with_the_rooms_next_publisher_session_on_the_rtc_path() {
    run(SendPath::Rtc).await;
}

async fn run(path: SendPath) {
    let node = common::node_on(10, path).await;
    let mut first = h264_room();
    first.push(frame(0));
    let current = Arc::new(Current::default());
    *current.0.lock().unwrap() = Some(first.handle());
    let mut viewer = Viewer::new().await;
    let play = Role::Play {
        media: first.handle(),
        hold: None,
        viewer: None,
        rejoin: Some(Rejoin {
            lookup: current.clone(),
            app: AppName::new("live").unwrap(),
            room: RoomName::new("cam").unwrap(),
            client: ([127, 0, 0, 1], 9).into(),
        }),
    };
    let slot = node.reserve([127, 0, 0, 1].into(), false).unwrap();
    let opened = node.open(slot, &viewer.offer(), play, None).unwrap();
    viewer.answer(opened.answer).unwrap();

    // The first publisher session: 25 fps until the viewer has had 2 s of it; then it ends, and
    // after a pause a second one starts at frame time zero.
    const PAUSE: Duration = Duration::from_millis(600);
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<Instant>();
    let (viewer_saw, mut saw) = tokio::sync::watch::channel(0usize);
    let lookup = current.clone();
    let publisher = tokio::spawn(async move {
        let mut first = first;
        let mut tick = tokio::time::interval(Duration::from_millis(40));
        let mut i = 1;
        while *saw.borrow_and_update() < 150 {
            tick.tick().await;
            first.push(frame(i));
            i += 1;
            assert!(i < 1500, "the viewer got nothing for a minute");
        }
        *lookup.0.lock().unwrap() = None;
        drop(first);
        let _ = ended_tx.send(Instant::now());
        tokio::time::sleep(PAUSE).await;
        let mut second = h264_room();
        *lookup.0.lock().unwrap() = Some(second.handle());
        for j in 0..75 {
            tick.tick().await;
            second.push(frame(j));
        }
        second
    });

    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !publisher.is_finished() {
        assert!(Instant::now() < deadline, "{} packets in 60 s", got.len());
        viewer.run(0.2, |_| false, |p| got.push(Got::of(p))).await;
        viewer_saw.send_replace(got.len());
    }
    // What was still on the way.
    viewer.run(0.5, |_| false, |p| got.push(Got::of(p))).await;
    let _second = publisher.await.unwrap();
    let ended = ended_rx.await.unwrap();

    // The first session's last packets are on their way when it ends; the second's start after
    // the pause.
    let (before, after): (Vec<&Got>, Vec<&Got>) =
        got.iter().partition(|g| g.at < ended + PAUSE / 2);
    assert!(before.len() >= 150, "{} packets before", before.len());
    // 75 frames of 3 packets; the viewer starts on the new session's first keyframe.
    assert!(
        after.len() >= 200,
        "{} packets of the second publisher session: the viewer's session did not go on",
        after.len()
    );
    assert!(
        got.iter().all(|g| g.ssrc == got[0].ssrc),
        "one SSRC throughout"
    );
    // Sequence numbers: one run without a hole or a repeat (loopback loses nothing).
    for w in got.windows(2) {
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "sequence numbers go on across the change"
        );
    }
    // Timestamps: forward by about the pause (the second session's frames start at zero).
    let last_before = before.last().unwrap();
    let first_after = after.first().unwrap();
    let step = first_after.ts.wrapping_sub(last_before.ts) as i32;
    let pause = (PAUSE.as_secs_f64() * 90_000.0) as i32;
    assert!(
        step >= pause && step < pause + 5 * 90_000,
        "timestamp step {step} across a pause of {pause} ticks"
    );
    for w in after.windows(2) {
        assert!(
            w[1].ts.wrapping_sub(w[0].ts) as i32 >= 0,
            "timestamps only go forward"
        );
    }
    assert_eq!(node.stats.viewer_rejoins.load(Ordering::Relaxed), 1);
    assert_eq!(
        node.stats.sessions.load(Ordering::Relaxed),
        1,
        "the viewer's session is the one it opened"
    );

    // A player whose media paused asks whether its session still lives: it does, across the
    // change; once ended (or on a node that never had it), 404.
    let whep = streamhub_media::webrtc::http::whep_router(
        node.clone(),
        current.clone(),
        Default::default(),
    );
    let ask = |id: String| {
        let whep = whep.clone();
        async move {
            let req = Request::get(format!("/whep/live/cam/{id}"))
                .body(Body::empty())
                .unwrap();
            whep.oneshot(req).await.unwrap().status()
        }
    };
    assert_eq!(ask(opened.id.to_string()).await, StatusCode::NO_CONTENT);
    assert_eq!(
        ask((opened.id ^ 1).to_string()).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(ask("x".into()).await, StatusCode::NOT_FOUND);
    assert!(node.close(opened.id));
    let deadline = Instant::now() + Duration::from_secs(10);
    while ask(opened.id.to_string()).await != StatusCode::NOT_FOUND {
        assert!(Instant::now() < deadline, "the ended session is gone");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
