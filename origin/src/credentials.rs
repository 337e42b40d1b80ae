//! Secrets this node makes and checks: API keys, stream keys, app key pairs, the admin password
//! (argon2id) and the dashboard session JWT (HS256 with the cluster's session key).

use std::sync::{Arc, PoisonError, RwLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use streamhub_media::http::ApiError;

use crate::tenants::Tenants;

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

/// An Ed25519 key pair for an app's EdDSA tokens.
pub struct AppKeyPair {
    /// The private key, PKCS#8 DER.
    pub pkcs8: Vec<u8>,
    /// The public key, 32 bytes base64url (what edges get).
    pub verify_key: String,
}

impl AppKeyPair {
    /// A new random pair.
    pub fn generate() -> Self {
        use base64::Engine as _;
        use ring::signature::KeyPair as _;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .expect("the system RNG is available");
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .expect("a key ring just generated parses");
        Self {
            verify_key: base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(pair.public_key().as_ref()),
            pkcs8: pkcs8.as_ref().to_vec(),
        }
    }
}

/// Claims of a dashboard session token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionClaims {
    pub sub: String,
    pub role: String,
    pub iat: u64,
    pub exp: u64,
    /// The session's id: what a logout revokes.
    #[serde(default)]
    pub jti: String,
    /// When it was issued, in Unix milliseconds (a password change ends the sessions issued
    /// before it, even within the same second).
    #[serde(default)]
    pub iat_ms: u64,
}

/// Signs and checks dashboard session tokens with one secret.
#[derive(Clone)]
pub struct SessionKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// How long a dashboard session lasts.
pub const SESSION_TTL_SECS: u64 = 12 * 3600;
/// The environment variable that gives every origin the session key (at least 32 characters)
/// instead of the cluster's generated one.
pub const SESSION_KEY_ENV: &str = "STREAMHUB_JWT_SECRET";

impl SessionKeys {
    /// Keys from a raw secret.
    pub fn from_secret(secret: &[u8]) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// A session token for `user`, valid [`SESSION_TTL_SECS`] from `now_ms`.
    pub fn issue(&self, user: &str, now_ms: u64) -> (String, SessionClaims) {
        let now = now_ms / 1000;
        let claims = SessionClaims {
            sub: user.to_string(),
            role: "admin".into(),
            iat: now,
            exp: now + SESSION_TTL_SECS,
            jti: random_hex(16),
            iat_ms: now_ms,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 encoding of plain claims cannot fail");
        (token, claims)
    }

    /// The claims of a token with a valid signature, not expired.
    pub fn check(&self, token: &str) -> Option<SessionClaims> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        jsonwebtoken::decode::<SessionClaims>(token, &self.decoding, &v)
            .ok()
            .map(|d| d.claims)
    }
}

/// Dashboard logins, the same on every origin: sessions are signed with the cluster's session
/// key (sealed in the replicated state, or [`SESSION_KEY_ENV`]), refused once logged out or
/// issued before the last password change; and the `ADMIN_USER`/`ADMIN_PASS` break-glass login.
#[derive(Clone)]
pub struct Sessions {
    tenants: Tenants,
    from_env: Option<SessionKeys>,
    /// The keys of the sealed session key last opened, by its sealed text.
    opened: Arc<RwLock<Option<(String, SessionKeys)>>>,
    break_glass: Option<Arc<(String, String)>>,
}

impl Sessions {
    /// Sessions of the cluster `tenants` belongs to; `break_glass` is accepted as a login while
    /// it is set. Refuses a [`SESSION_KEY_ENV`] shorter than 32 characters.
    pub fn new(tenants: Tenants, break_glass: Option<(String, String)>) -> anyhow::Result<Self> {
        let from_env = match std::env::var(SESSION_KEY_ENV) {
            Ok(secret) if secret.len() >= 32 => Some(SessionKeys::from_secret(secret.as_bytes())),
            Ok(_) => anyhow::bail!("{SESSION_KEY_ENV} must be at least 32 characters"),
            Err(_) => None,
        };
        Ok(Self {
            tenants,
            from_env,
            opened: Arc::default(),
            break_glass: break_glass.map(Arc::new),
        })
    }

    fn keys(&self) -> Result<SessionKeys, ApiError> {
        if let Some(keys) = &self.from_env {
            return Ok(keys.clone());
        }
        let sealed = self
            .tenants
            .read(|s| s.membership.session_key.clone())
            .ok_or_else(|| {
                ApiError::Unavailable("the cluster's session key is not made yet".into())
            })?;
        if let Some((text, keys)) = &*self.opened.read().unwrap_or_else(PoisonError::into_inner) {
            if *text == sealed {
                return Ok(keys.clone());
            }
        }
        let secret = self
            .tenants
            .keyring()
            .open_text(streamhub_cluster::seal::place::SESSION_KEY, &sealed)?;
        let keys = SessionKeys::from_secret(secret.as_bytes());
        *self.opened.write().unwrap_or_else(PoisonError::into_inner) = Some((sealed, keys.clone()));
        Ok(keys)
    }

    /// Whether sessions are signed with [`SESSION_KEY_ENV`] rather than the cluster's key.
    pub fn from_environment(&self) -> bool {
        self.from_env.is_some()
    }

    /// A session token for `user`.
    pub fn issue(&self, user: &str) -> Result<(String, SessionClaims), ApiError> {
        Ok(self.keys()?.issue(user, unix_now_ms()))
    }

    /// The claims of a valid session: signed with the cluster's key, not expired, not logged
    /// out, not older than the last password change.
    pub fn check(&self, token: &str) -> Option<SessionClaims> {
        let claims = self.keys().ok()?.check(token)?;
        let valid = self.tenants.read(|s| {
            let after = match s.tenants.users.get(&claims.sub) {
                Some(user) => user.sessions_after_ms,
                None => s.tenants.admin.as_ref().map_or(0, |a| a.sessions_after_ms),
            };
            claims.iat_ms >= after && !s.membership.revoked_sessions.contains_key(&claims.jti)
        });
        valid.then_some(claims)
    }

    /// Whether `user` is the break-glass login's user while that login is accepted.
    pub fn is_break_glass_user(&self, user: &str) -> bool {
        let changed = self.tenants.read(|s| {
            s.tenants
                .admin
                .as_ref()
                .is_some_and(|a| a.sessions_after_ms > 0)
        });
        !changed && self.break_glass.as_deref().is_some_and(|(u, _)| u == user)
    }

    /// Whether `user`/`password` is the break-glass login (compared in constant time). It ends
    /// once the admin's password has been changed through the API.
    pub fn is_break_glass(&self, user: &str, password: &str) -> bool {
        let changed = self.tenants.read(|s| {
            s.tenants
                .admin
                .as_ref()
                .is_some_and(|a| a.sessions_after_ms > 0)
        });
        !changed
            && self.break_glass.as_deref().is_some_and(|(u, p)| {
                u == user
                    && streamhub_media::http::constant_time_eq(p.as_bytes(), password.as_bytes())
            })
    }
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
        let now = unix_now_ms();
        let (t, claims) = k.issue("admin", now);
        assert_eq!(k.check(&t).unwrap().sub, "admin");
        assert_eq!(claims.jti.len(), 32);
        assert_ne!(
            k.issue("admin", now).1.jti,
            claims.jti,
            "one id per session"
        );
        let other = SessionKeys::from_secret(b"another-secret-another-secret-xx");
        assert!(other.check(&t).is_none());
        let (old, _) = k.issue("admin", now - (SESSION_TTL_SECS + 10) * 1000);
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
