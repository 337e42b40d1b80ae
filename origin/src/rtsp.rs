//! RTSP pull for IP cameras (`POST /apps/:app/ingress {type: "url", url: "rtsp://…"}`), with the
//! `retina` crate: H.264 (and AAC if present) over RTP interleaved on the RTSP connection (TCP,
//! the default) or UDP.
//!
//! Exactly one origin pulls an ingress: the one that holds its room's placement lease. Every
//! origin runs the supervisor; every few seconds it claims the rooms of url ingresses that no
//! live lease holds, and pulls those it got, so when the pulling origin dies another one takes
//! over once the lease has run out. A pull keeps its room (and so its lease) while the camera is
//! down and reconnects with capped, jittered backoff; each reconnect is a new publisher session
//! (a discontinuity, numbering goes on). Its state (`connecting | live | retrying`, the last
//! error) is written to the Raft state, so the API shows it through any origin.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use retina::client::{PlayOptions, Session, SessionOptions, SetupOptions, Transport};
use retina::codec::{CodecItem, FrameFormat, ParametersRef};
use streamhub_cluster::backoff::Backoff;
use streamhub_cluster::state::{Command, Ingress, IngressKind, IngressStatus};
use streamhub_media::http::ApiError;
use streamhub_shared::media::{CodecConfig, Frame, TrackInfo};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Admission, Credential, PublishRequest};
use crate::credentials::unix_now_ms;
use crate::placement::Placement;
use crate::rooms::{Protocol, Publisher};
use crate::tenants::Tenants;

/// How often the supervisor looks for url ingresses nobody pulls.
const SUPERVISE_EVERY: Duration = Duration::from_secs(2);
/// DESCRIBE/SETUP/PLAY together may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A camera that sends no frame for this long is considered gone.
const SILENCE: Duration = Duration::from_secs(10);
/// Backoff between reconnects.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// Longest accepted URL.
const MAX_URL_LEN: usize = 1024;

/// Checks a pull URL: `rtsp://host[:port]/path`, credentials allowed.
pub fn check_url(url: &str) -> Result<String, ApiError> {
    if url.len() > MAX_URL_LEN {
        return Err(ApiError::BadRequest(format!(
            "url is longer than {MAX_URL_LEN} bytes"
        )));
    }
    let parsed =
        url::Url::parse(url).map_err(|e| ApiError::BadRequest(format!("url {url:?}: {e}")))?;
    if parsed.scheme() != "rtsp" || parsed.host_str().is_none() {
        return Err(ApiError::BadRequest(
            "only rtsp://host/... URLs can be pulled (RTMP and WebSocket sources push)".into(),
        ));
    }
    Ok(url.to_string())
}

/// Checks the RTP transport of a pull: `tcp` (default) or `udp`.
pub fn check_transport(t: Option<&str>) -> Result<String, ApiError> {
    match t.unwrap_or("tcp") {
        "tcp" | "udp" => Ok(t.unwrap_or("tcp").to_string()),
        other => Err(ApiError::BadRequest(format!(
            "transport {other:?}: tcp or udp"
        ))),
    }
}

/// The pulls this origin runs.
pub struct Pulls {
    admission: Arc<Admission>,
    placement: Placement,
    tenants: Tenants,
    me: String,
    tasks: TaskTracker,
    /// The running pulls by ingress id: a std Mutex held for a map operation.
    running: Mutex<HashMap<String, CancellationToken>>,
}

