//! Cluster-wide trust: a private CA, node keys, CSRs and certificates. Sans-IO except for
//! [`NodeIdentity::save`] / [`NodeIdentity::load`].
//!
//! Every node of a cluster holds a certificate signed by the cluster CA, whose subject CN and only
//! DNS SAN are the node's name and whose OU is its role. A joining node generates its key pair
//! locally ([`node_csr`]) and sends only the CSR; the CA holder signs it ([`sign_node_csr`]) after
//! checking that the CSR asks for the name it expects. A certificate is revoked by its
//! fingerprint ([`cert_fingerprint`]): the revocation list lives in the replicated state and the
//! endpoint checks it at every handshake (see `Endpoint::set_revoked`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

/// How long the cluster CA is valid: long, because nothing rotates it yet.
const CA_VALIDITY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// How long a node certificate is valid: long, because nothing renews it yet.
const NODE_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// Backdating of `not_before`, so a peer whose clock is a little behind accepts a fresh cert.
const CLOCK_SKEW: Duration = Duration::from_secs(24 * 3600);

const CA_FILE: &str = "ca.pem";
const CERT_FILE: &str = "node.pem";
const KEY_FILE: &str = "node.key";

/// Failure to create, sign, parse or store cluster certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A node name is not `[A-Za-z0-9._-]{1,63}`.
    #[error(
        "invalid node name {name:?}: expected 1 to 63 of [A-Za-z0-9._-], not ending in .invalid"
    )]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// The CSR asks for another name than the one the signer expects.
    #[error("CSR is for {found:?}, expected {expected:?}")]
    NameMismatch {
        /// The name the signer expected.
        expected: String,
        /// The CN found in the CSR (empty if none).
        found: String,
    },
    /// rcgen failed to generate, parse or sign.
    #[error("certificate {what}")]
    Cert {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        source: rcgen::Error,
    },
    /// A PEM document could not be parsed.
    #[error("invalid PEM ({what})")]
    Pem {
        /// Which document.
        what: &'static str,
    },
    /// A certificate's DER could not be parsed.
    #[error("invalid certificate: {reason}")]
    Parse {
        /// Why.
        reason: String,
    },
    /// The certificate carries no node name (no CN and no DNS SAN).
    #[error("certificate carries no node name")]
    NoName,
    /// Reading or writing an identity file failed.
    #[error("cannot access {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn cert_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Cert { what, source }
}

/// The cluster CA: its certificate and private key, both PEM. Only the CA holder keeps the key.
#[derive(Clone)]
pub struct CaBundle {
    /// The self-signed CA certificate.
    pub cert_pem: String,
    /// The CA private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle").finish_non_exhaustive()
    }
}

/// A joining node's freshly generated key and the CSR to send to the CA holder.
#[derive(Clone)]
pub struct NodeKey {
    /// The node's private key (PKCS#8); never leaves the node.
    pub key_pem: String,
    /// The certificate signing request for the node's name.
    pub csr_pem: String,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

/// Checks a node name: `[A-Za-z0-9._-]{1,63}`, not under the reserved `.invalid` TLD (which the
/// transport uses for "any cluster node").
pub fn validate_node_name(name: &str) -> Result<(), PkiError> {
    let ok = (1..=63).contains(&name.len())
        && !name.to_ascii_lowercase().ends_with(".invalid")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::InvalidName { name: name.into() })
    }
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + lifetime).into();
}

