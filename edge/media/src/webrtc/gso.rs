//! Batching a session's outgoing datagrams for UDP GSO (generic segmentation offload).
//!
//! The packets of one video frame go to one viewer back to back and all but the last have the
//! same size (full FU-A fragments): the kernel takes them in one `sendmsg` with `UDP_SEGMENT`
//! and splits them as late as it can, instead of walking the UDP/IP stack once per packet.
//! Sans-IO: [`GsoBatch`] only decides what goes together; the session sends it (through
//! `quinn-udp`, which falls back to one datagram per call where GSO is missing).

use std::net::SocketAddr;

/// Bytes per batch (~20 packets): well under the 64 KiB a GSO super-packet can hold, and the
/// buffer each session keeps stays small.
const MAX_BATCH_BYTES: usize = 24_000;

/// Datagrams to one destination, all of `segment` bytes but possibly the last (shorter).
#[derive(Debug, Default)]
pub(super) struct GsoBatch {
    buf: Vec<u8>,
    dest: Option<SocketAddr>,
    segment: usize,
    count: usize,
    /// A shorter datagram ended the batch (GSO allows only the last segment to be short).
    closed: bool,
}

/// A batch ready to send.
pub(super) struct Ready<'a> {
    pub dest: SocketAddr,
    pub contents: &'a [u8],
    /// The segment size when the batch holds more than one datagram.
    pub segment: Option<usize>,
    pub datagrams: usize,
}

impl GsoBatch {
    /// Whether a datagram of `len` bytes to `dest` can join this batch (of at most `max`).
    pub fn fits(&self, dest: SocketAddr, len: usize, max: usize) -> bool {
        self.count == 0
            || (self.dest == Some(dest)
                && !self.closed
                && len <= self.segment
                && self.count < max
                && self.buf.len() + len <= MAX_BATCH_BYTES)
    }

    /// Adds a datagram; call [`fits`](Self::fits) first (and send the batch if it does not).
    pub fn add(&mut self, dest: SocketAddr, data: &[u8]) {
        if self.count == 0 {
            self.dest = Some(dest);
            self.segment = data.len();
        } else if data.len() < self.segment {
            self.closed = true;
        }
        self.buf.extend_from_slice(data);
        self.count += 1;
    }

    /// The batch to send, if it holds anything.
    pub fn ready(&self) -> Option<Ready<'_>> {
        Some(Ready {
            dest: self.dest.filter(|_| self.count > 0)?,
            contents: &self.buf,
            segment: (self.count > 1).then_some(self.segment),
            datagrams: self.count,
        })
    }

    /// Empties the batch (keeps the buffer).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.dest = None;
        self.count = 0;
        self.closed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Feeds datagrams (destination port, length) and returns the batches as sent.
    fn batches(datagrams: &[(u16, usize)], max: usize) -> Vec<(u16, usize, Option<usize>)> {
        let mut b = GsoBatch::default();
        let mut out = Vec::new();
        let mut send = |b: &mut GsoBatch| {
            if let Some(r) = b.ready() {
                out.push((r.dest.port(), r.datagrams, r.segment));
                assert_eq!(r.contents.len(), b.buf.len());
            }
            b.clear();
        };
        for &(port, len) in datagrams {
            if !b.fits(addr(port), len, max) {
                send(&mut b);
            }
            b.add(addr(port), &vec![0; len]);
        }
        send(&mut b);
        out
    }

    #[test]
    fn a_frame_to_one_viewer_goes_in_one_batch_with_a_short_last_packet() {
        let frame = [(1, 1230), (1, 1230), (1, 1230), (1, 400)];
        assert_eq!(batches(&frame, 64), vec![(1, 4, Some(1230))]);
    }

    #[test]
    fn batches_break_on_destination_size_growth_count_and_after_a_short_packet() {
        let d = [(1, 100), (2, 100), (2, 200), (2, 200), (2, 50), (2, 50)];
        assert_eq!(
            batches(&d, 64),
            vec![(1, 1, None), (2, 1, None), (2, 3, Some(200)), (2, 1, None)]
        );
        assert_eq!(
            batches(&[(1, 10); 5], 2),
            vec![(1, 2, Some(10)), (1, 2, Some(10)), (1, 1, None)]
        );
        // Never over ~60 KB in one super-packet.
        let big = batches(&[(1, 1200); 100], 64);
        assert!(big.iter().all(|(_, n, _)| n * 1200 <= MAX_BATCH_BYTES));
        assert_eq!(big.iter().map(|b| b.1).sum::<usize>(), 100);
    }
}
