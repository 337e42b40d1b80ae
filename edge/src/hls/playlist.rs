//! The live media playlist of one room: a sliding window over the newest segments, rendered once
//! per change into shared `Bytes` (every viewer gets a clone of the same buffer).
//!
//! Two numbers per segment: its `name` (the deterministic segment number from the segmenter, in
//! the URI, identical on every node) and its HLS media sequence number (`sequence`), which must
//! grow by exactly one per segment and so is counted locally. A segment of two GOPs skips a group
//! number, which a media sequence number may not do.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use m3u8_rs::{Map, MediaPlaylist, MediaSegment};

use super::segmenter::Segment;

/// `#EXT-X-VERSION`: fMP4 segments with `EXT-X-MAP` need 6+; 7 is what LL-HLS will need too.
pub const HLS_VERSION: usize = 7;

/// One segment held by a playlist.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaylistSegment {
    /// HLS media sequence number (consecutive).
    pub sequence: u64,
    /// Number in the URI `seg-<name>.m4s`: the segmenter's `msn`, shifted only if a publisher
    /// restart would reuse a name.
    pub name: u64,
    /// Duration written in `#EXTINF`.
    pub duration_secs: f64,
    /// Preceded by `#EXT-X-DISCONTINUITY`.
    pub discontinuity: bool,
    /// Which init segment decodes it (see [`init_uri`]).
    pub init_version: u32,
    /// `moof` + `mdat`.
    pub data: Bytes,
}

/// URI of an init segment version: `init.mp4` for the first one, `init-<v>.mp4` after a catalog
/// change (old segments in the window keep pointing at the init that decodes them).
pub fn init_uri(version: u32) -> String {
    match version {
        0 => "init.mp4".to_string(),
        v => format!("init-{v}.mp4"),
    }
}

/// URI of a media segment.
pub fn segment_uri(name: u64) -> String {
    format!("seg-{name}.m4s")
}

/// A live media playlist and the segments it can still serve.
#[derive(Debug)]
pub struct Playlist {
    target_secs: u64,
    window: usize,
    keep: usize,
    segments: VecDeque<PlaylistSegment>,
    next_sequence: u64,
    /// Discontinuity tags of segments no longer held.
    dropped_discontinuities: u64,
    longest_secs: f64,
    name_offset: u64,
    restart_pending: bool,
    ended: bool,
    rendered: Bytes,
}

impl Playlist {
    /// An empty playlist listing the newest `window` segments and holding the newest `keep`
    /// (at least `window`) so a slow player can still fetch what it saw listed.
    pub fn new(target: Duration, window: usize, keep: usize) -> Self {
        let window = window.max(1);
        let mut playlist = Self {
            target_secs: ceil_secs(target.as_secs_f64()).max(1),
            window,
            keep: keep.max(window),
            segments: VecDeque::new(),
            next_sequence: 0,
            dropped_discontinuities: 0,
            longest_secs: 0.0,
            name_offset: 0,
            restart_pending: false,
            ended: false,
            rendered: Bytes::new(),
        };
        playlist.render();
        playlist
    }

