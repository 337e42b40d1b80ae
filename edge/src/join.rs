//! Joining a cluster over HTTP: a new node sends a certificate request with a join token to any
//! origin (`POST /api/v1/cluster/join`) and gets back its certificate and the cluster CA, which
//! it checks against the fingerprint carried by the token before trusting it.

use std::time::Duration;

use streamhub_cluster::registry::{JoinAnswer, JoinRequest};
use streamhub_cluster::state::NodeRole;
use streamhub_cluster::transport::pki::{self, NodeIdentity};

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
    let client = reqwest::Client::new();
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
