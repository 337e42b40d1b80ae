//! Secrets this node makes and checks: API keys, stream keys, app signing secrets, the admin
//! password (argon2id) and the dashboard session JWT (HS256, secret kept in the data dir).

use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A random alphanumeric string of `len` characters with a readable prefix (`sk_`, `rk_`...).
pub fn random_token(prefix: &str, len: usize) -> String {
    let body: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect();
    format!("{prefix}{body}")
}

/// `len` random bytes as lowercase hex.
pub fn random_hex(len: usize) -> String {
    let mut b = vec![0u8; len];
    rand::thread_rng().fill(&mut b[..]);
    hex::encode(b)
}

/// SHA-256 of a high-entropy secret (API keys, stream keys), as hex.
pub fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Argon2id PHC string of a password.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters cannot fail")
        .to_string()
}

/// True if `password` matches the PHC string.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Claims of a dashboard session token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionClaims {
    pub sub: String,
    pub role: String,
    pub iat: u64,
    pub exp: u64,
}

/// Signs and checks dashboard session tokens with the node's secret.
#[derive(Clone)]
pub struct SessionKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// How long a dashboard session lasts.
pub const SESSION_TTL_SECS: u64 = 12 * 3600;

impl SessionKeys {
    /// Loads `<data_dir>/jwt-secret`, creating it (mode 0600) on first start.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<Self> {
        let path = data_dir.join("jwt-secret");
        let secret = match std::fs::read_to_string(&path) {
            Ok(s) if s.trim().len() >= 32 => s.trim().to_string(),
            _ => {
                let s = random_hex(32);
                write_private(&path, &s)?;
                s
            }
        };
        Ok(Self::from_secret(secret.as_bytes()))
    }

    /// Keys from a raw secret.
    pub fn from_secret(secret: &[u8]) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// A session token for `user`, valid [`SESSION_TTL_SECS`].
    pub fn issue(&self, user: &str, now: u64) -> String {
        let claims = SessionClaims {
            sub: user.to_string(),
            role: "admin".into(),
            iat: now,
            exp: now + SESSION_TTL_SECS,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 encoding of plain claims cannot fail")
    }

    /// The claims of a valid, unexpired session token.
    pub fn check(&self, token: &str) -> Option<SessionClaims> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        jsonwebtoken::decode::<SessionClaims>(token, &self.decoding, &v)
            .ok()
            .map(|d| d.claims)
    }
}

/// Dashboard logins: session tokens, and the `ADMIN_USER`/`ADMIN_PASS` break-glass login.
#[derive(Clone)]
pub struct Sessions {
    keys: SessionKeys,
    break_glass: Option<std::sync::Arc<(String, String)>>,
}

impl Sessions {
    /// Sessions signed with `keys`; `break_glass` is accepted as a login while it is set.
    pub fn new(keys: SessionKeys, break_glass: Option<(String, String)>) -> Self {
        Self {
            keys,
            break_glass: break_glass.map(std::sync::Arc::new),
        }
    }

    /// A session token for `user`.
    pub fn issue(&self, user: &str) -> String {
        self.keys.issue(user, unix_now())
    }

    /// The claims of a valid session token.
    pub fn check(&self, token: &str) -> Option<SessionClaims> {
        self.keys.check(token)
    }

    /// Whether `user`/`password` is the break-glass login (compared in constant time).
    pub fn is_break_glass(&self, user: &str, password: &str) -> bool {
        self.break_glass
            .as_deref()
            .is_some_and(|(u, p)| u == user && constant_time_eq(p.as_bytes(), password.as_bytes()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Writes a secret file readable by the owner only.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_round_trip() {
        let h = hash_password("hunter2");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("hunter2", &h));
        assert!(!verify_password("hunter3", &h));
        assert!(!verify_password("hunter2", "not a phc"));
    }

    #[test]
    fn session_tokens_check_secret_and_expiry() {
        let k = SessionKeys::from_secret(b"0123456789abcdef0123456789abcdef");
        let now = unix_now();
        let t = k.issue("admin", now);
        assert_eq!(k.check(&t).unwrap().sub, "admin");
        let other = SessionKeys::from_secret(b"another-secret-another-secret-xx");
        assert!(other.check(&t).is_none());
        let old = k.issue("admin", now - SESSION_TTL_SECS - 10);
        assert!(k.check(&old).is_none());
    }

    #[test]
    fn tokens_have_prefix_and_entropy() {
        let a = random_token("sk_", 40);
        let b = random_token("sk_", 40);
        assert!(a.starts_with("sk_") && a.len() == 43);
        assert_ne!(a, b);
        assert_eq!(sha256_hex("abc").len(), 64);
    }
}
