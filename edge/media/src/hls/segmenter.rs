//! Cuts a room's frames into CMAF segments and LL-HLS partial segments. Sans-IO: fed frames
//! with [`Segmenter::push`], it hands out finished parts and segments with
//! [`Segmenter::poll_output`].
//!
//! The cutting rules only look at the frames themselves, so every node cuts identical bytes from
//! the same frames no matter when it joined:
//!
//! - A **segment** is one group (numbered by the origin, see `GroupPolicy`): it starts at the sync
//!   sample of the cutting track (a video keyframe; any frame in an audio-only room) that carries
//!   a new group number, and is named by that number, which is also its media sequence number.
//! - A **part** is a run of frames of the open segment: a new part starts at the cutting track's
//!   frame that would make the part last longer than the part target (predicting its duration
//!   from the frame interval before it), so parts stay within the target at a constant rate.
//!   Frames of the other tracks go to the part that is open when they arrive; the relay keeps a
//!   group's frames in the origin's order, so that too is the same everywhere.
//!
//! Each part is one CMAF fragment (`moof` + `mdat`); a segment is its parts back to back, so a
//! player can fetch either and get the same media.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use streamhub_shared::h264::AvcConfig;
use streamhub_shared::media::{CodecConfig, Frame, TrackInfo};

use super::cmaf::{self, CmafError, Sample};

/// Samples per AAC access unit: the duration of the last audio sample of a part.
pub const AAC_FRAME_SAMPLES: u32 = 1024;
/// A timestamp that jumps forward by more than this starts a discontinuity.
pub const MAX_TIMESTAMP_JUMP: Duration = Duration::from_secs(10);
/// Parts per segment are bounded (the part number is 8 bits of the fragment sequence number).
pub const MAX_PARTS_PER_SEGMENT: u32 = 255;

/// One finished partial segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// The segment it belongs to.
    pub msn: u64,
    /// Its index within the segment, from 0.
    pub index: u32,
    /// Duration of the cutting track's samples, in seconds.
    pub duration_secs: f64,
    /// Starts with a sync sample of the cutting track (`INDEPENDENT=YES`).
    pub independent: bool,
    /// Its segment follows a break in the timeline (see [`Segment::discontinuity`]).
    pub discontinuity: bool,
    /// `moof` + `mdat`.
    pub data: Bytes,
}

/// One finished segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// The media sequence number: the group number of its frames. Names the segment.
    pub msn: u64,
    /// Duration of the cutting track (video, or audio in an audio-only room), in seconds.
    pub duration_secs: f64,
    /// The timeline broke before this segment (timestamp jump, lost frames, new catalog).
    pub discontinuity: bool,
    /// How many parts it was published as.
    pub parts: u32,
    /// Its parts' fragments, concatenated.
    pub data: Bytes,
}

/// Where the segmenter picks up after lost frames: a segment is only ever started at the first
/// frame of a group, so a resync skips to a group it has seen begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// Frames come in order again from the start of the next group (a relay gap): skip the
    /// rest of the last group seen.
    AfterLastGroup,
    /// An unknown run of frames was lost (a consumer that lagged): the next frame may be in the
    /// middle of a group, so skip that group too.
    AfterNextGroup,
}

/// What the segmenter finished, in order: the parts of a segment, then the segment.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A partial segment of the open segment.
    Part(Part),
    /// A complete segment (its parts came before it).
    Segment(Segment),
}

#[derive(Debug)]
struct OpenPart {
    index: u32,
    /// First and last decode time of the cutting track in this part.
    first_dts: Option<i64>,
    last_dts: Option<i64>,
    independent: bool,
    /// Frames per track, in catalog order.
    frames: Vec<Vec<Frame>>,
}

impl OpenPart {
    fn new(index: u32, tracks: usize) -> Self {
        Self {
            index,
            first_dts: None,
            last_dts: None,
            independent: false,
            frames: vec![Vec::new(); tracks],
        }
    }

    fn is_empty(&self) -> bool {
        self.frames.iter().all(Vec::is_empty)
    }
}

