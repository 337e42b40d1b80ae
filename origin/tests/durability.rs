//! kill -9 during writes, then restart: every acknowledged write is still there. Also a clean
//! SIGTERM shutdown and a restart that keeps state and the admin password.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let mut origin = Origin::start_in(&dir).await;
    let admin = origin.admin().await;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));

    // Four writers create apps as fast as they can; the node is killed under them.
    let mut writers = Vec::new();
    for w in 0..4 {
        let (admin, acked) = (admin.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..10_000 {
                let name = format!("w{w}-{i}");
                let req = admin
                    .client
                    .post(format!("{}/api/v1/apps", admin.base))
                    .bearer_auth(admin.token.clone().unwrap())
                    .json(&json!({"name": name}))
                    .timeout(Duration::from_secs(5));
                match req.send().await {
                    Ok(r) if r.status().as_u16() == 201 => acked.lock().unwrap().push(name),
                    _ => return,
                }
            }
        }));
    }
    poll("some acknowledged writes", Duration::from_secs(30), || {
        let n = acked.lock().unwrap().len();
        async move { (n >= 200).then_some(()) }
    })
    .await;
    origin.kill9();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();

    let origin = Origin::start_in(&dir).await;
    let admin = origin.admin().await;
    let (s, apps) = admin.get("/api/v1/apps").await;
    assert_eq!(s, 200);
    let present: std::collections::HashSet<String> = apps["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|n| !present.contains(*n)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
    // And the node takes writes again after the restart.
    assert_eq!(
        admin
            .post("/api/v1/apps", json!({"name": "after-restart"}))
            .await
            .0,
        201
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_shuts_down_cleanly_and_state_survives() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let mut origin = Origin::start_in(&dir).await;
    let admin = origin.admin().await;
    assert_eq!(
        admin.post("/api/v1/apps", json!({"name": "keep"})).await.0,
        201
    );
    assert!(
        origin.terminate(),
        "SIGTERM did not exit 0:\n{}",
        origin.log_text()
    );
    let origin = Origin::start_in(&dir).await;
    let admin = origin.admin().await;
    assert_eq!(admin.get("/api/v1/apps/keep").await.0, 200);
    // The demo app from the first start exists exactly once.
    assert_eq!(admin.get("/api/v1/apps/demo").await.0, 200);
}
