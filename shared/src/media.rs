//! The media model shared by every ingest and every packager.
//!
//! A room carries tracks; a track carries frames (access units); frames are grouped into groups
//! that start at a video keyframe. Payloads are `Bytes`: fan-out clones the handle, never the data.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

/// Index of a track inside its room.
pub type TrackId = u32;

/// Codec and its decoder configuration, as needed to build an init segment or an SDP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "codec", rename_all = "lowercase")]
pub enum CodecConfig {
    /// H.264; `avcc` is the AVCDecoderConfigurationRecord; frames are AVCC (length-prefixed NALUs).
    H264 {
        #[serde(with = "bytes_hex")]
        avcc: Bytes,
        width: u16,
        height: u16,
    },
    /// AAC; `asc` is the AudioSpecificConfig; frames are raw AAC access units (no ADTS).
    Aac {
        #[serde(with = "bytes_hex")]
        asc: Bytes,
        sample_rate: u32,
        channels: u8,
    },
    /// Motion JPEG: every frame is one baseline or progressive JPEG picture (SOI..EOI).
    Jpeg { width: u16, height: u16 },
    /// Opus (from WebRTC publishers): every frame is one Opus packet; 48 kHz timescale.
    Opus { channels: u8 },
}

impl CodecConfig {
    /// Short codec name for APIs and logs.
    pub fn name(&self) -> &'static str {
        match self {
            CodecConfig::H264 { .. } => "h264",
            CodecConfig::Aac { .. } => "aac",
            CodecConfig::Jpeg { .. } => "jpeg",
            CodecConfig::Opus { .. } => "opus",
        }
    }

    /// True for video codecs.
    pub fn is_video(&self) -> bool {
        matches!(self, CodecConfig::H264 { .. } | CodecConfig::Jpeg { .. })
    }

    /// True for codecs the CMAF/HLS packager carries.
    pub fn is_hls(&self) -> bool {
        matches!(
            self,
            CodecConfig::H264 { .. } | CodecConfig::Aac { .. } | CodecConfig::Opus { .. }
        )
    }
}

/// The tracks of a catalog that go into HLS: the H.264 video and one audio track, AAC when
/// there is one (an RTMP room's transcoded Opus stays out of HLS), else Opus (a WHIP room).
pub fn hls_tracks(tracks: &[TrackInfo]) -> Vec<TrackInfo> {
    let aac = tracks
        .iter()
        .find(|t| matches!(t.codec, CodecConfig::Aac { .. }));
    let audio = aac.or_else(|| {
        tracks
            .iter()
            .find(|t| matches!(t.codec, CodecConfig::Opus { .. }))
    });
    tracks
        .iter()
        .filter(|t| matches!(t.codec, CodecConfig::H264 { .. }))
        .take(1)
        .chain(audio)
        .cloned()
        .collect()
}

/// One elementary stream of a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    pub id: TrackId,
    /// Ticks per second of this track's `pts`/`dts` (90 kHz for video, the sample rate for audio).
    pub timescale: u32,
    pub codec: CodecConfig,
}

/// One access unit of one track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub track: TrackId,
    /// Sequence number of the group this frame belongs to (assigned by the origin, see [`RoomMedia::push`]).
    pub group: u64,
    /// Decode timestamp in the track's timescale.
    pub dts: i64,
    /// Presentation timestamp in the track's timescale.
    pub pts: i64,
    pub keyframe: bool,
    pub data: Bytes,
}

/// What travels from a room's producer to its consumers.
#[derive(Debug, Clone)]
enum MediaEvent {
    Frame(Frame),
    /// A frame of a complete group from before the live ones (see
    /// [`RoomMedia::push_backfill`]); only consumers that asked for it see it.
    Backfill(Frame),
    /// Frames were lost upstream; `partial`: the latest group delivered is incomplete.
    Gap {
        partial: bool,
    },
}

/// How an origin cuts a room's frames into groups.
///
/// A group is the unit of relay, late join and segmenting, so its boundaries are decided once,
/// here, by the node that takes the ingest; every other node keeps the origin's numbering. A group
/// starts at a video keyframe whose `floor(dts / target)` differs from that of the group's first
/// keyframe: one group is one HLS segment (one or more GOPs), and group numbers are consecutive,
/// so every node derives the same segment names *and* media sequence numbers from them. Rooms
/// without video cut on the same rule over the audio timeline; JPEG tracks make every frame its
/// own group (each frame decodes alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupPolicy {
    /// The segment target duration the groups follow.
    pub target: Duration,
}

impl Default for GroupPolicy {
    fn default() -> Self {
        Self {
            target: Duration::from_secs(2),
        }
    }
}

