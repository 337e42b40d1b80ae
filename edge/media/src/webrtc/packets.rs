//! Packetize once per frame, not once per viewer.
//!
//! Every viewer of a room receives clones of the same frame (`Bytes` sharing one buffer), so the
//! frame's buffer identifies it across viewers: the first viewer to send a frame splits it into
//! RTP payloads, the others take the same payloads (`Bytes` clones, no copy). The RTP history
//! that answers a viewer's NACKs then holds references to these shared payloads, not copies.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use streamhub_shared::h264::AvcConfig;
use streamhub_shared::media::Frame;
use streamhub_shared::rtp_h264::packetize;

/// Frames remembered: a few frames of every room a node serves at once is plenty (viewers of a
/// room send the same frame within microseconds of each other; a late joiner's first group
/// misses the cache and is packetized again, which is correct, only slower).
const CACHED_FRAMES: usize = 256;

/// Which frame, packetized how: the payload buffer, its length, whether parameter sets lead it,
/// and which decoder configuration (the catalog's avcC buffer: viewers that started on another
/// configuration get its parameter sets). The entry holds both buffers alive, so neither
/// address can be reused while it is cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    addr: usize,
    len: usize,
    params: bool,
    config: usize,
}

#[derive(Debug)]
struct Entry {
    key: Key,
    _frame: Bytes,
    _config: Bytes,
    payloads: Arc<[Bytes]>,
}

/// Recently packetized H.264 frames.
#[derive(Debug, Default)]
pub(super) struct PacketCache {
    entries: Mutex<VecDeque<Entry>>,
}

impl PacketCache {
    /// The RTP payloads of `frame` (parameter sets first if `params`), computed once per
    /// configuration; `avcc` is the record `avc` was parsed from.
    pub fn h264(
        &self,
        frame: &Frame,
        avc: &AvcConfig,
        avcc: &Bytes,
        params: bool,
        mtu: usize,
    ) -> Arc<[Bytes]> {
        let key = Key {
            addr: frame.data.as_ptr() as usize,
            len: frame.data.len(),
            params,
            config: avcc.as_ptr() as usize,
        };
        {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            // Newest first: viewers ask for the frame just pushed.
            if let Some(e) = entries.iter().rev().find(|e| e.key == key) {
                return e.payloads.clone();
            }
        }
        let payloads: Arc<[Bytes]> =
            packetize(&frame.data, avc.nal_length_size, params.then_some(avc), mtu).into();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHED_FRAMES {
            entries.pop_front();
        }
        entries.push_back(Entry {
            key,
            _frame: frame.data.clone(),
            _config: avcc.clone(),
            payloads: payloads.clone(),
        });
        payloads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avc() -> (AvcConfig, Bytes) {
        // x264 640x360 High profile record.
        let rec: &'static [u8] = &[
            0x01, 0x64, 0x00, 0x1e, 0xff, 0xe1, 0x00, 0x1a, 0x67, 0x64, 0x00, 0x1e, 0xac, 0xd9,
            0x40, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x03,
            0x00, 0x32, 0x0f, 0x16, 0x2d, 0x96, 0x01, 0x00, 0x06, 0x68, 0xeb, 0xe3, 0xcb, 0x22,
            0xc0, 0xfd, 0xf8, 0xf8, 0x00,
        ];
        (AvcConfig::parse(rec).unwrap(), Bytes::from_static(rec))
    }

    fn frame(data: Bytes) -> Frame {
        Frame {
            track: 0,
            group: 0,
            dts: 0,
            pts: 0,
            keyframe: true,
            data,
        }
    }

    #[test]
    fn viewers_of_one_frame_share_its_payloads() {
        let cache = PacketCache::default();
        let (avc, avcc) = avc();
        let mut au = vec![0, 0, 0x0b, 0xb8, 0x65];
        au.resize(3000 + 4, 7);
        let f = frame(Bytes::from(au));
        let a = cache.h264(&f.clone(), &avc, &avcc, true, 1200);
        let b = cache.h264(&f.clone(), &avc, &avcc, true, 1200);
        assert!(
            Arc::ptr_eq(&a, &b),
            "the second viewer takes the first one's payloads"
        );
        assert_eq!(a[..], packetize(&f.data, 4, Some(&avc), 1200)[..]);
        // Same frame without parameter sets, or another frame with equal bytes: not the same.
        let c = cache.h264(&f, &avc, &avcc, false, 1200);
        assert_eq!(c.len(), a.len() - 1, "no STAP-A of SPS/PPS");
        let g = frame(Bytes::copy_from_slice(&f.data));
        assert!(!Arc::ptr_eq(&cache.h264(&g, &avc, &avcc, true, 1200), &a));
        // A viewer that started on another configuration gets its own parameter sets.
        let other = Bytes::copy_from_slice(&avcc);
        assert!(!Arc::ptr_eq(&cache.h264(&f, &avc, &other, true, 1200), &a));
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = PacketCache::default();
        let (avc, avcc) = avc();
        for i in 0..(CACHED_FRAMES * 3) {
            let f = frame(Bytes::from(vec![0, 0, 0, 2, 0x41, i as u8]));
            cache.h264(&f, &avc, &avcc, false, 1200);
        }
        assert_eq!(cache.entries.lock().unwrap().len(), CACHED_FRAMES);
    }
}
