//! The WHEP send path built for fan-out.
//!
//! A node runs one fan-out worker per core. A viewer's session, once connected, hands the
//! worker its send state ([`ViewerSend`]: SRTP keys, SSRCs, sequence numbers, timeline) and
//! keeps only ICE, DTLS and incoming RTCP. The viewers of a room on one worker share one
//! subscription: each frame is packetized once per node ([`PacketCache`]); per viewer only the
//! RTP header is written (its SSRC, sequence number, timestamp) and the packet is protected
//! ([`Srtp`]) straight into the worker's send buffer, no allocation per packet; the packets of
//! every viewer go out in one `sendmmsg`, a viewer's run of equal-sized packets as one GSO
//! message ([`Outbox`]).
//!
//! RTCP: the worker sends each viewer's sender reports, answers its NACKs from the room's
//! shared packet history (each viewer keeps only references: which history packet, under which
//! sequence number and timestamp, it sent), and reads its receiver reports for loss. A viewer
//! with sustained loss, or whose packets the socket would not take, is *congested*: its video
//! waits for the next keyframe (it drops what it would fall behind on; nothing queues), and
//! `/metrics` counts it until its reports are clean again.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::socket::MediaSocket;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use streamhub_shared::h264::AvcConfig;
use streamhub_shared::media::{CodecConfig, Frame, MediaConsumer, MediaHandle, RecvError, TrackId};
use streamhub_shared::srtp::Srtp;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::outbox::Outbox;
use super::packets::PacketCache;
use super::WebRtcStats;
use crate::access::ViewerHold;

/// RTP payload budget (as the `rtc` path): under any path MTU with SRTP.
pub(super) const RTP_MTU: usize = 1200;
/// Packets of a viewer's video remembered for NACKs (references into the room's history).
const NACK_REFS: usize = 512;
/// Packets of a room's video kept per worker to answer NACKs: 1.7 s at 2.5 Mb/s, 10 s at
/// 200 kb/s (the payloads are shared with every viewer and the packet cache).
const HISTORY: usize = 1024;
/// Sender reports: one per stream per viewer this often.
const SR_INTERVAL: Duration = Duration::from_secs(1);
/// How long a full socket may hold a worker's batch before the rest is dropped.
const SEND_WAIT: Duration = Duration::from_millis(20);
/// Receiver-report loss (fraction lost, of 256) above which a report counts as bad (~10 %).
const LOSS_BAD: u8 = 26;
/// At or below this (~2 %) a report is clean.
const LOSS_CLEAN: u8 = 5;
/// Bad reports in a row that make a viewer congested (Chrome reports about once a second).
const BAD_REPORTS: u8 = 2;
/// A viewer's bytes are added to its app's egress by this much.
const EGRESS_REPORT: u64 = 64 * 1024;
/// Tracks a room remembers ignoring (a catalog lookup per frame of each past that).
const MAX_IGNORED_TRACKS: usize = 16;

/// A viewer's outgoing RTP stream.
#[derive(Debug)]
pub(super) struct Stream {
    pub ssrc: u32,
    pub pt: u8,
    /// The next packet's index (`ROC << 16 | seq`).
    index: u64,
    ts_base: u32,
    /// Ticks per second of the track it carries (0: none yet).
    clock: u32,
    /// The room and track it carries now.
    bound: Option<(usize, TrackId)>,
    /// The timestamp of the last packet sent and when it went.
    last: Option<(u32, Instant)>,
    /// The next frame continues the timeline from here (see [`Stream::bind`]).
    resume: Option<(u32, Instant)>,
    /// Video: waiting for a keyframe.
    waiting: bool,
    packets: u32,
    octets: u32,
    /// Video: what each recent sequence number carried, for NACKs.
    sent: Vec<NackRef>,
    /// Receiver reports in a row with more than [`LOSS_BAD`] loss.
    bad_reports: u8,
    /// The last receiver report showed at most [`LOSS_CLEAN`] loss (or none came yet).
    clean: bool,
}

/// 12 bytes: the low 32 bits of the packet's index and of its number in the room's history
/// (both told apart from older ones by the distance to the newest), and its timestamp.
#[derive(Debug, Clone, Copy, Default)]
struct NackRef {
    index: u32,
    /// Its packet in the room's history.
    packet: u32,
    ts: u32,
}

impl Stream {
    /// What the packet with sequence number `seq` carried, if it was among the last
    /// [`NACK_REFS`] sent: its full index, its number in the history and its timestamp.
    fn sent_as(&self, seq: u16) -> Option<(u64, u32, u32)> {
        let r = self.sent.get(usize::from(seq) % NACK_REFS)?;
        let back = (self.index as u32).wrapping_sub(r.index);
        if back == 0 || back as usize > NACK_REFS {
            return None; // not sent yet, or too long ago
        }
        let index = self.index.checked_sub(u64::from(back))?;
        (index as u16 == seq).then_some((index, r.packet, r.ts))
    }
}

