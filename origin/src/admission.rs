//! The one way into a room: every ingest protocol (RTMP, WHIP, WebSocket-MJPEG, RTSP pull) asks
//! [`Admission::admit`] to go live and gets a [`Publisher`] or a typed [`Refusal`] that it maps
//! to its own wire answer.
//!
//! An admission, in order:
//! 1. **authenticate** the credential (stream key, device key, access token, pulled ingress)
//!    into a [`Grant`]: which room, which publisher, and what must still hold for it to go on;
//! 2. consult the **policies** (quotas, backstage, ... as they come);
//! 3. refuse a room **busy here** with another publisher, before any claim (a claim would bump
//!    the epoch and fence the live one);
//! 4. refuse a room **busy elsewhere** from the local replica (no Raft write); when its holder
//!    has stopped renewing its lease, first **wait** (bounded) for the cluster to declare it
//!    dead, so an encoder retrying its backup origin is accepted as soon as that happens;
//! 5. **claim** the room in the placement table (the epoch fences older holders);
//! 6. **re-check** the grant: a key revoked while the claim was in flight is refused;
//! 7. **start** the publisher. When 6 or 7 fails the claim is **released** at once, unless the
//!    room is live here (an own takeover keeps its claim).
//!
//! While a publisher lives, [`Admission::revalidate`] (every heartbeat) ends it when its grant
//! no longer holds: its key was deleted, or its app deleted or re-created, through any origin.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use streamhub_cluster::state::{Ingress, IngressKind};
use streamhub_media::http::ApiError;
use streamhub_shared::{AppName, RoomName};

use crate::placement::RoomClaims;
use crate::rooms::{Protocol, PublishClaim, Publisher, Rooms};
use crate::tenants::Tenants;

/// Prefix of the publisher id of a publisher admitted by an access token (not by an ingress).
pub const TOKEN_PUBLISHER: &str = "token:";

/// What a publisher presents.
#[derive(Debug, Clone)]
pub enum Credential {
    /// An RTMP ingress's stream key (`rk_…`), for RTMP and WHIP.
    StreamKey(String),
    /// A WebSocket-MJPEG device key (`wsk_…`).
    DeviceKey(String),
    /// An SRT ingress's stream key (from the SRT stream id).
    SrtKey(String),
    /// An access token of the app with `canPublish` for the room (WHIP).
    AccessToken(String),
    /// A pulled ingress (RTSP): this origin pulls it on the cluster's behalf.
    Pull { ingress_id: String },
}

/// A request to go live.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// The room the client names (WHIP, WebSocket); `None` when the credential names it (RTMP).
    pub room: Option<(AppName, RoomName)>,
    pub credential: Credential,
    pub protocol: Protocol,
    pub remote: SocketAddr,
}

/// What must still hold for an admitted publisher to go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Basis {
    /// The ingress exists (its key is not revoked).
    Ingress(String),
    /// The app exists with the signing key the token was verified with.
    AppKey(String),
}

/// A credential that passed: who may publish where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub app: AppName,
    pub room: RoomName,
    /// Who publishes: the ingress id, or [`TOKEN_PUBLISHER`] and the token's identity. The same
    /// publisher may take its own room over.
    pub publisher: String,
    pub basis: Basis,
}

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The credential or what it names does not exist (unknown or revoked key, unknown app).
    #[error("{0}")]
    NotFound(String),
    /// The credential exists but does not allow this.
    #[error("{0}")]
    Forbidden(String),
    #[error("room {app}/{room} is already live from another publisher")]
    BusyHere { app: AppName, room: RoomName },
    #[error("room {app}/{room} is already live on origin {node}; retry in {retry_after_secs} s")]
    BusyElsewhere {
        app: AppName,
        room: RoomName,
        node: String,
        /// When the room could be free at the earliest: its holder declared dead if it renews
        /// nothing more (a live holder keeps it longer).
        retry_after_secs: u64,
    },
    #[error("the cluster cannot place the room right now: {0}")]
    Unavailable(String),
    /// The app is at one of its quotas (publishers, live rooms, ingest bitrate).
    #[error("{0}")]
    Quota(String),
}

