//! Relay hop latency: the time from a frame pushed into a room on the origin side to the same
//! frame coming out of an edge's subscription, over real QUIC on loopback (mutual TLS, one
//! stream per group, the reorderer), at a 2.5 Mb/s-like stream (30 fps, 10 kB frames, a group
//! every 2 s). Baseline in the same run: the in-process hop alone (the room's broadcast to a
//! local consumer), so the figure isolates what the relay adds.
//!
//! `cargo bench -p streamhub-edge --bench relay_hop` (FRAMES=1800 by default: 60 s of video
//! pushed in real time).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use streamhub_cluster::transport::pki::{create_ca, issue_node_cert, CaBundle};
use streamhub_cluster::transport::{Endpoint, NodeIdentity};
use streamhub_media::relay::subscribe::Update;
use streamhub_media::relay::{RelayClient, RelayServer, RelaySource};
use streamhub_shared::media::{CodecConfig, MediaHandle, RoomMedia};
use streamhub_shared::relay::ErrorCode;
use streamhub_shared::{AppName, Frame, RoomName, TrackInfo};
use tokio_util::sync::CancellationToken;

fn endpoint(ca: &CaBundle, name: &str) -> Endpoint {
    let (cert, key) = issue_node_cert(ca, name, "origin").unwrap();
    let id = NodeIdentity::from_pem(ca.cert_pem.clone(), cert, key).unwrap();
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Endpoint::bind(local, &id, CancellationToken::new()).unwrap()
}

struct One(Mutex<Option<MediaHandle>>);

impl RelaySource for One {
    fn lookup(&self, _: &AppName, _: &RoomName) -> Result<MediaHandle, ErrorCode> {
        self.0.lock().unwrap().clone().ok_or(ErrorCode::UnknownRoom)
    }
}

fn frame(i: i64, t0: Instant) -> Frame {
    let mut data = BytesMut::with_capacity(10_000);
    data.put_u64(t0.elapsed().as_nanos() as u64);
    data.resize(10_000, 0x5a);
    Frame {
        track: 0,
        group: 0,
        dts: i * 3000,
        pts: i * 3000,
        keyframe: i % 60 == 0,
        data: data.freeze(),
    }
}

fn sent_at(data: &Bytes) -> u64 {
    u64::from_be_bytes(data[..8].try_into().unwrap())
}

fn report(name: &str, mut us: Vec<f64>) {
    us.sort_by(f64::total_cmp);
    let p = |q: f64| us[((us.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{name:<28} n={:<5} p50 {:>8.1} us  p90 {:>8.1} us  p99 {:>8.1} us  max {:>8.1} us",
        us.len(),
        p(0.5),
        p(0.9),
        p(0.99),
        us[us.len() - 1]
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let frames: i64 = std::env::var("FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1800);
    let ca = create_ca("bench").unwrap();
    let origin = endpoint(&ca, "origin-1");
    let source = Arc::new(One(Mutex::new(None)));
    let server = RelayServer::new(source.clone(), Arc::default());
    server.register(&origin);
    let mut media = RoomMedia::new();
    media.set_tracks(vec![TrackInfo {
        id: 0,
        timescale: 90_000,
        codec: CodecConfig::H264 {
            avcc: Bytes::from_static(&[1, 0x64, 0, 0x1f, 0xff, 0xe0]),
            width: 1280,
            height: 720,
        },
    }]);
    *source.0.lock().unwrap() = Some(media.handle());
    let t0 = Instant::now();
    media.push(frame(0, t0));
    let client = RelayClient::new(endpoint(&ca, "edge-1"), Arc::default());
    let (app, room) = (
        AppName::new("bench").unwrap(),
        RoomName::new("hop").unwrap(),
    );
    let mut sub = client
        .subscribe(origin.local_addr(), &app, &room)
        .await
        .unwrap();
    let mut local = media.subscribe();

    let relayed = tokio::spawn(async move {
        let mut out = Vec::new();
        while out.len() < frames as usize {
            match sub.next().await {
                Update::Frame(f) if f.dts > 0 => {
                    out.push((t0.elapsed().as_nanos() as u64 - sent_at(&f.data)) as f64 / 1000.0)
                }
                Update::Frame(_) | Update::Catalog(_) => {}
                other => panic!("{other:?}"),
            }
        }
        out
    });
    let in_process = tokio::spawn(async move {
        let mut out = Vec::new();
        while out.len() < frames as usize {
            let f = local.recv().await.unwrap();
            out.push((t0.elapsed().as_nanos() as u64 - sent_at(&f.data)) as f64 / 1000.0);
        }
        out
    });
    let mut tick = tokio::time::interval(Duration::from_micros(33_333));
    for i in 1..=frames {
        tick.tick().await;
        media.push(frame(i, t0));
    }
    let relayed = relayed.await.unwrap();
    let in_process = in_process.await.unwrap();
    println!("relay hop, {frames} frames of 10 kB at 30 fps (2.4 Mb/s), loopback QUIC:");
    report("in-process broadcast (base)", in_process);
    report("origin -> QUIC -> edge", relayed);
}
