//! How a node comes to be in a cluster: bootstrap a new one (create the CA), join an existing one
//! through any origin with a join token, or restart as the member it was.

use std::path::{Path, PathBuf};

use anyhow::Context;
use streamhub_cluster::state::NodeRole;
use streamhub_cluster::transport::pki::{CaBundle, NodeIdentity};

use crate::config::Settings;
use streamhub_cluster::registry::JoinAnswer;

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
    let who = streamhub_edge::join::Joiner {
        name: settings.node_name.clone(),
        role,
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
    };
    Ok(streamhub_edge::join::join(std::slice::from_ref(&join.url), &join.token, &who).await?)
}

/// The cluster address other nodes dial: the bind address, with an unspecified IP replaced by
/// the public host.
pub fn advertised_cluster_addr(settings: &Settings) -> String {
    if let Some(addr) = &settings.cluster_advertise {
        return addr.clone();
    }
    if settings.cluster.ip().is_unspecified() {
        format!("{}:{}", settings.public_host(), settings.cluster.port())
    } else {
        settings.cluster.to_string()
    }
}
