//! Cuts a room's frames into CMAF segments. Sans-IO: fed frames with [`Segmenter::push`], it
//! hands out finished segments with [`Segmenter::poll_segment`].
//!
//! The cutting rule only looks at the frames themselves, so every node cuts identical segments
//! from the same frames no matter when it joined: a segment starts at a video keyframe whose
//! `floor(dts / target)` differs from that of the open segment's first keyframe. A segment is
//! named by the `group` of its first frame (assigned by the origin, the same on every node).
//!
//! Frames are buffered per track until the segment is cut; LL-HLS parts will be cut from the
//! same buffers (a part is a [`cmaf::media_segment`] over a prefix of them).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use streamhub_shared::media::{CodecConfig, Frame, TrackInfo};

use super::cmaf::{self, CmafError, Sample};

/// Samples per AAC access unit: the duration of the last audio sample of a segment.
pub const AAC_FRAME_SAMPLES: u32 = 1024;
/// A timestamp that jumps forward by more than this starts a discontinuity.
pub const MAX_TIMESTAMP_JUMP: Duration = Duration::from_secs(10);

/// One finished segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Deterministic segment number: the `group` of its first frame (for audio-only rooms, which
    /// have a single group, `floor(first dts / target)`). Names the segment; `mfhd` carries it.
    pub msn: u64,
    /// Duration of the cutting track (video, or audio in an audio-only room), in seconds.
    pub duration_secs: f64,
    /// The timeline broke before this segment (timestamp jump, lost frames, new catalog).
    pub discontinuity: bool,
    /// `moof` + `mdat`.
    pub data: Bytes,
}

#[derive(Debug)]
struct OpenSegment {
    msn: u64,
    /// Frames of older groups arriving late are not added (they belong to a finished segment).
    first_group: u64,
    bucket: i64,
    discontinuity: bool,
    /// Frames per track, in catalog order.
    frames: Vec<Vec<Frame>>,
}

/// The segmenter of one run of a catalog (a new catalog needs a new segmenter).
#[derive(Debug)]
pub struct Segmenter {
    tracks: Vec<TrackInfo>,
    /// Index in `tracks` of the track whose sync samples cut segments.
    cut: Option<usize>,
    /// The target duration in ticks of the cutting track.
    target_ticks: i64,
    has_video: bool,
    open: Option<OpenSegment>,
    last_dts: Vec<Option<i64>>,
    discontinuity: bool,
    ready: VecDeque<Segment>,
}

impl Segmenter {
    /// A segmenter for `tracks`, aiming at segments of `target` (cut at the first sync sample
    /// past each multiple of it).
    pub fn new(tracks: Vec<TrackInfo>, target: Duration) -> Self {
        let cut = tracks
            .iter()
            .position(|t| t.codec.is_video())
            .or_else(|| (!tracks.is_empty()).then_some(0));
        let timescale = cut.map_or(1, |i| tracks[i].timescale);
        let target_ticks = i64::try_from(target.as_millis() * u128::from(timescale) / 1000)
            .unwrap_or(i64::MAX)
            .max(1);
        Self {
            has_video: tracks.iter().any(|t| t.codec.is_video()),
            last_dts: vec![None; tracks.len()],
            tracks,
            cut,
            target_ticks,
            open: None,
            discontinuity: false,
            ready: VecDeque::new(),
        }
    }

    /// The catalog this segmenter cuts.
    pub fn tracks(&self) -> &[TrackInfo] {
        &self.tracks
    }

    /// Flags the next segment as a discontinuity.
    pub fn mark_discontinuity(&mut self) {
        self.discontinuity = true;
    }

