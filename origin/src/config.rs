//! Configuration of an origin node: CLI flags, `STREAMHUB_*` environment variables and an
//! optional TOML file, merged in that order of precedence, then validated into [`Settings`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use streamhub_edge::hls::HlsConfig;

/// Log filter when none is given: our crates at info, chatty dependencies at warn.
pub const DEFAULT_LOG: &str = "info,openraft=warn,sled=warn,rtc_dtls=error,rtc_ice=warn";

/// Flags and file keys of `streamhub-origin`. Every field is optional here; defaults are applied
/// by [`OriginArgs::into_settings`].
#[derive(Debug, Default, Clone, Parser, Deserialize)]
#[command(name = "streamhub-origin", version, about = "streamhub origin node")]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OriginArgs {
    /// TOML file with any of these settings (flags and env override it).
    #[arg(long, env = "STREAMHUB_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Where Raft state, secrets and certificates live [default: ./data].
    #[arg(long, env = "STREAMHUB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address: API, HLS, dashboard [default: 0.0.0.0:3020].
    #[arg(long, env = "STREAMHUB_HTTP")]
    pub http: Option<SocketAddr>,
    /// RTMP listen address [default: 0.0.0.0:1935].
    #[arg(long, env = "STREAMHUB_RTMP")]
    pub rtmp: Option<SocketAddr>,
    /// Public base URL of this node, used in playUrl/embedUrl [default: http://<host>:<http port>].
    #[arg(long, env = "STREAMHUB_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Readable node name such as origin-eu-1 [default: the hostname].
    #[arg(long, env = "STREAMHUB_NODE_ID")]
    pub node_id: Option<String>,
    /// Region label of this node [default: local].
    #[arg(long, env = "STREAMHUB_REGION")]
    pub region: Option<String>,
    /// HLS target segment duration in seconds; groups (and so segments on every node) are cut at
    /// the first keyframe past each multiple of it [default: 2].
    #[arg(long, env = "STREAMHUB_HLS_TARGET_SECS")]
    pub hls_target_secs: Option<f64>,
    /// LL-HLS part target in seconds [default: 0.333].
    #[arg(long, env = "STREAMHUB_HLS_PART_SECS")]
    pub hls_part_secs: Option<f64>,
    /// Advertise LL-HLS (parts, blocking reload); plain HLS players work either way [default: true].
    #[arg(long, env = "STREAMHUB_LL_HLS")]
    pub ll_hls: Option<bool>,
    /// Request header carrying the client's region for steering (e.g. set by a CDN).
    #[arg(long, env = "STREAMHUB_REGION_HEADER")]
    pub region_header: Option<String>,
    /// Bytes of HLS media (segments and parts of every room) held in memory [default: 268435456].
    #[arg(long, env = "STREAMHUB_CACHE_BYTES")]
    pub cache_bytes: Option<u64>,
    /// Cluster (QUIC, UDP) listen address for Raft and relay between nodes [default: 0.0.0.0:4433].
    #[arg(long, env = "STREAMHUB_CLUSTER")]
    pub cluster: Option<SocketAddr>,
    /// Cluster address other nodes dial, when it is not the bind address (1:1 NAT, a proxy)
    /// [default: the bind address, with the public host for an unspecified IP].
    #[arg(long, env = "STREAMHUB_CLUSTER_ADVERTISE")]
    pub cluster_advertise: Option<String>,
    /// HTTP URL of any origin of the cluster to join (first start only; a node with state
    /// restarts as the member it was).
    #[arg(long, env = "STREAMHUB_JOIN")]
    pub join: Option<String>,
    /// Join token minted by an admin (`POST /api/v1/cluster/join-tokens`) or printed by the first
    /// origin.
    #[arg(long, env = "STREAMHUB_JOIN_TOKEN")]
    pub join_token: Option<String>,
    /// Raft log entries between snapshots (tests lower it) [default: 5000].
    #[arg(long, env = "STREAMHUB_RAFT_SNAPSHOT_LOGS", hide = true)]
    pub raft_snapshot_logs: Option<u64>,
    /// The one UDP port of WebRTC (WHIP, WHEP) media [default: 0.0.0.0:7882].
    #[arg(long, env = "STREAMHUB_WEBRTC_UDP")]
    pub webrtc_udp: Option<SocketAddr>,
    /// IP advertised to WebRTC clients, for 1:1 NAT [default: the bound or reached address].
    #[arg(long, env = "STREAMHUB_WEBRTC_PUBLIC_IP")]
    pub webrtc_public_ip: Option<std::net::IpAddr>,
    /// WebRTC sessions at once [default: 5000].
    #[arg(long, env = "STREAMHUB_WEBRTC_MAX_SESSIONS")]
    pub webrtc_max_sessions: Option<usize>,
    /// Log filter, as RUST_LOG [default: info,openraft=warn,sled=warn].
    #[arg(long, env = "STREAMHUB_LOG")]
    pub log: Option<String>,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Checked settings of a node.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    pub rtmp: SocketAddr,
    /// Public base URL without a trailing slash.
    pub public_url: url::Url,
    pub node_name: String,
    pub region: String,
    /// HLS packaging (target, part target, window, LL-HLS).
    pub hls: HlsConfig,
    /// Bound of the media cache.
    pub cache_bytes: u64,
    /// Header naming the client's region for steering, if configured.
    pub region_header: Option<axum::http::HeaderName>,
    pub webrtc: streamhub_edge::webrtc::WebRtcConfig,
    pub log: String,
    /// Cluster QUIC address.
    pub cluster: SocketAddr,
    /// What other nodes dial, if not derived from `cluster`.
    pub cluster_advertise: Option<String>,
    /// Where and how to join, if this node was told to.
    pub join: Option<JoinSettings>,
    pub raft_snapshot_logs: u64,
}