/// HTTP answers of a refusal (WHIP, the WebSocket upgrade): 401 for an unknown credential, 403
/// for one that does not allow this, 409 for a busy room, 429 at a quota, 503 when the cluster
/// cannot place it.
impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::NotFound(m) => ApiError::Unauthorized(m),
            Refusal::Forbidden(m) => ApiError::Forbidden(m),
            r @ Refusal::BusyHere { .. } => ApiError::Conflict(r.to_string()),
            r @ Refusal::BusyElsewhere {
                retry_after_secs, ..
            } => ApiError::ConflictRetry {
                message: r.to_string(),
                retry_after_secs,
            },
            Refusal::Unavailable(m) => ApiError::Unavailable(m),
            Refusal::Quota(message) => ApiError::TooManyRequests {
                message,
                retry_after_secs: 10,
            },
        }
    }
}

/// A rule consulted by every admission after authentication (quotas, backstage, ...).
pub trait AdmissionPolicy: Send + Sync + 'static {
    /// Refuses `grant` for `req`, or lets it through.
    fn check(&self, grant: &Grant, req: &PublishRequest) -> Result<(), Refusal>;
}

/// The admission service of an origin.
pub struct Admission {
    tenants: Tenants,
    claims: Arc<dyn RoomClaims>,
    rooms: Arc<Rooms>,
    policies: Vec<Arc<dyn AdmissionPolicy>>,
    /// Each live session's bytes in at its last bitrate sample (for `ingestKbps`): a std
    /// Mutex held for the sampling loop, never across an `.await`.
    ingest: std::sync::Mutex<HashMap<SessionKey, (Instant, u64)>>,
}

/// A live session: its room and placement epoch.
type SessionKey = (AppName, RoomName, u64);

/// How long past the moment its holder could be declared dead a publish waits for the room.
const DECISION_SLACK: Duration = Duration::from_millis(700);
/// The longest a publish waits for a room held elsewhere.
const HOLDER_WAIT_MAX: Duration = Duration::from_secs(4);
/// How often a waiting publish reads the placement again (from the local replica).
const HOLDER_POLL: Duration = Duration::from_millis(50);

/// The window an ingest bitrate is measured over.
const INGEST_WINDOW: Duration = Duration::from_secs(5);
/// Bursts (keyframes) may pass an `ingestKbps` quota by this fraction over a window.
const INGEST_TOLERANCE: u64 = 5;

impl Admission {
    /// Admission into `rooms`, checking credentials against `tenants` and claiming rooms
    /// through `claims`.
    pub fn new(tenants: Tenants, claims: Arc<dyn RoomClaims>, rooms: Arc<Rooms>) -> Self {
        Self {
            tenants,
            claims,
            rooms,
            policies: Vec::new(),
            ingest: Default::default(),
        }
    }

    /// Adds a policy every admission consults.
    pub fn with_policy(mut self, policy: Arc<dyn AdmissionPolicy>) -> Self {
        self.policies.push(policy);
        self
    }

    /// Admits a publisher (see the module docs for the steps).
    pub async fn admit(&self, req: PublishRequest) -> Result<Publisher, Refusal> {
        let grant = match self.authenticate(&req) {
            // Maybe made a moment ago through another origin: confirm before refusing.
            Err(Refusal::NotFound(_)) => {
                self.tenants.fresh().await;
                self.authenticate(&req)?
            }
            other => other?,
        };
        for policy in &self.policies {
            policy.check(&grant, &req)?;
        }
        let (app, room) = (grant.app.clone(), grant.room.clone());
        self.rooms.check_busy(&app, &room, &grant.publisher)?;
        self.wait_for_holder(&app, &room).await?;
        let claimed_at_ms = crate::credentials::unix_now_ms();
        let epoch = self
            .claims
            .claim(&app, &room, &grant.publisher, req.protocol)
            .await?;
        let started = self.recheck(&grant).and_then(|()| {
            self.rooms.start_publish(PublishClaim {
                grant,
                protocol: req.protocol,
                remote: req.remote,
                epoch,
                claimed_at_ms,
            })
        });
        if started.is_err() && self.rooms.media(&app, &room).is_none() {
            // The claim will not be used: give the room back now, not at lease expiry.
            self.claims.release(&app, &room, epoch).await;
        }
        started
    }