impl Pulls {
    /// The pulls of the origin named `me`, spawned on `tasks`.
    pub fn new(
        admission: Arc<Admission>,
        placement: Placement,
        tenants: Tenants,
        me: String,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            admission,
            placement,
            tenants,
            me,
            tasks,
            running: Mutex::default(),
        }
    }

    /// Every [`SUPERVISE_EVERY`]: starts pulls for url ingresses whose room no live lease holds
    /// and this origin could claim.
    pub async fn run_supervisor(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(SUPERVISE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = unix_now_ms();
            let orphans: Vec<Ingress> = self.tenants.read(|s| {
                s.tenants
                    .ingresses
                    .values()
                    .filter(|i| i.kind == IngressKind::Url)
                    .filter(|i| s.placements.live(&i.app, &i.room, now).is_none())
                    .cloned()
                    .collect()
            });
            for ingress in orphans {
                if self.is_running(&ingress.id) {
                    continue;
                }
                let req = PublishRequest {
                    room: Some((ingress.app.clone(), ingress.room.clone())),
                    credential: Credential::Pull {
                        ingress_id: ingress.id.clone(),
                    },
                    protocol: Protocol::Rtsp,
                    remote: SocketAddr::from(([0, 0, 0, 0], 0)),
                };
                match self.admission.admit(req).await {
                    Ok(publisher) => self.start(ingress, publisher, &shutdown),
                    Err(e) => tracing::debug!(ingress = %ingress.id, error = %e, "not claimed"),
                }
            }
        }
    }

    fn is_running(&self, id: &str) -> bool {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.contains_key(id)
    }

    fn start(
        self: &Arc<Self>,
        ingress: Ingress,
        publisher: Publisher,
        shutdown: &CancellationToken,
    ) {
        let cancel = shutdown.child_token();
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            running.insert(ingress.id.clone(), cancel.clone());
        }
        let this = self.clone();
        self.tasks.spawn(async move {
            let id = ingress.id.clone();
            this.pull(ingress, publisher, cancel).await;
            let mut running = this.running.lock().unwrap_or_else(|e| e.into_inner());
            running.remove(&id);
        });
    }

    /// Stops the pull of `id` on this origin, if it runs one (the ingress was deleted).
    pub fn stop(&self, id: &str) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cancel) = running.get(id) {
            cancel.cancel();
        }
    }

    /// Pulls one ingress for as long as this origin holds its room: reconnects the camera with
    /// backoff; stops when the key is deleted, the room is placed elsewhere, or the node stops.
    #[tracing::instrument(skip_all, fields(ingress = %ingress.id, app = %ingress.app, room = %ingress.room))]
    async fn pull(&self, ingress: Ingress, mut publisher: Publisher, cancel: CancellationToken) {
        let url = match self.tenants.ingress_url(&ingress) {
            Ok(url) => url.unwrap_or_default(),
            Err(e) => {
                tracing::error!(error = %e, "cannot open the ingress's source URL");
                return;
            }
        };
        let epoch = publisher.epoch();
        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
        let mut last_state = String::new();
        loop {
            self.report(&ingress, &mut last_state, "connecting", None)
                .await;
            let stopped = publisher.stop_token();
            let mut went_live = false;
            let attempt = tokio::select! {
                r = self.stream(&ingress, &url, &mut publisher, &mut last_state, &mut went_live) => r,
                () = stopped.cancelled() => Err("the room was taken over or fenced".to_string()),
                () = cancel.cancelled() => return,
            };
            let error = match attempt {
                Ok(()) => "the camera ended the stream".to_string(),
                Err(e) => e,
            };
            tracing::warn!(%error, "camera lost");
            let ours = self.tenants.ingress(&ingress.id).is_some()
                && self
                    .placement
                    .still_ours(&ingress.app, &ingress.room, epoch);
            if stopped.is_cancelled() || !ours {
                tracing::info!("ingress deleted or room placed elsewhere: pull stopped");
                return;
            }
            self.report(&ingress, &mut last_state, "retrying", Some(error))
                .await;
            if went_live {
                backoff.succeeded();
            }
            let wait = backoff.next_random_delay();
            // The publisher stays (and so the lease) while we wait.
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => return,
                () = stopped.cancelled() => return,
            }
            // The next attempt is a new publisher session, started before the old one is
            // dropped, so the room (and its lease) is never given up in between.
            match publisher.renew() {
                Ok(next) => publisher = next,
                Err(e) => return tracing::warn!(error = %e, "cannot publish the pulled room"),
            }
        }
    }

    async fn report(
        &self,
        ingress: &Ingress,
        last: &mut String,
        state: &str,
        error: Option<String>,
    ) {
        // One Raft write per change of state, not per attempt (a flapping camera costs little).
        if last == state {
            return;
        }
        *last = state.to_string();
        let status = IngressStatus {
            state: state.to_string(),
            node: self.me.clone(),
            last_error: error.map(short),
            since_ms: unix_now_ms(),
        };
        let cmd = Command::SetIngressStatus {
            id: ingress.id.clone(),
            status,
        };
        if let Err(e) = self.tenants.write(cmd).await {
            tracing::debug!(error = %e, "ingress status not written");
        }
    }

    /// One camera connection: DESCRIBE, SETUP of the H.264 and AAC streams, PLAY, then frames
    /// into the room until the camera stops or falls silent.
    async fn stream(
        &self,
        ingress: &Ingress,
        url: &str,
        publisher: &mut Publisher,
        last_state: &mut String,
        went_live: &mut bool,
    ) -> Result<(), String> {
        let (mut demuxed, picked) = connect(ingress, url).await?;
        let mut mapper = Mapper::new(picked);
        let mut live = false;
        loop {
            let item = tokio::time::timeout(SILENCE, demuxed.next())
                .await
                .map_err(|_| format!("no frame for {SILENCE:?}"))?;
            let Some(item) = item else { return Ok(()) };
            let item = item.map_err(|e| e.to_string())?;
            let params = match &item {
                CodecItem::VideoFrame(f) => demuxed
                    .streams()
                    .get(f.stream_id())
                    .and_then(|s| s.parameters()),
                CodecItem::AudioFrame(f) => demuxed
                    .streams()
                    .get(f.stream_id())
                    .and_then(|s| s.parameters()),
                _ => None,
            };
            if let Some(tracks) = mapper.catalog(&item, params) {
                publisher.set_tracks(tracks);
            }
            if let Some(frame) = mapper.frame(item) {
                publisher.push(frame);
                if !live {
                    live = true;
                    *went_live = true;
                    self.report(ingress, last_state, "live", None).await;
                    tracing::info!("camera live");
                }
            }
        }
    }
}

