//! The live media playlist of one room, LL-HLS capable (RFC 8216bis): a sliding window over the
//! newest segments, the parts of the newest ones and of the open segment, and a preload hint.
//! Rendered once per change into shared `Bytes` (every viewer gets a clone of the same buffer).
//!
//! A segment's media sequence number is its name (`seg-<msn>.m4s`): the origin's group number,
//! shifted only when a new publisher would reuse a number. So every node that relays the same
//! groups lists the same segments under the same numbers, and a player may switch between them.
//! A number a node never got (a group lost on the way) is listed as an `EXT-X-GAP` segment, so
//! the numbering stays implicit and aligned. The playlist holds metadata only; the bytes live in
//! the node's media cache.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;

/// `#EXT-X-VERSION`: `EXT-X-GAP` needs 8, LL-HLS tags are defined from 9 on.
pub const HLS_VERSION: u32 = 9;
/// Completed segments whose parts stay listed (with the open segment's): a few target durations
/// of parts, as RFC 8216bis asks, without bloating every reload.
const SEGMENTS_WITH_PARTS: usize = 2;

/// URI of an init segment: named by its content, so the same catalog has the same name on every
/// node and a new catalog never reuses a name.
pub fn init_uri(id: u32) -> String {
    format!("init-{id:08x}.mp4")
}

/// URI of a media segment.
pub fn segment_uri(msn: u64) -> String {
    format!("seg-{msn}.m4s")
}

/// URI of a partial segment.
pub fn part_uri(msn: u64, index: u32) -> String {
    format!("part-{msn}.{index}.m4s")
}

/// The content id of an init segment (FNV-1a, 32 bits): stable, and only has to tell the few
/// catalogs of one room apart.
pub fn init_id(init: &[u8]) -> u32 {
    init.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// Settings of a playlist.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlaylistConfig {
    /// The configured segment target (the playlist's target duration is never below it).
    pub target: Duration,
    /// The LL-HLS part target.
    pub part_target: Duration,
    /// Segments listed.
    pub window: usize,
    /// Segments held (at least `window`), so a slow player can still fetch what it saw listed.
    pub keep: usize,
    /// List parts, server control and the preload hint.
    pub low_latency: bool,
}

/// One partial segment listed by a playlist.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartEntry {
    /// `EXT-X-PART:DURATION`.
    pub duration_secs: f64,
    /// `INDEPENDENT=YES`.
    pub independent: bool,
}

/// One segment held by a playlist (or a gap where a segment was lost).
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentEntry {
    /// Media sequence number, also the number in its URI.
    pub msn: u64,
    /// Duration written in `#EXTINF`.
    pub duration_secs: f64,
    /// Preceded by `#EXT-X-DISCONTINUITY`.
    pub discontinuity: bool,
    /// Which init segment decodes it.
    pub init: u32,
    /// A number this node has no media for (`#EXT-X-GAP`).
    pub gap: bool,
    /// Its parts, in order.
    pub parts: Vec<PartEntry>,
}

/// What the playlist has, for blocking reloads: the newest segment and part numbers listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// The newest complete segment.
    pub last_segment: Option<u64>,
    /// The open segment and how many of its parts are listed.
    pub open: Option<(u64, u32)>,
}

impl Progress {
    /// True once segment `msn` is complete, or (with `part`) once that part is listed or a later
    /// segment exists.
    pub fn has(&self, msn: u64, part: Option<u32>) -> bool {
        if self.last_segment.is_some_and(|s| s >= msn) {
            return true;
        }
        match (part, self.open) {
            (Some(p), Some((open, parts))) => open > msn || (open == msn && parts > p),
            _ => false,
        }
    }

    /// The media sequence number of the last segment in the playlist (complete or open).
    pub fn last_msn(&self) -> Option<u64> {
        match (self.open, self.last_segment) {
            (Some((o, _)), _) => Some(o),
            (None, s) => s,
        }
    }
}

#[derive(Debug)]
struct OpenEntry {
    /// The segmenter's number, before [`Playlist`]'s shift.
    raw: u64,
    entry: SegmentEntry,
}

