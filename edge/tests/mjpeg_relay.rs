//! MJPEG through the relay: a JPEG track published on an origin-side relay server (real QUIC on
//! loopback), pulled by an edge's `Pulls` on demand and served by the edge's MJPEG routes over
//! real HTTP. The JPEGs are made by ffmpeg at test time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use streamhub_cluster::query::{StateAnswer, StateQuery};
use streamhub_cluster::state::{ClusterState, NodeLoad, NodeRecord, NodeRole, Placement};
use streamhub_cluster::transport::pki::{create_ca, issue_node_cert, CaBundle};
use streamhub_cluster::transport::{kinds, service_fn, Endpoint, NodeIdentity, RemoteError};
use streamhub_edge::origins::Origins;
use streamhub_edge::pull::Pulls;
use streamhub_media::hls::{HlsConfig, HlsRegistry};
use streamhub_media::mjpeg::{self, MediaLookup, MjpegStats, Viewing, BOUNDARY};
use streamhub_media::relay::{RelayClient, RelayServer, RelaySource};
use streamhub_shared::media::{CodecConfig, MediaHandle, RoomMedia};
use streamhub_shared::relay::ErrorCode;
use streamhub_shared::{AppName, Frame, RoomName, TrackInfo};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn identity(ca: &CaBundle, name: &str) -> NodeIdentity {
    let (cert, key) = issue_node_cert(ca, name, "origin").unwrap();
    NodeIdentity::from_pem(ca.cert_pem.clone(), cert, key).unwrap()
}

fn endpoint(ca: &CaBundle, name: &str) -> Endpoint {
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Endpoint::bind(local, &identity(ca, name), CancellationToken::new()).unwrap()
}

/// `n` JPEGs of `size` from ffmpeg's test source, each a different picture.
fn jpegs(n: usize, size: &str, quality: &str) -> Vec<Bytes> {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi"])
        .args(["-i", &format!("testsrc=size={size}")])
        .args(["-frames:v", &n.to_string(), "-q:v", quality])
        .arg(dir.path().join("%03d.jpg"))
        .status()
        .expect("run ffmpeg (apt-get install ffmpeg)");
    assert!(status.success());
    (1..=n)
        .map(|i| Bytes::from(std::fs::read(dir.path().join(format!("{i:03}.jpg"))).unwrap()))
        .collect()
}

/// An origin: a relay server for one room and the state queries an edge asks.
struct Origin {
    endpoint: Endpoint,
    media: Mutex<Option<MediaHandle>>,
}

impl RelaySource for Origin {
    fn lookup(&self, _app: &AppName, _room: &RoomName) -> Result<MediaHandle, ErrorCode> {
        self.media
            .lock()
            .unwrap()
            .clone()
            .ok_or(ErrorCode::UnknownRoom)
    }
}

fn start_origin(ca: &CaBundle) -> Arc<Origin> {
    let origin = Arc::new(Origin {
        endpoint: endpoint(ca, "origin-1"),
        media: Mutex::new(None),
    });
    let server = RelayServer::new(origin.clone(), Arc::default());
    server.register(&origin.endpoint);
    std::mem::forget(server); // lives for the whole test
                              // The tenant state an origin would answer from: one node, one placement.
    let mut state = ClusterState::default();
    let me = NodeRecord {
        name: "origin-1".into(),
        id: 1,
        role: NodeRole::Origin,
        region: "local".into(),
        http_url: "http://127.0.0.1:1".into(),
        rtmp_url: None,
        cluster_addr: origin.endpoint.local_addr().to_string(),
        version: "0".into(),
        load: NodeLoad::default(),
        registered_at_ms: 0,
        last_heartbeat_ms: 0,
        cert_fingerprint: None,
        draining_since_ms: None,
        boot: 0,
        draining_boot: 0,
    };
    state.registry.nodes.insert(me.name.clone(), me);
    let (app, room) = (
        AppName::new("cams").unwrap(),
        RoomName::new("door").unwrap(),
    );
    state.placements.rooms.insert(
        streamhub_cluster::state::room_key(&app, &room),
        Placement {
            app,
            room,
            node: "origin-1".into(),
            epoch: 1,
            lease_ms: u64::MAX / 4,
            lease_until_ms: u64::MAX / 2,
            since_ms: 0,
        },
    );
    origin.endpoint.register(
        kinds::STATE_QUERY,
        service_fn(move |_, body: Bytes| {
            let state = state.clone();
            async move {
                let q: StateQuery = serde_json::from_slice(&body)
                    .map_err(|e| RemoteError::new("bad_request", e.to_string()))?;
                let a: StateAnswer = q.answer(&state, 1000);
                Ok(Bytes::from(serde_json::to_vec(&a).unwrap()))
            }
        }),
    );
    origin
}

struct EdgeMedia(Arc<Pulls>);