/// `--join` and `--join-token`, checked.
#[derive(Debug, Clone)]
pub struct JoinSettings {
    pub url: url::Url,
    pub token: String,
}

impl OriginArgs {
    /// Reads the TOML file named by `--config` (if any) under the flags.
    pub fn load() -> Result<Settings, ConfigError> {
        let cli = OriginArgs::parse();
        let file = match &cli.config {
            Some(path) => Self::from_file(path)?,
            None => OriginArgs::default(),
        };
        cli.merge(file).into_settings()
    }

    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Fields set in `self` win over those of `file`.
    pub fn merge(self, file: OriginArgs) -> OriginArgs {
        OriginArgs {
            config: self.config,
            data_dir: self.data_dir.or(file.data_dir),
            http: self.http.or(file.http),
            rtmp: self.rtmp.or(file.rtmp),
            public_url: self.public_url.or(file.public_url),
            node_id: self.node_id.or(file.node_id),
            region: self.region.or(file.region),
            hls_target_secs: self.hls_target_secs.or(file.hls_target_secs),
            hls_part_secs: self.hls_part_secs.or(file.hls_part_secs),
            ll_hls: self.ll_hls.or(file.ll_hls),
            cache_bytes: self.cache_bytes.or(file.cache_bytes),
            region_header: self.region_header.or(file.region_header),
            cluster: self.cluster.or(file.cluster),
            cluster_advertise: self.cluster_advertise.or(file.cluster_advertise),
            join: self.join.or(file.join),
            join_token: self.join_token.or(file.join_token),
            raft_snapshot_logs: self.raft_snapshot_logs.or(file.raft_snapshot_logs),
            webrtc_udp: self.webrtc_udp.or(file.webrtc_udp),
            webrtc_public_ip: self.webrtc_public_ip.or(file.webrtc_public_ip),
            webrtc_max_sessions: self.webrtc_max_sessions.or(file.webrtc_max_sessions),
            log: self.log.or(file.log),
        }
    }

