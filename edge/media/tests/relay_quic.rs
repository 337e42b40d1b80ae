//! The relay over real QUIC on loopback: an origin-side `RelayServer` over an in-process room,
//! edge-side `RelayClient`s subscribing to it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use streamhub_cluster::transport::pki::{create_ca, issue_node_cert, CaBundle};
use streamhub_cluster::transport::{kinds, stream_service_fn, Endpoint, NodeIdentity};
use streamhub_media::relay::subscribe::Update;
use streamhub_media::relay::{RelayClient, RelayServer, RelaySource, RelayStats, SubscribeError};
use streamhub_shared::media::{CodecConfig, MediaHandle, RoomMedia};
use streamhub_shared::relay::{ControlMessage, ErrorCode, GroupHeader};
use streamhub_shared::{AppName, Frame, RoomName, TrackInfo};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(10);

fn identity(ca: &CaBundle, name: &str) -> NodeIdentity {
    let (cert, key) = issue_node_cert(ca, name, "origin").unwrap();
    NodeIdentity::from_pem(ca.cert_pem.clone(), cert, key).unwrap()
}

fn endpoint(ca: &CaBundle, name: &str) -> Endpoint {
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Endpoint::bind(local, &identity(ca, name), CancellationToken::new()).unwrap()
}

/// Rooms by name, as an origin's registry would hold them.
#[derive(Default)]
struct Rooms(Mutex<Vec<(RoomName, MediaHandle)>>);

impl RelaySource for Rooms {
    fn lookup(&self, _app: &AppName, room: &RoomName) -> Result<MediaHandle, ErrorCode> {
        let rooms = self.0.lock().unwrap();
        rooms
            .iter()
            .find(|(r, _)| r == room)
            .map(|(_, h)| h.clone())
            .ok_or(ErrorCode::UnknownRoom)
    }
}

fn tracks() -> Vec<TrackInfo> {
    vec![
        TrackInfo {
            id: 0,
            timescale: 90_000,
            codec: CodecConfig::H264 {
                avcc: Bytes::from_static(&[1, 0x64, 0, 0x1f, 0xff, 0xe0]),
                width: 320,
                height: 240,
            },
        },
        TrackInfo {
            id: 1,
            timescale: 48_000,
            codec: CodecConfig::Aac {
                asc: Bytes::from_static(&[0x11, 0x90]),
                sample_rate: 48_000,
                channels: 2,
            },
        },
    ]
}

/// Frame `i` of a 25 fps stream with a keyframe every second (groups of 2 s) and audio between.
fn frame(i: i64, size: usize) -> Frame {
    let video = i % 2 == 0;
    let n = i / 2;
    let mut data = BytesMut::new();
    data.put_i64(i);
    data.resize(size.max(8), 0xab);
    Frame {
        track: if video { 0 } else { 1 },
        group: 0,
        dts: if video { n * 3600 } else { n * 1920 },
        pts: if video { n * 3600 } else { n * 1920 },
        keyframe: video && n % 25 == 0,
        data: data.freeze(),
    }
}

struct Origin {
    endpoint: Endpoint,
    rooms: Arc<Rooms>,
    stats: Arc<RelayStats>,
    _server: Arc<RelayServer>,
}

fn origin(ca: &CaBundle) -> Origin {
    let endpoint = endpoint(ca, "origin-1");
    let rooms = Arc::new(Rooms::default());
    let stats = Arc::new(RelayStats::default());
    let server = RelayServer::new(rooms.clone(), stats.clone());
    server.register(&endpoint);
    Origin {
        endpoint,
        rooms,
        stats,
        _server: server,
    }
}

fn live_room(origin: &Origin, name: &str) -> RoomMedia {
    let media = RoomMedia::new();
    media.set_tracks(tracks());
    let mut rooms = origin.rooms.0.lock().unwrap();
    rooms.push((RoomName::new(name).unwrap(), media.handle()));
    media
}

fn names(room: &str) -> (AppName, RoomName) {
    (AppName::new("live").unwrap(), RoomName::new(room).unwrap())
}

