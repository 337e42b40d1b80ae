//! Access-token throughput on one thread: `auth::mint` and `auth::verify` against a baseline of
//! the bare HS256 primitive (`jsonwebtoken::crypto::sign`: ring HMAC-SHA256 with the key set up
//! per call, as `mint` does, plus base64url of the 32-byte tag) over the same signing input, so
//! the printed ratios say what the JWT layer (claims JSON, header, base64, validation) costs on
//! top of the HMAC itself.
//!
//! `ring` is in the tree only through `jsonwebtoken`, not a dependency of `shared`; its HMAC is
//! reached through jsonwebtoken's public `crypto::sign` rather than by adding a dependency.
//!
//! The EdDSA cases (`token`, verifiable on edges with the public key) are measured against the
//! same baseline: their ratio to the HS256 rows is what moving viewer tokens to a signature an
//! edge cannot forge costs.
//!
//! Run: `cargo bench -p streamhub-shared --bench token_mint` (`TOKEN_BENCH_SECS` sets the
//! measured seconds per case, default 3).

use std::hint::black_box;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey};
use streamhub_shared::auth::{
    mint, mint_eddsa, verify, verify_any, AccessClaims, EdSigner, VerifyKeys, VideoGrant,
};

/// Shaped like the origin's app secrets (`random_hex(32)`) and key ids.
const SECRET: &[u8] = b"3f9c2a7d5e1b8c4f6a0d2e9b7c5a3f1e8d6b4c2a0f9e7d5c3b1a8f6e4d2c0b9a";
const KEY_ID: &str = "ak_4f8e2c6a9b1d3e5f";
/// An Ed25519 key (RFC 8410 section 10.3), PKCS#8, and its public key as edges get it.
const ED25519_PKCS8: &str =
    "302e020100300506032b657004220420d4ee72dbf913584ad5b6d8f1f769f8ad3afe7c28cbf1d4fbe097a88f44755842";
const ED25519_PUBLIC: &str = "Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE";
const WARMUP: Duration = Duration::from_millis(500);
/// Iterations between two clock reads, so `Instant::now` is not what is measured.
const BATCH: u64 = 256;

fn claims() -> AccessClaims {
    AccessClaims {
        iss: KEY_ID.into(),
        sub: "viewer-000042".into(),
        nbf: 1_763_700_000,
        exp: 4_000_000_000,
        max_viewers: None,
        video: VideoGrant {
            room: "live-demo-room".into(),
            room_join: true,
            can_publish: false,
            can_subscribe: true,
        },
    }
}

/// Runs `op` for `WARMUP`, then for `secs`; returns operations per second of the second run.
fn rate(secs: Duration, mut op: impl FnMut()) -> f64 {
    let mut run = |len: Duration| {
        let start = Instant::now();
        let mut n = 0u64;
        loop {
            for _ in 0..BATCH {
                op();
            }
            n += BATCH;
            let elapsed = start.elapsed();
            if elapsed >= len {
                return n as f64 / elapsed.as_secs_f64();
            }
        }
    };
    run(WARMUP);
    run(secs)
}

fn main() {
    // `cargo bench` passes `--bench`; there are no filters to honour.
    let secs = std::env::var("TOKEN_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(3), Duration::from_secs_f64);
    let claims = claims();
    let token = mint(&claims, SECRET);
    assert_eq!(verify(&token, KEY_ID, SECRET).as_ref(), Ok(&claims));
    let (signing_input, signature) = token.rsplit_once('.').expect("a JWT has three parts");
    let key = EncodingKey::from_secret(SECRET);
    let raw = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, Algorithm::HS256)
        .expect("HS256 signing cannot fail");
    assert_eq!(raw, signature, "baseline signs the same input as mint");

    let hmac = rate(secs, || {
        let s = jsonwebtoken::crypto::sign(
            black_box(signing_input.as_bytes()),
            &EncodingKey::from_secret(black_box(SECRET)),
            Algorithm::HS256,
        );
        black_box(s.ok());
    });
    let minted = rate(secs, || {
        black_box(mint(black_box(&claims), black_box(SECRET)));
    });
    let verified = rate(secs, || {
        let c = verify(black_box(&token), KEY_ID, black_box(SECRET));
        assert!(c.is_ok());
        black_box(c.ok());
    });
    let pkcs8 = hex::decode(ED25519_PKCS8).expect("hex");
    let ed_token = mint_eddsa(&claims, &pkcs8).expect("EdDSA mint");
    let edge_keys = VerifyKeys {
        eddsa: Some(ED25519_PUBLIC),
        hs256: None,
    };
    assert_eq!(
        verify_any(&ed_token, KEY_ID, edge_keys).as_ref(),
        Ok(&claims)
    );
    let ed_minted = rate(secs, || {
        black_box(mint_eddsa(black_box(&claims), black_box(&pkcs8)).ok());
    });
    let signer = EdSigner::from_pkcs8(&pkcs8).expect("key");
    let ed_kept = rate(secs, || {
        black_box(signer.mint(black_box(&claims)));
    });
    let ed_verified = rate(secs, || {
        let c = verify_any(black_box(&ed_token), KEY_ID, edge_keys);
        assert!(c.is_ok());
        black_box(c.ok());
    });

    println!();
    println!(
        "token_mint: one thread, {} s per case after {} ms warm-up, token {} bytes, signing input {} bytes",
        secs.as_secs_f64(),
        WARMUP.as_millis(),
        token.len(),
        signing_input.len()
    );
    println!();
    println!("| case | ops/s | ns/op | ops/s ÷ HMAC baseline |");
    println!("|---|---:|---:|---:|");
    for (name, r) in [
        ("HMAC-SHA256 + b64 of tag (baseline)", hmac),
        ("auth::mint (HS256, livekitToken)", minted),
        ("auth::verify (HS256)", verified),
        ("auth::mint_eddsa (key parsed per call)", ed_minted),
        ("EdSigner::mint (token; key kept, as origins do)", ed_kept),
        ("auth::verify_any (EdDSA, public key: an edge)", ed_verified),
    ] {
        println!("| {name} | {r:.0} | {:.0} | {:.3} |", 1e9 / r, r / hmac);
    }
}