    /// Feeds one frame. Frames of unknown tracks, with a negative `dts`, or before the first
    /// sync sample are dropped. An error means the segment that this frame finished was lost.
    pub fn push(&mut self, frame: Frame) -> Result<(), CmafError> {
        let Some(idx) = self.tracks.iter().position(|t| t.id == frame.track) else {
            return Ok(());
        };
        if frame.dts < 0 {
            return Ok(());
        }
        if self.jumped(idx, frame.dts) {
            tracing::debug!(track = frame.track, dts = frame.dts, "timestamp jump");
            self.finish(None)?;
            self.last_dts.fill(None);
            self.discontinuity = true;
        }
        self.last_dts[idx] = Some(frame.dts);
        if Some(idx) == self.cut && (frame.keyframe || !self.has_video) {
            self.sync_sample(frame)
        } else {
            if let Some(open) = self.open.as_mut().filter(|o| frame.group >= o.first_group) {
                open.frames[idx].push(frame);
            }
            Ok(())
        }
    }

    /// Frames were lost: drops the open segment (it would differ from the same-named segment on
    /// other nodes) and waits for the next sync sample, which starts a discontinuity.
    pub fn resync(&mut self) {
        self.open = None;
        self.last_dts.fill(None);
        self.discontinuity = true;
    }

    /// The stream ended: finishes the open segment with what it has.
    pub fn flush(&mut self) -> Result<(), CmafError> {
        self.finish(None)
    }

    /// The next finished segment, oldest first.
    pub fn poll_segment(&mut self) -> Option<Segment> {
        self.ready.pop_front()
    }

    fn jumped(&self, idx: usize, dts: i64) -> bool {
        let Some(last) = self.last_dts[idx] else {
            return false;
        };
        let max = MAX_TIMESTAMP_JUMP.as_secs() as i64 * i64::from(self.tracks[idx].timescale);
        dts < last || dts - last > max
    }

    fn sync_sample(&mut self, frame: Frame) -> Result<(), CmafError> {
        let bucket = frame.dts.div_euclid(self.target_ticks);
        if self.open.as_ref().is_none_or(|o| o.bucket != bucket) {
            self.finish(Some(frame.dts))?;
            let msn = match self.has_video {
                true => frame.group,
                false => u64::try_from(bucket).unwrap_or(0),
            };
            self.open = Some(OpenSegment {
                msn,
                first_group: frame.group,
                bucket,
                discontinuity: std::mem::take(&mut self.discontinuity),
                frames: vec![Vec::new(); self.tracks.len()],
            });
        }
        if let (Some(open), Some(cut)) = (self.open.as_mut(), self.cut) {
            open.frames[cut].push(frame);
        }
        Ok(())
    }

    /// Muxes the open segment; `next_sync_dts` is where its cutting track ends, when known.
    fn finish(&mut self, next_sync_dts: Option<i64>) -> Result<(), CmafError> {
        let (Some(open), Some(cut)) = (self.open.take(), self.cut) else {
            return Ok(());
        };
        let mut per_track = Vec::with_capacity(self.tracks.len());
        let mut duration_secs = 0.0;
        for (idx, (info, frames)) in self.tracks.iter().zip(open.frames).enumerate() {
            let end = if idx == cut { next_sync_dts } else { None };
            let samples = samples(info, &frames, end);
            if idx == cut {
                duration_secs = span_ticks(&samples) as f64 / f64::from(info.timescale.max(1));
            }
            per_track.push((info.clone(), samples));
        }
        // mfhd carries 32 bits; wrapping is harmless (it only has to increase within a playlist
        // window, and 2^32 groups is centuries of video).
        let data = cmaf::media_segment(open.msn as u32, &per_track)?;
        self.ready.push_back(Segment {
            msn: open.msn,
            duration_secs,
            discontinuity: open.discontinuity,
            data,
        });
        Ok(())
    }
}

/// Turns buffered frames into samples: each lasts until the next one; the last one until `end`
/// if known, else one AAC frame for AAC, else as long as the one before it.
fn samples(info: &TrackInfo, frames: &[Frame], end: Option<i64>) -> Vec<Sample> {
    let fallback_last = match info.codec {
        CodecConfig::Aac { .. } => i64::from(AAC_FRAME_SAMPLES),
        CodecConfig::H264 { .. } => match frames {
            [.., a, b] => b.dts - a.dts,
            _ => i64::from(info.timescale / 30),
        },
    };
    frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let next = match (frames.get(i + 1), end) {
                (Some(n), _) => n.dts,
                (None, Some(end)) if matches!(info.codec, CodecConfig::H264 { .. }) => end,
                (None, _) => f.dts + fallback_last,
            };
            Sample {
                dts: u64::try_from(f.dts).unwrap_or(0),
                duration: u32::try_from(next - f.dts).unwrap_or(0),
                composition_offset: i32::try_from(f.pts - f.dts).unwrap_or(0),
                keyframe: f.keyframe || !info.codec.is_video(),
                data: f.data.clone(),
            }
        })
        .collect()
}

