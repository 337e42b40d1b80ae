//! The serving side of the relay: answers subscriptions on relay control streams and sends each
//! group of the room on its own unidirectional QUIC stream.
//!
//! Runs on origins (and could run on a parent edge): whatever holds rooms implements
//! [`RelaySource`]. Backpressure never stalls the room or other subscribers: each subscription
//! reads the room's frames at the room's pace and hands them to a writer per group through a
//! bounded queue. Newer groups get a higher stream priority, so QUIC sends the live edge first;
//! a subscriber that falls behind loses whole old groups (their streams are reset), and a group
//! whose queue overflows is reset and skipped.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use streamhub_cluster::transport::{kinds, stream_service_fn, Endpoint, IncomingStream};
use streamhub_shared::media::{MediaHandle, RecvError};
use streamhub_shared::relay::{ControlMessage, ErrorCode, FrameHeader, GroupHeader};
use streamhub_shared::{AppName, Frame, RoomName, TrackId, TrackInfo};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::control::{read_message, write_message, ControlError};
use super::RelayStats;

/// How long a subscriber may take to send its `Subscribe` after opening the stream.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Subscriptions one connection may hold at once.
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 2048;
/// Groups of one subscription still being written besides the newest; older ones are reset.
const MAX_OLDER_GROUPS: usize = 2;
/// Frames queued for one group's writer; a group that overflows it is reset and skipped.
const GROUP_QUEUE: usize = 1024;
/// Payload bytes queued for one group's writer; a group that overflows it is reset and skipped.
const GROUP_QUEUE_BYTES: usize = 8 << 20;
/// Application error code of a group stream reset because the subscriber fell behind.
pub const RESET_DROPPED: u32 = 1;
/// Application error code of a control stream stopped because of a protocol violation.
pub const STOP_PROTOCOL: u32 = 2;

/// Where the served rooms come from.
pub trait RelaySource: Send + Sync + 'static {
    /// The media of `app/room` if it is live here, or why not.
    fn lookup(&self, app: &AppName, room: &RoomName) -> Result<MediaHandle, ErrorCode>;
}

/// Serves relay subscriptions for one node.
pub struct RelayServer {
    source: Arc<dyn RelaySource>,
    stats: Arc<RelayStats>,
    /// Subscriptions per connection (`stable_id`): a std Mutex held for one counter update.
    per_connection: Mutex<HashMap<usize, usize>>,
}

impl RelayServer {
    /// A server of the rooms of `source`, counting into `stats`.
    pub fn new(source: Arc<dyn RelaySource>, stats: Arc<RelayStats>) -> Arc<Self> {
        Arc::new(Self {
            source,
            stats,
            per_connection: Mutex::default(),
        })
    }

    /// Serves relay control streams on `endpoint`.
    pub fn register(self: &Arc<Self>, endpoint: &Endpoint) {
        let server = Arc::downgrade(self);
        endpoint.register_stream(
            kinds::RELAY,
            stream_service_fn(move |stream| {
                let server = server.upgrade();
                async move {
                    if let Some(server) = server {
                        server.serve(stream).await;
                    }
                }
            }),
        );
    }

