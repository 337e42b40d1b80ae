//! Puts the group streams of one subscription back into one ordered run of frames. Sans-IO.
//!
//! The origin sends each group on its own QUIC stream, newest first under congestion, so the
//! streams of two neighbouring groups may be in flight at once and their bytes interleave in
//! any order. Consumers (the packager) need the origin's order: every frame of group `g`, then
//! those of `g + 1`. So frames of the group being delivered pass straight through (no added
//! latency), frames of later groups wait, bounded, until it ends.
//!
//! A group that ends without its FIN (the origin gave up on it), that is skipped, or that is
//! abandoned because later groups piled up behind it becomes a [`Delivery::Gap`]: the consumer
//! drops what it holds of it, so no node ever publishes a truncated group under the name of a
//! complete one.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use streamhub_shared::Frame;

/// Later groups buffered behind the delivered one before it is abandoned (more while a
/// back-fill arrives: see [`Reorder::with_backfill`]).
pub const MAX_PENDING_GROUPS: usize = 3;
/// Bytes buffered behind the delivered group before it is abandoned.
pub const MAX_PENDING_BYTES: usize = 32 << 20;
/// How long a group that has not shown a single byte is awaited while later ones have: long
/// enough for a stream overtaken by a newer one, short enough that a group the origin reset
/// before its header left (so the edge never learns its number) does not hold the room.
pub const MISSING_GROUP_WAIT: Duration = Duration::from_millis(500);
/// The same for a kept (back-filled) group: they come one after the other while live groups
/// flow, so one may show up later, but a hole in the origin's history must not hold the room.
pub const KEPT_GROUP_WAIT: Duration = Duration::from_secs(2);

/// What the reorderer hands on, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The next frame.
    Frame(Frame),
    /// Frames were lost between the previous delivery and the next; `partial` when some frames
    /// of the lost group were delivered (so what was delivered of it is incomplete).
    Gap { partial: bool },
}

#[derive(Debug, Default)]
struct Pending {
    frames: VecDeque<Frame>,
    bytes: usize,
    /// `Some(true)` once the stream ended with its FIN, `Some(false)` if it was reset.
    ended: Option<bool>,
}

/// Reorders the groups of one subscription.
#[derive(Debug, Default)]
pub struct Reorder {
    /// The group being delivered (or expected next).
    current: Option<u64>,
    /// The last group delivered completely.
    last_complete: Option<u64>,
    /// Frames of `current` were handed on (so losing the rest of it is a gap).
    started: bool,
    pending: BTreeMap<u64, Pending>,
    pending_bytes: usize,
    out: VecDeque<Delivery>,
    /// Some frame was ever handed on (a gap before the first one means nothing).
    delivered: bool,
    /// Since when the current group is awaited with nothing of it seen but later groups are.
    missing_since: Option<Instant>,
    /// Groups given up on, for metrics.
    abandoned: u64,
    /// Later groups that may wait behind the current one (at least [`MAX_PENDING_GROUPS`]).
    max_pending: usize,
    /// The first live group of a back-filling subscription: the groups before it are sent in
    /// order, one stream after the other, so one not seen yet is awaited longer
    /// ([`KEPT_GROUP_WAIT`]).
    live_group: Option<u64>,
}

impl Reorder {
    /// A reorderer waiting for `first` (the catalog's latest group), or for whatever comes.
    pub fn new(first: Option<u64>) -> Self {
        Self {
            current: first,
            ..Self::default()
        }
    }

    /// A reorderer for a subscription that asked for `backfill` groups before the newest and
    /// whose live groups start at `live_group`: the origin queues the kept groups one after the
    /// other (older first) while live ones flow, and the streams are read side by side, so that
    /// many more later groups may arrive while the oldest still does (still bounded by
    /// [`MAX_PENDING_BYTES`]), and a kept group not under way yet is awaited longer.
    pub fn with_backfill(first: Option<u64>, backfill: u8, live_group: Option<u64>) -> Self {
        Self {
            max_pending: MAX_PENDING_GROUPS + usize::from(backfill),
            live_group: live_group.filter(|_| backfill > 0),
            ..Self::new(first)
        }
    }

