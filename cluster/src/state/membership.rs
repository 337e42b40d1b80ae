//! Membership: the cluster CA every node certificate is signed by, the join tokens that let
//! new nodes in, the certificates revoked when nodes are removed, and the cluster-wide secrets
//! of the dashboard login (the session key, revoked sessions). Secrets are stored sealed with
//! the cluster key (see `crate::seal`), which is not in this state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{exists, not_found, CommandResponse, NodeRole};

/// A token that lets a new node join the cluster (only its SHA-256 is stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinToken {
    pub id: String,
    pub hash: String,
    pub expires_at_ms: u64,
    pub created_at_ms: u64,
    /// The role the joiner gets; a token without one (minted before roles were bound) joins
    /// nobody.
    #[serde(default)]
    pub role: Option<NodeRole>,
    /// Joins left; the token is gone when it reaches 0.
    #[serde(default = "one")]
    pub uses_left: u32,
}

fn one() -> u32 {
    1
}

/// The cluster's certificate authority, replicated so any origin can admit nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterCa {
    pub cert_pem: String,
    /// The CA private key, sealed with the cluster key (`enc1:…`; plaintext PEM only in a
    /// state written before sealing, until the leader seals it).
    pub key_pem: String,
}

/// A certificate that no node may use any more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevokedCert {
    /// The node it was issued to.
    pub node: String,
    pub revoked_at_ms: u64,
}

/// The membership part of the replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Membership {
    #[serde(default)]
    pub cluster_ca: Option<ClusterCa>,
    #[serde(default)]
    pub join_tokens: BTreeMap<String, JoinToken>,
    /// Revoked node certificates, by fingerprint.
    #[serde(default)]
    pub revoked_certs: BTreeMap<String, RevokedCert>,
    /// A check value of the cluster key (see `seal::ClusterKey::check`), so a node can tell
    /// whether the key it holds is the cluster's.
    #[serde(default)]
    pub cluster_key_check: Option<String>,
    /// The key dashboard sessions are signed with, sealed; the same on every origin.
    #[serde(default)]
    pub session_key: Option<String>,
    /// Sessions ended by a logout before they expire: token id -> expiry (Unix seconds).
    #[serde(default)]
    pub revoked_sessions: BTreeMap<String, u64>,
}

/// Why a join token was not accepted.
pub const JOIN_TOKEN_UNKNOWN: &str = "join token (unknown, expired or used up)";

impl Membership {
    /// Stores the cluster CA once (first start of the first origin).
    pub(super) fn init(&mut self, ca: &ClusterCa) -> CommandResponse {
        if self.cluster_ca.is_some() {
            return exists("cluster CA");
        }
        self.cluster_ca = Some(ca.clone());
        CommandResponse::Ok
    }

    /// Records the cluster key's check value once: the first key proposed is the cluster's.
    pub(super) fn set_key_check(&mut self, check: &str) -> CommandResponse {
        match &self.cluster_key_check {
            Some(c) if c == check => CommandResponse::Ok,
            Some(_) => exists("cluster key"),
            None => {
                self.cluster_key_check = Some(check.to_string());
                CommandResponse::Ok
            }
        }
    }

    /// Spends one use of the token whose secret hashes to `hash` for a node of `role`.
    pub(super) fn use_join_token(
        &mut self,
        hash: &str,
        role: NodeRole,
        at_ms: u64,
    ) -> CommandResponse {
        let Some((id, token)) = self
            .join_tokens
            .iter_mut()
            .find(|(_, t)| t.hash == hash && t.expires_at_ms > at_ms && t.uses_left > 0)
        else {
            return not_found(JOIN_TOKEN_UNKNOWN);
        };
        if token.role != Some(role) {
            let minted = token
                .role
                .map_or("no role (an old token)", NodeRole::as_str);
            return CommandResponse::Refused {
                why: format!(
                    "this join token was minted for {minted}, not for an {}",
                    role.as_str()
                ),
            };
        }
        token.uses_left -= 1;
        if token.uses_left == 0 {
            let id = id.clone();
            self.join_tokens.remove(&id);
        }
        CommandResponse::Ok
    }