    /// Refuses a room live on another origin, from the local replica. A holder that stopped
    /// renewing its lease may be declared dead any moment (see `placement::DEAD_AFTER_MS`):
    /// the publisher waits for that decision, at most until it is due plus [`DECISION_SLACK`]
    /// (and never past [`HOLDER_WAIT_MAX`]), instead of being refused and retrying blind.
    async fn wait_for_holder(&self, app: &AppName, room: &RoomName) -> Result<(), Refusal> {
        let Some(first) = self.claims.holder_elsewhere(app, room) else {
            return Ok(());
        };
        let start = Instant::now();
        let until = start + (first.dead_in + DECISION_SLACK).min(HOLDER_WAIT_MAX);
        let mut held = first;
        while Instant::now() < until {
            tokio::time::sleep(HOLDER_POLL).await;
            match self.claims.holder_elsewhere(app, room) {
                None => {
                    tracing::info!(%app, %room, waited_ms = start.elapsed().as_millis() as u64, "the room's holder was declared dead: claiming it");
                    return Ok(());
                }
                Some(h) => held = h,
            }
        }
        Err(Refusal::BusyElsewhere {
            app: app.clone(),
            room: room.clone(),
            retry_after_secs: held.dead_in.as_secs().max(1),
            node: held.node,
        })
    }

    /// Checks `req`'s credential: the grant it carries.
    pub fn authenticate(&self, req: &PublishRequest) -> Result<Grant, Refusal> {
        let grant = match &req.credential {
            // A user token with `canPublish` in place of a stream key (GetStream's RTMP).
            Credential::StreamKey(key) if looks_like_jwt(key) => {
                let (app, room) = self.token_room(key)?;
                self.token_grant(&app, &room, key)?
            }
            Credential::StreamKey(key) => self.ingress_grant(
                self.tenants.ingress_by_key(key, IngressKind::Rtmp),
                "unknown or revoked stream key",
            )?,
            Credential::DeviceKey(key) => self.ingress_grant(
                self.tenants.ingress_by_key(key, IngressKind::Ws),
                "unknown or revoked device key",
            )?,
            Credential::SrtKey(key) => self.ingress_grant(
                self.tenants.ingress_by_key(key, IngressKind::Srt),
                "unknown or revoked SRT stream key",
            )?,
            Credential::Pull { ingress_id } => self.ingress_grant(
                self.tenants
                    .ingress(ingress_id)
                    .filter(|i| i.kind == IngressKind::Url),
                "unknown or deleted pull ingress",
            )?,
            Credential::AccessToken(token) => {
                let (app, room) = req.room.as_ref().ok_or_else(|| {
                    Refusal::Forbidden("an access token publishes to the room it is sent to".into())
                })?;
                self.token_grant(app, room, token)?
            }
        };
        match &req.room {
            Some((app, room)) if (app, room) != (&grant.app, &grant.room) => {
                Err(Refusal::Forbidden(format!(
                    "this key publishes to {}/{}, not {app}/{room}",
                    grant.app, grant.room
                )))
            }
            _ => Ok(grant),
        }
    }

    fn ingress_grant(&self, ingress: Option<Ingress>, unknown: &str) -> Result<Grant, Refusal> {
        let ingress = ingress.ok_or_else(|| Refusal::NotFound(unknown.into()))?;
        Ok(Grant {
            app: ingress.app,
            room: ingress.room,
            publisher: ingress.id.clone(),
            basis: Basis::Ingress(ingress.id),
        })
    }

    /// An access token of the app, for this room, with `canPublish`; its identity names the
    /// publisher (so the same identity may take its room over).
    fn token_grant(&self, app: &AppName, room: &RoomName, token: &str) -> Result<Grant, Refusal> {
        let key = self
            .tenants
            .app_signer(app)
            .map_err(|e| Refusal::Unavailable(e.to_string()))?
            .ok_or_else(|| Refusal::NotFound(format!("unknown app {app}")))?;
        let claims = key
            .verify(token)
            .map_err(|e| Refusal::NotFound(format!("publish token refused: {e}")))?;
        let want = format!("{app}-{room}");
        if claims.video.room != want {
            return Err(Refusal::Forbidden(format!(
                "the token is for room {:?}, not {want:?}",
                claims.video.room
            )));
        }
        if !claims.video.can_publish {
            return Err(Refusal::Forbidden(
                "the token does not allow publishing".into(),
            ));
        }
        Ok(Grant {
            app: app.clone(),
            room: room.clone(),
            publisher: format!("{TOKEN_PUBLISHER}{}", claims.sub),
            basis: Basis::AppKey(key.key_id.clone()),
        })
    }