/// The demuxed session of a camera and the streams picked from it.
type Connected = (retina::client::Demuxed, Vec<(usize, Kind)>);

/// DESCRIBE, SETUP of the H.264 and AAC streams and PLAY, within [`CONNECT_TIMEOUT`].
async fn connect(ingress: &Ingress, url: &str) -> Result<Connected, String> {
    let (bare, creds) = split_credentials(url);
    let parsed = url::Url::parse(&bare).map_err(|e| e.to_string())?;
    let transport = match ingress.transport.as_deref() {
        Some("udp") => Transport::Udp(Default::default()),
        _ => Transport::Tcp(Default::default()),
    };
    let connect = async {
        let options = SessionOptions::default()
            .user_agent(format!("streamhub/{}", env!("CARGO_PKG_VERSION")))
            .creds(
                creds
                    .map(|(username, password)| retina::client::Credentials { username, password }),
            );
        let mut session = Session::describe(parsed, options)
            .await
            .map_err(|e| e.to_string())?;
        let picked = pick_streams(session.streams());
        if picked.is_empty() {
            return Err("the camera offers no H.264 or AAC stream".to_string());
        }
        for &(i, _) in &picked {
            let setup = SetupOptions::default()
                .transport(transport.clone())
                .frame_format(FrameFormat::MP4);
            session.setup(i, setup).await.map_err(|e| e.to_string())?;
        }
        let playing = session
            .play(PlayOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        let demuxed = playing.demuxed().map_err(|e| e.to_string())?;
        Ok::<_, String>((demuxed, picked))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| format!("no answer within {CONNECT_TIMEOUT:?}"))?
}

/// The URL without its credentials (`rtsp://host/path`) and the credentials, if any: retina
/// takes them apart, and the API never shows them.
pub fn split_credentials(url: &str) -> (String, Option<(String, String)>) {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return (url.to_string(), None);
    };
    if parsed.username().is_empty() && parsed.password().is_none() {
        return (url.to_string(), None);
    }
    // Userinfo is percent-encoded (not form-encoded: `+` and `&` are themselves).
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let creds = (
        decode(parsed.username()),
        decode(parsed.password().unwrap_or("")),
    );
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    (parsed.to_string(), Some(creds))
}

/// The URL as the API shows it: credentials replaced by `***`.
pub fn redacted(url: &str) -> String {
    match split_credentials(url) {
        (bare, Some(_)) => bare.replacen("rtsp://", "rtsp://***@", 1),
        (bare, None) => bare,
    }
}

/// The first line of an error, at most 300 characters (some carry a hex dump of what came).
fn short(error: String) -> String {
    let line = error.lines().next().unwrap_or("").trim();
    let mut end = line.len().min(300);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_string()
}

/// What a stream of the camera becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    H264,
    Aac,
}

/// The streams to set up: the first H.264 video and the first AAC audio.
fn pick_streams(streams: &[retina::client::Stream]) -> Vec<(usize, Kind)> {
    let video = streams
        .iter()
        .position(|s| s.media() == "video" && s.encoding_name() == "h264")
        .map(|i| (i, Kind::H264));
    let audio = streams
        .iter()
        .position(|s| s.media() == "audio" && s.encoding_name() == "mpeg4-generic")
        .map(|i| (i, Kind::Aac));
    video.into_iter().chain(audio).collect()
}

/// Maps the camera's streams to the room's tracks (video 0, audio 1) and its frames to ours.
struct Mapper {
    picked: Vec<(usize, Kind)>,
    tracks: Vec<Option<TrackInfo>>,
}

