//! An origin restarted with a wiped data dir: it comes back with no identity, so it must join
//! again — and the cluster refuses it while its old self is still a member (same name), without
//! any harm to the group (three voters, writes go on). Once an admin removes the old member, the
//! wiped node joins as a new member and catches up with every write.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::Rng;
use streamhub_chaos_tests::{chaos_seed, poll, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_origin_is_refused_then_rejoins_as_new() {
    let mut c = Cluster::start(3, chaos_seed()).await;
    let victim = c.rng.gen_range(1..3);
    let keeper = if victim == 1 { 2 } else { 1 };
    let api = c.admin(0).await;
    let mut written = BTreeSet::new();
    for i in 0..10 {
        let name = format!("before-{i}");
        assert_eq!(api.create_app(&name).await.unwrap().status, 201);
        written.insert(name);
    }
    let name = c.nodes[victim].name().to_string();
    let join = c.join_via(keeper).await;
    // Wiped and started again with a join: refused, the process exits.
    let result = c.nodes[victim].wipe_and_restart(Some(join.clone())).await;
    assert!(
        result.is_err(),
        "a wiped node reusing a member's name must be refused"
    );
    let log = c.nodes[victim].log_of_current_run();
    assert!(
        log.contains("409") || log.contains("already"),
        "refused with a reason:\n{log}"
    );
    c.note(format!("{name} (wiped) refused"));
    // The group is intact: still three voters (the old member), writes go on.
    c.wait_voters(0, 3, Duration::from_secs(10)).await;
    for i in 0..5 {
        let n = format!("during-{i}");
        assert_eq!(api.create_app(&n).await.unwrap().status, 201);
        written.insert(n);
    }
    // The operator removes the old member; the wiped node then joins as a new one.
    let r = api
        .post(
            &format!("/cluster/nodes/{name}/remove"),
            serde_json::json!({}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{r:?}");
    c.wait_voters(0, 2, Duration::from_secs(20)).await;
    let join = c.join_via(keeper).await;
    c.nodes[victim]
        .wipe_and_restart(Some(join))
        .await
        .expect("joins as a new member");
    c.wait_voters(0, 3, Duration::from_secs(60)).await;
    c.wait_apps(victim, &written, Duration::from_secs(30))
        .await
        .unwrap_or_else(|missing| panic!("the new member lacks {missing:?}"));
    let api2 = c.admin(victim).await;
    poll(
        "a write through the new member",
        Duration::from_secs(20),
        || async {
            let r = api2
                .create_app("after-rejoin")
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
