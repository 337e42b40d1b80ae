//! The cluster key on an origin: where it comes from, who may have it, and what it seals.
//!
//! - The first origin creates it; a joining origin fetches it from another origin over the
//!   mutually authenticated cluster transport ([`CLUSTER_KEY`], origins only); a restarted one
//!   reads `<data_dir>/cluster/cluster.key` (or `STREAMHUB_CLUSTER_KEY`).
//! - The replicated state holds only its check value; an origin whose key does not match it
//!   drops the key and fetches the cluster's.
//! - A cluster whose state predates sealing gets a key (first proposal of a check value wins),
//!   and its leader then seals what is still in plaintext ([`Command::SealSecrets`]) and makes
//!   the cluster-wide session key.
//!
//! Edges never hold the key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use streamhub_cluster::raft::RaftNode;
use streamhub_cluster::seal::{self, place, ClusterKey};
use streamhub_cluster::state::{AppSecrets, ClusterState, Command, CommandResponse};
use streamhub_cluster::transport::kinds::CLUSTER_KEY;
use streamhub_cluster::transport::{service_fn, Endpoint, RemoteError};
use streamhub_media::http::ApiError;
use tokio_util::sync::CancellationToken;

use crate::credentials::random_hex;

/// How often the key and the sealing of the state are checked.
const MAINTAIN_EVERY: Duration = Duration::from_secs(2);
/// How long one fetch from one origin may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// Body of a [`CLUSTER_KEY`] answer.
#[derive(Debug, Serialize, Deserialize)]
struct KeyAnswer {
    key: String,
}

/// The cluster key of this origin, once known.
#[derive(Clone)]
pub struct Keyring {
    key: Arc<RwLock<Option<ClusterKey>>>,
    dir: PathBuf,
}

impl Keyring {
    /// The keyring kept in `dir` (the node's identity directory), loaded from it or from the
    /// environment if a key is there.
    pub fn load(dir: PathBuf) -> anyhow::Result<Self> {
        let key = ClusterKey::load(&dir)?;
        Ok(Self {
            key: Arc::new(RwLock::new(key)),
            dir,
        })
    }

    /// Creates and saves a new key (the first origin of a cluster), unless one is loaded.
    pub fn create(&self) -> anyhow::Result<ClusterKey> {
        if let Some(key) = self.get() {
            return Ok(key);
        }
        let key = ClusterKey::generate();
        self.keep(key.clone())?;
        Ok(key)
    }

