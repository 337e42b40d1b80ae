//! The public surface over TLS, with real clients.
//!
//! - Certificate files: an origin serves HTTPS beside a plain port that redirects to it (but
//!   `/healthz`), and RTMPS with the same certificate. ffmpeg publishes over RTMPS, curl and
//!   ffprobe read it over HTTPS, an edge joins over HTTPS (its join client trusting the test CA
//!   only through `--join-ca-root`) and serves the room as HLS (ffprobe) and over WHEP in
//!   Chromium, both over HTTPS. ffmpeg publishes MPEG-TS over SRT (encrypted, the URL as the
//!   ingress gives it), and that room plays on the edge the same way; a wrong passphrase is
//!   refused. A WebSocket camera publishes over `wss://` (the URL its ingress gives) and its
//!   pictures come out of the origin's MJPEG over HTTPS. The certificate files are replaced
//!   while the node runs: new
//!   connections get the new certificate, no restart.
//! - ACME: a real ACME server (Debian's `pebble`, with its own CA, and `pebble-challtestsrv` as
//!   its DNS) issues the origin's certificate over TLS-ALPN-01; curl and ffprobe check it
//!   against pebble's root; the certificate lives 30 s, so the node renews it while the test
//!   watches, and clients see the new one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use streamhub_chaos_tests::camera::{jpegs, Camera};
use streamhub_chaos_tests::ports::{free_tcp, free_udp};
use streamhub_chaos_tests::require::{browser_available, has_command, require, BROWSER};
use streamhub_chaos_tests::{
    hls, poll, Api, Join, Node, NodeConfig, Publisher, Role, Timeline, ADMIN_PASS, ADMIN_USER,
};

/// A test CA and what it signs.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl TestCa {
    fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "streamhub test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let pem = cert.pem();
        TestCa {
            issuer: Issuer::from_ca_cert_pem(&pem, key).unwrap(),
            pem,
        }
    }

    /// A certificate and key for `names` (DNS names or IP addresses), PEM.
    fn issue(&self, names: &[&str], cn: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(path: &Path, text: &str) {
    // Written beside and renamed: the node never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The leaf certificate `addr` presents for `name`, checked against `root`.
async fn served_certificate(addr: SocketAddr, name: &str, root: &str) -> anyhow::Result<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root.as_bytes()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = connector
        .connect(ServerName::try_from(name.to_string())?, tcp)
        .await?;
    let (_, conn) = tls.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| anyhow::anyhow!("no certificate"))?;
    Ok(leaf.to_vec())
}

fn pem_der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// `curl --cacert root` of `url`: status code and body (`resolve`: `host:port:ip`).
fn curl(url: &str, root: &Path, resolve: Option<&str>) -> (String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--cacert"])
        .arg(root)
        .args(["-w", "\n%{http_code}"]);
    if let Some(r) = resolve {
        cmd.args(["--resolve", r]);
    }
    let out = cmd.arg(url).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.to_string(),
        format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

fn https_client(root: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes()).unwrap())
        .build()
        .unwrap()
}

