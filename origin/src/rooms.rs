//! Live rooms on this node: who publishes where, and the media each publisher produces.
//!
//! One `Mutex` guards the map; it is never held across `.await`. A [`Publisher`] is the handle an
//! ingest session holds: dropping it (or the room being taken over or revoked) ends the room.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use streamhub_shared::media::{
    Frame, GroupPolicy, HistoryBudget, MediaHandle, RoomMedia, TrackInfo,
};
use streamhub_shared::{AppName, RoomName};
use tokio_util::sync::CancellationToken;

use crate::admission::{Grant, Refusal};
use crate::transcode::AudioTranscode;
use streamhub_cluster::state::placement::SELF_FENCE_MS;

/// The protocol a publisher speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Rtmp,
    /// WebSocket-MJPEG (cameras such as the ESP32).
    Ws,
    /// Pulled from an RTSP camera.
    Rtsp,
    /// WebRTC (WHIP), from a browser or an encoder.
    Whip,
    /// MPEG-TS over SRT.
    Srt,
}

impl Protocol {
    /// Every protocol, for metrics that list each one even at zero.
    pub const ALL: &'static [Protocol] = &[
        Protocol::Rtmp,
        Protocol::Ws,
        Protocol::Rtsp,
        Protocol::Whip,
        Protocol::Srt,
    ];

    /// Label used in metrics and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Rtmp => "rtmp",
            Protocol::Ws => "ws",
            Protocol::Rtsp => "rtsp",
            Protocol::Whip => "whip",
            Protocol::Srt => "srt",
        }
    }
}

/// An admitted publish: the grant, how it came, and the placement epoch it holds.
#[derive(Debug, Clone)]
pub struct PublishClaim {
    pub grant: Grant,
    pub protocol: Protocol,
    pub remote: SocketAddr,
    /// Placement epoch the cluster granted for this room (fencing token).
    pub epoch: u64,
    /// When the claim was asked for (this node's clock, not later than the claim's own time):
    /// the session's media lease starts from there (see [`Rooms::set_lease`]).
    pub claimed_at_ms: u64,
}

/// Called when a room starts so playback (the HLS packager) can attach to it.
pub trait RoomObserver: Send + Sync + 'static {
    /// A publisher started `app/room`; `takeover` is true when it replaced a previous session.
    fn room_started(&self, app: &AppName, room: &RoomName, publisher: &Publisher, takeover: bool);

    /// The last session of `app/room` on this node ended (not replaced by a takeover here);
    /// `why`: `ended` (its publisher stopped), `kicked` (its credential was revoked), `fenced`
    /// (the cluster placed the room elsewhere) or `quota`.
    fn room_ended(&self, _app: &AppName, _room: &RoomName, _epoch: u64, _why: &'static str) {}
}

#[derive(Debug)]
struct LiveRoom {
    session: u64,
    epoch: u64,
    grant: Grant,
    protocol: Protocol,
    started_at: SystemTime,
    cancel: CancellationToken,
    /// Why the session was ended from outside (unset: its publisher stopped).
    why: std::sync::OnceLock<&'static str>,
    tracks: Arc<Mutex<Vec<TrackInfo>>>,
    stats: Arc<PublishStats>,
    media: MediaHandle,
    /// Until when (unix ms) this session's media may flow: its placement lease as this node
    /// last saw it renewed, less the margin (see `placement::SELF_FENCE_MS`).
    lease: Arc<AtomicU64>,
}

impl LiveRoom {
    fn end(&self, why: &'static str) {
        let _ = self.why.set(why);
        self.cancel.cancel();
    }
}

/// Counters of one publisher, read by the rooms API.
#[derive(Debug, Default)]
pub struct PublishStats {
    pub bytes_in: std::sync::atomic::AtomicU64,
    pub frames_in: std::sync::atomic::AtomicU64,
    /// Frames dropped because the session's placement lease was not seen renewed in time.
    pub frames_fenced: std::sync::atomic::AtomicU64,
    /// Payload bytes per track id (ids beyond the array are counted in `bytes_in` only).
    pub by_track: [std::sync::atomic::AtomicU64; 8],
}

/// A snapshot of one live room for the API.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomSummary {
    pub app: AppName,
    pub room: RoomName,
    pub protocol: Protocol,
    /// The ingress id, or `token:<identity>` for a token publisher.
    pub publisher: String,
    pub epoch: u64,
    pub started_at: SystemTime,
    pub tracks: Vec<TrackInfo>,
    pub bytes_in: u64,
    /// Payload bytes received per track, indexed like `tracks`.
    pub bytes_by_track: Vec<u64>,
}

