//! The local spool: what a recording part has recorded and not yet uploaded, on disk, in chunks
//! of about one S3 part each. Bounded per node ([`Budget`]); survives a restart.
//!
//! A part's directory, `<spool>/<recording id>/<part index>/`:
//!
//! - `meta.json`: what the part is ([`PartMeta`]), with its upload id once there is one;
//! - `init.mp4`: the init segment again, for a remainder uploaded as an object of its own (see
//!   [`PartMeta::continues`]);
//! - `chunk-<n>.open` and `chunk-<n>.open.idx`: the chunk being written and its fragments, one
//!   `<duration ms> <size>` line each (written after the fragment, so a crash leaves at most a
//!   torn last fragment, cut off at recovery);
//! - `chunk-<n>.bin` and `chunk-<n>.json`: a sealed chunk (S3 part `n`) and its fragments;
//! - `end`: the part has no more chunks to come.
//!
//! Chunk 1 starts with the init segment: the object is a fragmented MP4 from its first byte.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;

/// S3's smallest part (every part but the last).
pub const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;

/// The spool's bytes on disk against its limit, for the whole node.
#[derive(Debug)]
pub struct Budget {
    used: AtomicU64,
    limit: u64,
}

impl Budget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicU64::new(0),
            limit,
        })
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Takes `n` bytes if they fit.
    fn take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                (u + n <= self.limit).then_some(u + n)
            })
            .is_ok()
    }

    /// Counts `n` bytes written whatever the limit (the small init copy of a part).
    fn force(&self, n: u64) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    fn give(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Whether a new recording may start: room for at least two chunks of `part_bytes`.
    pub fn room_for_new(&self, part_bytes: u64) -> bool {
        self.used() + 2 * part_bytes <= self.limit
    }
}

/// Why a fragment was not spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({used} of {limit} bytes)")]
    Full { used: u64, limit: u64 },
    #[error("spool: {0}")]
    Io(#[from] std::io::Error),
}

/// What a spooled part is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartMeta {
    pub recording: String,
    pub index: u32,
    pub key: String,
    pub init_size: u32,
    pub tracks: Vec<String>,
    pub started_at_ms: u64,
    #[serde(default)]
    pub upload_id: Option<String>,
    /// Set once the part's upload was completed by another origin (this one had stopped): what
    /// is left here becomes a new part (`index`, `key`) of its own, continuing part
    /// `continues`; its first chunk uploaded gets the init segment in front.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continues: Option<u32>,
    /// Chunk `n` is uploaded as S3 part `n - chunk_base`: a remainder's S3 parts start at 1
    /// (some S3 servers accept only part numbers 1, 2, 3, ... in a completion).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunk_base: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The directory of a part.
pub fn part_dir(root: &Path, recording: &str, index: u32) -> PathBuf {
    root.join(recording).join(index.to_string())
}

async fn write_json(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    tokio::fs::write(
        &tmp,
        serde_json::to_vec(value).map_err(std::io::Error::other)?,
    )
    .await?;
    tokio::fs::rename(&tmp, path).await
}

/// Writes one part's chunks.
pub struct PartWriter {
    dir: PathBuf,
    chunk: u32,
    file: tokio::fs::File,
    index: tokio::fs::File,
    size: u64,
    fragments: Vec<[u32; 2]>,
    chunk_bytes: u64,
    budget: Arc<Budget>,
}

impl PartWriter {
    /// A new part directory with `init` at the start of chunk 1.
    pub async fn create(
        root: &Path,
        meta: &PartMeta,
        init: &[u8],
        chunk_bytes: u64,
        budget: Arc<Budget>,
    ) -> Result<Self, SpoolError> {
        let dir = part_dir(root, &meta.recording, meta.index);
        tokio::fs::create_dir_all(&dir).await?;
        write_json(&dir.join("meta.json"), meta).await?;
        tokio::fs::write(dir.join("init.mp4"), init).await?;
        budget.force(init.len() as u64);
        let mut w = Self::open_chunk(dir, 1, chunk_bytes, budget).await?;
        w.write(init).await?;
        Ok(w)
    }

