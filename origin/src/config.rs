//! Configuration of an origin: the flags every node takes ([`NodeArgs`]) and the origin's own,
//! loaded and checked by the node skeleton ([`streamhub_media::node::config`]).

use std::net::SocketAddr;

use clap::Parser;
use serde::Deserialize;
use streamhub_media::node::config::{
    self, invalid, BinaryArgs, ConfigError, NodeArgs, NodeKind, NodeSettings,
};

/// Flags and file keys of `streamhub-origin`.
#[derive(Debug, Default, Clone, Parser, Deserialize)]
#[command(name = "streamhub-origin", version, about = "streamhub origin node")]
#[serde(rename_all = "kebab-case")]
pub struct OriginArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub node: NodeArgs,
    /// RTMP listen address [default: 0.0.0.0:1935].
    #[arg(long, env = "STREAMHUB_RTMP")]
    pub rtmp: Option<SocketAddr>,
    /// RTMPS (RTMP over TLS) listen address; needs --tls-cert/--tls-key or --acme-domain.
    #[arg(long, env = "STREAMHUB_RTMPS")]
    pub rtmps: Option<SocketAddr>,
    /// SRT ingest listen address (UDP; MPEG-TS with H.264 and AAC) [default: off].
    #[arg(long, env = "STREAMHUB_SRT")]
    pub srt: Option<SocketAddr>,
    /// Ingest connections (RTMP, RTMPS, SRT) open at once from one address [default: 32].
    #[arg(long, env = "STREAMHUB_INGEST_MAX_PER_ADDRESS")]
    pub ingest_max_per_address: Option<usize>,
    /// Role-based authorization of the API: `off` (every signed-in caller may do what its key
    /// scope allows), `log` (decide and log would-be denials, allow them), `on` (enforce)
    /// [default: on].
    #[arg(long, env = "STREAMHUB_AUTHZ_ENFORCE", value_enum)]
    pub authz_enforce: Option<crate::authz::Mode>,
    /// Disk the recording spool may use on this origin, in MiB: media recorded and not yet
    /// uploaded waits there; new recordings are refused when it is full [default: 2048].
    #[arg(long, env = "STREAMHUB_RECORD_SPOOL_MB")]
    pub record_spool_mb: Option<u64>,
    /// Size of the S3 parts recordings are uploaded in, in MiB (5 to 64) [default: 8].
    #[arg(long, env = "STREAMHUB_RECORD_PART_MB")]
    pub record_part_mb: Option<u64>,
    /// How long a recording waits for its room to come back after the origin recording it
    /// stopped (or before its room first goes live), in seconds; past it the recording ends
    /// [default: 120].
    #[arg(long, env = "STREAMHUB_RECORD_RESUME_SECS")]
    pub record_resume_secs: Option<u64>,
    /// Let webhooks reach loopback, private and cluster addresses (refused by default: a
    /// tenant's webhook must not reach into the cluster's own network).
    #[arg(
        long,
        env = "STREAMHUB_WEBHOOK_ALLOW_PRIVATE",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    #[serde(default)]
    pub webhook_allow_private: bool,
    /// Raft log entries between snapshots (tests lower it) [default: 5000].
    #[arg(long, env = "STREAMHUB_RAFT_SNAPSHOT_LOGS", hide = true)]
    pub raft_snapshot_logs: Option<u64>,
}

impl BinaryArgs for OriginArgs {
    fn node(&self) -> &NodeArgs {
        &self.node
    }

    fn merge(self, file: Self) -> Self {
        OriginArgs {
            node: self.node.merge(file.node),
            rtmp: self.rtmp.or(file.rtmp),
            rtmps: self.rtmps.or(file.rtmps),
            srt: self.srt.or(file.srt),
            ingest_max_per_address: self.ingest_max_per_address.or(file.ingest_max_per_address),
            raft_snapshot_logs: self.raft_snapshot_logs.or(file.raft_snapshot_logs),
            authz_enforce: self.authz_enforce.or(file.authz_enforce),
            record_spool_mb: self.record_spool_mb.or(file.record_spool_mb),
            record_part_mb: self.record_part_mb.or(file.record_part_mb),
            record_resume_secs: self.record_resume_secs.or(file.record_resume_secs),
            webhook_allow_private: self.webhook_allow_private || file.webhook_allow_private,
        }
    }
}

/// Checked settings of an origin.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node: NodeSettings,
    pub rtmp: SocketAddr,
    /// RTMPS, if on (TLS is then configured).
    pub rtmps: Option<SocketAddr>,
    /// SRT, if on.
    pub srt: Option<SocketAddr>,
    pub ingest_max_per_address: usize,
    pub raft_snapshot_logs: u64,
    pub authz: crate::authz::Mode,
    /// The recording spool's bound, in bytes.
    pub record_spool_bytes: u64,
    /// The S3 part size of recordings, in bytes.
    pub record_part_bytes: u64,
    /// How long a recording whose room is not live anywhere waits for it.
    pub record_resume: std::time::Duration,
    /// Webhooks may reach loopback, private and cluster addresses.
    pub webhook_allow_private: bool,
}

