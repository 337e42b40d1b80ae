//! The cluster key and what it seals: the secrets of the replicated state (the CA key, app
//! signing keys, the session key, credentials in pulled URLs) are stored as `enc1:<base64>`,
//! AES-256-GCM under a key that never enters the Raft log or snapshots.
//!
//! The key lives in `<data_dir>/cluster/cluster.key` (mode 0600) on origins only, or in
//! `STREAMHUB_CLUSTER_KEY`. An origin that joins gets it from another origin over the mutually
//! authenticated cluster transport; edges never get it. Each sealed value is bound to its place
//! (the associated data names it, e.g. `app-secret:demo`), so a sealed value copied elsewhere in
//! the state does not open.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

/// The prefix of a sealed value.
pub const SEALED_PREFIX: &str = "enc1:";
/// The environment variable that gives the cluster key (base64 of 32 bytes) instead of the file.
pub const KEY_ENV: &str = "STREAMHUB_CLUSTER_KEY";
/// The key file, under the node's identity directory.
pub const KEY_FILE: &str = "cluster.key";

/// Whether `value` is sealed (as opposed to a plaintext value of an older state).
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED_PREFIX)
}

/// Why a sealed value or a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Not `enc1:<base64>` of at least a nonce and a tag.
    #[error("malformed sealed value")]
    Malformed,
    /// The key or the place does not match: another cluster's key, or a value moved.
    #[error(
        "sealed value does not open with this cluster key (wrong key, or moved from {place:?})"
    )]
    WrongKey {
        /// The place it was opened for.
        place: String,
    },
    /// The key is not base64 of 32 bytes.
    #[error("invalid cluster key: expected base64 of 32 bytes")]
    BadKey,
    /// Writing the key file failed.
    #[error("writing the cluster key file")]
    Save(#[from] crate::transport::pki::PkiError),
    /// Reading the key file failed.
    #[error("cluster key file {path}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The cluster key: 32 random bytes, the same on every origin.
#[derive(Clone)]
pub struct ClusterKey {
    bytes: [u8; 32],
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterKey")
            .field("check", &self.check())
            .finish_non_exhaustive()
    }
}

impl ClusterKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system RNG is available");
        Self { bytes }
    }

    /// A key from its base64 form.
    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        let raw = B64.decode(text.trim()).map_err(|_| SealError::BadKey)?;
        let bytes: [u8; 32] = raw.try_into().map_err(|_| SealError::BadKey)?;
        Ok(Self { bytes })
    }

    /// The base64 form.
    pub fn to_base64(&self) -> String {
        B64.encode(self.bytes)
    }

    /// A value that identifies the key without revealing it (stored in the replicated state).
    pub fn check(&self) -> String {
        let digest = Sha256::new()
            .chain_update(b"streamhub cluster key check v1\0")
            .chain_update(self.bytes)
            .finalize();
        hex::encode(&digest[..16])
    }

    /// The key from `STREAMHUB_CLUSTER_KEY`, else from the key file in `dir`; `None` when
    /// neither exists.
    pub fn load(dir: &Path) -> Result<Option<Self>, SealError> {
        if let Ok(text) = std::env::var(KEY_ENV) {
            return Self::from_base64(&text).map(Some);
        }
        let path = dir.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_base64(&text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SealError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Writes the key file in `dir` (mode 0600), unless the key comes from the environment.
    pub fn save(&self, dir: &Path) -> Result<(), SealError> {
        if std::env::var_os(KEY_ENV).is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(dir).map_err(|source| SealError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        crate::transport::pki::write_private(&dir.join(KEY_FILE), &self.to_base64())?;
        Ok(())
    }

    /// A key for `purpose` derived from this one (HMAC-SHA256 of the purpose): the same on
    /// every origin, and revealing nothing of the cluster key or of other purposes' keys.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.bytes);
        let tag = ring::hmac::sign(&key, purpose.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.bytes).expect("32-byte AES key"))
    }

    /// Seals `plaintext` for `place` (the associated data: where the value is stored).
    pub fn seal(&self, place: &str, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system RNG is available");
        let mut buf = plaintext.to_vec();
        self.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place.as_bytes()),
                &mut buf,
            )
            .expect("AES-GCM sealing of a small value cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        format!("{SEALED_PREFIX}{}", B64.encode(out))
    }

    /// Opens a value sealed for `place`.
    pub fn open(&self, place: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let body = sealed
            .strip_prefix(SEALED_PREFIX)
            .ok_or(SealError::Malformed)?;
        let raw = B64.decode(body).map_err(|_| SealError::Malformed)?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Malformed)?;
        let mut buf = ciphertext.to_vec();
        let plain = self
            .aead()
            .open_in_place(nonce, Aad::from(place.as_bytes()), &mut buf)
            .map_err(|_| SealError::WrongKey {
                place: place.to_string(),
            })?;
        Ok(plain.to_vec())
    }

    /// Opens a sealed text value; a plaintext value (a state written before sealing) is
    /// returned as it is.
    pub fn open_text(&self, place: &str, value: &str) -> Result<String, SealError> {
        if !is_sealed(value) {
            return Ok(value.to_string());
        }
        String::from_utf8(self.open(place, value)?).map_err(|_| SealError::Malformed)
    }
}

/// The place (associated data) of each kind of sealed value.
pub mod place {
    /// The cluster CA's private key.
    pub const CA_KEY: &str = "ca-key";
    /// The dashboard session key.
    pub const SESSION_KEY: &str = "session-key";

    /// An app's HS256 secret.
    pub fn app_secret(app: &str) -> String {
        format!("app-secret:{app}")
    }

    /// An app's Ed25519 signing key.
    pub fn app_signing_key(app: &str) -> String {
        format!("app-signing-key:{app}")
    }

    /// A pulled ingress's source URL.
    pub fn ingress_url(id: &str) -> String {
        format!("ingress-url:{id}")
    }

    /// An SRT ingress's passphrase.
    pub fn ingress_passphrase(id: &str) -> String {
        format!("ingress-passphrase:{id}")
    }

    /// A webhook's signing secret.
    pub fn webhook_secret(id: &str) -> String {
        format!("webhook-secret:{id}")
    }

    /// The secret access key of an app's recording storage.
    pub fn storage_secret(app: &str) -> String {
        format!("storage-secret:{app}")
    }

    /// The session token of an app's recording storage.
    pub fn storage_token(app: &str) -> String {
        format!("storage-token:{app}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_bound_to_the_place_and_key() {
        let key = ClusterKey::generate();
        let sealed = key.seal("app-secret:a", b"00ff");
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("00ff"));
        assert_eq!(key.open("app-secret:a", &sealed).unwrap(), b"00ff");
        assert_ne!(
            key.seal("app-secret:a", b"00ff"),
            sealed,
            "a fresh nonce each time"
        );
        assert!(matches!(
            key.open("app-secret:b", &sealed),
            Err(SealError::WrongKey { .. })
        ));
        let other = ClusterKey::generate();
        assert!(other.open("app-secret:a", &sealed).is_err());
        assert_ne!(other.check(), key.check());
        assert!(matches!(
            key.open("x", "enc1:AAAA"),
            Err(SealError::Malformed)
        ));
        assert_eq!(key.open_text("x", "plain").unwrap(), "plain");
    }

    #[test]
    fn key_round_trips_through_base64_and_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ClusterKey::load(dir.path()).unwrap().is_none());
        let key = ClusterKey::generate();
        key.save(dir.path()).unwrap();
        let back = ClusterKey::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.check(), key.check());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(ClusterKey::from_base64("c2hvcnQ=").is_err());
    }
}
