//! A frozen origin (SIGSTOP) that held a live room loses it: once its lease expires another
//! origin takes the room with a higher epoch, and when the frozen node resumes it sees it lost the
//! room and drops its stale publisher. There is never more than one owner of the room.
//!
//! A is the Raft leader (its freeze also costs an election), B a follower that takes the room,
//! C the observer of `GET /apps/:app/rooms`, and an edge joined through C plays the room
//! throughout: its playlist shows exactly one new session (B's) and numbering only forward.

use std::time::{Duration, Instant};

use streamhub_chaos_tests::scenarios::{owners, wait_owners, PlaylistWatch};
use streamhub_chaos_tests::{chaos_seed, poll, Cluster, Publisher};

const APP: &str = "frozen";
const ROOM: &str = "cam1";
/// An election (1 s), the new leader's grace (1 s), the silence after which a holder is declared
/// dead (2.5 s), and the publisher's retries, with room for a loaded machine (the full lease of
/// 10 s is no longer waited for).
const TAKEOVER_BOUND: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_leader_is_fenced() {
    let seed = chaos_seed();
    let mut c = Cluster::start(3, seed).await;
    let a = c.leader().await;
    let others: Vec<usize> = (0..3).filter(|&i| i != a).collect();
    let (b, obs) = (others[0], others[1]);
    let (name_a, name_b) = (c.nodes[a].name().to_string(), c.nodes[b].name().to_string());
    let observer = c.admin(obs).await;
    let key = c.admin(a).await.rtmp_ingress(APP, ROOM).await.unwrap();

    let mut pub_a = Publisher::start(&c.nodes[a].rtmp_url(&key));
    wait_owners(&observer, APP, ROOM, &[&name_a], Duration::from_secs(30)).await;
    c.note(format!("{ROOM} live on {name_a}"));
    // An edge plays the room throughout (joined through the observer): each session it serves
    // adds one discontinuity to its playlist, so a stale holder that served again after resuming
    // would show as a second one.
    let edge = c.start_edge("edge-1", "local", obs, &[]).await;
    let watch = PlaylistWatch::start(edge.url(&format!("/hls/{APP}/{ROOM}/index.m3u8"))).await;

    c.nodes[a].sigstop();
    let frozen_at = Instant::now();
    c.note(format!("{name_a} frozen (SIGSTOP)"));
    // B retries until the lease of the frozen holder has expired and B owns the room.
    let mut pub_b;
    loop {
        pub_b = Publisher::start(&c.nodes[b].rtmp_url(&key));
        let took = poll("B's attempt to end or win", Duration::from_secs(15), || {
            let exited = pub_b.exit_status().is_some();
            let observer = &observer;
            let name_b = name_b.clone();
            async move {
                if exited {
                    return Ok(false);
                }
                match owners(observer, APP, ROOM).await.as_slice() {
                    [o] if *o == name_b => Ok(true),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
        if matches!(took, Ok(true)) {
            break;
        }
        assert!(
            frozen_at.elapsed() < TAKEOVER_BOUND,
            "{name_b} did not take the room within {TAKEOVER_BOUND:?} of the freeze"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!("frozen_takeover_ms={}", frozen_at.elapsed().as_millis());
    c.note(format!(
        "{name_b} owns {ROOM} after {} ms",
        frozen_at.elapsed().as_millis()
    ));

    // A resumes: it must notice it lost the room and drop its publisher.
    c.nodes[a].sigcont();
    let resumed = Instant::now();
    c.note(format!("{name_a} resumed (SIGCONT)"));
    poll(
        "stale publisher on A dropped",
        Duration::from_secs(15),
        || {
            let exited = pub_a.exit_status().is_some();
            async move {
                if exited {
                    Ok(())
                } else {
                    Err("still publishing".to_string())
                }
            }
        },
    )
    .await
    .unwrap();
    println!(
        "stale_publisher_dropped_after_resume_ms={}",
        resumed.elapsed().as_millis()
    );
    c.note(format!(
        "stale publisher on {name_a} dropped {} ms after resume",
        resumed.elapsed().as_millis()
    ));
    // A never served its stale room after resuming: its media was held back (its lease was not
    // renewed in time) until its replica showed B's placement and fenced it.
    let log = c.nodes[a].log_of_current_run();
    assert!(
        !log.contains("media flows again"),
        "the resumed holder sent its stale room's media again"
    );
    // The edge's playlist, from before the freeze to now (a few seconds past the stale
    // publisher's drop): numbering only forward, and exactly one new session, B's.
    tokio::time::sleep(Duration::from_secs(3)).await;
    watch.check(1);
    drop(edge);
    // One owner, B, everywhere, and B's publisher is still live.
    for i in 0..3 {
        let api = c.admin(i).await;
        wait_owners(&api, APP, ROOM, &[&name_b], Duration::from_secs(15)).await;
    }
    assert!(
        pub_b.exit_status().is_none(),
        "B's publisher died: {}",
        pub_b.stderr()
    );
}
