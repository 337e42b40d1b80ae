//! The settings both node binaries share, each with one validator and one default per node
//! kind: CLI flags, `STREAMHUB_*` environment variables and an optional TOML file (`--config`),
//! merged in that order of precedence, then checked into [`NodeSettings`].
//!
//! A binary's own flags live in its crate ([`NodeArgs`] is flattened into them); loading,
//! merging, the unknown-key check of the file and the `[default: …]` shown by `--help` are done
//! here for both. `docs/config.md` is checked against `--help` by each binary's tests
//! ([`documented_defaults_mismatches`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::hls::http::BlockingLimits;
use crate::hls::HlsConfig;
use crate::webrtc::WebRtcConfig;

/// Log filter when none is given, on every node: our crates at info, chatty dependencies less.
pub const DEFAULT_LOG: &str = "info,openraft=warn,sled=warn,rtc_dtls=error,rtc_ice=warn";

/// Which binary a configuration is for: the kind decides the defaults that differ (ports, data
/// dir, node name), so an origin and an edge can run side by side on one host untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Origin,
    Edge,
}

impl NodeKind {
    /// `origin` or `edge`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Origin => "origin",
            NodeKind::Edge => "edge",
        }
    }

    fn http_port(self) -> u16 {
        match self {
            NodeKind::Origin => 3020,
            NodeKind::Edge => 3021,
        }
    }

    fn cluster_port(self) -> u16 {
        match self {
            NodeKind::Origin => 4433,
            NodeKind::Edge => 4434,
        }
    }

    fn webrtc_port(self) -> u16 {
        match self {
            NodeKind::Origin => crate::webrtc::DEFAULT_UDP_PORT,
            NodeKind::Edge => crate::webrtc::EDGE_DEFAULT_UDP_PORT,
        }
    }

    fn data_dir(self) -> &'static str {
        match self {
            NodeKind::Origin => "data",
            NodeKind::Edge => "edge-data",
        }
    }

    /// The node name when none is given: the host name (prefixed `edge-` on edges).
    fn default_name(self) -> String {
        let host = hostname::get().ok().and_then(|h| h.into_string().ok());
        match (self, host) {
            (NodeKind::Origin, Some(h)) => h,
            (NodeKind::Origin, None) => "origin".into(),
            (NodeKind::Edge, Some(h)) => format!("edge-{h}"),
            (NodeKind::Edge, None) => "edge".into(),
        }
    }

    /// The default of each shared flag, as `--help` shows it (by long name).
    pub fn shown_defaults(self) -> BTreeMap<&'static str, String> {
        let any = |port: u16| format!("0.0.0.0:{port}");
        BTreeMap::from([
            ("data-dir", format!("./{}", self.data_dir())),
            ("http", any(self.http_port())),
            ("public-url", "http://<host>:<http port>".into()),
            ("acme-directory", "Let's Encrypt production".into()),
            (
                "http-max-connections",
                super::surface::HttpLimits::default()
                    .max_connections
                    .to_string(),
            ),
            (
                "http-max-per-address",
                super::surface::HttpLimits::default()
                    .max_per_address
                    .to_string(),
            ),
            (
                "node-id",
                match self {
                    NodeKind::Origin => "the hostname".into(),
                    NodeKind::Edge => "edge-<hostname>".into(),
                },
            ),
            ("region", "local".into()),
            ("cluster", any(self.cluster_port())),
            ("cluster-advertise", "the bind address".into()),
            (
                "cache-bytes",
                crate::hls::cache::DEFAULT_CACHE_BYTES.to_string(),
            ),
            ("hls-target-secs", "2".into()),
            ("hls-part-secs", "0.333".into()),
            ("ll-hls", "true".into()),
            (
                "hls-max-held-per-client",
                BlockingLimits::default().per_client.to_string(),
            ),
            ("webrtc-udp", any(self.webrtc_port())),
            ("webrtc-public-ip", "the bound or reached address".into()),
            ("webrtc-max-sessions", DEFAULT_MAX_SESSIONS.to_string()),
            ("webrtc-send-path", "fanout".into()),
            ("log", DEFAULT_LOG.into()),
        ])
    }
}

/// WebRTC sessions at once when not configured.
const DEFAULT_MAX_SESSIONS: usize = 5_000;

