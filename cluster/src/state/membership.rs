//! Membership: the cluster CA every node certificate is signed by, and the join tokens that let
//! new nodes in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{exists, CommandResponse};

/// A token that lets a new node join the cluster (only its SHA-256 is stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinToken {
    pub id: String,
    pub hash: String,
    pub expires_at_ms: u64,
    pub created_at_ms: u64,
}

/// The cluster's certificate authority, replicated so any origin can admit nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterCa {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The membership part of the replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Membership {
    #[serde(default)]
    pub cluster_ca: Option<ClusterCa>,
    #[serde(default)]
    pub join_tokens: BTreeMap<String, JoinToken>,
}

impl Membership {
    /// Stores the cluster CA once (first start of the first origin).
    pub(super) fn init(&mut self, ca: &ClusterCa) -> CommandResponse {
        if self.cluster_ca.is_some() {
            return exists("cluster CA");
        }
        self.cluster_ca = Some(ca.clone());
        CommandResponse::Ok
    }

    /// Adds a token, pruning the ones expired when it was made.
    pub(super) fn add_join_token(&mut self, t: &JoinToken) -> CommandResponse {
        self.join_tokens
            .retain(|_, old| old.expires_at_ms > t.created_at_ms);
        self.join_tokens.insert(t.id.clone(), t.clone());
        CommandResponse::Ok
    }

    /// The join token whose secret hashes to `hash`, if it is still valid at `now_ms`.
    pub fn join_token_by_hash(&self, hash: &str, now_ms: u64) -> Option<&JoinToken> {
        self.join_tokens
            .values()
            .find(|t| t.hash == hash && t.expires_at_ms > now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ClusterState, Command};
    use super::*;

    #[test]
    fn join_tokens_expire_and_are_pruned() {
        let mut s = ClusterState::default();
        let t = |id: &str, created: u64, expires: u64| {
            Command::CreateJoinToken(JoinToken {
                id: id.into(),
                hash: format!("h{id}"),
                expires_at_ms: expires,
                created_at_ms: created,
            })
        };
        s.apply(&t("1", 0, 100));
        assert!(s.membership.join_token_by_hash("h1", 50).is_some());
        assert!(s.membership.join_token_by_hash("h1", 100).is_none());
        s.apply(&t("2", 200, 300));
        assert!(
            !s.membership.join_tokens.contains_key("1"),
            "expired token pruned"
        );
    }
}
