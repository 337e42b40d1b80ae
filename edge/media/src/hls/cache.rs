//! The node's media cache: the bytes of every HLS segment and part of every room, in one moka
//! cache bounded by bytes (`--cache-bytes`).
//!
//! A segment is muxed once, when its group completes, and every later request is a clone of the
//! cached `Bytes`. The policy is plain LRU, not moka's default TinyLFU: a live segment is new by
//! definition, and a frequency-based admission could refuse the newest segment in favour of old
//! popular ones. When the cache is too small for what the playlists list, the oldest media is
//! evicted first and a request for it gets 404, exactly as if it had scrolled out of the window.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use moka::policy::EvictionPolicy;

/// Bytes counted per entry on top of its payload (key, bookkeeping).
const ENTRY_OVERHEAD: u32 = 64;

/// What a cache entry is; `room` is the [`HlsRoom`](super::HlsRoom)'s node-unique id, so a room
/// that is removed and started again never sees the old room's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKey {
    /// A complete segment.
    Segment {
        /// The room's id.
        room: u64,
        /// Its media sequence number.
        msn: u64,
    },
    /// A partial segment.
    Part {
        /// The room's id.
        room: u64,
        /// Its segment's media sequence number.
        msn: u64,
        /// Its index in the segment.
        index: u32,
    },
}

/// The byte-bounded media cache shared by every room of a node.
pub struct MediaCache {
    inner: moka::sync::Cache<MediaKey, Bytes>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for MediaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaCache")
            .field("bytes", &self.inner.weighted_size())
            .finish_non_exhaustive()
    }
}

impl Default for MediaCache {
    fn default() -> Self {
        Self::new(DEFAULT_CACHE_BYTES)
    }
}

/// The default bound: a few minutes of a dozen 2.5 Mb/s rooms.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

impl MediaCache {
    /// A cache holding at most `max_bytes` (payloads plus a small per-entry overhead).
    pub fn new(max_bytes: u64) -> Self {
        let inner = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_: &MediaKey, v: &Bytes| {
                u32::try_from(v.len())
                    .unwrap_or(u32::MAX)
                    .saturating_add(ENTRY_OVERHEAD)
            })
            .eviction_policy(EvictionPolicy::lru())
            .build();
        Self {
            inner,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Stores `bytes` under `key`.
    pub fn insert(&self, key: MediaKey, bytes: Bytes) {
        self.inner.insert(key, bytes);
    }

    /// The bytes under `key`, if still held.
    pub fn get(&self, key: &MediaKey) -> Option<Bytes> {
        let found = self.inner.get(key);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Bytes held now (after pending evictions are applied).
    pub fn weighted_size(&self) -> u64 {
        self.inner.run_pending_tasks();
        self.inner.weighted_size()
    }

    /// Lookups that found their entry.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Lookups that did not.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_bytes_and_the_newest_is_always_admitted() {
        let cache = MediaCache::new(10 * (1000 + u64::from(ENTRY_OVERHEAD)));
        let seg = |msn| MediaKey::Segment { room: 1, msn };
        // make the old entries "popular": TinyLFU would now refuse newcomers
        for msn in 0..10 {
            cache.insert(seg(msn), Bytes::from(vec![0u8; 1000]));
            for _ in 0..20 {
                cache.get(&seg(msn));
            }
        }
        for msn in 10..30 {
            cache.insert(seg(msn), Bytes::from(vec![0u8; 1000]));
            cache.weighted_size();
            assert!(cache.get(&seg(msn)).is_some(), "segment {msn} not admitted");
        }
        assert!(cache.weighted_size() <= 10 * 1064);
        assert!(cache.get(&seg(0)).is_none(), "the oldest went first");
        let part = MediaKey::Part {
            room: 2,
            msn: 29,
            index: 0,
        };
        assert!(cache.get(&part).is_none(), "other rooms never collide");
        assert!(cache.hits() > 0 && cache.misses() >= 2);
    }
}
