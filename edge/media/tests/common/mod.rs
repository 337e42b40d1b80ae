#![allow(dead_code)] // each test binary uses part of it
//! What the media plane's WebRTC tests share besides the test kit's viewer: a node's WebRTC side
//! on loopback, and a room that sends synthetic H.264.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use streamhub_media::webrtc::{SendPath, WebRtc, WebRtcConfig};
use streamhub_shared::media::{CodecConfig, RoomMedia};
use streamhub_shared::{Frame, TrackInfo};
use tokio_util::sync::CancellationToken;

#[allow(unused_imports)]
pub use streamhub_testkit::whep::{rtp_seq, Viewer};

/// x264 640x360 High profile AVCDecoderConfigurationRecord.
pub const AVCC: &[u8] = &[
    0x01, 0x64, 0x00, 0x1e, 0xff, 0xe1, 0x00, 0x1a, 0x67, 0x64, 0x00, 0x1e, 0xac, 0xd9, 0x40, 0xa0,
    0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x32, 0x0f, 0x16,
    0x2d, 0x96, 0x01, 0x00, 0x06, 0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0, 0xfd, 0xf8, 0xf8, 0x00,
];

/// A node's WebRTC side on a loopback port.
pub async fn node(max_sessions: usize) -> Arc<WebRtc> {
    node_on(max_sessions, SendPath::default()).await
}

/// As [`node`], with viewers sent their media on `send_path`.
pub async fn node_on(max_sessions: usize, send_path: SendPath) -> Arc<WebRtc> {
    let config = WebRtcConfig {
        send_path,
        udp: "127.0.0.1:0".parse().unwrap(),
        public_ip: None,
        max_sessions,
        // One test address plays every client here.
        max_pending_per_address: usize::MAX,
        ..WebRtcConfig::default()
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
