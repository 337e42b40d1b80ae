//! An app with a quota of one publisher: while ffmpeg publishes into one room, a second room is
//! refused on every ingest protocol with the reason where its client can see it: RTMP (ffmpeg
//! fails, the origin logs `rtmp publish refused ... reason=quota: ...`), WHIP (HTTP 429, JSON
//! envelope whose message starts `quota:`), WebSocket-MJPEG (the upgrade succeeds, then Close
//! 4429 with the reason). None of the refused attempts takes the slot; once the first publisher
//! stops, the second room gets in over RTMP. And the `ingresses` quota: at its limit the next
//! `POST /apps/:app/ingress` is 429 `too_many_requests` and nothing is created.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use streamhub_chaos_tests::require::{has_command, require};
use streamhub_chaos_tests::{chaos_seed, hls, poll, Api, Cluster, Publisher};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// `GET /apps/q/quotas` (must answer 200): the quotas with their `usage`.
async fn quotas(admin: &Api) -> Value {
    let r = admin.get("/apps/q/quotas").await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    r.data().clone()
}

/// Waits until `usage.<what>` of app q is `want`.
async fn wait_usage(admin: &Api, what: &str, want: u64, timeout: Duration) -> Value {
    poll(&format!("usage.{what} == {want}"), timeout, || async {
        let r = admin
            .get("/apps/q/quotas")
            .await
            .map_err(|e| e.to_string())?;
        if r.data()["usage"][what] == json!(want) {
            Ok(r.data().clone())
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await
    .unwrap()
}

/// A WHIP offer as a publishing browser makes it: one send-only H.264 (packetization-mode=1)
/// video section, with a host candidate, made by the `rtc` crate.
fn sendonly_h264_offer() -> String {
    use rtc::peer_connection::configuration::media_engine::{MediaEngine, MIME_TYPE_H264};
    use rtc::peer_connection::configuration::RTCConfigurationBuilder;
    use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
    use rtc::peer_connection::RTCPeerConnectionBuilder;
    use rtc::rtp_transceiver::rtp_sender::{
        RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
    };
    use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};

    let mut media = MediaEngine::default();
    media.register_default_codecs().unwrap();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .build(Instant::now())
        .unwrap();
    let send = RTCRtpTransceiverInit {
        direction: RTCRtpTransceiverDirection::Sendonly,
        streams: vec![],
        send_encodings: vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(0x5157_1701),
                ..Default::default()
            },
            codec: RTCRtpCodec {
                mime_type: MIME_TYPE_H264.to_owned(),
                clock_rate: 90000,
                channels: 0,
                sdp_fmtp_line:
                    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
                        .to_owned(),
                rtcp_feedback: vec![],
            },
            ..Default::default()
        }],
    };
    pc.add_transceiver_from_kind(RtpCodecKind::Video, Some(send))
        .unwrap();
    let offer = pc.create_offer(None).unwrap();
    pc.set_local_description(Instant::now(), offer).unwrap();
    let host = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: "127.0.0.1".to_owned(),
            port: 40000,
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .unwrap();
    pc.add_local_candidate(RTCIceCandidate::from(&host).to_json().unwrap())
        .unwrap();
    pc.local_description().unwrap().sdp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_quota_refuses_every_protocol() {
    require("ffmpeg", has_command("ffmpeg"));
    let c = Cluster::start(1, chaos_seed()).await;
    let admin = c.admin(0).await;
    let origin = &c.nodes[0];

    let key_a = admin.rtmp_ingress("q", "a").await.unwrap();
    let key_b = admin.rtmp_ingress("q", "b").await.unwrap();
    let r = admin
        .post("/apps/q/ws-ingest", json!({"room": "c"}))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let device_key = r.data()["streamKey"].as_str().unwrap().to_string();
    let ws_url = r.data()["wsUrl"].as_str().unwrap().to_string();

    // The quota, and its usage (nothing live yet; three ingresses).
    let r = admin
        .send(
            admin
                .request(reqwest::Method::PUT, "/apps/q/quotas")
                .json(&json!({"publishers": 1})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.data()["publishers"], json!(1), "{r:?}");
    let q = quotas(&admin).await;
    assert_eq!(q["publishers"], json!(1), "{q}");
    for unlimited in ["liveRooms", "viewers", "ingestKbps", "ingresses"] {
        assert!(q.get(unlimited).is_none(), "{unlimited} is unlimited: {q}");
    }
    assert_eq!(q["usage"]["publishers"], json!(0), "{q}");
    assert_eq!(q["usage"]["ingresses"], json!(3), "{q}");

    // Publisher A goes live in room a.
    let mut pub_a = Publisher::start(&origin.rtmp_url(&key_a));
    let http = hls::client();
    hls::wait_segments(
        &http,
        &origin.url("/hls/q/a/index.m3u8"),
        1,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let q = wait_usage(&admin, "publishers", 1, Duration::from_secs(10)).await;
    assert_eq!(q["usage"]["liveRooms"], json!(1), "{q}");
    c.note("publisher A live in q/a");

    // RTMP: ffmpeg into room b is refused; the origin logs why.
    let mut pub_b = Publisher::start(&origin.rtmp_url(&key_b));
    let (status, ran) = pub_b
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("ffmpeg into room b is refused and exits");
    assert!(
        !status.success(),
        "ffmpeg into a room past the quota must fail ({status}, ran {ran:?}): {}",
        pub_b.stderr()
    );
    let refusal = poll(
        "the RTMP refusal in the origin log",
        Duration::from_secs(10),
        || async {
            origin
                .log_of_current_run()
                .lines()
                .find(|l| l.contains("rtmp publish refused") && l.contains("quota:"))
                .map(String::from)
                .ok_or_else(|| "no refusal line yet".to_string())
        },
    )
    .await
    .unwrap();
    assert!(
        refusal.contains("reason=quota: app q has 1 of 1 publishers"),
        "{refusal}"
    );
    c.note(format!("RTMP into q/b refused after {ran:?}: {refusal}"));

    // WHIP: a valid send-only H.264 offer with room b's stream key -> 429 with the reason.
    let offer = sendonly_h264_offer();
    assert!(offer.contains("a=sendonly") && offer.contains("packetization-mode=1"));
    let resp = http
        .post(origin.url("/whip/q/b"))
        .bearer_auth(&key_b)
        .header("content-type", "application/sdp")
        .body(offer)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap_or(Value::Null);
    assert_eq!(status, 429, "WHIP into q/b past the quota: {body}");
    assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("quota:") && message.contains("publishers"),
        "{body}"
    );
    c.note(format!("WHIP into q/b refused: {message}"));

    // WebSocket-MJPEG: the upgrade succeeds, then the server closes with 4429 and the reason.
    let mut req = ws_url.as_str().into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {device_key}").parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("the device's upgrade succeeds (the refusal comes in the Close frame)");
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(frame)) => return frame,
                Ok(_) => continue,
                Err(e) => panic!("the device's socket failed before a Close: {e}"),
            }
        }
        panic!("the socket ended without a Close frame")
    })
    .await
    .expect("a Close within 10 s")
    .expect("a Close frame with a code");
    assert_eq!(u16::from(close.code), 4429, "{close:?}");
    assert!(
        close.reason.starts_with("quota:") && close.reason.contains("publishers"),
        "{close:?}"
    );
    c.note(format!("WebSocket into q/c closed: {close:?}"));

    // None of the refused attempts holds a slot.
    let q = quotas(&admin).await;
    assert_eq!(q["usage"]["publishers"], json!(1), "{q}");
    assert_eq!(q["usage"]["liveRooms"], json!(1), "{q}");

    // Publisher A stops: the slot frees and room b gets in over RTMP.
    pub_a.stop();
    c.note("publisher A stopped");
    wait_usage(&admin, "publishers", 0, Duration::from_secs(30)).await;
    let mut pub_b = Publisher::start(&origin.rtmp_url(&key_b));
    hls::wait_segments(
        &http,
        &origin.url("/hls/q/b/index.m3u8"),
        1,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(!pub_b.exited(), "ffmpeg into q/b: {}", pub_b.stderr());
    wait_usage(&admin, "publishers", 1, Duration::from_secs(10)).await;
    c.note("room b live over RTMP once the slot was free");

    // The ingresses quota at the current count: the next ingress is refused, nothing created.
    let before = quotas(&admin).await["usage"]["ingresses"].as_u64().unwrap();
    let listed = admin.get("/apps/q/ingress").await.unwrap();
    assert_eq!(listed.status, 200, "{listed:?}");
    let listed_before = listed.data().as_array().unwrap().len();
    let r = admin
        .send(
            admin
                .request(reqwest::Method::PUT, "/apps/q/quotas")
                .json(&json!({"publishers": 1, "ingresses": before})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.data()["ingresses"], json!(before), "{r:?}");
    let r = admin
        .post("/apps/q/ingress", json!({"type": "rtmp", "room": "d"}))
        .await
        .unwrap();
    assert_eq!(r.status, 429, "an ingress past the quota: {r:?}");
    assert_eq!(r.error_code(), Some("too_many_requests"), "{r:?}");
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("quota:") && message.contains("ingresses"),
        "{r:?}"
    );
    let q = quotas(&admin).await;
    assert_eq!(q["usage"]["ingresses"], json!(before), "{q}");
    let listed = admin.get("/apps/q/ingress").await.unwrap();
    assert_eq!(
        listed.data().as_array().unwrap().len(),
        listed_before,
        "nothing was created: {listed:?}"
    );
    assert!(
        !listed
            .data()
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["room"] == "d"),
        "{listed:?}"
    );
    c.note(format!(
        "ingress refused at {before} of {before}: {message}"
    ));
}
