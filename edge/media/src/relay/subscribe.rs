//! The subscribing side of the relay: opens a control stream to the node holding a room, gets
//! its catalog, and receives its groups on the unidirectional streams the origin opens back.
//!
//! One task per QUIC connection accepts those group streams and routes each, by the request id
//! in its header, to its subscription; one task per stream decodes it. A subscription reorders
//! its groups ([`Reorder`]) and yields frames in the origin's order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use streamhub_cluster::transport::{kinds, Endpoint, RpcError};
use streamhub_shared::relay::{ControlDecoder, ControlMessage, ErrorCode, GroupDecoder, GroupItem};
use streamhub_shared::{AppName, Frame, RoomName, TrackInfo};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::control::{read_message, write_message, ControlError};
use super::reorder::{Delivery, Reorder};
use super::serve::STOP_PROTOCOL;
use super::RelayStats;

/// How long the origin may take to accept a subscription and answer it.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a group stream may take to deliver its header.
const GROUP_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Events queued from stream readers to one subscription; a full queue holds the readers back,
/// and QUIC flow control holds the origin back (which then drops old groups).
const EVENT_QUEUE: usize = 512;
/// Bytes read from a group stream at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Why a subscription could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The origin refused it.
    #[error("refused ({code:?}): {message}")]
    Refused {
        /// Why, for the edge's logic.
        code: ErrorCode,
        /// Why, for humans.
        message: String,
    },
    /// The origin could not be reached, or the stream failed.
    #[error("transport: {0}")]
    Transport(String),
    /// The origin answered something else than the protocol allows.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl From<RpcError> for SubscribeError {
    fn from(e: RpcError) -> Self {
        Self::Transport(e.to_string())
    }
}

impl From<ControlError> for SubscribeError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Relay(e) => Self::Protocol(e.to_string()),
            other => Self::Transport(other.to_string()),
        }
    }
}

/// What one group stream reader tells its subscription.
#[derive(Debug)]
enum GroupEvent {
    Frame(Frame),
    End { group: u64, clean: bool },
}

type Routes = Mutex<HashMap<u64, mpsc::Sender<GroupEvent>>>;

/// The subscriptions of one connection, by request id: a std Mutex held for a map operation.
#[derive(Default)]
struct Router {
    subs: Routes,
}

impl Router {
    fn lookup(&self, request_id: u64) -> Option<mpsc::Sender<GroupEvent>> {
        let subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        subs.get(&request_id).cloned()
    }

    fn set(&self, request_id: u64, tx: Option<mpsc::Sender<GroupEvent>>) {
        let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        match tx {
            Some(tx) => subs.insert(request_id, tx),
            None => subs.remove(&request_id),
        };
    }
}

/// Subscribes to rooms on other nodes over the cluster endpoint.
pub struct RelayClient {
    endpoint: Endpoint,
    stats: Arc<RelayStats>,
    next_id: AtomicU64,
    /// Routers by connection `stable_id`: a std Mutex held for a map operation.
    routers: Mutex<HashMap<usize, Arc<Router>>>,
    tasks: TaskTracker,
}

impl RelayClient {
    /// A client subscribing through `endpoint`, counting into `stats`.
    pub fn new(endpoint: Endpoint, stats: Arc<RelayStats>) -> Arc<Self> {
        Arc::new(Self {
            endpoint,
            stats,
            next_id: AtomicU64::new(1),
            routers: Mutex::default(),
            tasks: TaskTracker::new(),
        })
    }

    /// The counters of this client.
    pub fn stats(&self) -> &Arc<RelayStats> {
        &self.stats
    }

    /// Subscribes to every track of `app/room` on the node at `addr`.
    pub async fn subscribe(
        self: &Arc<Self>,
        addr: SocketAddr,
        app: &AppName,
        room: &RoomName,
    ) -> Result<Subscription, SubscribeError> {
        self.subscribe_tracks(addr, app, room, None, 0).await
    }

    /// Subscribes to every track of `app/room` with up to `groups` complete groups before the
    /// newest one back-filled (those the origin keeps): they come first, and
    /// [`Subscription::live_group`] says where they end.
    pub async fn subscribe_with_backfill(
        self: &Arc<Self>,
        addr: SocketAddr,
        app: &AppName,
        room: &RoomName,
        groups: u8,
    ) -> Result<Subscription, SubscribeError> {
        self.subscribe_tracks(addr, app, room, None, groups).await
    }