/// The flags and file keys both binaries take. Every field is optional here; defaults are
/// applied by [`NodeArgs::into_settings`] for the binary's [`NodeKind`].
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NodeArgs {
    /// TOML file with any of these settings (flags and environment override it).
    #[arg(long, env = "STREAMHUB_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Where the node keeps its state, secrets and cluster certificate.
    #[arg(long, env = "STREAMHUB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address: API (origins), HLS, MJPEG, WHIP/WHEP signalling, health, metrics.
    #[arg(long, env = "STREAMHUB_HTTP")]
    pub http: Option<SocketAddr>,
    /// HTTPS listen address beside a plain --http, which then redirects to it. Without it, a
    /// node with TLS serves HTTPS on --http.
    #[arg(long, env = "STREAMHUB_HTTPS")]
    pub https: Option<SocketAddr>,
    /// TLS certificate chain (PEM) of the HTTP port and RTMPS; reloaded when it changes.
    #[arg(long, env = "STREAMHUB_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "STREAMHUB_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Obtain and renew certificates over ACME for this domain (repeat for more; TLS-ALPN-01
    /// on the HTTPS port, which must be reachable on 443 by the CA).
    #[arg(long, env = "STREAMHUB_ACME_DOMAIN", value_delimiter = ',')]
    pub acme_domain: Option<Vec<String>>,
    /// Contact address given to the ACME CA.
    #[arg(long, env = "STREAMHUB_ACME_EMAIL")]
    pub acme_email: Option<String>,
    /// ACME directory URL.
    #[arg(long, env = "STREAMHUB_ACME_DIRECTORY")]
    pub acme_directory: Option<String>,
    /// An extra root certificate (PEM) to trust for the ACME directory (a private CA, tests).
    #[arg(long, env = "STREAMHUB_ACME_CA_ROOT")]
    pub acme_ca_root: Option<PathBuf>,
    /// Proxies (addresses or CIDR ranges, comma-separated) whose Forwarded / X-Forwarded-For
    /// headers name the client; from anyone else those headers are ignored.
    #[arg(long, env = "STREAMHUB_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<String>>,
    /// HTTP(S) connections open at once, all clients together.
    #[arg(long, env = "STREAMHUB_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,
    /// HTTP(S) connections open at once from one client address (trusted proxies exempt).
    #[arg(long, env = "STREAMHUB_HTTP_MAX_PER_ADDRESS")]
    pub http_max_per_address: Option<usize>,
    /// Public base URL of this node: what players, steering and minted URLs are given.
    #[arg(long, env = "STREAMHUB_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Readable, unique node name such as origin-eu-1 (the name in its cluster certificate).
    #[arg(long, env = "STREAMHUB_NODE_ID")]
    pub node_id: Option<String>,
    /// Region label: 1-32 of a-z, 0-9 and '-'; steering matches viewers' regions to it.
    #[arg(long, env = "STREAMHUB_REGION")]
    pub region: Option<String>,
    /// Request header carrying the client's region for steering (e.g. set by a CDN).
    #[arg(long, env = "STREAMHUB_REGION_HEADER")]
    pub region_header: Option<String>,
    /// Cluster (QUIC, UDP) address: Raft, relay and state queries between nodes.
    #[arg(long, env = "STREAMHUB_CLUSTER")]
    pub cluster: Option<SocketAddr>,
    /// Cluster address other nodes dial when it is not the bind address (1:1 NAT, a proxy).
    #[arg(long, env = "STREAMHUB_CLUSTER_ADVERTISE")]
    pub cluster_advertise: Option<String>,
    /// HTTP URLs of origins to join through, comma-separated (a TOML array); first start only,
    /// a node with state restarts as the member it was.
    #[arg(long, env = "STREAMHUB_JOIN", value_delimiter = ',')]
    pub join: Option<Vec<String>>,
    /// Join token minted by an admin (`POST /api/v1/cluster/join-tokens`); prefer the
    /// environment variable or --join-token-file (flags show in `ps`).
    #[arg(long, env = "STREAMHUB_JOIN_TOKEN")]
    pub join_token: Option<String>,
    /// File holding the join token (read once at the first start).
    #[arg(long, env = "STREAMHUB_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,
    /// Bearer token `/metrics` asks for (16 to 256 characters); without it `/metrics` is open
    /// to anyone who reaches the port. Prefer the environment variable (flags show in `ps`).
    #[arg(long, env = "STREAMHUB_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Extra root certificate(s) (PEM) trusted for the HTTPS of the --join URLs, beside the
    /// public web roots (origins with a private CA).
    #[arg(long, env = "STREAMHUB_JOIN_CA_ROOT")]
    pub join_ca_root: Option<PathBuf>,
    /// Bytes of HLS media (segments and parts of every room) held in memory; at least 16 MiB.
    #[arg(long, env = "STREAMHUB_CACHE_BYTES")]
    pub cache_bytes: Option<u64>,
    /// HLS target segment duration in seconds (0.5-30); origins cut groups (and so segments on
    /// every node) at the first keyframe past each multiple of it; keep edges equal to origins.
    #[arg(long, env = "STREAMHUB_HLS_TARGET_SECS")]
    pub hls_target_secs: Option<f64>,
    /// LL-HLS part target in seconds (0.1 to the segment target).
    #[arg(long, env = "STREAMHUB_HLS_PART_SECS")]
    pub hls_part_secs: Option<f64>,
    /// Advertise LL-HLS (parts, blocking reload, preload hint); plain HLS players work either way.
    #[arg(long, env = "STREAMHUB_LL_HLS")]
    pub ll_hls: Option<bool>,
    /// Blocking LL-HLS requests held at once per client address.
    #[arg(long, env = "STREAMHUB_HLS_MAX_HELD_PER_CLIENT")]
    pub hls_max_held_per_client: Option<usize>,
    /// The one UDP port of WebRTC media (WHIP, WHEP).
    #[arg(long, env = "STREAMHUB_WEBRTC_UDP")]
    pub webrtc_udp: Option<SocketAddr>,
    /// IP advertised to WebRTC clients, for 1:1 NAT.
    #[arg(long, env = "STREAMHUB_WEBRTC_PUBLIC_IP")]
    pub webrtc_public_ip: Option<IpAddr>,
    /// WebRTC sessions at once; more get 503.
    #[arg(long, env = "STREAMHUB_WEBRTC_MAX_SESSIONS")]
    pub webrtc_max_sessions: Option<usize>,
    /// How WHEP viewers get their media: `fanout` (per-core workers, SRTP and batched sends of
    /// our own; the default) or `rtc` (the peer connection's pipeline, a task per viewer).
    #[arg(long, env = "STREAMHUB_WEBRTC_SEND_PATH", value_enum)]
    pub webrtc_send_path: Option<crate::webrtc::SendPath>,
    /// Log filter, as RUST_LOG.
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
    #[error("config file {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("config file {path}: unknown key(s) {keys:?} (see --help for the settings)")]
    UnknownKeys { path: PathBuf, keys: Vec<String> },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Shorthand for [`ConfigError::Invalid`].
pub fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// The checked settings both binaries share.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub kind: NodeKind,
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    /// Public base URL (see [`NodeSettings::public_base`]).
    pub public_url: url::Url,
    pub node_name: String,
    pub region: String,
    /// Header naming the client's region for steering, if configured.
    pub region_header: Option<axum::http::HeaderName>,
    /// Cluster QUIC address.
    pub cluster: SocketAddr,
    /// What other nodes dial, if not derived from `cluster`.
    pub cluster_advertise: Option<String>,
    /// Origins to join through (first start).
    pub join: Vec<url::Url>,
    pub join_token: Option<String>,
    /// What `/metrics` asks for as `Authorization: Bearer`, if anything.
    pub metrics_token: Option<String>,
    /// Extra roots trusted for the HTTPS of `join`.
    pub join_ca_root: Option<PathBuf>,
    /// Bound of the media cache.
    pub cache_bytes: u64,
    /// HLS packaging (target, part target, window, LL-HLS).
    pub hls: HlsConfig,
    /// Blocking playlist requests held at once.
    pub blocking: BlockingLimits,
    pub webrtc: WebRtcConfig,
    pub log: String,
    /// HTTPS beside plain HTTP, if any.
    pub https: Option<SocketAddr>,
    /// Where the TLS certificate comes from, if TLS is on.
    pub tls: Option<super::tls::TlsSettings>,
    /// Proxies trusted to name the client.
    pub trusted_proxies: super::surface::TrustedProxies,
    /// Limits of the HTTP port(s).
    pub http_limits: super::surface::HttpLimits,
}