impl Mapper {
    fn new(picked: Vec<(usize, Kind)>) -> Self {
        let n = picked.len();
        Self {
            picked,
            tracks: vec![None; n],
        }
    }

    fn slot(&self, stream: usize) -> Option<(usize, Kind)> {
        self.picked
            .iter()
            .position(|(i, _)| *i == stream)
            .map(|slot| (slot, self.picked[slot].1))
    }

    /// A new catalog when this item brings (new) parameters.
    fn catalog(
        &mut self,
        item: &CodecItem,
        params: Option<ParametersRef<'_>>,
    ) -> Option<Vec<TrackInfo>> {
        let stream = match item {
            CodecItem::VideoFrame(f) => f.stream_id(),
            CodecItem::AudioFrame(f) => f.stream_id(),
            _ => return None,
        };
        let (slot, kind) = self.slot(stream)?;
        let info = match (kind, params?) {
            (Kind::H264, ParametersRef::Video(v)) => {
                let (w, h) = v.pixel_dimensions();
                TrackInfo {
                    id: 0,
                    timescale: 90_000,
                    codec: CodecConfig::H264 {
                        avcc: bytes::Bytes::copy_from_slice(v.extra_data()),
                        width: u16::try_from(w).unwrap_or(u16::MAX),
                        height: u16::try_from(h).unwrap_or(u16::MAX),
                    },
                }
            }
            (Kind::Aac, ParametersRef::Audio(a)) => TrackInfo {
                id: 1,
                timescale: a.clock_rate(),
                codec: CodecConfig::Aac {
                    asc: bytes::Bytes::copy_from_slice(a.extra_data()),
                    sample_rate: a.clock_rate(),
                    channels: u8::try_from(a.channels().get()).unwrap_or(2),
                },
            },
            _ => return None,
        };
        if self.tracks[slot].as_ref() == Some(&info) {
            return None;
        }
        self.tracks[slot] = Some(info);
        Some(self.tracks.iter().flatten().cloned().collect())
    }

    /// Our frame for a camera frame (none before its stream's parameters are known).
    fn frame(&self, item: CodecItem) -> Option<Frame> {
        let (stream, ts, keyframe, data) = match item {
            CodecItem::VideoFrame(f) => {
                let key = f.is_random_access_point();
                (f.stream_id(), f.timestamp(), key, f.into_data())
            }
            CodecItem::AudioFrame(f) => (f.stream_id(), f.timestamp(), true, f.data().to_vec()),
            _ => return None,
        };
        let (slot, _) = self.slot(stream)?;
        let info = self.tracks[slot].as_ref()?;
        // RTP carries presentation times; cameras send no B-frames, so dts = pts.
        let t = ts.elapsed();
        Some(Frame {
            track: info.id,
            group: 0,
            dts: t,
            pts: t,
            keyframe,
            data: bytes::Bytes::from(data),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rtsp_urls_and_known_transports() {
        assert!(check_url("rtsp://cam.local:554/stream1").is_ok());
        assert!(check_url("rtsp://user:pass@10.0.0.7/h264").is_ok());
        for bad in ["http://x/y", "rtmp://x/live", "not a url", "rtsp:///nohost"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert!(check_url(&format!("rtsp://x/{}", "a".repeat(2000))).is_err());
        assert_eq!(check_transport(None).unwrap(), "tcp");
        assert_eq!(check_transport(Some("udp")).unwrap(), "udp");
        assert!(check_transport(Some("sctp")).is_err());
    }

    #[test]
    fn credentials_are_taken_apart_and_never_shown() {
        let (bare, creds) = split_credentials("rtsp://admin:p%40ss@10.0.0.7:554/h264");
        assert_eq!(bare, "rtsp://10.0.0.7:554/h264");
        assert_eq!(creds, Some(("admin".into(), "p@ss".into())));
        // `+` and `&` are literal in userinfo (form decoding got them wrong).
        let (_, creds) = split_credentials("rtsp://a+b:p&q@cam/x");
        assert_eq!(creds, Some(("a+b".into(), "p&q".into())));
        assert_eq!(redacted("rtsp://admin:secret@cam/x"), "rtsp://***@cam/x");
        assert_eq!(redacted("rtsp://cam/x"), "rtsp://cam/x");
    }

    #[test]
    fn errors_are_kept_short() {
        assert_eq!(
            short("framing error: x\n0000: 48 54".into()),
            "framing error: x"
        );
        assert_eq!(short("é".repeat(400)).len(), 300);
    }
}