#[derive(Debug)]
struct OpenSegment {
    msn: u64,
    discontinuity: bool,
    part: OpenPart,
    fragments: Vec<Bytes>,
    duration_secs: f64,
}

/// The segmenter of one run of a catalog (a new catalog needs a new segmenter).
#[derive(Debug)]
pub struct Segmenter {
    tracks: Vec<TrackInfo>,
    /// Index in `tracks` of the track whose sync samples cut segments.
    cut: Option<usize>,
    /// The part target in ticks of the cutting track.
    part_ticks: i64,
    has_video: bool,
    open: Option<OpenSegment>,
    last_dts: Vec<Option<i64>>,
    /// The last frame interval of the cutting track: the duration of a part's last frame when
    /// the stream ends before the next one.
    cut_interval: Option<i64>,
    discontinuity: bool,
    /// The group of the last frame pushed.
    last_group: Option<u64>,
    /// After a resync: frames of groups up to this one are dropped (`None` inside: the next
    /// frame's group, once seen).
    skip_through: Option<Option<u64>>,
    ready: VecDeque<Output>,
}

impl Segmenter {
    /// A segmenter for `tracks` (those the packager carries) cutting parts of about
    /// `part_target`.
    pub fn new(tracks: Vec<TrackInfo>, part_target: Duration) -> Self {
        let cut = tracks
            .iter()
            .position(|t| t.codec.is_video())
            .or_else(|| (!tracks.is_empty()).then_some(0));
        let timescale = cut.map_or(1, |i| tracks[i].timescale);
        let part_ticks = i64::try_from(part_target.as_micros() * u128::from(timescale) / 1_000_000)
            .unwrap_or(i64::MAX)
            .max(1);
        Self {
            has_video: tracks.iter().any(|t| t.codec.is_video()),
            last_dts: vec![None; tracks.len()],
            tracks,
            cut,
            part_ticks,
            open: None,
            cut_interval: None,
            discontinuity: false,
            last_group: None,
            skip_through: None,
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

    /// The open segment's number and how many of its parts are out, if one is open.
    pub fn open_segment(&self) -> Option<(u64, u32)> {
        self.open.as_ref().map(|o| (o.msn, o.part.index))
    }

    /// Feeds one frame. Frames of unknown tracks, with a negative `dts`, of an older group than
    /// the open segment, or before the first sync sample are dropped. An error means the part
    /// or segment that this frame finished was lost.
    pub fn push(&mut self, frame: Frame) -> Result<(), CmafError> {
        let Some(idx) = self.tracks.iter().position(|t| t.id == frame.track) else {
            return Ok(());
        };
        if frame.dts < 0 {
            return Ok(());
        }
        self.last_group = Some(frame.group);
        match self.skip_through {
            Some(None) => {
                self.skip_through = Some(Some(frame.group));
                return Ok(());
            }
            Some(Some(g)) if frame.group <= g => return Ok(()),
            Some(Some(_)) => self.skip_through = None,
            None => {}
        }
        if self.jumped(idx, frame.dts) {
            tracing::debug!(track = frame.track, dts = frame.dts, "timestamp jump");
            self.finish(None)?;
            self.last_dts.fill(None);
            self.discontinuity = true;
        }
        let is_cut = Some(idx) == self.cut;
        if let (true, Some(last)) = (is_cut, self.last_dts[idx]) {
            self.cut_interval = Some(frame.dts - last).filter(|d| *d > 0);
        }
        self.last_dts[idx] = Some(frame.dts);
        let sync = is_cut && (frame.keyframe || !self.has_video);
        if sync && self.open.as_ref().is_none_or(|o| frame.group > o.msn) {
            self.finish(Some(frame.dts))?;
            self.open = Some(OpenSegment {
                msn: frame.group,
                discontinuity: std::mem::take(&mut self.discontinuity),
                part: OpenPart::new(0, self.tracks.len()),
                fragments: Vec::new(),
                duration_secs: 0.0,
            });
        }
        if self.open.as_ref().is_none_or(|o| frame.group < o.msn) {
            return Ok(());
        }
        if is_cut && self.part_is_full(frame.dts) {
            self.close_part(Some(frame.dts))?;
        }
        if let Some(open) = self.open.as_mut() {
            let part = &mut open.part;
            if is_cut {
                if part.first_dts.is_none() {
                    part.independent = sync;
                    part.first_dts = Some(frame.dts);
                }
                part.last_dts = Some(frame.dts);
            }
            part.frames[idx].push(frame);
        }
        Ok(())
    }

    /// Frames were lost: drops the open segment (it would differ from the same-named segment on
    /// other nodes) and waits for the start of a later group, which starts a discontinuity.
    pub fn resync(&mut self, how: Resync) {
        self.open = None;
        self.last_dts.fill(None);
        self.discontinuity = true;
        self.skip_through = Some(match how {
            Resync::AfterLastGroup => self.last_group,
            Resync::AfterNextGroup => None,
        });
        if self.skip_through == Some(None) && how == Resync::AfterLastGroup {
            // Nothing seen yet: start at whatever comes.
            self.skip_through = None;
        }
    }

    /// The stream ended: finishes the open segment with what it has.
    pub fn flush(&mut self) -> Result<(), CmafError> {
        self.finish(None)
    }

    /// The next finished part or segment, oldest first.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.ready.pop_front()
    }

    /// True if adding a cutting-track frame at `dts` would make the open part outlast the part
    /// target (predicting its duration from the last frame interval).
    fn part_is_full(&self, dts: i64) -> bool {
        let Some(part) = self.open.as_ref().map(|o| &o.part) else {
            return false;
        };
        match (part.first_dts, part.last_dts) {
            (Some(first), Some(last)) => {
                (dts - first) + (dts - last) > self.part_ticks
                    && part.index + 1 < MAX_PARTS_PER_SEGMENT
            }
            _ => false,
        }
    }

    fn jumped(&self, idx: usize, dts: i64) -> bool {
        let Some(last) = self.last_dts[idx] else {
            return false;
        };
        let max = MAX_TIMESTAMP_JUMP.as_secs() as i64 * i64::from(self.tracks[idx].timescale);
        dts < last || dts - last > max
    }

    /// Muxes the open part; `end` is where its cutting track ends, when known.
    fn close_part(&mut self, end: Option<i64>) -> Result<(), CmafError> {
        let (Some(open), Some(cut)) = (self.open.as_mut(), self.cut) else {
            return Ok(());
        };
        let next = OpenPart::new(open.part.index + 1, self.tracks.len());
        let part = std::mem::replace(&mut open.part, next);
        if part.is_empty() {
            open.part.index = part.index;
            return Ok(());
        }
        let mut per_track = Vec::with_capacity(self.tracks.len());
        let mut duration_secs = None;
        for (idx, (info, frames)) in self.tracks.iter().zip(part.frames).enumerate() {
            let end = match idx == cut {
                true => end.or_else(|| Some(frames.last()?.dts + self.cut_interval?)),
                false => None,
            };
            let samples = samples(info, &frames, end);
            if !samples.is_empty() && (idx == cut || duration_secs.is_none()) {
                duration_secs =
                    Some(span_ticks(&samples) as f64 / f64::from(info.timescale.max(1)));
            }
            per_track.push((info.clone(), samples));
        }
        // mfhd carries 32 bits: 24 for the segment, 8 for the part. Wrapping is harmless (it only
        // has to increase within a playlist window; 2^24 segments is over a year of video).
        let seq = ((open.msn as u32) << 8) | part.index;
        let data = cmaf::media_segment(seq, &per_track)?;
        let duration_secs = duration_secs.unwrap_or(0.0);
        open.duration_secs += duration_secs;
        open.fragments.push(data.clone());
        self.ready.push_back(Output::Part(Part {
            msn: open.msn,
            index: part.index,
            duration_secs,
            independent: part.independent || !self.has_video,
            discontinuity: open.discontinuity,
            data,
        }));
        Ok(())
    }

    /// Finishes the open segment; `next_sync_dts` is where its cutting track ends, when known.
    fn finish(&mut self, next_sync_dts: Option<i64>) -> Result<(), CmafError> {
        let closed = self.close_part(next_sync_dts);
        let Some(open) = self.open.take() else {
            return closed;
        };
        closed?;
        if open.fragments.is_empty() {
            return Ok(());
        }
        let len = open.fragments.iter().map(Bytes::len).sum();
        let mut data = BytesMut::with_capacity(len);
        open.fragments
            .iter()
            .for_each(|f| data.extend_from_slice(f));
        self.ready.push_back(Output::Segment(Segment {
            msn: open.msn,
            duration_secs: open.duration_secs,
            discontinuity: open.discontinuity,
            parts: open.fragments.len() as u32,
            data: data.freeze(),
        }));
        Ok(())
    }
}

/// Turns buffered frames into samples: each lasts until the next one; the last one until `end`
/// if known, else one AAC frame for AAC, else as long as the one before it.
///
/// An H.264 keyframe without its parameter sets gets the track's SPS and PPS in front (see
/// [`in_band_parameter_sets`]).
fn samples(info: &TrackInfo, frames: &[Frame], end: Option<i64>) -> Vec<Sample> {
    let params = in_band_parameter_sets(info);
    let fallback_last = match info.codec {
        CodecConfig::Aac { .. } => i64::from(AAC_FRAME_SAMPLES),
        // WebRTC publishers send 20 ms Opus packets.
        CodecConfig::Opus { .. } => i64::from(info.timescale / 50),
        _ => match frames {
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
                (None, Some(end)) if info.codec.is_video() => end,
                (None, _) => f.dts + fallback_last,
            };
            Sample {
                dts: u64::try_from(f.dts).unwrap_or(0),
                duration: u32::try_from(next - f.dts).unwrap_or(0),
                composition_offset: i32::try_from(f.pts - f.dts).unwrap_or(0),
                keyframe: f.keyframe || !info.codec.is_video(),
                data: match &params {
                    Some((sets, len_size)) if f.keyframe && !has_sps(&f.data, *len_size) => {
                        let mut d = BytesMut::with_capacity(sets.len() + f.data.len());
                        d.extend_from_slice(sets);
                        d.extend_from_slice(&f.data);
                        d.freeze()
                    }
                    _ => f.data.clone(),
                },
            }
        })
        .collect()
}