impl GroupPolicy {
    fn target_ticks(&self, timescale: u32) -> i64 {
        let ticks = self.target.as_millis() * u128::from(timescale) / 1000;
        i64::try_from(ticks).unwrap_or(i64::MAX).max(1)
    }
}

/// A latest group bigger than this is not cached for late joiners (they wait for the next one):
/// it bounds the memory one room can pin, whatever the publisher sends.
pub const MAX_CACHED_GROUP_BYTES: usize = 32 << 20;

/// Complete groups a room keeps before its newest one, at most (see
/// [`RoomMedia::keep_history`]).
pub const MAX_HISTORY_GROUPS: usize = 16;
/// Bytes of complete groups a room keeps before its newest one, at most: older groups go first.
pub const MAX_HISTORY_BYTES: usize = 48 << 20;

/// The bytes of back-fill history the rooms of a node may keep together: a room that would go
/// past it drops its own oldest groups first (so many rooms cannot pin unbounded memory).
#[derive(Debug, Clone)]
pub struct HistoryBudget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl HistoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            used: Arc::default(),
            limit,
        }
    }

    /// Bytes kept now, over every room sharing this budget.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn over(&self) -> bool {
        self.used() > self.limit
    }
}

/// The newest group of a room, kept so a new consumer starts on its keyframe at once, and (where
/// asked for) the complete groups before it, so a new subscriber can back-fill.
#[derive(Debug, Default)]
struct LatestGroup {
    group: Option<u64>,
    frames: Vec<Frame>,
    bytes: usize,
    /// The group outgrew [`MAX_CACHED_GROUP_BYTES`] or lost frames: not served to late joiners.
    overflowed: bool,
    /// Complete groups before `group`, oldest first, consecutive and ending at `group - 1`.
    history: VecDeque<(u64, Vec<Frame>, usize)>,
    history_bytes: usize,
    /// How many complete groups to keep in `history`.
    keep: usize,
    /// The node-wide bound `history` counts against.
    budget: Option<HistoryBudget>,
}

impl Drop for LatestGroup {
    fn drop(&mut self) {
        self.drop_history();
    }
}

impl LatestGroup {
    fn add(&mut self, frame: &Frame) {
        if self.group != Some(frame.group) {
            self.start(frame.group);
        }
        if self.overflowed {
            return;
        }
        self.bytes += frame.data.len();
        if self.bytes > MAX_CACHED_GROUP_BYTES {
            self.overflowed = true;
            self.frames = Vec::new();
            return;
        }
        self.frames.push(frame.clone());
    }

    /// Starts `group`: the finished group goes into the history when it is complete and
    /// follows the history; otherwise the history no longer leads up to the newest group and
    /// is dropped.
    fn start(&mut self, group: u64) {
        let frames = std::mem::take(&mut self.frames);
        let complete = self.keep > 0
            && !self.overflowed
            && !frames.is_empty()
            && self.group.is_some_and(|g| g + 1 == group);
        if complete {
            if let Some(g) = self.group {
                self.history_bytes += self.bytes;
                if let Some(b) = &self.budget {
                    b.used.fetch_add(self.bytes, Ordering::Relaxed);
                }
                self.history.push_back((g, frames, self.bytes));
            }
            while self.history.len() > self.keep
                || self.history_bytes > MAX_HISTORY_BYTES
                || self.budget.as_ref().is_some_and(HistoryBudget::over)
            {
                let Some((_, _, bytes)) = self.history.pop_front() else {
                    break;
                };
                self.history_bytes -= bytes;
                if let Some(b) = &self.budget {
                    b.used.fetch_sub(bytes, Ordering::Relaxed);
                }
            }
        } else {
            self.drop_history();
        }
        self.group = Some(group);
        self.bytes = 0;
        self.overflowed = false;
    }

    /// The last `groups` complete groups before the newest and the newest so far, in order; only
    /// the newest when it cannot be served.
    fn drop_history(&mut self) {
        if let Some(b) = &self.budget {
            b.used.fetch_sub(self.history_bytes, Ordering::Relaxed);
        }
        self.history.clear();
        self.history_bytes = 0;
    }

    fn snapshot_recent(&self, groups: usize) -> Vec<Frame> {
        if self.overflowed {
            return Vec::new();
        }
        let from = self.history.len().saturating_sub(groups);
        let mut out = Vec::new();
        for (_, frames, _) in self.history.iter().skip(from) {
            out.extend(frames.iter().cloned());
        }
        out.extend(self.frames.iter().cloned());
        out
    }
}