    pub(super) fn delete_join_token(&mut self, id: &str) -> CommandResponse {
        match self.join_tokens.remove(id) {
            Some(_) => CommandResponse::Ok,
            None => not_found(format!("join token {id}")),
        }
    }

    /// Revokes the certificate with `fingerprint`, issued to `node`.
    pub(super) fn revoke_cert(&mut self, fingerprint: &str, node: &str, at_ms: u64) {
        self.revoked_certs.insert(
            fingerprint.to_string(),
            RevokedCert {
                node: node.to_string(),
                revoked_at_ms: at_ms,
            },
        );
    }

    /// Stores the sealed session key once.
    pub(super) fn set_session_key(&mut self, sealed: &str) -> CommandResponse {
        if self.session_key.is_some() {
            return exists("session key");
        }
        self.session_key = Some(sealed.to_string());
        CommandResponse::Ok
    }

    /// Ends session `jti` (valid until `exp` seconds), pruning sessions expired by `now`.
    pub(super) fn revoke_session(&mut self, jti: &str, exp: u64, now: u64) -> CommandResponse {
        self.revoked_sessions.retain(|_, e| *e > now);
        // Bounded: sessions are revoked by logouts, each needs a valid login; far more than an
        // admin makes in a session lifetime, yet cheap to keep.
        if self.revoked_sessions.len() < 100_000 {
            self.revoked_sessions.insert(jti.to_string(), exp);
        }
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
            .find(|t| t.hash == hash && t.expires_at_ms > now_ms && t.uses_left > 0)
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
                role: Some(NodeRole::Edge),
                uses_left: 1,
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

    #[test]
    fn join_tokens_are_spent_and_bound_to_their_role() {
        let mut s = ClusterState::default();
        s.apply(&Command::CreateJoinToken(JoinToken {
            id: "jt".into(),
            hash: "h".into(),
            expires_at_ms: 1000,
            created_at_ms: 0,
            role: Some(NodeRole::Edge),
            uses_left: 2,
        }));
        let use_as = |role| Command::UseJoinToken {
            hash: "h".into(),
            role,
            at_ms: 10,
        };
        assert!(matches!(
            s.apply(&use_as(NodeRole::Origin)),
            CommandResponse::Refused { .. }
        ));
        assert_eq!(s.apply(&use_as(NodeRole::Edge)), CommandResponse::Ok);
        assert_eq!(s.membership.join_tokens["jt"].uses_left, 1);
        assert_eq!(s.apply(&use_as(NodeRole::Edge)), CommandResponse::Ok);
        assert!(s.membership.join_tokens.is_empty(), "used up: gone");
        assert!(matches!(
            s.apply(&use_as(NodeRole::Edge)),
            CommandResponse::NotFound { .. }
        ));
    }

    #[test]
    fn removing_a_node_revokes_its_certificate() {
        let mut s = ClusterState::default();
        let mut n = super::super::registry::tests::node("e1", 7);
        n.cert_fingerprint = Some("fp1".into());
        s.apply(&Command::RegisterNode(n));
        s.apply(&Command::RemoveNode {
            name: "e1".into(),
            at_ms: 5,
        });
        assert_eq!(s.membership.revoked_certs["fp1"].node, "e1");
    }

    #[test]
    fn logouts_are_kept_until_the_session_would_have_expired() {
        let mut s = ClusterState::default();
        let revoke = |jti: &str, exp, now| Command::RevokeSession {
            jti: jti.into(),
            exp,
            now,
        };
        s.apply(&revoke("a", 100, 10));
        s.apply(&revoke("b", 300, 200));
        assert!(!s.membership.revoked_sessions.contains_key("a"));
        assert!(s.membership.revoked_sessions.contains_key("b"));
    }
}
