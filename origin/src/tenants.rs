//! The tenant state as an origin serves it: reads from this origin's Raft replica, writes through
//! the leader, and the credential lookups every ingest and the API make (a secret is hashed
//! here, once, before it is looked up).

use std::sync::Arc;

use streamhub_cluster::query::AppKey;
use streamhub_cluster::raft::RaftNode;
use streamhub_cluster::state::{
    AdminUser, ApiKey, App, ClusterState, Command, CommandResponse, Ingress, IngressKind,
};
use streamhub_media::http::ApiError;
use streamhub_shared::AppName;

use crate::credentials::sha256_hex;

/// Why a write to the tenant state did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0} not found")]
    NotFound(String),
    /// No leader, no quorum, or the node is stopping.
    #[error("the cluster is not available: {0}")]
    Unavailable(String),
    #[error("unexpected answer {0}")]
    Unexpected(String),
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Exists(what) => ApiError::Conflict(what),
            WriteError::NotFound(what) => ApiError::NotFound(what),
            WriteError::Unavailable(why) => ApiError::Unavailable(why),
            WriteError::Unexpected(what) => ApiError::Internal(what),
        }
    }
}

/// The replicated state through this origin's Raft node.
#[derive(Clone)]
pub struct Tenants {
    raft: Arc<RaftNode>,
}

impl Tenants {
    /// The tenant state of `raft`'s replica.
    pub fn new(raft: Arc<RaftNode>) -> Self {
        Self { raft }
    }

    /// Reads the local replica (fresh within a heartbeat on followers, never blocking).
    pub fn read<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> T {
        self.raft.read(f)
    }

    /// Proposes `cmd` through the leader and waits until it is applied here.
    pub async fn write(&self, cmd: Command) -> Result<(), WriteError> {
        match self.raft.write(cmd).await {
            Ok(CommandResponse::Ok) => Ok(()),
            Ok(CommandResponse::Exists { what }) => Err(WriteError::Exists(what)),
            Ok(CommandResponse::NotFound { what }) => Err(WriteError::NotFound(what)),
            Ok(other) => Err(WriteError::Unexpected(format!("{other:?}"))),
            Err(e) => Err(WriteError::Unavailable(e.to_string())),
        }
    }

    /// The admin account, once bootstrapped.
    pub fn admin(&self) -> Option<AdminUser> {
        self.read(|s| s.tenants.admin.clone())
    }

    /// An app.
    pub fn app(&self, app: &AppName) -> Option<App> {
        self.read(|s| s.tenants.apps.get(app).cloned())
    }

    /// The key `app` signs its tokens with.
    pub fn app_key(&self, app: &AppName) -> Option<AppKey> {
        self.read(|s| {
            s.tenants.apps.get(app).map(|a| AppKey {
                app: a.name.clone(),
                key_id: a.key_id.clone(),
                secret: a.secret.clone(),
            })
        })
    }

    /// The ingress of `kind` whose key is `key`.
    pub fn ingress_by_key(&self, key: &str, kind: IngressKind) -> Option<Ingress> {
        let hash = sha256_hex(key);
        self.read(|s| s.tenants.ingress_by_key_hash(&hash).cloned())
            .filter(|i| i.kind == kind)
    }

    /// The ingress `id`.
    pub fn ingress(&self, id: &str) -> Option<Ingress> {
        self.read(|s| s.tenants.ingresses.get(id).cloned())
    }

    /// The API key whose secret is `secret`.
    pub fn api_key_by_secret(&self, secret: &str) -> Option<ApiKey> {
        let hash = sha256_hex(secret);
        self.read(|s| s.tenants.api_key_by_hash(&hash).cloned())
    }

    /// The Raft node behind the state (membership and status need it).
    pub fn raft(&self) -> &Arc<RaftNode> {
        &self.raft
    }
}
