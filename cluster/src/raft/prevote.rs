//! Pre-vote, kept outside openraft: a voter may campaign only while a quorum of voters would take
//! part in the election.
//!
//! openraft 0.9 has no pre-vote. A voter cut off from the others campaigns at every election
//! timeout and raises its term each time; when the network heals, the healthy leader's
//! replication to it is answered with that higher term and the leader steps down. The cluster
//! then has no leader for an election or two: seconds of refused writes, and room leases that
//! are not renewed, so the media of a healthy origin is held back. Raft's pre-vote (section 9.6
//! of Ongaro's thesis) prevents it: a candidate first asks whether the others would vote at all
//! and raises its term only then.
//!
//! Here that question gates openraft's own election timer (`RuntimeConfigHandle::elect`). Every
//! [`PROBE_INTERVAL`] a voter that does not lead asks each other voter ([`kinds::RAFT_PRE_VOTE`])
//! whether it hears from a live leader. Elections are allowed while, in every configuration of
//! the membership (two during a membership change), a majority is this voter plus the voters that
//! answered that they do not. A voter that cannot reach a quorum, or whose reachable peers still
//! follow a live leader, keeps its term and rejoins as a follower when it hears the leader again.
//!
//! A peer that does not know the kind (an older version, during a rolling upgrade) counts as
//! answering that it has no leader: the election is then allowed, as before this check.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::raft::AppendEntriesResponse;
use openraft::{Raft, ServerState};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::network::{decode, encode, resolve};
use super::{NodeId, TypeConfig};
use crate::transport::{kinds, service_fn, Endpoint, RpcError};

/// How often a voter that does not lead asks the others.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_millis(150);
/// How long one question may take; a peer silent for longer counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// When this node last heard from the leader of its term: an `AppendEntries` it took (entries
/// or a heartbeat, or a conflict: the leader is alive, its log differs) or a snapshot chunk.
#[derive(Debug, Default)]
pub(crate) struct LeaderContact {
    last: Mutex<Option<Instant>>,
}

impl LeaderContact {
    /// Records a successful `AppendEntries` (or snapshot chunk) from the leader.
    pub(crate) fn heard(&self) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// Records the outcome of an `AppendEntries`: anything but a refusal for a higher vote
    /// came from the current leader (a conflict too: the leader is alive, its log differs).
    pub(crate) fn heard_append<E>(&self, result: &Result<AppendEntriesResponse<NodeId>, E>) {
        if matches!(
            result,
            Ok(AppendEntriesResponse::Success
                | AppendEntriesResponse::PartialSuccess(_)
                | AppendEntriesResponse::Conflict)
        ) {
            self.heard();
        }
    }

    /// Whether a leader was heard within `window`.
    fn within(&self, window: Duration) -> bool {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|t| t.elapsed() < window)
    }
}

/// The answer to a pre-vote question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PreVoteAnswer {
    /// The answering voter leads, or heard from the leader within the election timeout: it would
    /// not vote for anyone else now.
    pub leader_alive: bool,
}

/// Serves [`kinds::RAFT_PRE_VOTE`]: whether this node leads or heard from a leader within
/// `alive_for` (the shortest election timeout: a follower silent for that long may elect).
pub(crate) fn register(
    endpoint: &Endpoint,
    raft: &Raft<TypeConfig>,
    contact: Arc<LeaderContact>,
    alive_for: Duration,
) {
    let raft = raft.clone();
    endpoint.register(
        kinds::RAFT_PRE_VOTE,
        service_fn(move |_peer, body| {
            let leads = raft.metrics().borrow().state == ServerState::Leader;
            let answer = PreVoteAnswer {
                leader_alive: leads || contact.within(alive_for),
            };
            async move {
                let () = decode(&body)?;
                encode(&answer)
            }
        }),
    )
}

/// Whether `granted` (this voter included) is a majority of every configuration in `configs`
/// (one, or two while the membership changes).
pub(crate) fn is_quorum(configs: &[BTreeSet<NodeId>], granted: &BTreeSet<NodeId>) -> bool {
    configs
        .iter()
        .all(|c| c.iter().filter(|id| granted.contains(id)).count() * 2 > c.len())
}

