//! Abuse from one client (or a handful of addresses) against a real origin, each while a real
//! publisher (ffmpeg over RTMP) and a real viewer (WebRTC over WHEP) keep working: the viewer's
//! packets are counted before, during and after the attack, and must keep coming.
//!
//! - 2,000 idle HTTP connections from one address: the per-address cap closes all but 256 at
//!   once, the header-read timeout closes those; the API and HLS answer others meanwhile.
//! - 1,000 RTMP connections from one address that never finish the handshake: the per-address
//!   cap closes all but 32 at once, the handshake deadline the rest; a new encoder gets in.
//! - A WHEP offer flood (valid SDP, never connecting) from 31 addresses: each address gets 16
//!   unconnected offers then 429, the node's viewer slots fill (503), and a WHIP publisher in
//!   Chromium still gets in (the publishers' share).
//! - 200 wrong logins per second from one address: 429 with `Retry-After` after the bound; the
//!   real administrator signs in from another address.
//! - RTMP chunks declaring 16 MiB messages before any stream key: each connection is closed
//!   after its header, and the node's memory does not grow by what was declared.
//! - Malformed SRT handshakes from one address (datagrams srt-protocol 0.4.4's parser panics
//!   on): an SRT publisher keeps publishing and the listener is never lost.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use streamhub_chaos_tests::procfs::rss_kib;

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use serde_json::json;
use streamhub_chaos_tests::ports::free_udp;
use streamhub_chaos_tests::require::{browser_available, has_command, require, BROWSER};
use streamhub_chaos_tests::whep::Viewer;
use streamhub_chaos_tests::{hls, poll, Api, Node, Publisher};
use streamhub_testkit::Origin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A live room with a WHEP viewer whose packets are counted in the background.
struct Watched {
    _publisher: Publisher,
    packets: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Watched {
    /// ffmpeg publishes `room` on `origin`; a viewer plays it over WHEP and counts packets.
    async fn start(origin: &Node, admin: &Api, room: &str) -> Watched {
        let key = admin.rtmp_ingress("live", room).await.unwrap();
        let publisher = Publisher::start(&origin.rtmp_url(&key));
        let whep = origin.url(&format!("/whep/live/{room}"));
        let mut viewer = poll("the room plays over WHEP", Duration::from_secs(30), || {
            let whep = whep.clone();
            async move {
                let mut v = Viewer::new().await;
                v.play(&reqwest::Client::new(), &whep, None)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(v)
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\nffmpeg: {}", publisher.stderr()));
        let packets = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (packets.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                viewer
                    .run(
                        0.2,
                        |_| false,
                        |_| {
                            p.fetch_add(1, Ordering::Relaxed);
                        },
                    )
                    .await;
            }
        });
        let w = Watched {
            _publisher: publisher,
            packets,
            stop,
            task,
        };
        w.assert_flowing("before the attack").await;
        w
    }

    /// The viewer receives packets within the next 10 s.
    async fn assert_flowing(&self, when: &str) {
        let start = self.packets.load(Ordering::Relaxed);
        poll(
            &format!("the viewer receives packets {when}"),
            Duration::from_secs(10),
            || {
                let now = self.packets.load(Ordering::Relaxed);
                async move {
                    (now >= start + 25)
                        .then_some(())
                        .ok_or(format!("{} packets", now - start))
                }
            },
        )
        .await
        .unwrap();
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
    }
}

async fn origin(args: &[&str]) -> (Origin, Api) {
    require("ffmpeg", has_command("ffmpeg") && has_command("ffprobe"));
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let origin = Origin::start_with(|cfg| cfg.args.extend(args)).await;
    let admin = origin.admin().await;
    (origin, admin)
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// Whether the peer closed `stream` within `within` (EOF or reset).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let drained = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, drained).await.is_ok()
}

fn attacker(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http_connections_from_one_address() {
    let (origin, admin) = origin(&[]).await;
    let watched = Watched::start(&origin, &admin, "cam").await;
    let http = origin.config().http;
    let mut held = Vec::new();
    let mut refused_at_once = 0;
    for _ in 0..2000 {
        match connect_from(attacker(9), http).await {
            Ok(s) => held.push(s),
            Err(_) => refused_at_once += 1,
        }
    }
    // Those over the cap are closed at once: see which.
    let mut open = Vec::new();
    for mut s in held {
        if closed_within(&mut s, Duration::from_millis(20)).await {
            refused_at_once += 1;
        } else {
            open.push(s);
        }
    }
    assert!(open.len() <= 256, "{} idle connections held", open.len());
    assert!(refused_at_once >= 2000 - 256, "{refused_at_once}");
    // Everyone else is served meanwhile: the API, HLS, and the viewer.
    let r = admin.get("/apps/live/rooms").await.unwrap();
    assert_eq!(r.status, 200);
    let playlist = origin.url("/hls/live/cam/index.m3u8");
    let (status, _) = streamhub_chaos_tests::hls::get_text(&playlist)
        .await
        .unwrap();
    assert_eq!(status, 200);
    watched
        .assert_flowing("while 256 idle connections are held")
        .await;
    // The held ones send no request: the header-read timeout (10 s) closes them.
    let started = Instant::now();
    for s in &mut open {
        let left = Duration::from_secs(40).saturating_sub(started.elapsed());
        assert!(
            closed_within(s, left).await,
            "an idle connection stayed open"
        );
    }
    // And the address may connect again.
    let mut again = connect_from(attacker(9), http).await.unwrap();
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    again.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    watched.assert_flowing("after").await;
    watched.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_connections_that_never_finish_the_handshake() {
    let (origin, admin) = origin(&[]).await;
    let watched = Watched::start(&origin, &admin, "cam").await;
    let rtmp = origin.config().rtmp;
    let mut held = Vec::new();
    for _ in 0..1000 {
        if let Ok(mut s) = connect_from(attacker(9), rtmp).await {
            // Half a C0+C1, then nothing.
            let _ = s.write_all(&[3; 700]).await;
            held.push(s);
        }
    }
    let mut open = Vec::new();
    for mut s in held {
        if !closed_within(&mut s, Duration::from_millis(20)).await {
            open.push(s);
        }
    }
    assert!(open.len() <= 32, "{} half handshakes held", open.len());
    // A real encoder gets in meanwhile, and the viewer plays on.
    let second = Watched::start(&origin, &admin, "cam2").await;
    watched
        .assert_flowing("while 32 half handshakes are held")
        .await;
    // The handshake deadline (5 s) closes the held ones.
    let started = Instant::now();
    for s in &mut open {
        let left = Duration::from_secs(30).saturating_sub(started.elapsed());
        assert!(closed_within(s, left).await, "a half handshake stayed open");
    }
    let refused = origin
        .metric("streamhub_rtmp_connections_refused_total")
        .await
        .unwrap();
    assert!(refused >= 900.0, "{refused}");
    watched.assert_flowing("after").await;
    second.stop().await;
    watched.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_offer_flood_leaves_room_for_publishers() {
    if !require(BROWSER, browser_available()) {
        return;
    }
    let (origin, admin) = origin(&["--webrtc-max-sessions", "100"]).await;
    let watched = Watched::start(&origin, &admin, "cam").await;
    // Valid offers that will never connect, from 31 addresses, 20 each.
    let offer = Viewer::new().await.offer();
    let whep = origin.url("/whep/live/cam");
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    let mut retry_after = None;
    for host in 10..41u8 {
        let client = reqwest::Client::builder()
            .local_address(attacker(host))
            .build()
            .unwrap();
        for _ in 0..20 {
            let r = client
                .post(&whep)
                .header("content-type", "application/sdp")
                .body(offer.clone())
                .send()
                .await
                .unwrap();
            if r.status() == 429 {
                retry_after = r.headers().get("retry-after").cloned();
            }
            *statuses.entry(r.status().as_u16()).or_default() += 1;
        }
    }
    println!("WHEP flood answers: {statuses:?}");
    // 100 sessions, 10 kept for publishers, one taken by the viewer: 89 offers answered, 16
    // per address (the first five addresses then get 429), then the node is full (503).
    assert_eq!(statuses.get(&201), Some(&89), "{statuses:?}");
    assert_eq!(statuses.get(&429), Some(&20), "{statuses:?}");
    assert_eq!(statuses.get(&503), Some(&(620 - 89 - 20)), "{statuses:?}");
    assert!(retry_after.is_some());
    watched.assert_flowing("during the offer flood").await;

    // A WHIP publisher in Chromium still gets in.
    let r = admin
        .post(
            "/apps/live/tokens",
            json!({"room": "phone", "identity": "phone-1", "canPublish": true}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let token = r.data()["token"].as_str().unwrap().to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/webrtc.mjs");
    let browser = tokio::process::Command::new("node")
        .arg(script)
        .args(["--whip", &origin.url("/whip/live/phone"), "--token", &token])
        .args(["--seconds", "6"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/browser"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node (and chromium + playwright-core, installed by .ci/run)");
    poll("the WHIP room is live", Duration::from_secs(30), || async {
        let r = admin
            .get("/apps/live/rooms")
            .await
            .map_err(|e| e.to_string())?;
        let live = r.data().as_array().is_some_and(|a| {
            a.iter()
                .any(|room| room["room"] == "phone" && room["publisher"]["protocol"] == "whip")
        });
        live.then_some(()).ok_or(format!("{:?}", r.data()))
    })
    .await
    .unwrap();
    let out = browser.wait_with_output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["publish"]["status"], 201, "{v}");
    watched.assert_flowing("after the flood").await;
    watched.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_logins_are_throttled_and_the_admin_still_signs_in() {
    let (origin, admin) = origin(&[]).await;
    let watched = Watched::start(&origin, &admin, "cam").await;
    let client = reqwest::Client::builder()
        .local_address(attacker(9))
        .build()
        .unwrap();
    let url = origin.url("/api/v1/auth/login");
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    let mut retry_after = None;
    // 200 a second for a second, concurrently.
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut inflight = tokio::task::JoinSet::new();
    for i in 0..200 {
        tick.tick().await;
        let (client, url) = (client.clone(), url.clone());
        inflight.spawn(async move {
            client
                .post(url)
                .json(&json!({"username": streamhub_chaos_tests::ADMIN_USER, "password": format!("guess-{i}")}))
                .send()
                .await
                .unwrap()
        });
    }
    while let Some(r) = inflight.join_next().await {
        let r = r.unwrap();
        if r.status() == 429 {
            retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
        }
        *statuses.entry(r.status().as_u16()).or_default() += 1;
    }
    println!("wrong logins: {statuses:?}");
    assert_eq!(statuses.get(&200), None);
    let checked =
        statuses.get(&401).copied().unwrap_or(0) + statuses.get(&503).copied().unwrap_or(0);
    assert!(checked <= 12, "{statuses:?}");
    assert!(
        statuses.get(&429).copied().unwrap_or(0) >= 188,
        "{statuses:?}"
    );
    assert!(
        retry_after.is_some_and(|s| (1..=60).contains(&s)),
        "{retry_after:?}"
    );
    // The real administrator, from another address.
    let real = streamhub_chaos_tests::Api::login(
        &origin.url(""),
        streamhub_chaos_tests::ADMIN_USER,
        streamhub_chaos_tests::ADMIN_PASS,
    )
    .await;
    assert!(real.is_ok(), "{:?}", real.err());
    watched.assert_flowing("after the guesses").await;
    watched.stop().await;
}

/// Handshakes as an RTMP client on `stream` (rml_rtmp's client handshake).
async fn rtmp_handshake(stream: &mut TcpStream) -> anyhow::Result<()> {
    let mut hs = Handshake::new(PeerType::Client);
    stream.write_all(&hs.generate_outbound_p0_and_p1()?).await?;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "closed during the handshake");
        match hs.process_bytes(&buf[..n])? {
            HandshakeProcessResult::InProgress { response_bytes } => {
                stream.write_all(&response_bytes).await?
            }
            HandshakeProcessResult::Completed { response_bytes, .. } => {
                stream.write_all(&response_bytes).await?;
                return Ok(());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_messages_declared_huge_before_a_key_are_refused() {
    let (origin, admin) = origin(&[]).await;
    let watched = Watched::start(&origin, &admin, "cam").await;
    let pid = origin.pid().unwrap();
    let rss_before = rss_kib(pid);
    let rtmp = origin.config().rtmp;
    let mut attacks = tokio::task::JoinSet::new();
    for i in 0..20u8 {
        attacks.spawn(async move {
            let mut s = connect_from(attacker(50 + i % 4), rtmp).await?;
            rtmp_handshake(&mut s).await?;
            // SetChunkSize(2^31-1): a whole message is one chunk from now on...
            s.write_all(&[2, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff])
                .await?;
            // ...and a video message of 16 MiB - 1, no stream key given.
            s.write_all(&[6, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0])
                .await?;
            let payload = vec![0x17u8; 64 * 1024];
            let mut sent = 0usize;
            while sent < 16 * 1024 * 1024 {
                match tokio::time::timeout(Duration::from_secs(10), s.write_all(&payload)).await {
                    Ok(Ok(())) => sent += payload.len(),
                    _ => break,
                }
            }
            let closed = closed_within(&mut s, Duration::from_secs(10)).await;
            anyhow::Ok((sent, closed))
        });
    }
    let mut max_sent = 0;
    while let Some(r) = attacks.join_next().await {
        let (sent, closed) = r.unwrap().unwrap();
        assert!(closed, "the connection stayed open");
        max_sent = max_sent.max(sent);
    }
    let rss_after = rss_kib(pid);
    println!("sent at most {max_sent} bytes; RSS {rss_before} KiB -> {rss_after} KiB");
    // What socket buffers take before the close is seen, never the 16 MiB declared.
    assert!(max_sent < 16 * 1024 * 1024, "{max_sent} bytes were taken");
    // 20 x 16 MiB declared: the node grew by far less (buffered whole, they would be 320 MiB).
    assert!(
        rss_after < rss_before + 48 * 1024,
        "RSS {rss_before} KiB -> {rss_after} KiB"
    );
    watched.assert_flowing("after").await;
    watched.stop().await;
}

/// An SRT v5 conclusion handshake (as a caller sends after the induction) carrying `ext` as its
/// extension blocks, or its first `cut` bytes.
fn srt_conclusion(ext: &[u8], flags: u16, cut: Option<usize>) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    p.extend_from_slice(&5u32.to_be_bytes()); // version
    p.extend_from_slice(&0u16.to_be_bytes()); // no encryption
    p.extend_from_slice(&flags.to_be_bytes()); // extension flags
    p.extend_from_slice(&1u32.to_be_bytes()); // initial sequence number
    p.extend_from_slice(&1500u32.to_be_bytes()); // MTU
    p.extend_from_slice(&8192u32.to_be_bytes()); // flow window
    p.extend_from_slice(&(-1i32).to_be_bytes()); // conclusion
    p.extend_from_slice(&0x0bad_cafeu32.to_be_bytes()); // socket id
    p.extend_from_slice(&0u32.to_be_bytes()); // SYN cookie
    p.extend_from_slice(&[127, 0, 0, 1]);
    p.extend_from_slice(&[0; 12]);
    p.extend_from_slice(ext);
    p.truncate(cut.unwrap_or(usize::MAX));
    p
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_srt_handshakes_leave_srt_publishers_running() {
    let srt = free_udp();
    let (origin, admin) = origin(&["--srt", &srt.to_string()]).await;
    assert!(matches!(
        admin.create_app("live").await.unwrap().status,
        201 | 409
    ));
    let r = admin
        .post(
            "/apps/live/ingress",
            json!({"type": "srt", "room": "srtcam"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let url = r.data()["url"].as_str().unwrap().to_string();
    let mut publisher = Publisher::start_srt(&url);
    let client = hls::client();
    let playlist = origin.url("/hls/live/srtcam/index.m3u8");
    hls::wait_segments(&client, &playlist, 2, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nffmpeg: {}", publisher.stderr()));

    // Each of these panicked srt-protocol 0.4.4's packet parser, inside the listener's task.
    let congestion = [0, 6, 0, 1, b'e', b'v', b'i', b'l'];
    let empty_group = [0, 8, 0, 0];
    let attacks = [
        srt_conclusion(&congestion, 4, None),
        srt_conclusion(&empty_group, 4, None),
        srt_conclusion(&[], 0, Some(30)),
    ];
    let socket = tokio::net::UdpSocket::bind(SocketAddr::new(attacker(11), 0))
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    let mut sent = 0;
    while Instant::now() < until {
        for a in &attacks {
            socket.send_to(a, srt).await.unwrap();
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("{sent} malformed SRT handshakes sent");

    // The publisher was never cut off: the playlist keeps growing from where it was.
    let last = |text: &str| hls::segments(text).last().copied().unwrap_or(0);
    let before = last(&String::from_utf8(hls::get_ok(&client, &playlist).await.unwrap()).unwrap());
    poll(
        "the SRT room keeps publishing",
        Duration::from_secs(20),
        || {
            let (client, playlist) = (client.clone(), playlist.clone());
            async move {
                let text = String::from_utf8(
                    hls::get_ok(&client, &playlist)
                        .await
                        .map_err(|e| e.to_string())?,
                )
                .map_err(|e| e.to_string())?;
                (last(&text) >= before + 2)
                    .then_some(())
                    .ok_or(format!("last segment {}", last(&text)))
            }
        },
    )
    .await
    .unwrap();
    assert!(!publisher.exited(), "{}", publisher.stderr());
    let metrics = reqwest::get(origin.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(&metrics, "streamhub_srt_listener_restarts_total"),
        Some(0),
        "the SRT listener was lost"
    );
    // Every one of them was refused before the parser (none reached its panics).
    assert_eq!(
        metric(&metrics, "streamhub_srt_parser_panics_total"),
        Some(0)
    );
    assert!(
        metric(&metrics, "streamhub_srt_datagrams_screened_total").unwrap_or(0) >= 100,
        "{metrics}"
    );
    // A new publisher still gets in.
    let r = admin
        .post(
            "/apps/live/ingress",
            json!({"type": "srt", "room": "second"}),
        )
        .await
        .unwrap();
    let mut second = Publisher::start_srt(r.data()["url"].as_str().unwrap());
    hls::wait_segments(
        &client,
        &origin.url("/hls/live/second/index.m3u8"),
        1,
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nffmpeg: {}", second.stderr()));
    second.stop();
    publisher.stop();
}