/// Where the producer is in its grouping.
#[derive(Debug, Default)]
struct Grouping {
    group: u64,
    started: bool,
    /// `floor(dts / target)` of the current group's first sync sample.
    bucket: Option<i64>,
}

/// The producer side of a room's media: owned by the ingest session (or, on an edge, by the relay
/// subscription). Dropping it ends the stream for every consumer.
#[derive(Debug)]
pub struct RoomMedia {
    tracks: watch::Sender<Arc<Vec<TrackInfo>>>,
    frames: broadcast::Sender<MediaEvent>,
    // A std Mutex: held for a push or a snapshot, never across an `.await`; it makes "snapshot
    // the latest group, then subscribe" atomic with respect to pushes (no gap, no duplicate).
    latest: Arc<Mutex<LatestGroup>>,
    /// The newest group number: lets a consumer wait for "something newer" without holding a
    /// channel position (so a stalled consumer retains nothing).
    newest: watch::Sender<Option<u64>>,
    /// Keyframe requests from consumers (a counter: only its changes matter).
    keyframes: Arc<watch::Sender<u64>>,
    policy: GroupPolicy,
    grouping: Grouping,
}

/// Frames a consumer may fall behind before it loses frames (and resyncs on a keyframe).
pub const ROOM_CHANNEL_CAPACITY: usize = 2048;

impl Default for RoomMedia {
    fn default() -> Self {
        Self::new()
    }
}

impl RoomMedia {
    /// A room with no tracks yet, grouped with the default [`GroupPolicy`].
    pub fn new() -> Self {
        Self::with_policy(GroupPolicy::default())
    }

    /// A room with no tracks yet, grouped with `policy`.
    pub fn with_policy(policy: GroupPolicy) -> Self {
        let (tracks, _) = watch::channel(Arc::new(Vec::new()));
        let (frames, _) = broadcast::channel(ROOM_CHANNEL_CAPACITY);
        Self {
            tracks,
            frames,
            latest: Arc::default(),
            newest: watch::channel(None).0,
            keyframes: Arc::new(watch::channel(0).0),
            policy,
            grouping: Grouping::default(),
        }
    }

    /// Publishes the track catalog (replaces the previous one).
    pub fn set_tracks(&self, tracks: Vec<TrackInfo>) {
        self.tracks.send_replace(Arc::new(tracks));
    }

    /// The current track catalog.
    pub fn tracks(&self) -> Arc<Vec<TrackInfo>> {
        self.tracks.borrow().clone()
    }

    /// Sends a frame to every consumer, numbering its group by the [`GroupPolicy`]. Frames before
    /// the first video keyframe are dropped (nobody could decode them). Returns false if dropped.
    pub fn push(&mut self, mut frame: Frame) -> bool {
        let Some(group) = self.assign_group(&frame) else {
            return false;
        };
        frame.group = group;
        self.send(frame);
        true
    }

    /// Sends a frame whose group was numbered elsewhere (by the origin, for a relayed room).
    /// Groups must arrive in order; a frame of an older group than the latest is still sent
    /// (consumers decide) but not cached.
    pub fn push_relayed(&mut self, frame: Frame) {
        self.send(frame);
    }

    /// Keeps up to `groups` (at most [`MAX_HISTORY_GROUPS`]) complete groups before the newest
    /// one, bounded by [`MAX_HISTORY_BYTES`] and by the node's `budget`, for subscribers that
    /// back-fill ([`MediaHandle::subscribe_recent`]): an origin keeps its rooms' HLS playlist
    /// window, so an edge that starts pulling a room lists the same segments as every other
    /// node at once.
    pub fn keep_history(&self, groups: usize, budget: HistoryBudget) {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        latest.drop_history();
        latest.keep = groups.min(MAX_HISTORY_GROUPS);
        latest.budget = Some(budget);
    }

    /// Sends a back-filled frame (a complete group from before the live ones, relayed in order
    /// ahead of them) to the consumers that asked for such frames
    /// ([`MediaConsumer::with_backfill`]); it is neither cached for late joiners nor counted
    /// as the newest group.
    pub fn push_backfill(&mut self, frame: Frame) {
        let _ = self.frames.send(MediaEvent::Backfill(frame));
    }

    /// Tells every consumer that frames were lost upstream: they resync on the next group, as
    /// after [`RecvError::Lagged`]. With `partial` (the latest group is incomplete), it is no
    /// longer served to late joiners; otherwise the latest complete group still is.
    pub fn push_gap(&mut self, partial: bool) {
        if partial {
            let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
            latest.overflowed = true;
            latest.frames = Vec::new();
        }
        let _ = self.frames.send(MediaEvent::Gap { partial });
    }

