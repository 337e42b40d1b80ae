//! `POST /cluster/nodes/:name/remove` takes a node out of the Raft membership and the registry;
//! the remaining two voters keep committing writes, and the removed name can join again as a new
//! node (with a wiped data dir) only after its removal.

use std::time::Duration;

use serde_json::json;
use streamhub_chaos_tests::api::names;
use streamhub_chaos_tests::{chaos_seed, poll, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_node_leaves_membership() {
    let seed = chaos_seed();
    let mut c = Cluster::start(3, seed).await;
    let leader = c.leader().await;
    let victim = (0..3).find(|&i| i != leader).unwrap();
    let survivor = (0..3).find(|&i| i != leader && i != victim).unwrap();
    let victim_name = c.nodes[victim].name().to_string();
    let admin = c.admin(survivor).await;

    let r = admin
        .post(&format!("/cluster/nodes/{victim_name}/remove"), json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 204, "remove: {:?}", r.body);
    c.note(format!("{victim_name} removed"));
    c.nodes[victim].kill9();

    poll(
        "two voters without the removed node",
        Duration::from_secs(15),
        || {
            let admin = &admin;
            let victim_name = victim_name.clone();
            async move {
                let st = admin.cluster().await.map_err(|e| e.to_string())?;
                let voters = names(&st, "voters");
                (voters.len() == 2 && !voters.contains(&victim_name))
                    .then_some(())
                    .ok_or(format!("{st}"))
            }
        },
    )
    .await
    .unwrap();
    let nodes = admin.get("/nodes").await.unwrap();
    assert!(
        !nodes
            .body
            .to_string()
            .contains(&format!("\"{victim_name}\"")),
        "removed node still registered: {}",
        nodes.body
    );
    // Writes still commit through both remaining nodes.
    for (i, node) in [leader, survivor].into_iter().enumerate() {
        let api = c.admin(node).await;
        let r = api.create_app(&format!("after-remove-{i}")).await.unwrap();
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    // The name is free again: a fresh node under it joins as a new voter.
    let join = c.join_via(leader).await;
    c.nodes[victim].wipe_and_restart(Some(join)).await.unwrap();
    c.wait_voters(leader, 3, Duration::from_secs(60)).await;
}
