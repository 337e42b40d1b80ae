//! The rooms an edge pulls from origins: one relay subscription per room however many viewers
//! it has, started by the first viewer and ended a linger after the last one.
//!
//! A pull task owns its room: it finds the holder in the placement table, subscribes, feeds the
//! frames into a local `RoomMedia` (which the HLS packager and the MJPEG viewers consume, as on
//! an origin), and keeps doing so through failures:
//!
//! - the subscription breaks (origin gone, network): the room keeps its playlist and media, and
//!   the task resubscribes with capped, jittered backoff, following the placement;
//! - the placement moves to a new epoch (the publisher reconnected elsewhere): the task switches
//!   to the new holder and starts a new HLS session (a discontinuity, numbering goes on);
//! - the publisher ends (`Ended`): the playlist is closed, and the task waits for a new
//!   placement while viewers still ask.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streamhub_cluster::backoff::Backoff;
use streamhub_shared::media::{KeyframeGate, MediaHandle, RoomMedia};
use streamhub_shared::relay::ErrorCode;
use streamhub_shared::{AppName, RoomName};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::origins::{Holder, Origins};
use streamhub_media::hls::{run_packager, HlsRegistry, HlsRoom};
use streamhub_media::relay::subscribe::Update;
use streamhub_media::relay::{RelayClient, SubscribeError, Subscription};
use streamhub_media::wait::{changed, sleep_until};

/// Rooms pulled at once; more are refused (404) until one ends.
pub const MAX_PULLED_ROOMS: usize = 10_000;
/// Distinct viewers counted per room (the count saturates there).
const MAX_VIEWERS_TRACKED: usize = 100_000;
/// A viewer that has not asked for anything for this long is no longer counted.
pub const VIEWER_TTL: Duration = Duration::from_secs(10);
/// How often a live subscription checks that the placement has not moved.
const PLACEMENT_CHECK: Duration = Duration::from_secs(1);
/// How often a subscription whose media stalled (or one still being made) checks the placement:
/// a dead holder's connection only times out after seconds, its room may have moved already.
const STALLED_CHECK: Duration = Duration::from_millis(250);
/// Media is stalled after this long without an update, or four of the room's usual gaps
/// between updates if longer (a camera sending one picture a second is not stalled).
const STALL_MIN: Duration = Duration::from_millis(500);
/// How long the first viewer waits for the room to come up before getting an answer.
const OPEN_WAIT: Duration = Duration::from_secs(3);
/// Backoff between failed subscriptions.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(1);

type RoomKey = (AppName, RoomName);

/// Where a pull is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullState {
    /// Looking up the holder and subscribing.
    Connecting,
    /// Receiving media.
    Live,
    /// Lost the holder; serving what it has and retrying.
    Retrying,
    /// The publisher ended; waiting for a new one.
    Ended,
}

/// One pulled room.
pub struct Pulled {
    app: AppName,
    room: RoomName,
    state: watch::Sender<PullState>,
    media: watch::Sender<Option<MediaHandle>>,
    // std Mutexes: each held for a field update, never across an `.await`.
    hls: Mutex<Option<Arc<HlsRoom>>>,
    last_touch: Mutex<Instant>,
    viewers: Mutex<HashMap<SocketAddr, Instant>>,
    /// Viewers holding a connection open (MJPEG streams): never idle while any.
    streams: AtomicUsize,
    /// Relay subscriptions made for this room (1 while it stays healthy).
    pub subscriptions: AtomicU64,
    cancel: CancellationToken,
    /// When the pull started: viewers wait for its first answer until [`OPEN_WAIT`] after.
    started: tokio::time::Instant,
}

impl Pulled {
    fn new(app: &AppName, room: &RoomName, cancel: CancellationToken) -> Self {
        Self {
            app: app.clone(),
            room: room.clone(),
            state: watch::channel(PullState::Connecting).0,
            media: watch::channel(None).0,
            hls: Mutex::new(None),
            last_touch: Mutex::new(Instant::now()),
            viewers: Mutex::default(),
            streams: AtomicUsize::new(0),
            subscriptions: AtomicU64::new(0),
            cancel,
            started: tokio::time::Instant::now(),
        }
    }

    /// Where the pull is.
    pub fn state(&self) -> PullState {
        *self.state.borrow()
    }

