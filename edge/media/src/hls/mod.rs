//! HLS playback with CMAF (fMP4) segments and LL-HLS parts: a packager task per live room turns
//! its frames into parts, segments and a playlist; the HTTP side serves them from memory.
//!
//! Protocol logic lives in sans-IO modules ([`cmaf`], [`segmenter`], [`playlist`]); this module
//! holds the per-room state that viewers read and the async driver that feeds it. Media bytes live
//! in the node's [`MediaCache`]; a room keeps the playlist metadata and its init segments.

pub mod cache;
pub mod cmaf;
pub mod http;
pub mod playlist;
pub mod segmenter;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use streamhub_shared::media::{MediaConsumer, RecvError, TrackInfo};
use streamhub_shared::{AppName, RoomName};
use tokio::sync::{broadcast, watch};

pub use cache::{MediaCache, MediaKey};
pub use http::{router, HlsStats};
pub use playlist::{Playlist, PlaylistConfig, Progress};
pub use segmenter::{Output, Part, Resync, Segment, Segmenter};

/// How long an ended room stays servable (its playlist carries `#EXT-X-ENDLIST`) before
/// [`HlsRegistry::sweep`] removes it, unless a publisher restarts it.
pub const ENDED_ROOM_TTL: Duration = Duration::from_secs(60);

/// Complete segments a recorder may fall behind by before it loses some (a few minutes of
/// media at the usual segment lengths).
pub const RECORD_BACKLOG: usize = 64;

/// What a room's recorders get ([`HlsRoom::record`]), in order.
#[derive(Debug, Clone)]
pub enum Recorded {
    /// A complete segment and the init segment that decodes it.
    Segment {
        /// The init segment's content id: a new id starts a new MP4.
        init_id: u32,
        init: Bytes,
        duration_secs: f64,
        discontinuity: bool,
        /// The segment's fragments (`moof` + `mdat` each).
        data: Bytes,
    },
    /// The publisher session ended.
    Ended,
}

/// HLS packaging settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HlsConfig {
    /// The segment target: `EXT-X-TARGETDURATION` is never below it. Where segments are cut is
    /// decided by the origin's groups (see `GroupPolicy`), which follow the origin's setting.
    pub target_duration: Duration,
    /// The LL-HLS part target.
    pub part_target: Duration,
    /// Segments listed in the playlist.
    pub window: usize,
    /// Segments held (at least `window`), so a slow player can still fetch them.
    pub keep: usize,
    /// Advertise LL-HLS (parts, blocking reload, preload hint); plain players work either way.
    pub low_latency: bool,
    /// How long a room whose publisher left stays open (no `#EXT-X-ENDLIST`) for a publisher
    /// to come back. Players stop reloading at `ENDLIST`; an encoder restarted with the same key
    /// (often with new settings) within this time continues the same playlist after a
    /// discontinuity, and its viewers keep playing.
    pub publisher_grace: Duration,
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            target_duration: Duration::from_secs(2),
            part_target: Duration::from_millis(333),
            window: 6,
            keep: 10,
            low_latency: true,
            publisher_grace: Duration::from_secs(5),
        }
    }
}

impl HlsConfig {
    fn playlist(&self) -> PlaylistConfig {
        PlaylistConfig {
            target: self.target_duration,
            part_target: self.part_target,
            window: self.window,
            keep: self.keep,
            low_latency: self.low_latency,
        }
    }
}

/// Rooms get node-unique ids, so the media cache never mixes a room with an earlier namesake.
static NEXT_ROOM_ID: AtomicU64 = AtomicU64::new(1);

/// The HLS state of one room: init segments, playlist, and the keys of its media in the cache.
/// Shared by its packager (writer) and the HTTP handlers (readers).
#[derive(Debug)]
pub struct HlsRoom {
    id: u64,
    config: HlsConfig,
    cache: Arc<MediaCache>,
    // A std Mutex: every access is a few field reads or one render, never across an `.await`.
    state: Mutex<RoomState>,
    progress: watch::Sender<Progress>,
    recorded: broadcast::Sender<Recorded>,
}

#[derive(Debug)]
struct RoomState {
    /// Bumped by each publisher (re)start; a packager of an older session may no longer write.
    session: u64,
    /// Init segments by content id, oldest first; the last is current.
    inits: Vec<(u32, Bytes)>,
    playlist: Playlist,
    ended_at: Option<Instant>,
    /// When the current publisher session started here.
    started_at: Instant,
    /// A pull under way with back-fill: the first live group (the back-filled ones come
    /// before it).
    live_from: Option<u64>,
}