    /// Subscribes to `tracks` of `app/room` (`None`: all, present and future), with `backfill`
    /// complete groups before the newest.
    pub async fn subscribe_tracks(
        self: &Arc<Self>,
        addr: SocketAddr,
        app: &AppName,
        room: &RoomName,
        tracks: Option<Vec<streamhub_shared::TrackId>>,
        backfill: u8,
    ) -> Result<Subscription, SubscribeError> {
        self.stats.subscribed.fetch_add(1, Ordering::Relaxed);
        let (conn, mut send, mut recv) = self
            .endpoint
            .open_stream(addr, kinds::RELAY, SUBSCRIBE_TIMEOUT)
            .await?;
        let router = self.router(&conn);
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        // Routed before the subscribe goes out, so no group stream can arrive unrouted.
        router.set(request_id, Some(tx));
        let guard = RouteGuard { router, request_id };
        let msg = ControlMessage::Subscribe {
            request_id,
            app: app.clone(),
            room: room.clone(),
            tracks,
            backfill,
        };
        write_message(&mut send, &msg).await?;
        let mut buf = BytesMut::new();
        let mut decoder = ControlDecoder::new();
        let answer = tokio::time::timeout(
            SUBSCRIBE_TIMEOUT,
            read_message(&mut recv, &mut buf, &mut decoder),
        )
        .await
        .map_err(|_| SubscribeError::Transport("no answer to the subscribe".into()))??;
        match answer {
            Some(ControlMessage::Catalog {
                request_id: id,
                tracks,
                latest_group,
                live_group,
            }) if id == request_id => {
                self.stats.active.fetch_add(1, Ordering::Relaxed);
                Ok(Subscription {
                    request_id,
                    tracks,
                    latest_group,
                    live_group,
                    send,
                    recv,
                    buf,
                    decoder,
                    events,
                    reorder: Reorder::with_backfill(latest_group, backfill, live_group),
                    _guard: guard,
                    stats: self.stats.clone(),
                    lost_seen: 0,
                    ending: None,
                })
            }
            Some(ControlMessage::SubscribeError { code, message, .. }) => {
                Err(SubscribeError::Refused { code, message })
            }
            other => Err(SubscribeError::Protocol(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// The router of `conn`, starting its group-stream acceptor the first time.
    fn router(self: &Arc<Self>, conn: &quinn::Connection) -> Arc<Router> {
        let mut routers = self.routers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = routers.get(&conn.stable_id()) {
            return r.clone();
        }
        let router = Arc::new(Router::default());
        routers.insert(conn.stable_id(), router.clone());
        let client = Arc::downgrade(self);
        let (conn, r) = (conn.clone(), router.clone());
        self.tasks.spawn(async move {
            accept_groups(&conn, r, client.clone()).await;
            if let Some(client) = client.upgrade() {
                let mut routers = client.routers.lock().unwrap_or_else(|e| e.into_inner());
                routers.remove(&conn.stable_id());
            }
        });
        router
    }
}

/// Removes a subscription's route when it is dropped.
struct RouteGuard {
    router: Arc<Router>,
    request_id: u64,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        self.router.set(self.request_id, None);
    }
}

async fn accept_groups(
    conn: &quinn::Connection,
    router: Arc<Router>,
    client: std::sync::Weak<RelayClient>,
) {
    loop {
        let Ok(recv) = conn.accept_uni().await else {
            return;
        };
        let Some(c) = client.upgrade() else { return };
        c.tasks
            .spawn(read_group(recv, router.clone(), c.stats.clone()));
    }
}

/// Decodes one group stream and hands its frames to its subscription.
async fn read_group(mut recv: quinn::RecvStream, router: Arc<Router>, stats: Arc<RelayStats>) {
    let mut buf = BytesMut::new();
    let mut decoder = GroupDecoder::new();
    let mut route: Option<(u64, mpsc::Sender<GroupEvent>)> = None;
    let deadline = tokio::time::Instant::now() + GROUP_HEADER_TIMEOUT;
    loop {
        // Everything complete in the buffer first.
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(GroupItem::Header(h))) => {
                    stats.groups_received.fetch_add(1, Ordering::Relaxed);
                    let Some(tx) = router.lookup(h.request_id) else {
                        stats.unknown_streams.fetch_add(1, Ordering::Relaxed);
                        let _ = recv.stop(STOP_PROTOCOL.into());
                        return;
                    };
                    route = Some((h.group, tx));
                }
                Ok(Some(GroupItem::Frame(frame))) => {
                    let Some((_, tx)) = &route else { return };
                    if tx.send(GroupEvent::Frame(frame)).await.is_err() {
                        let _ = recv.stop(0u32.into());
                        return;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    stats.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%error, "malformed group stream");
                    let _ = recv.stop(STOP_PROTOCOL.into());
                    end(&route, false).await;
                    return;
                }
            }
        }
        let read = if route.is_none() {
            match tokio::time::timeout_at(deadline, recv.read_chunk(READ_CHUNK, true)).await {
                Ok(r) => r,
                Err(_) => {
                    let _ = recv.stop(STOP_PROTOCOL.into());
                    return;
                }
            }
        } else {
            recv.read_chunk(READ_CHUNK, true).await
        };
        match read {
            Ok(Some(chunk)) => {
                stats
                    .bytes_in
                    .fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
                buf.extend_from_slice(&chunk.bytes);
            }
            Ok(None) => {
                let clean = decoder.finish(&buf).is_ok();
                if !clean {
                    stats.malformed.fetch_add(1, Ordering::Relaxed);
                }
                end(&route, clean).await;
                return;
            }
            Err(_) => {
                // Reset by the origin (it gave up on this group) or the connection is gone.
                end(&route, false).await;
                return;
            }
        }
    }
}

