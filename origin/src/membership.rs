//! How a node comes to be in a cluster: bootstrap a new one (create the CA), join an existing one
//! through any origin with a join token, or restart as the member it was.

use std::path::{Path, PathBuf};

use anyhow::Context;
use streamhub_cluster::state::NodeRole;
use streamhub_cluster::transport::pki::{self, CaBundle, NodeIdentity};

use crate::api::cluster::{JoinAnswer, JoinRequest, JOIN_TOKEN_PREFIX};
use crate::config::Settings;

/// How this start relates to the cluster.
pub enum Startup {
    /// First start of the first origin: a new cluster with this CA.
    Bootstrap { ca: CaBundle },
    /// First start of a node admitted through `--join`.
    Join { answer: JoinAnswer },
    /// The node has been a member before; its state is on disk.
    Restart,
}

/// Where the node's certificate and key live.
pub fn identity_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster")
}

/// Loads, creates or fetches (by joining) this node's cluster identity.
pub async fn prepare(
    settings: &Settings,
    role: NodeRole,
) -> anyhow::Result<(NodeIdentity, Startup)> {
    let dir = identity_dir(&settings.data_dir);
    if NodeIdentity::exists(&dir) {
        let identity = NodeIdentity::load(&dir).context("loading the node's cluster identity")?;
        if identity.name != settings.node_name {
            anyhow::bail!(
                "data dir {} belongs to node {:?}, not {:?}: start with --node-id {} or use another data dir",
                settings.data_dir.display(),
                identity.name,
                settings.node_name,
                identity.name
            );
        }
        if settings.join.is_some() {
            tracing::info!("node already a cluster member; --join ignored");
        }
        return Ok((identity, Startup::Restart));
    }
    match &settings.join {
        Some(_) => {
            let (identity, answer) = join(settings, role).await?;
            identity
                .save(&dir)
                .context("saving the node's cluster identity")?;
            Ok((identity, Startup::Join { answer }))
        }
        None => {
            let (identity, ca) =
                NodeIdentity::bootstrap("streamhub", &settings.node_name, "origin")
                    .context("creating the cluster CA")?;
            identity
                .save(&dir)
                .context("saving the node's cluster identity")?;
            Ok((identity, Startup::Bootstrap { ca }))
        }
    }
}

/// Asks the origin at `--join` to admit this node; checks the CA against the token.
async fn join(settings: &Settings, role: NodeRole) -> anyhow::Result<(NodeIdentity, JoinAnswer)> {
    let join = settings.join.as_ref().context("no --join")?;
    let expected_fp = join
        .token
        .strip_prefix(JOIN_TOKEN_PREFIX)
        .and_then(|t| t.rsplit_once('.'))
        .map(|(_, fp)| fp.to_string())
        .filter(|fp| fp.len() == 16)
        .context("malformed join token (expected shj_<secret>.<ca fingerprint>)")?;
    let key = pki::node_csr(&settings.node_name).context("creating the node key")?;
    let req = JoinRequest {
        token: join.token.clone(),
        name: settings.node_name.clone(),
        role,
        csr: key.csr_pem.clone(),
        cluster_addr: advertised_cluster_addr(settings),
        http_url: settings.public_base(),
        rtmp_url: matches!(role, NodeRole::Origin).then(|| {
            format!(
                "rtmp://{}:{}/live",
                settings.public_host(),
                settings.rtmp.port()
            )
        }),
        region: settings.region.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let url = format!(
        "{}/api/v1/cluster/join",
        join.url.as_str().trim_end_matches('/')
    );
    let resp = reqwest::Client::new()
        .post(&url)
        .json(&req)
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .with_context(|| format!("joining through {url}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!(
            "join refused by {url}: {status} {}",
            body["error"]["message"].as_str().unwrap_or("")
        );
    }
    let answer: JoinAnswer = serde_json::from_value(body["data"].clone()).context("join answer")?;
    let fp = pki::ca_fingerprint(&answer.ca_cert)?;
    if !fp.starts_with(&expected_fp) {
        anyhow::bail!("the cluster at {url} presented a CA that does not match the join token");
    }
    let identity =
        NodeIdentity::from_pem(answer.ca_cert.clone(), answer.cert.clone(), key.key_pem)?;
    Ok((identity, answer))
}

/// The cluster address other nodes dial: the bind address, with an unspecified IP replaced by
/// the public host.
pub fn advertised_cluster_addr(settings: &Settings) -> String {
    if settings.cluster.ip().is_unspecified() {
        format!("{}:{}", settings.public_host(), settings.cluster.port())
    } else {
        settings.cluster.to_string()
    }
}