/// The live rooms of this node.
pub struct Rooms {
    live: Mutex<HashMap<(AppName, RoomName), LiveRoom>>,
    /// Bytes received by the sessions that ended, per app (with the live sessions' bytes: a
    /// counter per app, for `/metrics`).
    ended_bytes: Mutex<HashMap<AppName, u64>>,
    next_session: std::sync::atomic::AtomicU64,
    observer: Arc<dyn RoomObserver>,
    policy: GroupPolicy,
    /// Whether media stops at the end of a session's lease: set while another origin could
    /// take the room over (a cluster of one has no one to be fenced from).
    enforce_leases: AtomicBool,
    /// Frames dropped past their lease, by every session so far (for `/metrics`).
    frames_fenced: Arc<AtomicU64>,
    /// Complete groups each room keeps before its newest, for edges that back-fill.
    history: AtomicUsize,
    /// What every room's kept groups count against together.
    history_budget: HistoryBudget,
}

/// The bytes of complete groups this node's rooms keep together for edges that back-fill.
pub const HISTORY_BUDGET_BYTES: usize = 256 << 20;

impl Rooms {
    /// An empty registry that tells `observer` about every room that starts.
    pub fn new(observer: Arc<dyn RoomObserver>, policy: GroupPolicy) -> Arc<Self> {
        Arc::new(Self {
            live: Mutex::new(HashMap::new()),
            ended_bytes: Mutex::new(HashMap::new()),
            next_session: 1.into(),
            observer,
            policy,
            enforce_leases: AtomicBool::new(false),
            frames_fenced: Arc::default(),
            history: AtomicUsize::new(0),
            history_budget: HistoryBudget::new(HISTORY_BUDGET_BYTES),
        })
    }

    /// Rooms started from now on keep their last `groups` complete groups (the HLS playlist
    /// window), so an edge that starts pulling one back-fills the window in one round trip.
    pub fn keep_history(&self, groups: usize) {
        self.history.store(groups, Ordering::Relaxed);
    }

    /// The media of the live session of `app/room` on this node, if any.
    pub fn media(&self, app: &AppName, room: &RoomName) -> Option<MediaHandle> {
        let live = self.live.lock().expect("rooms lock");
        live.get(&(app.clone(), room.clone()))
            .map(|r| r.media.clone())
    }