    /// True when no group is under way or waiting (everything received was delivered).
    pub fn is_idle(&self) -> bool {
        !self.started && self.pending.is_empty()
    }

    /// Groups given up on so far.
    pub fn abandoned(&self) -> u64 {
        self.abandoned
    }

    /// When [`on_timeout`](Self::on_timeout) should be called, if anything waits on the clock.
    pub fn deadline(&self) -> Option<Instant> {
        let kept = self
            .live_group
            .zip(self.current)
            .is_some_and(|(live, current)| current < live);
        let wait = if kept {
            KEPT_GROUP_WAIT
        } else {
            MISSING_GROUP_WAIT
        };
        self.missing_since.map(|t| t + wait)
    }

    /// The clock reached `now`: a group that never showed up is skipped once it has been
    /// awaited for [`MISSING_GROUP_WAIT`].
    pub fn on_timeout(&mut self, now: Instant) {
        if !self.started && self.deadline().is_some_and(|d| now >= d) {
            if let Some(current) = self.current {
                self.missing_since = None;
                self.abandoned += 1;
                self.out.push_back(Delivery::Gap { partial: false });
                self.advance(current, false);
                self.settle(now);
            }
        }
    }

    /// A frame of `group` arrived on its stream at `now`.
    pub fn frame(&mut self, group: u64, frame: Frame, now: Instant) {
        if self.is_past(group) {
            return;
        }
        let current = *self.current.get_or_insert(group);
        if group < current {
            // Older than what we wait for, yet not delivered: a newer group started first.
            return;
        }
        if group == current && self.pending.get(&group).is_none_or(|p| p.frames.is_empty()) {
            self.started = true;
            self.missing_since = None;
            self.out.push_back(Delivery::Frame(frame));
            return;
        }
        let bytes = frame.data.len();
        let p = self.pending.entry(group).or_default();
        p.bytes += bytes;
        p.frames.push_back(frame);
        self.pending_bytes += bytes;
        self.settle(now);
    }

    /// The stream of `group` ended at `now`: `clean` with its FIN, else reset or broken.
    pub fn end(&mut self, group: u64, clean: bool, now: Instant) {
        if self.is_past(group) {
            return;
        }
        self.pending.entry(group).or_default().ended = Some(clean);
        if self.current.is_none() {
            self.current = Some(group);
        }
        self.settle(now);
    }

    /// The next delivery, if any.
    pub fn poll(&mut self) -> Option<Delivery> {
        let d = self.out.pop_front()?;
        if matches!(d, Delivery::Gap { .. }) && !self.delivered {
            return self.poll();
        }
        self.delivered = true;
        Some(d)
    }

    fn is_past(&self, group: u64) -> bool {
        self.last_complete.is_some_and(|c| group <= c)
            || self.current.is_some_and(|c| group < c && self.started)
    }

    /// Delivers what can be delivered and gives up on the current group if too much waits.
    ///
    /// A group that has not been seen yet is waited for like one that is under way: newer
    /// groups have a higher stream priority at the origin, so their first bytes often arrive
    /// before the rest (or even the header) of the group before them.
    fn settle(&mut self, now: Instant) {
        loop {
            let Some(current) = self.current else { return };
            if let Some(p) = self.pending.get_mut(&current) {
                // Frames of the current group that arrived while it was not at the front.
                while let Some(f) = p.frames.pop_front() {
                    p.bytes -= f.data.len();
                    self.pending_bytes -= f.data.len();
                    self.started = true;
                    self.out.push_back(Delivery::Frame(f));
                }
                if let Some(clean) = p.ended {
                    self.pending.remove(&current);
                    self.advance(current, !clean);
                    continue;
                }
            }
            let later = self.pending.range(current + 1..).count();
            let max_pending = self.max_pending.max(MAX_PENDING_GROUPS);
            if later > max_pending || self.pending_bytes > MAX_PENDING_BYTES {
                self.abandoned += 1;
                if let Some(p) = self.pending.remove(&current) {
                    self.pending_bytes -= p.bytes;
                }
                self.out.push_back(Delivery::Gap {
                    partial: self.started,
                });
                self.advance(current, false);
                continue;
            }
            let missing = !self.started && !self.pending.contains_key(&current) && later > 0;
            self.missing_since = match (missing, self.missing_since) {
                (true, Some(t)) => Some(t),
                (true, None) => Some(now),
                (false, _) => None,
            };
            return;
        }
    }