async fn end(route: &Option<(u64, mpsc::Sender<GroupEvent>)>, clean: bool) {
    if let Some((group, tx)) = route {
        let _ = tx
            .send(GroupEvent::End {
                group: *group,
                clean,
            })
            .await;
    }
}

/// What a subscription yields.
#[derive(Debug)]
pub enum Update {
    /// The next frame, in the origin's order, with the origin's group number.
    Frame(Frame),
    /// Frames were lost before the next one; `partial` if the last group delivered is
    /// incomplete.
    Gap { partial: bool },
    /// The room's tracks changed.
    Catalog(Vec<TrackInfo>),
    /// The publisher has gone: nothing more will come.
    Ended,
    /// The subscription broke (origin gone, connection lost, protocol error).
    Lost(String),
}

/// A live subscription to one room. Dropping it ends the stream, and the origin stops sending.
pub struct Subscription {
    request_id: u64,
    /// The room's tracks, from the catalog.
    pub tracks: Vec<TrackInfo>,
    /// The first group that will come: the origin's newest when it answered, or with back-fill
    /// the oldest back-filled one.
    pub latest_group: Option<u64>,
    /// With back-fill: the origin's newest group when it answered; the groups before it are the
    /// back-fill (a packager wants them, live viewers do not).
    pub live_group: Option<u64>,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: BytesMut,
    decoder: ControlDecoder,
    events: mpsc::Receiver<GroupEvent>,
    reorder: Reorder,
    _guard: RouteGuard,
    stats: Arc<RelayStats>,
    lost_seen: u64,
    /// The origin said `Ended`: the groups still in flight are drained until this deadline.
    ending: Option<tokio::time::Instant>,
}

/// How long the groups in flight when the origin says `Ended` may take to arrive.
const END_DRAIN: Duration = Duration::from_secs(2);

impl Drop for Subscription {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Subscription {
    /// The request id of this subscription on its connection.
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// The next update. Cancel-safe: a call dropped before it returns loses nothing.
    pub async fn next(&mut self) -> Update {
        loop {
            if let Some(d) = self.reorder.poll() {
                let abandoned = self.reorder.abandoned();
                if abandoned > self.lost_seen {
                    let n = abandoned - self.lost_seen;
                    self.stats.groups_lost.fetch_add(n, Ordering::Relaxed);
                    self.lost_seen = abandoned;
                }
                return match d {
                    Delivery::Frame(f) => Update::Frame(f),
                    Delivery::Gap { partial } => Update::Gap { partial },
                };
            }
            if let Some(end) = self.ending {
                // The last group's frames come after `Ended` on another stream: deliver them.
                if self.reorder.is_idle() || tokio::time::Instant::now() >= end {
                    return Update::Ended;
                }
            }
            let deadline = self.reorder.deadline();
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let ending = self.ending;
            let drained = async {
                match ending {
                    Some(end) => tokio::time::sleep_until(end).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = timer => self.reorder.on_timeout(std::time::Instant::now()),
                () = drained => return Update::Ended,
                msg = read_message(&mut self.recv, &mut self.buf, &mut self.decoder), if self.ending.is_none() => {
                    return match msg {
                        Ok(Some(ControlMessage::CatalogUpdate { tracks, .. })) => {
                            self.tracks = tracks.clone();
                            Update::Catalog(tracks)
                        }
                        Ok(Some(ControlMessage::Ended { .. })) => {
                            self.ending = Some(tokio::time::Instant::now() + END_DRAIN);
                            continue;
                        }
                        Ok(Some(other)) => Update::Lost(format!("unexpected message {other:?}")),
                        Ok(None) => Update::Lost("the origin closed the subscription".into()),
                        Err(e) => {
                            if matches!(e, ControlError::Relay(_)) {
                                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                            }
                            Update::Lost(e.to_string())
                        }
                    };
                }
                event = self.events.recv() => match event {
                    Some(GroupEvent::Frame(f)) => {
                        self.reorder.frame(f.group, f, std::time::Instant::now())
                    }
                    Some(GroupEvent::End { group, clean }) => {
                        if !clean {
                            self.stats.groups_lost.fetch_add(1, Ordering::Relaxed);
                        }
                        self.reorder.end(group, clean, std::time::Instant::now());
                    }
                    None => return Update::Lost("group streams ended".into()),
                },
            }
        }
    }

    /// Asks the origin for a keyframe for this subscription's viewers (advisory; the caller
    /// rate-limits). False if the control stream is broken.
    pub async fn request_keyframe(&mut self) -> bool {
        let msg = ControlMessage::KeyframeRequest {
            request_id: self.request_id,
        };
        write_message(&mut self.send, &msg).await.is_ok()
    }

    /// Ends the subscription politely (the origin stops at once).
    pub async fn close(mut self) {
        let msg = ControlMessage::Unsubscribe {
            request_id: self.request_id,
        };
        let _ = write_message(&mut self.send, &msg).await;
        let _ = self.send.finish();
    }
}
