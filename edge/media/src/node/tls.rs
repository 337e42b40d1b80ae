//! TLS of a node's public ports (HTTPS, RTMPS): certificates from files, reloaded when they
//! change, or obtained and renewed over ACME (TLS-ALPN-01 on the HTTPS port).
//!
//! [`Tls::start`] gives one certificate source; [`Tls::acceptor`] wraps it in the rustls server
//! config of a port (with its ALPN protocols). An ACME validation connection (ALPN
//! `acme-tls/1`) is answered on the HTTPS port and closed, never handed to the HTTP server.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use futures::StreamExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Let's Encrypt's production directory: the ACME default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// The ALPN protocol of ACME's TLS-ALPN-01 validation (RFC 8737).
const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// How often certificate files are looked at for a change.
const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// Where a node's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSettings {
    /// A PEM certificate chain and its private key, reloaded when either file changes.
    Files { cert: PathBuf, key: PathBuf },
    /// Obtained and renewed over ACME for `domains`.
    Acme {
        domains: Vec<String>,
        email: Option<String>,
        /// The directory URL (default [`LETS_ENCRYPT`]).
        directory: String,
        /// An extra root to trust for the directory's HTTPS (tests: a local ACME server).
        ca_root: Option<PathBuf>,
    },
}

/// A running certificate source.
#[derive(Clone)]
pub struct Tls {
    resolver: Arc<dyn ResolvesServerCert>,
    /// ACME's validation config (answers TLS-ALPN-01 challenges), if over ACME.
    challenge: Option<Arc<ServerConfig>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("acme", &self.challenge.is_some())
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Starts the source: reads the files (and watches them), or starts ACME (its account
    /// key and certificates cached in `<data_dir>/acme/`, owner-only). Background work goes to
    /// `tasks` until `shutdown`.
    pub async fn start(
        settings: &TlsSettings,
        data_dir: &Path,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        match settings {
            TlsSettings::Files { cert, key } => {
                let files = Arc::new(FileCert::load(cert.clone(), key.clone())?);
                tasks.spawn(files.clone().watch(shutdown));
                Ok(Self {
                    resolver: files,
                    challenge: None,
                })
            }
            TlsSettings::Acme {
                domains,
                email,
                directory,
                ca_root,
            } => {
                let mut config = match ca_root {
                    Some(root) => rustls_acme::AcmeConfig::new_with_client_config(
                        domains,
                        Arc::new(acme_client_config(root)?),
                    ),
                    None => rustls_acme::AcmeConfig::new_with_provider(domains, provider()),
                }
                .directory(directory)
                .cache(rustls_acme::caches::DirCache::new(data_dir.join("acme")));
                if let Some(email) = email {
                    config = config.contact_push(format!("mailto:{email}"));
                }
                let mut state = config.state();
                let resolver = state.resolver();
                let challenge = state.challenge_rustls_config_with_provider(provider());
                tasks.spawn(async move {
                    loop {
                        let event = tokio::select! {
                            _ = shutdown.cancelled() => return,
                            event = state.next() => event,
                        };
                        match event {
                            Some(Ok(ok)) => tracing::info!(event = ?ok, "acme"),
                            Some(Err(err)) => tracing::warn!(error = ?err, "acme"),
                            None => return,
                        }
                    }
                });
                Ok(Self {
                    resolver,
                    challenge: Some(challenge),
                })
            }
        }
    }

    /// What accepts TLS on a port offering `alpn` (e.g. `h2`, `http/1.1`; none for RTMPS).
    pub fn acceptor(&self, alpn: &[&[u8]]) -> Acceptor {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Acceptor {
            config: Arc::new(config),
            challenge: self.challenge.clone(),
        }
    }
}

/// Accepts TLS connections of one port.
#[derive(Clone)]
pub struct Acceptor {
    config: Arc<ServerConfig>,
    challenge: Option<Arc<ServerConfig>>,
}

impl Acceptor {
    /// Completes the handshake of `io`: `Ok(None)` for an ACME validation connection (answered
    /// and done), `Ok(Some(stream))` for a client.
    pub async fn accept<IO>(
        &self,
        io: IO,
    ) -> std::io::Result<Option<tokio_rustls::server::TlsStream<IO>>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
        let is_challenge = start
            .client_hello()
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        match (&self.challenge, is_challenge) {
            (Some(challenge), true) => {
                let mut stream = start.into_stream(challenge.clone()).await?;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
                Ok(None)
            }
            _ => Ok(Some(start.into_stream(self.config.clone()).await?)),
        }
    }
}

/// The rustls client config of the ACME client when the directory is signed by `root`.
fn acme_client_config(root: &Path) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in CertificateDer::pem_file_iter(root)
        .with_context(|| format!("reading {}", root.display()))?
    {
        roots
            .add(cert.with_context(|| format!("parsing {}", root.display()))?)
            .with_context(|| format!("trusting {}", root.display()))?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A certificate and key read from files, replaced when the files change.
struct FileCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>)>,
}

impl std::fmt::Debug for FileCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCert")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl FileCert {
    fn load(cert: PathBuf, key: PathBuf) -> anyhow::Result<Self> {
        let (certified, stamp) = read_pair(&cert, &key)?;
        Ok(Self {
            cert,
            key,
            current: RwLock::new((Arc::new(certified), stamp)),
        })
    }

    /// Reloads the pair when a file's modification time changes; a pair that does not load is
    /// logged and the previous one kept.
    async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let seen = self
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .1;
            if modified(&self.cert, &self.key) == seen {
                continue;
            }
            match read_pair(&self.cert, &self.key) {
                Ok((certified, stamp)) => {
                    *self.current.write().unwrap_or_else(PoisonError::into_inner) =
                        (Arc::new(certified), stamp);
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    tracing::warn!(cert = %self.cert.display(), error = %format!("{e:#}"), "TLS certificate not reloaded; keeping the previous one");
                }
            }
        }
    }
}

impl ResolvesServerCert for FileCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .0
                .clone(),
        )
    }
}

/// The later modification time of the two files (`None` if unreadable).
fn modified(cert: &Path, key: &Path) -> Option<SystemTime> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some(m(cert)?.max(m(key)?))
}

fn read_pair(cert: &Path, key: &Path) -> anyhow::Result<(CertifiedKey, Option<SystemTime>)> {
    let stamp = modified(cert, key);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", cert.display());
    let key_der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key {}", key.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .with_context(|| format!("loading the private key {}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().with_context(|| {
        format!(
            "{} and {} do not belong together",
            cert.display(),
            key.display()
        )
    })?;
    Ok((certified, stamp))
}