    /// `group` is done: `lost` if it ended without completing. Moves on to the next group.
    fn advance(&mut self, group: u64, lost: bool) {
        if lost && self.started {
            self.out.push_back(Delivery::Gap { partial: true });
        }
        if !lost {
            self.last_complete = Some(group);
        }
        self.started = false;
        self.current = Some(group + 1);
        let stale: Vec<u64> = self.pending.range(..=group).map(|(g, _)| *g).collect();
        for g in stale {
            if let Some(p) = self.pending.remove(&g) {
                self.pending_bytes -= p.bytes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn f(group: u64, n: i64) -> Frame {
        Frame {
            track: 0,
            group,
            dts: n,
            pts: n,
            keyframe: n == 0,
            data: Bytes::from(vec![0u8; 10]),
        }
    }

    impl Reorder {
        fn frame_at(&mut self, group: u64, frame: Frame) {
            self.frame(group, frame, Instant::now());
        }

        fn end_at(&mut self, group: u64, clean: bool) {
            self.end(group, clean, Instant::now());
        }
    }

    fn drain(r: &mut Reorder) -> Vec<String> {
        std::iter::from_fn(|| r.poll())
            .map(|d| match d {
                Delivery::Frame(fr) => format!("{}.{}", fr.group, fr.dts),
                Delivery::Gap { partial: true } => "gap".into(),
                Delivery::Gap { partial: false } => "skip".into(),
            })
            .collect()
    }

    #[test]
    fn in_order_groups_pass_straight_through() {
        let mut r = Reorder::new(Some(5));
        r.frame_at(5, f(5, 0));
        r.frame_at(5, f(5, 1));
        assert_eq!(drain(&mut r), ["5.0", "5.1"]);
        r.end_at(5, true);
        r.frame_at(6, f(6, 0));
        assert_eq!(drain(&mut r), ["6.0"]);
    }

    #[test]
    fn a_later_group_waits_for_the_current_one() {
        let mut r = Reorder::new(Some(1));
        r.frame_at(1, f(1, 0));
        r.frame_at(2, f(2, 0)); // the next stream raced ahead
        r.frame_at(1, f(1, 1));
        assert_eq!(drain(&mut r), ["1.0", "1.1"]);
        r.frame_at(2, f(2, 1));
        assert!(drain(&mut r).is_empty());
        r.end_at(1, true);
        assert_eq!(drain(&mut r), ["2.0", "2.1"]);
        r.frame_at(1, f(1, 9)); // late bytes of a finished group
        assert!(drain(&mut r).is_empty());
    }

    #[test]
    fn a_reset_group_is_a_gap_and_the_next_one_follows() {
        let mut r = Reorder::new(Some(1));
        r.frame_at(1, f(1, 0));
        r.frame_at(2, f(2, 0));
        r.end_at(1, false);
        assert_eq!(drain(&mut r), ["1.0", "gap", "2.0"]);
    }

    #[test]
    fn a_later_group_may_overtake_the_next_one() {
        let mut r = Reorder::new(Some(1));
        r.frame_at(1, f(1, 0));
        r.frame_at(3, f(3, 0)); // newer first: 3's bytes before 2's header
        r.end_at(1, true);
        assert_eq!(drain(&mut r), ["1.0"], "2 is awaited");
        r.frame_at(2, f(2, 0));
        r.end_at(2, true);
        assert_eq!(drain(&mut r), ["2.0", "3.0"]);
    }

    #[test]
    fn a_group_that_never_comes_is_a_gap_once_later_ones_pile_up() {
        let mut r = Reorder::new(Some(1));
        r.frame_at(1, f(1, 0));
        r.end_at(1, true);
        for g in 3..=(3 + MAX_PENDING_GROUPS as u64) {
            r.frame_at(g, f(g, 0));
            r.end_at(g, true);
        }
        let out = drain(&mut r);
        assert_eq!(
            out[..3],
            ["1.0".to_string(), "skip".to_string(), "3.0".to_string()]
        );
        assert_eq!(out.len(), 2 + MAX_PENDING_GROUPS + 1, "{out:?}");
    }

    #[test]
    fn a_stuck_group_is_abandoned_when_later_ones_pile_up() {
        let mut r = Reorder::new(Some(1));
        r.frame_at(1, f(1, 0));
        for g in 2..=(2 + MAX_PENDING_GROUPS as u64) {
            r.frame_at(g, f(g, 0));
            r.end_at(g, true);
        }
        let out = drain(&mut r);
        assert_eq!(out[..2], ["1.0".to_string(), "gap".to_string()]);
        assert_eq!(out.len(), 2 + MAX_PENDING_GROUPS + 1, "{out:?}");
        assert_eq!(r.abandoned(), 1);
    }

    #[test]
    fn a_backfilled_window_read_side_by_side_is_delivered_whole() {
        // Six kept groups and the live one, every stream under way at once; the oldest ends
        // last.
        let mut r = Reorder::with_backfill(Some(0), 6, Some(6));
        for g in 0..=6 {
            r.frame_at(g, f(g, 0));
        }
        for g in (0..=6).rev() {
            r.end_at(g, true);
        }
        let out = drain(&mut r);
        assert_eq!(out, ["0.0", "1.0", "2.0", "3.0", "4.0", "5.0", "6.0"]);
        assert_eq!(r.abandoned(), 0);
        // A kept group not under way yet is awaited while the live ones come.
        let t0 = Instant::now();
        let mut r = Reorder::with_backfill(Some(0), 6, Some(6));
        r.frame(0, f(0, 0), t0);
        r.end(0, true, t0);
        r.frame(6, f(6, 0), t0);
        r.on_timeout(t0 + MISSING_GROUP_WAIT * 2);
        r.frame(1, f(1, 0), t0 + MISSING_GROUP_WAIT * 2);
        r.end(1, true, t0 + MISSING_GROUP_WAIT * 2);
        assert_eq!(drain(&mut r), ["0.0", "1.0"]);
        // One that never comes (a hole in the origin's history) is skipped after a while.
        r.on_timeout(t0 + MISSING_GROUP_WAIT * 2 + KEPT_GROUP_WAIT);
        assert_eq!(drain(&mut r), ["skip"]);
        assert_eq!(r.abandoned(), 1);
        // Without the allowance the same arrival loses groups.
        let mut r = Reorder::new(Some(0));
        for g in 0..=6 {
            r.frame_at(g, f(g, 0));
        }
        assert!(r.abandoned() > 0);
    }

    #[test]
    fn the_awaited_first_group_may_never_come() {
        let mut r = Reorder::new(Some(7));
        for g in 8..=(8 + MAX_PENDING_GROUPS as u64) {
            r.frame_at(g, f(g, 0));
        }
        assert_eq!(drain(&mut r), ["8.0"], "no gap before the first frame");
    }

    #[test]
    fn a_group_that_never_shows_up_is_skipped_after_a_while() {
        let t0 = Instant::now();
        let mut r = Reorder::new(Some(1));
        r.frame(1, f(1, 0), t0);
        r.end(1, true, t0);
        r.frame(3, f(3, 0), t0); // 2 was reset before its header left the origin
        r.end(3, true, t0);
        assert_eq!(drain(&mut r), ["1.0"]);
        assert_eq!(r.deadline(), Some(t0 + MISSING_GROUP_WAIT));
        r.on_timeout(t0 + MISSING_GROUP_WAIT / 2);
        assert!(drain(&mut r).is_empty(), "not yet");
        r.on_timeout(t0 + MISSING_GROUP_WAIT);
        assert_eq!(drain(&mut r), ["skip", "3.0"]);
        assert_eq!(r.deadline(), None);
    }

    #[test]
    fn buffered_bytes_are_bounded() {
        let mut r = Reorder::new(Some(1));
        r.frame_at(1, f(1, 0));
        let mut big = f(2, 0);
        big.data = Bytes::from(vec![0u8; MAX_PENDING_BYTES + 1]);
        r.frame_at(2, big);
        let out = drain(&mut r);
        assert_eq!(out, ["1.0", "gap", "2.0"]);
        assert_eq!(r.pending_bytes, 0);
    }
}
