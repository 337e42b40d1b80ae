//! How an origin is in its cluster: it bootstraps a new one (creating the CA), joins an existing
//! one through any origin with a join token, or restarts as the member it was ([`prepare`],
//! [`Membership::settle`]); it admits and removes nodes, mints join tokens, and reports the
//! cluster's status. It also answers the cluster services about the replicated state
//! (`STATE_QUERY` for edges, `CLUSTER_STATUS` for origins).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use serde_json::{json, Value};
use streamhub_cluster::join::{self, JoinAnswer, JoinRequest, Joiner, JOIN_TOKEN_PREFIX};
use streamhub_cluster::query::{StateAnswer, StateQuery};
use streamhub_cluster::raft::RaftNode;
use streamhub_cluster::registry::is_up;
use streamhub_cluster::seal::place;
use streamhub_cluster::state::{
    ClusterCa, Command, CommandResponse, JoinToken, NodeLoad, NodeRecord, NodeRole,
};
use streamhub_cluster::transport::kinds::{CLUSTER_STATUS, STATE_QUERY};
use streamhub_cluster::transport::pki::{self, CaBundle, NodeIdentity};
use streamhub_cluster::transport::{service_fn, RemoteError};
use streamhub_media::http::ApiError;
use streamhub_media::node::config::NodeSettings;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::credentials::{random_hex, random_token, sha256_hex, unix_now_ms};
use crate::tenants::Tenants;

/// How this start relates to the cluster.
pub enum Startup {
    /// First start of the first origin: a new cluster with this CA.
    Bootstrap { ca: CaBundle },
    /// First start of a node admitted through `--join`.
    Join { answer: JoinAnswer },
    /// The node has been a member before; its state is on disk.
    Restart,
}

/// Loads, creates or fetches (by joining) this origin's cluster identity.
pub async fn prepare(
    settings: &NodeSettings,
    rtmp_url: String,
) -> anyhow::Result<(NodeIdentity, Startup)> {
    if let Some(identity) = join::existing_identity(&settings.data_dir, &settings.node_name)? {
        if !settings.join.is_empty() {
            tracing::info!("node already a cluster member; --join ignored");
        }
        return Ok((identity, Startup::Restart));
    }
    if settings.join.is_empty() {
        let (identity, ca) = NodeIdentity::bootstrap("streamhub", &settings.node_name, "origin")
            .context("creating the cluster CA")?;
        identity
            .save(&join::identity_dir(&settings.data_dir))
            .context("saving the node's cluster identity")?;
        return Ok((identity, Startup::Bootstrap { ca }));
    }
    let who = Joiner {
        name: settings.node_name.clone(),
        role: NodeRole::Origin,
        cluster_addr: settings.advertised_cluster_addr(),
        http_url: settings.public_base(),
        rtmp_url: Some(rtmp_url),
        region: settings.region.clone(),
        ca_root: settings.join_ca_root.clone(),
    };
    let (identity, answer) = join::join_and_save(
        &settings.data_dir,
        &settings.join,
        settings.join_token.as_deref(),
        &who,
    )
    .await?;
    Ok((identity, Startup::Join { answer }))
}

/// Answers a node's question about the state; what must not be refused by mistake (an app
/// made a moment ago through another origin) is confirmed with a read barrier first.
async fn answer_query(tenants: &Tenants, q: StateQuery) -> StateAnswer {
    match q {
        StateQuery::VerifyToken { app, token } => match tenants.verify_token(&app, &token).await {
            Ok(claims) => StateAnswer::Verified {
                claims: Some(claims),
                error: None,
            },
            Err(error) => StateAnswer::Verified {
                claims: None,
                error: Some(error),
            },
        },
        StateQuery::AppKey { app } => StateAnswer::AppKey {
            key: tenants.app_key_fresh(&app).await,
        },
        q => {
            let now = unix_now_ms();
            tenants.read(|s| q.answer(s, now))
        }
    }
}