fn span_ticks(samples: &[Sample]) -> u64 {
    samples.iter().map(|s| u64::from(s.duration)).sum()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hls::cmaf::tests::{audio, video};
    use mp4_atom::{Decode, Moof};

    const FPS: i64 = 25;
    const FRAME: i64 = 90_000 / FPS;

    /// A room as the origin would emit it: 25 fps video with a keyframe every `gop` frames and
    /// 44.1 kHz AAC, interleaved by time, groups numbered from 0 at the first keyframe.
    pub(crate) fn stream(seconds: i64, gop: i64) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut group = 0;
        let mut next_audio = 0i64;
        for i in 0..seconds * FPS {
            let dts = i * FRAME;
            let key = i % gop == 0;
            if key && i > 0 {
                group += 1;
            }
            out.push(vframe(group, dts, key));
            // audio up to this video time, in 44.1 kHz ticks
            while next_audio * 90_000 / 44_100 <= dts {
                out.push(aframe(group, next_audio));
                next_audio += 1024;
            }
        }
        out
    }

    pub(crate) fn vframe(group: u64, dts: i64, key: bool) -> Frame {
        Frame {
            track: 0,
            group,
            dts,
            pts: dts + FRAME,
            keyframe: key,
            data: Bytes::from(format!("v{dts}")),
        }
    }

    fn aframe(group: u64, dts: i64) -> Frame {
        Frame {
            track: 1,
            group,
            dts,
            pts: dts,
            keyframe: true,
            data: Bytes::from(format!("a{dts}")),
        }
    }

    fn run(seg: &mut Segmenter, frames: &[Frame]) -> Vec<Segment> {
        for f in frames {
            seg.push(f.clone()).unwrap();
        }
        std::iter::from_fn(|| seg.poll_segment()).collect()
    }

    fn av() -> Segmenter {
        Segmenter::new(vec![video(), audio()], Duration::from_secs(2))
    }

    #[test]
    fn cuts_at_keyframes_crossing_the_target() {
        // keyframe every 1 s, target 2 s: two groups per segment
        let segs = run(&mut av(), &stream(9, 25));
        let msns: Vec<u64> = segs.iter().map(|s| s.msn).collect();
        assert_eq!(
            msns,
            vec![0, 2, 4, 6],
            "the open segment (8) is not out yet"
        );
        for s in &segs {
            assert_eq!(s.duration_secs, 2.0);
            assert!(!s.discontinuity);
            let moof = Moof::decode(&mut s.data.as_ref()).unwrap();
            assert_eq!(moof.mfhd.sequence_number, s.msn as u32);
            assert_eq!(moof.traf[0].trun[0].samples.len(), 50, "2 s of 25 fps");
            let tfdt = moof.traf[0].tfdt.as_ref().unwrap().base_media_decode_time;
            assert_eq!(tfdt, s.msn / 2 * 180_000);
        }
    }

    #[test]
    fn long_gops_cut_at_every_keyframe() {
        // keyframe every 3 s, target 2 s: every keyframe crosses a multiple of 2 s
        let segs = run(&mut av(), &stream(10, 75));
        let durations: Vec<f64> = segs.iter().map(|s| s.duration_secs).collect();
        assert_eq!(
            segs.iter().map(|s| s.msn).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(durations, vec![3.0, 3.0, 3.0]);
    }

    #[test]
    fn late_joiner_cuts_identical_segments() {
        let frames = stream(12, 25);
        let early = run(&mut av(), &frames);
        // joins mid-GOP, mid-segment: skips to the keyframe at 3 s, first boundary at 4 s
        let join_at = frames
            .iter()
            .position(|f| f.track == 0 && f.dts >= 2 * 90_000 + 15 * FRAME);
        let late = run(&mut av(), &frames[join_at.unwrap()..]);
        assert_eq!(
            late[0].msn, 3,
            "partial first segment starts at its first keyframe"
        );
        assert_eq!(late[0].duration_secs, 1.0);
        assert_eq!(
            &late[1..],
            &early[2..],
            "identical msn and bytes after the first boundary"
        );
    }

    #[test]
    fn backward_timestamp_starts_a_discontinuity() {
        let mut frames = stream(5, 25);
        // the publisher restarts its clock: same stream again from dts 0
        let restart: Vec<Frame> = stream(5, 25)
            .into_iter()
            .map(|mut f| {
                f.group += 5;
                f
            })
            .collect();
        frames.extend(restart);
        let mut seg = av();
        let segs = run(&mut seg, &frames);
        let flags: Vec<(u64, bool)> = segs.iter().map(|s| (s.msn, s.discontinuity)).collect();
        // 0..2, 2..4, then 4..5 flushed at the jump, then the new timeline
        assert_eq!(
            flags,
            vec![(0, false), (2, false), (4, false), (5, true), (7, false)]
        );
        assert_eq!(
            segs[2].duration_secs, 1.0,
            "flushed at the jump, last frame estimated"
        );
    }

    #[test]
    fn forward_jump_over_ten_seconds_is_a_discontinuity() {
        let mut frames = stream(4, 25);
        let later: Vec<Frame> = stream(4, 25)
            .into_iter()
            .map(|mut f| {
                f.group += 4;
                f.dts +=
                    20 * 90_000 * i64::from(f.track == 0) + 20 * 44_100 * i64::from(f.track == 1);
                f.pts = f.dts;
                f
            })
            .collect();
        frames.extend(later);
        let segs = run(&mut av(), &frames);
        assert!(segs.iter().any(|s| s.msn == 4 && s.discontinuity));
        assert!(segs.iter().filter(|s| s.discontinuity).count() == 1);
    }

    #[test]
    fn frames_before_the_first_keyframe_are_skipped() {
        let frames = stream(3, 25);
        let mut seg = av();
        // start just after the first keyframe: nothing until the keyframe at 1 s
        let mut segs = run(&mut seg, &frames[1..]);
        seg.flush().unwrap();
        segs.extend(std::iter::from_fn(|| seg.poll_segment()));
        assert_eq!(segs.iter().map(|s| s.msn).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(segs[0].duration_secs, 1.0);
        let moof = Moof::decode(&mut segs[0].data.as_ref()).unwrap();
        let tfdt = moof.traf[0].tfdt.as_ref().unwrap().base_media_decode_time;
        assert_eq!(tfdt, 90_000);
    }

    #[test]
    fn audio_only_rooms_cut_on_time() {
        let frames: Vec<Frame> = (0..44_100 * 5 / 1024)
            .map(|i| aframe(0, i * 1024))
            .collect();
        let mut seg = Segmenter::new(vec![audio()], Duration::from_secs(2));
        let segs = run(&mut seg, &frames);
        assert_eq!(segs.iter().map(|s| s.msn).collect::<Vec<_>>(), vec![0, 1]);
        for s in &segs {
            assert!((s.duration_secs - 2.0).abs() < 0.03, "{}", s.duration_secs);
        }
    }

    #[test]
    fn lost_frames_drop_the_open_segment() {
        let frames = stream(7, 25);
        let mut seg = av();
        let at = |dts: i64| frames.iter().position(|f| f.track == 0 && f.dts == dts);
        let mut segs = run(&mut seg, &frames[..at(90_000 * 3).unwrap()]);
        seg.resync();
        segs.extend(run(&mut seg, &frames[at(90_000 * 3 + FRAME).unwrap()..]));
        let flags: Vec<(u64, bool)> = segs.iter().map(|s| (s.msn, s.discontinuity)).collect();
        // segment 2 (2..4 s) was open at the loss: dropped; restart at keyframe 4 s
        assert_eq!(flags, vec![(0, false), (4, true)]);
    }
}