impl HlsRoom {
    /// An empty room (no init, no segments) whose media goes to `cache`.
    pub fn new(config: HlsConfig, cache: Arc<MediaCache>) -> Self {
        let playlist = Playlist::new(config.playlist());
        Self {
            id: NEXT_ROOM_ID.fetch_add(1, Ordering::Relaxed),
            config,
            cache,
            state: Mutex::new(RoomState {
                session: 0,
                inits: Vec::new(),
                playlist,
                ended_at: None,
                started_at: Instant::now(),
                live_from: None,
            }),
            progress: watch::channel(Progress::default()).0,
            recorded: broadcast::channel(RECORD_BACKLOG).0,
        }
    }

    /// Every complete segment from now on, with its init segment, and the end of each
    /// publisher session: what a recorder writes (the fragments HLS serves, no second encode).
    pub fn record(&self) -> broadcast::Receiver<Recorded> {
        self.recorded.subscribe()
    }

    fn state(&self) -> MutexGuard<'_, RoomState> {
        // A panic while holding the lock cannot leave the state half-written in a way readers
        // care about more than losing the room, so keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The packaging settings of this room.
    pub fn config(&self) -> &HlsConfig {
        &self.config
    }

    /// The current publisher session (see [`HlsRegistry::start`]).
    pub fn session(&self) -> u64 {
        self.state().session
    }

    /// The rendered media playlist.
    pub fn playlist(&self) -> Bytes {
        self.state().playlist.rendered()
    }

    /// An init segment by content id; `None` asks for the current one (`init.mp4`).
    pub fn init(&self, id: Option<u32>) -> Option<Bytes> {
        let state = self.state();
        match id {
            Some(id) => state.inits.iter().find(|(n, _)| *n == id),
            None => state.inits.last(),
        }
        .map(|(_, b)| b.clone())
    }

    /// A held segment by its media sequence number.
    pub fn segment(&self, msn: u64) -> Option<Bytes> {
        self.state().playlist.segment(msn)?;
        self.cache.get(&MediaKey::Segment { room: self.id, msn })
    }

    /// A held part.
    pub fn part(&self, msn: u64, index: u32) -> Option<Bytes> {
        if !self.state().playlist.has_part(msn, index) {
            return None;
        }
        self.cache.get(&MediaKey::Part {
            room: self.id,
            msn,
            index,
        })
    }

    /// The part a player should ask for next (the preload hint), if any.
    pub fn next_part(&self) -> Option<(u64, u32)> {
        self.state().playlist.next_part()
    }

    /// True once the publisher has gone (and none restarted the room).
    pub fn is_ended(&self) -> bool {
        self.state().playlist.is_ended()
    }

    /// What the playlist lists; changes on every part and segment (for blocking reloads).
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Installs the init segment of a (new) catalog for `session`; returns its content id.
    pub fn set_init(&self, session: u64, init: Bytes) -> Option<u32> {
        let mut state = self.state();
        if state.session != session {
            return None;
        }
        let id = playlist::init_id(&init);
        state.inits.retain(|(n, _)| *n != id);
        state.inits.push((id, init));
        Some(id)
    }

    /// Publishes a part of `session`, decoded by init `init`.
    pub fn publish_part(&self, session: u64, init: u32, part: Part) -> bool {
        let mut state = self.state();
        if state.session != session {
            return false;
        }
        let entry = playlist::PartEntry {
            duration_secs: part.duration_secs,
            independent: part.independent,
        };
        let msn = state
            .playlist
            .push_part(part.msn, entry, part.discontinuity, init);
        let key = MediaKey::Part {
            room: self.id,
            msn,
            index: part.index,
        };
        self.cache.insert(key, part.data);
        self.notify(state);
        true
    }

