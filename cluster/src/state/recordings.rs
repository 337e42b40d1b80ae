//! Recordings in the replicated state: each app's storage (an S3 bucket), its recording mode,
//! and the VOD index: every recording with its parts, the S3 multipart upload of each part and
//! the byte layout of what has been uploaded (enough to complete an upload another origin began,
//! and to list a part as an HLS VOD).
//!
//! A recording is made of parts: one per stretch of media recorded by one origin with one init
//! segment. A part is one fragmented MP4 object (`init` then fragments), uploaded with S3
//! multipart while it is recorded; the S3 parts it has so far are listed here as they land.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use streamhub_shared::{AppName, RoomName};

use super::{exists, not_found, CommandResponse};

/// Recordings listed per app at most: past it, a new recording is refused until old ones are
/// deleted (the index lives in every replica).
pub const MAX_RECORDINGS_PER_APP: usize = 10_000;
/// Parts of one recording (a room that moves or changes codecs starts a part).
pub const MAX_PARTS: usize = 256;
/// S3 parts of one recording part (S3's own limit).
pub const MAX_UPLOADED: usize = 10_000;
/// Fragments listed per uploaded S3 part.
pub const MAX_FRAGMENTS_PER_UPLOAD: usize = 4_096;

/// Where an app's recordings go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// `https://s3.eu-west-1.amazonaws.com`, `http://127.0.0.1:9000`, …
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Prepended to every object key (no leading slash).
    #[serde(default)]
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), as most self-hosted servers need.
    #[serde(default)]
    pub path_style: bool,
    pub access_key_id: String,
    /// Sealed with the cluster key (`enc1:…`); never returned by the API.
    pub secret_access_key: String,
    /// Sealed with the cluster key, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
}

/// Whether an app records every room by itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordMode {
    /// Only rooms started by hand or at go-live with `startRecording`.
    #[default]
    Off,
    /// Every room, from its first publish.
    Always,
}

/// Where a recording is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordingState {
    /// Media is being recorded (and uploaded as it comes).
    Recording,
    /// Recording ended; the spooled rest is being uploaded.
    Uploading,
    /// Every part is uploaded and complete.
    Ready,
    /// Some media is missing (an origin died, a part could not be finished): what was uploaded
    /// plays.
    Partial,
    /// Nothing playable (see `reason`).
    Failed,
}

impl RecordingState {
    /// Whether the state ends a recording by itself (`partial` does once the recording is
    /// stopped: before that, the room may come back and continue it).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Ready | Self::Failed)
    }
}

/// One S3 part of a recording part, as uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Uploaded {
    /// The S3 part number (1-based, in order).
    pub number: u32,
    pub etag: String,
    pub bytes: u64,
    /// The fragments it holds, in order: `[duration in ms, size in bytes]` (the first S3 part
    /// starts with the init segment, see [`RecordingPart::init_size`]).
    pub fragments: Vec<[u32; 2]>,
}

/// Where a recording part is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartState {
    /// Being recorded or uploaded by its node.
    Open,
    /// Its object is complete in the bucket.
    Complete,
    /// Its object holds only what was uploaded before its node stopped.
    Partial,
    /// Nothing of it is playable.
    Failed,
}

/// A stretch of a recording made by one origin with one init segment: one MP4 object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordingPart {
    /// 0, 1, … within the recording.
    pub index: u32,
    /// The origin recording it.
    pub node: String,
    /// The object key in the bucket.
    pub key: String,
    /// The S3 multipart upload, until it is completed or aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    pub state: PartState,
    /// Bytes of the init segment at the start of the object.
    pub init_size: u32,
    /// The codecs, e.g. `["avc1.42c01f", "mp4a.40.2"]`.
    pub tracks: Vec<String>,
    pub started_at_ms: u64,
    #[serde(default)]
    pub uploaded: Vec<Uploaded>,
    /// For the spooled remainder of a part whose node stopped (its upload was completed by
    /// another origin with what had landed): the index of that part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continues: Option<u32>,
}

impl RecordingPart {
    /// The media duration uploaded, in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.uploaded
            .iter()
            .flat_map(|u| &u.fragments)
            .map(|f| u64::from(f[0]))
            .sum()
    }

    /// The bytes uploaded.
    pub fn bytes(&self) -> u64 {
        self.uploaded.iter().map(|u| u.bytes).sum()
    }
}