    fn send(&self, frame: Frame) {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        let group = frame.group;
        let newer = latest.group.is_none_or(|g| group > g);
        if latest.group.is_none_or(|g| group >= g) {
            latest.add(&frame);
        }
        // An error only means there is no consumer right now.
        let _ = self.frames.send(MediaEvent::Frame(frame));
        drop(latest);
        if newer {
            self.newest.send_replace(Some(group));
        }
    }

    fn assign_group(&mut self, frame: &Frame) -> Option<u64> {
        let tracks = self.tracks.borrow().clone();
        let info = tracks.iter().find(|t| t.id == frame.track)?;
        let has_video = tracks.iter().any(|t| t.codec.is_video());
        let sync = match info.codec {
            CodecConfig::Jpeg { .. } => {
                let g = &mut self.grouping;
                if g.started {
                    g.group += 1;
                }
                g.started = true;
                return Some(g.group);
            }
            CodecConfig::H264 { .. } => frame.keyframe,
            // Audio-only rooms cut on their first audio track only: a second (transcoded)
            // audio track lags it by a few ms and would cut every group twice.
            CodecConfig::Aac { .. } | CodecConfig::Opus { .. } => {
                !has_video
                    && tracks.iter().find(|t| !t.codec.is_video()).map(|t| t.id) == Some(info.id)
            }
        };
        let g = &mut self.grouping;
        if sync {
            let bucket = frame
                .dts
                .div_euclid(self.policy.target_ticks(info.timescale));
            if !g.started {
                g.started = true;
                g.bucket = Some(bucket);
            } else if g.bucket != Some(bucket) {
                g.group += 1;
                g.bucket = Some(bucket);
            }
        }
        g.started.then_some(g.group)
    }

    /// A new consumer; it sees frames pushed from now on.
    pub fn subscribe(&self) -> MediaConsumer {
        MediaConsumer {
            tracks: self.tracks.subscribe(),
            frames: self.frames.subscribe(),
            keyframes: self.keyframes.clone(),
            backfill: false,
        }
    }

    /// Keyframe requests of this room's consumers (WebRTC viewers' PLI/FIR, relayed): the
    /// receiver changes on each request. A producer that can make a keyframe on demand (a WHIP
    /// publisher, a relay subscription toward one) watches it and rate-limits what it forwards.
    pub fn keyframe_requests(&self) -> watch::Receiver<u64> {
        let mut rx = self.keyframes.subscribe();
        rx.mark_unchanged();
        rx
    }

    /// A handle that subscribes to this room without keeping it alive.
    pub fn handle(&self) -> MediaHandle {
        MediaHandle {
            tracks: self.tracks.subscribe(),
            frames: self.frames.downgrade(),
            latest: self.latest.clone(),
            newest: self.newest.subscribe(),
            keyframes: self.keyframes.clone(),
        }
    }

    /// Number of live consumers.
    pub fn consumers(&self) -> usize {
        self.frames.receiver_count()
    }
}

/// A way to reach a room's media that does not keep it alive: the rooms registry and the relay
/// hold these, the ingest session holds the [`RoomMedia`].
#[derive(Debug, Clone)]
pub struct MediaHandle {
    tracks: watch::Receiver<Arc<Vec<TrackInfo>>>,
    frames: broadcast::WeakSender<MediaEvent>,
    latest: Arc<Mutex<LatestGroup>>,
    newest: watch::Receiver<Option<u64>>,
    keyframes: Arc<watch::Sender<u64>>,
}