/// A live media playlist: the metadata of the segments and parts a room can serve.
#[derive(Debug)]
pub struct Playlist {
    config: PlaylistConfig,
    target_secs: u64,
    segments: VecDeque<SegmentEntry>,
    open: Option<OpenEntry>,
    /// Discontinuity tags of segments no longer held.
    dropped_discontinuities: u64,
    name_offset: u64,
    restart_pending: bool,
    ended: bool,
    rendered: Bytes,
}

impl Playlist {
    /// An empty playlist.
    pub fn new(mut config: PlaylistConfig) -> Self {
        config.window = config.window.max(1);
        config.keep = config.keep.max(config.window);
        let mut playlist = Self {
            target_secs: ceil_secs(config.target.as_secs_f64()).max(1),
            config,
            segments: VecDeque::new(),
            open: None,
            dropped_discontinuities: 0,
            name_offset: 0,
            restart_pending: false,
            ended: false,
            rendered: Bytes::new(),
        };
        playlist.render();
        playlist
    }

    /// The settings of this playlist.
    pub fn config(&self) -> &PlaylistConfig {
        &self.config
    }

    /// Adds a finished part of segment `raw_msn` (the segmenter's number) decoded by init `init`;
    /// returns the segment's media sequence number here.
    pub fn push_part(
        &mut self,
        raw_msn: u64,
        part: PartEntry,
        discontinuity: bool,
        init: u32,
    ) -> u64 {
        let msn = self.open_entry(raw_msn, discontinuity, init);
        if let Some(open) = self.open.as_mut() {
            open.entry.parts.push(part);
            open.entry.duration_secs += part.duration_secs;
        }
        self.render();
        msn
    }

    /// Completes segment `raw_msn`; returns its media sequence number here.
    pub fn push_segment(
        &mut self,
        raw_msn: u64,
        duration_secs: f64,
        discontinuity: bool,
        init: u32,
    ) -> u64 {
        let msn = self.open_entry(raw_msn, discontinuity, init);
        let Some(mut open) = self.open.take() else {
            return msn;
        };
        open.entry.duration_secs = duration_secs;
        self.target_secs = self.target_secs.max(ceil_secs(duration_secs));
        self.segments.push_back(open.entry);
        self.trim();
        self.render();
        msn
    }

    /// The open entry for `raw_msn`, opening it (and closing a stale one) if needed.
    fn open_entry(&mut self, raw_msn: u64, discontinuity: bool, init: u32) -> u64 {
        if let Some(open) = &self.open {
            if open.raw == raw_msn {
                return open.entry.msn;
            }
            // A segment whose end never came (lost frames): its parts stay listed as a short
            // segment only if it has any; it cannot be fetched whole, so list it as a gap.
            if let Some(mut stale) = self.open.take() {
                stale.entry.gap = true;
                self.segments.push_back(stale.entry);
            }
        }
        let msn = self.next_msn(raw_msn);
        self.fill_gap(msn);
        let discontinuity = discontinuity || std::mem::take(&mut self.restart_pending);
        self.open = Some(OpenEntry {
            raw: raw_msn,
            entry: SegmentEntry {
                msn,
                duration_secs: 0.0,
                discontinuity,
                init,
                gap: false,
                parts: Vec::new(),
            },
        });
        msn
    }

    /// The media sequence number for the segmenter's `raw` number: never at or below the last.
    fn next_msn(&mut self, raw: u64) -> u64 {
        let msn = raw.saturating_add(self.name_offset);
        match self.segments.back().map(|s| s.msn) {
            Some(last) if msn <= last => {
                // A new publisher numbers its groups from 0 again: numbers never go backwards.
                self.name_offset += last + 1 - msn;
                last + 1
            }
            _ => msn,
        }
    }

