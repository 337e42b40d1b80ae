//! rustls and quinn configuration of a cluster endpoint: mutual TLS 1.3 against the cluster CA.
//!
//! Every config is built with an explicit ring provider, so nothing depends on a process-wide
//! default provider being installed.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

use super::error::TransportError;
use super::pki::{cert_der, cert_fingerprint, NodeIdentity};

/// The ALPN protocol of the cluster endpoint.
pub const ALPN: &[u8] = b"streamhub-cluster/1";

/// The server name a client asks for when it does not know the peer's node name.
///
/// Under the reserved `.invalid` TLD, which node names may not use, so it is never a node name;
/// [`ClusterServerVerifier`] skips the name check for it.
pub(crate) const ANY_PEER: &str = "any-node.streamhub-cluster.invalid";

/// QUIC keep-alive: frequent enough that a dead or restarted peer is noticed within seconds.
const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// A connection with no traffic (not even keep-alives) for this long is dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent bidirectional streams a peer may open on one connection (RPCs, and one per relay
/// subscription); more wait for credit.
pub(crate) const MAX_CONCURRENT_BIDI: u32 = 4096;
/// Concurrent unidirectional streams (the relay's per-group streams).
const MAX_CONCURRENT_UNI: u32 = 1024;
/// Bytes a peer may have in flight to us on one connection, all streams together. quinn's
/// default is unlimited; bounded, a receiver that stops reading caps what it buffers, and the
/// sender (a relay origin) notices and drops old groups.
const CONNECTION_RECEIVE_WINDOW: u32 = 32 << 20;

/// Fingerprints ([`cert_fingerprint`]) of revoked node certificates, shared by both verifiers of
/// an endpoint: a revoked certificate fails the handshake in either direction.
#[derive(Debug, Default)]
pub(crate) struct Revoked(RwLock<HashSet<String>>);

impl Revoked {
    pub(crate) fn contains(&self, fingerprint: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(fingerprint)
    }

    /// Replaces the list; returns the fingerprints that were not in it before.
    pub(crate) fn replace(&self, list: HashSet<String>) -> Vec<String> {
        let mut set = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let added = list.difference(&set).cloned().collect();
        *set = list;
        added
    }

    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if self.contains(&cert_fingerprint(end_entity.as_ref())) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: &'static str) -> impl FnOnce(rustls::Error) -> TransportError {
    move |source| TransportError::Tls { what, source }
}

fn roots(identity: &NodeIdentity) -> Result<Arc<RootCertStore>, TransportError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(cert_der(&identity.ca_cert_pem, "CA certificate")?)
        .map_err(tls_err("CA certificate"))?;
    Ok(Arc::new(roots))
}

fn own_chain(
    identity: &NodeIdentity,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TransportError> {
    let cert = cert_der(&identity.cert_pem, "node certificate")?;
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).map_err(|_| {
        TransportError::Pki(super::pki::PkiError::Pem {
            what: "node private key",
        })
    })?;
    Ok((vec![cert], key))
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut config = quinn::TransportConfig::default();
    config.keep_alive_interval(Some(KEEP_ALIVE));
    // 10 s always fits in a VarInt of milliseconds.
    config.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    config.max_concurrent_bidi_streams(MAX_CONCURRENT_BIDI.into());
    config.max_concurrent_uni_streams(MAX_CONCURRENT_UNI.into());
    config.receive_window(CONNECTION_RECEIVE_WINDOW.into());
    // BBR paces on measured bandwidth and RTT instead of backing off on every loss: a relay link
    // with a few percent of random loss (a long-haul path between regions) keeps its throughput.
    config.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    Arc::new(config)
}

/// The server side: requires a client certificate chained to the cluster CA and not revoked.
pub(crate) fn server_config(
    identity: &NodeIdentity,
    revoked: Arc<Revoked>,
) -> Result<quinn::ServerConfig, TransportError> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(roots(identity)?, provider.clone())
        .build()
        .map_err(|e| TransportError::Verifier(e.to_string()))?;
    let verifier = Arc::new(ClusterClientVerifier { inner, revoked });
    let (chain, key) = own_chain(identity)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err("server protocol versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls_err("server certificate"))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No resumption: a resumed session skips the client certificate check, and with it the
    // revocation list. Cluster connections are few and long-lived; a full handshake is cheap.
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    let quic =
        QuicServerConfig::try_from(tls).map_err(|e| TransportError::Verifier(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// The client side: presents this node's certificate, verifies the server with
/// [`ClusterServerVerifier`].
pub(crate) fn client_config(
    identity: &NodeIdentity,
    revoked: Arc<Revoked>,
) -> Result<quinn::ClientConfig, TransportError> {
    let provider = provider();
    let verifier = ClusterServerVerifier {
        roots: roots(identity)?,
        provider: provider.clone(),
        revoked,
    };
    let (chain, key) = own_chain(identity)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err("client protocol versions"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .map_err(tls_err("client certificate"))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic =
        QuicClientConfig::try_from(tls).map_err(|e| TransportError::Verifier(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// Verifies a server certificate against the cluster CA only.
///
/// The chain must lead to the cluster CA (the only root) and the leaf must allow server auth.
/// If the client dialed with the peer's node name, the leaf must also carry that name; if it
/// dialed with [`ANY_PEER`] (Raft knows peers by address only), any valid cluster certificate is
/// accepted. That is sound here because the CA is private to the cluster: every certificate it
/// signed belongs to a node of this cluster, and a node that can reach the address with such a
/// certificate is a cluster member. What it does not prove is *which* member answers at an
/// address; callers that care learn the name with [`peer_name`](super::pki::peer_name) or set an
/// expected name with [`Endpoint::expect_peer`](super::Endpoint::expect_peer).
#[derive(Debug)]
struct ClusterServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    revoked: Arc<Revoked>,
}

impl ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let any = matches!(server_name, ServerName::DnsName(dns) if dns.as_ref() == ANY_PEER);
        if !any {
            rustls::client::verify_server_name(&cert, server_name)?;
        }
        self.revoked.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// rustls's client verifier against the cluster CA, plus the revocation list.
#[derive(Debug)]
struct ClusterClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<Revoked>,
}

impl ClientCertVerifier for ClusterClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.revoked.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A stateless-reset key derived from the node's private key.
///
/// Stable across restarts of the same node, so when a node restarts on its address, peers still
/// holding a connection to the old process get a stateless reset they can verify and reconnect at
/// once, instead of waiting out the idle timeout.
pub(crate) fn reset_key(identity: &NodeIdentity) -> Arc<dyn quinn::crypto::HmacKey> {
    use sha2::{Digest, Sha256};
    let seed = Sha256::new()
        .chain_update(b"streamhub-cluster stateless reset v1\0")
        .chain_update(identity.key_pem.as_bytes())
        .finalize();
    Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &seed))
}