/// Runs the election gate of `raft` (node `me`) until aborted: see the module docs. The gate
/// is the only writer of the flag; it writes it every round.
///
/// Elections start held back, and stay so while this node is in no configuration (its
/// membership not loaded yet, or a learner: a learner's timer does nothing anyway), so a
/// restarted voter cannot raise its term before its first round of questions. A node that
/// starts a new cluster elects itself through `initialize`, and a restarted single voter is
/// told to elect (`RaftNode`'s start), whatever the flag says.
pub(crate) fn spawn_gate(raft: Raft<TypeConfig>, endpoint: Endpoint, me: NodeId) -> JoinHandle<()> {
    let mut allowed = false;
    raft.runtime_config().elect(allowed);
    tokio::spawn(async move {
        loop {
            let (leads, configs, peers) = {
                let m = raft.metrics();
                let m = m.borrow();
                let membership = m.membership_config.membership();
                let peers: Vec<(NodeId, String)> = membership
                    .voter_ids()
                    .filter(|id| *id != me)
                    .filter_map(|id| Some((id, membership.get_node(&id)?.addr.clone())))
                    .collect();
                (
                    m.state == ServerState::Leader,
                    membership.get_joint_config().clone(),
                    peers,
                )
            };
            // A leader does not campaign: nothing to hold back.
            let allow = if leads {
                true
            } else if !configs.iter().any(|c| c.contains(&me)) {
                false
            } else {
                let mut granted = ask(&endpoint, &peers).await;
                granted.insert(me);
                is_quorum(&configs, &granted)
            };
            raft.runtime_config().elect(allow);
            if allow != allowed {
                if allow {
                    tracing::info!("elections allowed: a quorum of voters hears no leader");
                } else {
                    tracing::info!(
                        "elections held back: a quorum of voters is not reachable, or it still \
                         hears a leader"
                    );
                }
                allowed = allow;
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    })
}

/// Asks every peer at once (each question, its address lookup included, within
/// [`PROBE_TIMEOUT`]); returns those that would take part in an election.
async fn ask(endpoint: &Endpoint, peers: &[(NodeId, String)]) -> BTreeSet<NodeId> {
    let questions = peers.iter().map(|(id, addr)| async move {
        let question = async {
            let addr = resolve(addr).await?;
            let body = Bytes::from_static(b"null");
            let answer = endpoint
                .request(addr, kinds::RAFT_PRE_VOTE, body, PROBE_TIMEOUT)
                .await;
            Some(match answer {
                Ok(body) => serde_json::from_slice::<PreVoteAnswer>(&body)
                    .map(|a| !a.leader_alive)
                    .unwrap_or(false),
                // An older version (or one shutting down, which unregisters its Raft kinds): as
                // before this check.
                Err(RpcError::UnknownKind(_)) => true,
                Err(_) => false,
            })
        };
        let grants = tokio::time::timeout(PROBE_TIMEOUT, question)
            .await
            .ok()
            .flatten()
            .unwrap_or(false);
        grants.then_some(*id)
    });
    futures::future::join_all(questions)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_quorum_is_a_majority_of_every_configuration() {
        let three = set(&[1, 2, 3]);
        // Cut off: only itself.
        assert!(!is_quorum(std::slice::from_ref(&three), &set(&[1])));
        // One peer with no leader is enough among three.
        assert!(is_quorum(std::slice::from_ref(&three), &set(&[1, 2])));
        // Alone is a quorum of one.
        assert!(is_quorum(&[set(&[1])], &set(&[1])));
        // Two voters need both.
        assert!(!is_quorum(&[set(&[1, 2])], &set(&[1])));
        // A joint configuration needs a majority of each half.
        let joint = [three, set(&[3, 4, 5])];
        assert!(!is_quorum(&joint, &set(&[1, 2])));
        assert!(is_quorum(&joint, &set(&[1, 2, 3, 4])));
        // Grants from non-voters count for nothing.
        assert!(!is_quorum(&[set(&[1, 2, 3])], &set(&[1, 7, 8])));
    }

    #[test]
    fn only_answers_of_the_current_leader_count_as_contact() {
        let contact = LeaderContact::default();
        let window = Duration::from_secs(60);
        assert!(!contact.within(window));
        let higher: Result<_, ()> = Ok(AppendEntriesResponse::HigherVote(Default::default()));
        contact.heard_append(&higher);
        assert!(!contact.within(window), "a stale leader is no contact");
        let failed: Result<AppendEntriesResponse<NodeId>, ()> = Err(());
        contact.heard_append(&failed);
        assert!(!contact.within(window));
        contact.heard_append::<()>(&Ok(AppendEntriesResponse::Conflict));
        assert!(contact.within(window));
        assert!(!contact.within(Duration::ZERO));
    }
}