    /// Publishes a complete segment of `session`, decoded by init `init`.
    pub fn publish(&self, session: u64, init: u32, segment: Segment) -> bool {
        let mut state = self.state();
        if state.session != session {
            return false;
        }
        let msn = state.playlist.push_segment(
            segment.msn,
            segment.duration_secs,
            segment.discontinuity,
            init,
        );
        if self.recorded.receiver_count() > 0 {
            if let Some((_, bytes)) = state.inits.iter().find(|(n, _)| *n == init) {
                // No recorder listening is the only way this fails.
                let _ = self.recorded.send(Recorded::Segment {
                    init_id: init,
                    init: bytes.clone(),
                    duration_secs: segment.duration_secs,
                    discontinuity: segment.discontinuity,
                    data: segment.data.clone(),
                });
            }
        }
        self.cache
            .insert(MediaKey::Segment { room: self.id, msn }, segment.data);
        // Drop init segments no held segment needs any more (the current one always stays).
        let current = state.inits.last().map(|(n, _)| *n);
        let used: Vec<u32> = state.playlist.inits_in_use().collect();
        state
            .inits
            .retain(|(n, _)| Some(*n) == current || used.contains(n));
        self.notify(state);
        true
    }

    fn notify(&self, state: MutexGuard<'_, RoomState>) {
        let progress = state.playlist.progress();
        drop(state);
        self.progress.send_replace(progress);
    }

    /// The packager of `session` lost frames: the open segment's parts are withdrawn.
    pub fn abandon_open(&self, session: u64) {
        let mut state = self.state();
        if state.session == session {
            state.playlist.abandon_open();
        }
        self.notify(state);
    }

    /// The publisher of `session` has gone at `now`: the playlist gets `#EXT-X-ENDLIST`.
    pub fn end(&self, session: u64, now: Instant) {
        let mut state = self.state();
        if state.session == session {
            state.playlist.end();
            state.ended_at = Some(now);
            let _ = self.recorded.send(Recorded::Ended);
        }
        self.notify(state);
    }

    /// Starts a new publisher session: the next segment is a discontinuity, numbering goes on.
    fn restart(&self) -> u64 {
        let mut state = self.state();
        state.session += 1;
        state.ended_at = None;
        state.started_at = Instant::now();
        state.live_from = None;
        state.playlist.restart();
        state.session
    }

    /// When the current publisher session started on this node (an edge: when it began
    /// pulling it; its back-filled window follows within a round trip or two).
    pub fn started_at(&self) -> Instant {
        self.state().started_at
    }

    /// A pull has asked for back-fill: groups before `live_group` are on their way.
    pub fn expect_backfill(&self, live_group: Option<u64>) {
        self.state().live_from = live_group;
    }

    /// True once the packager has reached the live groups of a back-filled pull (its playlist
    /// lists the window), or when nothing is being back-filled.
    pub fn settled(&self) -> bool {
        let reached = self.progress.borrow().last_msn();
        self.state()
            .live_from
            .is_none_or(|g| reached.is_some_and(|m| m >= g))
    }

    fn ended_before(&self, deadline: Instant) -> bool {
        self.state().ended_at.is_some_and(|t| t <= deadline)
    }
}

type RoomKey = (AppName, RoomName);

/// The HLS rooms of this node.
#[derive(Debug, Default)]
pub struct HlsRegistry {
    config: HlsConfig,
    cache: Arc<MediaCache>,
    // A std Mutex held only for map lookups and inserts.
    rooms: Mutex<HashMap<RoomKey, Arc<HlsRoom>>>,
}

impl HlsRegistry {
    /// An empty registry whose rooms use `config` and keep their media in `cache`.
    pub fn new(config: HlsConfig, cache: Arc<MediaCache>) -> Self {
        Self {
            config,
            cache,
            rooms: Mutex::new(HashMap::new()),
        }
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<RoomKey, Arc<HlsRoom>>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The media cache of this node.
    pub fn cache(&self) -> &Arc<MediaCache> {
        &self.cache
    }

    /// The settings of new rooms.
    pub fn config(&self) -> &HlsConfig {
        &self.config
    }

    /// The room `app/room`, if it is packaged here.
    pub fn room(&self, app: &AppName, room: &RoomName) -> Option<Arc<HlsRoom>> {
        self.rooms().get(&(app.clone(), room.clone())).cloned()
    }

    /// A publisher (or a relay subscription) started `app/room`: returns its room, reusing the
    /// existing one after a reconnect (numbering continues, the next segment is a
    /// discontinuity). Spawn [`run_packager`] for it with `room.session()` read right after this
    /// call: the packager belongs to the session started here, and a stale one can no longer
    /// write.
    pub fn start(&self, app: &AppName, room: &RoomName) -> Arc<HlsRoom> {
        let room = self
            .rooms()
            .entry((app.clone(), room.clone()))
            .or_insert_with(|| Arc::new(HlsRoom::new(self.config.clone(), self.cache.clone())))
            .clone();
        room.restart();
        room
    }

    /// Forgets `app/room`.
    pub fn remove(&self, app: &AppName, room: &RoomName) -> Option<Arc<HlsRoom>> {
        self.rooms().remove(&(app.clone(), room.clone()))
    }

    /// Removes rooms that ended [`ENDED_ROOM_TTL`] or longer before `now`; returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let Some(deadline) = now.checked_sub(ENDED_ROOM_TTL) else {
            return 0;
        };
        let mut rooms = self.rooms();
        let before = rooms.len();
        rooms.retain(|_, room| !room.ended_before(deadline));
        before - rooms.len()
    }

    /// Number of rooms held.
    pub fn len(&self) -> usize {
        self.rooms().len()
    }

    /// True when no room is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Packages one publisher session of a room until the publisher goes: reads frames, (re)builds