/// A recording of a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recording {
    pub id: String,
    pub app: AppName,
    pub room: RoomName,
    pub state: RecordingState,
    pub started_at_ms: u64,
    /// When recording stopped (by hand, or the room ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at_ms: Option<u64>,
    /// Why it is `partial` or `failed`, or what is wrong while it goes on (S3 unreachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub parts: Vec<RecordingPart>,
}

impl Recording {
    pub fn duration_ms(&self) -> u64 {
        self.parts.iter().map(RecordingPart::duration_ms).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(RecordingPart::bytes).sum()
    }

    /// Whether media still goes into it: it is recording, or it is `partial` because the
    /// origin recording it stopped and the room may come back to continue it.
    pub fn is_recording(&self) -> bool {
        self.stopped_at_ms.is_none()
            && matches!(
                self.state,
                RecordingState::Recording | RecordingState::Partial
            )
    }

    /// Whether it will not change any more (but for the spooled remainder of a part whose
    /// origin stopped, added as a part of its own).
    pub fn is_settled(&self) -> bool {
        self.state.is_final()
            || (self.state == RecordingState::Partial && self.stopped_at_ms.is_some())
    }

    /// The parts with an object in the bucket, in media order (a remainder uploaded after a
    /// restart plays before the part that continued the room on another origin).
    pub fn playable_parts(&self) -> Vec<&RecordingPart> {
        let mut parts: Vec<&RecordingPart> = self
            .parts
            .iter()
            .filter(|p| {
                matches!(p.state, PartState::Complete | PartState::Partial)
                    && !p.uploaded.is_empty()
            })
            .collect();
        parts.sort_by_key(|p| (p.started_at_ms, p.index));
        parts
    }

    /// What the recording's parts make it once nothing more is uploaded: `None` while a part
    /// is still open. `lost` says media was lost before it reached the spool.
    pub fn outcome(&self, lost: bool) -> Option<(RecordingState, Option<String>)> {
        if self.parts.iter().any(|p| p.state == PartState::Open) {
            return None;
        }
        let playable = !self.playable_parts().is_empty();
        let whole = self.parts.iter().all(|p| p.state == PartState::Complete);
        Some(if !playable {
            let why = if self.parts.is_empty() {
                "no media was recorded".to_string()
            } else {
                self.reason
                    .clone()
                    .unwrap_or_else(|| "no part was uploaded".into())
            };
            (RecordingState::Failed, Some(why))
        } else if whole && !lost && self.reason.is_none() {
            (RecordingState::Ready, None)
        } else {
            let why = self
                .reason
                .clone()
                .unwrap_or_else(|| "some media was lost".into());
            (RecordingState::Partial, Some(why))
        })
    }
}

/// A change to a recording (see [`super::Command::Recording`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum RecordingChange {
    /// A new recording of `app/room` (refused while another records the room, or past the
    /// app's recording-hours quota).
    Start {
        app: AppName,
        room: RoomName,
        at_ms: u64,
    },
    /// No more media goes into it: its parts finish uploading.
    Stop {
        at_ms: u64,
    },
    /// An origin starts a part (its upload begun).
    OpenPart(RecordingPart),
    /// An S3 part of part `index` landed.
    Uploaded {
        index: u32,
        uploaded: Uploaded,
    },
    /// Part `index` is finished: its upload completed (`Complete`, `Partial`) or abandoned
    /// (`Failed`).
    ClosePart {
        index: u32,
        state: PartState,
    },
    /// The recording's state (and what is wrong, if anything).
    SetState {
        state: RecordingState,
        reason: Option<String>,
    },
    /// What is wrong now (or nothing), without changing the state.
    SetReason {
        reason: Option<String>,
    },
    Delete,
}

/// The recordings of every app, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recordings {
    #[serde(default)]
    pub recordings: BTreeMap<String, Recording>,
}

/// Milliseconds in the 30-day month the recording-hours quota counts over.
pub const QUOTA_MONTH_MS: u64 = 30 * 24 * 3600 * 1000;

impl Recordings {
    /// The recording that records `app/room` now, if any.
    pub fn active(&self, app: &AppName, room: &RoomName) -> Option<&Recording> {
        self.recordings
            .values()
            .find(|r| &r.app == app && &r.room == room && r.is_recording())
    }