    /// The room's local media (present once the first subscription succeeded).
    pub fn media(&self) -> Option<MediaHandle> {
        self.media.borrow().clone()
    }

    /// The room's HLS state.
    pub fn hls(&self) -> Option<Arc<HlsRoom>> {
        self.hls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A viewer at `client` asked for something now.
    pub fn touch(&self, client: SocketAddr) {
        let now = Instant::now();
        *self.last_touch.lock().unwrap_or_else(|e| e.into_inner()) = now;
        let mut viewers = self.viewers.lock().unwrap_or_else(|e| e.into_inner());
        if viewers.len() < MAX_VIEWERS_TRACKED || viewers.contains_key(&client) {
            viewers.insert(client, now);
        }
    }

    /// Distinct viewers seen within [`VIEWER_TTL`] (forgetting older ones).
    pub fn viewers(&self) -> usize {
        let Some(deadline) = Instant::now().checked_sub(VIEWER_TTL) else {
            return 0;
        };
        let mut viewers = self.viewers.lock().unwrap_or_else(|e| e.into_inner());
        viewers.retain(|_, t| *t > deadline);
        viewers.len() + self.streams.load(Ordering::Relaxed)
    }

    /// Holds the room open while the returned guard lives (a streaming viewer).
    pub fn hold(self: &Arc<Self>) -> StreamGuard {
        self.streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone())
    }

    fn idle_for(&self) -> Duration {
        if self.streams.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        self.last_touch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }
}

/// Keeps a pulled room open; see [`Pulled::hold`].
pub struct StreamGuard(Arc<Pulled>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
        *self.0.last_touch.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}