impl Stream {
    pub fn new(ssrc: u32, pt: u8, video: bool) -> Self {
        let index = u64::from(rand::random::<u16>());
        Self {
            ssrc,
            pt,
            index,
            ts_base: rand::random(),
            clock: 0,
            bound: None,
            last: None,
            resume: None,
            waiting: true,
            packets: 0,
            octets: 0,
            sent: if video {
                // Farther back than any answerable packet: nothing matches until it is sent
                // (as after `bind`).
                let never = NackRef {
                    index: (index as u32).wrapping_sub(NACK_REFS as u32 + 1),
                    ..Default::default()
                };
                vec![never; NACK_REFS]
            } else {
                Vec::new()
            },
            bad_reports: 0,
            clean: true,
        }
    }

    /// The stream carries `track` of `room` from now on. A stream that carried a track of the
    /// same clock before (the room's previous publisher session) goes on forward from its
    /// last timestamp; the sequence numbers always go on.
    fn bind(&mut self, room: usize, track: TrackId, clock: u32) {
        if self.bound == Some((room, track)) {
            return;
        }
        self.resume = if self.clock == clock {
            self.last.or(self.resume)
        } else {
            None
        };
        self.clock = clock;
        self.bound = Some((room, track));
        self.waiting = true;
        // The references point into the previous room's history: a NACK for what went before
        // is not answered (rather than with another room's packet of the same number).
        let never = (self.index as u32).wrapping_sub(NACK_REFS as u32 + 1);
        for r in &mut self.sent {
            r.index = never;
        }
    }

    /// The RTP timestamp of a frame at `t` (in the track's clock).
    fn timestamp(&mut self, t: i64, now: Instant) -> u32 {
        rtp_timestamp(&mut self.ts_base, &mut self.resume, self.clock, t, now)
    }
}

/// The RTP timestamp of a frame at `t` (ticks of `clock`) on a stream whose timestamps are
/// `ts_base + t`; with `resume` (the last timestamp sent and when, from the room's previous
/// publisher session) the timeline first moves on from there by the time that passed, so the
/// new session's frames, numbered from its own start, go on forward.
pub(super) fn rtp_timestamp(
    ts_base: &mut u32,
    resume: &mut Option<(u32, Instant)>,
    clock: u32,
    t: i64,
    now: Instant,
) -> u32 {
    if let Some((ts, at)) = resume.take() {
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        let ticks = (elapsed * f64::from(clock)) as u32;
        *ts_base = ts.wrapping_add(ticks.max(1)).wrapping_sub(t as u32);
    }
    ts_base.wrapping_add(t as u32)
}

/// Everything a viewer's sending needs: it moves to a worker when the session connects and
/// comes back when the room's publisher session ends (the session then finds the next one).
pub(super) struct ViewerSend {
    pub id: u64,
    pub dest: SocketAddr,
    pub srtp: Srtp,
    pub video: Option<Stream>,
    pub audio: Option<Stream>,
    pub hold: Option<Arc<ViewerHold>>,
    unreported: u64,
    congested: bool,
    /// Per kind (video, audio), the decode time of the newest frame sent in this room: a joiner
    /// gets the room's newest group at once and must not get those frames again from the live
    /// subscription.
    newest: [Option<i64>; 2],
    /// When its next sender reports are due.
    sr_due: Instant,
}

impl ViewerSend {
    pub fn new(
        id: u64,
        dest: SocketAddr,
        srtp: Srtp,
        video: Option<Stream>,
        audio: Option<Stream>,
        hold: Option<Arc<ViewerHold>>,
    ) -> Self {
        Self {
            id,
            dest,
            srtp,
            video,
            audio,
            hold,
            unreported: 0,
            congested: false,
            newest: [None, None],
            sr_due: Instant::now() + SR_INTERVAL / 2,
        }
    }

    fn report_egress(&mut self, bytes: u64, force: bool) {
        self.unreported += bytes;
        if force || self.unreported >= EGRESS_REPORT {
            if let Some(h) = &self.hold {
                h.sent(std::mem::take(&mut self.unreported));
            }
        }
    }
}

impl Drop for ViewerSend {
    fn drop(&mut self) {
        self.report_egress(0, true);
    }
}

/// What a session tells its worker.
pub(super) enum Cmd {
    /// Start sending the room of `media` to the viewer; `ended` gets its state back if the
    /// room's publisher session ends first.
    Join {
        viewer: Box<ViewerSend>,
        media: MediaHandle,
        ended: oneshot::Sender<Box<ViewerSend>>,
    },
    Leave(u64),
    /// Sequence numbers the viewer asks again (RTCP NACK).
    Nack {
        id: u64,
        ssrc: u32,
        seqs: Vec<u16>,
    },
    /// A receiver report block: the fraction lost (of 256) on one of the viewer's streams.
    Loss {
        id: u64,
        ssrc: u32,
        fraction: u8,
    },
    /// The viewer's media address changed.
    Dest {
        id: u64,
        dest: SocketAddr,
    },
}