/// The membership service of an origin.
#[derive(Clone)]
pub struct Membership {
    raft: Arc<RaftNode>,
    tenants: Tenants,
    me: String,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Membership {
    /// Membership of the node named `me`; background work goes to `tasks`.
    pub fn new(
        tenants: Tenants,
        me: String,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            raft: tenants.raft().clone(),
            tenants,
            me,
            tasks,
            shutdown,
        }
    }

    /// Mints a join token for a node of `role`, good for `uses` joins within `ttl_ms`:
    /// `shj_<secret>.<first 16 hex of the CA fingerprint>`, so the joiner can check it reached
    /// the right cluster before trusting the CA it is sent. Only its hash is stored; the token
    /// is returned once and never logged.
    pub async fn mint_join_token(
        &self,
        role: NodeRole,
        uses: u32,
        ttl_ms: u64,
    ) -> Result<(String, JoinToken), ApiError> {
        let ca = self.ca_cert()?;
        let fp = pki::ca_fingerprint(&ca).map_err(|e| ApiError::Internal(e.to_string()))?;
        let token = format!("{}.{}", random_token(JOIN_TOKEN_PREFIX, 32), &fp[..16]);
        let now = unix_now_ms();
        let record = JoinToken {
            id: format!("jt_{}", random_hex(6)),
            hash: sha256_hex(&token),
            expires_at_ms: now + ttl_ms,
            created_at_ms: now,
            role: Some(role),
            uses_left: uses,
        };
        self.tenants
            .write(Command::CreateJoinToken(record.clone()))
            .await?;
        tracing::info!(id = %record.id, role = role.as_str(), uses, "join token minted");
        Ok((token, record))
    }

    /// The join tokens still valid (their secrets are not stored).
    pub fn join_tokens(&self) -> Vec<JoinToken> {
        let now = unix_now_ms();
        self.raft.read(|s| {
            s.membership
                .join_tokens
                .values()
                .filter(|t| t.expires_at_ms > now && t.uses_left > 0)
                .cloned()
                .collect()
        })
    }

    /// Revokes the join token `id`.
    pub async fn delete_join_token(&self, id: &str) -> Result<(), ApiError> {
        self.tenants
            .write(Command::DeleteJoinToken { id: id.to_string() })
            .await?;
        tracing::info!(%id, "join token revoked");
        Ok(())
    }

    fn ca_cert(&self) -> Result<String, ApiError> {
        self.raft
            .read(|s| s.membership.cluster_ca.as_ref().map(|c| c.cert_pem.clone()))
            .ok_or_else(|| ApiError::Unavailable("the cluster CA is not initialised yet".into()))
    }

    /// The cluster CA with its key opened (origins only: the key is sealed in the state).
    fn ca(&self) -> Result<CaBundle, ApiError> {
        let ca = self
            .raft
            .read(|s| s.membership.cluster_ca.clone())
            .ok_or_else(|| ApiError::Unavailable("the cluster CA is not initialised yet".into()))?;
        Ok(CaBundle {
            key_pem: self
                .tenants
                .keyring()
                .open_text(place::CA_KEY, &ca.key_pem)?,
            cert_pem: ca.cert_pem,
        })
    }