    #[tracing::instrument(skip_all, fields(peer = %stream.peer.name))]
    async fn serve(self: Arc<Self>, mut stream: IncomingStream) {
        let mut buf = BytesMut::new();
        let mut decoder = streamhub_shared::relay::ControlDecoder::new();
        let first = tokio::time::timeout(
            SUBSCRIBE_TIMEOUT,
            read_message(&mut stream.recv, &mut buf, &mut decoder),
        )
        .await;
        let (request_id, app, room, wanted, backfill) = match first {
            Ok(Ok(Some(ControlMessage::Subscribe {
                request_id,
                app,
                room,
                tracks,
                backfill,
            }))) => (request_id, app, room, tracks, backfill),
            Ok(Ok(other)) => {
                tracing::debug!(?other, "relay stream did not start with a subscribe");
                let _ = stream.recv.stop(STOP_PROTOCOL.into());
                return;
            }
            Ok(Err(error)) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%error, "bad relay control stream");
                let _ = stream.recv.stop(STOP_PROTOCOL.into());
                return;
            }
            Err(_) => {
                let _ = stream.recv.stop(STOP_PROTOCOL.into());
                return;
            }
        };
        let Some(_slot) = self.slot(stream.conn.stable_id()) else {
            let message =
                format!("at most {MAX_SUBSCRIPTIONS_PER_CONNECTION} subscriptions per connection");
            refuse(
                &mut stream,
                request_id,
                ErrorCode::TooManySubscriptions,
                message,
            )
            .await;
            return;
        };
        let handle = match self.source.lookup(&app, &room) {
            Ok(handle) => handle,
            Err(code) => {
                refuse(
                    &mut stream,
                    request_id,
                    code,
                    format!("{app}/{room} is not live here"),
                )
                .await;
                return;
            }
        };
        if let Some(ids) = &wanted {
            let tracks = handle.tracks();
            if let Some(bad) = ids.iter().find(|id| !tracks.iter().any(|t| t.id == **id)) {
                let message = format!("{app}/{room} has no track {bad}");
                refuse(&mut stream, request_id, ErrorCode::UnknownTrack, message).await;
                return;
            }
        }
        let Some((snapshot, consumer)) = handle.subscribe_recent(usize::from(backfill)) else {
            let message = format!("{app}/{room} just ended");
            refuse(&mut stream, request_id, ErrorCode::UnknownRoom, message).await;
            return;
        };
        self.stats.subscribes.fetch_add(1, Ordering::Relaxed);
        self.stats.served.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%app, %room, request_id, "relay subscription");
        let sub = Served {
            request_id,
            backfill: backfill > 0,
            wanted,
            stats: self.stats.clone(),
            peer_bytes: self.stats.peer_counter(&stream.peer.name),
        };
        sub.run(stream, buf, decoder, snapshot, consumer).await;
        self.stats.served.fetch_sub(1, Ordering::Relaxed);
    }

    /// Takes one of the connection's subscription slots; released when the guard drops.
    fn slot(self: &Arc<Self>, conn: usize) -> Option<SlotGuard> {
        let mut map = self
            .per_connection
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = map.entry(conn).or_insert(0);
        if *n >= MAX_SUBSCRIPTIONS_PER_CONNECTION {
            return None;
        }
        *n += 1;
        Some(SlotGuard {
            server: self.clone(),
            conn,
        })
    }
}

struct SlotGuard {
    server: Arc<RelayServer>,
    conn: usize,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut map = self
            .server
            .per_connection
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.conn) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.conn);
            }
        }
    }
}

async fn refuse(stream: &mut IncomingStream, request_id: u64, code: ErrorCode, message: String) {
    let msg = ControlMessage::SubscribeError {
        request_id,
        code,
        message,
    };
    let _ = write_message(&mut stream.send, &msg).await;
    let _ = stream.send.finish();
    // Let the answer reach the peer before the stream is dropped.
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.send.stopped()).await;
}

/// One served subscription.
struct Served {
    request_id: u64,
    /// The subscriber asked for back-fill (and is told where it ends).
    backfill: bool,
    wanted: Option<Vec<TrackId>>,
    stats: Arc<RelayStats>,
    peer_bytes: Arc<AtomicU64>,
}

impl Served {
    fn filter(&self, tracks: &[TrackInfo]) -> Vec<TrackInfo> {
        match &self.wanted {
            None => tracks.to_vec(),
            Some(ids) => tracks
                .iter()
                .filter(|t| ids.contains(&t.id))
                .cloned()
                .collect(),
        }
    }

    fn wants(&self, track: TrackId) -> bool {
        self.wanted.as_ref().is_none_or(|ids| ids.contains(&track))
    }

