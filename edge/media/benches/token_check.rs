//! What checking a viewer token costs a node per playback request: an EdDSA verification with
//! the app's public key (what an edge holds), against [`Remembering`]'s lookup of a token it
//! verified before (a player sends the same token with every playlist and segment request).
//!
//! Then the whole access check, as every playback request passes it ([`check`], the middleware):
//! a segment request of a public app's room (no token) against the same request of a `token`
//! app's room with a Bearer token seen before, through a router whose handler answers at once,
//! so the difference between the two is what the check adds for a private room.
//!
//! Run: `cargo bench -p streamhub-media --bench token_check` (`TOKEN_BENCH_SECS`, default 3).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use futures::future::BoxFuture;
use streamhub_cluster::query::RoomAccess;
use streamhub_cluster::state::Playback;
use streamhub_media::access::{
    check, Gate, Remembering, RememberingAccess, RoomPolicies, TokenVerifier, ViewerTracker,
};
use streamhub_shared::auth::{verify_any, AccessClaims, EdSigner, VerifyKeys, VideoGrant};
use streamhub_shared::{AppName, RoomName};
use tower::Service as _;

/// RFC 8410 section 10.3's Ed25519 key, PKCS#8, and its public key, base64url.
const PKCS8: &str =
    "302e020100300506032b657004220420d4ee72dbf913584ad5b6d8f1f769f8ad3afe7c28cbf1d4fbe097a88f44755842";
const PUBLIC: &str = "Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE";
const KEY_ID: &str = "ak_4f8e2c6a9b1d3e5f";

/// An edge's verifier: the app's public key only.
struct EdgeKeys;

impl TokenVerifier for EdgeKeys {
    fn verify(
        &self,
        _: &AppName,
        token: &str,
    ) -> BoxFuture<'static, Result<Arc<AccessClaims>, String>> {
        let keys = VerifyKeys {
            eddsa: Some(PUBLIC),
            hs256: None,
        };
        let r = verify_any(token, KEY_ID, keys)
            .map(Arc::new)
            .map_err(|e| e.to_string());
        Box::pin(async move { r })
    }
}

/// Rooms of app `private` play with a token, every other app's are public.
struct Policies;

impl RoomPolicies for Policies {
    fn access(
        &self,
        app: &AppName,
        _: &RoomName,
    ) -> BoxFuture<'static, Result<Option<Arc<RoomAccess>>, String>> {
        let access = RoomAccess {
            playback: if app.as_str() == "private" {
                Playback::Token
            } else {
                Playback::Public
            },
            backstage: false,
            hosts: vec![],
            viewer_quota: None,
            viewers: Default::default(),
        };
        Box::pin(async move { Ok(Some(Arc::new(access))) })
    }
}

fn rate(secs: Duration, mut op: impl FnMut()) -> f64 {
    for _ in 0..1000 {
        op();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < secs {
        for _ in 0..256 {
            op();
        }
        n += 256;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let secs = std::env::var("TOKEN_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(3), Duration::from_secs_f64);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let signer = EdSigner::from_pkcs8(&hex::decode(PKCS8).expect("hex")).expect("key");
    let token = signer.mint(&AccessClaims {
        iss: KEY_ID.into(),
        sub: "viewer-000042".into(),
        nbf: 0,
        exp: 4_000_000_000,
        max_viewers: None,
        video: VideoGrant {
            room: "live-demo".into(),
            room_join: true,
            can_publish: false,
            can_subscribe: true,
        },
    });
    let app = AppName::new("live").expect("app");
    let direct = rate(secs, || {
        let r = rt.block_on(EdgeKeys.verify(black_box(&app), black_box(&token)));
        assert!(r.is_ok());
    });
    let remembering = Remembering::new(EdgeKeys);
    let remembered = rate(secs, || {
        let r = rt.block_on(remembering.verify(black_box(&app), black_box(&token)));
        assert!(r.is_ok());
    });
    let gate = Gate {
        verifier: Arc::new(Remembering::new(EdgeKeys)),
        rooms: Arc::new(RememberingAccess::new(Policies)),
        viewers: Arc::new(ViewerTracker::default()),
        me: "edge-1".into(),
    };
    let router = axum::Router::new()
        .route(
            "/hls/{app}/{room}/{file}",
            axum::routing::get(|| async { StatusCode::OK }),
        )
        .layer(axum::middleware::from_fn_with_state(gate, check));
    let private_token = signer.mint(&AccessClaims {
        video: VideoGrant {
            room: "private-demo".into(),
            room_join: true,
            can_publish: false,
            can_subscribe: true,
        },
        ..streamhub_shared::auth::verify_any(
            &token,
            KEY_ID,
            VerifyKeys {
                eddsa: Some(PUBLIC),
                hs256: None,
            },
        )
        .expect("the token verifies")
    });
    // The client's side (the path, the header value) built once: only the server's work is timed.
    let bearer = header::HeaderValue::try_from(format!("Bearer {private_token}")).expect("ascii");
    let request = |path: &'static str, authorization: Option<&header::HeaderValue>| {
        let mut svc = router.clone();
        let mut req = Request::get(path);
        if let Some(value) = authorization {
            req = req.header(header::AUTHORIZATION, value.clone());
        }
        let resp = rt
            .block_on(svc.call(req.body(Body::empty()).expect("request")))
            .expect("infallible");
        assert_eq!(resp.status(), StatusCode::OK);
    };
    let public = rate(secs, || request("/hls/live/demo/seg-42.m4s", None));
    let private = rate(secs, || {
        request("/hls/private/demo/seg-42.m4s", Some(&bearer))
    });
    println!();
    println!(
        "token_check: one thread, {} s per case, token {} bytes",
        secs.as_secs_f64(),
        token.len()
    );
    println!();
    println!("| case | checks/s | µs/check | ÷ EdDSA verification |");
    println!("|---|---:|---:|---:|");
    for (name, r) in [
        ("EdDSA verification (public key)", direct),
        ("Remembering, token seen before", remembered),
    ] {
        println!("| {name} | {r:.0} | {:.2} | {:.1} |", 1e6 / r, r / direct);
    }
    println!();
    println!("| request through the access check | requests/s | µs/request |");
    println!("|---|---:|---:|");
    for (name, r) in [
        ("public app, no token", public),
        ("token app, Bearer token seen before", private),
    ] {
        println!("| {name} | {r:.0} | {:.3} |", 1e6 / r);
    }
    println!(
        "\nthe check for a private room adds {:.3} µs per request",
        1e6 / private - 1e6 / public
    );
}