    /// The room a token used as a stream key names: its app is the one whose key id is the
    /// token's issuer, its room the grant's `<app>-<room>` (the signature is checked next).
    fn token_room(&self, token: &str) -> Result<(AppName, RoomName), Refusal> {
        let unknown = || Refusal::NotFound("unknown or revoked stream key".into());
        let claims = unverified_claims(token).ok_or_else(unknown)?;
        let app = self
            .tenants
            .read(|s| {
                s.tenants
                    .apps
                    .values()
                    .find(|a| a.key_id == claims.iss)
                    .map(|a| a.name.clone())
            })
            .ok_or_else(unknown)?;
        let room = claims
            .video
            .room
            .strip_prefix(&format!("{app}-"))
            .and_then(|r| RoomName::new(r).ok())
            .ok_or_else(|| Refusal::Forbidden("the token names no room of its app".into()))?;
        Ok((app, room))
    }

    /// Whether `grant` still holds in the tenant state.
    pub fn holds(&self, grant: &Grant) -> bool {
        match &grant.basis {
            Basis::Ingress(id) => self
                .tenants
                .ingress(id)
                .is_some_and(|i| i.app == grant.app && i.room == grant.room),
            Basis::AppKey(key_id) => self
                .tenants
                .app_key(&grant.app)
                .is_some_and(|k| &k.key_id == key_id),
        }
    }

    fn recheck(&self, grant: &Grant) -> Result<(), Refusal> {
        if self.holds(grant) {
            Ok(())
        } else {
            Err(Refusal::NotFound(
                "the credential was revoked while the room was being claimed".into(),
            ))
        }
    }

    /// Ends every local publisher whose grant no longer holds (revoked through any origin), or
    /// whose ingest bitrate is over its app's `ingestKbps`.
    pub fn revalidate(&self) {
        for grant in self.rooms.grants() {
            if !self.holds(&grant) && self.rooms.revoke(&grant.publisher, "kicked") > 0 {
                tracing::info!(app = %grant.app, room = %grant.room, publisher = %grant.publisher,
                    "credential revoked: local publisher dropped");
            }
        }
        self.check_ingest(Instant::now());
    }

    /// Ends publishers whose bitrate over the last [`INGEST_WINDOW`] is over their app's
    /// `ingestKbps` (plus 1/[`INGEST_TOLERANCE`] for bursts).
    fn check_ingest(&self, now: Instant) {
        let mut last = self.ingest.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = HashSet::new();
        for r in self.rooms.list(None) {
            let Some(limit) = self.tenants.app(&r.app).and_then(|a| a.quotas.ingest_kbps) else {
                continue;
            };
            let key = (r.app.clone(), r.room.clone(), r.epoch);
            seen.insert(key.clone());
            let Some(&(at, bytes)) = last.get(&key) else {
                last.insert(key, (now, r.bytes_in));
                continue;
            };
            let elapsed = now.duration_since(at);
            if elapsed < INGEST_WINDOW {
                continue;
            }
            let kbps = r.bytes_in.saturating_sub(bytes) * 8 / elapsed.as_millis().max(1) as u64;
            last.insert(key, (now, r.bytes_in));
            if kbps > limit + limit / INGEST_TOLERANCE
                && self.rooms.revoke(&r.publisher, "quota") > 0
            {
                tracing::warn!(app = %r.app, room = %r.room, publisher = %r.publisher, kbps,
                    limit, "quota: ingest bitrate over the app's ingestKbps, publisher dropped");
            }
        }
        last.retain(|k, _| seen.contains(k));
    }
}

/// Whether a stream key is a JWT (three base64url parts) rather than an `rk_` key.
fn looks_like_jwt(key: &str) -> bool {
    key.len() <= 4096
        && key.split('.').count() == 3
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// A token's claims, read without checking the signature (only to find which key checks it).
fn unverified_claims(token: &str) -> Option<streamhub_shared::auth::AccessClaims> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine as _;
    let payload = B64.decode(token.split('.').nth(1)?).ok()?;
    serde_json::from_slice(&payload).ok()
}

/// RTMP publishers present a stream key that names their room.
impl crate::rtmp::IngestBackend for Admission {
    fn start_publish(
        &self,
        stream_key: String,
        remote: SocketAddr,
    ) -> BoxFuture<'_, Result<Publisher, Refusal>> {
        Box::pin(self.admit(PublishRequest {
            room: None,
            credential: Credential::StreamKey(stream_key),
            protocol: Protocol::Rtmp,
            remote,
        }))
    }
}