impl MediaHandle {
    /// Asks the room's producer for a keyframe (see [`RoomMedia::keyframe_requests`]).
    pub fn request_keyframe(&self) {
        self.keyframes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The current track catalog.
    pub fn tracks(&self) -> Arc<Vec<TrackInfo>> {
        self.tracks.borrow().clone()
    }

    /// Identifies the publisher session behind this handle: equal for handles of one
    /// [`RoomMedia`], different for another (a new session of the same room). Stable while any
    /// handle of it lives.
    pub fn id(&self) -> usize {
        Arc::as_ptr(&self.latest) as usize
    }

    /// True while the producer exists.
    pub fn is_live(&self) -> bool {
        self.frames.upgrade().is_some()
    }

    /// A receiver of the newest group number: `changed()` resolves when a new group starts
    /// and fails once the producer has gone. It holds no frames.
    pub fn newest_group(&self) -> watch::Receiver<Option<u64>> {
        let mut rx = self.newest.clone();
        rx.mark_unchanged();
        rx
    }

    /// The number of the newest group, if any frame was pushed.
    pub fn latest_group(&self) -> Option<u64> {
        self.latest.lock().unwrap_or_else(|e| e.into_inner()).group
    }

    /// The newest frame (for a JPEG track: the latest picture).
    pub fn latest_frame(&self) -> Option<Frame> {
        let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        latest.frames.last().cloned()
    }

    /// The newest frame of `track` in the latest group (for a JPEG track: the latest picture).
    pub fn latest_frame_of(&self, track: TrackId) -> Option<Frame> {
        let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        latest
            .frames
            .iter()
            .rev()
            .find(|f| f.track == track)
            .cloned()
    }

    /// Number of live consumers.
    pub fn consumers(&self) -> usize {
        self.frames.upgrade().map_or(0, |s| s.receiver_count())
    }

    /// A consumer of frames pushed from now on; `None` once the producer has gone.
    pub fn subscribe(&self) -> Option<MediaConsumer> {
        Some(MediaConsumer {
            tracks: self.tracks.clone(),
            frames: self.frames.upgrade()?.subscribe(),
            keyframes: self.keyframes.clone(),
            backfill: false,
        })
    }

    /// The frames of the newest group so far and a consumer of every frame after them, taken
    /// atomically (no frame lost or repeated in between); `None` once the producer has gone.
    pub fn subscribe_latest(&self) -> Option<(Vec<Frame>, MediaConsumer)> {
        self.subscribe_recent(0)
    }

    /// As [`MediaHandle::subscribe_latest`], with up to `groups` complete groups before the
    /// newest one (as many as the room keeps, see [`RoomMedia::keep_history`]) at the start.
    pub fn subscribe_recent(&self, groups: usize) -> Option<(Vec<Frame>, MediaConsumer)> {
        let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        let frames = self.frames.upgrade()?.subscribe();
        let snapshot = latest.snapshot_recent(groups);
        drop(latest);
        Some((
            snapshot,
            MediaConsumer {
                tracks: self.tracks.clone(),
                frames,
                keyframes: self.keyframes.clone(),
                backfill: false,
            },
        ))
    }
}

/// Rate-limits keyframe requests on their way to a publisher: the first one goes at once, those
/// within `min_gap` of the last one sent collapse into one sent when the gap is over. (A
/// thousand viewers losing the same packet must not make a thousand keyframes.) Sans-IO.
#[derive(Debug, Clone)]
pub struct KeyframeGate {
    min_gap: Duration,
    last: Option<std::time::Instant>,
    pending: bool,
}

impl KeyframeGate {
    /// A gate that lets at most one request through per `min_gap`.
    pub fn new(min_gap: Duration) -> Self {
        Self {
            min_gap,
            last: None,
            pending: false,
        }
    }

    /// A request arrived at `now`: true if it must be sent now (then it counts as sent);
    /// otherwise it waits for [`due`](Self::due).
    pub fn request(&mut self, now: std::time::Instant) -> bool {
        self.pending = true;
        self.poll(now)
    }

    /// Something was sent for another reason (a periodic keyframe request): it counts.
    pub fn sent(&mut self, now: std::time::Instant) {
        self.last = Some(now);
        self.pending = false;
    }

    /// When a waiting request becomes due, if one waits.
    pub fn due(&self) -> Option<std::time::Instant> {
        self.pending
            .then(|| self.last.map(|t| t + self.min_gap))
            .flatten()
    }

    /// True (and counted as sent) if a waiting request may be sent at `now`.
    pub fn poll(&mut self, now: std::time::Instant) -> bool {
        let open = self
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= self.min_gap);
        if self.pending && open {
            self.sent(now);
            return true;
        }
        false
    }
}

/// The consumer side of a room's media.
#[derive(Debug)]
pub struct MediaConsumer {
    tracks: watch::Receiver<Arc<Vec<TrackInfo>>>,
    frames: broadcast::Receiver<MediaEvent>,
    keyframes: Arc<watch::Sender<u64>>,
    /// Receives back-filled frames too.
    backfill: bool,
}

/// Why `MediaConsumer::recv` returned no frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    #[error("the publisher has gone")]
    Closed,
    #[error("consumer fell behind and lost {0} frames")]
    Lagged(u64),
    /// Frames were lost upstream. With `partial` the group being delivered is incomplete; without,
    /// whole groups went missing after a complete one.
    #[error("frames were lost upstream")]
    Gap { partial: bool },
}

