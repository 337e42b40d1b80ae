//! HLS playback with CMAF (fMP4) segments: a packager task per live room turns its frames into
//! segments and a playlist; the HTTP side serves them from memory.
//!
//! Protocol logic lives in sans-IO modules ([`cmaf`], [`segmenter`], [`playlist`]); this module
//! holds the per-room state that viewers read and the async driver that feeds it.

pub mod cmaf;
pub mod http;
pub mod playlist;
pub mod segmenter;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use streamhub_shared::media::{MediaConsumer, RecvError, TrackInfo};
use streamhub_shared::{AppName, RoomName};
use tokio::sync::watch;

pub use http::{router, HlsStats};
pub use playlist::Playlist;
pub use segmenter::{Segment, Segmenter};

/// How long an ended room stays servable (its playlist carries `#EXT-X-ENDLIST`) before
/// [`HlsRegistry::sweep`] removes it, unless a publisher restarts it.
pub const ENDED_ROOM_TTL: Duration = Duration::from_secs(60);

/// HLS packaging settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HlsConfig {
    /// Segments are cut at the first keyframe past each multiple of this.
    pub target_duration: Duration,
    /// Segments listed in the playlist.
    pub window: usize,
    /// Segments held in memory (at least `window`), so a slow player can still fetch them.
    pub keep: usize,
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            target_duration: Duration::from_secs(2),
            window: 6,
            keep: 10,
        }
    }
}

/// The HLS state of one room: init segments, segments, playlist. Shared by its packager (writer)
/// and the HTTP handlers (readers).
#[derive(Debug)]
pub struct HlsRoom {
    config: HlsConfig,
    // A std Mutex: every access is a few field reads or one render, never across an `.await`.
    state: Mutex<RoomState>,
    segments: watch::Sender<u64>,
}

#[derive(Debug)]
struct RoomState {
    /// Bumped by each publisher (re)start; a packager of an older session may no longer write.
    session: u64,
    /// Init segments by version, oldest first; the last is current.
    inits: Vec<(u32, Bytes)>,
    playlist: Playlist,
    ended_at: Option<Instant>,
}

impl HlsRoom {
    /// An empty room (no init, no segments).
    pub fn new(config: HlsConfig) -> Self {
        let playlist = Playlist::new(config.target_duration, config.window, config.keep);
        Self {
            config,
            state: Mutex::new(RoomState {
                session: 0,
                inits: Vec::new(),
                playlist,
                ended_at: None,
            }),
            segments: watch::channel(0).0,
        }
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

    /// An init segment: `None` asks for the one named `init.mp4` (version 0 while a segment
    /// still needs it, else the current one).
    pub fn init(&self, version: Option<u32>) -> Option<Bytes> {
        let state = self.state();
        let find = |v: u32| state.inits.iter().find(|(n, _)| *n == v).map(|(_, b)| b);
        match version {
            Some(v) => find(v).cloned(),
            None => find(0).or(state.inits.last().map(|(_, b)| b)).cloned(),
        }
    }

    /// A held segment by the number in its URI.
    pub fn segment(&self, name: u64) -> Option<Bytes> {
        self.state().playlist.segment(name).map(|s| s.data.clone())
    }

    /// True once the publisher has gone (and none restarted the room).
    pub fn is_ended(&self) -> bool {
        self.state().playlist.is_ended()
    }

    /// Number of segments published so far; changes on each new segment (for blocking reloads).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.segments.subscribe()
    }

    /// Installs the init segment of a (new) catalog for `session`; returns its version.
    pub fn set_init(&self, session: u64, init: Bytes) -> Option<u32> {
        let mut state = self.state();
        if state.session != session {
            return None;
        }
        if let Some((v, current)) = state.inits.last() {
            if *current == init {
                return Some(*v);
            }
        }
        let version = state.inits.last().map_or(0, |(v, _)| v + 1);
        state.inits.push((version, init));
        Some(version)
    }

    /// Publishes a segment of `session`, decoded by the current init segment.
    pub fn publish(&self, session: u64, segment: Segment) -> bool {
        let mut state = self.state();
        let Some(init_version) = state.inits.last().map(|(v, _)| *v) else {
            return false;
        };
        if state.session != session {
            return false;
        }
        state.playlist.push(segment, init_version);
        // Drop init versions no held segment needs any more (the current one always stays).
        let oldest = state.playlist.oldest_init_version().unwrap_or(init_version);
        state.inits.retain(|(v, _)| *v >= oldest);
        drop(state);
        self.segments.send_modify(|n| *n += 1);
        true
    }

    /// The publisher of `session` has gone at `now`: the playlist gets `#EXT-X-ENDLIST`.
    pub fn end(&self, session: u64, now: Instant) {
        let mut state = self.state();
        if state.session == session {
            state.playlist.end();
            state.ended_at = Some(now);
        }
        drop(state);
        self.segments.send_modify(|_| {});
    }