/// Creates a self-signed cluster CA named after the cluster.
pub fn create_ca(cluster_name: &str) -> Result<CaBundle, PkiError> {
    let key = KeyPair::generate().map_err(cert_err("key generation"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{cluster_name} cluster CA"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "streamhub");
    // Path length 0: the CA signs node certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, CA_VALIDITY);
    let cert = params
        .self_signed(&key)
        .map_err(cert_err("CA self-signing"))?;
    Ok(CaBundle {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Generates a node key pair and a CSR whose subject CN is `node_name`.
pub fn node_csr(node_name: &str) -> Result<NodeKey, PkiError> {
    validate_node_name(node_name)?;
    let key = KeyPair::generate().map_err(cert_err("key generation"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, node_name);
    let csr = params
        .serialize_request(&key)
        .map_err(cert_err("CSR serialization"))?;
    Ok(NodeKey {
        key_pem: key.serialize_pem(),
        csr_pem: csr.pem().map_err(cert_err("CSR encoding"))?,
    })
}

/// The certificate parameters of a node: everything comes from the signer, nothing from the CSR.
fn node_params(node_name: &str, role: &str) -> Result<CertificateParams, PkiError> {
    validate_node_name(node_name)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, node_name);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role);
    let dns = node_name.try_into().map_err(cert_err("DNS SAN"))?;
    params.subject_alt_names = vec![SanType::DnsName(dns)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every node is both a server (accepting peers) and a client (dialing them).
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, NODE_VALIDITY);
    Ok(params)
}

fn ca_issuer(ca: &CaBundle) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let key = KeyPair::from_pem(&ca.key_pem).map_err(cert_err("CA key parsing"))?;
    Issuer::from_ca_cert_pem(&ca.cert_pem, key).map_err(cert_err("CA certificate parsing"))
}

fn dn_text(value: &DnValue) -> Option<String> {
    match value {
        DnValue::Utf8String(s) => Some(s.clone()),
        DnValue::PrintableString(s) => Some(s.as_str().to_owned()),
        DnValue::Ia5String(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Signs a joiner's CSR as the certificate of node `node_name` with `role`.
///
/// Only the CSR's public key is used: names, usages and validity are set here, so a CSR asking
/// for CA rights or extra names gets none. A CSR whose CN is not `node_name` is refused.
pub fn sign_node_csr(
    ca: &CaBundle,
    csr_pem: &str,
    node_name: &str,
    role: &str,
) -> Result<String, PkiError> {
    let csr =
        CertificateSigningRequestParams::from_pem(csr_pem).map_err(cert_err("CSR parsing"))?;
    let found = csr
        .params
        .distinguished_name
        .get(&DnType::CommonName)
        .and_then(dn_text)
        .unwrap_or_default();
    if found != node_name {
        return Err(PkiError::NameMismatch {
            expected: node_name.into(),
            found,
        });
    }
    let signed = CertificateSigningRequestParams {
        params: node_params(node_name, role)?,
        public_key: csr.public_key,
    };
    let cert = signed
        .signed_by(&ca_issuer(ca)?)
        .map_err(cert_err("CSR signing"))?;
    Ok(cert.pem())
}

/// Issues a key and certificate for `node_name` directly (for the CA holder itself).
pub fn issue_node_cert(
    ca: &CaBundle,
    node_name: &str,
    role: &str,
) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(cert_err("key generation"))?;
    let cert = node_params(node_name, role)?
        .signed_by(&key, &ca_issuer(ca)?)
        .map_err(cert_err("node signing"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Parses the first certificate of a PEM document.
pub(crate) fn cert_der(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| PkiError::Pem { what })
}

/// The SHA-256 of the CA certificate's DER, lowercase hex: what an operator compares when joining.
pub fn ca_fingerprint(ca_cert_pem: &str) -> Result<String, PkiError> {
    let der = cert_der(ca_cert_pem, "CA certificate")?;
    Ok(hex::encode(Sha256::digest(der.as_ref())))
}

/// The node name a certificate carries: its subject CN, else its first DNS SAN.
pub fn cert_node_name(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse {
        reason: e.to_string(),
    })?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let san = || {
        let ext = cert.subject_alternative_name().ok().flatten()?;
        ext.value.general_names.iter().find_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            _ => None,
        })
    };
    cn.or_else(san).ok_or(PkiError::NoName)
}

/// The role a node certificate carries in its subject OU (`origin`, `edge`), if any.
pub fn cert_role(der: &[u8]) -> Result<Option<String>, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse {
        reason: e.to_string(),
    })?;
    let role = cert
        .subject()
        .iter_organizational_unit()
        .next()
        .and_then(|ou| ou.as_str().ok())
        .map(str::to_owned);
    Ok(role)
}

/// The SHA-256 of a certificate's DER, lowercase hex: what the revocation list holds.
pub fn cert_fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The fingerprint of the first certificate of a PEM document.
pub fn pem_fingerprint(pem: &str) -> Result<String, PkiError> {
    Ok(cert_fingerprint(cert_der(pem, "certificate")?.as_ref()))
}

/// What the verified certificate of a peer says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// The node name (CN, else the first DNS SAN).
    pub name: String,
    /// The role in the subject OU, if any.
    pub role: Option<String>,
    /// [`cert_fingerprint`] of the leaf.
    pub fingerprint: String,
}

impl PeerCert {
    /// Reads a leaf certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        Ok(Self {
            name: cert_node_name(der)?,
            role: cert_role(der)?,
            fingerprint: cert_fingerprint(der),
        })
    }
}

/// The verified certificate of the peer of an established connection.
///
/// `None` if the peer presented no certificate (never the case on a cluster endpoint, which
/// requires one on both sides) or it carries no usable name.
pub fn peer_cert(conn: &quinn::Connection) -> Option<PeerCert> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    PeerCert::from_der(chain.first()?.as_ref()).ok()
}

/// The node name of the peer of an established connection, from its verified certificate.
pub fn peer_name(conn: &quinn::Connection) -> Option<String> {
    peer_cert(conn).map(|c| c.name)
}

/// What a node needs to join the cluster's mutual TLS: the CA and its own certificate and key.
#[derive(Clone)]
pub struct NodeIdentity {
    /// The cluster CA certificate: the only trust root.
    pub ca_cert_pem: String,
    /// This node's certificate, signed by the CA.
    pub cert_pem: String,
    /// This node's private key.
    pub key_pem: String,
    /// This node's name, as in its certificate.
    pub name: String,
    /// This node's role, as in its certificate's OU (`None` for a certificate without one).
    pub role: Option<String>,
    /// [`cert_fingerprint`] of this node's certificate.
    pub fingerprint: String,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// An identity from PEM documents; the name is read from the certificate.
    pub fn from_pem(
        ca_cert_pem: String,
        cert_pem: String,
        key_pem: String,
    ) -> Result<Self, PkiError> {
        let cert = PeerCert::from_der(cert_der(&cert_pem, "node certificate")?.as_ref())?;
        Ok(Self {
            ca_cert_pem,
            cert_pem,
            key_pem,
            name: cert.name,
            role: cert.role,
            fingerprint: cert.fingerprint,
        })
    }