async fn next_frame(sub: &mut streamhub_media::relay::Subscription) -> Frame {
    loop {
        match tokio::time::timeout(T, sub.next())
            .await
            .expect("an update in time")
        {
            Update::Frame(f) => return f,
            Update::Catalog(_) => continue,
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}

/// The next frames of `sub` are frames `range` of the room (100 per group), in the origin's
/// order and numbering.
async fn expect_frames(
    sub: &mut streamhub_media::relay::Subscription,
    range: std::ops::Range<i64>,
) {
    for i in range {
        let f = next_frame(sub).await;
        let want = frame(i, 200);
        assert_eq!(
            (f.track, f.dts, &f.data),
            (want.track, want.dts, &want.data),
            "frame {i}"
        );
        assert_eq!(f.group, (i / 100) as u64, "the origin's group numbers");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_subscriber_starts_on_the_latest_group_and_gets_every_frame_in_order() {
    let ca = create_ca("test").unwrap();
    let origin = origin(&ca);
    let mut media = live_room(&origin, "cam");
    // 1.5 groups before the edge subscribes
    let mut sent = Vec::new();
    for i in 0..150 {
        let f = frame(i, 200);
        media.push(f.clone());
        sent.push(f);
    }
    let client = RelayClient::new(endpoint(&ca, "edge-1"), Arc::default());
    let (app, room) = names("cam");
    let mut sub = client
        .subscribe(origin.endpoint.local_addr(), &app, &room)
        .await
        .unwrap();
    assert_eq!(sub.tracks, tracks());
    assert_eq!(
        sub.latest_group,
        Some(1),
        "frames 100.. are group 1 (the keyframe at 2 s)"
    );
    for i in 150..400 {
        media.push(frame(i, 200));
    }
    expect_frames(&mut sub, 100..400).await;
    drop(media);
    let end = tokio::time::timeout(T, sub.next()).await.unwrap();
    assert!(matches!(end, Update::Ended), "{end:?}");
    assert_eq!(origin.stats.subscribes.load(Ordering::Relaxed), 1);
    assert!(origin.stats.groups_sent.load(Ordering::Relaxed) >= 3);
    let per_peer = origin.stats.per_peer_bytes();
    assert_eq!(per_peer.len(), 1);
    assert_eq!(per_peer[0].0, "edge-1");
    assert!(per_peer[0].1 >= 300 * 221, "{per_peer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfilling_subscriber_gets_the_kept_groups_first_then_the_live_ones() {
    let ca = create_ca("test").unwrap();
    let origin = origin(&ca);
    let mut media = live_room(&origin, "cam");
    media.keep_history(3, streamhub_shared::media::HistoryBudget::new(usize::MAX));
    // Groups 0..=4 complete and half of group 5 before anyone subscribes.
    for i in 0..550 {
        media.push(frame(i, 200));
    }
    let client = RelayClient::new(endpoint(&ca, "edge-1"), Arc::default());
    let (app, room) = names("cam");
    let addr = origin.endpoint.local_addr();
    let mut sub = client
        .subscribe_with_backfill(addr, &app, &room, 6)
        .await
        .unwrap();
    assert_eq!(sub.latest_group, Some(2), "the oldest of the 3 groups kept");
    assert_eq!(sub.live_group, Some(5), "the newest group when it answered");
    let mut plain = client.subscribe(addr, &app, &room).await.unwrap();
    assert_eq!((plain.latest_group, plain.live_group), (Some(5), None));
    for i in 550..700 {
        media.push(frame(i, 200));
    }
    // Every frame from group 2's keyframe on, in the origin's order and numbering: the
    // back-filled groups, then the live ones, none twice.
    expect_frames(&mut sub, 200..700).await;
    let first = next_frame(&mut plain).await;
    assert_eq!(
        (first.group, first.dts),
        (5, 250 * 3600),
        "no back-fill asked, none sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_why_and_storms_are_bounded() {
    let ca = create_ca("test").unwrap();
    let origin = origin(&ca);
    let _media = live_room(&origin, "cam");
    let client = RelayClient::new(endpoint(&ca, "edge-1"), Arc::default());
    let addr = origin.endpoint.local_addr();
    let (app, room) = names("nope");
    match client.subscribe(addr, &app, &room).await {
        Err(SubscribeError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::UnknownRoom);
            assert!(message.contains("live/nope"), "{message}");
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    let (app, room) = names("cam");
    match client
        .subscribe_tracks(addr, &app, &room, Some(vec![0, 7]), 0)
        .await
    {
        Err(SubscribeError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::UnknownTrack);
            assert!(message.contains("no track 7"), "{message}");
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    let audio_only = client
        .subscribe_tracks(addr, &app, &room, Some(vec![1]), 0)
        .await
        .unwrap();
    assert_eq!(
        audio_only.tracks,
        vec![tracks()[1].clone()],
        "only the asked tracks"
    );
    drop(audio_only);
    // a subscribe storm on one (new) connection: the first 2048 are served, the rest refused
    let client = RelayClient::new(endpoint(&ca, "edge-2"), Arc::default());
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..2060 {
        match client.subscribe(addr, &app, &room).await {
            Ok(s) => held.push(s),
            Err(SubscribeError::Refused {
                code: ErrorCode::TooManySubscriptions,
                ..
            }) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((held.len(), refused), (2048, 12));
    drop(held);
    // slots come back once the subscriptions are gone
    let again = tokio::time::timeout(T, async {
        loop {
            if client.subscribe(addr, &app, &room).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    again.await.expect("a slot frees up after unsubscribing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_loses_old_groups_and_never_slows_another() {
    let ca = create_ca("test").unwrap();
    let origin = origin(&ca);
    let mut media = live_room(&origin, "cam");
    media.push(frame(0, 1000));
    let (app, room) = names("cam");
    let addr = origin.endpoint.local_addr();
    let stalled = RelayClient::new(endpoint(&ca, "edge-slow"), Arc::default());
    let _never_read = stalled.subscribe(addr, &app, &room).await.unwrap();
    let fast = RelayClient::new(endpoint(&ca, "edge-fast"), Arc::default());
    let mut sub = fast.subscribe(addr, &app, &room).await.unwrap();
    // ~64 MB in 16 groups of 4 MB: far more than the stalled edge's flow-control window
    // (32 MB). The producer stays at most ~1.5 groups ahead of what the fast edge has read, so
    // "fast" means "keeps up" however loaded the machine is (a reader that falls whole groups
    // behind rightly loses them too).
    let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = tokio::spawn({
        let read = read.clone();
        async move {
            let mut got = vec![next_frame(&mut sub).await];
            while got.len() < 1600 {
                got.push(next_frame(&mut sub).await);
                read.store(got.len(), Ordering::Relaxed);
            }
            got
        }
    });
    for i in 1..1600 {
        media.push(frame(i, 40_000));
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        while i as usize > read.load(Ordering::Relaxed) + 150 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let got = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the fast edge keeps up")
        .unwrap();
    let dts: Vec<(u32, i64)> = got.iter().map(|f| (f.track, f.dts)).collect();
    let want: Vec<(u32, i64)> = (0..1600)
        .map(|i| frame(i, 0))
        .map(|f| (f.track, f.dts))
        .collect();
    assert_eq!(dts, want, "no frame lost or reordered for the fast edge");
    let dropped = origin.stats.groups_dropped.load(Ordering::Relaxed);
    assert!(
        dropped > 0,
        "the stalled edge lost old groups instead of stalling the room"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_group_streams_are_refused_and_the_subscription_goes_on() {
    let ca = create_ca("test").unwrap();
    // A hostile "origin": answers the subscribe, then opens a garbage stream, a stream for an
    // unknown subscription, and a valid group.
    let bad = endpoint(&ca, "origin-bad");
    bad.register_stream(
        kinds::RELAY,
        stream_service_fn(|mut s| async move {
            let mut buf = BytesMut::new();
            let mut dec = streamhub_shared::relay::ControlDecoder::new();
            let request_id = loop {
                let chunk = s.recv.read_chunk(1024, true).await.unwrap().unwrap();
                buf.extend_from_slice(&chunk.bytes);
                if let Some(ControlMessage::Subscribe { request_id, .. }) =
                    dec.decode(&mut buf).unwrap()
                {
                    break request_id;
                }
            };
            let mut out = BytesMut::new();
            ControlMessage::Catalog {
                request_id,
                tracks: tracks(),
                latest_group: Some(0),
                live_group: None,
            }
            .encode(&mut out)
            .unwrap();
            s.send.write_all(&out).await.unwrap();
            let mut garbage = s.conn.open_uni().await.unwrap();
            garbage.write_all(&[0xff; 64]).await.unwrap();
            garbage.finish().unwrap();
            let mut unknown = s.conn.open_uni().await.unwrap();
            let mut h = BytesMut::new();
            GroupHeader {
                request_id: request_id + 1000,
                group: 0,
            }
            .encode(&mut h);
            unknown.write_all(&h).await.unwrap();
            unknown.finish().unwrap();
            let mut good = s.conn.open_uni().await.unwrap();
            let mut g = BytesMut::new();
            GroupHeader {
                request_id,
                group: 0,
            }
            .encode(&mut g);
            streamhub_shared::relay::encode_frame(&frame(0, 100), &mut g).unwrap();
            good.write_all(&g).await.unwrap();
            good.finish().unwrap();
            let _ = s.send.stopped().await;
        }),
    );
    let stats = Arc::new(RelayStats::default());
    let client = RelayClient::new(endpoint(&ca, "edge-1"), stats.clone());
    let (app, room) = names("cam");
    let mut sub = client
        .subscribe(bad.local_addr(), &app, &room)
        .await
        .unwrap();
    let f = next_frame(&mut sub).await;
    assert_eq!(f.data, frame(0, 100).data);
    let counted = tokio::time::timeout(T, async {
        while stats.malformed.load(Ordering::Relaxed) < 1
            || stats.unknown_streams.load(Ordering::Relaxed) < 1
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    counted.await.expect("the bad streams are counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyframe_request_from_an_edge_reaches_the_rooms_producer() {
    let ca = create_ca("test").unwrap();
    let origin = origin(&ca);
    let mut media = live_room(&origin, "cam");
    let mut requests = media.keyframe_requests();
    media.push(frame(0, 100));
    let client = RelayClient::new(endpoint(&ca, "edge-1"), Arc::default());
    let (app, room) = names("cam");
    let mut sub = client
        .subscribe(origin.endpoint.local_addr(), &app, &room)
        .await
        .unwrap();
    assert_eq!(next_frame(&mut sub).await.dts, 0);
    assert!(!requests.has_changed().unwrap(), "nobody asked yet");
    assert!(sub.request_keyframe().await);
    tokio::time::timeout(T, requests.changed())
        .await
        .expect("the request reaches the producer")
        .unwrap();
    assert_eq!(origin.stats.keyframe_requests.load(Ordering::Relaxed), 1);
    // The subscription goes on after the request.
    media.push(frame(2, 100));
    assert_eq!(next_frame(&mut sub).await.dts, 3600);
}
