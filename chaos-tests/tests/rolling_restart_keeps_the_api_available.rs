//! A rolling restart of all three origins, one by one (SIGTERM, start on the same data dir, wait
//! until healthy), under a steady writer that uses whichever origin answers: the API stays
//! available (the longest window without an acknowledged write is reported and bounded) and every
//! acknowledged write is on every node at the end.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streamhub_chaos_tests::{chaos_seed, Api, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_keeps_the_api_available() {
    let mut c = Cluster::start(3, chaos_seed()).await;
    let mut apis = Vec::new();
    for i in 0..3 {
        apis.push(c.admin(i).await.with_timeout(Duration::from_secs(3)));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let writer = tokio::spawn({
        let (stop, acks) = (stop.clone(), acks.clone());
        async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("roll-{n}");
                // Whichever origin answers: an encoder or dashboard with several API URLs.
                let mut done = false;
                for k in 0..3 {
                    let api: &Api = &apis[(n + k) % 3];
                    if let Ok(r) = api.create_app(&name).await {
                        if matches!(r.status, 201 | 409) {
                            acks.lock().unwrap().push((name.clone(), Instant::now()));
                            done = true;
                            break;
                        }
                    }
                }
                if done {
                    n += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..3 {
        c.note(format!("rolling: restarting {}", c.nodes[i].name()));
        let exit = c.nodes[i].terminate().await;
        assert!(exit.is_some_and(|s| s.success()), "clean exit");
        c.nodes[i].restart().await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let acks = acks.lock().unwrap().clone();
    assert!(acks.len() >= 10, "only {} writes", acks.len());
    let mut longest = Duration::ZERO;
    let mut last = started;
    for (_, t) in &acks {
        longest = longest.max(t.duration_since(last));
        last = *t;
    }
    println!(
        "{} writes acknowledged during the rolling restart; longest window without one: {} ms",
        acks.len(),
        longest.as_millis()
    );
    // Writes go on through the restarts: never longer without one than an election and a
    // restarted node's catch-up take on a loaded machine (a full outage would be the whole run).
    assert!(
        longest < Duration::from_secs(20),
        "the API was unavailable for {longest:?}"
    );
    let expected: BTreeSet<String> = acks.iter().map(|(n, _)| n.clone()).collect();
    for i in 0..3 {
        c.wait_apps(i, &expected, Duration::from_secs(30))
            .await
            .unwrap_or_else(|missing| panic!("{} lost {missing:?}", c.nodes[i].name()));
    }
    c.note("done");
}