    async fn open_chunk(
        dir: PathBuf,
        chunk: u32,
        chunk_bytes: u64,
        budget: Arc<Budget>,
    ) -> Result<Self, SpoolError> {
        let file = tokio::fs::File::create(dir.join(format!("chunk-{chunk}.open"))).await?;
        let index = tokio::fs::File::create(dir.join(format!("chunk-{chunk}.open.idx"))).await?;
        Ok(Self {
            dir,
            chunk,
            file,
            index,
            size: 0,
            fragments: Vec::new(),
            chunk_bytes: chunk_bytes.max(MIN_PART_BYTES),
            budget,
        })
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        if !self.budget.take(data.len() as u64) {
            return Err(SpoolError::Full {
                used: self.budget.used(),
                limit: self.budget.limit(),
            });
        }
        if let Err(e) = self.file.write_all(data).await {
            self.budget.give(data.len() as u64);
            return Err(e.into());
        }
        self.size += data.len() as u64;
        Ok(())
    }

    /// Spools one fragment; the number of the chunk it sealed, if it filled one.
    pub async fn append(
        &mut self,
        duration_ms: u32,
        data: &[u8],
    ) -> Result<Option<u32>, SpoolError> {
        self.write(data).await?;
        let size = data.len() as u32;
        self.index
            .write_all(format!("{duration_ms} {size}\n").as_bytes())
            .await?;
        self.fragments.push([duration_ms, size]);
        if self.size < self.chunk_bytes {
            return Ok(None);
        }
        let sealed = self.chunk;
        self.seal().await?;
        let next = Self::open_chunk(
            self.dir.clone(),
            sealed + 1,
            self.chunk_bytes,
            self.budget.clone(),
        )
        .await?;
        *self = next;
        Ok(Some(sealed))
    }

    async fn seal(&mut self) -> Result<(), SpoolError> {
        self.file.flush().await?;
        self.file.sync_data().await?;
        let n = self.chunk;
        write_json(&self.dir.join(format!("chunk-{n}.json")), &self.fragments).await?;
        tokio::fs::rename(
            self.dir.join(format!("chunk-{n}.open")),
            self.dir.join(format!("chunk-{n}.bin")),
        )
        .await?;
        let _ = tokio::fs::remove_file(self.dir.join(format!("chunk-{n}.open.idx"))).await;
        Ok(())
    }

    /// Seals the last chunk (unless it is empty and not the first) and marks the part ended.
    pub async fn finish(mut self) -> Result<(), SpoolError> {
        if self.fragments.is_empty() && self.chunk > 1 {
            let n = self.chunk;
            let _ = tokio::fs::remove_file(self.dir.join(format!("chunk-{n}.open"))).await;
            let _ = tokio::fs::remove_file(self.dir.join(format!("chunk-{n}.open.idx"))).await;
        } else {
            self.seal().await?;
        }
        tokio::fs::write(self.dir.join("end"), b"").await?;
        Ok(())
    }
}

/// A spooled part, as its uploader reads it.
#[derive(Debug, Clone)]
pub struct SpooledPart {
    pub dir: PathBuf,
    pub budget: Arc<Budget>,
}

impl SpooledPart {
    pub async fn meta(&self) -> std::io::Result<PartMeta> {
        let bytes = tokio::fs::read(self.dir.join("meta.json")).await?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }

    pub async fn set_upload_id(&self, upload_id: &str) -> std::io::Result<()> {
        let mut meta = self.meta().await?;
        meta.upload_id = Some(upload_id.to_string());
        self.set_meta(&meta).await
    }

    pub async fn set_meta(&self, meta: &PartMeta) -> std::io::Result<()> {
        write_json(&self.dir.join("meta.json"), meta).await
    }

    /// The part's init segment.
    pub async fn init(&self) -> std::io::Result<Bytes> {
        tokio::fs::read(self.dir.join("init.mp4"))
            .await
            .map(Bytes::from)
    }

    /// Sealed chunks not uploaded yet, in order.
    pub async fn sealed(&self) -> std::io::Result<Vec<u32>> {
        self.chunks(&[".bin"]).await
    }

    /// The lowest chunk still here, sealed or being written.
    pub async fn first_chunk(&self) -> std::io::Result<Option<u32>> {
        Ok(self.chunks(&[".bin", ".open"]).await?.first().copied())
    }

