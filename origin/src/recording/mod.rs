//! Recording: the origin that holds a live room writes the room's HLS fragments (the CMAF
//! segments the packager already made: no second encode) to a local spool and uploads them to
//! the app's bucket with S3 multipart while it records; the VOD index lives in the replicated
//! state (`cluster::state::recordings`).
//!
//! - A recording starts by hand (`POST …/rooms/:room/recording`), at go-live
//!   (`startRecording`), or by itself when the app records `always`. The holder of the room
//!   sees the active recording in the state and records it ([`Recorder::reconcile`]).
//! - One MP4 object per recording part: a new init segment (new codecs) or another origin
//!   taking the room starts the next part.
//! - Uploads that lose nothing: every fragment is on disk before it is uploaded; S3 parts are
//!   retried with backoff and jitter while S3 is unreachable (the spool is bounded per node);
//!   an origin that restarts uploads what its spool holds, with the upload ids the state and
//!   the spool keep.
//! - An origin that dies mid-recording: the leader's janitor ([`Inner::janitor`]) completes its
//!   open uploads with the S3 parts that landed (the part is `partial`, and plays) and keeps the
//!   recording open for the room to come back (`--record-resume-secs`): the origin that takes
//!   the room continues the recording as its next part. When the dead origin restarts, what its
//!   spool kept is uploaded as a part of its own that `continues` the partial one.

pub mod s3;
pub mod spool;
pub mod vod;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streamhub_cluster::backoff::Backoff;
use streamhub_cluster::registry::{self, NODE_TTL_MS};
use streamhub_cluster::seal::place;
use streamhub_cluster::state::{
    Command, PartState, RecordMode, Recording, RecordingChange, RecordingPart, RecordingState,
    Uploaded,
};
use streamhub_media::hls::{HlsRoom, Recorded};
use streamhub_shared::media::MediaHandle;
use streamhub_shared::{AppName, RoomName};
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::credentials::{random_hex, unix_now_ms};
use crate::tenants::{Tenants, WriteError};
use s3::{Bucket, S3Failure, Store};
use spool::{Budget, PartMeta, PartWriter, SpoolError, SpooledPart};

/// How recording is set up on this origin.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// Where the spool lives (`<data dir>/recordings`).
    pub spool_dir: PathBuf,
    pub spool_bytes: u64,
    pub part_bytes: u64,
    /// How long a recording whose room is live nowhere waits for it.
    pub resume: Duration,
}

/// How often the leader's janitor looks for the parts of dead origins.
const JANITOR_EVERY: Duration = Duration::from_secs(2);
/// A stopped recording whose parts are all closed and that nobody settled (its last uploader
/// died) is settled by the janitor this long after it stopped.
const SETTLE_GRACE_MS: u64 = 15_000;
/// An upload gone while the state still calls its part open (nobody closed it) is closed by
/// its own origin after this.
const GONE_GRACE: Duration = Duration::from_secs(30);

/// Retries of one S3 call start here and back off to [`RETRY_CAP`].
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(20);

/// A live room of this origin, as the recorder needs it.
#[derive(Clone)]
struct LiveRoom {
    hls: Arc<HlsRoom>,
    media: MediaHandle,
    /// For an app that records always: the room's segments from its first one, taken by the
    /// recording when it starts (a moment later).
    early: Arc<Mutex<Option<broadcast::Receiver<Recorded>>>>,
}

type RoomKey = (AppName, RoomName);

/// The recorder of one origin.
#[derive(Clone)]
pub struct Recorder(Arc<Inner>);

struct Inner {
    tenants: Tenants,
    me: String,
    config: RecorderConfig,
    budget: Arc<Budget>,
    /// Rooms live here now.
    live: Mutex<HashMap<RoomKey, LiveRoom>>,
    /// Recordings being recorded here, by id.
    running: Mutex<HashMap<String, CancellationToken>>,
    tasks: TaskTracker,
    wake: Notify,
    /// Bytes uploaded to S3 since the start.
    uploaded: std::sync::atomic::AtomicU64,
    /// The janitor's view (it runs on the leader only).
    janitor: Mutex<Janitor>,
}

/// What the leader's janitor keeps between rounds.
#[derive(Default)]
struct Janitor {
    /// Since when this origin leads (the janitor waits a heartbeat TTL before it calls a node
    /// dead: a new leader has not heard the heartbeats yet).
    leading_since: Option<Instant>,
    last_round: Option<Instant>,
    /// Parts of dead origins being closed now: `(recording, index)`.
    closing: HashSet<(String, u32)>,
    /// Recordings whose room is live nowhere, since when.
    orphans: HashMap<String, Instant>,
    /// Recordings being settled now.
    settling: HashSet<String>,
}

