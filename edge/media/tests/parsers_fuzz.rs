//! Property-based fuzzing of what a node parses from viewers, publishers and API clients, seeded
//! from real captures made here: a WebRTC offer made by the `rtc` crate's peer connection (as
//! the test kit's viewers send it), the STUN binding request a real session sends to the media
//! port, the RTCP a viewer sends once its SRTP is up (receiver report, NACK, PLI, FIR, as the
//! `rtc` crate marshals them) into the same parser and keyframe check the session uses, the
//! H.264 RTP packets ffmpeg sends (captured from its RTP muxer) into the WHIP depacketizer, and
//! a JSON body an API client sends. Each seed is checked to parse first, then mutated; nothing
//! may panic, and bad input is an error value.
//!
//! A short run is part of `cargo test`; a long one:
//! `PROPTEST_CASES=100000 cargo test --release -p streamhub-media --test parsers_fuzz`.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::FromRequest;
use proptest::prelude::*;
use streamhub_media::http::Json;
use streamhub_media::webrtc::ingest::{Ingest, IngestSink};
use streamhub_media::webrtc::is_keyframe_request;
use streamhub_media::webrtc::mux::Routes;
use streamhub_media::webrtc::sdp::offer_codecs;
use streamhub_shared::media::{Frame, TrackInfo};
use streamhub_testkit::require::{has_command, require};

fn offer() -> &'static str {
    static OFFER: OnceLock<String> = OnceLock::new();
    OFFER.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { common::Viewer::new().await.offer() })
    })
}

/// A STUN binding request as a WebRTC session's ICE agent sends it to `ufrag`'s session.
fn binding_request(ufrag: &str) -> Vec<u8> {
    let user = format!("{ufrag}:remote");
    let mut attr = Vec::new();
    attr.extend_from_slice(&0x0006u16.to_be_bytes());
    attr.extend_from_slice(&(user.len() as u16).to_be_bytes());
    attr.extend_from_slice(user.as_bytes());
    while attr.len() % 4 != 0 {
        attr.push(0);
    }
    let mut msg = vec![0x00, 0x01];
    msg.extend_from_slice(&(attr.len() as u16).to_be_bytes());
    msg.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    msg.extend_from_slice(&[7; 12]);
    msg.extend_from_slice(&attr);
    msg
}

/// A compound RTCP packet as a viewer's receiver sends it: a receiver report, a NACK, a PLI and
/// a FIR for the video it receives.
fn rtcp_seed() -> Vec<u8> {
    use rtc::rtcp::payload_feedbacks::full_intra_request::{FirEntry, FullIntraRequest};
    use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    use rtc::rtcp::receiver_report::ReceiverReport;
    use rtc::rtcp::reception_report::ReceptionReport;
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
    let packets: Vec<Box<dyn rtc::rtcp::Packet>> = vec![
        Box::new(ReceiverReport {
            ssrc: 0x1111,
            reports: vec![ReceptionReport {
                ssrc: 0x2222,
                fraction_lost: 3,
                total_lost: 17,
                last_sequence_number: 70_000,
                jitter: 90,
                last_sender_report: 0x1234_5678,
                delay: 655,
            }],
            ..Default::default()
        }),
        Box::new(TransportLayerNack {
            sender_ssrc: 0x1111,
            media_ssrc: 0x2222,
            nacks: vec![NackPair {
                packet_id: 4000,
                lost_packets: 0b101,
            }],
        }),
        Box::new(PictureLossIndication {
            sender_ssrc: 0x1111,
            media_ssrc: 0x2222,
        }),
        Box::new(FullIntraRequest {
            sender_ssrc: 0x1111,
            media_ssrc: 0x2222,
            fir: vec![FirEntry {
                ssrc: 0x2222,
                sequence_number: 1,
            }],
        }),
    ];
    rtc::rtcp::packet::marshal(&packets).unwrap().to_vec()
}

/// What the session does with a viewer's RTCP: parse the datagram, look for keyframe requests.
fn viewer_rtcp(data: &[u8]) -> Option<bool> {
    let packets = rtc::rtcp::packet::unmarshal(&mut &data[..]).ok()?;
    Some(packets.iter().any(|p| is_keyframe_request(p.as_ref())))
}

/// The RTP packets ffmpeg's RTP muxer sends for 2 s of 320x240 H.264 (one keyframe, FU-A for
/// the large slices), captured on a local UDP socket.
fn rtp_capture() -> &'static [Vec<u8>] {
    static RTP: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    RTP.get_or_init(|| {
        require("ffmpeg", has_command("ffmpeg"));
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let port = socket.local_addr().unwrap().port();
        let mut ffmpeg = Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-loglevel", "error"])
            .args([
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=320x240:rate=25",
                "-t",
                "2",
            ])
            .args(["-c:v", "libx264", "-preset", "veryfast", "-g", "50"])
            .args(["-pix_fmt", "yuv420p", "-payload_type", "102", "-f", "rtp"])
            .arg(format!("rtp://127.0.0.1:{port}?pkt_size=1200"))
            .stdout(Stdio::null())
            .spawn()
            .expect("ffmpeg");
        let mut packets = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = socket.recv(&mut buf) {
            packets.push(buf[..n].to_vec());
        }
        assert!(ffmpeg.wait().unwrap().success());
        assert!(packets.len() > 50, "{} RTP packets", packets.len());
        packets
    })
}

