//! SRT ingest: encoders (ffmpeg, OBS 32+, hardware) push MPEG-TS over SRT to
//! `srt://host:port?streamid=publish:<streamKey>&passphrase=<passphrase>`.
//!
//! The SRT protocol is `srt-tokio`'s (a listener in caller-listener mode, AES encryption when
//! the ingress has a passphrase). Before a connection is accepted its stream id is read for the
//! key (`publish:<key>`, the access-control form `#!::r=<key>,m=publish`, or the bare key), the
//! key's ingress gives the passphrase, and the per-address cap is checked; then the one
//! admission path claims the room. The transport stream is demuxed ([`ts`]), turned into FLV
//! tag bodies ([`tags`]) and given to the RTMP ingest's track assembler, so every output works
//! as for RTMP.

pub mod tags;
pub mod ts;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use srt_protocol::settings::KeySettings;
use srt_tokio::access::RejectReason;
use srt_tokio::options::Passphrase;
use srt_tokio::{ConnectionRequest, SrtListener};
use streamhub_media::node::surface::{ConnGuard, ConnLimiter};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use self::tags::{Tag, TsToTags};
use crate::admission::Refusal;
use crate::rooms::Publisher;
use crate::rtmp::tracks::{TrackAssembler, TrackEvent};

/// What the SRT listener asks of the node.
pub trait SrtBackend: Send + Sync + 'static {
    /// The passphrase of the SRT ingress whose stream key is `key` (`None`: unencrypted); a
    /// refusal if there is no such ingress.
    fn passphrase(&self, key: &str) -> BoxFuture<'_, Result<Option<String>, Refusal>>;
    /// Claims the key's room (the admission path).
    fn start_publish(
        &self,
        key: String,
        remote: SocketAddr,
    ) -> BoxFuture<'_, Result<Publisher, Refusal>>;
}

/// Limits of the SRT listener.
#[derive(Debug, Clone)]
pub struct SrtConfig {
    /// Connections at once; more are rejected.
    pub max_connections: usize,
    /// Connections at once from one address.
    pub max_per_address: usize,
    /// A publisher that sends nothing for this long is closed (also from accept to the first
    /// packet).
    pub idle_timeout: Duration,
    /// Largest PES (one video frame) accepted.
    pub max_frame_bytes: usize,
}

impl Default for SrtConfig {
    fn default() -> Self {
        Self {
            max_connections: 1000,
            max_per_address: crate::rtmp::DEFAULT_MAX_PER_ADDRESS,
            idle_timeout: Duration::from_secs(10),
            max_frame_bytes: 8 << 20,
        }
    }
}

/// Counters of the SRT listener.
#[derive(Debug, Default)]
pub struct SrtStats {
    pub connections_total: AtomicU64,
    /// Rejected before accept: a cap, an unknown key, a malformed stream id.
    pub rejected: AtomicU64,
    pub publish_refused: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Times the listener died and was bound again.
    pub listener_restarts: AtomicU64,
}

/// The key an SRT stream id carries: `publish:<key>`, `#!::r=<key>,m=publish` (other
/// `#!::` keys ignored) or the bare key. A stream id asking for playback is refused.
pub fn stream_key(stream_id: &str) -> Result<String, String> {
    let id = stream_id.trim();
    let key = if let Some(rest) = id.strip_prefix("#!::") {
        let mut key = None;
        for pair in rest.split(',') {
            match pair.split_once('=') {
                Some(("r", v)) => key = Some(v.to_string()),
                Some(("m", m)) if m != "publish" => {
                    return Err(format!(
                        "mode {m:?} is not supported: SRT here is for publishing"
                    ))
                }
                _ => {}
            }
        }
        key.ok_or("the stream id names no resource (r=)")?
    } else if let Some(key) = id.strip_prefix("publish:") {
        key.to_string()
    } else if id.contains(':') || id.contains('/') {
        return Err("stream id is not publish:<key>, #!::r=<key>,m=publish or <key>".into());
    } else {
        id.to_string()
    };
    if key.is_empty() || key.len() > 256 {
        return Err("the stream id carries no stream key".into());
    }
    Ok(key)
}