impl NodeArgs {
    /// Fields set in `self` win over those of `file`.
    pub fn merge(self, file: NodeArgs) -> NodeArgs {
        NodeArgs {
            config: self.config,
            data_dir: self.data_dir.or(file.data_dir),
            http: self.http.or(file.http),
            public_url: self.public_url.or(file.public_url),
            node_id: self.node_id.or(file.node_id),
            region: self.region.or(file.region),
            region_header: self.region_header.or(file.region_header),
            cluster: self.cluster.or(file.cluster),
            cluster_advertise: self.cluster_advertise.or(file.cluster_advertise),
            join: self.join.or(file.join),
            join_token: self.join_token.or(file.join_token),
            metrics_token: self.metrics_token.or(file.metrics_token),
            https: self.https.or(file.https),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            acme_domain: self.acme_domain.or(file.acme_domain),
            acme_email: self.acme_email.or(file.acme_email),
            acme_directory: self.acme_directory.or(file.acme_directory),
            acme_ca_root: self.acme_ca_root.or(file.acme_ca_root),
            trusted_proxies: self.trusted_proxies.or(file.trusted_proxies),
            http_max_connections: self.http_max_connections.or(file.http_max_connections),
            http_max_per_address: self.http_max_per_address.or(file.http_max_per_address),
            join_token_file: self.join_token_file.or(file.join_token_file),
            join_ca_root: self.join_ca_root.or(file.join_ca_root),
            cache_bytes: self.cache_bytes.or(file.cache_bytes),
            hls_target_secs: self.hls_target_secs.or(file.hls_target_secs),
            hls_part_secs: self.hls_part_secs.or(file.hls_part_secs),
            ll_hls: self.ll_hls.or(file.ll_hls),
            hls_max_held_per_client: self
                .hls_max_held_per_client
                .or(file.hls_max_held_per_client),
            webrtc_udp: self.webrtc_udp.or(file.webrtc_udp),
            webrtc_public_ip: self.webrtc_public_ip.or(file.webrtc_public_ip),
            webrtc_max_sessions: self.webrtc_max_sessions.or(file.webrtc_max_sessions),
            webrtc_send_path: self.webrtc_send_path.or(file.webrtc_send_path),
            log: self.log.or(file.log),
        }
    }

