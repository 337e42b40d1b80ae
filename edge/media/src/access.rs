//! Viewer tokens: a request under `/hls/{app}/{room}/…`, `/live/{app}/{room}/…` or
//! `/whep/{app}/{room}` that presents an access token (`?token=` or `Authorization: Bearer`)
//! has it checked before it is served: signature, expiry, issuer, the room (`<app>-<room>`) and
//! `canSubscribe`. A bad token is a 401 with the error envelope.
//!
//! Who verifies: an origin with the app's keys (both signatures); an edge with the app's public
//! key for EdDSA tokens (offline), and by asking an origin for HS256 (LiveKit) tokens, whose
//! secret it never holds ([`TokenVerifier`]).
//!
//! Playback without a token stays open (apps have no private playback yet); a player that holds
//! a token gets it enforced.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use futures::future::BoxFuture;
use streamhub_shared::auth::AccessClaims;
use streamhub_shared::{AppName, RoomName};

use crate::http::error;

/// Checks an app's access tokens: signature, expiry and issuer.
pub trait TokenVerifier: Send + Sync + 'static {
    /// The claims of `token` if it is a valid token of `app`, else why not.
    fn verify(
        &self,
        app: &AppName,
        token: &str,
    ) -> BoxFuture<'static, Result<AccessClaims, String>>;
}

/// How long a verified token is remembered (at most; never past its expiry). A token of an app
/// deleted meanwhile plays on for at most this long.
const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// A [`TokenVerifier`] that remembers what `inner` verified: a player presents the same token
/// with every playlist and segment request, and an Ed25519 verification costs ~40 µs where a
/// lookup costs ~1 µs (see docs/benchmarks.md). Refusals are not remembered.
pub struct Remembering<V> {
    inner: Arc<V>,
    verified: moka::future::Cache<[u8; 32], AccessClaims>,
}

impl<V: TokenVerifier> Remembering<V> {
    /// Remembers up to 100 000 verified tokens of `inner`.
    pub fn new(inner: V) -> Self {
        Self {
            inner: Arc::new(inner),
            verified: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(VERIFIED_TTL)
                .build(),
        }
    }
}

impl<V: TokenVerifier> TokenVerifier for Remembering<V> {
    fn verify(
        &self,
        app: &AppName,
        token: &str,
    ) -> BoxFuture<'static, Result<AccessClaims, String>> {
        use sha2::{Digest, Sha256};
        let id: [u8; 32] = Sha256::new()
            .chain_update(app.as_str())
            .chain_update([0])
            .chain_update(token)
            .finalize()
            .into();
        let (inner, cache) = (self.inner.clone(), self.verified.clone());
        let (app, token) = (app.clone(), token.to_string());
        Box::pin(async move {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if let Some(claims) = cache.get(&id).await {
                if claims.exp > now {
                    return Ok(claims);
                }
            }
            let claims = inner.verify(&app, &token).await?;
            cache.insert(id, claims.clone()).await;
            Ok(claims)
        })
    }
}

/// Checks that verified `claims` let a viewer watch `app/room`.
pub fn viewer_grant(claims: &AccessClaims, app: &AppName, room: &RoomName) -> Result<(), String> {
    let want = format!("{app}-{room}");
    if claims.video.room != want {
        return Err(format!(
            "the token is for room {:?}, not {want:?}",
            claims.video.room
        ));
    }
    if !claims.video.can_subscribe {
        return Err("the token does not allow subscribing".into());
    }
    Ok(())
}

/// The token a request presents, if any: any non-empty `token=` of the query, else a Bearer
/// header (an empty query value cannot hide a header).
fn presented(req: &Request) -> Option<String> {
    let from_query = req.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, v)| k == "token" && !v.is_empty())
            .map(|(_, v)| v.into_owned())
    });
    from_query.or_else(|| crate::http::bearer(req.headers()).map(str::to_string))
}

