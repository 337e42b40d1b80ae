//! Configuration of an edge: the flags every node takes ([`NodeArgs`]) and the edge's own, loaded
//! and checked by the node skeleton ([`streamhub_media::node::config`]).

use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use streamhub_media::node::config::{
    self, invalid, BinaryArgs, ConfigError, NodeArgs, NodeKind, NodeSettings,
};

/// Flags and file keys of `streamhub-edge`.
#[derive(Debug, Default, Clone, Parser, Deserialize)]
#[command(name = "streamhub-edge", version, about = "streamhub edge node")]
#[serde(rename_all = "kebab-case")]
pub struct EdgeArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub node: NodeArgs,
    /// Seconds a room stays subscribed after its last viewer (0.5-3600) [default: 10].
    #[arg(long, env = "STREAMHUB_LINGER_SECS")]
    pub linger_secs: Option<f64>,
    /// Seconds a SIGTERM'd edge keeps serving its viewers while they move away (0-3600; it
    /// stops sooner once none is left) [default: 10].
    #[arg(long, env = "STREAMHUB_DRAIN_SECS")]
    pub drain_secs: Option<f64>,
}

impl BinaryArgs for EdgeArgs {
    fn node(&self) -> &NodeArgs {
        &self.node
    }

    fn merge(self, file: Self) -> Self {
        EdgeArgs {
            node: self.node.merge(file.node),
            linger_secs: self.linger_secs.or(file.linger_secs),
            drain_secs: self.drain_secs.or(file.drain_secs),
        }
    }
}

/// Checked settings of an edge.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    pub node: NodeSettings,
    /// How long a room stays subscribed after its last viewer.
    pub linger: Duration,
    /// How long a SIGTERM'd edge drains at most.
    pub drain: Duration,
}

impl EdgeArgs {
    /// Parses the command line and the TOML file it names, then checks them.
    pub fn load() -> Result<EdgeSettings, ConfigError> {
        config::load::<EdgeArgs>(NodeKind::Edge)?.into_settings()
    }

    /// Applies defaults and validates.
    pub fn into_settings(self) -> Result<EdgeSettings, ConfigError> {
        let linger = self.linger_secs.unwrap_or(10.0);
        if !(0.5..=3600.0).contains(&linger) {
            return Err(invalid(
                "linger-secs",
                format!("{linger} is outside 0.5..=3600"),
            ));
        }
        let drain = self.drain_secs.unwrap_or(10.0);
        if !(0.0..=3600.0).contains(&drain) {
            return Err(invalid(
                "drain-secs",
                format!("{drain} is outside 0..=3600"),
            ));
        }
        Ok(EdgeSettings {
            node: self.node.into_settings(NodeKind::Edge)?,
            linger: Duration::from_secs_f64(linger),
            drain: Duration::from_secs_f64(drain),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_is_valid() {
        let cmd = config::command::<EdgeArgs>(NodeKind::Edge);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.toml");
        std::fs::write(&path, include_str!("../../deploy/edge.toml")).unwrap();
        let file: EdgeArgs = config::read_file(&path, &cmd).unwrap();
        let s = file.into_settings().unwrap();
        assert_eq!(s.node.join.len(), 2);
        assert_eq!(s.node.region, "eu");
        assert_eq!(s.linger, Duration::from_secs(10));
        assert_eq!(s.drain, Duration::from_secs(10));
    }

    #[test]
    fn linger_and_drain_are_bounded() {
        let bad = EdgeArgs {
            linger_secs: Some(0.0),
            ..Default::default()
        };
        assert!(bad.into_settings().is_err());
        let bad = EdgeArgs {
            drain_secs: Some(-1.0),
            ..Default::default()
        };
        assert!(bad.into_settings().is_err());
    }

    #[test]
    fn docs_config_md_matches_help() {
        let cmd = config::command::<EdgeArgs>(NodeKind::Edge);
        let docs = include_str!("../../docs/config.md");
        let mismatches = config::config_docs_mismatches(docs, &cmd, NodeKind::Edge);
        assert!(
            mismatches.is_empty(),
            "docs/config.md vs --help: {mismatches:#?}"
        );
    }
}