    /// Applies the defaults of `kind` and validates.
    pub fn into_settings(self, kind: NodeKind) -> Result<NodeSettings, ConfigError> {
        let http = self.http.unwrap_or(([0, 0, 0, 0], kind.http_port()).into());
        let node_name = self.node_id.unwrap_or_else(|| kind.default_name());
        validate_node_name(&node_name)?;
        let region = self.region.unwrap_or_else(|| "local".into());
        validate_region(&region)?;
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
        let join_token = match (self.join_token, self.join_token_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "join-token-file",
                    "give the join token once: --join-token or --join-token-file",
                ))
            }
            (token, None) => token,
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| invalid("join-token-file", format!("{}: {e}", path.display())))?;
                Some(text.trim().to_string()).filter(|t| !t.is_empty())
            }
        };
        if join_token.is_some() && join.is_empty() {
            return Err(invalid(
                "join-token",
                "a join token needs --join (the origins to join through)",
            ));
        }
        if let Some(t) = &self.metrics_token {
            let ok = (16..=256).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(invalid(
                    "metrics-token",
                    "must be 16 to 256 printable ASCII characters without spaces",
                ));
            }
        }
        let region_header = self
            .region_header
            .map(|h| {
                axum::http::HeaderName::try_from(h.as_str())
                    .map_err(|e| invalid("region-header", e.to_string()))
            })
            .transpose()?;
        let tls = tls_settings(
            self.tls_cert,
            self.tls_key,
            self.acme_domain.unwrap_or_default(),
            self.acme_email,
            self.acme_directory,
            self.acme_ca_root,
        )?;
        if self.https.is_some() && tls.is_none() {
            return Err(invalid(
                "https",
                "an HTTPS port needs a certificate: --tls-cert/--tls-key or --acme-domain",
            ));
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let public_port = self.https.unwrap_or(http);
        if self.https.is_some()
            && self
                .public_url
                .as_deref()
                .is_some_and(|u| !u.trim().starts_with("https://"))
        {
            return Err(invalid(
                "public-url",
                "with --https the plain HTTP port redirects to the public URL, which must be https://",
            ));
        }
        let trusted_proxies =
            super::surface::TrustedProxies::parse(&self.trusted_proxies.unwrap_or_default())
                .map_err(|e| invalid("trusted-proxies", e))?;
        let defaults = super::surface::HttpLimits::default();
        let http_limits = super::surface::HttpLimits {
            max_connections: self
                .http_max_connections
                .unwrap_or(defaults.max_connections)
                .max(1),
            max_per_address: self
                .http_max_per_address
                .unwrap_or(defaults.max_per_address)
                .max(1),
            ..defaults
        };
        Ok(NodeSettings {
            kind,
            https: self.https,
            tls,
            trusted_proxies,
            http_limits,
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from(kind.data_dir())),
            http,
            public_url: public_url(self.public_url.as_deref(), public_port, scheme)?,
            node_name,
            region,
            region_header,
            cluster: self
                .cluster
                .unwrap_or(([0, 0, 0, 0], kind.cluster_port()).into()),
            cluster_advertise: self.cluster_advertise,
            join,
            join_token,
            metrics_token: self.metrics_token,
            join_ca_root: self.join_ca_root,
            cache_bytes: cache_bytes(self.cache_bytes)?,
            hls: hls_config(
                self.hls_target_secs,
                self.hls_part_secs,
                self.ll_hls.unwrap_or(true),
            )?,
            blocking: BlockingLimits {
                per_client: self
                    .hls_max_held_per_client
                    .unwrap_or(BlockingLimits::default().per_client)
                    .max(1),
                ..BlockingLimits::default()
            },
            webrtc: WebRtcConfig {
                udp: self
                    .webrtc_udp
                    .unwrap_or(([0, 0, 0, 0], kind.webrtc_port()).into()),
                public_ip: self.webrtc_public_ip,
                max_sessions: self
                    .webrtc_max_sessions
                    .unwrap_or(DEFAULT_MAX_SESSIONS)
                    .max(1),
                publishers: matches!(kind, NodeKind::Origin),
                send_path: self.webrtc_send_path.unwrap_or_default(),
                ..WebRtcConfig::default()
            },
            log: self.log.unwrap_or_else(|| DEFAULT_LOG.into()),
        })
    }
}