    /// Milliseconds of media `app` recorded in the 30 days before `at_ms`.
    pub fn recorded_ms(&self, app: &AppName, at_ms: u64) -> u64 {
        let since = at_ms.saturating_sub(QUOTA_MONTH_MS);
        self.recordings
            .values()
            .filter(|r| &r.app == app && r.started_at_ms >= since)
            .map(Recording::duration_ms)
            .sum()
    }

    /// Applies `change` to recording `id`; `hours` is the app's recording-hours quota.
    pub(super) fn apply(
        &mut self,
        id: &str,
        change: &RecordingChange,
        app_exists: bool,
        hours: Option<u64>,
    ) -> CommandResponse {
        if let RecordingChange::Start { app, room, at_ms } = change {
            if !app_exists {
                return not_found(format!("app {app}"));
            }
            if self.recordings.contains_key(id) {
                return exists(format!("recording {id}"));
            }
            if let Some(r) = self.active(app, room) {
                return exists(format!("recording {}", r.id));
            }
            let count = self.recordings.values().filter(|r| &r.app == app).count();
            if count >= MAX_RECORDINGS_PER_APP {
                return refused(format!(
                    "app {app} has {count} recordings: delete some to record more"
                ));
            }
            if let Some(hours) = hours {
                let used = self.recorded_ms(app, *at_ms);
                if used >= hours.saturating_mul(3_600_000) {
                    return refused(format!(
                        "quota: app {app} recorded {:.1} of {hours} hours this month",
                        used as f64 / 3_600_000.0
                    ));
                }
            }
            self.recordings.insert(
                id.to_string(),
                Recording {
                    id: id.to_string(),
                    app: app.clone(),
                    room: room.clone(),
                    state: RecordingState::Recording,
                    started_at_ms: *at_ms,
                    stopped_at_ms: None,
                    reason: None,
                    parts: Vec::new(),
                },
            );
            return CommandResponse::Ok;
        }
        let Some(rec) = self.recordings.get_mut(id) else {
            return not_found(format!("recording {id}"));
        };
        match change {
            RecordingChange::Start { .. } => unreachable!("handled above"),
            RecordingChange::Stop { at_ms } => {
                if rec.stopped_at_ms.is_none() {
                    rec.stopped_at_ms = Some(*at_ms);
                    // Settled again once its open parts are done.
                    if matches!(
                        rec.state,
                        RecordingState::Recording | RecordingState::Partial
                    ) {
                        rec.state = RecordingState::Uploading;
                    }
                }
            }
            RecordingChange::OpenPart(part) => {
                if rec.state.is_final() {
                    return refused(format!("recording {id} is {:?}", rec.state));
                }
                if part.continues.is_none() && !rec.is_recording() {
                    return refused(format!("recording {id} is stopped"));
                }
                if rec.parts.len() >= MAX_PARTS {
                    return refused(format!("recording {id} has {MAX_PARTS} parts"));
                }
                if rec.parts.iter().any(|p| p.index == part.index) {
                    return exists(format!("part {} of recording {id}", part.index));
                }
                if part.continues.is_none() && rec.state == RecordingState::Partial {
                    // The room came back: the recording goes on (it settles `partial`).
                    rec.state = RecordingState::Recording;
                }
                rec.parts.push(part.clone());
            }
            RecordingChange::Uploaded { index, uploaded } => {
                let Some(part) = rec.parts.iter_mut().find(|p| p.index == *index) else {
                    return not_found(format!("part {index} of recording {id}"));
                };
                if part.uploaded.len() >= MAX_UPLOADED
                    || uploaded.fragments.len() > MAX_FRAGMENTS_PER_UPLOAD
                {
                    return refused(format!("part {index} of recording {id} is full"));
                }
                if part.uploaded.iter().any(|u| u.number == uploaded.number) {
                    return exists(format!("S3 part {} of {id}/{index}", uploaded.number));
                }
                part.uploaded.push(uploaded.clone());
            }
            RecordingChange::ClosePart { index, state } => {
                let Some(part) = rec.parts.iter_mut().find(|p| p.index == *index) else {
                    return not_found(format!("part {index} of recording {id}"));
                };
                part.state = *state;
                part.upload_id = None;
            }
            RecordingChange::SetState { state, reason } => {
                rec.state = *state;
                rec.reason.clone_from(reason);
                if state.is_final() && rec.stopped_at_ms.is_none() {
                    rec.stopped_at_ms = Some(rec.started_at_ms + rec.duration_ms());
                }
            }
            RecordingChange::SetReason { reason } => rec.reason.clone_from(reason),
            RecordingChange::Delete => {
                self.recordings.remove(id);
            }
        }
        CommandResponse::Ok
    }

