//! Kill one origin's storage (its data dir remounted read-only, as a full or failing disk
//! would): its `/healthz` fails within seconds saying why, its registry entry goes down so
//! steering sends no viewer to it, and when the disk comes back so does the node.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use streamhub_chaos_tests::require::require;
use streamhub_chaos_tests::{chaos_seed, poll, Cluster};

/// A read-only bind mount of a directory over itself, undone on drop.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn mount(dir: &Path) -> anyhow::Result<ReadOnly> {
        let run = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new("mount")
                .args(args)
                .arg(dir)
                .arg(dir)
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "mount {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        run(&["--bind"])?;
        let guard = ReadOnly(dir.to_path_buf());
        run(&["-o", "remount,bind,ro"])?;
        Ok(guard)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn can_mount() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    root && streamhub_chaos_tests::require::has_command("mount")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_storage_fails_health() {
    if !require(
        "root and mount (a read-only bind mount of a data dir)",
        can_mount(),
    ) {
        return;
    }
    let seed = chaos_seed();
    let c = Cluster::start(3, seed).await;
    let sick = 0;
    let watcher = 1;
    let sick_name = c.nodes[sick].name().to_string();
    let admin = c.admin(watcher).await;
    let health = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let healthz = c.nodes[sick].url("/healthz");
    assert_eq!(health.get(&healthz).send().await.unwrap().status(), 200);

    let ro = ReadOnly::mount(&c.nodes[sick].config().data_dir).expect("read-only mount");
    let broke = Instant::now();
    c.note(format!("{sick_name}'s data dir read-only"));
    let said = poll("healthz fails, saying why", Duration::from_secs(10), || {
        let r = health.get(&healthz).send();
        async move {
            let r = r.await.map_err(|e| e.to_string())?;
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            (status == 503 && body.contains("storage"))
                .then_some(body.clone())
                .ok_or(format!("{status} {body}"))
        }
    })
    .await
    .unwrap();
    c.note(format!(
        "healthz failed {:.1}s after: {said}",
        broke.elapsed().as_secs_f64()
    ));
    // Its heartbeats stop: the registry marks it down (TTL 10 s) and steering skips it.
    poll(
        "the registry marks it down",
        Duration::from_secs(25),
        || {
            let admin = &admin;
            let sick_name = sick_name.clone();
            async move {
                let nodes = admin.get("/nodes").await.map_err(|e| e.to_string())?;
                let down = nodes
                    .data()
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|n| n["name"] == sick_name.as_str() && n["status"] == "down");
                down.then_some(()).ok_or(format!("{:?}", nodes.body))
            }
        },
    )
    .await
    .unwrap();
    c.note(format!(
        "{sick_name} down in the registry {:.1}s after",
        broke.elapsed().as_secs_f64()
    ));
    for region in ["local", "eu", "us", "ap"] {
        let r = admin
            .get(&format!("/apps/demo/rooms/main/playback?region={region}"))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_ne!(
            r.data()["node"],
            sick_name.as_str(),
            "a viewer steered to the node whose storage is dead: {r:?}"
        );
    }
    // The disk comes back: so does the node.
    drop(ro);
    c.note(format!("{sick_name}'s data dir writable again"));
    poll("healthz recovers", Duration::from_secs(15), || {
        let r = health.get(&healthz).send();
        async move {
            let r = r.await.map_err(|e| e.to_string())?;
            (r.status() == 200)
                .then_some(())
                .ok_or(format!("{}", r.status()))
        }
    })
    .await
    .unwrap();
}