    async fn run(
        self,
        mut stream: IncomingStream,
        mut buf: BytesMut,
        mut decoder: streamhub_shared::relay::ControlDecoder,
        snapshot: Vec<Frame>,
        mut consumer: streamhub_shared::media::MediaConsumer,
    ) {
        let mut catalog = consumer.tracks();
        let live_group = snapshot.last().map(|f| f.group);
        let answer = ControlMessage::Catalog {
            request_id: self.request_id,
            tracks: self.filter(&catalog),
            latest_group: snapshot.first().map(|f| f.group),
            live_group: live_group.filter(|_| self.backfill),
        };
        if write_message(&mut stream.send, &answer).await.is_err() {
            return;
        }
        // Back-filled groups (complete, older than the newest) go one after the other on their
        // own streams, beside the live ones (which quinn sends first: newer groups have the
        // higher priority); the subscriber's reorderer puts them in order.
        let (old, live): (Vec<Frame>, Vec<Frame>) = snapshot
            .into_iter()
            .filter(|f| self.wants(f.track))
            .partition(|f| live_group.is_some_and(|g| f.group < g));
        let backfill = CancellationToken::new();
        if !old.is_empty() {
            tokio::spawn(write_backfill(
                stream.conn.clone(),
                self.request_id,
                old,
                backfill.clone(),
                self.stats.clone(),
                self.peer_bytes.clone(),
            ));
        }
        let _backfill = backfill.drop_guard();
        let mut groups = GroupSender::new(stream.conn.clone(), &self);
        for frame in live {
            groups.push(frame);
        }
        let ended = loop {
            tokio::select! {
                msg = read_message(&mut stream.recv, &mut buf, &mut decoder) => match msg {
                    Ok(Some(ControlMessage::Unsubscribe { .. })) | Ok(None) => break false,
                    Ok(Some(ControlMessage::KeyframeRequest { .. })) => {
                        // Advisory: the room's producer rate-limits what it asks its publisher.
                        self.stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                        consumer.request_keyframe();
                    }
                    Ok(Some(other)) => {
                        tracing::debug!(?other, "unexpected relay message; ending subscription");
                        break false;
                    }
                    Err(ControlError::Relay(error)) => {
                        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%error, "bad relay control message");
                        let _ = stream.recv.stop(STOP_PROTOCOL.into());
                        break false;
                    }
                    Err(_) => break false,
                },
                frame = consumer.recv() => match frame {
                    Ok(frame) => {
                        let now = consumer.tracks();
                        if !Arc::ptr_eq(&now, &catalog) {
                            catalog = now;
                            let update = ControlMessage::CatalogUpdate {
                                request_id: self.request_id,
                                tracks: self.filter(&catalog),
                            };
                            if write_message(&mut stream.send, &update).await.is_err() {
                                break false;
                            }
                        }
                        if self.wants(frame.track) && !groups.push(frame) {
                            break false;
                        }
                    }
                    Err(RecvError::Lagged(_)) | Err(RecvError::Gap { .. }) => groups.drop_current(),
                    Err(RecvError::Closed) => break true,
                },
            }
        };
        // On the publisher's end the last group completes (its writer drains, then FIN); on an
        // unsubscribe or a broken stream every group still in flight is reset at once.
        groups.finish(ended);
        if ended {
            let msg = ControlMessage::Ended {
                request_id: self.request_id,
            };
            let _ = write_message(&mut stream.send, &msg).await;
            let _ = stream.send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.send.stopped()).await;
        }
    }
}

