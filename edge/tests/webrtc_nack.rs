//! NACK recovery on a real WHEP session: a node's `WebRtc` on a loopback UDP port sends a room's
//! H.264 to a viewer built on the `rtc` crate with its default interceptors (it NACKs what it
//! misses). The viewer throws away the first copy of every tenth video packet; the node must
//! resend each from its packet history, so the viewer ends with no hole in the sequence.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use rtc::interceptor::Registry;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use streamhub_edge::webrtc::{Role, WebRtc, WebRtcConfig};
use streamhub_shared::media::{CodecConfig, RoomMedia};
use streamhub_shared::{Frame, TrackInfo};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// x264 640x360 High profile AVCDecoderConfigurationRecord.
const AVCC: &[u8] = &[
    0x01, 0x64, 0x00, 0x1e, 0xff, 0xe1, 0x00, 0x1a, 0x67, 0x64, 0x00, 0x1e, 0xac, 0xd9, 0x40, 0xa0,
    0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x32, 0x0f, 0x16,
    0x2d, 0x96, 0x01, 0x00, 0x06, 0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0, 0xfd, 0xf8, 0xf8, 0x00,
];

/// Frame `i` of a 25 fps stream, keyframe every 50: one NALU of 3 KB (3 RTP packets).
fn frame(i: i64) -> Frame {
    let key = i % 50 == 0;
    let mut data = BytesMut::new();
    data.put_u32(3000);
    data.put_u8(if key { 0x65 } else { 0x41 });
    data.resize(3004, (i % 251) as u8);
    Frame {
        track: 0,
        group: 0,
        dts: i * 3600,
        pts: i * 3600,
        keyframe: key,
        data: data.freeze(),
    }
}

/// The RTP sequence number of a (S)RTP datagram of a dynamic payload type; RTCP, STUN and DTLS
/// are `None`. (SRTP leaves the header in the clear.)
fn rtp_seq(d: &[u8]) -> Option<u16> {
    let pt = d.get(1)? & 0x7f;
    (d.len() >= 12 && d[0] >> 6 == 2 && (96..=127).contains(&pt))
        .then(|| u16::from_be_bytes([d[2], d[3]]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_video_packets_are_resent_on_nack() {
    let node = WebRtc::bind(
        WebRtcConfig {
            udp: "127.0.0.1:0".parse().unwrap(),
            public_ip: None,
            max_sessions: 10,
        },
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let mut room = RoomMedia::new();
    room.set_tracks(vec![TrackInfo {
        id: 0,
        timescale: 90_000,
        codec: CodecConfig::H264 {
            avcc: Bytes::from_static(AVCC),
            width: 640,
            height: 360,
        },
    }]);
    room.push(frame(0));

    // The viewer: the rtc crate with its default interceptors (NACK generator included).
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = socket.local_addr().unwrap();
    let mut media = MediaEngine::default();
    media.register_default_codecs().unwrap();
    let registry = register_default_interceptors(Registry::new(), &mut media).unwrap();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build(Instant::now())
        .unwrap();
    let recv = RTCRtpTransceiverInit {
        direction: RTCRtpTransceiverDirection::Recvonly,
        ..Default::default()
    };
    pc.add_transceiver_from_kind(RtpCodecKind::Video, Some(recv))
        .unwrap();
    let offer = pc.create_offer(None).unwrap();
    pc.set_local_description(Instant::now(), offer).unwrap();
    let host = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: local.ip().to_string(),
            port: local.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .unwrap();
    pc.add_local_candidate(RTCIceCandidate::from(&host).to_json().unwrap())
        .unwrap();
    let sdp = pc.local_description().unwrap().sdp;
    let opened = node
        .open(
            &sdp,
            Role::Play {
                media: room.handle(),
                hold: None,
            },
            None,
        )
        .unwrap();
    pc.set_remote_description(
        Instant::now(),
        RTCSessionDescription::answer(opened.answer).unwrap(),
    )
    .unwrap();

    // 4 s of frames from the room while the viewer drops the first copy of every 10th packet.
    let pusher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(40));
        for i in 1..100 {
            tick.tick().await;
            room.push(frame(i));
        }
        room
    });
    let mut dropped = BTreeSet::new();
    let mut received = BTreeSet::new();
    let mut resent = 0;
    let mut first: Option<u16> = None;
    let mut connected = false;
    let mut buf = vec![0u8; 2048];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        while let Some(msg) = pc.poll_write() {
            let _ = socket.try_send_to(&msg.message, msg.transport.peer_addr);
        }
        while let Some(ev) = pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = ev {
                connected |= s == RTCPeerConnectionState::Connected;
            }
        }
        while let Some(msg) = pc.poll_read() {
            if let RTCMessage::RtpPacket(_, p) = msg.message {
                if !received.insert(p.header.sequence_number) {
                    panic!("sequence number {} twice", p.header.sequence_number);
                }
                if dropped.contains(&p.header.sequence_number) {
                    resent += 1;
                }
            }
        }
        let now = Instant::now();
        let wake = pc.poll_timeout().unwrap_or(now + Duration::from_millis(50));
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                pc.handle_timeout(Instant::now()).unwrap();
            }
            r = socket.recv_from(&mut buf) => {
                let (n, from): (usize, SocketAddr) = r.unwrap();
                if let Some(seq) = rtp_seq(&buf[..n]) {
                    first.get_or_insert(seq);
                    if seq % 10 == 3 && dropped.insert(seq) {
                        continue; // lost on the way (the first copy only)
                    }
                }
                let _ = pc.handle_read(TaggedBytesMut {
                    now: Instant::now(),
                    transport: TransportContext {
                        local_addr: local,
                        peer_addr: from,
                        ecn: None,
                        transport_protocol: TransportProtocol::UDP,
                    },
                    message: BytesMut::from(&buf[..n]),
                });
            }
        }
    }
    let _room = pusher.await.unwrap();
    assert!(connected, "the viewer connected");
    // ~100 frames of 3 packets, ~30 of them dropped once.
    assert!(received.len() >= 250, "{} packets", received.len());
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