impl NodeSettings {
    /// Public base URL as text, without a trailing slash.
    pub fn public_base(&self) -> String {
        self.public_url.as_str().trim_end_matches('/').to_string()
    }

    /// Host part of the public URL (what RTMP and WebSocket URLs use).
    pub fn public_host(&self) -> String {
        self.public_url
            .host_str()
            .unwrap_or("127.0.0.1")
            .to_string()
    }

    /// The cluster address other nodes dial: `--cluster-advertise`, else the bind address with
    /// an unspecified IP replaced by the public host.
    pub fn advertised_cluster_addr(&self) -> String {
        if let Some(addr) = &self.cluster_advertise {
            return addr.clone();
        }
        if self.cluster.ip().is_unspecified() {
            format!("{}:{}", self.public_host(), self.cluster.port())
        } else {
            self.cluster.to_string()
        }
    }
}

/// The one region rule of every node: what steering can match (1-32 of a-z, 0-9, '-').
pub fn validate_region(region: &str) -> Result<(), ConfigError> {
    if streamhub_cluster::registry::steering::is_valid_region(region) {
        return Ok(());
    }
    let hint =
        if streamhub_cluster::registry::steering::is_valid_region(&region.to_ascii_lowercase()) {
            format!(" (did you mean {:?}?)", region.to_ascii_lowercase())
        } else {
            String::new()
        };
    Err(invalid(
        "region",
        format!("{region:?} must be 1-32 of a-z, 0-9 and '-', as viewers' region hints are{hint}"),
    ))
}

/// A node name: 1-63 of a-z, A-Z, 0-9, '-', '_', '.'.
pub fn validate_node_name(s: &str) -> Result<(), ConfigError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "node-id",
            format!("{s:?} must be 1-63 characters of a-z, A-Z, 0-9, '-', '_', '.'"),
        ))
    }
}

/// The HLS settings from the target, the part target and the LL-HLS switch, checked.
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
            format!("{part} is outside 0.1..={secs} (the segment target)"),
        ));
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
    let bytes = given.unwrap_or(crate::hls::cache::DEFAULT_CACHE_BYTES);
    if bytes < 16 << 20 {
        return Err(invalid("cache-bytes", format!("{bytes} is below 16 MiB")));
    }
    Ok(bytes)
}