    /// Admits a node that presents a valid join token: signs its certificate, registers it,
    /// and makes an origin a voter (in the background: it starts its Raft once it has its
    /// certificate).
    pub async fn admit(&self, req: JoinRequest) -> Result<JoinAnswer, ApiError> {
        pki::validate_node_name(&req.name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let hash = sha256_hex(&req.token);
        let now = unix_now_ms();
        let ca = self.ca()?;
        let node_id = streamhub_cluster::raft::node_id_from_name(&req.name);
        // The certificate carries the role the token was minted for (checked when it is spent
        // below): a joiner cannot ask for more.
        let cert = pki::sign_node_csr(&ca, &req.csr, &req.name, req.role.as_str())
            .map_err(|e| ApiError::BadRequest(format!("certificate request refused: {e}")))?;
        let fingerprint =
            pki::pem_fingerprint(&cert).map_err(|e| ApiError::Internal(e.to_string()))?;
        // Spent atomically in the log: two joins with a single-use token cannot both pass.
        let spent = self
            .raft
            .write(Command::UseJoinToken {
                hash,
                role: req.role,
                at_ms: now,
            })
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        match spent {
            CommandResponse::Ok => {}
            CommandResponse::Refused { why } => {
                tracing::warn!(node = %req.name, role = req.role.as_str(), %why, "join refused");
                return Err(ApiError::Forbidden(why));
            }
            _ => {
                tracing::warn!(node = %req.name, "join refused: unknown, expired or used-up join token");
                return Err(ApiError::Unauthorized(
                    "unknown, expired or used-up join token".into(),
                ));
            }
        }
        let record = NodeRecord {
            name: req.name.clone(),
            id: node_id,
            role: req.role,
            region: req.region.clone(),
            http_url: req.http_url.clone(),
            rtmp_url: req.rtmp_url.clone(),
            cluster_addr: req.cluster_addr.clone(),
            version: req.version.clone(),
            load: NodeLoad::default(),
            registered_at_ms: now,
            last_heartbeat_ms: now,
            cert_fingerprint: Some(fingerprint),
            draining_since_ms: None,
            boot: 0,
            draining_boot: 0,
        };
        self.tenants
            .write(Command::RegisterNode(record))
            .await
            .map_err(|e| match ApiError::from(e) {
                ApiError::Conflict(what) => {
                    tracing::warn!(node = %req.name, %what, "join refused: name or id already in the cluster");
                    ApiError::Conflict(format!(
                        "{what}: remove it first (POST /api/v1/cluster/nodes/:name/remove)"
                    ))
                }
                other => other,
            })?;
        if req.role == NodeRole::Origin {
            self.add_voter_in_background(node_id, req.cluster_addr.clone(), req.name.clone());
        }
        tracing::info!(node = %req.name, role = req.role.as_str(), "node admitted to the cluster");
        Ok(JoinAnswer {
            ca_cert: ca.cert_pem.clone(),
            cert,
            node_id,
            voters: self.raft.status().nodes.values().cloned().collect(),
        })
    }

    /// Adds an admitted origin as a voter, retrying for up to two minutes: the joiner starts
    /// its Raft after it got its certificate, and the leader's replication reaches it as soon
    /// as it listens.
    fn add_voter_in_background(&self, node_id: u64, cluster_addr: String, name: String) {
        let raft = self.raft.clone();
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let attempt = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = raft.add_voter(node_id, cluster_addr.clone()) => r,
                };
                match attempt {
                    Ok(()) => return tracing::info!(node = %name, "joined as voter"),
                    Err(e) if Instant::now() > deadline => {
                        return tracing::error!(node = %name, error = %e, "could not add voter")
                    }
                    Err(e) => tracing::debug!(node = %name, error = %e, "add voter: retrying"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    /// Removes a node from the registry, and an origin from the voters.
    pub async fn remove(&self, name: &str) -> Result<(), ApiError> {
        let record = self
            .raft
            .read(|s| s.registry.nodes.get(name).cloned())
            .ok_or_else(|| ApiError::NotFound(format!("node {name}")))?;
        if record.role == NodeRole::Origin {
            self.raft
                .remove_node(record.id)
                .await
                .map_err(|e| ApiError::Unavailable(format!("membership change failed: {e}")))?;
        }
        self.tenants
            .write(Command::RemoveNode {
                name: name.to_string(),
                at_ms: unix_now_ms(),
            })
            .await?;
        tracing::info!(node = %name, fingerprint = ?record.cert_fingerprint, "node removed from the cluster; its certificate is revoked");
        Ok(())
    }

    /// Starts (`on`) or ends the drain of node `name`; answers the node's record.
    pub async fn drain(&self, name: &str, on: bool) -> Result<Value, ApiError> {
        if !self.raft.read(|s| s.registry.nodes.contains_key(name)) {
            return Err(ApiError::NotFound(format!("node {name}")));
        }
        self.tenants
            .write(Command::DrainNode {
                name: name.to_string(),
                on,
                at_ms: unix_now_ms(),
            })
            .await?;
        tracing::info!(node = %name, on, "node drain changed");
        let record = self.raft.read(|s| s.registry.nodes.get(name).cloned());
        Ok(serde_json::to_value(record).unwrap_or_default())
    }

    /// Every node of the registry, with its health.
    pub fn nodes(&self) -> Vec<Value> {
        let now = unix_now_ms();
        self.raft.read(|s| {
            s.registry
                .nodes
                .values()
                .map(|n| {
                    let mut v = serde_json::to_value(n).unwrap_or_default();
                    v["status"] = if is_up(n, now) { "up" } else { "down" }.into();
                    v["lastHeartbeatMs"] = n.last_heartbeat_ms.into();
                    v
                })
                .collect()
        })
    }

    /// The node names of Raft ids, from the registry.
    fn names(&self) -> HashMap<u64, String> {
        self.raft.read(|s| {
            s.registry
                .nodes
                .values()
                .map(|n| (n.id, n.name.clone()))
                .collect()
        })
    }

    /// This node's view of the cluster; `applied` per node is known only on the leader.
    pub fn local_status(&self) -> Value {
        let st = self.raft.status();
        let names = self.names();
        let name = |id: &u64| names.get(id).cloned().unwrap_or_else(|| id.to_string());
        let now = unix_now_ms();
        let nodes: Vec<Value> = self.raft.read(|s| {
            s.registry
                .nodes
                .values()
                .map(|n| {
                    let applied = if n.id == st.node_id {
                        st.last_applied
                    } else {
                        st.replication.get(&n.id).copied().flatten()
                    };
                    json!({
                        "name": n.name, "id": n.id, "role": n.role, "region": n.region,
                        "clusterAddr": n.cluster_addr, "applied": applied,
                        "health": if is_up(n, now) { "up" } else { "down" },
                        "lastHeartbeatMsAgo": now.saturating_sub(n.last_heartbeat_ms),
                    })
                })
                .collect()
        });
        json!({
            "self": self.me,
            "leader": st.leader.as_ref().map(name),
            "term": st.term,
            "state": format!("{:?}", st.state),
            "voters": st.voters.iter().map(name).collect::<Vec<_>>(),
            "learners": st.learners.iter().map(name).collect::<Vec<_>>(),
            "lastApplied": st.last_applied,
            "snapshotIndex": st.snapshot,
            "nodes": nodes,
        })
    }

    /// The cluster as the leader sees it (asked over the cluster transport), or this node's
    /// view, marked `partial`, when the leader cannot be reached.
    pub async fn status(&self) -> Value {
        let st = self.raft.status();
        if st.leader == Some(st.node_id) {
            // The leader's own view is the whole one.
            return self.local_status();
        }
        let leader_addr = st
            .leader
            .filter(|l| *l != st.node_id)
            .and_then(|l| st.nodes.get(&l).cloned());
        if let Some(mut v) = self.peer_status(leader_addr.as_ref()).await {
            v["self"] = self.me.clone().into();
            return v;
        }
        let mut v = self.local_status();
        v["partial"] = true.into();
        v
    }

    /// The cluster view of the node at cluster address `addr` ([`CLUSTER_STATUS`]).
    async fn peer_status(&self, addr: Option<&String>) -> Option<Value> {
        let sock = streamhub_cluster::raft::network::resolve(addr?).await?;
        let body = self
            .raft
            .endpoint()
            .request(sock, CLUSTER_STATUS, Bytes::new(), Duration::from_secs(2))
            .await
            .ok()?;
        serde_json::from_slice(&body).ok()
    }

    /// Answers edges asking about the replicated state, and followers asking for the leader's
    /// view of the cluster.
    pub fn register_services(&self) {
        let tenants = self.tenants.clone();
        self.raft.endpoint().register(
            STATE_QUERY,
            service_fn(move |_peer, body| {
                let tenants = tenants.clone();
                async move {
                    let q: StateQuery = serde_json::from_slice(&body)
                        .map_err(|e| RemoteError::new("bad_request", e.to_string()))?;
                    let answer = answer_query(&tenants, q).await;
                    serde_json::to_vec(&answer)
                        .map(Bytes::from)
                        .map_err(|e| RemoteError::new("internal", e.to_string()))
                }
            }),
        );
        let this = self.clone();
        self.raft.endpoint().register(
            CLUSTER_STATUS,
            service_fn(move |_peer, _body| {
                let v = this.local_status();
                async move { Ok(Bytes::from(serde_json::to_vec(&v).unwrap_or_default())) }
            }),
        );
    }

    /// Finishes this start's part in the cluster: a bootstrap stores the CA and registers this
    /// node; a joiner waits until it is a voter; a restarted member until it caught up.
    pub async fn settle(&self, startup: Startup, me: NodeRecord) -> anyhow::Result<()> {
        match startup {
            Startup::Bootstrap { ca } => {
                // The CA key enters the log sealed; the key that opens it never does.
                let key = self.tenants.keyring().create()?;
                match self
                    .raft
                    .write(Command::SetClusterKeyCheck { check: key.check() })
                    .await?
                {
                    CommandResponse::Ok => {}
                    other => anyhow::bail!("recording the cluster key: {other:?}"),
                }
                let ca = ClusterCa {
                    key_pem: key.seal(place::CA_KEY, ca.key_pem.as_bytes()),
                    cert_pem: ca.cert_pem,
                };
                match self.raft.write(Command::InitCluster(ca)).await? {
                    CommandResponse::Ok | CommandResponse::Exists { .. } => {}
                    other => anyhow::bail!("initialising the cluster: {other:?}"),
                }
                let session_key = key.seal(place::SESSION_KEY, random_hex(32).as_bytes());
                match self
                    .raft
                    .write(Command::SetSessionKey {
                        sealed: session_key,
                    })
                    .await?
                {
                    CommandResponse::Ok | CommandResponse::Exists { .. } => {}
                    other => anyhow::bail!("making the session key: {other:?}"),
                }
                match self.raft.write(Command::RegisterNode(me)).await? {
                    CommandResponse::Ok | CommandResponse::Exists { .. } => Ok(()),
                    other => anyhow::bail!("registering this node: {other:?}"),
                }
            }
            Startup::Join { .. } => self.wait_until_voter().await,
            Startup::Restart => self.wait_until_caught_up().await,
        }
    }

    /// A restarted member serves nothing until it has caught up with the group: its own state
    /// on disk may lag what it acknowledged before it stopped (applied < committed), and after
    /// a crash it may even believe it still leads an old term. Ready when it leads with a
    /// quorum (`ensure_linearizable`), or when it has applied what the current leader has
    /// applied.
    ///
    /// It does not depose the healthy leader meanwhile (a node that came back before its peers'
    /// connections to it were re-established used to time out and start elections with ever
    /// higher terms): the Raft node's pre-vote holds its elections back while its peers hear
    /// a leader or cannot be reached (`streamhub_cluster::raft`, docs/cluster.md).
    async fn wait_until_caught_up(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let me = self.raft.node_id();
        loop {
            let st = self.raft.status();
            if st.voters.len() <= 1 {
                return Ok(());
            }
            match st.leader {
                Some(l) if l == me => {
                    let check = tokio::time::timeout(
                        Duration::from_secs(2),
                        self.raft.raft().ensure_linearizable(),
                    )
                    .await;
                    if matches!(check, Ok(Ok(_))) {
                        return Ok(());
                    }
                }
                Some(l) => {
                    let leader_applied = self.peer_status(st.nodes.get(&l)).await;
                    if let Some(target) = leader_applied.and_then(|v| v["lastApplied"].as_u64()) {
                        if self.raft.status().last_applied >= Some(target) {
                            tracing::info!(applied = target, "caught up with the leader");
                            return Ok(());
                        }
                    }
                }
                None => {}
            }
            if Instant::now() > deadline {
                anyhow::bail!("could not catch up with the cluster within 120 s (status {st:?})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A joiner is ready once it is a voter and has applied what the leader had committed.
    async fn wait_until_voter(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let me = self.raft.node_id();
        loop {
            let st = self.raft.status();
            if st.voters.contains(&me) && st.leader.is_some() && st.last_applied.is_some() {
                tracing::info!(term = st.term, "joined the cluster as a voter");
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!("not added to the cluster within 120 s (status {st:?})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