    async fn chunks(&self, suffixes: &[&str]) -> std::io::Result<Vec<u32>> {
        let mut out = Vec::new();
        let mut rd = tokio::fs::read_dir(&self.dir).await?;
        while let Some(e) = rd.next_entry().await? {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name.strip_prefix("chunk-").and_then(|r| {
                suffixes
                    .iter()
                    .find_map(|s| r.strip_suffix(s))
                    .and_then(|n| n.parse().ok())
            }) {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Chunk `n` and its fragments.
    pub async fn chunk(&self, n: u32) -> std::io::Result<(Bytes, Vec<[u32; 2]>)> {
        let data = tokio::fs::read(self.dir.join(format!("chunk-{n}.bin"))).await?;
        let index = tokio::fs::read(self.dir.join(format!("chunk-{n}.json"))).await?;
        let fragments = serde_json::from_slice(&index).map_err(std::io::Error::other)?;
        Ok((Bytes::from(data), fragments))
    }

    /// Forgets chunk `n` (uploaded and listed in the state).
    pub async fn remove_chunk(&self, n: u32) -> std::io::Result<()> {
        let bin = self.dir.join(format!("chunk-{n}.bin"));
        let size = tokio::fs::metadata(&bin)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        tokio::fs::remove_file(&bin).await?;
        let _ = tokio::fs::remove_file(self.dir.join(format!("chunk-{n}.json"))).await;
        self.budget.give(size);
        Ok(())
    }

    /// Whether the part's writer finished.
    pub async fn is_ended(&self) -> bool {
        tokio::fs::try_exists(self.dir.join("end"))
            .await
            .unwrap_or(false)
    }

    /// Removes the whole part (and its recording's directory once empty).
    pub async fn remove(&self) -> std::io::Result<()> {
        let size = dir_size(&self.dir).await;
        tokio::fs::remove_dir_all(&self.dir).await?;
        self.budget.give(size);
        if let Some(parent) = self.dir.parent() {
            // Fails while other parts remain: that is fine.
            let _ = tokio::fs::remove_dir(parent).await;
        }
        Ok(())
    }
}

async fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(mut rd) = tokio::fs::read_dir(dir).await {
        while let Ok(Some(e)) = rd.next_entry().await {
            if let Ok(m) = e.metadata().await {
                if m.is_file() {
                    total += m.len();
                }
            }
        }
    }
    total
}

/// What a restart finds in the spool: every part directory, with a chunk left open by a crash
/// sealed (cut to its last whole fragment) and the part marked ended (its writer is gone), and
/// whether its writer had not ended it (the node stopped while recording it).
/// Adds what is on disk to `budget`.
pub async fn recover(
    root: &Path,
    budget: &Arc<Budget>,
) -> std::io::Result<Vec<(SpooledPart, bool)>> {
    let mut parts = Vec::new();
    let Ok(mut recs) = tokio::fs::read_dir(root).await else {
        return Ok(parts);
    };
    while let Some(rec) = recs.next_entry().await? {
        if !rec.file_type().await?.is_dir() {
            continue;
        }
        let mut rd = tokio::fs::read_dir(rec.path()).await?;
        while let Some(part) = rd.next_entry().await? {
            let dir = part.path();
            if !dir.join("meta.json").exists() {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                continue;
            }
            let crashed = !dir.join("end").exists();
            seal_torn(&dir).await?;
            tokio::fs::write(dir.join("end"), b"").await?;
            budget
                .used
                .fetch_add(dir_size(&dir).await, Ordering::Relaxed);
            let part = SpooledPart {
                dir,
                budget: budget.clone(),
            };
            parts.push((part, crashed));
        }
    }
    Ok(parts)
}

/// Seals an open chunk after a crash: keeps the fragments its index lists whole.
async fn seal_torn(dir: &Path) -> std::io::Result<()> {
    let mut rd = tokio::fs::read_dir(dir).await?;
    let mut open = Vec::new();
    while let Some(e) = rd.next_entry().await? {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name
            .strip_prefix("chunk-")
            .and_then(|r| r.strip_suffix(".open"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            open.push(n);
        }
    }
    for n in open {
        let data_path = dir.join(format!("chunk-{n}.open"));
        let idx_path = dir.join(format!("chunk-{n}.open.idx"));
        let index = tokio::fs::read_to_string(&idx_path)
            .await
            .unwrap_or_default();
        let fragments: Vec<[u32; 2]> = index
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some([it.next()?.parse().ok()?, it.next()?.parse().ok()?])
            })
            .collect();
        let init = if n == 1 {
            let meta: PartMeta =
                serde_json::from_slice(&tokio::fs::read(dir.join("meta.json")).await?)
                    .map_err(std::io::Error::other)?;
            u64::from(meta.init_size)
        } else {
            0
        };
        let whole = init + fragments.iter().map(|f| u64::from(f[1])).sum::<u64>();
        let len = tokio::fs::metadata(&data_path).await?.len();
        if fragments.is_empty() && n > 1 {
            tokio::fs::remove_file(&data_path).await?;
        } else {
            if len > whole {
                let f = tokio::fs::OpenOptions::new()
                    .write(true)
                    .open(&data_path)
                    .await?;
                f.set_len(whole).await?;
            }
            write_json(&dir.join(format!("chunk-{n}.json")), &fragments).await?;
            tokio::fs::rename(&data_path, dir.join(format!("chunk-{n}.bin"))).await?;
        }
        let _ = tokio::fs::remove_file(&idx_path).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> PartMeta {
        PartMeta {
            recording: "rec_1".into(),
            index: 0,
            key: "a/r/rec_1/part-0.mp4".into(),
            init_size: 4,
            tracks: vec!["h264".into()],
            started_at_ms: 0,
            upload_id: None,
            continues: None,
            chunk_base: 0,
        }
    }

    #[tokio::test]
    async fn chunks_seal_at_the_part_size_and_the_budget_holds() {
        let tmp = tempfile::tempdir().unwrap();
        let budget = Budget::new(16 * 1024 * 1024);
        let mut w =
            PartWriter::create(tmp.path(), &meta(), b"init", MIN_PART_BYTES, budget.clone())
                .await
                .unwrap();
        let frag = vec![7u8; 1024 * 1024];
        let mut sealed = Vec::new();
        for _ in 0..7 {
            if let Some(n) = w.append(2000, &frag).await.unwrap() {
                sealed.push(n);
            }
        }
        assert_eq!(sealed, [1], "5 MiB and the init fill chunk 1");
        // 16 MiB: the budget refuses what does not fit, and nothing is half-written.
        let mut full = false;
        for _ in 0..20 {
            if let Err(SpoolError::Full { .. }) = w.append(2000, &frag).await {
                full = true;
                break;
            }
        }
        assert!(full);
        assert!(budget.used() <= budget.limit());
        w.finish().await.unwrap();
        let part = SpooledPart {
            dir: part_dir(tmp.path(), "rec_1", 0),
            budget: budget.clone(),
        };
        assert!(part.is_ended().await);
        let chunks = part.sealed().await.unwrap();
        assert_eq!(chunks[0], 1);
        let (data, fragments) = part.chunk(1).await.unwrap();
        assert_eq!(&data[..4], b"init");
        assert_eq!(
            data.len() as u64,
            4 + fragments.iter().map(|f| u64::from(f[1])).sum::<u64>()
        );
        for n in chunks {
            part.remove_chunk(n).await.unwrap();
        }
        part.remove().await.unwrap();
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn recovery_cuts_a_torn_fragment_and_ends_the_part() {
        let tmp = tempfile::tempdir().unwrap();
        let budget = Budget::new(64 * 1024 * 1024);
        let mut w = PartWriter::create(tmp.path(), &meta(), b"init", MIN_PART_BYTES, budget)
            .await
            .unwrap();
        w.append(2000, b"frag-one").await.unwrap();
        w.append(2000, b"frag-two").await.unwrap();
        // A crash in the middle of the third fragment: its bytes are there, its index line not.
        w.file.write_all(b"frag-th").await.unwrap();
        w.file.flush().await.unwrap();
        drop(w);
        let again = Budget::new(64 * 1024 * 1024);
        let parts = recover(tmp.path(), &again).await.unwrap();
        assert_eq!(parts.len(), 1);
        let (part, crashed) = &parts[0];
        assert!(crashed, "its writer never ended it");
        assert!(part.is_ended().await);
        let (data, fragments) = part.chunk(1).await.unwrap();
        assert_eq!(&data[..], b"initfrag-onefrag-two");
        assert_eq!(fragments, [[2000, 8], [2000, 8]]);
        assert_eq!(&part.init().await.unwrap()[..], b"init");
        assert_eq!(again.used(), dir_size(&part.dir).await);
        // Found again after a clean stop: not a crash.
        let parts = recover(tmp.path(), &Budget::new(64 * 1024 * 1024))
            .await
            .unwrap();
        assert!(!parts[0].1);
    }
}