fn public_url(
    given: Option<&str>,
    http: SocketAddr,
    scheme: &str,
) -> Result<url::Url, ConfigError> {
    let text = match given {
        Some(s) => s.trim_end_matches('/').to_string(),
        None => {
            let host = match http.ip() {
                ip if ip.is_unspecified() => "127.0.0.1".to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            };
            format!("{scheme}://{host}:{}", http.port())
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

/// The TLS source the flags name: files, ACME, or none; both at once is refused.
fn tls_settings(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    acme_domains: Vec<String>,
    acme_email: Option<String>,
    acme_directory: Option<String>,
    acme_ca_root: Option<PathBuf>,
) -> Result<Option<super::tls::TlsSettings>, ConfigError> {
    use super::tls::{TlsSettings, LETS_ENCRYPT};
    let domains: Vec<String> = acme_domains
        .into_iter()
        .map(|d| d.trim().to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .collect();
    for d in &domains {
        let ok = d.len() <= 253
            && d.split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !ok {
            return Err(invalid("acme-domain", format!("{d:?} is not a DNS name")));
        }
    }
    let acme_extras = acme_email.is_some() || acme_directory.is_some() || acme_ca_root.is_some();
    match (cert, key, domains.is_empty()) {
        (Some(_), None, _) | (None, Some(_), _) => {
            Err(invalid("tls-cert", "--tls-cert and --tls-key go together"))
        }
        (Some(_), Some(_), false) => Err(invalid(
            "acme-domain",
            "give certificate files or ACME domains, not both",
        )),
        (Some(cert), Some(key), true) => {
            if acme_extras {
                return Err(invalid("acme-email", "ACME settings without --acme-domain"));
            }
            Ok(Some(TlsSettings::Files { cert, key }))
        }
        (None, None, false) => Ok(Some(TlsSettings::Acme {
            domains,
            email: acme_email,
            directory: acme_directory.unwrap_or_else(|| LETS_ENCRYPT.into()),
            ca_root: acme_ca_root,
        })),
        (None, None, true) if acme_extras => Err(invalid(
            "acme-domain",
            "ACME settings need at least one --acme-domain",
        )),
        (None, None, true) => Ok(None),
    }
}

/// A binary's flags: [`NodeArgs`] flattened with its own.
pub trait BinaryArgs: clap::Parser + DeserializeOwned + Default {
    /// The shared part.
    fn node(&self) -> &NodeArgs;
    /// Fields set in `self` win over those of `file`.
    fn merge(self, file: Self) -> Self;
}

/// The binary's command with the defaults of `kind` shown in `--help`.
pub fn command<A: BinaryArgs>(kind: NodeKind) -> clap::Command {
    let mut cmd = A::command();
    for (long, default) in kind.shown_defaults() {
        // Argument ids are the field names; flags are their kebab-case.
        cmd = cmd.mut_arg(long.replace('-', "_"), |a| {
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            a.help(format!("{help} [default: {default}]"))
        });
    }
    cmd
}

/// Parses the command line and the TOML file it names (if any) under it.
pub fn load<A: BinaryArgs>(kind: NodeKind) -> Result<A, ConfigError> {
    let cmd = command::<A>(kind);
    let matches = cmd.clone().get_matches();
    let cli = A::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let file = match &cli.node().config {
        Some(path) => read_file::<A>(path, &cmd)?,
        None => A::default(),
    };
    Ok(cli.merge(file))
}

/// Reads a TOML file of settings; keys that are not flags of `cmd` are refused by name.
pub fn read_file<A: DeserializeOwned>(path: &Path, cmd: &clap::Command) -> Result<A, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_file(&text, cmd).map_err(|e| match e {
        FileError::Unknown(keys) => ConfigError::UnknownKeys {
            path: path.to_path_buf(),
            keys,
        },
        FileError::Parse(reason) => ConfigError::Parse {
            path: path.to_path_buf(),
            reason,
        },
    })
}

enum FileError {
    Unknown(Vec<String>),
    Parse(String),
}

fn parse_file<A: DeserializeOwned>(text: &str, cmd: &clap::Command) -> Result<A, FileError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| FileError::Parse(e.to_string()))?;
    let unknown: Vec<String> = table
        .keys()
        .filter(|k| {
            *k == "config"
                || !cmd
                    .get_arguments()
                    .any(|a| a.get_long() == Some(k.as_str()))
        })
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(FileError::Unknown(unknown));
    }
    A::deserialize(toml::Value::Table(table)).map_err(|e| FileError::Parse(e.to_string()))
}

