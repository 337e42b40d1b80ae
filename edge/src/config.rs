//! Configuration of an edge node: CLI flags, `STREAMHUB_*` environment variables and an optional
//! TOML file, merged in that order of precedence, then validated into [`EdgeSettings`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::hls::HlsConfig;

/// Log filter when none is given.
pub const DEFAULT_LOG: &str = "info,sled=warn,rtc_dtls=error,rtc_ice=warn";

/// Flags and file keys of `streamhub-edge`. Every field is optional here; defaults are applied by
/// [`EdgeArgs::into_settings`].
#[derive(Debug, Default, Clone, Parser, Deserialize)]
#[command(name = "streamhub-edge", version, about = "streamhub edge node")]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EdgeArgs {
    /// TOML file with any of these settings (flags and env override it).
    #[arg(long, env = "STREAMHUB_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// HTTP URLs of origins to join through, comma-separated (first start only; afterwards the
    /// edge follows the registry).
    #[arg(long, env = "STREAMHUB_JOIN", value_delimiter = ',')]
    pub join: Option<Vec<String>>,
    /// Join token minted by an admin (`POST /api/v1/cluster/join-tokens`).
    #[arg(long, env = "STREAMHUB_JOIN_TOKEN")]
    pub join_token: Option<String>,
    /// Cluster (QUIC, UDP) address of this edge [default: 0.0.0.0:4434].
    #[arg(long, env = "STREAMHUB_CLUSTER")]
    pub cluster: Option<SocketAddr>,
    /// Where the edge keeps its certificate and the list of origins [default: ./edge-data].
    #[arg(long, env = "STREAMHUB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address: HLS, MJPEG, steering [default: 0.0.0.0:3021].
    #[arg(long, env = "STREAMHUB_HTTP")]
    pub http: Option<SocketAddr>,
    /// Region label of this edge [default: local].
    #[arg(long, env = "STREAMHUB_REGION")]
    pub region: Option<String>,
    /// Public base URL of this edge [default: http://<host>:<http port>].
    #[arg(long, env = "STREAMHUB_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Readable node name such as edge-eu-1 [default: the hostname].
    #[arg(long, env = "STREAMHUB_NODE_ID")]
    pub node_id: Option<String>,
    /// Bytes of HLS media held in memory [default: 268435456].
    #[arg(long, env = "STREAMHUB_CACHE_BYTES")]
    pub cache_bytes: Option<u64>,
    /// Seconds a room stays subscribed after its last viewer [default: 10].
    #[arg(long, env = "STREAMHUB_LINGER_SECS")]
    pub linger_secs: Option<f64>,
    /// HLS segment target in seconds; should match the origins' [default: 2].
    #[arg(long, env = "STREAMHUB_HLS_TARGET_SECS")]
    pub hls_target_secs: Option<f64>,
    /// LL-HLS part target in seconds [default: 0.333].
    #[arg(long, env = "STREAMHUB_HLS_PART_SECS")]
    pub hls_part_secs: Option<f64>,
    /// Advertise LL-HLS [default: true].
    #[arg(long, env = "STREAMHUB_LL_HLS")]
    pub ll_hls: Option<bool>,
    /// Request header carrying the client's region for steering (e.g. set by a CDN).
    #[arg(long, env = "STREAMHUB_REGION_HEADER")]
    pub region_header: Option<String>,
    /// Held (blocking) HLS requests per client address [default: 4096].
    #[arg(long, env = "STREAMHUB_HLS_MAX_HELD_PER_CLIENT")]
    pub hls_max_held_per_client: Option<usize>,
    /// The one UDP port of WebRTC (WHEP) media [default: 0.0.0.0:7883].
    #[arg(long, env = "STREAMHUB_WEBRTC_UDP")]
    pub webrtc_udp: Option<SocketAddr>,
    /// IP advertised to WebRTC clients, for 1:1 NAT [default: the bound or reached address].
    #[arg(long, env = "STREAMHUB_WEBRTC_PUBLIC_IP")]
    pub webrtc_public_ip: Option<std::net::IpAddr>,
    /// WebRTC sessions at once [default: 5000].
    #[arg(long, env = "STREAMHUB_WEBRTC_MAX_SESSIONS")]
    pub webrtc_max_sessions: Option<usize>,
    /// Log filter, as RUST_LOG [default: info,sled=warn].
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

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Checked settings of an edge.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    pub join: Vec<url::Url>,
    pub join_token: Option<String>,
    pub cluster: SocketAddr,
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    pub region: String,
    pub public_url: url::Url,
    pub node_name: String,
    pub cache_bytes: u64,
    pub linger: Duration,
    pub hls: HlsConfig,
    pub region_header: Option<axum::http::HeaderName>,
    pub max_held_per_client: usize,
    pub webrtc: crate::webrtc::WebRtcConfig,
    pub log: String,
}