/// The app and room of a playback path (`/hls/{app}/{room}/…`, `/live/{app}/{room}/…`), read
/// the way the routes read it (percent-decoded), so an encoded name cannot slip past the check.
fn room_of(path: &str) -> Option<(AppName, RoomName)> {
    let rest = path
        .strip_prefix("/hls/")
        .or_else(|| path.strip_prefix("/live/"))
        .or_else(|| path.strip_prefix("/whep/"))?;
    let mut it = rest.split('/');
    let decode = |s: &str| -> Option<String> {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    let (app, room) = (decode(it.next()?)?, decode(it.next()?)?);
    Some((AppName::new(app).ok()?, RoomName::new(room).ok()?))
}

/// The longest token accepted (LiveKit tokens are a few hundred bytes).
const MAX_TOKEN_LEN: usize = 4096;

/// Middleware: verifies a presented token before the request is served.
pub async fn check(
    State(verifier): State<Arc<dyn TokenVerifier>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(token) = presented(&req) else {
        return next.run(req).await;
    };
    let Some((app, room)) = room_of(req.uri().path()) else {
        // Bad names are answered (400) by the route itself.
        return next.run(req).await;
    };
    if token.len() > MAX_TOKEN_LEN {
        return error(StatusCode::UNAUTHORIZED, "viewer token refused: too long");
    }
    let verified = verifier
        .verify(&app, &token)
        .await
        .and_then(|claims| viewer_grant(&claims, &app, &room));
    match verified {
        Ok(()) => next.run(req).await,
        Err(why) => error(
            StatusCode::UNAUTHORIZED,
            &format!("viewer token refused: {why}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamhub_shared::auth::{mint, VideoGrant};

    fn token(room: &str, can_subscribe: bool, exp_in: i64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = AccessClaims {
            iss: "key-1".into(),
            sub: "viewer".into(),
            nbf: (now - 5) as u64,
            exp: (now + exp_in) as u64,
            video: VideoGrant {
                room: room.into(),
                room_join: true,
                can_publish: false,
                can_subscribe,
            },
        };
        mint(&claims, b"00112233")
    }

    fn check(t: &str, app: &AppName, room: &RoomName, secret: &[u8]) -> Result<(), String> {
        let claims =
            streamhub_shared::auth::verify(t, "key-1", secret).map_err(|e| e.to_string())?;
        viewer_grant(&claims, app, room)
    }

    #[test]
    fn checks_room_grant_after_signature_and_expiry() {
        let (app, room) = (AppName::new("live").unwrap(), RoomName::new("cam").unwrap());
        let s = b"00112233";
        assert!(check(&token("live-cam", true, 60), &app, &room, s).is_ok());
        assert!(check(&token("live-other", true, 60), &app, &room, s).is_err());
        assert!(check(&token("live-cam", false, 60), &app, &room, s).is_err());
        assert!(check(&token("live-cam", true, -10), &app, &room, s).is_err());
        assert!(check(&token("live-cam", true, 60), &app, &room, b"ffff").is_err());
        assert!(check("garbage", &app, &room, s).is_err());
    }

    /// Counts the verifications that reach it.
    struct Counting(std::sync::atomic::AtomicUsize);

    impl TokenVerifier for Counting {
        fn verify(
            &self,
            _: &AppName,
            token: &str,
        ) -> BoxFuture<'static, Result<AccessClaims, String>> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let r = streamhub_shared::auth::verify(token, "key-1", b"00112233")
                .map_err(|e| e.to_string());
            Box::pin(async move { r })
        }
    }

    #[tokio::test]
    async fn remembers_valid_tokens_only() {
        let v = Remembering::new(Counting(Default::default()));
        let app = AppName::new("live").unwrap();
        let good = token("live-cam", true, 60);
        for _ in 0..5 {
            assert!(v.verify(&app, &good).await.is_ok());
        }
        assert_eq!(v.inner.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        let other = AppName::new("other").unwrap();
        assert!(v.verify(&other, &good).await.is_ok(), "keyed by app too");
        assert_eq!(v.inner.0.load(std::sync::atomic::Ordering::SeqCst), 2);
        for _ in 0..3 {
            assert!(v.verify(&app, "garbage").await.is_err());
        }
        assert_eq!(v.inner.0.load(std::sync::atomic::Ordering::SeqCst), 5);
    }

    #[test]
    fn finds_the_room_of_playback_paths() {
        let r = room_of("/hls/live/cam/index.m3u8").unwrap();
        assert_eq!((r.0.as_str(), r.1.as_str()), ("live", "cam"));
        let r = room_of("/live/li%76e/c%61m/mjpeg").unwrap();
        assert_eq!(
            (r.0.as_str(), r.1.as_str()),
            ("live", "cam"),
            "decoded like the routes"
        );
        assert!(room_of("/live/cams/door/mjpeg").is_some());
        assert!(room_of("/play/live/cam").is_none());
        assert!(room_of("/hls/Bad/cam/index.m3u8").is_none());
    }
}