/// Where `docs_table` (the rows of docs/config.md that apply to a binary: `| --flag … | … |
/// default | …`) and the binary's `--help` disagree about a default, or a flag is missing from
/// one of them. `default_column` is the 0-based column of the default in each row.
pub fn documented_defaults_mismatches(
    cmd: &clap::Command,
    rows: &[(String, String)],
) -> Vec<String> {
    let mut out = Vec::new();
    let mut shown = BTreeMap::new();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "version" || arg.is_hide_set() {
            continue;
        }
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let default = help
            .rsplit_once("[default: ")
            .map(|(_, d)| d.trim_end_matches(']').to_string())
            .unwrap_or_default();
        shown.insert(long.to_string(), default);
    }
    let documented: BTreeMap<String, String> = rows.iter().cloned().collect();
    for (flag, default) in &shown {
        match documented.get(flag) {
            None => out.push(format!("--{flag} is not documented")),
            Some(doc) if doc != default => out.push(format!(
                "--{flag}: --help says {default:?}, the docs say {doc:?}"
            )),
            Some(_) => {}
        }
    }
    for flag in documented.keys() {
        if !shown.contains_key(flag) {
            out.push(format!("--{flag} is documented but not a flag"));
        }
    }
    out
}

/// Where `docs/config.md` (given as `docs`) and the `--help` of `cmd`, a binary of `kind`,
/// disagree about a flag's default: its "Every node" table (a default column per kind) and its
/// "Origin only" / "Edge only" table.
pub fn config_docs_mismatches(docs: &str, cmd: &clap::Command, kind: NodeKind) -> Vec<String> {
    let own = match kind {
        NodeKind::Origin => "Origin only",
        NodeKind::Edge => "Edge only",
    };
    let rows = documented_defaults(docs, |heading| match heading {
        "Every node" if kind == NodeKind::Origin => Some(3),
        "Every node" => Some(4),
        h if h == own => Some(3),
        _ => None,
    });
    documented_defaults_mismatches(cmd, &rows)
}