impl Recorder {
    pub fn new(tenants: Tenants, me: String, config: RecorderConfig, tasks: TaskTracker) -> Self {
        let budget = Budget::new(config.spool_bytes);
        Self(Arc::new(Inner {
            tenants,
            me,
            config,
            budget,
            live: Mutex::default(),
            running: Mutex::default(),
            tasks,
            wake: Notify::new(),
            uploaded: Default::default(),
            janitor: Mutex::default(),
        }))
    }

    /// The spool's bytes on disk and its bound.
    pub fn spool(&self) -> (u64, u64) {
        (self.0.budget.used(), self.0.budget.limit())
    }

    /// Recordings being recorded here now.
    pub fn active(&self) -> usize {
        self.0
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Bytes uploaded since the start.
    pub fn uploaded_bytes(&self) -> u64 {
        self.0.uploaded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A publisher started `app/room` here.
    pub fn room_started(
        &self,
        app: &AppName,
        room: &RoomName,
        hls: Arc<HlsRoom>,
        media: MediaHandle,
    ) {
        let always = self
            .0
            .tenants
            .read(|s| s.tenants.apps.get(app).map(|a| a.settings.record))
            == Some(RecordMode::Always);
        let early = Arc::new(Mutex::new(always.then(|| hls.record())));
        self.0
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((app.clone(), room.clone()), LiveRoom { hls, media, early });
        if always {
            let (inner, app, room) = (self.0.clone(), app.clone(), room.clone());
            self.0.tasks.spawn(async move {
                match start(&inner.tenants, &app, &room).await {
                    Ok(id) => tracing::info!(%app, %room, id, "recording (the app records always)"),
                    // A recording of the room waits for it (its origin died, or it was started
                    // before the room went live): it continues, from these early segments.
                    Err(WriteError::Exists(_)) => {}
                    Err(why) => {
                        tracing::info!(%app, %room, %why, "not recording");
                        // Nobody will read the early segments: do not hold them.
                        if let Some(live) = inner
                            .live
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(&(app.clone(), room.clone()))
                        {
                            live.early.lock().unwrap_or_else(|e| e.into_inner()).take();
                        }
                    }
                }
                inner.wake.notify_one();
            });
        } else {
            self.0.wake.notify_one();
        }
    }

    /// The last publisher of `app/room` here left.
    pub fn room_ended(&self, app: &AppName, room: &RoomName) {
        self.0
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(app.clone(), room.clone()));
    }

    /// Uploads what the spool kept from before a restart, then records what the state asks
    /// for until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let inner = self.0.clone();
        // The spool is read against the replicated state: as fresh as the cluster's first.
        inner.tenants.fresh().await;
        match spool::recover(&inner.config.spool_dir, &inner.budget).await {
            Ok(parts) => {
                for (part, crashed) in parts {
                    let inner = inner.clone();
                    inner
                        .tasks
                        .clone()
                        .spawn(async move { inner.resume(part, crashed).await });
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the recording spool"),
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                _ = inner.wake.notified() => {}
            }
            inner.reconcile();
            inner.janitor();
        }
        for token in inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            token.cancel();
        }
    }
}

/// Starts a recording of `app/room` in the state; its id.
pub async fn start(
    tenants: &Tenants,
    app: &AppName,
    room: &RoomName,
) -> Result<String, crate::tenants::WriteError> {
    let id = format!("rec_{}", random_hex(8));
    tenants
        .write(Command::Recording {
            id: id.clone(),
            change: RecordingChange::Start {
                app: app.clone(),
                room: room.clone(),
                at_ms: unix_now_ms(),
            },
        })
        .await?;
    Ok(id)
}

/// The bucket of `app` with its credentials opened.
pub fn bucket_of(tenants: &Tenants, app: &AppName) -> Result<Bucket, String> {
    let Some(storage) = tenants.read(|s| s.tenants.apps.get(app).and_then(|a| a.storage.clone()))
    else {
        return Err(format!(
            "app {app} has no storage: PUT /api/v1/apps/{app}/storage first"
        ));
    };
    let keyring = tenants.keyring();
    let secret = keyring
        .open_text(
            &place::storage_secret(app.as_str()),
            &storage.secret_access_key,
        )
        .map_err(|e| format!("cannot open the storage credentials: {e}"))?;
    let session_token = match &storage.session_token {
        Some(t) => Some(
            keyring
                .open_text(&place::storage_token(app.as_str()), t)
                .map_err(|e| format!("cannot open the storage credentials: {e}"))?,
        ),
        None => None,
    };
    Ok(Bucket {
        endpoint: storage.endpoint,
        region: storage.region,
        bucket: storage.bucket,
        prefix: storage.prefix,
        path_style: storage.path_style,
        access_key_id: storage.access_key_id,
        secret_access_key: secret,
        session_token,
    })
}