    /// A new CA-holder identity: creates the CA and issues this node's certificate from it.
    pub fn bootstrap(
        cluster_name: &str,
        node_name: &str,
        role: &str,
    ) -> Result<(Self, CaBundle), PkiError> {
        let ca = create_ca(cluster_name)?;
        let (cert_pem, key_pem) = issue_node_cert(&ca, node_name, role)?;
        let identity = Self::from_pem(ca.cert_pem.clone(), cert_pem, key_pem)?;
        Ok((identity, ca))
    }

    /// Writes `ca.pem`, `node.pem` and `node.key` into `dir` (conventionally
    /// `<data_dir>/cluster/`), creating it; every file is mode 0600.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            path: dir.to_owned(),
            source,
        })?;
        write_private(&dir.join(CA_FILE), &self.ca_cert_pem)?;
        write_private(&dir.join(CERT_FILE), &self.cert_pem)?;
        write_private(&dir.join(KEY_FILE), &self.key_pem)
    }

    /// Reads an identity written by [`save`](Self::save).
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read_to_string(&path).map_err(|source| PkiError::Io { path, source })
        };
        Self::from_pem(read(CA_FILE)?, read(CERT_FILE)?, read(KEY_FILE)?)
    }

    /// Whether `dir` holds a saved identity.
    pub fn exists(dir: &Path) -> bool {
        [CA_FILE, CERT_FILE, KEY_FILE]
            .iter()
            .all(|f| dir.join(f).is_file())
    }
}

/// Writes a file readable by its owner only (atomically: temp file then rename).
pub fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::io::Write;
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for ok in ["a", "origin-1", "edge_eu.2", &"x".repeat(63)] {
            validate_node_name(ok).unwrap();
        }
        for bad in ["", "a b", "ü", "a/b", "x.INVALID", &"x".repeat(64)] {
            assert!(validate_node_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn csr_is_signed_with_the_name_in_cn_and_san() {
        let ca = create_ca("test").unwrap();
        let key = node_csr("origin-2").unwrap();
        let cert = sign_node_csr(&ca, &key.csr_pem, "origin-2", "origin").unwrap();
        let der = cert_der(&cert, "cert").unwrap();
        assert_eq!(cert_node_name(der.as_ref()).unwrap(), "origin-2");
        assert_eq!(cert_role(der.as_ref()).unwrap().as_deref(), Some("origin"));
        assert_eq!(
            cert_fingerprint(der.as_ref()),
            pem_fingerprint(&cert).unwrap()
        );
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let san = parsed.subject_alternative_name().unwrap().unwrap();
        assert!(matches!(
            san.value.general_names.as_slice(),
            [GeneralName::DNSName("origin-2")]
        ));
        assert!(!parsed.is_ca());
        // The identity is usable: key and cert belong together.
        let id = NodeIdentity::from_pem(ca.cert_pem.clone(), cert, key.key_pem).unwrap();
        assert_eq!(id.name, "origin-2");
    }

    #[test]
    fn csr_for_another_name_is_refused() {
        let ca = create_ca("test").unwrap();
        let key = node_csr("evil").unwrap();
        let err = sign_node_csr(&ca, &key.csr_pem, "origin-2", "origin").unwrap_err();
        assert!(matches!(err, PkiError::NameMismatch { .. }), "{err}");
        assert!(sign_node_csr(&ca, "garbage", "origin-2", "origin").is_err());
    }

    #[test]
    fn fingerprint_is_sha256_hex_and_stable() {
        let ca = create_ca("test").unwrap();
        let fp = ca_fingerprint(&ca.cert_pem).unwrap();
        assert_eq!(fp.len(), 64);
        assert_eq!(fp, ca_fingerprint(&ca.cert_pem).unwrap());
        assert_ne!(
            fp,
            ca_fingerprint(&create_ca("test").unwrap().cert_pem).unwrap()
        );
        assert!(ca_fingerprint("nope").is_err());
    }

    #[test]
    fn identity_round_trips_with_private_files() {
        let dir = tempfile::tempdir().unwrap();
        let cluster_dir = dir.path().join("cluster");
        let (id, _ca) = NodeIdentity::bootstrap("test", "origin-1", "origin").unwrap();
        assert!(!NodeIdentity::exists(&cluster_dir));
        id.save(&cluster_dir).unwrap();
        assert!(NodeIdentity::exists(&cluster_dir));
        let loaded = NodeIdentity::load(&cluster_dir).unwrap();
        assert_eq!(loaded.name, "origin-1");
        assert_eq!(loaded.cert_pem, id.cert_pem);
        #[cfg(unix)]
        for file in [CA_FILE, CERT_FILE, KEY_FILE] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(cluster_dir.join(file))
                .unwrap()
                .permissions();
            assert_eq!(mode.mode() & 0o777, 0o600, "{file}");
        }
    }
}