    /// Lists the numbers between the last segment and `msn` as gaps, or forgets the held
    /// segments if the hole is wider than the playlist holds.
    fn fill_gap(&mut self, msn: u64) {
        let Some(last) = self.segments.back() else {
            return;
        };
        let missing = msn.saturating_sub(last.msn + 1);
        if missing == 0 {
            return;
        }
        if missing as usize >= self.config.keep {
            let dropped = self.segments.drain(..).filter(|s| s.discontinuity).count();
            self.dropped_discontinuities += dropped as u64;
            return;
        }
        let (init, duration_secs) = (last.init, self.target_secs as f64);
        for n in last.msn + 1..msn {
            self.segments.push_back(SegmentEntry {
                msn: n,
                duration_secs,
                discontinuity: false,
                init,
                gap: true,
                parts: Vec::new(),
            });
        }
        self.trim();
    }

    fn trim(&mut self) {
        while self.segments.len() > self.config.keep {
            if let Some(old) = self.segments.pop_front() {
                self.dropped_discontinuities += u64::from(old.discontinuity);
            }
        }
    }

    /// The packager lost frames of the open segment: forget it (it may come again whole, or
    /// be listed as a gap once a later segment comes).
    pub fn abandon_open(&mut self) {
        if self.open.take().is_some() {
            self.render();
        }
    }

    /// A new publisher took the room: the next segment is a discontinuity, the room is live again.
    pub fn restart(&mut self) {
        if let Some(mut stale) = self.open.take() {
            stale.entry.gap = true;
            self.segments.push_back(stale.entry);
        }
        self.restart_pending = !self.segments.is_empty();
        self.ended = false;
        self.render();
    }

    /// The publisher ended: the playlist gets `#EXT-X-ENDLIST`.
    pub fn end(&mut self) {
        self.ended = true;
        self.render();
    }

    /// True once [`Playlist::end`] was called (and no restart since).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The rendered playlist (a cheap clone of a shared buffer).
    pub fn rendered(&self) -> Bytes {
        self.rendered.clone()
    }

    /// A held complete segment (not a gap) by its number.
    pub fn segment(&self, msn: u64) -> Option<&SegmentEntry> {
        let first = self.segments.front()?.msn;
        let entry = self
            .segments
            .get(usize::try_from(msn.checked_sub(first)?).ok()?)?;
        (entry.msn == msn && !entry.gap).then_some(entry)
    }

    /// True if part `index` of segment `msn` is listed or held.
    pub fn has_part(&self, msn: u64, index: u32) -> bool {
        match &self.open {
            Some(open) if open.entry.msn == msn => (index as usize) < open.entry.parts.len(),
            _ => self
                .segment(msn)
                .is_some_and(|s| (index as usize) < s.parts.len()),
        }
    }

    /// The numbers of the held segments (complete ones and gaps), oldest first.
    pub fn held(&self) -> impl Iterator<Item = &SegmentEntry> {
        self.segments.iter()
    }

    /// What is listed, for blocking reloads.
    pub fn progress(&self) -> Progress {
        Progress {
            last_segment: self.segments.back().map(|s| s.msn),
            open: self
                .open
                .as_ref()
                .map(|o| (o.entry.msn, o.entry.parts.len() as u32)),
        }
    }

    /// The part a player should ask for next (`EXT-X-PRELOAD-HINT`).
    pub fn next_part(&self) -> Option<(u64, u32)> {
        match (&self.open, self.segments.back()) {
            (Some(open), _) => Some((open.entry.msn, open.entry.parts.len() as u32)),
            (None, Some(last)) => Some((last.msn + 1, 0)),
            (None, None) => None,
        }
    }

