//! A room live on origin A cannot be taken by a publisher on origin B while A holds its placement
//! lease; once A is killed, B takes the room within the lease TTL plus an election.
//!
//! A is the Raft leader (the worst case: its death also costs an election), B a follower chosen
//! by the seed, C the third node, used as the neutral observer of `GET /apps/:app/rooms`. Both
//! publishers use the same stream key, so only placement (not the key) can refuse B.

use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::Value;
use streamhub_chaos_tests::{chaos_seed, poll, Api, Cluster, Publisher};

const APP: &str = "fence";
const ROOM: &str = "cam1";
/// How long the refused publisher on B may take to exit.
const REFUSAL: Duration = Duration::from_secs(15);
/// The lease (10 s) plus the heartbeat period it is renewed at (2 s), an election (1 s), and the
/// retries of a publisher that starts ffmpeg and is refused each second until then, with room
/// for a loaded machine.
const TAKEOVER_BOUND: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_placement_fences_a_second_origin() {
    let seed = chaos_seed();
    let mut c = Cluster::start(3, seed).await;
    let a = c.leader().await;
    let others: Vec<usize> = (0..3).filter(|&i| i != a).collect();
    let b = others[c.rng.gen_range(0..2)];
    let obs = others.iter().copied().find(|&i| i != b).unwrap();
    let (name_a, name_b) = (c.nodes[a].name().to_string(), c.nodes[b].name().to_string());
    let observer = c.admin(obs).await;
    let key = c.admin(a).await.rtmp_ingress(APP, ROOM).await.unwrap();

    let mut pub_a = Publisher::start(&c.nodes[a].rtmp_url(&key));
    wait_room_origin(&observer, &name_a, Duration::from_secs(30)).await;
    c.note(format!("{ROOM} live on {name_a}"));

    // Same key, other origin, while A's lease is live: refused.
    let mut pub_b = Publisher::start(&c.nodes[b].rtmp_url(&key));
    let exit = pub_b.wait_exit(REFUSAL).await;
    let Some((status, ran)) = exit else {
        panic!(
            "second publisher on {name_b} was not refused within {REFUSAL:?} (rooms: {})",
            rooms(&observer).await
        );
    };
    assert!(
        !status.success(),
        "second publisher on {name_b} exited with success"
    );
    c.note(format!(
        "publisher on {name_b} refused after {} ms: {}",
        ran.as_millis(),
        pub_b.stderr().trim()
    ));
    assert!(
        pub_a.exit_status().is_none(),
        "the publisher on {name_a} was dropped: {}",
        pub_a.stderr()
    );
    wait_room_origin(&observer, &name_a, Duration::from_secs(5)).await;

    let killed_at = Instant::now();
    c.nodes[a].kill9();
    let (attempts, pub_b) = take_over(&c, b, &key, &observer, &name_b, killed_at).await;
    let took = killed_at.elapsed();
    println!(
        "room_takeover_after_kill_ms={} publish_attempts={attempts}",
        took.as_millis()
    );
    c.note(format!(
        "{name_b} holds {ROOM} {} ms after the kill ({attempts} attempts)",
        took.as_millis()
    ));
    assert!(took < TAKEOVER_BOUND, "takeover took {took:?}");
    drop(pub_b);
    pub_a.stop();
}

/// Publishes to B again and again (each refused attempt exits) until the observer shows the room
/// on B with B's publisher still running; returns the attempts and the winning publisher.
async fn take_over(
    c: &Cluster,
    b: usize,
    key: &str,
    observer: &Api,
    name_b: &str,
    since: Instant,
) -> (u32, Publisher) {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut p = Publisher::start(&c.nodes[b].rtmp_url(key));
        // Watch this attempt until it is refused or the room shows up on B.
        loop {
            let on_b = room_origin(observer).await.as_deref() == Some(name_b);
            if on_b && p.exit_status().is_none() {
                return (attempts, p);
            }
            if p.exit_status().is_some() {
                break;
            }
            assert!(
                since.elapsed() < TAKEOVER_BOUND,
                "{name_b} did not take the room within {TAKEOVER_BOUND:?} of the kill \
                 ({attempts} attempts; rooms: {}; last ffmpeg: {})",
                rooms(observer).await,
                p.stderr().trim()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            since.elapsed() < TAKEOVER_BOUND,
            "{name_b} did not take the room within {TAKEOVER_BOUND:?} of the kill \
             ({attempts} attempts; rooms: {}; last ffmpeg: {})",
            rooms(observer).await,
            p.stderr().trim()
        );
    }
}

async fn rooms(api: &Api) -> Value {
    match api.get(&format!("/apps/{APP}/rooms")).await {
        Ok(r) => r.body,
        Err(e) => Value::String(format!("{e:#}")),
    }
}

/// The origin `GET /apps/:app/rooms` gives for the room, if it is live.
async fn room_origin(api: &Api) -> Option<String> {
    let r = api.get(&format!("/apps/{APP}/rooms")).await.ok()?;
    r.data().as_array()?.iter().find(|x| x["room"] == ROOM)?["origin"]
        .as_str()
        .map(String::from)
}

async fn wait_room_origin(api: &Api, origin: &str, timeout: Duration) {
    poll(
        &format!("{ROOM} live on {origin}"),
        timeout,
        || async move {
            match room_origin(api).await {
                Some(o) if o == origin => Ok(()),
                other => Err(format!("{other:?} ({})", rooms(api).await)),
            }
        },
    )
    .await
    .unwrap();
}