impl MediaLookup for EdgeMedia {
    fn media(
        &self,
        app: &AppName,
        room: &RoomName,
        client: SocketAddr,
    ) -> BoxFuture<'static, Option<Viewing>> {
        let (pulls, app, room) = (self.0.clone(), app.clone(), room.clone());
        Box::pin(async move {
            let p = pulls.open(&app, &room, client).await?;
            Some(Viewing {
                media: p.media()?,
                hold: Some(Box::new(p.hold())),
            })
        })
    }
}

/// An edge serving MJPEG over HTTP on a free port; returns its base URL.
async fn start_edge(ca: &CaBundle, origin: &Origin) -> (String, Arc<MjpegStats>) {
    start_edge_with(ca, origin, Default::default()).await
}

async fn start_edge_with(
    ca: &CaBundle,
    origin: &Origin,
    limits: mjpeg::StreamLimits,
) -> (String, Arc<MjpegStats>) {
    let ep = endpoint(ca, "edge-1");
    let origins = Origins::new(
        ep.clone(),
        vec![origin.endpoint.local_addr().to_string()],
        None,
    );
    let hls = Arc::new(HlsRegistry::new(HlsConfig::default(), Arc::default()));
    let relay = RelayClient::new(ep, Arc::default());
    let pulls = Pulls::new(
        origins,
        relay,
        hls,
        Duration::from_secs(5),
        TaskTracker::new(),
        CancellationToken::new(),
    );
    let stats = Arc::new(MjpegStats::default());
    let app = mjpeg::router(Arc::new(EdgeMedia(pulls)), stats.clone(), limits);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    (format!("http://{addr}/live/cams/door"), stats)
}

fn jpeg_track(width: u16, height: u16) -> Vec<TrackInfo> {
    vec![TrackInfo {
        id: 0,
        timescale: 90_000,
        codec: CodecConfig::Jpeg { width, height },
    }]
}

fn picture(i: i64, data: Bytes) -> Frame {
    Frame {
        track: 0,
        group: 0,
        dts: i * 9000,
        pts: i * 9000,
        keyframe: true,
        data,
    }
}