    /// Applies defaults and validates.
    pub fn into_settings(self) -> Result<Settings, ConfigError> {
        let http = self.http.unwrap_or(([0, 0, 0, 0], 3020).into());
        let rtmp = self.rtmp.unwrap_or(([0, 0, 0, 0], 1935).into());
        let node_name = match self.node_id {
            Some(n) => n,
            None => hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "origin".into()),
        };
        validate_label("node-id", &node_name)?;
        let region = self.region.unwrap_or_else(|| "local".into());
        validate_label("region", &region)?;
        let public_url = parse_public_url(self.public_url.as_deref(), http)?;
        let hls = hls_config(
            self.hls_target_secs,
            self.hls_part_secs,
            self.ll_hls.unwrap_or(true),
        )?;
        let cache_bytes = cache_bytes(self.cache_bytes)?;
        let region_header = self
            .region_header
            .map(|h| {
                axum::http::HeaderName::try_from(h.as_str()).map_err(|e| ConfigError::Invalid {
                    field: "region-header",
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        let join = match (self.join, self.join_token) {
            (None, None) => None,
            (Some(u), Some(token)) => Some(JoinSettings {
                url: url::Url::parse(u.trim_end_matches('/')).map_err(|e| {
                    ConfigError::Invalid {
                        field: "join",
                        reason: format!("{u:?}: {e}"),
                    }
                })?,
                token,
            }),
            _ => {
                return Err(ConfigError::Invalid {
                    field: "join",
                    reason: "--join and --join-token go together".into(),
                })
            }
        };
        let raft_snapshot_logs = self.raft_snapshot_logs.unwrap_or(5000);
        if raft_snapshot_logs < 10 {
            return Err(ConfigError::Invalid {
                field: "raft-snapshot-logs",
                reason: "must be at least 10".into(),
            });
        }
        Ok(Settings {
            cluster: self.cluster.unwrap_or(([0, 0, 0, 0], 4433).into()),
            cluster_advertise: self.cluster_advertise,
            join,
            raft_snapshot_logs,
            data_dir: self.data_dir.unwrap_or_else(|| PathBuf::from("data")),
            http,
            rtmp,
            public_url,
            node_name,
            region,
            hls,
            cache_bytes,
            region_header,
            webrtc: streamhub_edge::webrtc::WebRtcConfig {
                udp: self
                    .webrtc_udp
                    .unwrap_or(([0, 0, 0, 0], streamhub_edge::webrtc::DEFAULT_UDP_PORT).into()),
                public_ip: self.webrtc_public_ip,
                max_sessions: self.webrtc_max_sessions.unwrap_or(5_000).max(1),
            },
            log: self.log.unwrap_or_else(|| DEFAULT_LOG.into()),
        })
    }
}

/// The HLS settings from `--hls-target-secs`, `--hls-part-secs` and `--ll-hls`, checked.
pub fn hls_config(
    target_secs: Option<f64>,
    part_secs: Option<f64>,
    low_latency: bool,
) -> Result<HlsConfig, ConfigError> {
    let secs = target_secs.unwrap_or(2.0);
    if !(0.5..=30.0).contains(&secs) {
        return Err(ConfigError::Invalid {
            field: "hls-target-secs",
            reason: format!("{secs} is outside 0.5..=30"),
        });
    }
    let part = part_secs.unwrap_or(0.333);
    if !(0.1..=secs).contains(&part) {
        return Err(ConfigError::Invalid {
            field: "hls-part-secs",
            reason: format!("{part} is outside 0.1..={secs} (the segment target)"),
        });
    }
    Ok(HlsConfig {
        target_duration: Duration::from_secs_f64(secs),
        part_target: Duration::from_secs_f64(part),
        low_latency,
        ..HlsConfig::default()
    })
}

/// `--cache-bytes`, checked: at least 16 MiB, so a room's window always fits.
pub fn cache_bytes(given: Option<u64>) -> Result<u64, ConfigError> {
    let bytes = given.unwrap_or(streamhub_edge::hls::cache::DEFAULT_CACHE_BYTES);
    if bytes < 16 << 20 {
        return Err(ConfigError::Invalid {
            field: "cache-bytes",
            reason: format!("{bytes} is below 16 MiB"),
        });
    }
    Ok(bytes)
}

fn validate_label(field: &'static str, s: &str) -> Result<(), ConfigError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field,
            reason: format!("{s:?} must be 1-63 characters of a-z, A-Z, 0-9, '-', '_', '.'"),
        })
    }
}

fn parse_public_url(given: Option<&str>, http: SocketAddr) -> Result<url::Url, ConfigError> {
    let text = match given {
        Some(s) => s.trim_end_matches('/').to_string(),
        None => {
            let host = if http.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                match http.ip() {
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                    ip => ip.to_string(),
                }
            };
            format!("http://{host}:{}", http.port())
        }
    };
    let url = url::Url::parse(&text).map_err(|e| ConfigError::Invalid {
        field: "public-url",
        reason: format!("{text:?}: {e}"),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::Invalid {
            field: "public-url",
            reason: format!("{text:?} must be an http(s) URL with a host"),
        });
    }
    Ok(url)
}

impl Settings {
    /// Public base URL as text, without a trailing slash.
    pub fn public_base(&self) -> String {
        self.public_url.as_str().trim_end_matches('/').to_string()
    }

    /// Host part of the public URL (what RTMP and WS URLs use).
    pub fn public_host(&self) -> String {
        self.public_url
            .host_str()
            .unwrap_or("127.0.0.1")
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = OriginArgs {
            node_id: Some("origin-eu-1".into()),
            ..Default::default()
        }
        .into_settings()
        .unwrap();
        assert_eq!(s.http.port(), 3020);
        assert_eq!(s.rtmp.port(), 1935);
        assert_eq!(s.data_dir, PathBuf::from("data"));
        assert_eq!(s.public_base(), "http://127.0.0.1:3020");
        assert_eq!(s.hls.target_duration, Duration::from_secs(2));
        assert_eq!(s.hls.part_target, Duration::from_millis(333));
        assert!(s.hls.low_latency);
    }

    #[test]
    fn flags_override_file_and_file_rejects_unknown_keys() {
        let file: OriginArgs =
            toml::from_str("http = \"127.0.0.1:9000\"\nregion = \"eu\"\n").unwrap();
        let cli = OriginArgs {
            region: Some("us".into()),
            node_id: Some("n1".into()),
            ..Default::default()
        };
        let s = cli.merge(file).into_settings().unwrap();
        assert_eq!(s.http.port(), 9000);
        assert_eq!(s.region, "us");
        assert!(toml::from_str::<OriginArgs>("bogus = 1").is_err());
    }

    #[test]
    fn refuses_bad_values() {
        let bad_url = OriginArgs {
            public_url: Some("ftp://x".into()),
            node_id: Some("n".into()),
            ..Default::default()
        };
        assert!(bad_url.into_settings().is_err());
        let bad_node = OriginArgs {
            node_id: Some("a b".into()),
            ..Default::default()
        };
        assert!(bad_node.into_settings().is_err());
    }
}