impl MediaConsumer {
    /// Asks the room's producer for a keyframe (see [`RoomMedia::keyframe_requests`]).
    pub fn request_keyframe(&self) {
        self.keyframes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The current track catalog (marks it seen for [`catalog_changed`](Self::catalog_changed)).
    pub fn tracks(&mut self) -> Arc<Vec<TrackInfo>> {
        self.tracks.borrow_and_update().clone()
    }

    /// Resolves when the catalog changes after the last [`tracks`](Self::tracks); false once the
    /// producer has gone.
    pub async fn catalog_changed(&mut self) -> bool {
        self.tracks.changed().await.is_ok()
    }

    /// This consumer also receives back-filled frames ([`RoomMedia::push_backfill`]): the
    /// groups a new relay subscription gets from before the live ones, in order, ahead of them.
    /// A packager wants them (its playlist lists the same window as every other node); a live
    /// viewer does not (they would put it seconds behind).
    pub fn with_backfill(mut self) -> Self {
        self.backfill = true;
        self
    }

    /// The next frame; `Lagged` and `Gap` tell the consumer frames were lost (here or upstream)
    /// and it must resync on the next group.
    pub async fn recv(&mut self) -> Result<Frame, RecvError> {
        loop {
            return match self.frames.recv().await {
                Ok(MediaEvent::Frame(f)) => Ok(f),
                Ok(MediaEvent::Backfill(f)) if self.backfill => Ok(f),
                Ok(MediaEvent::Backfill(_)) => continue,
                Ok(MediaEvent::Gap { partial }) => Err(RecvError::Gap { partial }),
                Err(broadcast::error::RecvError::Closed) => Err(RecvError::Closed),
                Err(broadcast::error::RecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
            };
        }
    }
}

/// Codec configuration bytes in JSON (catalogs travel as JSON in relay control messages): as
/// lowercase hex.
mod bytes_hex {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(&s)
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video() -> TrackInfo {
        TrackInfo {
            id: 0,
            timescale: 90_000,
            codec: CodecConfig::H264 {
                avcc: Bytes::from_static(&[1, 2, 3]),
                width: 640,
                height: 360,
            },
        }
    }

    fn audio() -> TrackInfo {
        TrackInfo {
            id: 1,
            timescale: 48_000,
            codec: CodecConfig::Aac {
                asc: Bytes::from_static(&[0x11, 0x90]),
                sample_rate: 48_000,
                channels: 2,
            },
        }
    }

    fn frame(track: TrackId, dts: i64, keyframe: bool) -> Frame {
        Frame {
            track,
            group: 0,
            dts,
            pts: dts,
            keyframe,
            data: Bytes::from_static(b"x"),
        }
    }

    const SEC: i64 = 90_000;

    #[test]
    fn a_room_keeps_its_last_complete_groups_for_back_fill() {
        let mut room = RoomMedia::new();
        room.set_tracks(vec![video()]);
        let budget = HistoryBudget::new(usize::MAX);
        room.keep_history(3, budget.clone());
        let handle = room.handle();
        // Groups 0..=5, two frames each (a keyframe every 2 s).
        for g in 0..6 {
            room.push(frame(0, 2 * g * SEC, true));
            room.push(frame(0, 2 * g * SEC + SEC, false));
        }
        let groups = |f: &[Frame]| f.iter().map(|f| f.group).collect::<Vec<_>>();
        let (recent, _) = handle.subscribe_recent(3).unwrap();
        assert_eq!(groups(&recent), vec![2, 2, 3, 3, 4, 4, 5, 5]);
        let (fewer, _) = handle.subscribe_recent(1).unwrap();
        assert_eq!(groups(&fewer), vec![4, 4, 5, 5]);
        let (latest, _) = handle.subscribe_latest().unwrap();
        assert_eq!(groups(&latest), vec![5, 5]);
        // Frames lost: the history no longer leads up to the newest group and is dropped.
        room.push_gap(true);
        room.push(frame(0, 12 * SEC, true));
        let (after, _) = handle.subscribe_recent(3).unwrap();
        assert_eq!(groups(&after), vec![6]);
        room.push(frame(0, 14 * SEC, true));
        let (again, _) = handle.subscribe_recent(3).unwrap();
        assert_eq!(
            groups(&again),
            vec![6, 7],
            "kept again from the next complete group"
        );
        // Rooms that keep nothing (the default) serve the newest group only.
        let mut plain = RoomMedia::new();
        plain.set_tracks(vec![video()]);
        for g in 0..3 {
            plain.push(frame(0, 2 * g * SEC, true));
        }
        let (only, _) = plain.handle().subscribe_recent(3).unwrap();
        assert_eq!(groups(&only), vec![2]);
        // The node's budget counts what is kept, and gives it back.
        assert_eq!(budget.used(), 1, "group 6 (one byte) is kept");
        drop(room);
        drop(handle);
        drop((recent, fewer, latest, after, again));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn the_node_budget_bounds_what_rooms_keep_together() {
        let budget = HistoryBudget::new(4);
        let rooms: Vec<RoomMedia> = (0..2)
            .map(|_| {
                let mut room = RoomMedia::new();
                room.set_tracks(vec![video()]);
                room.keep_history(6, budget.clone());
                for g in 0..4 {
                    room.push(frame(0, 2 * g * SEC, true));
                    room.push(frame(0, 2 * g * SEC + SEC, false));
                }
                room
            })
            .collect();
        // Each room finished 3 groups of 2 bytes; together they may keep 4 bytes.
        assert!(budget.used() <= 4, "{}", budget.used());
        let kept = |r: &RoomMedia| r.handle().subscribe_recent(6).unwrap().0.len();
        assert_eq!(kept(&rooms[0]) + kept(&rooms[1]), 4 + 2 * 2);
    }

    #[tokio::test]
    async fn groups_follow_keyframes_across_the_target() {
        let mut room = RoomMedia::new();
        room.set_tracks(vec![video(), audio()]);
        let mut c = room.subscribe();
        assert!(!room.push(frame(0, 0, false)), "no keyframe yet: dropped");
        assert!(!room.push(frame(1, 0, true)), "audio before video: dropped");
        // keyframes every second, target 2 s: a group is two GOPs
        for (dts, key) in [(0, true), (SEC / 2, false), (SEC, true), (2 * SEC, true)] {
            assert!(room.push(frame(0, dts, key)));
        }
        assert!(
            room.push(frame(1, 96_000, true)),
            "audio joins the open group"
        );
        assert!(room.push(frame(0, 4 * SEC, true)));
        let mut groups = Vec::new();
        for _ in 0..6 {
            groups.push(c.recv().await.unwrap().group);
        }
        assert_eq!(groups, vec![0, 0, 0, 1, 1, 2]);
        drop(room);
        assert_eq!(c.recv().await, Err(RecvError::Closed));
    }

    #[tokio::test]
    async fn keyframe_requests_reach_the_producer_from_consumers_and_handles() {
        let room = RoomMedia::new();
        let mut requests = room.keyframe_requests();
        assert!(!requests.has_changed().unwrap(), "nothing asked yet");
        let consumer = room.subscribe();
        consumer.request_keyframe();
        consumer.request_keyframe();
        requests.changed().await.unwrap();
        assert!(!requests.has_changed().unwrap(), "requests coalesce");
        room.handle().request_keyframe();
        requests.changed().await.unwrap();
        // A consumer asking after the producer has gone is harmless.
        drop(requests);
        drop(room);
        consumer.request_keyframe();
    }

    #[test]
    fn keyframe_gate_sends_the_first_and_collapses_a_burst() {
        let t0 = std::time::Instant::now();
        let ms = Duration::from_millis;
        let mut gate = KeyframeGate::new(ms(500));
        assert!(gate.request(t0), "the first goes at once");
        assert_eq!(gate.due(), None);
        for i in 1..100 {
            assert!(!gate.request(t0 + ms(i)), "a burst waits");
        }
        assert_eq!(gate.due(), Some(t0 + ms(500)));
        assert!(!gate.poll(t0 + ms(499)));
        assert!(gate.poll(t0 + ms(500)), "one request for the whole burst");
        assert!(!gate.poll(t0 + ms(2000)), "nothing left");
        // A periodic request counts as sent: a viewer's request right after it waits.
        gate.sent(t0 + ms(3000));
        assert!(!gate.request(t0 + ms(3100)));
        assert_eq!(gate.due(), Some(t0 + ms(3500)));
    }

    #[test]
    fn hls_takes_video_and_aac_before_opus() {
        let opus = TrackInfo {
            id: 2,
            timescale: 48_000,
            codec: CodecConfig::Opus { channels: 2 },
        };
        let ids = |t: &[TrackInfo]| hls_tracks(t).iter().map(|t| t.id).collect::<Vec<_>>();
        assert_eq!(ids(&[video(), audio(), opus.clone()]), vec![0, 1]);
        assert_eq!(ids(&[video(), opus.clone()]), vec![0, 2]);
        assert_eq!(ids(&[opus]), vec![2]);
    }

    #[test]
    fn audio_only_rooms_group_on_time_and_jpeg_frames_are_groups() {
        let mut room = RoomMedia::new();
        room.set_tracks(vec![audio()]);
        let groups: Vec<u64> = [0, 47_000, 96_000, 100_000, 192_000]
            .into_iter()
            .map(|dts| {
                room.push(frame(1, dts, true));
                room.handle().latest_group().unwrap()
            })
            .collect();
        assert_eq!(groups, vec![0, 0, 1, 1, 2]);

        // AAC plus its transcoded Opus (a few ms behind): only the first audio track cuts.
        let mut room = RoomMedia::new();
        let opus = TrackInfo {
            id: 2,
            timescale: 48_000,
            codec: CodecConfig::Opus { channels: 2 },
        };
        room.set_tracks(vec![audio(), opus]);
        let groups: Vec<u64> = [(1, 0), (2, 0), (1, 96_000), (2, 95_040), (2, 96_000)]
            .into_iter()
            .map(|(track, dts)| {
                room.push(frame(track, dts, true));
                room.handle().latest_group().unwrap()
            })
            .collect();
        assert_eq!(groups, vec![0, 0, 1, 1, 1]);

        let mut room = RoomMedia::new();
        room.set_tracks(vec![TrackInfo {
            id: 0,
            timescale: 90_000,
            codec: CodecConfig::Jpeg {
                width: 64,
                height: 48,
            },
        }]);
        for i in 0..3 {
            room.push(frame(0, i * 9000, true));
        }
        let handle = room.handle();
        assert_eq!(handle.latest_group(), Some(2));
        assert_eq!(handle.latest_frame().unwrap().dts, 18_000);
    }

    #[tokio::test]
    async fn late_joiner_gets_the_latest_group_then_live_frames() {
        let mut room = RoomMedia::new();
        room.set_tracks(vec![video()]);
        let handle = room.handle();
        for i in 0..5 {
            room.push(frame(0, i * SEC, true));
        }
        room.push(frame(0, 5 * SEC, false));
        let (snapshot, mut live) = handle.subscribe_latest().unwrap();
        let dts: Vec<i64> = snapshot.iter().map(|f| f.dts).collect();
        assert_eq!(
            dts,
            vec![4 * SEC, 5 * SEC],
            "group 2 so far, from its keyframe"
        );
        assert!(snapshot[0].keyframe);
        room.push(frame(0, 6 * SEC, true));
        let next = live.recv().await.unwrap();
        assert_eq!((next.dts, next.group), (6 * SEC, 3));
        drop(room);
        assert!(!handle.is_live());
        assert!(handle.subscribe_latest().is_none());
        assert_eq!(live.recv().await, Err(RecvError::Closed));
    }

    #[test]
    fn an_oversized_group_is_not_cached() {
        let mut room = RoomMedia::new();
        room.set_tracks(vec![video()]);
        let big = Bytes::from(vec![0u8; MAX_CACHED_GROUP_BYTES / 2 + 1]);
        for i in 0..2 {
            let mut f = frame(0, i, i == 0);
            f.data = big.clone();
            room.push(f);
        }
        let (snapshot, _) = room.handle().subscribe_latest().unwrap();
        assert!(
            snapshot.is_empty(),
            "a late joiner waits for the next group"
        );
        room.push(frame(0, 3 * SEC, true));
        assert_eq!(room.handle().subscribe_latest().unwrap().0.len(), 1);
    }

    #[tokio::test]
    async fn relayed_frames_keep_their_group_numbers() {
        let mut room = RoomMedia::new();
        room.set_tracks(vec![video()]);
        let mut c = room.subscribe();
        let mut f = frame(0, 0, true);
        f.group = 41;
        room.push_relayed(f);
        assert_eq!(c.recv().await.unwrap().group, 41);
        assert_eq!(room.handle().latest_group(), Some(41));
    }

    #[tokio::test]
    async fn consumers_see_catalog_changes() {
        let room = RoomMedia::new();
        let mut c = room.subscribe();
        assert!(c.tracks().is_empty());
        room.set_tracks(vec![video()]);
        assert!(c.catalog_changed().await);
        assert_eq!(c.tracks().len(), 1);
        drop(room);
        assert!(!c.catalog_changed().await);
    }

    #[test]
    fn codec_config_serde_round_trip() {
        let t = video();
        let s = serde_json::to_string(&t).unwrap();
        assert!(s.contains("\"codec\":\"h264\""));
        let back: TrackInfo = serde_json::from_str(&s).unwrap();
        assert_eq!(back, t);
        let j = CodecConfig::Jpeg {
            width: 640,
            height: 480,
        };
        let s = serde_json::to_string(&j).unwrap();
        assert_eq!(s, r#"{"codec":"jpeg","width":640,"height":480}"#);
        assert!(j.is_video() && !j.is_hls());
    }
}