/// Accepts SRT publishers with `listener` (bound to `addr`) until `shutdown` fires.
///
/// srt-protocol 0.4.4 panics on some handshakes (`unimplemented!`), which ends its listener
/// task and with it every session on the port: the listener is then bound again at once, and
/// publishers reconnect (encoders retry on their own).
pub async fn serve(
    addr: SocketAddr,
    listener: (SrtListener, srt_tokio::SrtIncoming),
    backend: Arc<dyn SrtBackend>,
    config: SrtConfig,
    stats: Arc<SrtStats>,
    shutdown: CancellationToken,
) {
    let connections = Arc::new(ConnLimiter::default());
    let tasks = TaskTracker::new();
    let config = Arc::new(config);
    let mut next = 0u64;
    let (mut listener, mut incoming) = listener;
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = incoming.incoming().next() => r,
        };
        let Some(request) = request else {
            stats.listener_restarts.fetch_add(1, Relaxed);
            warn!(%addr, "the SRT listener stopped (a handshake it could not handle): binding it again");
            drop(listener);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        tasks.close();
                        tasks.wait().await;
                        return;
                    }
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                match SrtListener::builder().bind(addr).await {
                    Ok(l) => {
                        (listener, incoming) = l;
                        break;
                    }
                    Err(e) => warn!(%addr, error = %e, "binding SRT again failed"),
                }
            }
            continue;
        };
        stats.connections_total.fetch_add(1, Relaxed);
        next += 1;
        let remote = request.remote();
        let span = tracing::info_span!("srt", conn = next, %remote, app = tracing::field::Empty, room = tracing::field::Empty);
        let Some(guard) = connections.admit(
            remote.ip(),
            false,
            config.max_connections,
            config.max_per_address,
        ) else {
            stats.rejected.fetch_add(1, Relaxed);
            debug!(%remote, "srt connection rejected: connection limit reached");
            tasks.spawn(reject(request, 429));
            continue;
        };
        let conn = Conn {
            backend: backend.clone(),
            config: config.clone(),
            stats: stats.clone(),
            shutdown: shutdown.clone(),
            remote,
            _guard: guard,
        };
        tasks.spawn(conn.run(request).instrument(span));
    }
    tasks.close();
    tasks.wait().await;
    // Not `close()`: it unwraps the listener task's result, a panic if the task died.
    drop(listener);
}

async fn reject(request: ConnectionRequest, code: i32) {
    let _ = request.reject(RejectReason::User(code)).await;
}

struct Conn {
    backend: Arc<dyn SrtBackend>,
    config: Arc<SrtConfig>,
    stats: Arc<SrtStats>,
    shutdown: CancellationToken,
    remote: SocketAddr,
    _guard: ConnGuard,
}