/// Chromium plays `whep` (over HTTPS with the test CA) and decodes frames.
async fn chromium_plays(whep: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/webrtc.mjs");
    let out = tokio::process::Command::new("node")
        .arg(script)
        .args(["--whep", whep])
        .args(["--seconds", "6", "--insecure"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/browser"))
        .kill_on_drop(true)
        .output()
        .await
        .expect("node (and chromium + playwright-core, installed by .ci/run)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "browser: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["play"]["status"], 201, "{whep}: {v}");
    assert!(
        v["play"]["framesDecoded"].as_u64().unwrap() >= 25,
        "{whep}: {v}"
    );
}

fn tools_ok() -> bool {
    require(
        "ffmpeg, ffprobe and curl",
        has_command("ffmpeg") && has_command("ffprobe") && has_command("curl"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_rtmps_hls_and_whep_over_https() {
    if !tools_ok() || !require(BROWSER, browser_available()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_file = dir.path().join("ca.pem");
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let (cert, key) = ca.issue(&["127.0.0.1", "localhost"], "first");
    write(&cert_file, &cert);
    write(&key_file, &key);
    let tls_args = |https: SocketAddr| -> Vec<String> {
        vec![
            "--https".into(),
            https.to_string(),
            "--public-url".into(),
            format!("https://{https}"),
            "--tls-cert".into(),
            cert_file.display().to_string(),
            "--tls-key".into(),
            key_file.display().to_string(),
        ]
    };
    let timeline = Arc::new(Timeline::quiet());
    let origin_https = free_tcp();
    let rtmps = free_tcp();
    let srt = free_udp();
    let mut cfg = NodeConfig::new("origin-1", dir.path());
    cfg.args = tls_args(origin_https);
    cfg.args.extend(["--rtmps".into(), rtmps.to_string()]);
    cfg.args.extend(["--srt".into(), srt.to_string()]);
    let origin = Node::start(cfg, timeline.clone()).await.unwrap();
    let base = format!("https://{origin_https}");

    // Plain HTTP redirects (but for health checks); HTTPS answers, checked against the CA.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = plain
        .get(origin.url("/api/v1/apps?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], format!("{base}/api/v1/apps?x=1"));
    let (code, body) = curl(&format!("{base}/healthz"), &ca_file, None);
    assert_eq!(code, "200", "{body}");

    // The API over HTTPS: the ingress answer has the RTMPS URL.
    let admin = Api::with_client(&base, https_client(&ca.pem))
        .sign_in(ADMIN_USER, ADMIN_PASS)
        .await
        .unwrap();
    assert_eq!(admin.create_app("live").await.unwrap().status, 201);
    let r = admin
        .post("/apps/live/ingress", json!({"type": "rtmp", "room": "cam"}))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let rtmps_url = r.data()["rtmpsUrl"].as_str().unwrap().to_string();
    assert_eq!(
        rtmps_url,
        format!("rtmps://127.0.0.1:{}/live", rtmps.port())
    );
    let key = r.data()["streamKey"].as_str().unwrap().to_string();

    // ffmpeg publishes over RTMPS; the room plays over HTTPS (ffprobe).
    let mut publisher = Publisher::start(&format!("{rtmps_url}/{key}"));
    let playlist = format!("{base}/hls/live/cam/index.m3u8");
    let client = https_client(&ca.pem);
    hls::wait_segments(&client, &playlist, 2, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nffmpeg: {}", publisher.stderr()));
    let probe = playlist.clone();
    let codecs = tokio::task::spawn_blocking(move || hls::ffprobe_codecs(&probe))
        .await
        .unwrap()
        .unwrap();
    assert!(codecs.iter().any(|c| c == "h264"), "{codecs:?}");
    let (code, body) = curl(&playlist, &ca_file, None);
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("#EXTM3U"), "{body}");

    // An edge joins over HTTPS, trusting the test CA by --join-ca-root only, and serves the
    // room over HTTPS: HLS to ffprobe, WHEP to Chromium.
    let token = admin.join_token("edge").await.unwrap();
    let edge_https = free_tcp();
    let mut cfg = NodeConfig::new("edge-1", dir.path());
    cfg.role = Role::Edge;
    cfg.args = tls_args(edge_https);
    cfg.args
        .extend(["--join-ca-root".into(), ca_file.display().to_string()]);
    cfg.join = Some(Join {
        url: base.clone(),
        token,
    });
    let edge = Node::start(cfg, timeline.clone())
        .await
        .unwrap_or_else(|e| panic!("edge joins over HTTPS: {e:#}"));
    let edge_base = format!("https://{edge_https}");
    let edge_playlist = format!("{edge_base}/hls/live/cam/index.m3u8");
    hls::wait_segments(&client, &edge_playlist, 2, Duration::from_secs(30))
        .await
        .unwrap();
    let probe = edge_playlist.clone();
    let frames = tokio::task::spawn_blocking(move || hls::ffmpeg_decode_frames(&probe, 2))
        .await
        .unwrap()
        .unwrap();
    assert!(frames > 0, "{frames} frames decoded");
    chromium_plays(&format!("{edge_base}/whep/live/cam")).await;

    // A WebSocket camera over wss:// (the ingress answer says so), its pictures out of the
    // origin's MJPEG over HTTPS.
    let r = admin
        .post("/apps/live/ws-ingest", json!({"room": "door"}))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let ws_url = r.data()["wsUrl"].as_str().unwrap().to_string();
    assert_eq!(
        ws_url,
        format!("wss://{origin_https}/ingest/ws?app=live&room=door")
    );
    let camera = Camera::start_tls(
        &ws_url,
        r.data()["streamKey"].as_str().unwrap(),
        jpegs(10, "320x240"),
        10,
        &ca.pem,
    )
    .await;
    let mjpeg = format!("{base}/live/live/door/mjpeg");
    let pictures = poll(
        "MJPEG over HTTPS from a wss camera",
        Duration::from_secs(20),
        || {
            let (mjpeg, ca_file) = (mjpeg.clone(), ca_file.clone());
            async move {
                let out = tokio::process::Command::new("curl")
                    .args(["-sS", "--max-time", "3", "--cacert"])
                    .arg(&ca_file)
                    .arg(&mjpeg)
                    .output()
                    .await
                    .map_err(|e| e.to_string())?;
                let body = String::from_utf8_lossy(&out.stdout);
                let n = body.matches("--streamhub-mjpeg-frame").count();
                (n >= 5).then_some(n).ok_or(format!(
                    "{n} pictures; {}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        },
    )
    .await
    .unwrap();
    assert!(camera.sent.load(std::sync::atomic::Ordering::Relaxed) > 0);
    println!("{pictures} pictures over HTTPS from the wss camera");
    drop(camera);

    // SRT: an ingress gives the complete URL (stream id and passphrase); ffmpeg publishes
    // MPEG-TS to it; the room plays on the edge as HLS (H.264 and AAC) and over WHEP.
    let r = admin
        .post(
            "/apps/live/ingress",
            json!({"type": "srt", "room": "srtcam"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let srt_url = r.data()["url"].as_str().unwrap().to_string();
    let srt_key = r.data()["streamKey"].as_str().unwrap().to_string();
    assert!(
        srt_url.starts_with(&format!(
            "srt://127.0.0.1:{}?streamid=publish:{srt_key}&passphrase=",
            srt.port()
        )),
        "{srt_url}"
    );
    let mut srt_publisher = Publisher::start_srt(&srt_url);
    let srt_playlist = format!("{edge_base}/hls/live/srtcam/index.m3u8");
    hls::wait_segments(&client, &srt_playlist, 2, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nffmpeg: {}", srt_publisher.stderr()));
    let probe = srt_playlist.clone();
    let mut codecs = tokio::task::spawn_blocking(move || hls::ffprobe_codecs(&probe))
        .await
        .unwrap()
        .unwrap();
    codecs.sort();
    codecs.dedup();
    assert_eq!(
        codecs,
        vec!["aac", "h264"],
        "the SRT room over HLS on the edge"
    );
    chromium_plays(&format!("{edge_base}/whep/live/srtcam")).await;
    // A wrong passphrase does not get in; the room plays on.
    let wrong = srt_url.replace("passphrase=", "passphrase=0000");
    let mut intruder = Publisher::start_srt(&wrong);
    let (status, _) = intruder
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("ffmpeg with a wrong passphrase gives up");
    assert!(!status.success());
    assert!(!srt_publisher.exited(), "{}", srt_publisher.stderr());
    srt_publisher.stop();

    // New certificate files: new connections get them, no restart.
    let before = served_certificate(origin_https, "127.0.0.1", &ca.pem)
        .await
        .unwrap();
    assert_eq!(before, pem_der(&cert));
    let (cert2, key2) = ca.issue(&["127.0.0.1", "localhost"], "second");
    write(&key_file, &key2);
    write(&cert_file, &cert2);
    let want = pem_der(&cert2);
    poll(
        "the new certificate is served",
        Duration::from_secs(30),
        || {
            let want = want.clone();
            let ca = ca.pem.clone();
            async move {
                let got = served_certificate(origin_https, "127.0.0.1", &ca)
                    .await
                    .map_err(|e| e.to_string())?;
                (got == want)
                    .then_some(())
                    .ok_or("still the old one".to_string())
            }
        },
    )
    .await
    .unwrap();
    let (code, body) = curl(&playlist, &ca_file, None);
    assert_eq!(code, "200", "{body}");
    assert!(!publisher.exited(), "{}", publisher.stderr());
    publisher.stop();
    drop(edge);
}

/// A running pebble and its DNS.
struct Pebble {
    children: Vec<Child>,
    directory: String,
    /// pebble's issuing root (PEM).
    root: String,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `pebble-challtestsrv` (every name is 127.0.0.1) and `pebble` validating TLS-ALPN-01
/// on `tls_port`, issuing certificates valid `validity_secs`; its HTTPS uses a certificate of
/// `ca`.
async fn pebble(dir: &Path, ca: &TestCa, tls_port: u16, validity_secs: u64) -> Pebble {
    let (cert, key) = ca.issue(&["127.0.0.1", "localhost"], "pebble");
    let (cert_file, key_file) = (dir.join("pebble.pem"), dir.join("pebble.key"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let (listen, management, dns) = (free_tcp(), free_tcp(), free_tcp());
    let config = json!({"pebble": {
        "listenAddress": listen.to_string(),
        "managementListenAddress": management.to_string(),
        "certificate": cert_file,
        "privateKey": key_file,
        "httpPort": free_tcp().port(),
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
        "certificateValidityPeriod": validity_secs,
    }});
    let config_file = dir.join("pebble.json");
    std::fs::write(&config_file, config.to_string()).unwrap();
    let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
    let dns_server = Command::new("pebble-challtestsrv")
        .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
        .args(["-dns01", &format!("127.0.0.1:{}", dns.port())])
        .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
        .args(["-management", &free_tcp().to_string()])
        .stdout(Stdio::from(log("challtestsrv.log")))
        .stderr(Stdio::from(log("challtestsrv.err")))
        .spawn()
        .expect("pebble-challtestsrv (apt-get install pebble)");
    let server = Command::new("pebble")
        .arg("-config")
        .arg(&config_file)
        .args(["-dnsserver", &format!("127.0.0.1:{}", dns.port())])
        // No random sleeps before validations, no rejected nonces: a test, not a stress.
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(Stdio::from(log("pebble.log")))
        .stderr(Stdio::from(log("pebble.err")))
        .spawn()
        .expect("pebble (apt-get install pebble)");
    let mut p = Pebble {
        children: vec![dns_server, server],
        directory: format!("https://{listen}/dir"),
        root: String::new(),
    };
    let client = https_client(&ca.pem);
    let roots = format!("https://{management}/roots/0");
    p.root = poll("pebble is up", Duration::from_secs(20), || {
        let (client, roots) = (client.clone(), roots.clone());
        async move {
            let r = client.get(&roots).send().await.map_err(|e| e.to_string())?;
            r.text().await.map_err(|e| e.to_string())
        }
    })
    .await
    .unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_certificate_from_pebble_is_served_and_renewed() {
    if !tools_ok()
        || !require(
            "pebble and pebble-challtestsrv (apt-get install pebble)",
            Path::new("/usr/bin/pebble").exists()
                && Path::new("/usr/bin/pebble-challtestsrv").exists(),
        )
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let https = free_tcp();
    // 30 s certificates: the node renews at two thirds of their life, while the test runs.
    let acme = pebble(dir.path(), &ca, https.port(), 30).await;
    let root_file = dir.path().join("pebble-root.pem");
    std::fs::write(&root_file, &acme.root).unwrap();
    let mut cfg = NodeConfig::new("origin-1", dir.path());
    let public = format!("https://localhost:{}", https.port());
    cfg.args = vec![
        "--https".into(),
        https.to_string(),
        "--public-url".into(),
        public.clone(),
        "--acme-domain".into(),
        "localhost".into(),
        "--acme-email".into(),
        "ops@example.com".into(),
        "--acme-directory".into(),
        acme.directory.clone(),
        "--acme-ca-root".into(),
        ca_file.display().to_string(),
    ];
    let origin = Node::start(cfg, Arc::new(Timeline::quiet())).await.unwrap();
    let resolve = format!("localhost:{}:127.0.0.1", https.port());
    let health = format!("{public}/healthz");
    poll(
        "curl trusts the ACME certificate",
        Duration::from_secs(60),
        || {
            let (health, root_file, resolve) = (health.clone(), root_file.clone(), resolve.clone());
            async move {
                let (code, body) =
                    tokio::task::spawn_blocking(move || curl(&health, &root_file, Some(&resolve)))
                        .await
                        .unwrap();
                (code == "200").then_some(()).ok_or(body)
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", origin.log_tail(40)));
    let first = served_certificate(https, "localhost", &acme.root)
        .await
        .unwrap();

    // ffprobe reads a live room over the ACME certificate (published over plain RTMP).
    let admin = Api::with_client(&public, {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(acme.root.as_bytes()).unwrap())
            .resolve("localhost", https)
            .build()
            .unwrap()
    })
    .sign_in(ADMIN_USER, ADMIN_PASS)
    .await
    .unwrap();
    let key = admin.rtmp_ingress("live", "cam").await.unwrap();
    let mut publisher = Publisher::start(&origin.rtmp_url(&key));
    let playlist = format!("https://127.0.0.1:{}/hls/live/cam/index.m3u8", https.port());
    let insecure_ok = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    hls::wait_segments(&insecure_ok, &playlist, 2, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nffmpeg: {}", publisher.stderr()));
    let probe = format!("{public}/hls/live/cam/index.m3u8");
    let codecs = tokio::task::spawn_blocking(move || hls::ffprobe_codecs(&probe))
        .await
        .unwrap()
        .unwrap();
    assert!(codecs.iter().any(|c| c == "h264"), "{codecs:?}");

    // Renewal: a new certificate within its life, served to new connections.
    poll(
        "the certificate is renewed",
        Duration::from_secs(60),
        || {
            let (first, root) = (first.clone(), acme.root.clone());
            async move {
                let now = served_certificate(https, "localhost", &root)
                    .await
                    .map_err(|e| e.to_string())?;
                (now != first).then_some(()).ok_or("not yet".to_string())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", origin.log_tail(40)));
    let (code, body) = curl(&health, &root_file, Some(&resolve));
    assert_eq!(code, "200", "{body}");
    // The ACME account key and certificate are cached in the data dir, owner-only.
    let acme_dir = origin.config().data_dir.join("acme");
    let files: Vec<PathBuf> = std::fs::read_dir(&acme_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.len() >= 2, "{files:?}");
    for f in &files {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", f.display());
    }
    publisher.stop();
}
