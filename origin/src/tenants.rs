//! The tenant state as an origin serves it: reads from this origin's Raft replica, writes through
//! the leader, and the credential lookups every ingest and the API make (a secret is hashed
//! here, once, before it is looked up).
//!
//! A lookup that misses may be a follower behind the leader (a key created a moment ago
//! through another origin): [`Tenants::fresh`] is the read barrier the callers run before they
//! refuse.
//!
//! App secrets are sealed in the state; [`Tenants::app_signer`] opens them with the cluster key.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use streamhub_cluster::query::AppKey;
use streamhub_cluster::raft::RaftNode;
use streamhub_cluster::seal::place;
use streamhub_cluster::state::{
    AdminUser, ApiKey, App, AppSecrets, ClusterState, Command, CommandResponse, Ingress,
    IngressKind,
};
use streamhub_media::http::ApiError;
use streamhub_shared::auth::{AccessClaims, EdSigner, TokenError, VerifyKeys};
use streamhub_shared::AppName;
use tokio::time::Instant;

use crate::credentials::{random_hex, random_token, sha256_hex, unix_now_ms, AppKeyPair};
use crate::keyring::Keyring;

/// How long a read barrier may take before the local replica answers as it is.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(2);

/// An app's opened signing material (origins only).
pub struct AppSigner {
    /// Goes into the `iss` claim.
    pub key_id: String,
    /// The HS256 secret of LiveKit-compatible tokens.
    pub hs256: String,
    /// The Ed25519 signing key, parsed, when the app has one.
    pub ed: Option<EdSigner>,
    /// The Ed25519 public key (base64url).
    pub verify_key: Option<String>,
}

impl AppSigner {
    /// Verifies a token of this app signed either way.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        streamhub_shared::auth::verify_any(
            token,
            &self.key_id,
            VerifyKeys {
                eddsa: self.verify_key.as_deref(),
                hs256: Some(self.hs256.as_bytes()),
            },
        )
    }
}

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
    /// The state machine refused it (a quota).
    #[error("{0}")]
    Refused(String),
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Exists(what) => ApiError::Conflict(what),
            WriteError::NotFound(what) => ApiError::NotFound(what),
            WriteError::Unavailable(why) => ApiError::Unavailable(why),
            WriteError::Unexpected(what) => ApiError::Internal(what),
            WriteError::Refused(why) => ApiError::TooManyRequests {
                message: why,
                retry_after_secs: 10,
            },
        }
    }
}

/// The replicated state through this origin's Raft node.
#[derive(Clone)]
pub struct Tenants {
    raft: Arc<RaftNode>,
    keyring: Keyring,
    /// One read barrier at a time; each covers every miss that came before it started.
    barrier: Arc<tokio::sync::Mutex<Option<Instant>>>,
    /// Apps' opened signing material, by app, with the sealed values it was opened from (a
    /// changed value opens again): opening and parsing cost more than a signature.
    signers: moka::sync::Cache<AppName, (String, Arc<AppSigner>)>,
}

impl Tenants {
    /// The tenant state of `raft`'s replica; secrets open with `keyring`.
    pub fn new(raft: Arc<RaftNode>, keyring: Keyring) -> Self {
        Self {
            raft,
            keyring,
            barrier: Arc::default(),
            signers: moka::sync::Cache::new(10_000),
        }
    }

