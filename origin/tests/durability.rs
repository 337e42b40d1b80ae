//! kill -9 during writes, then restart: every acknowledged write is still there. Also a clean
//! SIGTERM shutdown and a restart that keeps state and the admin password.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use streamhub_testkit::{poll, Origin};

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_kill_9() {
    let mut origin = Origin::start().await;
    let admin = origin.admin().await;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));

    // Four writers create apps as fast as they can; the node is killed under them.
    let mut writers = Vec::new();
    for w in 0..4 {
        let (admin, acked) = (admin.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..10_000 {
                let name = format!("w{w}-{i}");
                match admin.post("/apps", json!({"name": name})).await {
                    Ok(r) if r.status == 201 => acked.lock().unwrap().push(name),
                    _ => return,
                }
            }
        }));
    }
    poll("some acknowledged writes", Duration::from_secs(60), || {
        let n = acked.lock().unwrap().len();
        async move { (n >= 200).then_some(()).ok_or(format!("{n} acknowledged")) }
    })
    .await
    .unwrap();
    origin.kill9();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();

    // The same data dir and ports, started again.
    origin.restart().await.unwrap();
    let admin = origin.admin().await;
    let present = admin.app_names().await.unwrap();
    let lost: Vec<&String> = acked.iter().filter(|n| !present.contains(*n)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
    // And the node takes writes again after the restart.
    let r = admin.create_app("after-restart").await.unwrap();
    assert_eq!(r.status, 201, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_shuts_down_cleanly_and_state_survives() {
    let mut origin = Origin::start().await;
    let admin = origin.admin().await;
    assert_eq!(admin.create_app("keep").await.unwrap().status, 201);
    let exit = origin.terminate().await;
    assert!(
        exit.is_some_and(|s| s.success()),
        "SIGTERM did not exit 0 ({exit:?}):\n{}",
        origin.log_text()
    );
    origin.restart().await.unwrap();
    let admin = origin.admin().await;
    assert_eq!(admin.get("/apps/keep").await.unwrap().status, 200);
    // The demo app from the first start exists exactly once.
    assert_eq!(admin.get("/apps/demo").await.unwrap().status, 200);
}
