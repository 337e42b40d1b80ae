//! A 3-origin cluster with an edge, through its public API and on its disks:
//!
//! 1. One login for the whole cluster: a session from origin 1 works on origins 2 and 3; a
//!    logout through origin 2 ends it everywhere; a password change through origin 3 ends the
//!    other sessions, and the new password logs in on origin 1.
//! 2. No false 401 after a fresh write: an API key created through one origin is used at once
//!    on another, 100 times in a row; tokens of an app created a moment ago are minted at once
//!    through another origin and publish-checked there.
//! 3. Secrets at rest: no file under any node's data dir is readable by other users; on the
//!    edge only its own node key is a PEM private key, and on origins too (the CA key is
//!    sealed); no app secret appears in clear in any node's files (every 64-hex run in every
//!    file is tried as the HS256 secret of a real token of the app), nor a pulled URL's
//!    password; every state-changing call and login is in the audit log.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use streamhub_chaos_tests::{chaos_seed, poll, Api, Cluster, ADMIN_PASS, ADMIN_USER};

const RTSP_PASSWORD: &str = "s3cr3t-camera-pass-4f1c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_login_fresh_keys_and_sealed_data_dirs() {
    let seed = chaos_seed();
    let mut c = Cluster::start(3, seed).await;
    let edge = c.start_edge("edge-1", "local", 0, &[]).await;
    let bases: Vec<String> = (0..3).map(|i| c.nodes[i].url("")).collect();

    // 1. One login.
    let on_1 = Api::login(&bases[0], ADMIN_USER, ADMIN_PASS).await.unwrap();
    let token = on_1.token().unwrap().to_string();
    for base in &bases {
        let r = Api::new(base)
            .with_token(&token)
            .get("/apps")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "origin-1's session on {base}: {r:?}");
    }
    let r = Api::new(&bases[1])
        .with_token(&token)
        .post("/auth/logout", json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 204, "logout: {r:?}");
    for base in &bases {
        poll(
            "the session ended everywhere",
            Duration::from_secs(5),
            || {
                let api = Api::new(base).with_token(&token);
                async move {
                    let r = api.get("/apps").await.map_err(|e| e.to_string())?;
                    (r.status == 401).then_some(()).ok_or(format!("{r:?}"))
                }
            },
        )
        .await
        .unwrap();
    }
    let other = Api::login(&bases[0], ADMIN_USER, ADMIN_PASS).await.unwrap();
    let changer = Api::login(&bases[2], ADMIN_USER, ADMIN_PASS).await.unwrap();
    let new_password = "a-new-admin-password-9";
    let short = changer
        .post(
            "/auth/password",
            json!({"current": ADMIN_PASS, "new": "short"}),
        )
        .await
        .unwrap();
    assert_eq!(short.status, 400, "{short:?}");
    let wrong = changer
        .post(
            "/auth/password",
            json!({"current": "not-it", "new": new_password}),
        )
        .await
        .unwrap();
    assert_eq!(wrong.status, 403, "{wrong:?}");
    let changed = changer
        .post(
            "/auth/password",
            json!({"current": ADMIN_PASS, "new": new_password}),
        )
        .await
        .unwrap();
    assert_eq!(changed.status, 200, "{changed:?}");
    let fresh = changed.data()["token"].as_str().unwrap().to_string();
    poll(
        "older sessions end with the password change",
        Duration::from_secs(5),
        || {
            let old = Api::new(&bases[1]).with_token(other.token().unwrap());
            async move {
                let r = old.get("/apps").await.map_err(|e| e.to_string())?;
                (r.status == 401).then_some(()).ok_or(format!("{r:?}"))
            }
        },
    )
    .await
    .unwrap();
    let r = Api::new(&bases[0])
        .with_token(&fresh)
        .get("/apps")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "the changer's new session: {r:?}");
    let admin = Api::login(&bases[0], ADMIN_USER, new_password)
        .await
        .expect("the new password logs in on another origin");
    let refused = Api::new(&bases[0])
        .post(
            "/auth/login",
            json!({"username": ADMIN_USER, "password": ADMIN_PASS}),
        )
        .await
        .unwrap();
    assert_eq!(
        refused.status, 401,
        "the old password (and the ADMIN_PASS break-glass) after a change: {refused:?}"
    );
    c.note("one login: sessions, logout and password change on every origin");

    // 2. Fresh writes used at once elsewhere.
    for i in 0..100usize {
        let (via, at) = (i % 3, (i + 1) % 3);
        let creator = Api::new(&bases[via]).with_token(admin.token().unwrap());
        let r = creator
            .post("/api-keys", json!({"name": format!("k{i}")}))
            .await
            .unwrap();
        assert_eq!(r.status, 201, "create key {i}: {r:?}");
        let secret = r.data()["secret"].as_str().unwrap().to_string();
        let r = Api::new(&bases[at])
            .with_token(&secret)
            .get("/apps")
            .await
            .unwrap();
        assert_eq!(
            r.status, 200,
            "key {i} made through origin {via}, used at once on origin {at}: {r:?}"
        );
    }
    for i in 0..10usize {
        let (via, at) = (i % 3, (i + 2) % 3);
        let app = format!("fresh-{i}");
        let creator = Api::new(&bases[via]).with_token(admin.token().unwrap());
        let r = creator.create_app(&app).await.unwrap();
        assert_eq!(r.status, 201, "{r:?}");
        let r = Api::new(&bases[at])
            .with_token(admin.token().unwrap())
            .post(
                &format!("/apps/{app}/tokens"),
                json!({"room": "r", "identity": "cam", "canPublish": true}),
            )
            .await
            .unwrap();
        assert_eq!(
            r.status, 201,
            "a token of app {app} (made through {via}) minted at once on {at}: {r:?}"
        );
    }
    c.note("100 fresh keys and 10 fresh apps used at once on another origin");

    // 3. Secrets at rest. A pulled URL with a password, and a real HS256 token to test
    //    candidate secrets against.
    let r = admin
        .post(
            "/apps/demo/ingress",
            json!({"type": "url", "room": "cam", "url": format!("rtsp://viewer:{RTSP_PASSWORD}@127.0.0.1:9/x")}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let minted = admin
        .post(
            "/apps/demo/tokens",
            json!({"room": "main", "identity": "probe"}),
        )
        .await
        .unwrap();
    let livekit = minted.data()["livekitToken"].as_str().unwrap().to_string();
    let key_id = admin.get("/apps/demo").await.unwrap().data()["keyId"]
        .as_str()
        .unwrap()
        .to_string();
    // Let the state reach every disk (and a snapshot or two be cut).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut files = 0;
    for node in c.nodes.iter().chain([&edge]) {
        let dir = node.config().data_dir.clone();
        let is_edge = node.name().starts_with("edge");
        for path in walk(&dir) {
            files += 1;
            let mode = mode_of(&path);
            assert_eq!(
                mode & 0o077,
                0,
                "{} is readable by others ({mode:o})",
                path.display()
            );
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            if path.is_dir() {
                continue;
            }
            let rel = path
                .strip_prefix(&dir)
                .unwrap()
                .to_string_lossy()
                .to_string();
            if contains(&bytes, b"PRIVATE KEY") {
                assert_eq!(
                    rel,
                    "cluster/node.key",
                    "{} holds a private key beside its node key ({})",
                    node.name(),
                    path.display()
                );
            }
            assert!(
                !contains(&bytes, RTSP_PASSWORD.as_bytes()),
                "{} holds a camera password in clear",
                path.display()
            );
            for candidate in hex_runs(&bytes, 64) {
                assert!(
                    streamhub_shared::auth::verify(&livekit, &key_id, candidate).is_err(),
                    "{} holds app demo's signing secret in clear{}",
                    path.display(),
                    if is_edge { " (an edge!)" } else { "" }
                );
            }
        }
    }
    assert!(files > 20, "only {files} files looked at");
    // The audit log: logins (refused ones too) and writes, with principal and source.
    let logs: String = c
        .nodes
        .iter()
        .map(|n| std::fs::read_to_string(&n.config().log).unwrap_or_default())
        .collect();
    let audit: Vec<&str> = logs.lines().filter(|l| l.contains(" audit: ")).collect();
    for want in [
        "\"action\":\"POST /api/v1/auth/login\"",
        "\"status\":401",
        "\"action\":\"POST /api/v1/auth/password\"",
        "\"action\":\"POST /api/v1/api-keys\"",
        "\"principal\":\"admin:admin\"",
        "\"app\":\"demo\"",
        "\"source\":\"127.0.0.1:",
    ] {
        assert!(
            audit.iter().any(|l| l.contains(want)),
            "no audit line with {want}; {} audit lines, e.g. {:?}",
            audit.len(),
            audit.first()
        );
    }
    assert!(
        !audit
            .iter()
            .any(|l| l.contains(new_password) || l.contains(ADMIN_PASS)),
        "a password in the audit log"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every run of exactly `len` lowercase hex digits (an app secret is `random_hex(32)`).
fn hex_runs(bytes: &[u8], len: usize) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, b) in bytes.iter().chain(std::iter::once(&b' ')).enumerate() {
        let hex = b.is_ascii_digit() || (b'a'..=b'f').contains(b);
        match (hex, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                if i - s == len {
                    out.push(&bytes[s..i]);
                }
                start = None;
            }
            _ => {}
        }
    }
    out
}