    /// The init ids a held segment needs.
    pub fn inits_in_use(&self) -> impl Iterator<Item = u32> + '_ {
        self.segments
            .iter()
            .map(|s| s.init)
            .chain(self.open.as_ref().map(|o| o.entry.init))
    }

    /// `#EXT-X-TARGETDURATION`: the configured target, or more if a segment ever was longer.
    pub fn target_duration(&self) -> u64 {
        self.target_secs
    }

    fn render(&mut self) {
        let listed_from = self.segments.len().saturating_sub(self.config.window);
        let unlisted_discontinuities = self
            .segments
            .iter()
            .take(listed_from)
            .filter(|s| s.discontinuity)
            .count() as u64;
        let ll = self.config.low_latency && !self.ended;
        let part_target = self.config.part_target.as_secs_f64();
        let mut out = String::with_capacity(256 + 96 * self.config.window);
        // Writing into a String cannot fail.
        let _ = writeln!(out, "#EXTM3U\n#EXT-X-VERSION:{HLS_VERSION}");
        let _ = writeln!(out, "#EXT-X-TARGETDURATION:{}", self.target_secs);
        if ll {
            let _ = writeln!(
                out,
                "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={:.3}",
                3.0 * part_target
            );
            let _ = writeln!(out, "#EXT-X-PART-INF:PART-TARGET={part_target:.3}");
        }
        let first = self.segments.get(listed_from).map(|s| s.msn);
        let media_sequence = first
            .or(self.open.as_ref().map(|o| o.entry.msn))
            .unwrap_or(0);
        let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{media_sequence}");
        let discontinuity_sequence = self.dropped_discontinuities + unlisted_discontinuities;
        if discontinuity_sequence > 0 {
            let _ = writeln!(
                out,
                "#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuity_sequence}"
            );
        }
        out.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n");
        let listed: Vec<&SegmentEntry> = self.segments.iter().skip(listed_from).collect();
        let parts_from = listed.len().saturating_sub(SEGMENTS_WITH_PARTS);
        let mut init = None;
        for (i, s) in listed.iter().enumerate() {
            write_entry(&mut out, s, &mut init, ll && i >= parts_from);
            out.push_str(&format!(
                "#EXTINF:{:.5},\n{}\n",
                s.duration_secs,
                segment_uri(s.msn)
            ));
        }
        if let Some(open) = self.open.as_ref().filter(|_| ll) {
            write_entry(&mut out, &open.entry, &mut init, true);
        }
        if ll {
            if let Some((msn, index)) = self.next_part() {
                let _ = writeln!(
                    out,
                    "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{}\"",
                    part_uri(msn, index)
                );
            }
        }
        if self.ended {
            out.push_str("#EXT-X-ENDLIST\n");
        }
        self.rendered = Bytes::from(out);
    }
}

/// Writes the tags in front of a segment's URI: map, discontinuity, gap, parts.
fn write_entry(out: &mut String, s: &SegmentEntry, init: &mut Option<u32>, parts: bool) {
    if *init != Some(s.init) {
        let _ = writeln!(out, "#EXT-X-MAP:URI=\"{}\"", init_uri(s.init));
        *init = Some(s.init);
    }
    if s.discontinuity {
        out.push_str("#EXT-X-DISCONTINUITY\n");
    }
    if s.gap {
        out.push_str("#EXT-X-GAP\n");
        return;
    }
    if parts {
        for (i, p) in s.parts.iter().enumerate() {
            let _ = write!(
                out,
                "#EXT-X-PART:DURATION={:.5},URI=\"{}\"",
                p.duration_secs,
                part_uri(s.msn, i as u32)
            );
            out.push_str(if p.independent {
                ",INDEPENDENT=YES\n"
            } else {
                "\n"
            });
        }
    }
}