/// The pulled rooms of an edge.
pub struct Pulls {
    origins: Arc<Origins>,
    relay: Arc<RelayClient>,
    hls: Arc<HlsRegistry>,
    linger: Duration,
    rooms: Mutex<HashMap<RoomKey, Arc<Pulled>>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Pulls {
    /// Pulls rooms from `origins` through `relay` into `hls`; a room with no viewer for
    /// `linger` is unsubscribed.
    pub fn new(
        origins: Arc<Origins>,
        relay: Arc<RelayClient>,
        hls: Arc<HlsRegistry>,
        linger: Duration,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            origins,
            relay,
            hls,
            linger,
            rooms: Mutex::default(),
            tasks,
            shutdown,
        })
    }

    /// Complete groups asked of the holder before the live ones: the playlist window, so the
    /// edge lists the same segments as every other node from its first pull.
    fn backfill_groups(&self) -> u8 {
        let window = self.hls.config().window;
        u8::try_from(window)
            .unwrap_or(u8::MAX)
            .min(streamhub_shared::relay::MAX_BACKFILL_GROUPS)
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<RoomKey, Arc<Pulled>>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pulled rooms now.
    pub fn list(&self) -> Vec<Arc<Pulled>> {
        self.rooms().values().cloned().collect()
    }

    /// Distinct viewers over every room.
    pub fn viewers(&self) -> usize {
        self.list().iter().map(|p| p.viewers()).sum()
    }

    /// A viewer at `client` wants `app/room`: the pulled room, starting the pull if the room is
    /// live somewhere (waiting a little for it to come up). `None` if it is not live anywhere.
    pub async fn open(
        self: &Arc<Self>,
        app: &AppName,
        room: &RoomName,
        client: SocketAddr,
    ) -> Option<Arc<Pulled>> {
        let key = (app.clone(), room.clone());
        let existing = self.rooms().get(&key).cloned();
        if let Some(p) = existing {
            p.touch(client);
            // A pull another viewer just started may still be connecting: this viewer waits
            // for it as the first one does (answered at once, it would find no media yet).
            Self::until_connected(&p).await;
            return Some(p);
        }
        // Only rooms that are live somewhere get a task: random names cost one cached lookup.
        let holder = self.origins.placement(app, room).await?;
        let pulled = {
            let mut rooms = self.rooms();
            if let Some(p) = rooms.get(&key) {
                p.clone()
            } else {
                if rooms.len() >= MAX_PULLED_ROOMS {
                    tracing::warn!(%app, %room, "too many pulled rooms; refused");
                    return None;
                }
                let p = Arc::new(Pulled::new(app, room, self.shutdown.child_token()));
                rooms.insert(key.clone(), p.clone());
                self.tasks.spawn(self.clone().run(p.clone(), Some(holder)));
                p
            }
        };
        pulled.touch(client);
        Self::until_connected(&pulled).await;
        Some(pulled)
    }

    /// Waits for a pull's first subscription to be answered, until [`OPEN_WAIT`] after the
    /// pull started: a pull that cannot reach its holder keeps connecting (retrying) while
    /// viewers ask, and only the first of them waits the whole time.
    async fn until_connected(pulled: &Pulled) {
        let mut state = pulled.state.subscribe();
        let up = state.wait_for(|s| *s != PullState::Connecting);
        let _ = tokio::time::timeout_at(pulled.started + OPEN_WAIT, up).await;
    }

    /// Runs one pulled room until it has been idle for the linger (or the node stops).
    #[tracing::instrument(skip_all, fields(app = %pulled.app, room = %pulled.room))]
    async fn run(self: Arc<Self>, pulled: Arc<Pulled>, mut holder: Option<Holder>) {
        let mut session = Session::default();
        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
        // The newest placement epoch followed: epochs never repeat and only grow, so an answer
        // below it comes from an origin whose replica is behind (one back from a partition).
        let mut newest_epoch = 0;
        loop {
            if pulled.cancel.is_cancelled() || pulled.idle_for() >= self.linger {
                break;
            }
            if holder.is_none() {
                holder = self.origins.placement(&pulled.app, &pulled.room).await;
            }
            if holder.as_ref().is_some_and(|h| h.epoch < newest_epoch) {
                tracing::debug!("stale placement answer ignored");
                holder = None;
                self.origins
                    .invalidate_placement(&pulled.app, &pulled.room)
                    .await;
            }
            let Some(h) = holder.take() else {
                self.wait(&pulled, backoff.next_random_delay()).await;
                continue;
            };
            let attempt = tokio::select! {
                r = self.relay.subscribe_with_backfill(h.addr, &pulled.app, &pulled.room, self.backfill_groups()) => r,
                moved = self.moved_while_subscribing(&pulled, &h) => {
                    // A dead holder can take the whole handshake timeout to fail; the
                    // republished room should not wait for that.
                    tracing::info!(from = %h.node, to = %moved.node, "placement moved while subscribing");
                    holder = Some(moved);
                    continue;
                }
                () = pulled.cancel.cancelled() => break,
            };
            match attempt {
                Ok(sub) => {
                    backoff.succeeded();
                    newest_epoch = newest_epoch.max(h.epoch);
                    pulled.subscriptions.fetch_add(1, Ordering::Relaxed);
                    session.start(&self.hls, &pulled, &sub, &h);
                    pulled.state.send_replace(PullState::Live);
                    let end = self.follow(&pulled, sub, &mut session, &h).await;
                    tracing::info!(holder = %h.node, ?end, "relay subscription ended");
                    match end {
                        FollowEnd::Ended => {
                            session.end();
                            pulled.state.send_replace(PullState::Ended);
                        }
                        FollowEnd::Lost | FollowEnd::Moved => {
                            pulled.state.send_replace(PullState::Retrying);
                        }
                        FollowEnd::Idle => break,
                    }
                    self.origins
                        .invalidate_placement(&pulled.app, &pulled.room)
                        .await;
                }
                Err(e) => {
                    tracing::debug!(holder = %h.node, error = %e, "subscription failed");
                    if matches!(
                        e,
                        SubscribeError::Refused {
                            code: ErrorCode::UnknownRoom | ErrorCode::NotHere { .. },
                            ..
                        }
                    ) && session.media.is_none()
                        && pulled.state() == PullState::Connecting
                    {
                        // Not live after all: first viewers get their answer now.
                        pulled.state.send_replace(PullState::Ended);
                    } else if pulled.state() == PullState::Live {
                        pulled.state.send_replace(PullState::Retrying);
                    }
                    self.origins
                        .invalidate_placement(&pulled.app, &pulled.room)
                        .await;
                    self.wait(&pulled, backoff.next_random_delay()).await;
                }
            }
        }
        session.end();
        self.rooms()
            .remove(&(pulled.app.clone(), pulled.room.clone()));
        self.hls.remove(&pulled.app, &pulled.room);
        tracing::debug!("pull ended");
    }

    /// Resolves when the placement of the room points elsewhere than `holder` (checked every
    /// [`PLACEMENT_CHECK`], past the cache); pending otherwise.
    async fn moved_while_subscribing(&self, pulled: &Pulled, holder: &Holder) -> Holder {
        loop {
            tokio::time::sleep(STALLED_CHECK).await;
            self.origins
                .invalidate_placement(&pulled.app, &pulled.room)
                .await;
            if let Some(now) = self.origins.placement(&pulled.app, &pulled.room).await {
                if now.moved_from(holder) {
                    return now;
                }
            }
        }
    }

    async fn wait(&self, pulled: &Pulled, d: Duration) {
        tokio::select! {
            () = pulled.cancel.cancelled() => {}
            () = tokio::time::sleep(d) => {}
        }
    }

    /// Feeds the subscription into the session until it ends, the placement moves, or the
    /// room goes idle.
    async fn follow(
        &self,
        pulled: &Pulled,
        mut sub: Subscription,
        session: &mut Session,
        holder: &Holder,
    ) -> FollowEnd {
        let mut check = tokio::time::interval(STALLED_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        let mut last_check = Instant::now();
        let mut stall = StallWatch::new(Instant::now());
        // Local viewers' keyframe requests (WebRTC PLI/FIR) go to the origin, rate-limited.
        let mut keyframes = session.keyframe_requests();
        let mut gate = KeyframeGate::new(KEYFRAME_REQUEST_GAP);
        loop {
            let forward = gate.due().map(tokio::time::Instant::from_std);
            let mut send_keyframe_request = false;
            tokio::select! {
                Ok(()) = changed(&mut keyframes) => {
                    send_keyframe_request = gate.request(Instant::now());
                }
                () = sleep_until(forward), if forward.is_some() => {
                    send_keyframe_request = gate.poll(Instant::now());
                }
                update = sub.next() => match update {
                    Update::Frame(frame) => {
                        stall.update(Instant::now());
                        session.push(frame);
                    }
                    Update::Gap { partial } => session.gap(partial),
                    Update::Catalog(tracks) => session.set_tracks(tracks),
                    Update::Ended => return FollowEnd::Ended,
                    Update::Lost(reason) => {
                        tracing::warn!(holder = %holder.node, %reason, "relay subscription lost");
                        return FollowEnd::Lost;
                    }
                },
                _ = check.tick() => {
                    if pulled.idle_for() >= self.linger {
                        sub.close().await;
                        return FollowEnd::Idle;
                    }
                    let stalled = stall.stalled(Instant::now());
                    if !stalled && last_check.elapsed() < PLACEMENT_CHECK {
                        continue;
                    }
                    last_check = Instant::now();
                    if stalled {
                        // Past the cache: the room may have just moved off a dead holder.
                        self.origins
                            .invalidate_placement(&pulled.app, &pulled.room)
                            .await;
                    }
                    let now = self.origins.placement(&pulled.app, &pulled.room).await;
                    if now.as_ref().is_some_and(|n| n.moved_from(holder)) {
                        tracing::info!(from = %holder.node, to = ?now.map(|n| n.node), "placement moved");
                        sub.close().await;
                        return FollowEnd::Moved;
                    }
                }
                () = pulled.cancel.cancelled() => return FollowEnd::Idle,
            }
            if send_keyframe_request && sub.request_keyframe().await {
                let stats = self.relay.stats();
                stats.keyframe_requests_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Keyframe requests from an edge's viewers reach the origin at most this often per room.
const KEYFRAME_REQUEST_GAP: Duration = Duration::from_millis(500);

/// Whether a subscription's media stalled: no frame for [`STALL_MIN`], or for four of the room's
/// usual gaps between frames (a moving average) when those are longer.
struct StallWatch {
    last: Instant,
    /// Moving average of the gaps between frames.
    gap: Duration,
}

impl StallWatch {
    fn new(now: Instant) -> Self {
        Self {
            last: now,
            gap: Duration::ZERO,
        }
    }

    fn update(&mut self, now: Instant) {
        let gap = now.saturating_duration_since(self.last);
        self.gap = (self.gap * 7 + gap) / 8;
        self.last = now;
    }

    fn stalled(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last) >= STALL_MIN.max(self.gap * 4)
    }
}

/// Why [`Pulls::follow`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FollowEnd {
    Ended,
    Lost,
    Moved,
    Idle,
}

/// The local media of one publisher session of a pulled room.
#[derive(Default)]
struct Session {
    media: Option<RoomMedia>,
    epoch: Option<(String, u64)>,
    /// The current subscription's first live group: those before it are back-fill.
    live_group: Option<u64>,
}

impl Session {
    /// Starts (or continues) the session for a new subscription: same holder and epoch
    /// continue the local media; anything else is a new publisher session.
    fn start(&mut self, hls: &HlsRegistry, pulled: &Pulled, sub: &Subscription, h: &Holder) {
        let epoch = Some((h.node.clone(), h.epoch));
        self.live_group = sub.live_group;
        if self.media.is_some() && self.epoch == epoch {
            if let Some(room) = pulled.hls() {
                room.expect_backfill(sub.live_group);
            }
            if let Some(media) = self.media.as_mut() {
                media.set_tracks(sub.tracks.clone());
                // Whatever was in flight when the old subscription broke is gone.
                media.push_gap(true);
            }
            return;
        }
        self.end();
        let media = RoomMedia::new();
        media.set_tracks(sub.tracks.clone());
        let room = hls.start(&pulled.app, &pulled.room);
        room.expect_backfill(sub.live_group);
        // The packager takes the back-filled window too; live viewers start at the live groups.
        let consumer = media.subscribe().with_backfill();
        tokio::spawn(run_packager(consumer, room.clone(), room.session()));
        *pulled.hls.lock().unwrap_or_else(|e| e.into_inner()) = Some(room);
        pulled.media.send_replace(Some(media.handle()));
        self.media = Some(media);
        self.epoch = epoch;
    }

    fn push(&mut self, frame: streamhub_shared::Frame) {
        if let Some(media) = self.media.as_mut() {
            if self.live_group.is_some_and(|g| frame.group < g) {
                media.push_backfill(frame);
            } else {
                media.push_relayed(frame);
            }
        }
    }

    fn gap(&mut self, partial: bool) {
        if let Some(media) = self.media.as_mut() {
            media.push_gap(partial);
        }
    }

    /// The local viewers' keyframe requests, while there is a local session.
    fn keyframe_requests(&self) -> Option<watch::Receiver<u64>> {
        self.media.as_ref().map(RoomMedia::keyframe_requests)
    }

    fn set_tracks(&mut self, tracks: Vec<streamhub_shared::TrackInfo>) {
        if let Some(media) = self.media.as_ref() {
            media.set_tracks(tracks);
        }
    }

    /// The publisher's session is over: dropping the media ends the packager (`ENDLIST`).
    fn end(&mut self) {
        self.media = None;
        self.epoch = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_stalls_after_half_a_second_or_four_usual_gaps() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // 25 frames a second: stalled half a second after the last one.
        let mut fast = StallWatch::new(t0);
        for i in 1..=50 {
            fast.update(t0 + ms(40 * i));
        }
        let last = t0 + ms(2000);
        assert!(!fast.stalled(last + ms(400)));
        assert!(fast.stalled(last + ms(500)));
        // A camera sending a picture a second is not stalled between two of them.
        let mut slow = StallWatch::new(t0);
        for i in 1..=30 {
            slow.update(t0 + ms(1000 * i));
        }
        let last = t0 + ms(30_000);
        assert!(!slow.stalled(last + ms(1500)));
        assert!(slow.stalled(last + ms(4500)));
    }

    /// A pull that stays connecting (its holder unreachable) holds each viewer only until
    /// [`OPEN_WAIT`] after it started, not [`OPEN_WAIT`] each.
    #[tokio::test]
    async fn viewers_wait_for_a_connecting_pull_until_its_deadline_only() {
        let app = AppName::new("demo").unwrap();
        let room = RoomName::new("main").unwrap();
        let pulled = Pulled::new(&app, &room, CancellationToken::new());
        Pulls::until_connected(&pulled).await;
        assert!(pulled.started.elapsed() >= OPEN_WAIT);
        // A later viewer is answered at once (it waited OPEN_WAIT again before).
        let t = Instant::now();
        Pulls::until_connected(&pulled).await;
        assert!(t.elapsed() < OPEN_WAIT / 2, "waited {:?}", t.elapsed());
        // Answered: nobody waits.
        let pulled = Pulled::new(&app, &room, CancellationToken::new());
        pulled.state.send_replace(PullState::Live);
        let t = Instant::now();
        Pulls::until_connected(&pulled).await;
        assert!(t.elapsed() < OPEN_WAIT / 2, "waited {:?}", t.elapsed());
    }
}