/// SRT publishers present a stream key in their stream id; its ingress holds the passphrase.
impl crate::srt::SrtBackend for Admission {
    fn passphrase(&self, key: &str) -> BoxFuture<'_, Result<Option<String>, Refusal>> {
        let key = key.to_string();
        Box::pin(async move {
            let ingress = match self.tenants.ingress_by_key(&key, IngressKind::Srt) {
                Some(i) => i,
                None => {
                    // Maybe created a moment ago through another origin.
                    self.tenants.fresh().await;
                    self.tenants
                        .ingress_by_key(&key, IngressKind::Srt)
                        .ok_or_else(|| {
                            Refusal::NotFound("unknown or revoked SRT stream key".into())
                        })?
                }
            };
            self.tenants
                .ingress_passphrase(&ingress)
                .map_err(|e| Refusal::Unavailable(e.to_string()))
        })
    }

    fn start_publish(
        &self,
        key: String,
        remote: SocketAddr,
    ) -> BoxFuture<'_, Result<Publisher, Refusal>> {
        Box::pin(self.admit(PublishRequest {
            room: None,
            credential: Credential::SrtKey(key),
            protocol: Protocol::Srt,
            remote,
        }))
    }
}

#[cfg(test)]
mod tests {
    //! Against a real single-voter Raft node on disk: the placement table and the tenant state
    //! are the ones an origin uses. `Interfere` wraps the real placement to act between the
    //! steps of an admission, where a race with another origin or an API call would.

    use super::*;
    use crate::credentials::{sha256_hex, unix_now_ms};
    use crate::placement::{Placement, LEASE};
    use crate::rooms::RoomObserver;
    use streamhub_cluster::raft::{node_id_from_name, RaftNode, Start};
    use streamhub_cluster::state::{App, Command, CommandResponse};
    use streamhub_cluster::transport::{Endpoint, NodeIdentity};
    use streamhub_shared::media::GroupPolicy;
    use tokio_util::sync::CancellationToken;

    const ME: &str = "origin-1";

    struct NoObserver;
    impl RoomObserver for NoObserver {
        fn room_started(&self, _: &AppName, _: &RoomName, _: &Publisher, _: bool) {}
    }

    /// What `Interfere` does while a claim is in flight.
    enum During {
        Nothing,
        /// Deletes the ingress (an API call through another origin).
        DeleteIngress(String),
    }

    /// The real placement table, with something happening while a claim is in flight.
    struct Interfere {
        inner: Placement,
        tenants: Tenants,
        during: During,
    }

    impl RoomClaims for Interfere {
        fn holder_elsewhere(
            &self,
            app: &AppName,
            room: &RoomName,
        ) -> Option<crate::placement::HeldElsewhere> {
            self.inner.holder_elsewhere(app, room)
        }