/// The `(flag, default)` rows of the markdown tables of `docs` under the headings for which
/// `section` answers the column of the default (or `None` to skip the table).
pub fn documented_defaults(
    docs: &str,
    section: impl Fn(&str) -> Option<usize>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut column = None;
    for line in docs.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            column = section(heading.trim());
            continue;
        }
        let Some(col) = column else { continue };
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| `--flag X` | env | key | default… |": cells[0] is empty (before the first pipe).
        let Some(flag) = cells.get(1).and_then(|c| c.strip_prefix("`--")) else {
            continue;
        };
        let flag = flag
            .split([' ', '`'])
            .next()
            .unwrap_or_default()
            .to_string();
        let default = cells
            .get(col + 1)
            .map(|d| d.trim_matches('`').to_string())
            .unwrap_or_default();
        out.push((flag, default));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::FromArgMatches;

    /// A binary with only the shared flags, as both binaries see them.
    #[derive(Debug, Default, Clone, clap::Parser, Deserialize)]
    struct Only {
        #[command(flatten)]
        #[serde(flatten)]
        node: NodeArgs,
    }

    impl BinaryArgs for Only {
        fn node(&self) -> &NodeArgs {
            &self.node
        }
        fn merge(self, file: Self) -> Self {
            Only {
                node: self.node.merge(file.node),
            }
        }
    }

    fn args(f: impl FnOnce(&mut NodeArgs)) -> NodeArgs {
        let mut a = NodeArgs {
            node_id: Some("n1".into()),
            ..Default::default()
        };
        f(&mut a);
        a
    }

    #[test]
    fn defaults_differ_by_kind_only_where_they_must() {
        let o = args(|_| {}).into_settings(NodeKind::Origin).unwrap();
        let e = args(|_| {}).into_settings(NodeKind::Edge).unwrap();
        assert_eq!((o.http.port(), e.http.port()), (3020, 3021));
        assert_eq!((o.cluster.port(), e.cluster.port()), (4433, 4434));
        assert_eq!((o.webrtc.udp.port(), e.webrtc.udp.port()), (7882, 7883));
        assert_eq!(o.data_dir, PathBuf::from("data"));
        assert_eq!(e.data_dir, PathBuf::from("edge-data"));
        assert_eq!(o.log, e.log);
        assert_eq!(o.public_base(), "http://127.0.0.1:3020");
        assert_eq!(e.advertised_cluster_addr(), "127.0.0.1:4434");
        assert_eq!(o.hls.target_duration, Duration::from_secs(2));
        assert_eq!(o.hls.part_target, Duration::from_millis(333));
        assert!(o.hls.low_latency);
    }

    #[test]
    fn one_region_rule_for_both_kinds() {
        for kind in [NodeKind::Origin, NodeKind::Edge] {
            let err = args(|a| a.region = Some("EU".into()))
                .into_settings(kind)
                .unwrap_err()
                .to_string();
            assert!(err.contains("region") && err.contains("\"eu\""), "{err}");
            let long = "r".repeat(33);
            assert!(args(|a| a.region = Some(long.clone()))
                .into_settings(kind)
                .is_err());
            let ok = args(|a| a.region = Some("eu-west-1".into()))
                .into_settings(kind)
                .unwrap();
            assert_eq!(ok.region, "eu-west-1");
        }
    }

    #[test]
    fn one_join_list_form_for_both_kinds() {
        let cmd = command::<Only>(NodeKind::Origin);
        let m = cmd
            .try_get_matches_from(["x", "--join", "http://o1:3020/,http://o2:3020"])
            .unwrap();
        let parsed = Only::from_arg_matches(&m).unwrap();
        let s = parsed.node.into_settings(NodeKind::Origin).unwrap();
        assert_eq!(s.join.len(), 2);
        assert_eq!(s.join[0].as_str(), "http://o1:3020/");
        let file: Only = parse_file_ok("join = [\"http://o1:3020\", \"http://o2:3020\"]\n");
        assert_eq!(file.node.join.unwrap().len(), 2);
        assert!(args(|a| a.join_token = Some("shj_x".into()))
            .into_settings(NodeKind::Edge)
            .is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "shj_from_file.0123456789abcdef\n").unwrap();
        let with_file = |a: &mut NodeArgs| {
            a.join = Some(vec!["http://o1:3020".into()]);
            a.join_token_file = Some(file.clone());
        };
        let s = args(with_file).into_settings(NodeKind::Edge).unwrap();
        assert_eq!(
            s.join_token.as_deref(),
            Some("shj_from_file.0123456789abcdef")
        );
        let twice = args(|a| {
            with_file(a);
            a.join_token = Some("shj_x".into());
        });
        assert!(twice.into_settings(NodeKind::Edge).is_err());
    }

    fn parse_file_ok(text: &str) -> Only {
        match parse_file::<Only>(text, &command::<Only>(NodeKind::Edge)) {
            Ok(a) => a,
            Err(FileError::Unknown(k)) => panic!("unknown {k:?}"),
            Err(FileError::Parse(e)) => panic!("{e}"),
        }
    }

    #[test]
    fn the_file_is_under_the_flags_and_unknown_keys_are_named() {
        let file =
            parse_file_ok("http = \"127.0.0.1:9000\"\nregion = \"eu\"\nhls-target-secs = 4\n");
        let cli = Only {
            node: args(|a| a.region = Some("us".into())),
        };
        let s = cli
            .merge(file)
            .node
            .into_settings(NodeKind::Origin)
            .unwrap();
        assert_eq!(s.http.port(), 9000);
        assert_eq!(s.region, "us");
        assert_eq!(s.hls.target_duration, Duration::from_secs(4));
        let cmd = command::<Only>(NodeKind::Edge);
        match parse_file::<Only>("bogus = 1\nregion = \"eu\"\nconfig = \"x\"\n", &cmd) {
            Err(FileError::Unknown(keys)) => assert_eq!(keys, ["bogus", "config"]),
            _ => panic!("unknown keys accepted"),
        }
    }

    #[test]
    fn bad_values_are_refused() {
        for kind in [NodeKind::Origin, NodeKind::Edge] {
            for bad in [
                args(|a| a.public_url = Some("ftp://x".into())),
                args(|a| a.node_id = Some("a b".into())),
                args(|a| a.join = Some(vec!["not a url".into()])),
                args(|a| a.cache_bytes = Some(1)),
                args(|a| a.hls_part_secs = Some(5.0)),
                args(|a| a.hls_target_secs = Some(31.0)),
                args(|a| a.region_header = Some("bad header".into())),
            ] {
                assert!(bad.into_settings(kind).is_err());
            }
        }
    }

    #[test]
    fn help_shows_each_kinds_defaults() {
        let help = command::<Only>(NodeKind::Edge).render_help().to_string();
        assert!(help.contains("[default: 0.0.0.0:3021]"), "{help}");
        assert!(
            help.contains(&format!("[default: {DEFAULT_LOG}]")),
            "{help}"
        );
        let rows = vec![("http".to_string(), "0.0.0.0:3021".to_string())];
        let mismatches = documented_defaults_mismatches(&command::<Only>(NodeKind::Edge), &rows);
        assert!(mismatches
            .iter()
            .any(|m| m.contains("--region is not documented")));
        assert!(
            !mismatches
                .iter()
                .any(|m| m.starts_with("--http ") || m.starts_with("--http:")),
            "{mismatches:?}"
        );
    }
}