    /// Starts a new publisher session: the next segment is a discontinuity, numbering goes on.
    fn restart(&self) -> u64 {
        let mut state = self.state();
        state.session += 1;
        state.ended_at = None;
        state.playlist.restart();
        state.session
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
    // A std Mutex held only for map lookups and inserts.
    rooms: Mutex<HashMap<RoomKey, Arc<HlsRoom>>>,
}

impl HlsRegistry {
    /// An empty registry whose rooms use `config`.
    pub fn new(config: HlsConfig) -> Self {
        Self {
            config,
            rooms: Mutex::new(HashMap::new()),
        }
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<RoomKey, Arc<HlsRoom>>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The room `app/room`, if it is packaged here.
    pub fn room(&self, app: &AppName, room: &RoomName) -> Option<Arc<HlsRoom>> {
        self.rooms().get(&(app.clone(), room.clone())).cloned()
    }

    /// A publisher started `app/room`: returns its room, reusing the existing one after a
    /// reconnect (numbering continues, the next segment is a discontinuity). Spawn
    /// [`run_packager`] for it with `room.session()` read right after this call: the packager
    /// belongs to the session started here, and a stale one can no longer write.
    pub fn start(&self, app: &AppName, room: &RoomName) -> Arc<HlsRoom> {
        let room = self
            .rooms()
            .entry((app.clone(), room.clone()))
            .or_insert_with(|| Arc::new(HlsRoom::new(self.config.clone())))
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
/// the init segment when the catalog changes, cuts and publishes segments, and marks the room
/// ended on `Closed`. Lost frames (`Lagged`) drop the open segment and resume at the next
/// keyframe with a discontinuity.
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
            Err(RecvError::Lagged(lost)) => {
                tracing::warn!(lost, "packager fell behind; resyncing on the next keyframe");
                if let Some(segmenter) = packager.segmenter.as_mut() {
                    segmenter.resync();
                }
            }
            Err(RecvError::Closed) => {
                packager.flush();
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
}

impl Packager {
    fn new(room: Arc<HlsRoom>, session: u64) -> Self {
        Self {
            room,
            session,
            catalog: Arc::new(Vec::new()),
            segmenter: None,
        }
    }

    /// Follows catalog changes: finishes the old run, installs a new init segment.
    fn catalog(&mut self, tracks: Arc<Vec<TrackInfo>>) {
        if Arc::ptr_eq(&tracks, &self.catalog) || *tracks == *self.catalog {
            self.catalog = tracks;
            return;
        }
        self.flush();
        let had_segmenter = self.segmenter.is_some();
        self.catalog = tracks.clone();
        self.segmenter = None;
        if tracks.is_empty() {
            return;
        }
        match cmaf::init_segment(&tracks) {
            Ok(init) => {
                self.room.set_init(self.session, init);
                let mut segmenter =
                    Segmenter::new(tracks.to_vec(), self.room.config.target_duration);
                if had_segmenter {
                    segmenter.mark_discontinuity();
                }
                self.segmenter = Some(segmenter);
            }
            Err(error) => tracing::warn!(%error, "cannot package this catalog"),
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
            tracing::warn!(%error, "segment lost");
        }
        let Some(segmenter) = self.segmenter.as_mut() else {
            return;
        };
        while let Some(segment) = segmenter.poll_segment() {
            self.room.publish(self.session, segment);
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

    #[tokio::test]
    async fn packager_publishes_segments_and_ends() {
        let registry = HlsRegistry::new(HlsConfig::default());
        let (app, name) = names();
        let room = registry.start(&app, &name);
        let mut media = RoomMedia::new();
        media.set_tracks(vec![video(), audio()]);
        let task = tokio::spawn(run_packager(
            media.subscribe(),
            room.clone(),
            room.session(),
        ));
        for frame in stream(7, 25) {
            media.push(frame);
        }
        drop(media);
        task.await.unwrap();
        assert!(room.is_ended());
        let text = String::from_utf8(room.playlist().to_vec()).unwrap();
        assert!(text.contains("seg-0.m4s\n"), "{text}");
        assert!(
            text.contains("seg-6.m4s\n#EXT-X-ENDLIST\n"),
            "flushed last segment: {text}"
        );
        assert!(room.init(None).is_some());
        assert!(room.segment(2).is_some());
        assert!(room.segment(1).is_none());
        assert_eq!(*room.subscribe().borrow(), 4);
    }

    #[tokio::test]
    async fn reconnect_continues_numbering_with_a_discontinuity() {
        let registry = HlsRegistry::new(HlsConfig::default());
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
            for frame in stream(5, 25) {
                media.push(frame);
            }
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
                "seg-2.m4s",
                "seg-4.m4s",
                "seg-5.m4s",
                "seg-7.m4s",
                "seg-9.m4s"
            ]
        );
        assert_eq!(text.matches("#EXT-X-DISCONTINUITY\n").count(), 1, "{text}");
        assert_eq!(
            text.matches("#EXT-X-MAP").count(),
            1,
            "same catalog, same init: {text}"
        );
    }

    #[tokio::test]
    async fn lagging_packager_resyncs_with_a_discontinuity() {
        let registry = HlsRegistry::new(HlsConfig::default());
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
        for frame in &frames[..split] {
            media.push(frame.clone());
        }
        let two_segments = published.wait_for(|n| *n >= 2);
        tokio::time::timeout(Duration::from_secs(5), two_segments)
            .await
            .expect("two segments within 5 s")
            .unwrap();
        // ~2400 frames at once on this single-threaded runtime: more than the channel holds, and
        // a gap (~5 s) too short to count as a timestamp jump
        for frame in &frames[split..] {
            media.push(frame.clone());
        }
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
        let registry = HlsRegistry::new(HlsConfig::default());
        let (app, name) = names();
        let room = registry.start(&app, &name);
        let old = room.session();
        assert_eq!(room.set_init(old, Bytes::from_static(b"init")), Some(0));
        registry.start(&app, &name);
        let seg = Segment {
            msn: 0,
            duration_secs: 2.0,
            discontinuity: false,
            data: Bytes::new(),
        };
        assert!(!room.publish(old, seg));
        room.end(old, Instant::now());
        assert!(
            !room.is_ended(),
            "the old publisher's end does not end the new session"
        );
    }

    #[test]
    fn sweep_removes_rooms_ended_long_enough() {
        let registry = HlsRegistry::new(HlsConfig::default());
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
