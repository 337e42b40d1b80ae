//! What keeps an origin honest about itself and its peers, in the background:
//!
//! - [`run_revocations`]: the revocation list of the replicated state goes to the cluster
//!   endpoint, which then refuses those certificates at every handshake and closes their open
//!   connections;
//! - [`run_health`]: `/healthz` fails while the node's Raft has stopped, its storage cannot be
//!   written, or it has been cut from a quorum for longer than [`QUORUM_BOUND`]. An unhealthy
//!   node stops its heartbeats, so the registry marks it down and steering sends no viewers.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use streamhub_cluster::raft::RaftNode;
use streamhub_media::node::Health;
use tokio_util::sync::CancellationToken;

/// How often revocations and health are looked at.
const EVERY: Duration = Duration::from_millis(500);
/// How long a node may go without a leader (or a leader without a quorum's acknowledgement)
/// before it says it is unhealthy: longer than an election, short enough for "seconds".
pub const QUORUM_BOUND: Duration = Duration::from_secs(5);
/// How often the storage probe writes.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Keeps the endpoint's revocation list equal to the state's until `shutdown`.
pub async fn run_revocations(raft: Arc<RaftNode>, shutdown: CancellationToken) {
    let mut known: Option<HashSet<String>> = None;
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let revoked: HashSet<String> =
            raft.read(|s| s.membership.revoked_certs.keys().cloned().collect());
        if known.as_ref() != Some(&revoked) {
            raft.endpoint().set_revoked(revoked.clone());
            known = Some(revoked);
        }
    }
}

/// Sets `health`'s problem from the node's Raft and storage until `shutdown`.
pub async fn run_health(
    raft: Arc<RaftNode>,
    health: Health,
    data_dir: PathBuf,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(EVERY);
    let mut last_leader = Instant::now();
    let mut last_probe: Option<(Instant, Result<(), String>)> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let probe = match &last_probe {
            Some((at, result)) if at.elapsed() < PROBE_EVERY => result.clone(),
            _ => {
                let dir = data_dir.clone();
                let result = tokio::task::spawn_blocking(move || probe_storage(&dir))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                last_probe = Some((Instant::now(), result.clone()));
                result
            }
        };
        let m = raft.metrics();
        let leads_with_quorum = match m.state {
            ServerState::Leader => m
                .millis_since_quorum_ack
                .is_none_or(|ms| Duration::from_millis(ms) < QUORUM_BOUND),
            _ => m.current_leader.is_some(),
        };
        if leads_with_quorum {
            last_leader = Instant::now();
        }
        let problem = if let Err(fatal) = &m.running_state {
            Some(format!("raft has stopped: {fatal}"))
        } else if let Err(e) = probe {
            Some(format!("storage cannot be written: {e}"))
        } else if last_leader.elapsed() >= QUORUM_BOUND {
            Some(format!(
                "cut from a quorum for {}s: no leader (or, leading, no quorum acknowledges)",
                last_leader.elapsed().as_secs()
            ))
        } else {
            None
        };
        health.set_problem(problem);
    }
}

/// Writes, syncs and renames a small file in the Raft directory: what a commit needs from the
/// disk (space, a writable file system).
fn probe_storage(data_dir: &Path) -> Result<(), String> {
    use std::io::Write;
    let dir = data_dir.join("raft");
    let tmp = dir.join(".probe.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&crate::credentials::unix_now_ms().to_be_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(".probe"))
    };
    write().map_err(|e| format!("{}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_fails_where_nothing_can_be_written() {
        let dir = tempfile::tempdir().unwrap();
        assert!(probe_storage(dir.path()).is_err(), "no raft dir yet");
        std::fs::create_dir(dir.path().join("raft")).unwrap();
        probe_storage(dir.path()).unwrap();
        assert!(dir.path().join("raft/.probe").is_file());
    }
}
