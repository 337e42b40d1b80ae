//! Property-based fuzzing of what a node parses from viewers and API clients, seeded from real
//! captures made here: a WebRTC offer made by the `rtc` crate's peer connection (as the test
//! kit's viewers send it), the STUN binding request a real session sends to the media port,
//! and a JSON body an API client sends. Each seed is checked to parse first, then mutated;
//! nothing may panic, and bad input is an error value.
//!
//! A short run is part of `cargo test`; a long one:
//! `PROPTEST_CASES=100000 cargo test --release -p streamhub-media --test parsers_fuzz`.

mod common;

use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::extract::FromRequest;
use proptest::prelude::*;
use streamhub_media::http::Json;
use streamhub_media::webrtc::mux::Routes;
use streamhub_media::webrtc::sdp::offer_codecs;

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