    /// Forgets the recordings of a deleted app (its objects stay in its bucket).
    pub(super) fn forget_app(&mut self, app: &AppName) {
        self.recordings.retain(|_, r| &r.app != app);
    }
}

fn refused(why: String) -> CommandResponse {
    CommandResponse::Refused { why }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> (AppName, RoomName) {
        (AppName::new("a").unwrap(), RoomName::new("r").unwrap())
    }

    fn part(index: u32) -> RecordingPart {
        RecordingPart {
            index,
            node: "o1".into(),
            key: format!("a/r/rec/part-{index}.mp4"),
            upload_id: Some("u".into()),
            state: PartState::Open,
            init_size: 700,
            tracks: vec!["avc1.42c01f".into()],
            started_at_ms: 0,
            uploaded: Vec::new(),
            continues: None,
        }
    }

    fn landed(index: u32, number: u32) -> RecordingChange {
        RecordingChange::Uploaded {
            index,
            uploaded: Uploaded {
                number,
                etag: "e".into(),
                bytes: 5,
                fragments: vec![[2000, 5]],
            },
        }
    }

    fn close(index: u32, state: PartState) -> RecordingChange {
        RecordingChange::ClosePart { index, state }
    }

    #[test]
    fn a_dead_origins_part_is_partial_and_the_room_continues_the_recording() {
        let (app, room) = names();
        let mut r = Recordings::default();
        let start = RecordingChange::Start {
            app: app.clone(),
            room: room.clone(),
            at_ms: 0,
        };
        r.apply("r1", &start, true, None);
        r.apply("r1", &RecordingChange::OpenPart(part(0)), true, None);
        r.apply("r1", &landed(0, 1), true, None);
        assert_eq!(r.recordings["r1"].outcome(false), None, "a part is open");
        // The origin died: another completed its upload with what had landed.
        r.apply("r1", &close(0, PartState::Partial), true, None);
        let partial = RecordingChange::SetState {
            state: RecordingState::Partial,
            reason: Some("o1 stopped".into()),
        };
        assert_eq!(r.apply("r1", &partial, true, None), CommandResponse::Ok);
        let rec = &r.recordings["r1"];
        assert!(
            rec.is_recording() && !rec.is_settled(),
            "the room may come back"
        );
        assert_eq!(r.active(&app, &room).map(|r| r.id.as_str()), Some("r1"));
        // The spooled remainder, uploaded after the restart, plays before the room's next part.
        let mut remainder = part(1);
        remainder.continues = Some(0);
        remainder.started_at_ms = 2000;
        r.apply("r1", &RecordingChange::OpenPart(remainder), true, None);
        assert_eq!(r.recordings["r1"].state, RecordingState::Partial);
        let mut next = part(2);
        next.node = "o2".into();
        next.started_at_ms = 1000;
        r.apply("r1", &RecordingChange::OpenPart(next), true, None);
        assert_eq!(r.recordings["r1"].state, RecordingState::Recording);
        for i in [1, 2] {
            r.apply("r1", &landed(i, 1), true, None);
            r.apply("r1", &close(i, PartState::Complete), true, None);
        }
        let order: Vec<u32> = r.recordings["r1"]
            .playable_parts()
            .iter()
            .map(|p| p.index)
            .collect();
        assert_eq!(order, vec![0, 2, 1], "by the time each part's media starts");
        r.apply("r1", &RecordingChange::Stop { at_ms: 9 }, true, None);
        let (state, _) = r.recordings["r1"].outcome(false).unwrap();
        assert_eq!(state, RecordingState::Partial, "part 0 lost its tail");
        // Stopped: only a remainder may still be added.
        assert!(matches!(
            r.apply("r1", &RecordingChange::OpenPart(part(3)), true, None),
            CommandResponse::Refused { .. }
        ));
    }

    #[test]
    fn outcome_of_whole_and_empty_recordings() {
        let (app, _) = names();
        let mut r = Recordings::default();
        let start = |id: &str, r: &mut Recordings| {
            let change = RecordingChange::Start {
                app: app.clone(),
                room: RoomName::new(id).unwrap(),
                at_ms: 0,
            };
            r.apply(id, &change, true, None);
        };
        start("whole", &mut r);
        r.apply("whole", &RecordingChange::OpenPart(part(0)), true, None);
        r.apply("whole", &landed(0, 1), true, None);
        r.apply("whole", &close(0, PartState::Complete), true, None);
        assert_eq!(
            r.recordings["whole"].outcome(false),
            Some((RecordingState::Ready, None))
        );
        assert_eq!(
            r.recordings["whole"].outcome(true).map(|o| o.0),
            Some(RecordingState::Partial),
            "segments lost before the spool"
        );
        start("empty", &mut r);
        assert_eq!(
            r.recordings["empty"].outcome(false).map(|o| o.0),
            Some(RecordingState::Failed)
        );
    }

    #[test]
    fn one_active_recording_per_room_and_the_hours_quota() {
        let (app, room) = names();
        let mut r = Recordings::default();
        let start = |at_ms| RecordingChange::Start {
            app: app.clone(),
            room: room.clone(),
            at_ms,
        };
        assert_eq!(r.apply("r1", &start(0), true, Some(1)), CommandResponse::Ok);
        assert!(matches!(
            r.apply("r2", &start(0), true, Some(1)),
            CommandResponse::Exists { .. }
        ));
        assert!(matches!(
            r.apply("r2", &start(0), false, None),
            CommandResponse::NotFound { .. }
        ));
        r.apply("r1", &RecordingChange::OpenPart(part(0)), true, None);
        let hour = Uploaded {
            number: 1,
            etag: "e".into(),
            bytes: 10,
            fragments: vec![[3_600_000, 10]],
        };
        r.apply(
            "r1",
            &RecordingChange::Uploaded {
                index: 0,
                uploaded: hour,
            },
            true,
            None,
        );
        r.apply("r1", &RecordingChange::Stop { at_ms: 5 }, true, None);
        assert_eq!(r.recordings["r1"].state, RecordingState::Uploading);
        assert_eq!(r.recordings["r1"].duration_ms(), 3_600_000);
        // An hour recorded this month: a quota of one hour refuses the next one.
        assert!(matches!(
            r.apply("r2", &start(10), true, Some(1)),
            CommandResponse::Refused { .. }
        ));
        assert_eq!(
            r.apply("r2", &start(10), true, Some(2)),
            CommandResponse::Ok
        );
        // A month later the hour no longer counts.
        r.apply("r2", &RecordingChange::Stop { at_ms: 11 }, true, None);
        assert_eq!(
            r.apply("r3", &start(QUOTA_MONTH_MS + 1), true, Some(1)),
            CommandResponse::Ok
        );
    }

    #[test]
    fn parts_and_uploads_are_listed_once() {
        let (app, room) = names();
        let mut r = Recordings::default();
        let start = RecordingChange::Start {
            app,
            room,
            at_ms: 0,
        };
        r.apply("r1", &start, true, None);
        assert_eq!(
            r.apply("r1", &RecordingChange::OpenPart(part(0)), true, None),
            CommandResponse::Ok
        );
        assert!(matches!(
            r.apply("r1", &RecordingChange::OpenPart(part(0)), true, None),
            CommandResponse::Exists { .. }
        ));
        let up = RecordingChange::Uploaded {
            index: 0,
            uploaded: Uploaded {
                number: 1,
                etag: "e".into(),
                bytes: 5,
                fragments: vec![[2000, 3], [2000, 2]],
            },
        };
        assert_eq!(r.apply("r1", &up, true, None), CommandResponse::Ok);
        assert!(matches!(
            r.apply("r1", &up, true, None),
            CommandResponse::Exists { .. }
        ));
        r.apply(
            "r1",
            &RecordingChange::ClosePart {
                index: 0,
                state: PartState::Complete,
            },
            true,
            None,
        );
        let rec = &r.recordings["r1"];
        assert_eq!((rec.duration_ms(), rec.bytes()), (4000, 5));
        assert_eq!(rec.parts[0].upload_id, None);
        r.apply(
            "r1",
            &RecordingChange::SetState {
                state: RecordingState::Ready,
                reason: None,
            },
            true,
            None,
        );
        assert!(matches!(
            r.apply("r1", &RecordingChange::OpenPart(part(1)), true, None),
            CommandResponse::Refused { .. }
        ));
        assert_eq!(
            r.apply("r1", &RecordingChange::Delete, true, None),
            CommandResponse::Ok
        );
        assert!(r.recordings.is_empty());
    }
}