/// the init segment when the catalog changes, cuts and publishes parts and segments, and marks
/// the room ended on `Closed` unless a new session started within the publisher grace
/// ([`HlsConfig::publisher_grace`]). Lost frames (`Lagged`) drop the open segment and resume at the
/// next group with a discontinuity.
#[tracing::instrument(skip_all, fields(session))]
pub async fn run_packager(mut consumer: MediaConsumer, room: Arc<HlsRoom>, session: u64) {
    tracing::Span::current().record("session", session);
    let mut packager = Packager::new(room, session);
    loop {
        match consumer.recv().await {
            Ok(frame) => {
                packager.catalog(consumer.tracks());
                if let Some(segmenter) = packager.segmenter.as_mut() {
                    let pushed = segmenter.push(frame);
                    packager.publish(pushed);
                }
            }
            Err(RecvError::Gap { partial: true }) => {
                tracing::debug!("a group was lost upstream; resyncing on the next one");
                packager.resync(Resync::AfterLastGroup);
            }
            Err(RecvError::Gap { partial: false }) => {
                // The open segment is complete (whole later groups are missing): publish it.
                tracing::debug!("groups were lost upstream after a complete one");
                packager.flush();
                if let Some(segmenter) = packager.segmenter.as_mut() {
                    segmenter.mark_discontinuity();
                }
            }
            Err(RecvError::Lagged(lost)) => {
                tracing::warn!(lost, "packager fell behind; resyncing on a later group");
                packager.resync(Resync::AfterNextGroup);
            }
            Err(RecvError::Closed) => {
                packager.flush();
                // A publisher that comes back within the grace starts a new session, and this
                // late `end` does nothing.
                tokio::time::sleep(packager.room.config().publisher_grace).await;
                packager.room.end(session, Instant::now());
                tracing::debug!("publisher gone; playlist ended");
                return;
            }
        }
    }
}

/// The state of [`run_packager`] between frames.
struct Packager {
    room: Arc<HlsRoom>,
    session: u64,
    catalog: Arc<Vec<TrackInfo>>,
    segmenter: Option<Segmenter>,
    init: u32,
}

impl Packager {
    fn new(room: Arc<HlsRoom>, session: u64) -> Self {
        Self {
            room,
            session,
            catalog: Arc::new(Vec::new()),
            segmenter: None,
            init: 0,
        }
    }

    /// Follows catalog changes: finishes the old run, installs a new init segment. Tracks the
    /// packager cannot carry (JPEG, an RTMP room's transcoded Opus) are left out.
    fn catalog(&mut self, tracks: Arc<Vec<TrackInfo>>) {
        let same = Arc::ptr_eq(&tracks, &self.catalog)
            || *tracks == *self.catalog
            // A change in tracks HLS does not carry (a transcoded Opus track coming or going)
            // keeps the run going.
            || (self.segmenter.is_some()
                && streamhub_shared::media::hls_tracks(&tracks)
                    == streamhub_shared::media::hls_tracks(&self.catalog));
        if same {
            self.catalog = tracks;
            return;
        }
        self.flush();
        let had_segmenter = self.segmenter.is_some();
        self.catalog = tracks.clone();
        self.segmenter = None;
        let carried = streamhub_shared::media::hls_tracks(&tracks);
        if carried.is_empty() {
            return;
        }
        match cmaf::init_segment(&carried) {
            Ok(init) => {
                let Some(id) = self.room.set_init(self.session, init) else {
                    return;
                };
                self.init = id;
                let mut segmenter = Segmenter::new(carried, self.room.config.part_target);
                if had_segmenter {
                    segmenter.mark_discontinuity();
                }
                self.segmenter = Some(segmenter);
            }
            Err(error) => tracing::warn!(%error, "cannot package this catalog"),
        }
    }