impl EdgeSettings {
    /// Public base URL as text, without a trailing slash.
    pub fn public_base(&self) -> String {
        self.public_url.as_str().trim_end_matches('/').to_string()
    }

    /// The cluster address other nodes dial (the bind address, or the public host's).
    pub fn advertised_cluster_addr(&self) -> String {
        if self.cluster.ip().is_unspecified() {
            let host = self.public_url.host_str().unwrap_or("127.0.0.1");
            format!("{host}:{}", self.cluster.port())
        } else {
            self.cluster.to_string()
        }
    }
}

impl EdgeArgs {
    /// Parses the command line, reads the TOML file named by `--config` (if any) under it.
    pub fn load() -> Result<EdgeSettings, ConfigError> {
        let cli = EdgeArgs::parse();
        let file = match &cli.config {
            Some(path) => Self::from_file(path)?,
            None => EdgeArgs::default(),
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
    pub fn merge(self, file: EdgeArgs) -> EdgeArgs {
        EdgeArgs {
            config: self.config,
            join: self.join.or(file.join),
            join_token: self.join_token.or(file.join_token),
            cluster: self.cluster.or(file.cluster),
            data_dir: self.data_dir.or(file.data_dir),
            http: self.http.or(file.http),
            region: self.region.or(file.region),
            public_url: self.public_url.or(file.public_url),
            node_id: self.node_id.or(file.node_id),
            cache_bytes: self.cache_bytes.or(file.cache_bytes),
            linger_secs: self.linger_secs.or(file.linger_secs),
            hls_target_secs: self.hls_target_secs.or(file.hls_target_secs),
            hls_part_secs: self.hls_part_secs.or(file.hls_part_secs),
            ll_hls: self.ll_hls.or(file.ll_hls),
            region_header: self.region_header.or(file.region_header),
            hls_max_held_per_client: self
                .hls_max_held_per_client
                .or(file.hls_max_held_per_client),
            webrtc_udp: self.webrtc_udp.or(file.webrtc_udp),
            webrtc_public_ip: self.webrtc_public_ip.or(file.webrtc_public_ip),
            webrtc_max_sessions: self.webrtc_max_sessions.or(file.webrtc_max_sessions),
            log: self.log.or(file.log),
        }
    }

    /// Applies defaults and validates.
    pub fn into_settings(self) -> Result<EdgeSettings, ConfigError> {
        let http = self.http.unwrap_or(([0, 0, 0, 0], 3021).into());
        let node_name = match self.node_id {
            Some(n) => n,
            None => hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .map(|h| format!("edge-{h}"))
                .unwrap_or_else(|| "edge".into()),
        };
        validate_label("node-id", &node_name)?;
        let region = self.region.unwrap_or_else(|| "local".into());
        if !streamhub_cluster::registry::steering::is_valid_region(&region) {
            return Err(invalid(
                "region",
                format!("{region:?} must be 1-32 of a-z, 0-9, '-'"),
            ));
        }
        let join = self
            .join
            .unwrap_or_default()
            .iter()
            .filter(|u| !u.trim().is_empty())
            .map(|u| {
                url::Url::parse(u.trim().trim_end_matches('/'))
                    .map_err(|e| invalid("join", format!("{u:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let linger = self.linger_secs.unwrap_or(10.0);
        if !(0.5..=3600.0).contains(&linger) {
            return Err(invalid(
                "linger-secs",
                format!("{linger} is outside 0.5..=3600"),
            ));
        }
        let cache_bytes = self
            .cache_bytes
            .unwrap_or(crate::hls::cache::DEFAULT_CACHE_BYTES);
        if cache_bytes < 16 << 20 {
            return Err(invalid(
                "cache-bytes",
                format!("{cache_bytes} is below 16 MiB"),
            ));
        }
        let region_header = self
            .region_header
            .map(|h| {
                axum::http::HeaderName::try_from(h.as_str())
                    .map_err(|e| invalid("region-header", e.to_string()))
            })
            .transpose()?;
        Ok(EdgeSettings {
            public_url: public_url(self.public_url.as_deref(), http)?,
            join,
            join_token: self.join_token,
            cluster: self.cluster.unwrap_or(([0, 0, 0, 0], 4434).into()),
            data_dir: self.data_dir.unwrap_or_else(|| PathBuf::from("edge-data")),
            http,
            region,
            node_name,
            cache_bytes,
            linger: Duration::from_secs_f64(linger),
            hls: hls_config(
                self.hls_target_secs,
                self.hls_part_secs,
                self.ll_hls.unwrap_or(true),
            )?,
            region_header,
            max_held_per_client: self.hls_max_held_per_client.unwrap_or(4096).max(1),
            webrtc: crate::webrtc::WebRtcConfig {
                udp: self
                    .webrtc_udp
                    .unwrap_or(([0, 0, 0, 0], crate::webrtc::EDGE_DEFAULT_UDP_PORT).into()),
                public_ip: self.webrtc_public_ip,
                max_sessions: self.webrtc_max_sessions.unwrap_or(5_000).max(1),
            },
            log: self.log.unwrap_or_else(|| DEFAULT_LOG.into()),
        })
    }
}

/// The HLS settings from the target, part target and LL-HLS switch, checked.
pub fn hls_config(
    target_secs: Option<f64>,
    part_secs: Option<f64>,
    low_latency: bool,
) -> Result<HlsConfig, ConfigError> {
    let secs = target_secs.unwrap_or(2.0);
    if !(0.5..=30.0).contains(&secs) {
        return Err(invalid(
            "hls-target-secs",
            format!("{secs} is outside 0.5..=30"),
        ));
    }
    let part = part_secs.unwrap_or(0.333);
    if !(0.1..=secs).contains(&part) {
        return Err(invalid(
            "hls-part-secs",
            format!("{part} is outside 0.1..={secs}"),
        ));
    }
    Ok(HlsConfig {
        target_duration: Duration::from_secs_f64(secs),
        part_target: Duration::from_secs_f64(part),
        low_latency,
        ..HlsConfig::default()
    })
}

fn validate_label(field: &'static str, s: &str) -> Result<(), ConfigError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{s:?} must be 1-63 characters of a-z, A-Z, 0-9, '-', '_', '.'"),
        ))
    }
}

fn public_url(given: Option<&str>, http: SocketAddr) -> Result<url::Url, ConfigError> {
    let text = match given {
        Some(s) => s.trim_end_matches('/').to_string(),
        None => {
            let host = match http.ip() {
                ip if ip.is_unspecified() => "127.0.0.1".to_string(),
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            };
            format!("http://{host}:{}", http.port())
        }
    };
    let url =
        url::Url::parse(&text).map_err(|e| invalid("public-url", format!("{text:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(
            "public-url",
            format!("{text:?} must be an http(s) URL with a host"),
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_join_list() {
        let s = EdgeArgs {
            node_id: Some("edge-1".into()),
            join: Some(vec!["http://o1:3020/".into(), "http://o2:3020".into()]),
            ..Default::default()
        }
        .into_settings()
        .unwrap();
        assert_eq!(s.http.port(), 3021);
        assert_eq!(s.cluster.port(), 4434);
        assert_eq!(s.join.len(), 2);
        assert_eq!(s.join[0].as_str(), "http://o1:3020/");
        assert_eq!(s.linger, Duration::from_secs(10));
        assert_eq!(s.advertised_cluster_addr(), "127.0.0.1:4434");
        assert!(s.hls.low_latency);
    }

    #[test]
    fn the_example_config_is_valid() {
        let file: EdgeArgs = toml::from_str(include_str!("../../deploy/edge.toml")).unwrap();
        let s = file.into_settings().unwrap();
        assert_eq!(s.join.len(), 2);
        assert_eq!(s.region, "eu");
    }

    #[test]
    fn refuses_bad_values_and_unknown_keys() {
        for bad in [
            EdgeArgs {
                region: Some("EU".into()),
                ..Default::default()
            },
            EdgeArgs {
                join: Some(vec!["not a url".into()]),
                ..Default::default()
            },
            EdgeArgs {
                cache_bytes: Some(1),
                ..Default::default()
            },
            EdgeArgs {
                linger_secs: Some(0.0),
                ..Default::default()
            },
            EdgeArgs {
                hls_part_secs: Some(5.0),
                ..Default::default()
            },
        ] {
            let bad = EdgeArgs {
                node_id: Some("e".into()),
                ..bad
            };
            assert!(bad.into_settings().is_err());
        }
        assert!(toml::from_str::<EdgeArgs>("bogus = 1").is_err());
        let file: EdgeArgs = toml::from_str("region = \"eu\"\nlinger-secs = 3.0\n").unwrap();
        let s = EdgeArgs {
            node_id: Some("e".into()),
            ..Default::default()
        }
        .merge(file)
        .into_settings()
        .unwrap();
        assert_eq!(
            (s.region.as_str(), s.linger),
            ("eu", Duration::from_secs(3))
        );
    }
}