/// Seconds rounded up, so `EXT-X-TARGETDURATION` is never below a real segment duration
/// (tolerating a millisecond of rounding in the durations).
fn ceil_secs(secs: f64) -> u64 {
    if secs.is_finite() && secs > 0.0 {
        (secs - 0.001).ceil().max(1.0) as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(window: usize, keep: usize) -> PlaylistConfig {
        PlaylistConfig {
            target: Duration::from_secs(2),
            part_target: Duration::from_millis(333),
            window,
            keep,
            low_latency: true,
        }
    }

    fn part(duration_secs: f64, independent: bool) -> PartEntry {
        PartEntry {
            duration_secs,
            independent,
        }
    }

    /// A segment of `n` parts of 0.25 s pushed part by part, then completed.
    fn push(p: &mut Playlist, raw: u64, n: usize) -> u64 {
        for i in 0..n {
            p.push_part(raw, part(0.25, i == 0), false, 7);
        }
        p.push_segment(raw, 0.25 * n as f64, false, 7)
    }

    fn text(p: &Playlist) -> String {
        String::from_utf8(p.rendered().to_vec()).unwrap()
    }

    fn parse(p: &Playlist) -> m3u8_rs::MediaPlaylist {
        m3u8_rs::parse_media_playlist_res(&p.rendered()).unwrap()
    }

    #[test]
    fn renders_a_low_latency_live_playlist() {
        let mut p = Playlist::new(config(6, 10));
        push(&mut p, 4, 8);
        p.push_part(5, part(0.25, true), false, 7);
        let t = text(&p);
        assert!(
            t.starts_with("#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:2\n"),
            "{t}"
        );
        assert!(t.contains("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.999\n"));
        assert!(t.contains("#EXT-X-PART-INF:PART-TARGET=0.333\n"), "{t}");
        assert!(t.contains("#EXT-X-MEDIA-SEQUENCE:4\n"), "{t}");
        assert!(t.contains("#EXT-X-MAP:URI=\"init-00000007.mp4\"\n"), "{t}");
        assert!(t.contains(
            "#EXT-X-PART:DURATION=0.25000,URI=\"part-4.0.m4s\",INDEPENDENT=YES\n\
             #EXT-X-PART:DURATION=0.25000,URI=\"part-4.1.m4s\"\n"
        ));
        assert!(t.contains("#EXTINF:2.00000,\nseg-4.m4s\n#EXT-X-PART:DURATION=0.25000,URI=\"part-5.0.m4s\",INDEPENDENT=YES\n"), "{t}");
        assert!(
            t.ends_with("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-5.1.m4s\"\n"),
            "{t}"
        );
        // a plain HLS parser reads the same playlist
        let parsed = parse(&p);
        assert_eq!(parsed.media_sequence, 4);
        assert_eq!(parsed.segments.len(), 1);
        assert_eq!(parsed.segments[0].uri, "seg-4.m4s");
    }

    #[test]
    fn plain_mode_lists_segments_only() {
        let mut p = Playlist::new(PlaylistConfig {
            low_latency: false,
            ..config(6, 10)
        });
        push(&mut p, 0, 8);
        p.push_part(1, part(0.25, true), false, 7);
        let t = text(&p);
        assert!(!t.contains("PART") && !t.contains("SERVER-CONTROL"), "{t}");
        assert!(t.contains("#EXTINF:2.00000,\nseg-0.m4s\n"));
    }

    #[test]
    fn parts_are_listed_for_the_newest_segments_only() {
        let mut p = Playlist::new(config(6, 10));
        for raw in 0..5 {
            push(&mut p, raw, 4);
        }
        let t = text(&p);
        assert!(!t.contains("part-2."), "{t}");
        assert!(
            t.contains("part-3.0.m4s") && t.contains("part-4.3.m4s"),
            "{t}"
        );
        assert!(p.has_part(0, 3) && !p.has_part(0, 4));
    }

    #[test]
    fn progress_answers_blocking_reload_conditions() {
        let mut p = Playlist::new(config(6, 10));
        assert_eq!(p.progress().last_msn(), None);
        push(&mut p, 10, 3);
        p.push_part(11, part(0.25, true), false, 7);
        let pr = p.progress();
        assert_eq!(pr.last_msn(), Some(11));
        assert!(pr.has(10, None) && pr.has(10, Some(7)));
        assert!(pr.has(11, Some(0)) && !pr.has(11, Some(1)) && !pr.has(11, None));
        assert!(!pr.has(12, Some(0)));
        assert_eq!(p.next_part(), Some((11, 1)));
        p.push_segment(11, 0.25, false, 7);
        assert!(
            p.progress().has(11, Some(5)),
            "a complete segment satisfies any part"
        );
        assert_eq!(p.next_part(), Some((12, 0)));
    }

    #[test]
    fn window_slides_and_media_sequence_is_the_name() {
        let mut p = Playlist::new(config(6, 10));
        for raw in 0..12 {
            push(&mut p, raw, 1);
        }
        let parsed = parse(&p);
        assert_eq!(parsed.media_sequence, 6);
        let uris: Vec<&str> = parsed.segments.iter().map(|s| s.uri.as_str()).collect();
        assert_eq!(
            uris,
            [
                "seg-6.m4s",
                "seg-7.m4s",
                "seg-8.m4s",
                "seg-9.m4s",
                "seg-10.m4s",
                "seg-11.m4s"
            ]
        );
        assert!(
            parsed.segments[0].map.is_some(),
            "map on the first listed segment"
        );
        assert!(p.segment(1).is_none(), "only `keep` segments are held");
        assert!(p.segment(2).is_some(), "held though no longer listed");
    }

    #[test]
    fn lost_groups_become_gaps_and_keep_the_numbering() {
        let mut p = Playlist::new(config(6, 10));
        push(&mut p, 0, 2);
        push(&mut p, 3, 2);
        let t = text(&p);
        assert!(
            t.contains("seg-0.m4s\n#EXT-X-GAP\n#EXTINF:2.00000,\nseg-1.m4s\n#EXT-X-GAP\n#EXTINF:2.00000,\nseg-2.m4s\n"),
            "{t}"
        );
        assert!(p.segment(1).is_none() && p.segment(3).is_some());
        // a hole wider than what is held resets the window
        push(&mut p, 40, 1);
        assert_eq!(parse(&p).media_sequence, 40);
        assert_eq!(p.held().count(), 1);
    }

    #[test]
    fn discontinuities_and_their_sequence() {
        let mut p = Playlist::new(config(2, 3));
        push(&mut p, 0, 1);
        p.push_segment(1, 2.0, true, 7);
        assert!(text(&p).contains("#EXT-X-DISCONTINUITY\n#EXTINF:2.00000,\nseg-1.m4s"));
        assert_eq!(parse(&p).discontinuity_sequence, 0);
        push(&mut p, 2, 1);
        push(&mut p, 3, 1);
        let parsed = parse(&p);
        assert_eq!(parsed.discontinuity_sequence, 1, "the tag scrolled out");
        assert!(parsed.segments.iter().all(|s| !s.discontinuity));
    }

    #[test]
    fn target_duration_rounds_up_and_never_shrinks() {
        let mut p = Playlist::new(config(3, 3));
        p.push_segment(0, 2.0, false, 7);
        assert_eq!(parse(&p).target_duration, 2);
        p.push_segment(1, 2.4, false, 7);
        assert_eq!(parse(&p).target_duration, 3, "2.4 s needs 3, not 2");
        for n in 2..8 {
            p.push_segment(n, 2.0, false, 7);
        }
        assert_eq!(parse(&p).target_duration, 3, "the target never goes down");
    }

    #[test]
    fn restart_keeps_numbering_going_forward_with_a_new_init() {
        let mut p = Playlist::new(config(6, 10));
        push(&mut p, 0, 1);
        push(&mut p, 1, 1);
        p.end();
        let t = text(&p);
        assert!(
            t.ends_with("#EXT-X-ENDLIST\n") && !t.contains("PRELOAD-HINT"),
            "{t}"
        );
        p.restart();
        assert!(!text(&p).contains("ENDLIST"));
        // the new publisher's groups start at 0 again, with a new catalog
        assert_eq!(p.push_segment(0, 2.0, false, 9), 2);
        assert_eq!(p.push_segment(1, 2.0, false, 9), 3);
        let parsed = parse(&p);
        let uris: Vec<&str> = parsed.segments.iter().map(|s| s.uri.as_str()).collect();
        assert_eq!(uris, ["seg-0.m4s", "seg-1.m4s", "seg-2.m4s", "seg-3.m4s"]);
        assert!(parsed.segments[2].discontinuity && !parsed.segments[3].discontinuity);
        let map = parsed.segments[2].map.as_ref().map(|m| m.uri.as_str());
        assert_eq!(
            map,
            Some("init-00000009.mp4"),
            "new init after the catalog change"
        );
        let inits: Vec<u32> = p.inits_in_use().collect();
        assert_eq!(inits, vec![7, 7, 9, 9]);
    }

    #[test]
    fn init_ids_depend_on_content_only() {
        assert_eq!(init_id(b"abc"), init_id(b"abc"));
        assert_ne!(init_id(b"abc"), init_id(b"abd"));
        assert_eq!(init_uri(init_id(b"")), "init-811c9dc5.mp4");
    }
}