/// The node's fan-out workers.
pub(super) struct Fanout {
    workers: Vec<mpsc::UnboundedSender<Cmd>>,
}

impl Fanout {
    pub fn start(
        workers: usize,
        socket: Arc<MediaSocket>,
        max_segments: usize,
        stats: Arc<WebRtcStats>,
        packets: Arc<PacketCache>,
        shutdown: CancellationToken,
    ) -> Self {
        let v6 = socket.local_addr().is_ok_and(|a| a.is_ipv6());
        let workers = (0..workers.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                let w = Worker {
                    rx,
                    rooms: HashMap::new(),
                    located: HashMap::new(),
                    next_gen: 0,
                    frames: FuturesUnordered::new(),
                    out: Sender {
                        fd: socket.as_raw_fd(),
                        socket: socket.clone(),
                        outbox: Outbox::new(max_segments, v6),
                        stats: stats.clone(),
                        rtp_out: 0,
                        overflowed: Vec::new(),
                    },
                    stats: stats.clone(),
                    packets: packets.clone(),
                };
                tokio::spawn(w.run(shutdown.clone()));
                tx
            })
            .collect();
        Self { workers }
    }

    /// The worker of session `id` (sessions spread evenly, whatever their room).
    pub fn worker(&self, id: u64) -> mpsc::UnboundedSender<Cmd> {
        self.workers[(id % self.workers.len() as u64) as usize].clone()
    }
}

/// A room's history of video packets (payload and marker), by a running number.
#[derive(Default)]
struct History {
    first: u64,
    packets: VecDeque<(Bytes, bool)>,
}

impl History {
    fn push(&mut self, payload: Bytes, marker: bool) -> u64 {
        if self.packets.len() == HISTORY {
            self.packets.pop_front();
            self.first += 1;
        }
        self.packets.push_back((payload, marker));
        self.first + self.packets.len() as u64 - 1
    }

    fn get(&self, n: u64) -> Option<&(Bytes, bool)> {
        self.packets.get(n.checked_sub(self.first)? as usize)
    }

    /// The packet whose number's low 32 bits are `low`, if it is still kept.
    fn get_recent(&self, low: u32) -> Option<&(Bytes, bool)> {
        let newest = (self.first + self.packets.len() as u64).checked_sub(1)?;
        let back = (newest as u32).wrapping_sub(low);
        self.get(newest.checked_sub(u64::from(back))?)
    }
}

struct VideoTrack {
    id: TrackId,
    avc: AvcConfig,
    avcc: Bytes,
    clock: u32,
}

/// The viewers of one publisher session of a room on one worker.
struct Room {
    gen: u64,
    media: MediaHandle,
    video: Option<VideoTrack>,
    audio: Option<(TrackId, u32)>,
    ignored: Vec<TrackId>,
    history: History,
    viewers: Vec<Member>,
    warned_bframes: bool,
}

struct Member {
    send: Box<ViewerSend>,
    ended: Option<oneshot::Sender<Box<ViewerSend>>>,
}

impl Room {
    /// Reads the catalog: the H.264 and Opus tracks viewers get.
    fn catalog(&mut self) {
        let tracks = self.media.tracks();
        for t in tracks.iter() {
            match &t.codec {
                // The first H.264 track is the one viewers get (a publisher session has one).
                CodecConfig::H264 { avcc, .. } if self.video.is_none() && t.timescale > 0 => {
                    if let Ok(avc) = AvcConfig::parse(avcc) {
                        self.video = Some(VideoTrack {
                            id: t.id,
                            avc,
                            avcc: avcc.clone(),
                            clock: t.timescale,
                        });
                    }
                }
                CodecConfig::Opus { .. } if self.audio.is_none() && t.timescale > 0 => {
                    self.audio = Some((t.id, t.timescale));
                }
                _ => {}
            }
        }
    }

    fn kind(&mut self, track: TrackId) -> Option<usize> {
        let find = |r: &Room| {
            if r.video.as_ref().is_some_and(|v| v.id == track) {
                Some(0)
            } else if r.audio.is_some_and(|(a, _)| a == track) {
                Some(1)
            } else {
                None
            }
        };
        if let Some(k) = find(self) {
            return Some(k);
        }
        if self.ignored.contains(&track) {
            return None;
        }
        self.catalog();
        let k = find(self);
        if k.is_none() && self.ignored.len() < MAX_IGNORED_TRACKS {
            self.ignored.push(track);
        }
        k
    }
}

type NextFrame = BoxFuture<'static, (usize, u64, MediaConsumer, Result<Frame, RecvError>)>;