/// The writer of one group stream.
struct GroupWriter {
    group: u64,
    /// `None` once the group is complete: the writer finishes the stream when drained.
    tx: Option<mpsc::Sender<Frame>>,
    /// Resets the stream (the subscriber lost this group).
    drop: CancellationToken,
    /// Payload bytes queued and not yet written.
    queued: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// Hands a subscription's frames to one writer task per group.
struct GroupSender {
    conn: quinn::Connection,
    request_id: u64,
    stats: Arc<RelayStats>,
    peer_bytes: Arc<AtomicU64>,
    current: Option<GroupWriter>,
    older: VecDeque<GroupWriter>,
    /// A group given up on: its later frames are not sent.
    skip: Option<u64>,
}

impl GroupSender {
    fn new(conn: quinn::Connection, sub: &Served) -> Self {
        Self {
            conn,
            request_id: sub.request_id,
            stats: sub.stats.clone(),
            peer_bytes: sub.peer_bytes.clone(),
            current: None,
            older: VecDeque::new(),
            skip: None,
        }
    }

    /// Queues `frame`; false once the connection is gone.
    fn push(&mut self, frame: Frame) -> bool {
        if self.conn.close_reason().is_some() {
            return false;
        }
        if self.skip == Some(frame.group) {
            return true;
        }
        if self.current.as_ref().is_none_or(|w| w.group != frame.group) {
            self.start_group(frame.group);
        }
        let Some(writer) = self.current.as_ref() else {
            return true;
        };
        let Some(tx) = writer.tx.as_ref() else {
            return true;
        };
        let len = frame.data.len() as u64;
        if writer.queued.load(Ordering::Relaxed) + len > GROUP_QUEUE_BYTES as u64 {
            self.drop_current();
            return true;
        }
        writer.queued.fetch_add(len, Ordering::Relaxed);
        match tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.drop_current();
                true
            }
            // The writer failed (stream refused or connection lost).
            Err(mpsc::error::TrySendError::Closed(_)) => self.conn.close_reason().is_none(),
        }
    }

    fn start_group(&mut self, group: u64) {
        if let Some(mut previous) = self.current.take() {
            // Closing its queue lets the writer finish the stream once drained.
            previous.tx = None;
            self.older.push_back(previous);
        }
        self.older.retain(|w| !w.task.is_finished());
        while self.older.len() > MAX_OLDER_GROUPS {
            if let Some(old) = self.older.pop_front() {
                old.drop.cancel();
                self.stats.groups_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        let (tx, rx) = mpsc::channel(GROUP_QUEUE);
        let drop = CancellationToken::new();
        let queued = Arc::new(AtomicU64::new(0));
        let writer = write_group(
            self.conn.clone(),
            GroupHeader {
                request_id: self.request_id,
                group,
            },
            Queue {
                rx,
                queued: queued.clone(),
                // Newer groups first.
                priority: (group & 0x7fff_ffff) as i32,
            },
            drop.clone(),
            self.stats.clone(),
            self.peer_bytes.clone(),
        );
        self.current = Some(GroupWriter {
            group,
            tx: Some(tx),
            drop,
            queued,
            task: tokio::spawn(writer),
        });
        self.skip = None;
    }

    /// Gives up on the current group: its stream is reset, its later frames skipped.
    fn drop_current(&mut self) {
        if let Some(w) = self.current.take() {
            w.drop.cancel();
            self.skip = Some(w.group);
            self.stats.groups_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The subscription ended: with `graceful` the groups in flight finish (their queues close);
    /// otherwise they are reset, so no writer outlives the subscription.
    fn finish(mut self, graceful: bool) {
        let current = self.current.take();
        if !graceful {
            for w in current.iter().chain(self.older.iter()) {
                w.drop.cancel();
            }
        }
    }
}

/// Writes back-filled groups (complete, in order) one stream after the other; stops (resetting
/// the stream under way) when `drop` fires: the subscription ended.
async fn write_backfill(
    conn: quinn::Connection,
    request_id: u64,
    frames: Vec<Frame>,
    drop: CancellationToken,
    stats: Arc<RelayStats>,
    peer_bytes: Arc<AtomicU64>,
) {
    let live = frames.last().map_or(0, |f| f.group + 1);
    let mut frames = frames.into_iter().peekable();
    while let Some(first) = frames.next() {
        let group = first.group;
        let mut chunk = vec![first];
        while let Some(f) = frames.next_if(|f| f.group == group) {
            chunk.push(f);
        }
        let (tx, rx) = mpsc::channel(chunk.len());
        let queued = Arc::new(AtomicU64::new(0));
        for f in chunk {
            queued.fetch_add(f.data.len() as u64, Ordering::Relaxed);
            // The channel holds the whole group.
            let _ = tx.try_send(f);
        }
        // Closing the queue lets the writer finish the stream once drained.
        std::mem::drop(tx);
        let header = GroupHeader { request_id, group };
        // Below every live group (those are >= 0), and the older the sooner: the subscriber
        // delivers groups in order, and the streams of several may be queued at once.
        let behind = i32::try_from(live.saturating_sub(group)).unwrap_or(i32::MAX);
        let priority = i32::MIN / 2 + behind;
        let queue = Queue {
            rx,
            queued,
            priority,
        };
        write_group(
            conn.clone(),
            header,
            queue,
            drop.clone(),
            stats.clone(),
            peer_bytes.clone(),
        )
        .await;
        if drop.is_cancelled() || conn.close_reason().is_some() {
            return;
        }
    }
}

/// Writes one group stream: header, then frames as they are queued, then FIN; resets it if
/// `drop` fires first.
/// The receiving end of a group writer's queue, with its byte count.
struct Queue {
    rx: mpsc::Receiver<Frame>,
    queued: Arc<AtomicU64>,
    /// The stream's QUIC priority (quinn sends higher ones first).
    priority: i32,
}

async fn write_group(
    conn: quinn::Connection,
    header: GroupHeader,
    rx: Queue,
    drop: CancellationToken,
    stats: Arc<RelayStats>,
    peer_bytes: Arc<AtomicU64>,
) {
    let group = header.group;
    if let Err(error) = write_group_inner(conn, header, rx, drop, stats, peer_bytes).await {
        tracing::debug!(group, %error, "group stream failed");
    }
}

async fn write_group_inner(
    conn: quinn::Connection,
    header: GroupHeader,
    mut queue: Queue,
    drop: CancellationToken,
    stats: Arc<RelayStats>,
    peer_bytes: Arc<AtomicU64>,
) -> Result<(), String> {
    let mut send = tokio::select! {
        s = conn.open_uni() => s.map_err(|e| e.to_string())?,
        () = drop.cancelled() => return Ok(()),
    };
    let _ = send.set_priority(queue.priority);
    let mut head = BytesMut::with_capacity(64);
    header.encode(&mut head);
    let mut pending = Some(head.freeze());
    loop {
        let mut chunks = match pending.take() {
            Some(head) => vec![head],
            None => {
                let next = tokio::select! {
                    f = queue.rx.recv() => f,
                    () = drop.cancelled() => None,
                };
                let Some(frame) = next else { break };
                queue
                    .queued
                    .fetch_sub(frame.data.len() as u64, Ordering::Relaxed);
                let mut fh = BytesMut::with_capacity(32);
                FrameHeader::for_frame(&frame)
                    .and_then(|h| h.encode(&mut fh))
                    .map_err(|e| e.to_string())?;
                vec![fh.freeze(), frame.data]
            }
        };
        let len: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        let cancelled = tokio::select! {
            r = send.write_all_chunks(&mut chunks) => {
                r.map_err(|e| e.to_string())?;
                false
            }
            () = drop.cancelled() => true,
        };
        if cancelled {
            break;
        }
        stats.bytes_out.fetch_add(len, Ordering::Relaxed);
        peer_bytes.fetch_add(len, Ordering::Relaxed);
    }
    if drop.is_cancelled() {
        let _ = send.reset(RESET_DROPPED.into());
        return Ok(());
    }
    send.finish().map_err(|e| e.to_string())?;
    stats.groups_sent.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