impl Conn {
    async fn run(self, request: ConnectionRequest) {
        let stream_id = request
            .stream_id()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let key = match stream_key(&stream_id) {
            Ok(k) => k,
            Err(e) => {
                self.stats.rejected.fetch_add(1, Relaxed);
                warn!(remote = %self.remote, error = %e, "srt connection rejected");
                return reject(request, 400).await;
            }
        };
        let passphrase = match self.backend.passphrase(&key).await {
            Ok(p) => p,
            Err(e) => {
                self.stats.rejected.fetch_add(1, Relaxed);
                warn!(remote = %self.remote, key = %redact(&key), reason = %e, "srt connection rejected");
                return reject(request, 403).await;
            }
        };
        let keys = match passphrase.map(Passphrase::try_from).transpose() {
            // The caller's key length (`pbkeylen`) is taken as it comes: srt-protocol 0.4.4
            // panics on a mismatch instead of refusing it.
            Ok(p) => p.map(|passphrase| KeySettings {
                key_size: request.key_size(),
                passphrase,
            }),
            Err(e) => {
                warn!(error = %e, "srt ingress passphrase unusable");
                return reject(request, 500).await;
            }
        };
        let accepted = tokio::time::timeout(self.config.idle_timeout, request.accept(keys)).await;
        let mut socket = match accepted {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return debug!(error = %e, "srt accept failed"),
            Err(_) => return debug!("srt accept timed out"),
        };
        let publisher = tokio::select! {
            _ = self.shutdown.cancelled() => return,
            r = self.backend.start_publish(key.clone(), self.remote) => r,
        };
        let mut publisher = match publisher {
            Ok(p) => p,
            Err(e) => {
                self.stats.publish_refused.fetch_add(1, Relaxed);
                warn!(remote = %self.remote, key = %redact(&key), reason = %e, "srt publish refused");
                let _ = socket.close_and_finish().await;
                return;
            }
        };
        let span = tracing::Span::current();
        span.record("app", publisher.app().as_str());
        span.record("room", publisher.room().as_str());
        info!(key = %redact(&key), "srt publish started");
        let end = self.pump(&mut socket, &mut publisher).await;
        info!(end, "srt publish ended");
        let _ = tokio::time::timeout(Duration::from_secs(1), socket.close_and_finish()).await;
    }

    /// Moves the stream into the room until it ends; says how it ended.
    async fn pump(
        &self,
        socket: &mut srt_tokio::SrtSocket,
        publisher: &mut Publisher,
    ) -> &'static str {
        let mut media = TsToTags::new(self.config.max_frame_bytes);
        let mut assembler = TrackAssembler::new();
        let mut events = Vec::new();
        let mut dropped = 0u64;
        loop {
            let data = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return "shutdown",
                _ = publisher.cancelled() => return "cancelled (taken over, revoked or stopping)",
                r = tokio::time::timeout(self.config.idle_timeout, socket.next()) => match r {
                    Err(_) => return "no data within the idle timeout",
                    Ok(None) => return "the peer closed",
                    Ok(Some(Err(e))) => {
                        debug!(error = %e, "srt receive failed");
                        return "receive failed";
                    }
                    Ok(Some(Ok((_, data)))) => data,
                },
            };
            self.stats.bytes_in.fetch_add(data.len() as u64, Relaxed);
            if let Err(e) = media.feed(&data) {
                warn!(error = %e, "srt stream refused");
                return "not a usable transport stream";
            }
            for tag in media.drain() {
                let result = match &tag {
                    Tag::Video { ms, body } => assembler.video(*ms, body, &mut events),
                    Tag::Audio { ms, body } => assembler.audio(*ms, body, &mut events),
                };
                for event in events.drain(..) {
                    match event {
                        TrackEvent::Tracks(tracks) => publisher.set_tracks(tracks),
                        TrackEvent::Frame(frame) => publisher.push(frame),
                    }
                }
                match result {
                    Err(e) if e.is_fatal() => {
                        warn!(error = %e, "srt media refused");
                        return "media refused";
                    }
                    Err(e) => {
                        if dropped == 0 {
                            warn!(error = %e, "srt dropping a malformed frame");
                        }
                        dropped += 1;
                    }
                    Ok(()) => {}
                }
            }
        }
    }
}

fn redact(key: &str) -> String {
    let shown: String = key.chars().take(4).collect();
    format!("{shown}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_in_the_forms_encoders_send() {
        assert_eq!(stream_key("publish:sk_abc").unwrap(), "sk_abc");
        assert_eq!(stream_key("#!::r=sk_abc,m=publish").unwrap(), "sk_abc");
        assert_eq!(stream_key("#!::u=cam1,r=sk_abc").unwrap(), "sk_abc");
        assert_eq!(stream_key("sk_abc").unwrap(), "sk_abc");
        assert!(stream_key("#!::r=sk_abc,m=request").is_err());
        assert!(stream_key("#!::m=publish").is_err());
        assert!(stream_key("publish:").is_err());
        assert!(stream_key("play:sk").is_err());
        assert!(stream_key(&"k".repeat(300)).is_err());
    }
}
