//! Access tokens for publishers and viewers: LiveKit-compatible JWT claims, signed two ways:
//!
//! - **EdDSA** (Ed25519) with the app's signing key: what streamhub mints by default. Origins
//!   hold the private key; edges get only the public key, so an edge verifies viewer tokens
//!   offline and can never mint a token.
//! - **HS256** with the app's shared secret: what LiveKit clients expect. Only origins hold the
//!   secret (anyone who can verify such a token can also mint one).

pub use jsonwebtoken::Algorithm;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
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
    /// A play token's cap on the viewers watching with it at once (per node), streamhub's own
    /// claim.
    #[serde(
        default,
        rename = "maxViewers",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_viewers: Option<u32>,
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
    /// The token is signed with an algorithm this node holds no key for (HS256 on an edge).
    #[error("token is signed with {0:?}, which this node cannot verify")]
    NoKey(String),
}

/// What a node holds to verify an app's tokens.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyKeys<'a> {
    /// The app's Ed25519 public key (32 bytes, base64url): for EdDSA tokens.
    pub eddsa: Option<&'a str>,
    /// The app's HS256 secret: for LiveKit-compatible tokens (origins only).
    pub hs256: Option<&'a [u8]>,
}

/// The algorithm in a token's header (`EdDSA`, `HS256`, ...), if it has a readable header.
pub fn algorithm(token: &str) -> Option<Algorithm> {
    jsonwebtoken::decode_header(token).ok().map(|h| h.alg)
}

/// Signs `claims` with an Ed25519 key (PKCS#8 DER), parsing the key each time; an origin that
/// signs many tokens keeps an [`EdSigner`].
pub fn mint_eddsa(claims: &AccessClaims, pkcs8: &[u8]) -> Result<String, TokenError> {
    Ok(EdSigner::from_pkcs8(pkcs8)?.mint(claims))
}

/// An app's Ed25519 signing key, parsed once (parsing derives the public key: as costly as a
/// signature).
pub struct EdSigner {
    pair: ring::signature::Ed25519KeyPair,
}

impl std::fmt::Debug for EdSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdSigner").finish_non_exhaustive()
    }
}

impl EdSigner {
    /// The signer of a PKCS#8 (v1 or v2) Ed25519 key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, TokenError> {
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| TokenError::Malformed(format!("signing key: {e}")))?;
        Ok(Self { pair })
    }

    /// A JWT of `claims` with header `{"typ":"JWT","alg":"EdDSA"}`, the encoding
    /// `jsonwebtoken` produces and verifies.
    pub fn mint(&self, claims: &AccessClaims) -> String {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        use base64::Engine as _;
        let header = B64.encode(br#"{"typ":"JWT","alg":"EdDSA"}"#);
        let payload = serde_json::to_vec(claims).expect("plain claims serialize");
        let mut token = format!("{header}.{}", B64.encode(payload));
        let signature = self.pair.sign(token.as_bytes());
        token.push('.');
        token.push_str(&B64.encode(signature.as_ref()));
        token
    }
}

/// Verifies a token signed either way, with the key its header names; signature, expiry and
/// issuer as [`verify`] does.
pub fn verify_any(
    token: &str,
    key_id: &str,
    keys: VerifyKeys<'_>,
) -> Result<AccessClaims, TokenError> {
    match algorithm(token) {
        Some(Algorithm::EdDSA) => {
            let x = keys
                .eddsa
                .ok_or_else(|| TokenError::NoKey("EdDSA".into()))?;
            let key = DecodingKey::from_ed_components(x)
                .map_err(|e| TokenError::Malformed(format!("verify key: {e}")))?;
            decode(token, key_id, &key, Algorithm::EdDSA)
        }
        Some(Algorithm::HS256) => match keys.hs256 {
            Some(secret) => verify(token, key_id, secret),
            None => Err(TokenError::NoKey("HS256".into())),
        },
        Some(other) => Err(TokenError::Malformed(format!(
            "unsupported algorithm {other:?}"
        ))),
        None => Err(TokenError::Malformed("no readable JWT header".into())),
    }
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

/// Verifies an HS256 token's signature, expiry and issuer (`key_id`); no leeway on expiry.
pub fn verify(token: &str, key_id: &str, secret: &[u8]) -> Result<AccessClaims, TokenError> {
    decode(
        token,
        key_id,
        &DecodingKey::from_secret(secret),
        Algorithm::HS256,
    )
}

fn decode(
    token: &str,
    key_id: &str,
    key: &DecodingKey,
    alg: Algorithm,
) -> Result<AccessClaims, TokenError> {
    let mut v = Validation::new(alg);
    v.leeway = 0;
    v.validate_nbf = true;
    v.set_required_spec_claims(&["exp", "iss", "sub"]);
    let data =
        jsonwebtoken::decode::<AccessClaims>(token, key, &v).map_err(|e| match e.kind() {
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
            max_viewers: None,
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

    /// An Ed25519 key pair as origins make them: PKCS#8 (v2) and the raw public key, base64url.
    fn ed25519() -> (Vec<u8>, String) {
        // A fixed PKCS#8 v1 document of a test key (RFC 8410 section 10.3) and its public key.
        let pkcs8 = hex::decode(
            "302e020100300506032b657004220420d4ee72dbf913584ad5b6d8f1f769f8ad3afe7c28cbf1d4fbe097a88f44755842",
        )
        .unwrap();
        let public = "Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE".to_string();
        (pkcs8, public)
    }

    #[test]
    fn eddsa_tokens_verify_with_the_public_key_only() {
        let (pkcs8, public) = ed25519();
        let t = mint_eddsa(&claims(FAR), &pkcs8).unwrap();
        assert_eq!(algorithm(&t), Some(Algorithm::EdDSA));
        let edge = VerifyKeys {
            eddsa: Some(&public),
            hs256: None,
        };
        assert_eq!(verify_any(&t, "ak_1", edge).unwrap(), claims(FAR));
        // A HS256 token cannot be checked where only the public key is.
        let hs = mint(&claims(FAR), b"secret");
        assert!(matches!(
            verify_any(&hs, "ak_1", edge),
            Err(TokenError::NoKey(_))
        ));
        let origin = VerifyKeys {
            eddsa: Some(&public),
            hs256: Some(b"secret"),
        };
        assert!(verify_any(&hs, "ak_1", origin).is_ok());
        // Another key's signature, or an HS256 token forged with the public key as secret.
        let forged = mint(&claims(FAR), public.as_bytes());
        assert!(verify_any(&forged, "ak_1", edge).is_err());
        let mut other = public.clone().into_bytes();
        other[0] = if other[0] == b'A' { b'B' } else { b'A' };
        let other = String::from_utf8(other).unwrap();
        assert!(verify_any(
            &t,
            "ak_1",
            VerifyKeys {
                eddsa: Some(&other),
                hs256: None
            }
        )
        .is_err());
        let old = mint_eddsa(&claims(1000), &pkcs8).unwrap();
        assert_eq!(verify_any(&old, "ak_1", edge), Err(TokenError::Expired));
        // What the kept signer makes is what jsonwebtoken makes (Ed25519 is deterministic).
        let by_jsonwebtoken = jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            &claims(FAR),
            &EncodingKey::from_ed_der(&pkcs8),
        )
        .unwrap();
        assert_eq!(t, by_jsonwebtoken);
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