    /// Refuses a publisher whose room is live here from another publisher (before any claim is
    /// made: claiming first would bump the room's epoch and fence the live publisher).
    pub fn check_busy(
        &self,
        app: &AppName,
        room: &RoomName,
        publisher: &str,
    ) -> Result<(), Refusal> {
        let live = self.live.lock().expect("rooms lock");
        match live.get(&(app.clone(), room.clone())) {
            Some(old) if old.grant.publisher != publisher => Err(Refusal::BusyHere {
                app: app.clone(),
                room: room.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Starts a publishing session. The same publisher takes its room over at once (the old
    /// session is cancelled); any other publisher for a live room is refused.
    pub fn start_publish(self: &Arc<Self>, claim: PublishClaim) -> Result<Publisher, Refusal> {
        let session = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (app, room) = (claim.grant.app.clone(), claim.grant.room.clone());
        let key = (app.clone(), room.clone());
        let cancel = CancellationToken::new();
        let tracks = Arc::new(Mutex::new(Vec::new()));
        let stats = Arc::new(PublishStats::default());
        let media = RoomMedia::with_policy(self.policy);
        media.keep_history(
            self.history.load(Ordering::Relaxed),
            self.history_budget.clone(),
        );
        let mut live = self.live.lock().expect("rooms lock");
        let mut lease = claim.claimed_at_ms.saturating_add(SELF_FENCE_MS);
        let takeover = match live.get(&key) {
            Some(old) if old.grant.publisher != claim.grant.publisher => {
                return Err(Refusal::BusyHere { app, room })
            }
            Some(old) => {
                old.cancel.cancel();
                // The same placement goes on: so does the lease it was last seen renewed to.
                if old.epoch == claim.epoch {
                    lease = lease.max(old.lease.load(Ordering::Relaxed));
                }
                true
            }
            None => false,
        };
        let lease = Arc::new(AtomicU64::new(lease));
        live.insert(
            key,
            LiveRoom {
                session,
                epoch: claim.epoch,
                grant: claim.grant.clone(),
                protocol: claim.protocol,
                started_at: SystemTime::now(),
                cancel: cancel.clone(),
                why: std::sync::OnceLock::new(),
                tracks: tracks.clone(),
                stats: stats.clone(),
                media: media.handle(),
                lease: lease.clone(),
            },
        );
        let publisher = Publisher {
            rooms: self.clone(),
            claim,
            session,
            media,
            cancel,
            tracks,
            stats,
            transcode: Mutex::default(),
            transcoded: Vec::new(),
            lease,
            lapsed: false,
        };
        // Under the rooms lock, so observers see sessions of a room in the order they won it.
        // The observer must not block or take this lock (it only starts tasks).
        self.observer
            .room_started(&app, &room, &publisher, takeover);
        drop(live);
        Ok(publisher)
    }

    /// Ends every live session of `publisher` (an ingress id or a token publisher: its
    /// credential was revoked, `kicked`, or it is over a `quota`).
    pub fn revoke(&self, publisher: &str, why: &'static str) -> usize {
        let live = self.live.lock().expect("rooms lock");
        let mut n = 0;
        for r in live.values().filter(|r| r.grant.publisher == publisher) {
            r.end(why);
            n += 1;
        }
        n
    }

    /// Ends every live session of `app` (the app was deleted).
    pub fn revoke_app(&self, app: &AppName) -> usize {
        let live = self.live.lock().expect("rooms lock");
        let mut n = 0;
        for ((a, _), r) in live.iter() {
            if a == app {
                r.end("kicked");
                n += 1;
            }
        }
        n
    }

    /// The live rooms of `app` (all apps when `None`).
    pub fn list(&self, app: Option<&AppName>) -> Vec<RoomSummary> {
        let live = self.live.lock().expect("rooms lock");
        let mut out: Vec<RoomSummary> = live
            .iter()
            .filter(|((a, _), _)| app.is_none_or(|x| x == a))
            .map(|((a, r), l)| {
                let tracks = l.tracks.lock().expect("tracks lock").clone();
                let bytes_by_track = tracks
                    .iter()
                    .map(|t| {
                        l.stats
                            .by_track
                            .get(t.id as usize)
                            .map_or(0, |c| c.load(std::sync::atomic::Ordering::Relaxed))
                    })
                    .collect();
                RoomSummary {
                    app: a.clone(),
                    room: r.clone(),
                    protocol: l.protocol,
                    publisher: l.grant.publisher.clone(),
                    epoch: l.epoch,
                    started_at: l.started_at,
                    tracks,
                    bytes_in: l.stats.bytes_in.load(std::sync::atomic::Ordering::Relaxed),
                    bytes_by_track,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.app, &a.room).cmp(&(&b.app, &b.room)));
        out
    }

    /// Number of live publishers per protocol.
    /// Bytes received per app since this node started, by the sessions that ended and the live
    /// ones (only ever grows: a counter).
    pub fn ingest_bytes_by_app(&self) -> HashMap<AppName, u64> {
        // In `finish`'s order (live, then ended): a session is counted in one or the other.
        let live = self.live.lock().expect("rooms lock");
        let mut out = self.ended_bytes.lock().expect("ended bytes lock").clone();
        for ((app, _), l) in live.iter() {
            *out.entry(app.clone()).or_default() +=
                l.stats.bytes_in.load(std::sync::atomic::Ordering::Relaxed);
        }
        out
    }

    pub fn publishers_by_protocol(&self) -> HashMap<Protocol, usize> {
        let live = self.live.lock().expect("rooms lock");
        let mut out = HashMap::new();
        for r in live.values() {
            *out.entry(r.protocol).or_insert(0) += 1;
        }
        out
    }

    /// Ends the local session of `app/room` unless it holds `epoch` (the cluster gave the room
    /// to someone else: fencing). Returns true if a session was ended.
    pub fn fence(&self, app: &AppName, room: &RoomName, epoch: Option<u64>) -> bool {
        let live = self.live.lock().expect("rooms lock");
        match live.get(&(app.clone(), room.clone())) {
            Some(r) if Some(r.epoch) != epoch => {
                r.end("fenced");
                true
            }
            _ => false,
        }
    }

    /// The grant of every live session of this node.
    pub fn grants(&self) -> Vec<Grant> {
        let live = self.live.lock().expect("rooms lock");
        live.values().map(|l| l.grant.clone()).collect()
    }

    /// Lets the media of `app/room`'s session at `epoch` flow until `until_ms` (unix ms): its
    /// placement lease as this node's replica shows it renewed, less the self-fencing margin.
    /// Past it the session's frames are dropped (see [`Publisher::push`]) until the lease is
    /// seen renewed again, or the session is fenced.
    pub fn set_lease(&self, app: &AppName, room: &RoomName, epoch: u64, until_ms: u64) {
        let live = self.live.lock().expect("rooms lock");
        if let Some(l) = live.get(&(app.clone(), room.clone())) {
            if l.epoch == epoch {
                l.lease.store(until_ms, Ordering::Relaxed);
            }
        }
    }

    /// Turns lease enforcement on (another origin could take a room over) or off.
    pub fn enforce_leases(&self, on: bool) {
        self.enforce_leases.store(on, Ordering::Relaxed);
    }

    /// Bytes of complete groups the rooms keep for back-fill (bounded by
    /// [`HISTORY_BUDGET_BYTES`]).
    pub fn history_bytes(&self) -> usize {
        self.history_budget.used()
    }

    /// Frames dropped past their session's lease, on this node so far.
    pub fn frames_fenced(&self) -> u64 {
        self.frames_fenced.load(Ordering::Relaxed)
    }

    /// `(app, room, epoch)` of every live room of this node.
    pub fn held(&self) -> Vec<(AppName, RoomName, u64)> {
        let live = self.live.lock().expect("rooms lock");
        live.iter()
            .map(|((a, r), l)| (a.clone(), r.clone(), l.epoch))
            .collect()
    }

    fn finish(&self, app: &AppName, room: &RoomName, session: u64) {
        let mut live = self.live.lock().expect("rooms lock");
        let key = (app.clone(), room.clone());
        if live.get(&key).is_some_and(|r| r.session == session) {
            if let Some(ended) = live.remove(&key) {
                let bytes = ended
                    .stats
                    .bytes_in
                    .load(std::sync::atomic::Ordering::Relaxed);
                *self
                    .ended_bytes
                    .lock()
                    .expect("ended bytes lock")
                    .entry(app.clone())
                    .or_default() += bytes;
                let why = ended.why.get().copied().unwrap_or("ended");
                self.observer.room_ended(app, room, ended.epoch, why);
            }
        }
    }
}

/// The handle of a live publishing session. Dropping it ends the room.
pub struct Publisher {
    rooms: Arc<Rooms>,
    claim: PublishClaim,
    session: u64,
    media: RoomMedia,
    cancel: CancellationToken,
    tracks: Arc<Mutex<Vec<TrackInfo>>>,
    stats: Arc<PublishStats>,
    /// AAC rooms get an Opus track for WebRTC viewers. (A Mutex only to be `Sync`: libopus's
    /// encoder is not; every use has `&mut self` or is uncontended.)
    transcode: Mutex<AudioTranscode>,
    transcoded: Vec<Frame>,
    /// See `LiveRoom::lease`.
    lease: Arc<AtomicU64>,
    /// Frames were dropped past the lease: consumers were told of the gap.
    lapsed: bool,
}

impl Publisher {
    /// The room's app.
    pub fn app(&self) -> &AppName {
        &self.claim.grant.app
    }

    /// The room's name.
    pub fn room(&self) -> &RoomName {
        &self.claim.grant.room
    }

    /// What admitted this session.
    pub fn grant(&self) -> &Grant {
        &self.claim.grant
    }

    /// The placement epoch this session holds its room at.
    pub fn epoch(&self) -> u64 {
        self.claim.epoch
    }

    /// A new session of the same publisher, with the same claim, started before this one is
    /// dropped: a takeover of its own, so the room (and its placement) is never given up in
    /// between (a pull reconnecting its camera).
    pub fn renew(&self) -> Result<Publisher, Refusal> {
        self.rooms.start_publish(self.claim.clone())
    }

    /// Publishes the track catalog (codec configs).
    /// An AAC track gets a transcoded Opus companion (see [`AudioTranscode`]).
    pub fn set_tracks(&self, tracks: Vec<TrackInfo>) {
        let tracks = self
            .transcode
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .catalog(tracks);
        *self.tracks.lock().expect("tracks lock") = tracks.clone();
        self.media.set_tracks(tracks);
    }

    /// Sends one frame to every consumer of the room, unless the session's placement lease was
    /// not seen renewed in time (in a cluster): then the frame is dropped, so a frozen or cut-off
    /// origin is silent before the cluster may give its room to another origin.
    pub fn push(&mut self, frame: Frame) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.rooms.enforce_leases.load(Relaxed)
            && self.lease.load(Relaxed) <= crate::credentials::unix_now_ms()
        {
            self.stats.frames_fenced.fetch_add(1, Relaxed);
            self.rooms.frames_fenced.fetch_add(1, Relaxed);
            if !self.lapsed {
                self.lapsed = true;
                tracing::warn!(app = %self.app(), room = %self.room(), epoch = self.epoch(), "placement lease not renewed in time: media held back");
                // Consumers resync on the next group when media flows again.
                self.media.push_gap(true);
            }
            return;
        }
        if std::mem::take(&mut self.lapsed) {
            tracing::info!(app = %self.app(), room = %self.room(), "placement lease renewed: media flows again");
        }
        self.stats
            .bytes_in
            .fetch_add(frame.data.len() as u64, Relaxed);
        self.stats.frames_in.fetch_add(1, Relaxed);
        if let Some(c) = self.stats.by_track.get(frame.track as usize) {
            c.fetch_add(frame.data.len() as u64, Relaxed);
        }
        self.transcode
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .frame(&frame, &mut self.transcoded);
        self.media.push(frame);
        for f in self.transcoded.drain(..) {
            // Counted per track (the API shows its bitrate), not as ingest.
            if let Some(c) = self.stats.by_track.get(f.track as usize) {
                c.fetch_add(f.data.len() as u64, Relaxed);
            }
            self.media.push(f);
        }
    }

    /// The media of this session, for consumers to subscribe to.
    pub fn media(&self) -> &RoomMedia {
        &self.media
    }

    /// Resolves when this session must stop: taken over, its key revoked, or the node stopping.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// A token cancelled when this session must stop (to wait on it while pushing frames).
    pub fn stop_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// True once the session must stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.rooms
            .finish(&self.claim.grant.app, &self.claim.grant.room, self.session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Basis;
    use crate::credentials::unix_now_ms;
    use streamhub_shared::media::CodecConfig;
    use streamhub_shared::media::RecvError;

    struct NoObserver;
    impl RoomObserver for NoObserver {
        fn room_started(&self, _: &AppName, _: &RoomName, _: &Publisher, _: bool) {}
    }

    fn claim(epoch: u64, claimed_at_ms: u64) -> PublishClaim {
        PublishClaim {
            grant: Grant {
                app: AppName::new("demo").expect("app"),
                room: RoomName::new("cam").expect("room"),
                publisher: "ingress-1".into(),
                basis: Basis::Ingress("ingress-1".into()),
            },
            protocol: Protocol::Ws,
            remote: "127.0.0.1:5000".parse().expect("addr"),
            epoch,
            claimed_at_ms,
        }
    }

    fn picture(n: i64) -> Frame {
        Frame {
            track: 0,
            group: 0,
            dts: n,
            pts: n,
            keyframe: true,
            data: bytes::Bytes::from_static(b"\xff\xd8jpeg\xff\xd9"),
        }
    }

    #[tokio::test]
    async fn media_is_held_back_past_its_lease_while_leases_are_enforced() {
        let rooms = Rooms::new(Arc::new(NoObserver), GroupPolicy::default());
        let (app, room) = (AppName::new("demo").unwrap(), RoomName::new("cam").unwrap());
        // Claimed long ago, never seen renewed: the lease is over.
        let mut p = rooms
            .start_publish(claim(7, unix_now_ms() - SELF_FENCE_MS - 1_000))
            .expect("start");
        p.set_tracks(vec![TrackInfo {
            id: 0,
            timescale: 90_000,
            codec: CodecConfig::Jpeg {
                width: 320,
                height: 240,
            },
        }]);
        let mut consumer = p.media().subscribe();
        // A cluster of one enforces nothing.
        p.push(picture(1));
        assert_eq!(consumer.recv().await.expect("frame").dts, 1);
        // Another origin could take the room: the frame is held back, consumers hear of a gap.
        rooms.enforce_leases(true);
        p.push(picture(2));
        p.push(picture(3));
        assert!(matches!(consumer.recv().await, Err(RecvError::Gap { .. })));
        assert_eq!(rooms.frames_fenced(), 2);
        // A renewal of another epoch is not this session's.
        rooms.set_lease(&app, &room, 8, unix_now_ms() + 60_000);
        p.push(picture(4));
        assert_eq!(rooms.frames_fenced(), 3);
        // Seen renewed: media flows again.
        rooms.set_lease(&app, &room, 7, unix_now_ms() + 60_000);
        p.push(picture(5));
        assert_eq!(consumer.recv().await.expect("frame").dts, 5);
        assert_eq!(rooms.frames_fenced(), 3);
        // A takeover by the same publisher at the same epoch keeps the renewed lease.
        let mut again = p.renew().expect("renew");
        let mut consumer = again.media().subscribe();
        again.set_tracks(p.media().tracks().to_vec());
        again.push(picture(6));
        assert_eq!(consumer.recv().await.expect("frame").dts, 6);
    }
}