    /// The cluster key of this origin.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Makes the local replica at least as fresh as the cluster was when this was called (a
    /// linearizable read barrier), so a lookup that missed can be tried once more before it
    /// becomes a refusal. Concurrent callers share barriers: at most one runs at a time, and a
    /// caller whose miss came before a barrier started waits for that one only. Without a
    /// quorum this gives up after a bound and the replica answers as it is.
    pub async fn fresh(&self) {
        let asked = Instant::now();
        let mut last_started = self.barrier.lock().await;
        if last_started.is_some_and(|started| started >= asked) {
            return;
        }
        let started = Instant::now();
        if let Err(e) = self.raft.barrier(BARRIER_TIMEOUT).await {
            tracing::warn!(error = %e, "read barrier failed; answering from the local replica");
        }
        *last_started = Some(started);
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
            Ok(CommandResponse::Refused { why }) => Err(WriteError::Refused(why)),
            Ok(other) => Err(WriteError::Unexpected(format!("{other:?}"))),
            Err(e) => Err(WriteError::Unavailable(e.to_string())),
        }
    }

    /// Proposes `cmd` and answers what the state machine said (a `Refused` included).
    pub async fn write_answer(&self, cmd: Command) -> Result<CommandResponse, WriteError> {
        match self.raft.write(cmd).await {
            Ok(CommandResponse::Exists { what }) => Err(WriteError::Exists(what)),
            Ok(CommandResponse::NotFound { what }) => Err(WriteError::NotFound(what)),
            Ok(answer) => Ok(answer),
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

    /// What verifies `app`'s EdDSA tokens (public: what an edge gets).
    pub fn app_key(&self, app: &AppName) -> Option<AppKey> {
        self.read(|s| s.tenants.apps.get(app).map(AppKey::of))
    }

    /// `app`'s signing material, opened with the cluster key; `Ok(None)` if there is no such
    /// app.
    pub fn app_signer(&self, app: &AppName) -> Result<Option<Arc<AppSigner>>, ApiError> {
        let Some(record) = self.app(app) else {
            return Ok(None);
        };
        let version = format!(
            "{}\n{}\n{}",
            record.key_id,
            record.secret,
            record.signing_key.as_deref().unwrap_or_default()
        );
        if let Some((opened_from, signer)) = self.signers.get(app) {
            if opened_from == version {
                return Ok(Some(signer));
            }
        }
        let name = record.name.as_str();
        let hs256 = self
            .keyring
            .open_text(&place::app_secret(name), &record.secret)?;
        let ed = match &record.signing_key {
            Some(sealed) => {
                let b64 = self
                    .keyring
                    .open_text(&place::app_signing_key(name), sealed)?;
                let pkcs8 = B64
                    .decode(b64)
                    .map_err(|e| ApiError::Internal(format!("app {name} signing key: {e}")))?;
                Some(
                    EdSigner::from_pkcs8(&pkcs8)
                        .map_err(|e| ApiError::Internal(format!("app {name}: {e}")))?,
                )
            }
            None => None,
        };
        let signer = Arc::new(AppSigner {
            key_id: record.key_id,
            hs256,
            ed,
            verify_key: record.verify_key,
        });
        self.signers.insert(app.clone(), (version, signer.clone()));
        Ok(Some(signer))
    }

    /// `app`'s signing material, confirming a miss with a read barrier (an app created a
    /// moment ago through another origin).
    pub async fn app_signer_fresh(
        &self,
        app: &AppName,
    ) -> Result<Option<Arc<AppSigner>>, ApiError> {
        if let Some(signer) = self.app_signer(app)? {
            return Ok(Some(signer));
        }
        self.fresh().await;
        self.app_signer(app)
    }

    /// What verifies `app`'s EdDSA tokens, confirming a miss with a read barrier.
    pub async fn app_key_fresh(&self, app: &AppName) -> Option<AppKey> {
        if let Some(key) = self.app_key(app) {
            return Some(key);
        }
        self.fresh().await;
        self.app_key(app)
    }

    /// The claims of a valid access token of `app`, signed either way.
    pub async fn verify_token(&self, app: &AppName, token: &str) -> Result<AccessClaims, String> {
        let signer = self
            .app_signer_fresh(app)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("unknown app {app}"))?;
        signer.verify(token).map_err(|e| e.to_string())
    }

    /// A new app with fresh secrets, sealed with the cluster key.
    pub fn new_app(&self, name: AppName, display_name: Option<String>) -> Result<App, ApiError> {
        let keys = self.new_app_keys(&name)?;
        Ok(App {
            secret: keys.secret,
            signing_key: Some(keys.signing_key),
            verify_key: Some(keys.verify_key),
            key_id: random_token("ak_", 16),
            created_at_ms: unix_now_ms(),
            display_name,
            name,
            settings: Default::default(),
            quotas: Default::default(),
            storage: None,
        })
    }

    /// Fresh signing keys for app `name`, sealed with the cluster key.
    pub fn new_app_keys(&self, name: &AppName) -> Result<AppSecrets, ApiError> {
        let key = self.keyring.key()?;
        let pair = AppKeyPair::generate();
        Ok(AppSecrets {
            secret: key.seal(&place::app_secret(name.as_str()), random_hex(32).as_bytes()),
            signing_key: key.seal(
                &place::app_signing_key(name.as_str()),
                B64.encode(&pair.pkcs8).as_bytes(),
            ),
            verify_key: pair.verify_key,
        })
    }

    /// The source URL of a pulled ingress, opened.
    pub fn ingress_url(&self, ingress: &Ingress) -> Result<Option<String>, ApiError> {
        ingress
            .url
            .as_deref()
            .map(|u| self.keyring.open_text(&place::ingress_url(&ingress.id), u))
            .transpose()
    }

    /// The passphrase of an SRT ingress, opened.
    pub fn ingress_passphrase(&self, ingress: &Ingress) -> Result<Option<String>, ApiError> {
        ingress
            .passphrase
            .as_deref()
            .map(|p| {
                self.keyring
                    .open_text(&place::ingress_passphrase(&ingress.id), p)
            })
            .transpose()
    }

    /// `passphrase` sealed as the one of SRT ingress `id`.
    pub fn seal_ingress_passphrase(&self, id: &str, passphrase: &str) -> Result<String, ApiError> {
        self.keyring
            .seal(&place::ingress_passphrase(id), passphrase.as_bytes())
    }

    /// `secret` sealed as the signing secret of webhook `id`.
    pub fn seal_webhook_secret(&self, id: &str, secret: &str) -> Result<String, ApiError> {
        self.keyring
            .seal(&place::webhook_secret(id), secret.as_bytes())
    }

    /// The secrets webhook `w` signs with at `now_ms`: its secret, and the one before a
    /// rotation during the overlap.
    pub fn webhook_secrets(
        &self,
        w: &streamhub_cluster::state::Webhook,
        now_ms: u64,
    ) -> Result<Vec<String>, ApiError> {
        let place = place::webhook_secret(&w.id);
        let mut out = vec![self.keyring.open_text(&place, &w.secret)?];
        if let (Some(prev), Some(until)) = (&w.previous_secret, w.previous_until_ms) {
            if until > now_ms {
                out.push(self.keyring.open_text(&place, prev)?);
            }
        }
        Ok(out)
    }

    /// `url` sealed as the source of ingress `id`.
    pub fn seal_ingress_url(&self, id: &str, url: &str) -> Result<String, ApiError> {
        self.keyring.seal(&place::ingress_url(id), url.as_bytes())
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