/// The SPS and PPS of an H.264 track as length-prefixed NAL units (the track's NALU length
/// size), and that size. The sample entry carries them out of band, but players that keep the
/// first init segment's decoder configuration across a map change (ffmpeg-based ones: ffplay,
/// mpv, many set-top boxes) decode a new publisher's segments with the old parameters unless
/// each keyframe carries its own. Deterministic, so every node writes the same bytes.
fn in_band_parameter_sets(info: &TrackInfo) -> Option<(Bytes, usize)> {
    let CodecConfig::H264 { avcc, .. } = &info.codec else {
        return None;
    };
    let cfg = AvcConfig::parse(avcc).ok()?;
    let len_size = usize::from(cfg.nal_length_size);
    let mut out = BytesMut::new();
    for nal in cfg.sps.iter().chain(cfg.pps.iter()) {
        if len_size < 4 && nal.len() >= 1usize << (8 * len_size) {
            return None;
        }
        let len = u32::try_from(nal.len()).ok()?.to_be_bytes();
        out.extend_from_slice(&len[4 - len_size..]);
        out.extend_from_slice(nal);
    }
    (!out.is_empty()).then(|| (out.freeze(), len_size))
}

/// Whether a length-prefixed access unit already carries an SPS (NAL type 7).
fn has_sps(data: &[u8], len_size: usize) -> bool {
    let mut at = 0;
    while at + len_size < data.len() {
        let len = data[at..at + len_size]
            .iter()
            .fold(0usize, |n, b| (n << 8) | usize::from(*b));
        let Some(&header) = data.get(at + len_size) else {
            return false;
        };
        if header & 0x1f == 7 {
            return true;
        }
        at += len_size + len;
    }
    false
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
    /// The default part target of the packager.
    pub(crate) const PART: Duration = Duration::from_millis(333);

    /// A room as the origin would emit it: 25 fps video with a keyframe every `gop` frames and
    /// 44.1 kHz AAC, interleaved by time, grouped as `GroupPolicy` does with a 2 s target.
    pub(crate) fn stream(seconds: i64, gop: i64) -> Vec<Frame> {
        let mut out = Vec::new();
        let (mut group, mut bucket) = (0u64, 0i64);
        let mut next_audio = 0i64;
        for i in 0..seconds * FPS {
            let dts = i * FRAME;
            let key = i % gop == 0;
            if key && dts / 180_000 != bucket {
                group += 1;
                bucket = dts / 180_000;
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

    #[test]
    fn keyframes_carry_their_parameter_sets_in_band() {
        let au = |nals: &[&[u8]]| -> Bytes {
            let mut b = BytesMut::new();
            for n in nals {
                b.extend_from_slice(&(n.len() as u32).to_be_bytes());
                b.extend_from_slice(n);
            }
            b.freeze()
        };
        let cfg = AvcConfig::parse(crate::hls::cmaf::tests::AVCC).unwrap();
        let (sps, pps) = (&cfg.sps[0][..], &cfg.pps[0][..]);
        let idr: &[u8] = &[0x65, 0x88, 0x84];
        let p: &[u8] = &[0x41, 0x9a, 0x02];
        let frame = |dts, key, data: Bytes| Frame {
            data,
            ..vframe(0, dts, key)
        };
        let frames = [
            frame(0, true, au(&[idr])),
            frame(FRAME, false, au(&[p])),
            // A WebRTC publisher's keyframe brings its own: kept as it is.
            frame(2 * FRAME, true, au(&[sps, pps, idr])),
        ];
        let out = samples(&video(), &frames, Some(3 * FRAME));
        assert_eq!(
            out[0].data,
            au(&[sps, pps, idr]),
            "SPS and PPS before the IDR"
        );
        assert_eq!(out[1].data, au(&[p]), "other frames unchanged");
        assert_eq!(out[2].data, au(&[sps, pps, idr]), "not twice");
        // Audio is untouched.
        let a = samples(&audio(), &[aframe(0, 0)], None);
        assert_eq!(a[0].data, aframe(0, 0).data);
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

    fn run(seg: &mut Segmenter, frames: &[Frame]) -> (Vec<Part>, Vec<Segment>) {
        for f in frames {
            seg.push(f.clone()).unwrap();
        }
        drain(seg)
    }

    fn drain(seg: &mut Segmenter) -> (Vec<Part>, Vec<Segment>) {
        let (mut parts, mut segments) = (Vec::new(), Vec::new());
        while let Some(out) = seg.poll_output() {
            match out {
                Output::Part(p) => parts.push(p),
                Output::Segment(s) => segments.push(s),
            }
        }
        (parts, segments)
    }

    fn av() -> Segmenter {
        Segmenter::new(vec![video(), audio()], PART)
    }

    fn msns(segs: &[Segment]) -> Vec<u64> {
        segs.iter().map(|s| s.msn).collect()
    }

    #[test]
    fn one_segment_per_group_made_of_its_parts() {
        // keyframe every 1 s, groups of 2 s: two GOPs per segment
        let (parts, segs) = run(&mut av(), &stream(9, 25));
        assert_eq!(msns(&segs), vec![0, 1, 2, 3], "segment 4 is still open");
        for s in &segs {
            assert!((s.duration_secs - 2.0).abs() < 1e-9, "{}", s.duration_secs);
            assert!(!s.discontinuity);
            let mine: Vec<&Part> = parts.iter().filter(|p| p.msn == s.msn).collect();
            assert_eq!(mine.len() as u32, s.parts);
            // 8 frames (0.32 s) fit the 0.333 s target, a 9th would not: 6 parts of 8, one of 2
            assert_eq!(s.parts, 7);
            let concat: Vec<u8> = mine.iter().flat_map(|p| p.data.to_vec()).collect();
            assert_eq!(
                concat,
                s.data.to_vec(),
                "a segment is its parts back to back"
            );
            assert!(mine[0].independent && !mine[1].independent);
            let total: f64 = mine.iter().map(|p| p.duration_secs).sum();
            assert!((total - s.duration_secs).abs() < 1e-9);
            for p in &mine {
                assert!(p.duration_secs <= PART.as_secs_f64(), "{}", p.duration_secs);
                let moof = Moof::decode(&mut p.data.as_ref()).unwrap();
                assert_eq!(moof.mfhd.sequence_number, ((s.msn as u32) << 8) | p.index);
            }
            let first = Moof::decode(&mut mine[0].data.as_ref()).unwrap();
            let tfdt = first.traf[0].tfdt.as_ref().unwrap().base_media_decode_time;
            assert_eq!(tfdt, s.msn * 180_000);
        }
        let open: Vec<u32> = parts
            .iter()
            .filter(|p| p.msn == 4)
            .map(|p| p.index)
            .collect();
        assert_eq!(
            open,
            vec![0, 1, 2],
            "the open segment's finished parts are out already"
        );
    }

    #[test]
    fn long_gops_make_one_segment_per_gop() {
        // keyframe every 3 s: every keyframe crosses a multiple of 2 s, so each is a group
        let (_, segs) = run(&mut av(), &stream(10, 75));
        assert_eq!(msns(&segs), vec![0, 1, 2]);
        let durations: Vec<f64> = segs.iter().map(|s| s.duration_secs).collect();
        assert_eq!(durations, vec![3.0, 3.0, 3.0]);
    }

    #[test]
    fn late_joiner_cuts_identical_parts_and_segments() {
        let frames = stream(12, 25);
        let (early_parts, early) = run(&mut av(), &frames);
        // joins mid-group: skips to the keyframe at 3 s (group 1), which opens nothing, and
        // starts with group 2 at 4 s
        let join_at = frames
            .iter()
            .position(|f| f.track == 0 && f.dts >= 2 * 90_000 + 15 * FRAME)
            .unwrap();
        let (late_parts, late) = run(&mut av(), &frames[join_at..]);
        assert_eq!(
            late[0].msn, 1,
            "a partial first segment from its first keyframe"
        );
        assert_eq!(late[0].duration_secs, 1.0);
        assert_eq!(
            &late[1..],
            &early[2..],
            "identical names and bytes after that"
        );
        let from = |parts: &[Part]| -> Vec<Part> {
            parts.iter().filter(|p| p.msn >= 2).cloned().collect()
        };
        assert_eq!(from(&late_parts), from(&early_parts));
    }

    #[test]
    fn other_tracks_go_to_the_part_open_when_they_arrive() {
        let (parts, _) = run(&mut av(), &stream(3, 25));
        let p = &parts[1];
        let moof = Moof::decode(&mut p.data.as_ref()).unwrap();
        assert_eq!(moof.traf.len(), 2, "video and audio in every part");
        let audio_tfdt = moof.traf[1].tfdt.as_ref().unwrap().base_media_decode_time;
        let video_tfdt = moof.traf[0].tfdt.as_ref().unwrap().base_media_decode_time;
        // the first audio frame after the video frame that opened the part
        let video_secs = video_tfdt as f64 / 90_000.0;
        let audio_secs = audio_tfdt as f64 / 44_100.0;
        assert!(audio_secs >= video_secs - 0.03 && audio_secs <= video_secs + 0.03);
    }

    #[test]
    fn backward_timestamp_starts_a_discontinuity() {
        let mut frames = stream(5, 25);
        // the publisher restarts its clock: same stream again from dts 0, groups go on
        let restart: Vec<Frame> = stream(5, 25)
            .into_iter()
            .map(|mut f| {
                f.group += 3;
                f
            })
            .collect();
        frames.extend(restart);
        let mut seg = av();
        let (_, segs) = run(&mut seg, &frames);
        let flags: Vec<(u64, bool)> = segs.iter().map(|s| (s.msn, s.discontinuity)).collect();
        // 0..2, 2..4, then 4..5 flushed at the jump, then the new timeline
        assert_eq!(
            flags,
            vec![(0, false), (1, false), (2, false), (3, true), (4, false)]
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
                f.group += 2;
                f.dts +=
                    20 * 90_000 * i64::from(f.track == 0) + 20 * 44_100 * i64::from(f.track == 1);
                f.pts = f.dts;
                f
            })
            .collect();
        frames.extend(later);
        let (_, segs) = run(&mut av(), &frames);
        assert!(segs.iter().any(|s| s.msn == 2 && s.discontinuity));
        assert_eq!(segs.iter().filter(|s| s.discontinuity).count(), 1);
    }

    #[test]
    fn frames_before_the_first_keyframe_are_skipped() {
        let frames = stream(3, 25);
        let mut seg = av();
        // start just after the first keyframe: nothing until the keyframe at 1 s
        let (_, mut segs) = run(&mut seg, &frames[1..]);
        seg.flush().unwrap();
        segs.extend(drain(&mut seg).1);
        assert_eq!(msns(&segs), vec![0, 1]);
        assert_eq!(segs[0].duration_secs, 1.0);
        let moof = Moof::decode(&mut segs[0].data.as_ref()).unwrap();
        let tfdt = moof.traf[0].tfdt.as_ref().unwrap().base_media_decode_time;
        assert_eq!(tfdt, 90_000);
    }

    #[test]
    fn audio_only_rooms_cut_on_groups() {
        let frames: Vec<Frame> = (0..44_100 * 5 / 1024)
            .map(|i| {
                let dts = i * 1024;
                aframe((dts / 88_200) as u64, dts)
            })
            .collect();
        let mut seg = Segmenter::new(vec![audio()], PART);
        let (parts, segs) = run(&mut seg, &frames);
        assert_eq!(msns(&segs), vec![0, 1]);
        for s in &segs {
            assert!((s.duration_secs - 2.0).abs() < 0.03, "{}", s.duration_secs);
        }
        assert!(parts.iter().all(|p| p.independent));
    }

    #[test]
    fn lost_frames_drop_the_open_segment() {
        let frames = stream(7, 25);
        let mut seg = av();
        let at = |dts: i64| frames.iter().position(|f| f.track == 0 && f.dts == dts);
        let (_, mut segs) = run(&mut seg, &frames[..at(90_000 * 3).unwrap()]);
        seg.resync(Resync::AfterNextGroup);
        segs.extend(run(&mut seg, &frames[at(90_000 * 3 + FRAME).unwrap()..]).1);
        let flags: Vec<(u64, bool)> = segs.iter().map(|s| (s.msn, s.discontinuity)).collect();
        // segment 1 (2..4 s) was open at the loss: dropped; restart with group 2 at 4 s
        assert_eq!(flags, vec![(0, false), (2, true)]);
    }

    #[test]
    fn a_resync_never_starts_a_segment_inside_a_group() {
        // groups of two 1 s GOPs: frames lost just before the second keyframe of group 1
        let frames = stream(9, 25);
        let at = |dts: i64| {
            frames
                .iter()
                .position(|f| f.track == 0 && f.dts == dts)
                .unwrap()
        };
        for how in [Resync::AfterNextGroup, Resync::AfterLastGroup] {
            let mut seg = av();
            let (_, mut segs) = run(&mut seg, &frames[..at(90_000 * 2 + 10 * FRAME)]);
            seg.resync(how);
            // resumes at the keyframe at 3 s, which is inside group 1: not a segment start
            segs.extend(run(&mut seg, &frames[at(90_000 * 3)..]).1);
            let msns: Vec<u64> = segs.iter().map(|s| s.msn).collect();
            assert_eq!(msns, vec![0, 2, 3], "{how:?}");
            let full = run(&mut av(), &frames).1;
            assert_eq!(segs[1].data, full[2].data, "group 2 is whole and identical");
        }
    }
}