    /// The key, if known.
    pub fn get(&self) -> Option<ClusterKey> {
        self.key
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The key, or the API's answer while it is not known yet.
    pub fn key(&self) -> Result<ClusterKey, ApiError> {
        self.get().ok_or_else(|| {
            ApiError::Unavailable(
                "this origin does not hold the cluster key yet (it is fetching it from another origin)"
                    .into(),
            )
        })
    }

    fn keep(&self, key: ClusterKey) -> anyhow::Result<()> {
        key.save(&self.dir)?;
        *self.key.write().unwrap_or_else(PoisonError::into_inner) = Some(key);
        Ok(())
    }

    fn forget(&self) {
        *self.key.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Opens a value sealed at `place` (a plaintext value of an older state passes as it is).
    pub fn open_text(&self, place: &str, value: &str) -> Result<String, ApiError> {
        self.key()?
            .open_text(place, value)
            .map_err(|e| ApiError::Internal(format!("{place}: {e}")))
    }

    /// Seals `plaintext` for `place`.
    pub fn seal(&self, place: &str, plaintext: &[u8]) -> Result<String, ApiError> {
        Ok(self.key()?.seal(place, plaintext))
    }

    /// Fetches the key from the first of `peers` that has one matching `check` (any key when
    /// `check` is `None`), and keeps it.
    pub async fn fetch(
        &self,
        endpoint: &Endpoint,
        peers: &[SocketAddr],
        check: Option<&str>,
    ) -> Option<ClusterKey> {
        for addr in peers {
            let answer = endpoint
                .request(*addr, CLUSTER_KEY, Bytes::new(), FETCH_TIMEOUT)
                .await;
            let key = match answer
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<KeyAnswer>(&b).map_err(|e| e.to_string()))
                .and_then(|a| ClusterKey::from_base64(&a.key).map_err(|e| e.to_string()))
            {
                Ok(key) => key,
                Err(error) => {
                    tracing::debug!(%addr, %error, "cluster key not fetched");
                    continue;
                }
            };
            if check.is_some_and(|c| c != key.check()) {
                tracing::warn!(%addr, "an origin offered a cluster key that does not match the cluster's");
                continue;
            }
            if let Err(e) = self.keep(key.clone()) {
                tracing::error!(error = %e, "cannot save the cluster key");
                return None;
            }
            tracing::info!(%addr, "cluster key received from another origin");
            return Some(key);
        }
        None
    }

    /// Fetches the key from `peers` (cluster addresses of origins) until one answers, for up to
    /// `limit`: a joining origin cannot serve the state without it.
    pub async fn fetch_at_join(
        &self,
        endpoint: &Endpoint,
        peers: &[String],
        limit: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let addrs = resolve_all(peers).await;
            if self.fetch(endpoint, &addrs, None).await.is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "no origin gave this node the cluster key within {limit:?} (asked {peers:?})"
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Answers [`CLUSTER_KEY`] to other origins (the endpoint refuses edges).
    pub fn register_service(&self, endpoint: &Endpoint) {
        let this = self.clone();
        endpoint.register(
            CLUSTER_KEY,
            service_fn(move |peer, _body| {
                let key = this.get();
                async move {
                    let key = key.ok_or_else(|| {
                        RemoteError::new("unavailable", "this origin has no cluster key yet")
                    })?;
                    tracing::info!(peer = %peer.name, "cluster key given to an origin");
                    let answer = KeyAnswer {
                        key: key.to_base64(),
                    };
                    Ok(Bytes::from(serde_json::to_vec(&answer).unwrap_or_default()))
                }
            }),
        );
    }

    /// Keeps the key in line with the cluster's and, on the leader, the state sealed: every
    /// [`MAINTAIN_EVERY`] until `shutdown`.
    pub async fn maintain(self, raft: Arc<RaftNode>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(MAINTAIN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.maintain_once(&raft).await {
                tracing::warn!(error = %e, "cluster key upkeep");
            }
        }
    }

    async fn maintain_once(&self, raft: &RaftNode) -> anyhow::Result<()> {
        let check = raft.read(|s| s.membership.cluster_key_check.clone());
        match (self.get(), check) {
            (Some(key), Some(check)) if key.check() == check => {}
            (Some(_), Some(check)) => {
                tracing::error!(
                    "this origin's cluster key is not the cluster's (another cluster's data directory, or a wrong STREAMHUB_CLUSTER_KEY); fetching the cluster's"
                );
                self.forget();
                self.fetch(raft.endpoint(), &peers(raft).await, Some(&check))
                    .await;
                return Ok(());
            }
            (None, Some(check)) => {
                self.fetch(raft.endpoint(), &peers(raft).await, Some(&check))
                    .await;
                return Ok(());
            }
            (key, None) => {
                // A state from before sealing: the first check value proposed makes its key the
                // cluster's; a peer's key is preferred to a new one.
                let key = match key {
                    Some(key) => key,
                    None => match self.fetch(raft.endpoint(), &peers(raft).await, None).await {
                        Some(key) => key,
                        None => self.create()?,
                    },
                };
                match raft
                    .write(Command::SetClusterKeyCheck { check: key.check() })
                    .await?
                {
                    CommandResponse::Ok => tracing::info!("cluster key recorded"),
                    _ => self.forget(),
                }
                return Ok(());
            }
        }
        let st = raft.status();
        if st.leader != Some(st.node_id) {
            return Ok(());
        }
        let key = self.key().map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(cmd) = raft.read(|s| unsealed(s, &key)) {
            raft.write(cmd).await?;
            tracing::info!("secrets of the replicated state sealed with the cluster key");
        }
        if raft.read(|s| s.membership.session_key.is_none()) {
            let sealed = key.seal(place::SESSION_KEY, random_hex(32).as_bytes());
            raft.write(Command::SetSessionKey { sealed }).await?;
        }
        Ok(())
    }
}

/// The cluster addresses of the other voters.
async fn peers(raft: &RaftNode) -> Vec<SocketAddr> {
    let st = raft.status();
    let others: Vec<String> = st
        .nodes
        .iter()
        .filter(|(id, _)| **id != st.node_id)
        .map(|(_, addr)| addr.clone())
        .collect();
    resolve_all(&others).await
}

async fn resolve_all(addrs: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for addr in addrs {
        if let Some(sock) = streamhub_cluster::raft::network::resolve(addr).await {
            out.push(sock);
        }
    }
    out
}

/// What of `state` is still unsealed, sealed with `key`: `None` when nothing is.
fn unsealed(state: &ClusterState, key: &ClusterKey) -> Option<Command> {
    let ca_key = state
        .membership
        .cluster_ca
        .as_ref()
        .filter(|ca| !seal::is_sealed(&ca.key_pem))
        .map(|ca| key.seal(place::CA_KEY, ca.key_pem.as_bytes()));
    let apps: std::collections::BTreeMap<_, _> = state
        .tenants
        .apps
        .values()
        .filter(|a| !seal::is_sealed(&a.secret) || a.signing_key.is_none())
        .filter_map(|a| {
            let secret = key
                .open_text(&place::app_secret(a.name.as_str()), &a.secret)
                .ok()?;
            let pair = crate::credentials::AppKeyPair::generate();
            Some((
                a.name.clone(),
                AppSecrets {
                    secret: key.seal(&place::app_secret(a.name.as_str()), secret.as_bytes()),
                    signing_key: key.seal(
                        &place::app_signing_key(a.name.as_str()),
                        B64.encode(&pair.pkcs8).as_bytes(),
                    ),
                    verify_key: pair.verify_key,
                },
            ))
        })
        .collect();
    let ingress_urls: std::collections::BTreeMap<_, _> = state
        .tenants
        .ingresses
        .values()
        .filter_map(|i| {
            let url = i.url.as_ref().filter(|u| !seal::is_sealed(u))?;
            Some((
                i.id.clone(),
                key.seal(&place::ingress_url(&i.id), url.as_bytes()),
            ))
        })
        .collect();
    if ca_key.is_none() && apps.is_empty() && ingress_urls.is_empty() {
        return None;
    }
    Some(Command::SealSecrets {
        ca_key,
        apps,
        ingress_urls,
    })
}