/// Counts what the WHIP depacketizer hands its room.
#[derive(Clone, Default)]
struct Counted(Arc<Mutex<(usize, usize)>>);

impl IngestSink for Counted {
    fn set_tracks(&mut self, _: Vec<TrackInfo>) {
        self.0.lock().unwrap().0 += 1;
    }
    fn push(&mut self, _: Frame) {
        self.0.lock().unwrap().1 += 1;
    }
}

/// Feeds RTP datagrams to a WHIP session's H.264 depacketizer as the session does (parsed by
/// `rtc`, then sequence number, timestamp, marker and payload); returns (catalogs, frames).
fn through_whip(packets: &[Vec<u8>]) -> (usize, usize) {
    let seen = Counted::default();
    let mut ingest = Ingest::new(Box::new(seen.clone()), Duration::ZERO, false);
    for raw in packets {
        let Ok(p) =
            <rtc::rtp::packet::Packet as rtc::shared::marshal::Unmarshal>::unmarshal(&mut &raw[..])
        else {
            continue;
        };
        let _ = ingest.video(
            p.header.sequence_number,
            p.header.timestamp,
            p.header.marker,
            &p.payload,
        );
    }
    let counts = *seen.0.lock().unwrap();
    counts
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct Body {
    room: String,
    identity: Option<String>,
    can_publish: Option<bool>,
    ttl: Option<u64>,
}

const BODY: &str = r#"{"room":"cam","identity":"phone-1","canPublish":true,"ttl":3600}"#;

fn json(body: Vec<u8>) -> Result<Json<Body>, streamhub_media::http::ApiError> {
    let req = axum::http::Request::builder()
        .method("POST")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body))
        .unwrap();
    futures::executor::block_on(Json::<Body>::from_request(req, &()))
}

#[test]
fn the_seeds_parse() {
    let codecs = offer_codecs(offer()).unwrap();
    assert!(codecs.video && codecs.h264, "{codecs:?}");
    let mut routes = Routes::default();
    routes.insert(7, "abcd".into(), ());
    let from: SocketAddr = "198.51.100.1:5000".parse().unwrap();
    assert_eq!(
        routes.route(from, &binding_request("abcd")).map(|r| r.0),
        Some(7)
    );
    // Once known, the address routes anything to its session.
    assert_eq!(routes.route(from, &[0x80, 0x60]).map(|r| r.0), Some(7));
    assert_eq!(json(BODY.as_bytes().to_vec()).unwrap().0.room, "cam");
    assert_eq!(viewer_rtcp(&rtcp_seed()), Some(true));
    // 2 s at 25 fps: one catalog, every frame out of the depacketizer.
    assert_eq!(through_whip(rtp_capture()), (1, 50));
}

fn mutate(seed: &[u8], edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
    let mut data = seed.to_vec();
    for &(at, byte) in edits {
        let n = data.len();
        data[at % n] = byte;
    }
    data.truncate(cut.max(1).min(data.len()));
    data
}

proptest! {
    #[test]
    fn mutated_offers(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..32),
        cut in any::<usize>(),
    ) {
        let seed = offer().as_bytes();
        let data = mutate(seed, &edits, seed.len() - cut % seed.len());
        let _ = offer_codecs(&String::from_utf8_lossy(&data));
    }

    #[test]
    fn arbitrary_offers(text in ".{0,2000}") {
        let _ = offer_codecs(&text);
    }

    #[test]
    fn datagrams_from_anyone(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..16),
        raw in proptest::collection::vec(any::<u8>(), 0..1500),
        port in 1u16..,
    ) {
        let mut routes = Routes::default();
        routes.insert(1, "abcd".into(), ());
        let from = SocketAddr::from(([198, 51, 100, 2], port));
        let stun = mutate(&binding_request("abcd"), &edits, usize::MAX);
        let _ = routes.route(from, &stun);
        let _ = routes.route(from, &raw);
        // A stranger's datagram never reaches a session by itself.
        let stranger = SocketAddr::from(([203, 0, 113, 9], port));
        if !raw.starts_with(&[0, 1]) {
            prop_assert!(routes.route(stranger, &raw).is_none());
        }
    }

    #[test]
    fn rtcp_from_viewers(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..16),
        cut in any::<usize>(),
        raw in proptest::collection::vec(any::<u8>(), 0..1500),
    ) {
        let seed = rtcp_seed();
        let _ = viewer_rtcp(&mutate(&seed, &edits, seed.len() - cut % seed.len()));
        let _ = viewer_rtcp(&raw);
    }

    #[test]
    fn rtp_from_publishers(
        edits in proptest::collection::vec((any::<usize>(), any::<usize>(), any::<u8>()), 0..32),
        drop_at in any::<usize>(),
        raw in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1300), 0..8),
    ) {
        let mut packets = rtp_capture().to_vec();
        let n = packets.len();
        for &(which, at, byte) in &edits {
            let p = &mut packets[which % n];
            let len = p.len();
            p[at % len] = byte;
        }
        packets.remove(drop_at % n);
        let (_, frames) = through_whip(&packets);
        prop_assert!(frames <= 50);
        let _ = through_whip(&raw);
    }

    #[test]
    fn json_bodies(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..16),
        cut in any::<usize>(),
        raw in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let seed = BODY.as_bytes();
        let _ = json(mutate(seed, &edits, seed.len() - cut % seed.len()));
        let _ = json(raw);
    }
}
