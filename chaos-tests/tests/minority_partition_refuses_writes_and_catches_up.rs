//! A minority partition: one origin of three is cut off from the others (iptables drops its
//! cluster traffic). The majority keeps taking writes; the cut-off origin refuses them (no split
//! brain: nothing it was asked to write ever appears); once the partition heals it catches up
//! with every write the majority took.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rand::Rng;
use streamhub_chaos_tests::net::Rules;
use streamhub_chaos_tests::{chaos_seed, Cluster};

const WRITES: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_partition_refuses_writes_and_catches_up() {
    let mut c = Cluster::start(3, chaos_seed()).await;
    let minority = c.rng.gen_range(0..3);
    let majority = [(minority + 1) % 3, (minority + 2) % 3];
    let cut_api = c
        .admin(minority)
        .await
        .with_timeout(Duration::from_secs(15));
    let apis = [c.admin(majority[0]).await, c.admin(majority[1]).await];
    let port = c.nodes[minority].config().cluster.port();
    let partition = Rules::isolate(port, c.timeline()).expect("iptables");
    let cut = Instant::now();
    c.note(format!("{} cut off", c.nodes[minority].name()));

    // The majority takes writes (after electing a leader if the cut-off one was it).
    let mut written = BTreeSet::new();
    let mut first_ack = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while written.len() < WRITES {
        assert!(
            Instant::now() < deadline,
            "the majority took only {} writes",
            written.len()
        );
        let name = format!("major-{}", written.len());
        let api = &apis[written.len() % 2];
        match api.create_app(&name).await {
            Ok(r) if r.status == 201 => {
                first_ack.get_or_insert(cut.elapsed());
                written.insert(name);
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    println!(
        "first write through the majority {} ms after the partition",
        first_ack.unwrap().as_millis()
    );

    // The cut-off origin refuses writes: it cannot reach a quorum.
    let refused = cut_api.create_app("minority-write").await;
    // A timeout is not an acknowledgement either.
    if let Ok(r) = &refused {
        assert_ne!(
            r.status, 201,
            "the cut-off origin acknowledged a write: {r:?}"
        );
    }
    c.note("minority write refused");

    drop(partition);
    let healed = Instant::now();
    c.wait_apps(minority, &written, Duration::from_secs(60))
        .await
        .unwrap_or_else(|missing| panic!("the healed origin lacks {missing:?}"));
    println!(
        "healed origin caught up {} ms after the heal",
        healed.elapsed().as_millis()
    );
    // No split brain: the refused write is nowhere.
    for i in 0..3 {
        let names = c.admin(i).await.app_names().await.unwrap();
        assert!(
            !names.contains("minority-write"),
            "{} has the refused write",
            c.nodes[i].name()
        );
    }
    // And the healed origin takes writes again (a re-election may come first: its term grew).
    let api = c.admin(minority).await;
    streamhub_chaos_tests::poll(
        "a write through the healed origin",
        Duration::from_secs(30),
        || async {
            let r = api
                .create_app("after-heal")
                .await
                .map_err(|e| format!("{e:#}"))?;
            matches!(r.status, 201 | 409)
                .then_some(())
                .ok_or(format!("{r:?}"))
        },
    )
    .await
    .unwrap();
    c.note("done");
}