        fn claim<'a>(
            &'a self,
            app: &'a AppName,
            room: &'a RoomName,
            publisher: &'a str,
            protocol: Protocol,
        ) -> BoxFuture<'a, Result<u64, Refusal>> {
            Box::pin(async move {
                if let During::DeleteIngress(id) = &self.during {
                    let cmd = Command::DeleteIngress {
                        app: app.clone(),
                        id: id.clone(),
                    };
                    self.tenants.write(cmd).await.expect("delete ingress");
                }
                self.inner.claim(app, room, publisher, protocol).await
            })
        }

        fn release<'a>(
            &'a self,
            app: &'a AppName,
            room: &'a RoomName,
            epoch: u64,
        ) -> BoxFuture<'a, ()> {
            self.inner.release(app, room, epoch)
        }
    }

    struct World {
        _dir: tempfile::TempDir,
        raft: Arc<RaftNode>,
        tenants: Tenants,
        rooms: Arc<Rooms>,
        app: AppName,
        room: RoomName,
    }

    async fn world() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let (identity, _ca) = NodeIdentity::bootstrap("test", ME, "origin").expect("identity");
        let endpoint = Endpoint::bind(
            "127.0.0.1:0".parse().expect("addr"),
            &identity,
            CancellationToken::new(),
        )
        .expect("bind");
        let raft = RaftNode::open(
            dir.path(),
            node_id_from_name(ME),
            "127.0.0.1:1".into(),
            endpoint,
            Start::Bootstrap,
        )
        .await
        .expect("raft");
        let raft = Arc::new(raft);
        let keyring = crate::keyring::Keyring::load(dir.path().join("cluster")).expect("keyring");
        keyring.create().expect("cluster key");
        let tenants = Tenants::new(raft.clone(), keyring);
        let app = AppName::new("live").expect("app");
        tenants
            .write(Command::CreateApp(App {
                name: app.clone(),
                display_name: None,
                key_id: "ak_1".into(),
                secret: "00".into(),
                created_at_ms: 1,
                signing_key: None,
                verify_key: None,
                settings: Default::default(),
                quotas: Default::default(),
                storage: None,
            }))
            .await
            .expect("app");
        World {
            _dir: dir,
            raft,
            tenants,
            rooms: Rooms::new(Arc::new(NoObserver), GroupPolicy::default()),
            app,
            room: RoomName::new("cam").expect("room"),
        }
    }

    impl World {
        /// An ingress of `kind` for the room; its key.
        async fn ingress(&self, id: &str, kind: IngressKind) -> String {
            let key = format!("key-of-{id}");
            let ingress = Ingress {
                id: id.into(),
                app: self.app.clone(),
                room: self.room.clone(),
                name: None,
                kind,
                key_hash: sha256_hex(&key),
                created_at_ms: 1,
                url: (kind == IngressKind::Url).then(|| "rtsp://cam/x".into()),
                transport: None,
                passphrase: None,
            };
            self.tenants
                .write(Command::CreateIngress(ingress))
                .await
                .expect("ingress");
            key
        }

        fn admission(&self, during: During) -> Admission {
            let claims = Interfere {
                inner: Placement::new(self.raft.clone(), ME.into()),
                tenants: self.tenants.clone(),
                during,
            };
            Admission::new(self.tenants.clone(), Arc::new(claims), self.rooms.clone())
        }

        fn request(&self, protocol: Protocol, credential: Credential) -> PublishRequest {
            let room = match protocol {
                Protocol::Rtmp => None,
                _ => Some((self.app.clone(), self.room.clone())),
            };
            PublishRequest {
                room,
                credential,
                protocol,
                remote: "127.0.0.1:5000".parse().expect("addr"),
            }
        }

        fn placed(&self) -> Option<String> {
            let now = unix_now_ms();
            self.raft.read(|s| {
                s.placements
                    .live(&self.app, &self.room, now)
                    .map(|p| p.node.clone())
            })
        }

        fn last_epoch(&self) -> u64 {
            self.raft.read(|s| s.placements.last_epoch)
        }
    }

    /// Every ingest protocol with the credential it presents, each of its own ingress
    /// `<id>-<protocol>`.
    async fn each_protocol(w: &World, id: &str) -> Vec<(Protocol, Credential)> {
        let mut out = Vec::new();
        for &protocol in Protocol::ALL {
            let ingress = format!("{id}-{}", protocol.as_str());
            let credential = match protocol {
                Protocol::Rtmp | Protocol::Whip => {
                    Credential::StreamKey(w.ingress(&ingress, IngressKind::Rtmp).await)
                }
                Protocol::Ws => Credential::DeviceKey(w.ingress(&ingress, IngressKind::Ws).await),
                Protocol::Srt => Credential::SrtKey(w.ingress(&ingress, IngressKind::Srt).await),
                Protocol::Rtsp => {
                    w.ingress(&ingress, IngressKind::Url).await;
                    Credential::Pull {
                        ingress_id: ingress,
                    }
                }
            };
            out.push((protocol, credential));
        }
        out
    }

    #[tokio::test]
    async fn a_key_revoked_while_the_claim_is_in_flight_is_refused_and_leaves_no_claim() {
        let w = world().await;
        for (n, (protocol, credential)) in each_protocol(&w, "a").await.into_iter().enumerate() {
            // Each protocol's ingress is revoked during its own claim.
            let id = format!("a-{}", protocol.as_str());
            let admission = w.admission(During::DeleteIngress(id));
            let refused = admission
                .admit(w.request(protocol, credential))
                .await
                .err()
                .unwrap_or_else(|| panic!("{protocol:?}: a revoked key was admitted"));
            assert!(
                matches!(refused, Refusal::NotFound(ref m) if m.contains("revoked")),
                "{protocol:?}: {refused:?}"
            );
            assert_eq!(w.placed(), None, "{protocol:?} left its claim behind");
            assert!(w.rooms.media(&w.app, &w.room).is_none());
            assert_eq!(w.last_epoch(), n as u64 + 1, "{protocol:?} did claim");
        }
    }

    #[tokio::test]
    async fn every_protocol_is_admitted_and_holds_the_room() {
        let w = world().await;
        for (protocol, credential) in each_protocol(&w, "b").await {
            let admission = w.admission(During::Nothing);
            let publisher = admission
                .admit(w.request(protocol, credential))
                .await
                .unwrap_or_else(|e| panic!("{protocol:?}: {e}"));
            assert_eq!(w.placed().as_deref(), Some(ME));
            assert!(admission.holds(publisher.grant()));
            drop(publisher);
            assert!(w.rooms.media(&w.app, &w.room).is_none());
        }
    }

    #[tokio::test]
    async fn a_room_busy_here_is_refused_before_any_claim() {
        let w = world().await;
        let admission = w.admission(During::Nothing);
        let (_, first) = each_protocol(&w, "c")
            .await
            .into_iter()
            .find(|(p, _)| *p == Protocol::Whip)
            .expect("whip");
        let live = admission
            .admit(w.request(Protocol::Whip, first))
            .await
            .expect("first publisher");
        let epoch = w.last_epoch();
        let other = w.ingress("c-other", IngressKind::Rtmp).await;
        let refused = admission
            .admit(w.request(Protocol::Rtmp, Credential::StreamKey(other)))
            .await
            .err()
            .expect("a second publisher was admitted");
        assert!(matches!(refused, Refusal::BusyHere { .. }), "{refused:?}");
        assert_eq!(
            w.last_epoch(),
            epoch,
            "the live publisher's epoch was bumped"
        );
        assert!(!live.is_cancelled());
    }

    #[tokio::test]
    async fn a_room_live_elsewhere_is_refused_from_the_replica_without_a_write() {
        let w = world().await;
        let key = w.ingress("d", IngressKind::Ws).await;
        w.raft
            .write(Command::ClaimRoom {
                app: w.app.clone(),
                room: w.room.clone(),
                node: "origin-2".into(),
                at_ms: unix_now_ms(),
                lease_ms: LEASE.as_millis() as u64,
                protocol: None,
                publisher: None,
            })
            .await
            .expect("claim elsewhere");
        let applied = w.raft.status().last_applied;
        let refused = w
            .admission(During::Nothing)
            .admit(w.request(Protocol::Ws, Credential::DeviceKey(key)))
            .await
            .err()
            .expect("admitted into a room live elsewhere");
        assert!(
            matches!(refused, Refusal::BusyElsewhere { ref node, .. } if node == "origin-2"),
            "{refused:?}"
        );
        assert_eq!(
            w.raft.status().last_applied,
            applied,
            "a Raft write was made"
        );
    }

    #[tokio::test]
    async fn a_publish_waits_for_a_silent_holder_to_be_declared_dead() {
        let w = world().await;
        let key = w.ingress("d2", IngressKind::Ws).await;
        // origin-2 claimed the room 2 s ago and has renewed nothing since: it may be declared
        // dead half a second from now.
        let claim = Command::ClaimRoom {
            app: w.app.clone(),
            room: w.room.clone(),
            node: "origin-2".into(),
            at_ms: unix_now_ms() - 2_000,
            lease_ms: LEASE.as_millis() as u64,
            protocol: None,
            publisher: None,
        };
        let Ok(CommandResponse::Claimed { epoch: dead_epoch }) = w.raft.write(claim).await else {
            panic!("claim elsewhere");
        };
        let raft = w.raft.clone();
        let declared = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(800)).await;
            let at_ms = unix_now_ms();
            let cmd = Command::ExpireHolder {
                node: "origin-2".into(),
                at_ms,
            };
            assert_eq!(raft.write(cmd).await.expect("expire"), CommandResponse::Ok);
            Instant::now()
        });
        let publisher = w
            .admission(During::Nothing)
            .admit(w.request(Protocol::Ws, Credential::DeviceKey(key)))
            .await
            .expect("the publish waited for the dead holder's rooms to go free");
        let declared = declared.await.expect("declared");
        assert!(Instant::now() >= declared);
        assert!(
            publisher.epoch() > dead_epoch,
            "a new epoch fences the old holder"
        );
    }

    #[test]
    fn a_room_live_elsewhere_answers_409_with_when_to_retry() {
        use axum::response::IntoResponse;
        let refused = Refusal::BusyElsewhere {
            app: AppName::new("a").unwrap(),
            room: RoomName::new("r").unwrap(),
            node: "origin-2".into(),
            retry_after_secs: 2,
        };
        assert!(refused.to_string().ends_with("retry in 2 s"), "{refused}");
        let resp = ApiError::from(refused).into_response();
        assert_eq!(resp.status(), axum::http::StatusCode::CONFLICT);
        assert_eq!(resp.headers()[axum::http::header::RETRY_AFTER], "2");
    }

    #[tokio::test]
    async fn credentials_are_checked_against_the_room_and_the_grant() {
        let w = world().await;
        let key = w.ingress("e", IngressKind::Rtmp).await;
        let admission = w.admission(During::Nothing);
        let mut req = w.request(Protocol::Whip, Credential::StreamKey(key.clone()));
        req.room = Some((w.app.clone(), RoomName::new("other").expect("room")));
        let refused = admission
            .admit(req)
            .await
            .err()
            .expect("wrong room admitted");
        assert!(matches!(refused, Refusal::Forbidden(_)), "{refused:?}");
        // A device key is not a stream key, and an unknown key is unknown.
        let wrong_kind = w.request(Protocol::Ws, Credential::DeviceKey(key));
        assert!(matches!(
            admission.admit(wrong_kind).await,
            Err(Refusal::NotFound(_))
        ));
        let token = w.request(Protocol::Whip, Credential::AccessToken("a.b.c".into()));
        assert!(matches!(
            admission.admit(token).await,
            Err(Refusal::NotFound(_))
        ));
        assert_eq!(w.last_epoch(), 0, "a refused credential claimed");
    }

    #[tokio::test]
    async fn tokens_signed_either_way_publish_and_end_with_their_app() {
        use streamhub_shared::auth::{mint, AccessClaims, VideoGrant};
        let w = world().await;
        let app = AppName::new("tok").expect("app");
        let record = w.tenants.new_app(app.clone(), None).expect("new app");
        w.tenants
            .write(Command::CreateApp(record))
            .await
            .expect("create");
        let signer = w.tenants.app_signer(&app).expect("open").expect("app");
        let claims = |room: &str| AccessClaims {
            iss: signer.key_id.clone(),
            sub: format!("cam-{room}"),
            nbf: 0,
            exp: 4_000_000_000,
            max_viewers: None,
            video: VideoGrant {
                room: format!("tok-{room}"),
                room_join: true,
                can_publish: true,
                can_subscribe: false,
            },
        };
        let eddsa = signer.ed.as_ref().expect("key pair").mint(&claims("a"));
        let hs256 = mint(&claims("b"), signer.hs256.as_bytes());
        let admission = w.admission(During::Nothing);
        let mut publishers = Vec::new();
        for (room, token) in [("a", eddsa), ("b", hs256)] {
            let mut req = w.request(Protocol::Whip, Credential::AccessToken(token));
            req.room = Some((app.clone(), RoomName::new(room).expect("room")));
            publishers.push(admission.admit(req).await.expect("admitted"));
        }
        // The app is deleted (through any origin): its token publishers end at revalidation.
        w.tenants
            .write(Command::DeleteApp { name: app.clone() })
            .await
            .expect("delete");
        admission.revalidate();
        assert!(publishers.iter().all(|p| p.is_cancelled()));
    }

    #[tokio::test]
    async fn revalidation_ends_publishers_whose_credential_is_gone() {
        let w = world().await;
        let key = w.ingress("f", IngressKind::Rtmp).await;
        let admission = w.admission(During::Nothing);
        let publisher = admission
            .admit(w.request(Protocol::Rtmp, Credential::StreamKey(key)))
            .await
            .expect("admitted");
        admission.revalidate();
        assert!(!publisher.is_cancelled());
        w.tenants
            .write(Command::DeleteIngress {
                app: w.app.clone(),
                id: "f".into(),
            })
            .await
            .expect("delete");
        admission.revalidate();
        assert!(publisher.is_cancelled());
    }
}
