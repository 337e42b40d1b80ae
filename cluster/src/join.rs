//! Joining a cluster over HTTP: a new node sends a certificate request with a join token to any
//! origin (`POST /api/v1/cluster/join`) and gets back its certificate and the cluster CA, which
//! it checks against the fingerprint carried by the token before trusting it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::state::NodeRole;
use crate::transport::pki::{self, NodeIdentity};

/// Body of `POST /cluster/join`, sent by a node starting with `--join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    pub token: String,
    pub name: String,
    pub role: NodeRole,
    /// PEM certificate signing request for the node's key.
    pub csr: String,
    pub cluster_addr: String,
    pub http_url: String,
    pub rtmp_url: Option<String>,
    pub region: String,
    pub version: String,
}

/// Answer to a join: the node's certificate and the cluster it joined.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinAnswer {
    pub ca_cert: String,
    pub cert: String,
    pub node_id: u64,
    /// Cluster addresses of the voters, to reach the group.
    pub voters: Vec<String>,
}

/// Prefix of join tokens.
pub const JOIN_TOKEN_PREFIX: &str = "shj_";

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The token is not of the form `shj_<secret>.<16 hex of the CA fingerprint>`.
    #[error("malformed join token (expected shj_<secret>.<ca fingerprint>)")]
    MalformedToken,
    /// The node's key or the returned certificate could not be handled.
    #[error("cluster identity: {0}")]
    Pki(#[from] pki::PkiError),
    /// No origin could be reached or each refused; the last reason.
    #[error("join refused or failed at every origin; last: {0}")]
    Failed(String),
    /// An origin presented a CA that does not match the token: the wrong cluster, or a forgery.
    #[error("the cluster at {0} presented a CA that does not match the join token")]
    WrongCa(String),
    /// The data dir holds the identity of another node.
    #[error(
        "data dir {dir} belongs to node {found:?}, not {wanted:?}: start with --node-id {found} or use another data dir"
    )]
    OtherNode {
        dir: String,
        found: String,
        wanted: String,
    },
    /// A first start without what joining needs.
    #[error("first start: {0}")]
    Missing(&'static str),
}

/// Where a node keeps its cluster certificate and key, under its data dir.
pub fn identity_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster")
}

/// The cluster identity kept in `data_dir`, if this node has been a member before; refused when
/// it belongs to another node name.
pub fn existing_identity(
    data_dir: &Path,
    node_name: &str,
) -> Result<Option<NodeIdentity>, JoinError> {
    let dir = identity_dir(data_dir);
    if !NodeIdentity::exists(&dir) {
        return Ok(None);
    }
    let identity = NodeIdentity::load(&dir)?;
    if identity.name != node_name {
        return Err(JoinError::OtherNode {
            dir: data_dir.display().to_string(),
            found: identity.name,
            wanted: node_name.to_string(),
        });
    }
    Ok(Some(identity))
}

/// Joins through the first of `urls` that admits `who` (see [`join`]) and keeps the identity in
/// `data_dir`.
pub async fn join_and_save(
    data_dir: &Path,
    urls: &[url::Url],
    token: Option<&str>,
    who: &Joiner,
) -> Result<(NodeIdentity, JoinAnswer), JoinError> {
    if urls.is_empty() {
        return Err(JoinError::Missing(
            "--join (origins to join through) is needed",
        ));
    }
    let token = token.ok_or(JoinError::Missing("--join-token is needed to join"))?;
    let (identity, answer) = join(urls, token, who).await?;
    identity.save(&identity_dir(data_dir))?;
    Ok((identity, answer))
}

/// Who is joining.
#[derive(Debug, Clone)]
pub struct Joiner {
    /// The node name (the certificate's CN).
    pub name: String,
    pub role: NodeRole,
    /// The cluster address others dial.
    pub cluster_addr: String,
    /// The public HTTP base URL.
    pub http_url: String,
    pub rtmp_url: Option<String>,
    pub region: String,
    /// Extra roots (PEM file) trusted for the HTTPS of the join URLs, beside the web's.
    pub ca_root: Option<std::path::PathBuf>,
}

/// Joins through the first of `urls` (HTTP base URLs of origins) that admits the node.
pub async fn join(
    urls: &[url::Url],
    token: &str,
    who: &Joiner,
) -> Result<(NodeIdentity, JoinAnswer), JoinError> {
    let expected_fp = token
        .strip_prefix(JOIN_TOKEN_PREFIX)
        .and_then(|t| t.rsplit_once('.'))
        .map(|(_, fp)| fp.to_string())
        .filter(|fp| fp.len() == 16)
        .ok_or(JoinError::MalformedToken)?;
    let key = pki::node_csr(&who.name)?;
    let req = JoinRequest {
        token: token.to_string(),
        name: who.name.clone(),
        role: who.role,
        csr: key.csr_pem.clone(),
        cluster_addr: who.cluster_addr.clone(),
        http_url: who.http_url.clone(),
        rtmp_url: who.rtmp_url.clone(),
        region: who.region.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let client = http_client(who.ca_root.as_deref())?;
    let mut last = String::from("no --join URL given");
    for base in urls {
        let url = format!(
            "{}/api/v1/cluster/join",
            base.as_str().trim_end_matches('/')
        );
        let answer = match post(&client, &url, &req).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(%url, error = %e, "join attempt failed");
                last = e;
                continue;
            }
        };
        let fp = pki::ca_fingerprint(&answer.ca_cert)?;
        if !fp.starts_with(&expected_fp) {
            return Err(JoinError::WrongCa(url));
        }
        let identity =
            NodeIdentity::from_pem(answer.ca_cert.clone(), answer.cert.clone(), key.key_pem)?;
        return Ok((identity, answer));
    }
    Err(JoinError::Failed(last))
}

/// The HTTP client of a join: the web's roots, and those of `ca_root` if given. The token is
/// a secret: it only goes to a server that proves its name.
fn http_client(ca_root: Option<&Path>) -> Result<reqwest::Client, JoinError> {
    let mut builder = reqwest::Client::builder();
    if let Some(path) = ca_root {
        let pem = std::fs::read(path)
            .map_err(|e| JoinError::Failed(format!("{}: {e}", path.display())))?;
        let roots = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| JoinError::Failed(format!("{}: {e}", path.display())))?;
        for root in roots {
            builder = builder.add_root_certificate(root);
        }
    }
    builder
        .build()
        .map_err(|e| JoinError::Failed(format!("HTTP client: {e}")))
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    req: &JoinRequest,
) -> Result<JoinAnswer, String> {
    let resp = client
        .post(url)
        .json(req)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        let message = body["error"]["message"].as_str().unwrap_or("");
        return Err(format!("{url}: {status} {message}"));
    }
    serde_json::from_value(body["data"].clone()).map_err(|e| format!("{url}: bad answer: {e}"))
}