struct Worker {
    rx: mpsc::UnboundedReceiver<Cmd>,
    rooms: HashMap<usize, Room>,
    /// Which room each viewer is in.
    located: HashMap<u64, usize>,
    next_gen: u64,
    frames: FuturesUnordered<NextFrame>,
    out: Sender,
    stats: Arc<WebRtcStats>,
    packets: Arc<PacketCache>,
}

/// A worker's sending: its outbox and what it counts.
struct Sender {
    fd: RawFd,
    socket: Arc<MediaSocket>,
    outbox: Outbox,
    stats: Arc<WebRtcStats>,
    /// RTP packets written since the last addition to the shared counter.
    rtp_out: u64,
    /// Viewers whose packets the socket did not take.
    overflowed: Vec<u64>,
}

impl Sender {
    /// Makes room for one more datagram: a full outbox is sent first (waiting up to
    /// [`SEND_WAIT`] for a full socket; what it still does not take is dropped and its viewers
    /// noted, congested once the worker is done with what it is doing).
    async fn make_room(&mut self) {
        if !self.outbox.has_room() {
            self.send().await;
        }
    }

    /// Sends what waits (see [`make_room`](Self::make_room)).
    async fn send(&mut self) {
        let overflowed = &mut self.overflowed;
        let sent = self
            .outbox
            .flush(&self.socket, self.fd, SEND_WAIT, |id| overflowed.push(id))
            .await;
        self.stats
            .rtp_out
            .fetch_add(std::mem::take(&mut self.rtp_out), Ordering::Relaxed);
        if sent.dropped > 0 {
            self.stats
                .send_drops
                .fetch_add(sent.dropped, Ordering::Relaxed);
        }
    }

    /// Writes one RTP packet of stream `s` of viewer `v` (index `index`), protected; returns
    /// its length on the wire.
    #[allow(clippy::too_many_arguments)]
    async fn rtp(
        &mut self,
        v: (SocketAddr, u64, &Srtp),
        s: &Stream,
        index: u64,
        ts: u32,
        marker: bool,
        payload: &[u8],
    ) -> Option<usize> {
        self.make_room().await;
        let len = write_rtp(self.outbox.space(), v.2, s, index, ts, marker, payload)?;
        self.outbox.commit(v.0, v.1, len);
        self.rtp_out += 1;
        Some(len)
    }
}

fn next_frame(key: usize, gen: u64, mut consumer: MediaConsumer) -> NextFrame {
    Box::pin(async move {
        let r = consumer.recv().await;
        (key, gen, consumer, r)
    })
}

/// Writes one RTP packet of `s` for a viewer into `out` and protects it; returns its length.
fn write_rtp(
    out: &mut [u8],
    srtp: &Srtp,
    s: &Stream,
    index: u64,
    ts: u32,
    marker: bool,
    payload: &[u8],
) -> Option<usize> {
    let len = 12 + payload.len();
    if len + streamhub_shared::srtp::MAX_OVERHEAD > out.len() {
        return None;
    }
    out[0] = 0x80;
    out[1] = s.pt | if marker { 0x80 } else { 0 };
    out[2..4].copy_from_slice(&(index as u16).to_be_bytes());
    out[4..8].copy_from_slice(&ts.to_be_bytes());
    out[8..12].copy_from_slice(&s.ssrc.to_be_bytes());
    out[12..len].copy_from_slice(payload);
    srtp.protect_rtp(out, 12, len, index).ok()
}