impl OriginArgs {
    /// Parses the command line and the TOML file it names, then checks them.
    pub fn load() -> Result<Settings, ConfigError> {
        config::load::<OriginArgs>(NodeKind::Origin)?.into_settings()
    }

    /// Applies defaults and validates.
    pub fn into_settings(self) -> Result<Settings, ConfigError> {
        let raft_snapshot_logs = self.raft_snapshot_logs.unwrap_or(5000);
        if raft_snapshot_logs < 10 {
            return Err(invalid("raft-snapshot-logs", "must be at least 10"));
        }
        let node = self.node.into_settings(NodeKind::Origin)?;
        if self.rtmps.is_some() && node.tls.is_none() {
            return Err(invalid(
                "rtmps",
                "RTMPS needs a certificate: --tls-cert/--tls-key or --acme-domain",
            ));
        }
        let ingest_max_per_address = self
            .ingest_max_per_address
            .unwrap_or(crate::rtmp::DEFAULT_MAX_PER_ADDRESS);
        if ingest_max_per_address == 0 {
            return Err(invalid("ingest-max-per-address", "must be at least 1"));
        }
        let part_mb = self.record_part_mb.unwrap_or(8);
        if !(5..=64).contains(&part_mb) {
            return Err(invalid(
                "record-part-mb",
                "must be 5 to 64 (S3's smallest part is 5 MiB)",
            ));
        }
        let spool_mb = self.record_spool_mb.unwrap_or(2048);
        if spool_mb < 4 * part_mb {
            return Err(invalid(
                "record-spool-mb",
                "must hold at least four parts (--record-part-mb)",
            ));
        }
        let resume_secs = self.record_resume_secs.unwrap_or(120);
        if !(10..=86_400).contains(&resume_secs) {
            return Err(invalid("record-resume-secs", "must be 10 to 86400"));
        }
        Ok(Settings {
            record_resume: std::time::Duration::from_secs(resume_secs),
            webhook_allow_private: self.webhook_allow_private,
            record_spool_bytes: spool_mb * 1024 * 1024,
            record_part_bytes: part_mb * 1024 * 1024,
            node,
            rtmps: self.rtmps,
            srt: self.srt,
            ingest_max_per_address,
            rtmp: self.rtmp.unwrap_or(([0, 0, 0, 0], 1935).into()),
            raft_snapshot_logs,
            authz: self.authz_enforce.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = OriginArgs {
            node: NodeArgs {
                node_id: Some("origin-eu-1".into()),
                ..Default::default()
            },
            ..Default::default()
        }
        .into_settings()
        .unwrap();
        assert_eq!(s.node.http.port(), 3020);
        assert_eq!(s.rtmp.port(), 1935);
        assert_eq!(s.raft_snapshot_logs, 5000);
    }

    #[test]
    fn the_example_config_is_valid() {
        let cmd = config::command::<OriginArgs>(NodeKind::Origin);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("origin.toml");
        std::fs::write(&path, include_str!("../../deploy/origin.toml")).unwrap();
        let file: OriginArgs = config::read_file(&path, &cmd).unwrap();
        let s = file.into_settings().unwrap();
        assert_eq!(s.node.region, "eu");
        assert_eq!(s.rtmp.port(), 1935);
    }

    #[test]
    fn webhook_allow_private_takes_1_from_the_environment() {
        let parse = |args: &[&str]| {
            let cmd = config::command::<OriginArgs>(NodeKind::Origin);
            let m = cmd.try_get_matches_from(args).unwrap();
            <OriginArgs as clap::FromArgMatches>::from_arg_matches(&m).unwrap()
        };
        assert!(!parse(&["streamhub-origin"]).webhook_allow_private);
        assert!(parse(&["streamhub-origin", "--webhook-allow-private"]).webhook_allow_private);
        std::env::set_var("STREAMHUB_WEBHOOK_ALLOW_PRIVATE", "1");
        let from_env = parse(&["streamhub-origin"]).webhook_allow_private;
        std::env::remove_var("STREAMHUB_WEBHOOK_ALLOW_PRIVATE");
        assert!(from_env);
    }

    #[test]
    fn docs_config_md_matches_help() {
        let cmd = config::command::<OriginArgs>(NodeKind::Origin);
        let docs = include_str!("../../docs/config.md");
        let mismatches = config::config_docs_mismatches(docs, &cmd, NodeKind::Origin);
        assert!(
            mismatches.is_empty(),
            "docs/config.md vs --help: {mismatches:#?}"
        );
    }
}