impl Inner {
    /// Starts recording every active recording of a room live here that is not recorded yet.
    fn reconcile(self: &Arc<Self>) {
        let live: Vec<(RoomKey, LiveRoom)> = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for ((app, room), live) in live {
            let Some(id) = self
                .tenants
                .read(|s| s.recordings.active(&app, &room).map(|r| r.id.clone()))
            else {
                continue;
            };
            let token = {
                let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
                if running.contains_key(&id) {
                    continue;
                }
                let token = CancellationToken::new();
                running.insert(id.clone(), token.clone());
                token
            };
            let inner = self.clone();
            self.tasks.spawn(async move {
                inner.record(&id, &app, &room, live, token).await;
                inner
                    .running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
            });
        }
    }

    fn recording(&self, id: &str) -> Option<Recording> {
        self.tenants
            .read(|s| s.recordings.recordings.get(id).cloned())
    }

    async fn change(&self, id: &str, change: RecordingChange) -> bool {
        match self
            .tenants
            .write(Command::Recording {
                id: id.to_string(),
                change,
            })
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(id, error = %e, "recording state not written");
                false
            }
        }
    }

    /// Says what is wrong (or that nothing is) if it changed.
    async fn reason(&self, id: &str, reason: Option<String>) {
        // A final state keeps the reason it ended with.
        if self
            .recording(id)
            .is_some_and(|r| r.reason != reason && !r.is_settled())
        {
            self.change(id, RecordingChange::SetReason { reason }).await;
        }
    }

    async fn fail(&self, id: &str, why: String) {
        tracing::warn!(id, %why, "recording failed");
        self.change(
            id,
            RecordingChange::SetState {
                state: RecordingState::Failed,
                reason: Some(why),
            },
        )
        .await;
    }

    /// Records `id` (room `app/room`, live here) until it is stopped, the room ends or the
    /// upload fails for good.
    async fn record(
        self: &Arc<Self>,
        id: &str,
        app: &AppName,
        room: &RoomName,
        live: LiveRoom,
        stop: CancellationToken,
    ) {
        let early = live.early.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut tap = early.unwrap_or_else(|| live.hls.record());
        let store = match bucket_of(&self.tenants, app) {
            Ok(b) => Store::new(&b),
            Err(why) => return self.fail(id, why).await,
        };
        if !self.budget.room_for_new(self.config.part_bytes) {
            let why = format!(
                "the recording spool of {} is full ({} of {} MiB): uploads are behind",
                self.me,
                self.budget.used() >> 20,
                self.budget.limit() >> 20
            );
            return self.fail(id, why).await;
        }
        tracing::info!(id, %app, %room, "recording");
        let mut next_index = self
            .recording(id)
            .and_then(|r| r.parts.iter().map(|p| p.index + 1).max())
            .unwrap_or(0);
        let failed = CancellationToken::new();
        let mut writer: Option<(u32, PartWriter, Arc<Notify>)> = None;
        let mut uploads = tokio::task::JoinSet::new();
        let mut lost = 0u64;
        let mut check = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                ev = tap.recv() => match ev {
                    Ok(Recorded::Segment { init_id, init, duration_secs, data, .. }) => {
                        if writer.as_ref().map(|w| w.0) != Some(init_id) {
                            if let Some((_, w, wake)) = writer.take() {
                                self.finish_writer(id, w, &wake).await;
                            }
                            let meta = PartMeta {
                                recording: id.to_string(),
                                index: next_index,
                                key: store.key(&format!("{app}/{room}/{id}/part-{next_index}.mp4")),
                                init_size: init.len() as u32,
                                tracks: tracks(&live.media),
                                started_at_ms: unix_now_ms(),
                                upload_id: None,
                                continues: None,
                                chunk_base: 0,
                            };
                            next_index += 1;
                            match PartWriter::create(&self.config.spool_dir, &meta, &init, self.config.part_bytes, self.budget.clone()).await {
                                Ok(w) => {
                                    let wake = Arc::new(Notify::new());
                                    let part = SpooledPart {
                                        dir: spool::part_dir(&self.config.spool_dir, id, meta.index),
                                        budget: self.budget.clone(),
                                    };
                                    let (inner, store, wake2, failed) = (self.clone(), store.clone(), wake.clone(), failed.clone());
                                    let rec = id.to_string();
                                    uploads.spawn(async move {
                                        inner.upload(&rec, part, store, wake2, failed).await
                                    });
                                    writer = Some((init_id, w, wake));
                                }
                                Err(e) => {
                                    lost += 1;
                                    self.reason(id, Some(format!("{} cannot spool: {e}", self.me))).await;
                                    continue;
                                }
                            }
                        }
                        let Some((_, w, wake)) = writer.as_mut() else { continue };
                        let ms = (duration_secs * 1000.0).round() as u32;
                        match w.append(ms, &data).await {
                            Ok(Some(_)) => wake.notify_one(),
                            Ok(None) => {}
                            Err(e) => {
                                lost += 1;
                                let why = match e {
                                    SpoolError::Full { .. } => format!("{} dropped {lost} segments: {e}", self.me),
                                    SpoolError::Io(_) => format!("{} cannot spool: {e}", self.me),
                                };
                                self.reason(id, Some(why)).await;
                            }
                        }
                    }
                    Ok(Recorded::Ended) | Err(broadcast::error::RecvError::Closed) => {
                        self.change(id, RecordingChange::Stop { at_ms: unix_now_ms() }).await;
                        break;
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        lost += n;
                        self.reason(id, Some(format!("{} fell behind and lost {lost} segments", self.me))).await;
                    }
                },
                _ = check.tick() => {
                    let go_on = self.recording(id).is_some_and(|r| r.is_recording());
                    if !go_on {
                        break;
                    }
                }
                _ = stop.cancelled() => break,
                _ = failed.cancelled() => break,
            }
        }
        if let Some((_, w, wake)) = writer.take() {
            self.finish_writer(id, w, &wake).await;
        }
        while uploads.join_next().await.is_some() {}
        if self
            .recording(id)
            .is_none_or(|r| r.state == RecordingState::Failed)
        {
            // Nothing more will be uploaded: free what is left in the spool.
            self.forget_spool(id).await;
        }
        self.settle(id, lost > 0).await;
    }

    /// Removes every spooled part of recording `id`.
    async fn forget_spool(&self, id: &str) {
        let Ok(mut rd) = tokio::fs::read_dir(self.config.spool_dir.join(id)).await else {
            return;
        };
        while let Ok(Some(e)) = rd.next_entry().await {
            let part = SpooledPart {
                dir: e.path(),
                budget: self.budget.clone(),
            };
            let _ = part.remove().await;
        }
    }

    async fn finish_writer(&self, id: &str, w: PartWriter, wake: &Notify) {
        if let Err(e) = w.finish().await {
            self.reason(id, Some(format!("{} cannot spool: {e}", self.me)))
                .await;
        }
        wake.notify_one();
    }

    /// Gives a stopped recording its final state once no part of it is open (on any origin):
    /// `ready`, `partial` or `failed`. `lost` says media was lost here before the spool.
    async fn settle(&self, id: &str, lost: bool) {
        let Some(rec) = self.recording(id) else {
            return;
        };
        if rec.is_recording() || rec.is_settled() {
            // Still recorded (elsewhere, or the room may come back), or settled already.
            return;
        }
        let Some((state, reason)) = rec.outcome(lost) else {
            // A part is still uploading; whoever finishes it settles.
            return;
        };
        tracing::info!(id, ?state, "recording settled");
        self.change(id, RecordingChange::SetState { state, reason })
            .await;
    }

    /// Uploads one spooled part: its multipart upload, its chunks as they are sealed, then
    /// the completion. Retries what may succeed later; gives up (and fails the recording) on
    /// what will not. An upload another origin completed (this one was taken for dead) goes
    /// on as a new part.
    async fn upload(
        &self,
        id: &str,
        part: SpooledPart,
        store: Store,
        wake: Arc<Notify>,
        failed: CancellationToken,
    ) -> PartState {
        let mut gone_since: Option<Instant> = None;
        loop {
            match self.try_upload(id, &part, &store, &wake).await {
                Ok(state) => return state,
                Err(S3Failure::UploadGone(why)) => {
                    // The janitor completes the upload first, then closes the part in the state:
                    // once the state says so, the rest goes to a new part. An upload gone while
                    // the state still calls it open for long was lost some other way.
                    let since = *gone_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= GONE_GRACE {
                        tracing::warn!(id, %why, "the part's upload is gone; closing it");
                        if let Ok(meta) = part.meta().await {
                            let landed = !self.uploaded(id, meta.index).is_empty();
                            let state = if landed {
                                PartState::Partial
                            } else {
                                PartState::Failed
                            };
                            let index = meta.index;
                            self.change(id, RecordingChange::ClosePart { index, state })
                                .await;
                        }
                    }
                    tokio::time::sleep(RETRY_BASE).await;
                }
                Err(e) => {
                    if let Ok(meta) = part.meta().await {
                        if let Some(upload) = &meta.upload_id {
                            let _ = store.abort_upload(&meta.key, upload).await;
                        }
                        self.change(
                            id,
                            RecordingChange::ClosePart {
                                index: meta.index,
                                state: PartState::Failed,
                            },
                        )
                        .await;
                    }
                    // A part still being written is removed by its recorder once its writer
                    // is done.
                    if part.is_ended().await {
                        let _ = part.remove().await;
                    }
                    self.fail(id, format!("S3 {e}")).await;
                    failed.cancel();
                    return PartState::Failed;
                }
            }
        }
    }

    /// Runs `call` until it succeeds or fails for good, saying on the recording what is wrong
    /// meanwhile.
    async fn retry<T, F, Fut>(&self, id: &str, what: &str, mut call: F) -> Result<T, S3Failure>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, S3Failure>>,
    {
        let mut backoff = Backoff::new(RETRY_BASE, RETRY_CAP);
        loop {
            match call().await {
                Ok(v) => {
                    if backoff.failures() > 0 {
                        self.reason(id, None).await;
                        tracing::info!(id, what, "S3 answers again");
                    }
                    return Ok(v);
                }
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => {
                    if backoff.failures() == 0 {
                        tracing::warn!(id, what, error = %e, "S3 call failed; retrying");
                    }
                    let why = format!(
                        "S3 {e} (while {what}); retrying, media is kept in the spool of {}",
                        self.me
                    );
                    self.reason(id, Some(why)).await;
                    if self.recording(id).is_none() {
                        return Err(S3Failure::Other("the recording was deleted".into()));
                    }
                    tokio::time::sleep(backoff.next_random_delay()).await;
                }
            }
        }
    }

    async fn try_upload(
        &self,
        id: &str,
        part: &SpooledPart,
        store: &Store,
        wake: &Notify,
    ) -> Result<PartState, S3Failure> {
        let io = |e: std::io::Error| S3Failure::Other(format!("spool: {e}"));
        let Some((meta, upload_id)) = self.open_part(id, part, store).await? else {
            if part.is_ended().await {
                let _ = part.remove().await;
            }
            return Ok(PartState::Failed);
        };
        loop {
            for n in part.sealed().await.map_err(io)? {
                // The S3 part number (see `PartMeta::chunk_base`).
                let Some(number) = n.checked_sub(meta.chunk_base).filter(|n| *n > 0) else {
                    part.remove_chunk(n).await.map_err(io)?;
                    continue;
                };
                let done = self
                    .uploaded(id, meta.index)
                    .iter()
                    .any(|u| u.number == number);
                if !done {
                    let (mut data, fragments) = part.chunk(n).await.map_err(io)?;
                    if meta.continues.is_some() && number == 1 && n != 1 {
                        // The first S3 part of a remainder's own object: the init segment first.
                        let init = part.init().await.map_err(io)?;
                        let mut both = bytes::BytesMut::with_capacity(init.len() + data.len());
                        both.extend_from_slice(&init);
                        both.extend_from_slice(&data);
                        data = both.freeze();
                    }
                    let bytes = data.len() as u64;
                    let etag = self
                        .retry(id, "uploading", || {
                            store.upload_part(&meta.key, &upload_id, number, data.clone())
                        })
                        .await?;
                    self.uploaded
                        .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
                    let uploaded = Uploaded {
                        number,
                        etag,
                        bytes,
                        fragments,
                    };
                    let change = RecordingChange::Uploaded {
                        index: meta.index,
                        uploaded,
                    };
                    if !self.change(id, change).await {
                        // Not listed: the chunk stays and is uploaded again later.
                        tokio::time::sleep(RETRY_BASE).await;
                        continue;
                    }
                }
                part.remove_chunk(n).await.map_err(io)?;
            }
            if part.is_ended().await && part.sealed().await.map_err(io)?.is_empty() {
                break;
            }
            if self.recording(id).is_none() {
                let _ = store.abort_upload(&meta.key, &upload_id).await;
                let _ = part.remove().await;
                return Ok(PartState::Failed);
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let mut parts: Vec<(u32, String)> = self
            .uploaded(id, meta.index)
            .into_iter()
            .map(|u| (u.number, u.etag))
            .collect();
        parts.sort_unstable();
        if parts.is_empty() {
            // Nothing was spooled after the part's init (a remainder of nothing).
            let _ = store.abort_upload(&meta.key, &upload_id).await;
            let index = meta.index;
            let state = PartState::Failed;
            self.change(id, RecordingChange::ClosePart { index, state })
                .await;
            let _ = part.remove().await;
            return Ok(state);
        }
        self.retry(id, "completing the upload", || {
            store.complete_upload(&meta.key, &upload_id, &parts)
        })
        .await?;
        self.change(
            id,
            RecordingChange::ClosePart {
                index: meta.index,
                state: PartState::Complete,
            },
        )
        .await;
        let _ = part.remove().await;
        tracing::info!(
            id,
            part = meta.index,
            key = meta.key,
            "recording part uploaded"
        );
        Ok(PartState::Complete)
    }

    /// The spooled part's upload, listed in the state as this origin's: begun (or found again
    /// after a restart), moved to a free index when another part took its index, or turned into
    /// a new part that continues it when another origin completed its upload (this origin was
    /// taken for dead). `None`: the state refuses the part (the recording ended).
    async fn open_part(
        &self,
        id: &str,
        part: &SpooledPart,
        store: &Store,
    ) -> Result<Option<(PartMeta, String)>, S3Failure> {
        let io = |e: std::io::Error| S3Failure::Other(format!("spool: {e}"));
        loop {
            let mut meta = part.meta().await.map_err(io)?;
            let Some(rec) = self.recording(id) else {
                if let Some(upload) = &meta.upload_id {
                    let _ = store.abort_upload(&meta.key, upload).await;
                }
                return Ok(None);
            };
            let free_index = rec
                .parts
                .iter()
                .map(|p| p.index + 1)
                .max()
                .unwrap_or(0)
                .max(meta.index + 1);
            let key =
                |index: u32| store.key(&format!("{}/{}/{id}/part-{index}.mp4", rec.app, rec.room));
            match rec.parts.iter().find(|p| p.index == meta.index) {
                Some(p) if p.node == self.me && p.key == meta.key => {
                    if p.state == PartState::Open {
                        if let Some(upload) = p.upload_id.clone().or(meta.upload_id.clone()) {
                            return Ok(Some((meta, upload)));
                        }
                    }
                    // Closed by another origin: what is left here becomes a part of its own.
                    // Chunks its object already holds (listed, not yet forgotten here) go.
                    for n in part.sealed().await.map_err(io)? {
                        if p.uploaded.iter().any(|u| u.number + meta.chunk_base == n) {
                            part.remove_chunk(n).await.map_err(io)?;
                        }
                    }
                    if part.is_ended().await && part.sealed().await.map_err(io)?.is_empty() {
                        return Ok(None);
                    }
                    let Some(first) = part.first_chunk().await.map_err(io)? else {
                        return Ok(None);
                    };
                    tracing::info!(
                        id,
                        part = p.index,
                        next = free_index,
                        "the part was closed elsewhere; the spooled rest becomes a new part"
                    );
                    meta.continues = Some(p.index);
                    meta.chunk_base = first - 1;
                    meta.started_at_ms = p.started_at_ms + p.duration_ms();
                    meta.index = free_index;
                    meta.key = key(free_index);
                    meta.upload_id = None;
                    part.set_meta(&meta).await.map_err(io)?;
                }
                Some(_) => {
                    // Another part took this index (another origin continued the room).
                    if let Some(upload) = meta.upload_id.take() {
                        let _ = store.abort_upload(&meta.key, &upload).await;
                    }
                    meta.index = free_index;
                    meta.key = key(free_index);
                    part.set_meta(&meta).await.map_err(io)?;
                }
                None => {
                    let upload_id = match &meta.upload_id {
                        Some(u) => u.clone(),
                        None => {
                            let u = self
                                .retry(id, "starting the upload", || async {
                                    store.bucket_exists().await?;
                                    store.create_upload(&meta.key).await
                                })
                                .await?;
                            part.set_upload_id(&u).await.map_err(io)?;
                            meta.upload_id = Some(u.clone());
                            u
                        }
                    };
                    let open = RecordingChange::OpenPart(RecordingPart {
                        index: meta.index,
                        node: self.me.clone(),
                        key: meta.key.clone(),
                        upload_id: Some(upload_id.clone()),
                        state: PartState::Open,
                        init_size: meta.init_size,
                        tracks: meta.tracks.clone(),
                        started_at_ms: meta.started_at_ms,
                        uploaded: Vec::new(),
                        continues: meta.continues,
                    });
                    let cmd = Command::Recording {
                        id: id.to_string(),
                        change: open,
                    };
                    match self.tenants.write(cmd).await {
                        Ok(()) => return Ok(Some((meta, upload_id))),
                        // Taken meanwhile: read the state again.
                        Err(WriteError::Exists(_)) => {}
                        Err(WriteError::Refused(why)) => {
                            tracing::warn!(id, %why, "recording part refused; dropped");
                            let _ = store.abort_upload(&meta.key, &upload_id).await;
                            return Ok(None);
                        }
                        Err(e) => {
                            tracing::warn!(id, error = %e, "recording part not listed yet");
                            tokio::time::sleep(RETRY_BASE).await;
                        }
                    }
                }
            }
        }
    }

    fn uploaded(&self, id: &str, index: u32) -> Vec<Uploaded> {
        self.recording(id)
            .and_then(|r| r.parts.into_iter().find(|p| p.index == index))
            .map(|p| p.uploaded)
            .unwrap_or_default()
    }

    /// Uploads a part the spool kept from before a restart (`crashed`: its writer never ended
    /// it), then settles its recording if nothing else records it.
    async fn resume(self: Arc<Self>, part: SpooledPart, crashed: bool) {
        let Ok(meta) = part.meta().await else {
            let _ = part.remove().await;
            return;
        };
        let id = meta.recording.clone();
        let Some(rec) = self.recording(&id) else {
            tracing::info!(id, "spooled part of a deleted recording dropped");
            let _ = part.remove().await;
            return;
        };
        let store = match bucket_of(&self.tenants, &rec.app) {
            Ok(b) => Store::new(&b),
            Err(why) => {
                let _ = part.remove().await;
                return self.fail(&id, why).await;
            }
        };
        if crashed {
            let why = format!(
                "{} stopped while recording: media after its last spooled fragment was lost",
                self.me
            );
            self.reason(&id, Some(why)).await;
        }
        tracing::info!(id, part = meta.index, "uploading what the spool kept");
        let wake = Arc::new(Notify::new());
        self.upload(&id, part, store, wake, CancellationToken::new())
            .await;
        self.settle(&id, crashed).await;
    }

    /// On the leader, every [`JANITOR_EVERY`]: completes the open uploads of dead origins with
    /// what they uploaded (the part is `partial`), ends recordings whose room stayed away
    /// longer than the resume window, and settles stopped recordings nobody settled.
    fn janitor(self: &Arc<Self>) {
        let st = self.tenants.raft().status();
        let mut j = self.janitor.lock().unwrap_or_else(|e| e.into_inner());
        if st.leader != Some(st.node_id) {
            j.leading_since = None;
            j.orphans.clear();
            return;
        }
        let since = *j.leading_since.get_or_insert_with(Instant::now);
        if since.elapsed() < Duration::from_millis(NODE_TTL_MS)
            || j.last_round.is_some_and(|t| t.elapsed() < JANITOR_EVERY)
        {
            // A new leader has not heard every node's heartbeat yet.
            return;
        }
        j.last_round = Some(Instant::now());
        let now = unix_now_ms();
        let (dead, orphaned, unsettled) = self.tenants.read(|s| {
            let (mut dead, mut orphaned, mut unsettled) = (Vec::new(), Vec::new(), Vec::new());
            for rec in s.recordings.recordings.values() {
                let mut open = false;
                for p in rec.parts.iter().filter(|p| p.state == PartState::Open) {
                    open = true;
                    let up = p.node == self.me
                        || s.registry
                            .nodes
                            .get(&p.node)
                            .is_some_and(|n| registry::is_up(n, now));
                    if !up {
                        dead.push((rec.id.clone(), rec.app.clone(), p.clone()));
                    }
                }
                if open {
                    continue;
                }
                if rec.is_recording() {
                    let live = s
                        .placements
                        .get(&rec.app, &rec.room)
                        .is_some_and(|p| p.is_live(now));
                    if !live {
                        orphaned.push(rec.clone());
                    }
                } else if !rec.is_settled()
                    && rec
                        .stopped_at_ms
                        .is_some_and(|t| now.saturating_sub(t) >= SETTLE_GRACE_MS)
                {
                    unsettled.push(rec.id.clone());
                }
            }
            (dead, orphaned, unsettled)
        });
        for (id, app, part) in dead {
            if j.closing.insert((id.clone(), part.index)) {
                let inner = self.clone();
                self.tasks
                    .spawn(async move { inner.close_dead(&id, &app, part).await });
            }
        }
        j.orphans
            .retain(|id, _| orphaned.iter().any(|r| &r.id == id));
        for rec in orphaned {
            let first_seen = !j.orphans.contains_key(&rec.id);
            let since = *j.orphans.entry(rec.id.clone()).or_insert_with(Instant::now);
            let inner = self.clone();
            if since.elapsed() >= self.config.resume {
                j.orphans.remove(&rec.id);
                self.tasks.spawn(async move {
                    tracing::info!(id = rec.id, "the room did not come back: recording ends");
                    let at_ms = unix_now_ms();
                    inner.change(&rec.id, RecordingChange::Stop { at_ms }).await;
                    inner.settle(&rec.id, false).await;
                });
            } else if first_seen && rec.state == RecordingState::Recording && !rec.parts.is_empty()
            {
                // Its origin stopped mid-recording: partial so far, open for the room's return.
                let nodes: Vec<&str> = rec.parts.iter().map(|p| p.node.as_str()).collect();
                let why = format!(
                    "the origin recording it ({}) stopped; what was uploaded plays, and the room \
                     continues this recording if it comes back within {} s",
                    nodes.last().copied().unwrap_or_default(),
                    self.config.resume.as_secs()
                );
                self.tasks.spawn(async move {
                    let state = RecordingState::Partial;
                    let reason = Some(why);
                    let still = inner.recording(&rec.id).is_some_and(|r| {
                        r.state == RecordingState::Recording && r.parts.len() == rec.parts.len()
                    });
                    if still {
                        inner
                            .change(&rec.id, RecordingChange::SetState { state, reason })
                            .await;
                    }
                });
            }
        }
        for id in unsettled {
            if j.settling.insert(id.clone()) {
                let inner = self.clone();
                self.tasks.spawn(async move {
                    inner.settle(&id, false).await;
                    inner
                        .janitor
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .settling
                        .remove(&id);
                });
            }
        }
    }

    /// Closes part `part` of recording `id`, left open by an origin that is down: its upload
    /// completed with the S3 parts that landed (`partial`: it plays), or aborted if none did.
    async fn close_dead(&self, id: &str, app: &AppName, part: RecordingPart) {
        let index = part.index;
        let state = match bucket_of(&self.tenants, app) {
            Err(why) => {
                tracing::warn!(id, index, %why, "cannot close the part of a dead origin");
                Some(PartState::Failed)
            }
            Ok(bucket) => {
                let store = Store::new(&bucket);
                let mut landed: Vec<(u32, String)> = part
                    .uploaded
                    .iter()
                    .map(|u| (u.number, u.etag.clone()))
                    .collect();
                landed.sort_unstable();
                match (&part.upload_id, landed.is_empty()) {
                    (Some(upload), false) => {
                        match store.complete_upload(&part.key, upload, &landed).await {
                            Ok(()) | Err(S3Failure::UploadGone(_)) => Some(PartState::Partial),
                            Err(e) if e.is_permanent() => {
                                tracing::warn!(id, index, error = %e, "part lost");
                                Some(PartState::Failed)
                            }
                            Err(e) => {
                                // S3 is away: the next round tries again.
                                tracing::warn!(id, index, error = %e, "part not closed yet");
                                None
                            }
                        }
                    }
                    (Some(upload), true) => {
                        let _ = store.abort_upload(&part.key, upload).await;
                        Some(PartState::Failed)
                    }
                    (None, landed_none) => Some(if landed_none {
                        PartState::Failed
                    } else {
                        PartState::Partial
                    }),
                }
            }
        };
        if let Some(state) = state {
            let still_open = self
                .recording(id)
                .and_then(|r| r.parts.into_iter().find(|p| p.index == index))
                .is_some_and(|p| p.state == PartState::Open && p.node == part.node);
            if still_open {
                tracing::info!(
                    id,
                    index,
                    node = part.node,
                    ?state,
                    "closed the part of a dead origin"
                );
                self.change(id, RecordingChange::ClosePart { index, state })
                    .await;
                let why = format!(
                    "{} stopped mid-recording: the {:.0} s it uploaded play as part {index}",
                    part.node,
                    part.duration_ms() as f64 / 1000.0
                );
                self.reason(id, Some(why)).await;
            }
        }
        self.janitor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closing
            .remove(&(id.to_string(), index));
    }
}

/// The codecs a room's HLS carries now.
fn tracks(media: &MediaHandle) -> Vec<String> {
    streamhub_shared::media::hls_tracks(&media.tracks())
        .iter()
        .map(|t| t.codec.name().to_string())
        .collect()
}