impl Worker {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut reports = tokio::time::interval(SR_INTERVAL / 4);
        reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.command(cmd).await,
                    None => break,
                },
                Some((key, gen, consumer, r)) = self.frames.next(), if !self.frames.is_empty() => {
                    self.frame(key, gen, consumer, r).await;
                }
                _ = reports.tick() => self.sender_reports().await,
            }
            if !self.out.outbox.is_empty() {
                self.out.send().await;
            }
            self.congest_overflowed();
        }
    }

    /// Viewers whose packets the socket did not take are congested.
    fn congest_overflowed(&mut self) {
        if self.out.overflowed.is_empty() {
            return;
        }
        let mut overflowed = std::mem::take(&mut self.out.overflowed);
        overflowed.sort_unstable();
        overflowed.dedup();
        let stats = self.stats.clone();
        for &id in &overflowed {
            if let Some(v) = self.viewer(id) {
                congest(v, &stats);
            }
        }
        overflowed.clear();
        self.out.overflowed = overflowed;
    }

    fn viewer(&mut self, id: u64) -> Option<&mut ViewerSend> {
        let key = self.located.get(&id)?;
        let room = self.rooms.get_mut(key)?;
        room.viewers
            .iter_mut()
            .find(|m| m.send.id == id)
            .map(|m| &mut *m.send)
    }

    async fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Join {
                viewer,
                media,
                ended,
            } => self.join(viewer, media, ended).await,
            Cmd::Leave(id) => {
                if let Some(key) = self.located.remove(&id) {
                    if let Some(room) = self.rooms.get_mut(&key) {
                        if let Some(i) = room.viewers.iter().position(|m| m.send.id == id) {
                            let m = room.viewers.swap_remove(i);
                            if m.send.congested {
                                self.stats.viewers_congested.fetch_sub(1, Ordering::Relaxed);
                            }
                        }
                        if room.viewers.is_empty() {
                            self.rooms.remove(&key);
                        }
                    }
                }
            }
            Cmd::Nack { id, ssrc, seqs } => self.nack(id, ssrc, &seqs).await,
            Cmd::Loss { id, ssrc, fraction } => {
                let stats = self.stats.clone();
                if let Some(v) = self.viewer(id) {
                    loss_report(v, ssrc, fraction, &stats);
                }
            }
            Cmd::Dest { id, dest } => {
                if let Some(v) = self.viewer(id) {
                    v.dest = dest;
                }
            }
        }
    }

    async fn join(
        &mut self,
        mut viewer: Box<ViewerSend>,
        media: MediaHandle,
        ended: oneshot::Sender<Box<ViewerSend>>,
    ) {
        let Some((snapshot, consumer)) = media.subscribe_latest() else {
            // The publisher session ended before the viewer got there: straight back.
            let _ = ended.send(viewer);
            return;
        };
        let key = media.id();
        viewer.newest = [None, None];
        let id = viewer.id;
        if !self.rooms.contains_key(&key) {
            self.next_gen += 1;
            let gen = self.next_gen;
            let mut room = Room {
                gen,
                media,
                video: None,
                audio: None,
                ignored: Vec::new(),
                history: History::default(),
                viewers: Vec::new(),
                warned_bframes: false,
            };
            room.catalog();
            self.rooms.insert(key, room);
            self.frames.push(next_frame(key, gen, consumer));
        }
        let room = self.rooms.get_mut(&key).expect("inserted above");
        room.viewers.push(Member {
            send: viewer,
            ended: Some(ended),
        });
        self.located.insert(id, key);
        // The room's newest group, to this viewer only: its first picture decodes at once.
        let only = room.viewers.len() - 1;
        for frame in &snapshot {
            self.send_frame(key, frame, Some(only)).await;
        }
    }

    async fn frame(
        &mut self,
        key: usize,
        gen: u64,
        consumer: MediaConsumer,
        r: Result<Frame, RecvError>,
    ) {
        let Some(room) = self.rooms.get_mut(&key).filter(|r| r.gen == gen) else {
            return; // the room's last viewer left: its subscription ends here
        };
        match r {
            Ok(frame) => {
                self.frames.push(next_frame(key, gen, consumer));
                self.send_frame(key, &frame, None).await;
            }
            Err(RecvError::Closed) => {
                // The publisher session ended: every viewer's session looks for the next one.
                let room = self.rooms.remove(&key).expect("looked up above");
                for mut m in room.viewers {
                    self.located.remove(&m.send.id);
                    // Counted while it is here: a viewer waiting for the next session is not
                    // sent anything, and one whose session ends there must not stay counted.
                    if std::mem::take(&mut m.send.congested) {
                        self.stats.viewers_congested.fetch_sub(1, Ordering::Relaxed);
                    }
                    if let Some(tx) = m.ended.take() {
                        let _ = tx.send(m.send);
                    }
                }
            }
            Err(RecvError::Lagged(_) | RecvError::Gap { .. }) => {
                // Frames were lost: every viewer resumes at the next keyframe.
                for m in &mut room.viewers {
                    if let Some(v) = m.send.video.as_mut() {
                        v.waiting = true;
                    }
                }
                self.frames.push(next_frame(key, gen, consumer));
            }
        }
    }

    /// Sends `frame` of room `key` to its viewers (or only to the viewer at `only`).
    async fn send_frame(&mut self, key: usize, frame: &Frame, only: Option<usize>) {
        let Some(room) = self.rooms.get_mut(&key) else {
            return;
        };
        let Some(kind) = room.kind(frame.track) else {
            return;
        };
        let now = Instant::now();
        // What each viewer gets of the frame: the payloads (shared by all), where they are in
        // the room's history (video: for NACKs), the time the stream's timeline is at.
        let (kind, payloads, first, t, (track, clock)) = if kind == 0 {
            let Some(v) = room.video.as_ref() else { return };
            if frame.pts != frame.dts && !room.warned_bframes {
                room.warned_bframes = true;
                tracing::warn!(
                    "the room's H.264 has B-frames; WebRTC viewers will see stutter (publish with -bf 0 or -tune zerolatency)"
                );
            }
            let (track, clock) = (v.id, v.clock);
            // Parameter sets in band before every keyframe: a viewer joining or recovering
            // needs them.
            let payloads = self
                .packets
                .h264(frame, &v.avc, &v.avcc, frame.keyframe, RTP_MTU);
            let n = payloads.len();
            let first = payloads
                .iter()
                .enumerate()
                .map(|(i, p)| room.history.push(p.clone(), i + 1 == n))
                .min()
                .unwrap_or(0);
            (0, payloads, Some(first), frame.pts, (track, clock))
        } else {
            let Some(audio) = room.audio else { return };
            let single: Arc<[Bytes]> = Arc::new([frame.data.clone()]);
            (1, single, None, frame.dts, audio)
        };
        let n = payloads.len();
        let range = match only {
            Some(i) => i..i + 1,
            None => 0..room.viewers.len(),
        };
        for i in range {
            let v = &mut *room.viewers[i].send;
            let stream = if kind == 0 {
                v.video.as_mut()
            } else {
                v.audio.as_mut()
            };
            let Some(s) = stream else { continue };
            s.bind(key, track, clock);
            if kind == 1 {
                s.waiting = false; // audio starts on any frame
            }
            // Sent already (the newest group a joiner got at once), or waiting for a keyframe.
            if v.newest[kind].is_some_and(|d| frame.dts <= d) || (s.waiting && !frame.keyframe) {
                continue;
            }
            s.waiting = false;
            v.newest[kind] = Some(frame.dts);
            let ts = s.timestamp(t, now);
            s.last = Some((ts, now));
            for (j, p) in payloads.iter().enumerate() {
                let index = s.index;
                let to = (v.dest, v.id, &v.srtp);
                let Some(len) = self.out.rtp(to, s, index, ts, j + 1 == n, p).await else {
                    continue;
                };
                s.index += 1;
                s.packets = s.packets.wrapping_add(1);
                s.octets = s.octets.wrapping_add(p.len() as u32);
                if let Some(first) = first {
                    s.sent[(index as usize) % NACK_REFS] = NackRef {
                        index: index as u32,
                        packet: (first + j as u64) as u32,
                        ts,
                    };
                }
                v.unreported += len as u64;
            }
            if v.unreported >= EGRESS_REPORT {
                v.report_egress(0, false);
            }
        }
    }

    async fn nack(&mut self, id: u64, ssrc: u32, seqs: &[u16]) {
        let Some(key) = self.located.get(&id).copied() else {
            return;
        };
        let Some(room) = self.rooms.get_mut(&key) else {
            return;
        };
        let Some(m) = room.viewers.iter_mut().find(|m| m.send.id == id) else {
            return;
        };
        let v = &mut *m.send;
        if v.congested {
            // Resending to a link that is losing packets adds to its load: it waits for a
            // keyframe instead.
            return;
        }
        let Some(s) = v.video.as_mut().filter(|s| s.ssrc == ssrc) else {
            return;
        };
        for &seq in seqs {
            let Some((index, packet, ts)) = s.sent_as(seq) else {
                continue;
            };
            let Some((payload, marker)) = room.history.get_recent(packet) else {
                continue;
            };
            let to = (v.dest, v.id, &v.srtp);
            let Some(len) = self.out.rtp(to, s, index, ts, *marker, payload).await else {
                continue;
            };
            self.stats.nack_resent.fetch_add(1, Ordering::Relaxed);
            v.unreported += len as u64;
        }
    }

    /// Sends the sender reports that are due (each viewer's every [`SR_INTERVAL`]).
    async fn sender_reports(&mut self) {
        let now = Instant::now();
        let ntp = ntp_now();
        for room in self.rooms.values_mut() {
            for m in &mut room.viewers {
                let v = &mut *m.send;
                if v.sr_due > now {
                    continue;
                }
                v.sr_due = now + SR_INTERVAL;
                for s in [v.video.as_ref(), v.audio.as_ref()].into_iter().flatten() {
                    let Some((ts, at)) = s.last else { continue };
                    let elapsed = now.saturating_duration_since(at).as_secs_f64();
                    let rtp = ts.wrapping_add((elapsed * f64::from(s.clock)) as u32);
                    self.out.make_room().await;
                    let out = self.out.outbox.space();
                    let len = sender_report(out, s.ssrc, ntp, rtp, s.packets, s.octets);
                    if let Ok(n) = v.srtp.protect_rtcp(out, len) {
                        self.out.outbox.commit(v.dest, v.id, n);
                    }
                }
            }
        }
    }
}