    /// Appends a finished segment decoded by init `init_version`; returns its sequence number.
    pub fn push(&mut self, segment: Segment, init_version: u32) -> u64 {
        let mut name = segment.msn.saturating_add(self.name_offset);
        if let Some(last) = self.segments.back().map(|s| s.name) {
            if name <= last {
                // A new publisher numbers its groups from 0 again: names never go backwards.
                self.name_offset += last + 1 - name;
                name = last + 1;
            }
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.longest_secs = self.longest_secs.max(segment.duration_secs);
        self.segments.push_back(PlaylistSegment {
            sequence,
            name,
            duration_secs: segment.duration_secs,
            discontinuity: segment.discontinuity || std::mem::take(&mut self.restart_pending),
            init_version,
            data: segment.data,
        });
        while self.segments.len() > self.keep {
            if let Some(old) = self.segments.pop_front() {
                self.dropped_discontinuities += u64::from(old.discontinuity);
            }
        }
        self.render();
        sequence
    }

    /// A new publisher took the room: the next segment is a discontinuity, the room is live again.
    pub fn restart(&mut self) {
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

    /// A held segment by the number in its URI.
    pub fn segment(&self, name: u64) -> Option<&PlaylistSegment> {
        let idx = self.segments.binary_search_by_key(&name, |s| s.name).ok()?;
        self.segments.get(idx)
    }

    /// The oldest init version a held segment needs.
    pub fn oldest_init_version(&self) -> Option<u32> {
        self.segments.iter().map(|s| s.init_version).min()
    }

    /// `#EXT-X-TARGETDURATION`: the configured target, or more if a segment ever was longer.
    pub fn target_duration(&self) -> u64 {
        self.target_secs.max(ceil_secs(self.longest_secs))
    }

    fn render(&mut self) {
        let listed_from = self.segments.len().saturating_sub(self.window);
        let unlisted_discontinuities = self
            .segments
            .iter()
            .take(listed_from)
            .filter(|s| s.discontinuity)
            .count() as u64;
        let mut previous_init = None;
        let segments = self
            .segments
            .iter()
            .skip(listed_from)
            .map(|s| {
                let map = (previous_init != Some(s.init_version)).then(|| Map {
                    uri: init_uri(s.init_version),
                    ..Default::default()
                });
                previous_init = Some(s.init_version);
                MediaSegment {
                    uri: segment_uri(s.name),
                    duration: s.duration_secs as f32,
                    discontinuity: s.discontinuity,
                    map,
                    ..Default::default()
                }
            })
            .collect();
        let playlist = MediaPlaylist {
            version: Some(HLS_VERSION),
            target_duration: self.target_duration(),
            media_sequence: self
                .segments
                .get(listed_from)
                .map_or(self.next_sequence, |s| s.sequence),
            discontinuity_sequence: self.dropped_discontinuities + unlisted_discontinuities,
            end_list: self.ended,
            independent_segments: true,
            segments,
            ..Default::default()
        };
        let mut out = Vec::with_capacity(128 + 64 * self.window);
        // Writing into a Vec cannot fail.
        if playlist.write_to(&mut out).is_ok() {
            self.rendered = Bytes::from(out);
        }
    }
}

/// Seconds rounded up, so `EXT-X-TARGETDURATION` is never below a real segment duration.
fn ceil_secs(secs: f64) -> u64 {
    if secs.is_finite() && secs > 0.0 {
        secs.ceil() as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(msn: u64, duration_secs: f64) -> Segment {
        Segment {
            msn,
            duration_secs,
            discontinuity: false,
            data: Bytes::from(format!("segment {msn}")),
        }
    }

    fn text(p: &Playlist) -> String {
        String::from_utf8(p.rendered().to_vec()).unwrap()
    }

    fn parse(p: &Playlist) -> MediaPlaylist {
        m3u8_rs::parse_media_playlist_res(&p.rendered()).unwrap()
    }

    #[test]
    fn renders_a_live_playlist() {
        let mut p = Playlist::new(Duration::from_secs(2), 6, 10);
        p.push(seg(0, 2.0), 0);
        p.push(seg(2, 2.0), 0);
        let t = text(&p);
        assert!(t.starts_with("#EXTM3U\n#EXT-X-VERSION:7\n"), "{t}");
        assert!(t.contains("#EXT-X-TARGETDURATION:2\n"), "{t}");
        assert!(t.contains("#EXT-X-MAP:URI=\"init.mp4\"\n"), "{t}");
        assert_eq!(t.matches("#EXT-X-MAP").count(), 1, "one map for one init");
        assert!(
            t.contains("#EXTINF:2,\nseg-0.m4s\n#EXTINF:2,\nseg-2.m4s\n"),
            "{t}"
        );
        assert!(!t.contains("ENDLIST"));
        assert!(!t.contains("DISCONTINUITY"));
        let parsed = parse(&p);
        assert_eq!(parsed.media_sequence, 0);
        assert_eq!(parsed.segments.len(), 2);
    }

    #[test]
    fn target_duration_rounds_up_and_never_shrinks() {
        let mut p = Playlist::new(Duration::from_secs(2), 3, 3);
        p.push(seg(0, 2.0), 0);
        assert_eq!(parse(&p).target_duration, 2);
        p.push(seg(1, 2.4), 0);
        assert_eq!(parse(&p).target_duration, 3, "2.4 s needs 3, not 2");
        for n in 2..8 {
            p.push(seg(n, 2.0), 0);
        }
        assert!(p.segment(1).is_none(), "the long segment is gone");
        assert_eq!(
            parse(&p).target_duration,
            3,
            "but the target never goes down"
        );
    }

    #[test]
    fn window_slides_and_media_sequence_counts_segments() {
        let mut p = Playlist::new(Duration::from_secs(2), 6, 10);
        // names skip (two groups per segment); sequence numbers do not
        for n in 0..12 {
            p.push(seg(n * 2, 2.0), 0);
        }
        let parsed = parse(&p);
        assert_eq!(parsed.media_sequence, 6);
        let uris: Vec<&str> = parsed.segments.iter().map(|s| s.uri.as_str()).collect();
        assert_eq!(
            uris,
            [
                "seg-12.m4s",
                "seg-14.m4s",
                "seg-16.m4s",
                "seg-18.m4s",
                "seg-20.m4s",
                "seg-22.m4s"
            ]
        );
        assert!(
            parsed.segments[0].map.is_some(),
            "map on the first listed segment"
        );
        assert!(p.segment(2).is_none(), "only `keep` segments are held");
        assert!(p.segment(4).is_some(), "held though no longer listed");
        assert_eq!(p.segment(22).map(|s| s.sequence), Some(11));
    }

    #[test]
    fn discontinuities_and_their_sequence() {
        let mut p = Playlist::new(Duration::from_secs(2), 2, 3);
        p.push(seg(0, 2.0), 0);
        let mut d = seg(1, 2.0);
        d.discontinuity = true;
        p.push(d, 0);
        assert!(text(&p).contains("#EXT-X-DISCONTINUITY\n#EXTINF:2,\nseg-1.m4s"));
        assert_eq!(parse(&p).discontinuity_sequence, 0);
        p.push(seg(2, 2.0), 0);
        p.push(seg(3, 2.0), 0);
        let parsed = parse(&p);
        assert_eq!(parsed.discontinuity_sequence, 1, "the tag scrolled out");
        assert!(parsed.segments.iter().all(|s| !s.discontinuity));
    }

    #[test]
    fn restart_keeps_numbering_going_forward() {
        let mut p = Playlist::new(Duration::from_secs(2), 6, 10);
        p.push(seg(0, 2.0), 0);
        p.push(seg(2, 2.0), 0);
        p.end();
        assert!(text(&p).ends_with("#EXT-X-ENDLIST\n"));
        p.restart();
        assert!(!text(&p).contains("ENDLIST"));
        // the new publisher's groups start at 0 again, with a new catalog
        assert_eq!(p.push(seg(0, 2.0), 1), 2);
        p.push(seg(2, 2.0), 1);
        let parsed = parse(&p);
        let uris: Vec<&str> = parsed.segments.iter().map(|s| s.uri.as_str()).collect();
        assert_eq!(uris, ["seg-0.m4s", "seg-2.m4s", "seg-3.m4s", "seg-5.m4s"]);
        assert!(parsed.segments[2].discontinuity);
        assert!(!parsed.segments[3].discontinuity);
        let map = parsed.segments[2].map.as_ref().map(|m| m.uri.as_str());
        assert_eq!(map, Some("init-1.mp4"), "new init after the catalog change");
        assert_eq!(p.oldest_init_version(), Some(0));
    }
}