/// Splits a multipart body into its parts' payloads (complete ones only).
fn parts(body: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = body;
    let marker = format!("--{BOUNDARY}\r\n");
    while let Some(start) = find(rest, marker.as_bytes()) {
        let after = &rest[start + marker.len()..];
        let Some(head_end) = find(after, b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&after[..head_end]).to_string();
        assert!(head.contains("Content-Type: image/jpeg"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.trim().parse().ok())
            .expect("content length");
        let data = &after[head_end + 4..];
        if data.len() < len + 2 {
            break;
        }
        assert_eq!(&data[len..len + 2], b"\r\n");
        out.push(data[..len].to_vec());
        rest = &data[len + 2..];
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_jpeg_track_plays_as_mjpeg_and_frame_jpg_on_the_edge() {
    let ca = create_ca("test").unwrap();
    let origin = start_origin(&ca);
    let pictures = jpegs(40, "320x240:rate=10", "5");
    let mut media = RoomMedia::new();
    media.set_tracks(jpeg_track(320, 240));
    *origin.media.lock().unwrap() = Some(media.handle());
    media.push(picture(0, pictures[0].clone()));
    let limits = mjpeg::StreamLimits {
        per_node: 100,
        per_client: 1,
    };
    let (base, stats) = start_edge_with(&ca, &origin, limits).await;
    let http = reqwest::Client::new();

    // frame.jpg: the latest picture, byte for byte.
    let resp = http.get(format!("{base}/frame.jpg")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/jpeg");
    assert_eq!(resp.bytes().await.unwrap(), pictures[0]);

    // The multipart stream delivers pictures as they are published at 10 fps, in order (a viewer
    // that falls behind skips to the newest picture, as documented: no repeats, no going back).
    let mut stream = http.get(format!("{base}/mjpeg")).send().await.unwrap();
    assert!(stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("multipart/x-mixed-replace; boundary="));
    let second = http.get(format!("{base}/mjpeg")).send().await.unwrap();
    assert_eq!(second.status(), 503, "one stream per client address here");
    let publisher = tokio::spawn(async move {
        for (i, p) in pictures.iter().enumerate().skip(1) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            media.push(picture(i as i64, p.clone()));
        }
        (media, pictures)
    });
    let mut body = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        while parts(&body).len() < 6 {
            body.extend_from_slice(&stream.chunk().await.unwrap().expect("stream goes on"));
        }
        parts(&body)
    })
    .await
    .expect("six pictures in time");
    let (media, pictures) = publisher.await.unwrap();
    let index: HashMap<&[u8], usize> = pictures
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_ref(), i))
        .collect();
    let seq: Vec<usize> = got
        .iter()
        .map(|p| *index.get(p.as_slice()).expect("a picture that was sent"))
        .collect();
    assert!(
        seq.windows(2).all(|w| w[1] > w[0]),
        "pictures in order, none twice: {seq:?}"
    );
    let newest = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let b = http
                .get(format!("{base}/frame.jpg"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            if b == pictures[39] {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    newest
        .await
        .expect("frame.jpg follows the stream to its last picture");
    assert!(stats.frames_out.load(std::sync::atomic::Ordering::Relaxed) >= 6);

    // Unknown rooms and bad names.
    let other = base.replace("/door", "/nope");
    assert_eq!(
        http.get(format!("{other}/frame.jpg"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let bad = base.replace("/door", "/Door");
    assert_eq!(
        http.get(format!("{bad}/mjpeg"))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    drop(media);
}

/// Resident memory of this process, from /proc.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_never_reads_does_not_grow_memory() {
    let ca = create_ca("test").unwrap();
    let origin = start_origin(&ca);
    // A big picture (~0.5 MB) sent over and over: 400 of them are 200 MB through the relay.
    let big = jpegs(1, "1920x1080:rate=10,noise=alls=60:allf=t", "2").remove(0);
    assert!(big.len() > 200_000, "{}", big.len());
    let mut media = RoomMedia::new();
    media.set_tracks(jpeg_track(1920, 1080));
    *origin.media.lock().unwrap() = Some(media.handle());
    media.push(picture(0, big.clone()));
    let (base, stats) = start_edge(&ca, &origin).await;
    // A viewer that asks for the stream and then never reads a byte.
    let addr = base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let req = format!("GET /live/cams/door/mjpeg HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stalled.write_all(req.as_bytes()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while stats.streams.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the stalled viewer's stream is open");
    let http = reqwest::Client::new();
    let before = rss_bytes();
    // Two rounds of 400 pictures: what the node holds is bounded by its windows and queues
    // (the first round fills them), so the second round must not add to it.
    let mut after = Vec::new();
    for round in 0..2 {
        // The round's last picture differs from the others (a byte of its entropy-coded data
        // flipped), so the test knows when the edge has had the whole round.
        let mut last = big.to_vec();
        let n = last.len();
        last[n - 100] ^= 0x5a;
        let last = bytes::Bytes::from(last);
        for i in 1..=400 {
            let p = if i == 400 { last.clone() } else { big.clone() };
            media.push(picture(round * 400 + i, p));
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // The edge got the whole round (frame.jpg is its last picture) while the viewer read
        // nothing.
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let b = http
                    .get(format!("{base}/frame.jpg"))
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                if b == last {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the round's last picture reaches the edge");
        after.push(rss_bytes());
    }
    let (first, second) = (
        after[0].saturating_sub(before),
        after[1].saturating_sub(after[0]),
    );
    println!(
        "RSS grew {} MB over the first {} MB of pictures past a stalled viewer, {} MB over the next {} MB",
        first >> 20,
        (400 * big.len()) >> 20,
        second >> 20,
        (400 * big.len()) >> 20
    );
    assert!(first < 160 << 20, "memory grew by {} MB", first >> 20);
    assert!(
        second < 32 << 20,
        "memory keeps growing: {} MB more",
        second >> 20
    );
    drop(stalled);
}

/// A viewer that arrives while another viewer's pull of a cold room is still connecting waits
/// for it, as the first does: answered at once, it found no media yet and was told the room is
/// not live (seen as a few 404s per run of `whep_bench`, in any protocol).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_arriving_while_the_pull_connects_waits_for_it() {
    let ca = create_ca("test").unwrap();
    let origin = start_origin(&ca);
    let mut media = RoomMedia::new();
    media.set_tracks(jpeg_track(320, 240));
    *origin.media.lock().unwrap() = Some(media.handle());
    media.push(picture(
        0,
        Bytes::from_static(b"\xff\xd8not-a-real-jpeg\xff\xd9"),
    ));
    let ep = endpoint(&ca, "edge-1");
    let origins = Origins::new(
        ep.clone(),
        vec![origin.endpoint.local_addr().to_string()],
        None,
    );
    let hls = Arc::new(HlsRegistry::new(HlsConfig::default(), Arc::default()));
    let pulls = Pulls::new(
        origins,
        RelayClient::new(ep, Arc::default()),
        hls,
        Duration::from_secs(5),
        TaskTracker::new(),
        CancellationToken::new(),
    );
    let (app, room) = (
        AppName::new("cams").unwrap(),
        RoomName::new("door").unwrap(),
    );
    let first = {
        let (pulls, app, room) = (pulls.clone(), app.clone(), room.clone());
        tokio::spawn(async move {
            let client: SocketAddr = "10.0.0.1:1000".parse().unwrap();
            pulls.open(&app, &room, client).await
        })
    };
    // The second viewer comes as soon as the first one's pull exists (its QUIC connection to
    // the origin is still being made).
    tokio::time::timeout(Duration::from_secs(5), async {
        while pulls.list().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the first viewer starts a pull");
    let client: SocketAddr = "10.0.0.2:1000".parse().unwrap();
    let second = pulls
        .open(&app, &room, client)
        .await
        .expect("the room is live");
    assert!(
        second.media().is_some(),
        "the second viewer got the room before its pull had connected"
    );
    let first = first.await.unwrap().expect("the room is live");
    assert!(first.media().is_some());
    drop(media);
}