fn congest(v: &mut ViewerSend, stats: &WebRtcStats) {
    if let Some(s) = v.video.as_mut() {
        s.waiting = true;
    }
    if !v.congested {
        v.congested = true;
        stats.viewers_congested.fetch_add(1, Ordering::Relaxed);
        stats.congestion_events.fetch_add(1, Ordering::Relaxed);
    }
}

/// A receiver report block for one of the viewer's streams. Each stream is judged on its own:
/// the video's reports understate the link's loss (what NACKs recovered counts as received),
/// the audio's (never resent) show it whole. Sustained loss on any stream makes the viewer
/// congested; it is clean again once every stream's last report is.
fn loss_report(v: &mut ViewerSend, ssrc: u32, fraction: u8, stats: &WebRtcStats) {
    let Some(s) = [v.video.as_mut(), v.audio.as_mut()]
        .into_iter()
        .flatten()
        .find(|s| s.ssrc == ssrc)
    else {
        return;
    };
    if fraction > LOSS_BAD {
        s.bad_reports = s.bad_reports.saturating_add(1);
        s.clean = false;
        if s.bad_reports >= BAD_REPORTS {
            // Still losing: drop to the next keyframe again (once a keyframe went since).
            let waiting = v.video.as_ref().is_some_and(|s| s.waiting);
            if !v.congested || !waiting {
                congest(v, stats);
            }
        }
    } else {
        s.bad_reports = 0;
        s.clean = fraction <= LOSS_CLEAN;
        let all_clean = [v.video.as_ref(), v.audio.as_ref()]
            .into_iter()
            .flatten()
            .all(|s| s.clean);
        if v.congested && all_clean {
            v.congested = false;
            stats.viewers_congested.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Now as an NTP timestamp (seconds since 1900 in the high 32 bits).
fn ntp_now() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() + 2_208_988_800;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// Writes an RTCP sender report without report blocks (RFC 3550 6.4.1); returns its length.
fn sender_report(
    out: &mut [u8],
    ssrc: u32,
    ntp: u64,
    rtp: u32,
    packets: u32,
    octets: u32,
) -> usize {
    out[0] = 0x80;
    out[1] = 200;
    out[2..4].copy_from_slice(&6u16.to_be_bytes());
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    out[8..16].copy_from_slice(&ntp.to_be_bytes());
    out[16..20].copy_from_slice(&rtp.to_be_bytes());
    out[20..24].copy_from_slice(&packets.to_be_bytes());
    out[24..28].copy_from_slice(&octets.to_be_bytes());
    28
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the fan-out writes decrypts with an independent SRTP implementation: the `rtc`
    /// crate's own receiver context, for both profiles, across a rollover of the sequence
    /// numbers, with sender reports as SRTCP.
    #[test]
    fn srtp_output_decrypts_with_rtcs_own_receiver() {
        use rtc::rtcp::sender_report::SenderReport;
        use rtc::srtp::protection_profile::ProtectionProfile as P;
        use streamhub_shared::srtp::Profile;
        let provider = rtc::crypto::default_provider().unwrap();
        for (ours, theirs) in [
            (Profile::AeadAes128Gcm, P::AeadAes128Gcm),
            (Profile::AesCm128HmacSha1_80, P::Aes128CmHmacSha1_80),
        ] {
            let key: Vec<u8> = (0..16).map(|i| i * 7 + 1).collect();
            let salt: Vec<u8> = (0..ours.salt_len() as u8).map(|i| i * 3 + 2).collect();
            let mut srtp = Srtp::new(ours, &key, &salt).unwrap();
            let mut rx = rtc::srtp::context::Context::new(
                &key,
                &salt,
                theirs,
                None,
                None,
                provider.crypto(),
            )
            .unwrap();
            let mut s = Stream::new(0x1234_5678, 102, true);
            s.index = 65_530; // wraps to the next rollover count within the run
            let mut buf = vec![0u8; 1600];
            for i in 0..20u32 {
                let payload: Vec<u8> = (0..(100 + i as usize * 50)).map(|b| b as u8).collect();
                let index = s.index;
                let len =
                    write_rtp(&mut buf, &srtp, &s, index, 9000 * i, i % 3 == 2, &payload).unwrap();
                s.index += 1;
                let plain = rx
                    .decrypt_rtp(&buf[..len])
                    .unwrap_or_else(|e| panic!("{ours:?} packet {i} (index {index}): {e}"));
                use rtc::shared::marshal::Unmarshal;
                let p = rtc::rtp::Packet::unmarshal(&mut &plain[..]).unwrap();
                assert_eq!(p.header.sequence_number, index as u16);
                assert_eq!(p.header.timestamp, 9000 * i);
                assert_eq!(p.header.ssrc, 0x1234_5678);
                assert_eq!(p.header.payload_type, 102);
                assert_eq!(p.header.marker, i % 3 == 2);
                assert_eq!(&p.payload[..], &payload[..]);
            }
            for n in 0..3u32 {
                let len = sender_report(&mut buf, 0x1234_5678, 0xdead_beef_0000_0001, 777, n, 1000);
                let len = srtp.protect_rtcp(&mut buf, len).unwrap();
                let plain = rx.decrypt_rtcp(&buf[..len]).unwrap();
                let packets = rtc::rtcp::packet::unmarshal(&mut &plain[..]).unwrap();
                let sr = packets[0]
                    .as_any()
                    .downcast_ref::<SenderReport>()
                    .expect("a sender report");
                assert_eq!(
                    (sr.ssrc, sr.rtp_time, sr.packet_count),
                    (0x1234_5678, 777, n)
                );
                assert_eq!(sr.ntp_time, 0xdead_beef_0000_0001);
            }
        }
    }

    #[test]
    fn history_answers_by_number_until_it_rolls_over() {
        let mut h = History::default();
        for i in 0..(HISTORY as u64 + 10) {
            assert_eq!(h.push(Bytes::from(vec![i as u8]), false), i);
        }
        assert!(h.get(5).is_none(), "rolled out");
        assert_eq!(h.get(HISTORY as u64 + 9).unwrap().0[0], (HISTORY + 9) as u8);
        assert_eq!(
            h.get_recent(HISTORY as u32 + 9).unwrap().0[0],
            (HISTORY + 9) as u8
        );
        assert!(h.get_recent(5).is_none(), "rolled out");
        assert!(
            h.get_recent(HISTORY as u32 + 10).is_none(),
            "not yet pushed"
        );
        // Numbers past 2^32 are told apart by their distance to the newest.
        let mut h = History {
            first: (1 << 32) - 3,
            ..Default::default()
        };
        for i in 0..6u8 {
            h.push(Bytes::from(vec![i]), false);
        }
        assert_eq!(h.get_recent(0xffff_fffe).unwrap().0[0], 1);
        assert_eq!(h.get_recent(1).unwrap().0[0], 4);
    }

    #[test]
    fn nack_references_answer_only_the_last_ones_sent() {
        let mut s = Stream::new(1, 96, true);
        assert_eq!(std::mem::size_of::<NackRef>(), 12);
        s.index = (3 << 32) + 0xffff_fff0; // a high rollover counter, low bits about to wrap
        for i in 0..NACK_REFS as u64 + 40 {
            let index = s.index;
            s.sent[(index as usize) % NACK_REFS] = NackRef {
                index: index as u32,
                packet: 1000 + i as u32,
                ts: 7 * i as u32,
            };
            s.index += 1;
        }
        let last = s.index - 1;
        assert_eq!(
            s.sent_as(last as u16),
            Some((
                last,
                1000 + NACK_REFS as u32 + 39,
                7 * (NACK_REFS as u32 + 39)
            ))
        );
        let oldest = s.index - NACK_REFS as u64;
        assert_eq!(s.sent_as(oldest as u16).map(|r| r.0), Some(oldest));
        assert_eq!(s.sent_as((oldest - 1) as u16), None, "overwritten");
        assert_eq!(s.sent_as(s.index as u16), None, "not sent yet");
        assert_eq!(Stream::new(1, 96, true).sent_as(0), None);
        // Bound to another room (another history): nothing sent before is answered.
        s.bind(7, 0, 90_000);
        assert_eq!(s.sent_as(last as u16), None);
        assert_eq!(s.sent_as(oldest as u16), None);
    }

    #[test]
    fn a_stream_bound_to_a_new_session_goes_on_forward() {
        let mut s = Stream::new(1, 96, true);
        s.bind(1, 0, 90_000);
        let t0 = Instant::now();
        let a = s.timestamp(900_000, t0);
        s.last = Some((a, t0));
        // The next publisher session numbers its frames from 0; 1 s later on the wall clock.
        s.bind(2, 0, 90_000);
        assert!(s.waiting, "a new session starts on a keyframe");
        let b = s.timestamp(0, t0 + Duration::from_secs(1));
        assert_eq!(b.wrapping_sub(a), 90_000);
        assert_eq!(s.timestamp(3000, t0), b.wrapping_add(3000));
    }

    #[test]
    fn sustained_loss_congests_and_clean_reports_end_it() {
        let stats = WebRtcStats::default();
        let srtp = Srtp::new(
            streamhub_shared::srtp::Profile::AeadAes128Gcm,
            &[1; 16],
            &[2; 12],
        )
        .unwrap();
        let mut v = ViewerSend::new(
            1,
            "127.0.0.1:1".parse().unwrap(),
            srtp,
            Some(Stream::new(10, 96, true)),
            Some(Stream::new(11, 111, false)),
            None,
        );
        v.video.as_mut().unwrap().waiting = false;
        loss_report(&mut v, 10, 60, &stats);
        assert!(!v.congested, "one bad report is not sustained");
        loss_report(&mut v, 11, 200, &stats);
        assert!(!v.congested, "nor one on another stream");
        loss_report(&mut v, 99, 200, &stats);
        loss_report(&mut v, 11, 200, &stats);
        assert!(v.congested, "the audio's second bad report in a row");
        assert!(
            v.video.as_ref().unwrap().waiting,
            "dropped to the next keyframe"
        );
        assert_eq!(stats.viewers_congested.load(Ordering::Relaxed), 1);
        loss_report(&mut v, 10, 2, &stats);
        assert!(v.congested, "the audio's last report was still bad");
        loss_report(&mut v, 11, 3, &stats);
        assert!(!v.congested);
        assert_eq!(stats.viewers_congested.load(Ordering::Relaxed), 0);
        assert_eq!(stats.congestion_events.load(Ordering::Relaxed), 1);
    }
}
