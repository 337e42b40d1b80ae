#![allow(dead_code)] // each test binary uses part of it
//! A WHEP viewer for tests, on the `rtc` crate with its default interceptors (it NACKs what it
//! misses), driven from its own UDP socket; and a room that sends synthetic H.264.

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
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::sync::Arc;

use streamhub_edge::webrtc::{WebRtc, WebRtcConfig};
use streamhub_shared::media::{CodecConfig, RoomMedia};
use streamhub_shared::{Frame, TrackInfo};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// x264 640x360 High profile AVCDecoderConfigurationRecord.
pub const AVCC: &[u8] = &[
    0x01, 0x64, 0x00, 0x1e, 0xff, 0xe1, 0x00, 0x1a, 0x67, 0x64, 0x00, 0x1e, 0xac, 0xd9, 0x40, 0xa0,
    0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x32, 0x0f, 0x16,
    0x2d, 0x96, 0x01, 0x00, 0x06, 0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0, 0xfd, 0xf8, 0xf8, 0x00,
];

/// A node's WebRTC side on a loopback port.
pub async fn node(max_sessions: usize) -> Arc<WebRtc> {
    let config = WebRtcConfig {
        udp: "127.0.0.1:0".parse().unwrap(),
        public_ip: None,
        max_sessions,
    };
    WebRtc::bind(config, CancellationToken::new())
        .await
        .unwrap()
}

/// A room with one H.264 track (no frames yet).
pub fn h264_room() -> RoomMedia {
    let room = RoomMedia::new();
    room.set_tracks(vec![TrackInfo {
        id: 0,
        timescale: 90_000,
        codec: CodecConfig::H264 {
            avcc: Bytes::from_static(AVCC),
            width: 640,
            height: 360,
        },
    }]);
    room
}

/// Frame `i` of a 25 fps stream, keyframe every 50: one NALU of 3 KB (3 RTP packets).
pub fn frame(i: i64) -> Frame {
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
pub fn rtp_seq(d: &[u8]) -> Option<u16> {
    let pt = d.get(1)? & 0x7f;
    (d.len() >= 12 && d[0] >> 6 == 2 && (96..=127).contains(&pt))
        .then(|| u16::from_be_bytes([d[2], d[3]]))
}

/// One viewer: a receive-only video peer connection on its own socket.
pub struct Viewer {
    pub pc: RTCPeerConnection,
    socket: UdpSocket,
    local: SocketAddr,
    pub connected: bool,
}

impl Viewer {
    pub async fn new() -> Viewer {
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
        Viewer {
            pc,
            socket,
            local,
            connected: false,
        }
    }

    /// The SDP offer to POST.
    pub fn offer(&self) -> String {
        self.pc.local_description().unwrap().sdp
    }

    pub fn answer(&mut self, sdp: String) {
        let answer = RTCSessionDescription::answer(sdp).unwrap();
        self.pc
            .set_remote_description(Instant::now(), answer)
            .unwrap();
    }

    /// Runs the connection for `secs`: `lose` sees every datagram first (true: it is lost on
    /// the way), `rtp` every RTP packet that comes out.
    pub async fn run(
        &mut self,
        secs: f64,
        mut lose: impl FnMut(&[u8]) -> bool,
        mut rtp: impl FnMut(&rtc::rtp::Packet),
    ) {
        let mut buf = vec![0u8; 2048];
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
        loop {
            while let Some(msg) = self.pc.poll_write() {
                let _ = self
                    .socket
                    .try_send_to(&msg.message, msg.transport.peer_addr);
            }
            while let Some(ev) = self.pc.poll_event() {
                if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = ev {
                    self.connected |= s == RTCPeerConnectionState::Connected;
                }
            }
            while let Some(msg) = self.pc.poll_read() {
                if let RTCMessage::RtpPacket(_, p) = msg.message {
                    rtp(&p);
                }
            }
            let now = Instant::now();
            let wake = self
                .pc
                .poll_timeout()
                .unwrap_or(now + Duration::from_millis(50));
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return,
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    self.pc.handle_timeout(Instant::now()).unwrap();
                }
                r = self.socket.recv_from(&mut buf) => {
                    let (n, from): (usize, SocketAddr) = r.unwrap();
                    if lose(&buf[..n]) {
                        continue;
                    }
                    let _ = self.pc.handle_read(TaggedBytesMut {
                        now: Instant::now(),
                        transport: TransportContext {
                            local_addr: self.local,
                            peer_addr: from,
                            ecn: None,
                            transport_protocol: TransportProtocol::UDP,
                        },
                        message: BytesMut::from(&buf[..n]),
                    });
                }
            }
        }
    }
}