    fn resync(&mut self, how: Resync) {
        if let Some(segmenter) = self.segmenter.as_mut() {
            segmenter.resync(how);
            self.room.abandon_open(self.session);
        }
    }

    fn flush(&mut self) {
        if let Some(segmenter) = self.segmenter.as_mut() {
            let flushed = segmenter.flush();
            self.publish(flushed);
        }
    }

    /// Publishes what the segmenter finished; `pushed` is the result of the last input.
    fn publish(&mut self, pushed: Result<(), cmaf::CmafError>) {
        if let Err(error) = pushed {
            tracing::warn!(%error, "media lost");
        }
        let Some(segmenter) = self.segmenter.as_mut() else {
            return;
        };
        while let Some(out) = segmenter.poll_output() {
            match out {
                Output::Part(part) => self.room.publish_part(self.session, self.init, part),
                Output::Segment(seg) => self.room.publish(self.session, self.init, seg),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::cmaf::tests::{audio, video};
    use crate::hls::segmenter::tests::stream;
    use streamhub_shared::media::RoomMedia;

    fn names() -> (AppName, RoomName) {
        (AppName::new("live").unwrap(), RoomName::new("cam").unwrap())
    }

    /// Rooms end as soon as their publisher goes (the grace has its own test).
    fn registry() -> HlsRegistry {
        let config = HlsConfig {
            publisher_grace: Duration::ZERO,
            ..HlsConfig::default()
        };
        HlsRegistry::new(config, Arc::default())
    }

    fn relay(media: &mut RoomMedia, frames: Vec<streamhub_shared::Frame>) {
        for frame in frames {
            media.push_relayed(frame);
        }
    }

    #[tokio::test]
    async fn packager_publishes_parts_segments_and_ends() {
        let registry = registry();
        let (app, name) = names();
        let room = registry.start(&app, &name);
        let mut media = RoomMedia::new();
        media.set_tracks(vec![video(), audio()]);
        let task = tokio::spawn(run_packager(
            media.subscribe(),
            room.clone(),
            room.session(),
        ));
        relay(&mut media, stream(7, 25));
        drop(media);
        task.await.unwrap();
        assert!(room.is_ended());
        let text = String::from_utf8(room.playlist().to_vec()).unwrap();
        assert!(text.contains("seg-0.m4s\n"), "{text}");
        assert!(
            text.contains("seg-3.m4s\n#EXT-X-ENDLIST\n"),
            "flushed last: {text}"
        );
        assert!(room.init(None).is_some());
        let seg = room.segment(2).unwrap();
        let parts: Vec<u8> = (0..7)
            .flat_map(|i| room.part(2, i).unwrap().to_vec())
            .collect();
        assert_eq!(parts, seg.to_vec());
        assert!(room.part(2, 7).is_none());
        assert!(room.segment(9).is_none());
        assert_eq!(room.subscribe().borrow().last_segment, Some(3));
    }

    #[tokio::test]
    async fn reconnect_continues_numbering_with_a_discontinuity() {
        let registry = registry();
        let (app, name) = names();
        for _ in 0..2 {
            let room = registry.start(&app, &name);
            let mut media = RoomMedia::new();
            media.set_tracks(vec![video(), audio()]);
            let task = tokio::spawn(run_packager(
                media.subscribe(),
                room.clone(),
                room.session(),
            ));
            relay(&mut media, stream(5, 25));
            drop(media);
            task.await.unwrap();
            assert!(room.is_ended());
        }
        let room = registry.room(&app, &name).unwrap();
        let text = String::from_utf8(room.playlist().to_vec()).unwrap();
        let uris: Vec<&str> = text.lines().filter(|l| l.starts_with("seg-")).collect();
        assert_eq!(
            uris,
            [
                "seg-0.m4s",
                "seg-1.m4s",
                "seg-2.m4s",
                "seg-3.m4s",
                "seg-4.m4s",
                "seg-5.m4s"
            ]
        );
        assert_eq!(text.matches("#EXT-X-DISCONTINUITY\n").count(), 1, "{text}");
        assert_eq!(
            text.matches("#EXT-X-MAP").count(),
            1,
            "same catalog, same init: {text}"
        );
    }

    // Real time: each "not ended yet" is checked before the grace can be over.
    #[tokio::test]
    async fn a_publisher_returning_within_the_grace_continues_the_playlist() {
        let grace = Duration::from_secs(2);
        let config = HlsConfig {
            publisher_grace: grace,
            ..HlsConfig::default()
        };
        let registry = HlsRegistry::new(config, Arc::default());
        let (app, name) = names();
        let session = |frames| {
            let room = registry.start(&app, &name);
            let mut media = RoomMedia::new();
            media.set_tracks(vec![video(), audio()]);
            let task = tokio::spawn(run_packager(
                media.subscribe(),
                room.clone(),
                room.session(),
            ));
            relay(&mut media, stream(frames, 25));
            (room, media, task)
        };
        let (room, media, first) = session(5);
        drop(media);
        tokio::time::sleep(grace / 2).await;
        assert!(!room.is_ended(), "no ENDLIST within the grace");
        let text = String::from_utf8(room.playlist().to_vec()).unwrap();
        assert!(text.contains("seg-2.m4s\n"), "flushed at once: {text}");

        // The encoder comes back: the first packager's late end does nothing.
        let (_, media, second) = session(5);
        first.await.unwrap();
        assert!(
            !room.is_ended(),
            "the returned publisher's playlist stays open"
        );
        drop(media);
        tokio::time::sleep(grace / 2).await;
        assert!(!room.is_ended());
        second.await.unwrap();
        assert!(room.is_ended(), "ENDLIST once the grace is over");
        let text = String::from_utf8(room.playlist().to_vec()).unwrap();
        assert_eq!(text.matches("#EXT-X-DISCONTINUITY\n").count(), 1, "{text}");
        assert!(text.ends_with("#EXT-X-ENDLIST\n"), "{text}");
    }

    #[tokio::test]
    async fn lagging_packager_resyncs_with_a_discontinuity() {
        let registry = registry();
        let (app, name) = names();
        let room = registry.start(&app, &name);
        let mut published = room.subscribe();
        let mut media = RoomMedia::new();
        media.set_tracks(vec![video(), audio()]);
        let task = tokio::spawn(run_packager(
            media.subscribe(),
            room.clone(),
            room.session(),
        ));
        let frames = stream(40, 25);
        let split = frames.iter().position(|f| f.dts >= 5 * 90_000).unwrap();
        relay(&mut media, frames[..split].to_vec());
        let two_segments = published.wait_for(|p| p.last_segment >= Some(1));
        tokio::time::timeout(Duration::from_secs(5), two_segments)
            .await
            .expect("two segments within 5 s")
            .unwrap();
        // ~2400 frames at once on this single-threaded runtime: more than the channel holds
        relay(&mut media, frames[split..].to_vec());
        drop(media);
        task.await.unwrap();
        let text = String::from_utf8(room.playlist().to_vec()).unwrap();
        let parsed = m3u8_rs::parse_media_playlist_res(text.as_bytes()).unwrap();
        let tags = parsed.segments.iter().filter(|s| s.discontinuity).count() as u64;
        assert_eq!(parsed.discontinuity_sequence + tags, 1, "{text}");
        assert!(parsed.end_list);
    }

    #[test]
    fn stale_session_cannot_write() {
        let registry = registry();
        let (app, name) = names();
        let room = registry.start(&app, &name);
        let old = room.session();
        let id = room.set_init(old, Bytes::from_static(b"init")).unwrap();
        registry.start(&app, &name);
        let seg = Segment {
            msn: 0,
            duration_secs: 2.0,
            discontinuity: false,
            parts: 0,
            data: Bytes::new(),
        };
        assert!(!room.publish(old, id, seg));
        room.end(old, Instant::now());
        assert!(
            !room.is_ended(),
            "the old publisher's end does not end the new session"
        );
    }

    #[test]
    fn sweep_removes_rooms_ended_long_enough() {
        let registry = registry();
        let (app, name) = names();
        let room = registry.start(&app, &name);
        let t0 = Instant::now();
        room.end(room.session(), t0);
        assert_eq!(registry.sweep(t0 + Duration::from_secs(59)), 0);
        assert_eq!(registry.sweep(t0 + ENDED_ROOM_TTL), 1);
        assert!(registry.room(&app, &name).is_none());

        // restarted before the sweep: kept
        let room = registry.start(&app, &name);
        room.end(room.session(), t0);
        registry.start(&app, &name);
        assert_eq!(registry.sweep(t0 + Duration::from_secs(600)), 0);
        assert!(registry.room(&app, &name).is_some());
    }
}
