//! Access tokens for publishers and viewers: LiveKit-compatible JWT claims, signed HS256 with the
//! app's own secret, so any node holding the app's key verifies them offline.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The `video` grant of a LiveKit access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VideoGrant {
    /// Namespaced room: `<app>-<room>`.
    pub room: String,
    pub room_join: bool,
    pub can_publish: bool,
    pub can_subscribe: bool,
}

/// Claims of an access token (`iss` = the app's key id, `sub` = the participant identity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub nbf: u64,
    pub exp: u64,
    pub video: VideoGrant,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is expired")]
    Expired,
    #[error("token signature does not match")]
    BadSignature,
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token was issued for key {found:?}, expected {expected:?}")]
    WrongIssuer { expected: String, found: String },
}

/// Signs `claims` with `secret` (HS256).
pub fn mint(claims: &AccessClaims, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 encoding of plain claims cannot fail")
}

/// Verifies signature, expiry and issuer (`key_id`); no leeway on expiry.
pub fn verify(token: &str, key_id: &str, secret: &[u8]) -> Result<AccessClaims, TokenError> {
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = 0;
    v.validate_nbf = true;
    v.set_required_spec_claims(&["exp", "iss", "sub"]);
    let data = jsonwebtoken::decode::<AccessClaims>(token, &DecodingKey::from_secret(secret), &v)
        .map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
        jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
        _ => TokenError::Malformed(e.to_string()),
    })?;
    if data.claims.iss != key_id {
        return Err(TokenError::WrongIssuer {
            expected: key_id.to_string(),
            found: data.claims.iss,
        });
    }
    Ok(data.claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> AccessClaims {
        AccessClaims {
            iss: "ak_1".into(),
            sub: "phone-42".into(),
            nbf: 0,
            exp,
            video: VideoGrant {
                room: "live-demo".into(),
                room_join: true,
                can_publish: true,
                can_subscribe: false,
            },
        }
    }

    const FAR: u64 = 4_000_000_000;

    #[test]
    fn round_trip_uses_livekit_claim_names() {
        let t = mint(&claims(FAR), b"secret");
        let payload = t.split('.').nth(1).unwrap();
        let json =
            String::from_utf8(base64_decode(payload).expect("payload is base64url")).unwrap();
        assert!(json.contains("\"roomJoin\":true"), "{json}");
        assert!(json.contains("\"canPublish\":true"), "{json}");
        assert_eq!(verify(&t, "ak_1", b"secret").unwrap(), claims(FAR));
    }

    #[test]
    fn refuses_wrong_secret_expired_and_foreign_issuer() {
        let t = mint(&claims(FAR), b"secret");
        assert_eq!(verify(&t, "ak_1", b"other"), Err(TokenError::BadSignature));
        assert!(matches!(
            verify(&t, "ak_2", b"secret"),
            Err(TokenError::WrongIssuer { .. })
        ));
        let old = mint(&claims(1000), b"secret");
        assert_eq!(verify(&old, "ak_1", b"secret"), Err(TokenError::Expired));
        assert!(matches!(
            verify("garbage", "ak_1", b"secret"),
            Err(TokenError::Malformed(_))
        ));
    }

    fn base64_decode(s: &str) -> Option<Vec<u8>> {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = Vec::new();
        let (mut buf, mut bits) = (0u32, 0);
        for c in s.bytes() {
            let v = A.iter().position(|&x| x == c)? as u32;
            buf = (buf << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((buf >> bits) as u8);
            }
        }
        Some(out)
    }
}
