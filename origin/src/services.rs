//! The services of an origin, as its HTTP handlers receive them: each handler names the ones it
//! uses (axum `FromRef` sub-states), so what a piece of code may touch shows in its signature.

use std::sync::Arc;

use axum::extract::FromRef;

use crate::login::LoginGuard;
use streamhub_media::node::config::NodeSettings;
use streamhub_media::play::Steering;
use streamhub_media::webrtc::WebRtc;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::credentials::Sessions;
use crate::membership::Membership;
use crate::rooms::Rooms;
use crate::rtsp::Pulls;
use crate::tenants::Tenants;
use crate::wsmjpeg::WsIngest;

/// Every service an origin's handlers may ask for.
#[derive(Clone, FromRef)]
pub struct Services {
    /// The tenant state (Raft reads and writes, credential lookups).
    pub tenants: Tenants,
    /// Dashboard logins.
    pub sessions: Sessions,
    /// The login throttle and password-hashing permits.
    pub login: LoginGuard,
    /// The one way into a room.
    pub admission: Arc<Admission>,
    /// The live rooms of this node.
    pub rooms: Arc<Rooms>,
    /// Cluster membership and status.
    pub membership: Membership,
    /// Where this node is reached.
    pub urls: PublicUrls,
    /// Viewer steering over the registry.
    pub steering: Arc<Steering>,
    /// The WebRTC media port (WHIP ingest, WHEP playback).
    pub webrtc: Arc<WebRtc>,
    /// The RTSP pulls this origin runs.
    pub rtsp: Arc<Pulls>,
    /// WebSocket-MJPEG ingest limits and counters.
    pub ws: Arc<WsIngest>,
    /// Cancelled when the node stops.
    pub shutdown: CancellationToken,
    /// The authorization mode (`STREAMHUB_AUTHZ_ENFORCE`).
    pub authz: crate::api::Authz,
    /// This node's viewers per app (usage and quotas).
    pub viewers: Arc<streamhub_media::access::ViewerTracker>,
    /// Records rooms to their app's bucket.
    pub recorder: crate::recording::Recorder,
    /// Delivers the apps' webhooks (and checks their URLs).
    pub webhooks: crate::webhooks::Webhooks,
}

/// Where this node is reached: what minted URLs and the start banner say.
#[derive(Debug, Clone)]
pub struct PublicUrls(Arc<UrlsInner>);

#[derive(Debug)]
struct UrlsInner {
    node: String,
    region: String,
    base: String,
    host: String,
    rtmp_port: u16,
    rtmps_port: Option<u16>,
    srt_port: Option<u16>,
}

impl PublicUrls {
    /// The URLs of the node `settings` describe, with RTMP on `rtmp_port` and RTMPS, if on, on
    /// `rtmps_port` (the bound ones, when a setting was port 0).
    pub fn new(
        settings: &NodeSettings,
        rtmp_port: u16,
        rtmps_port: Option<u16>,
        srt_port: Option<u16>,
    ) -> Self {
        Self(Arc::new(UrlsInner {
            node: settings.node_name.clone(),
            region: settings.region.clone(),
            base: settings.public_base(),
            host: settings.public_host(),
            rtmp_port,
            rtmps_port,
            srt_port,
        }))
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.0.node
    }

    /// This node's region.
    pub fn region(&self) -> &str {
        &self.0.region
    }

    /// The public base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.0.base
    }

    /// The base URL of WebSockets (`ws://` or `wss://`).
    pub fn ws_base(&self) -> String {
        self.0.base.replacen("http", "ws", 1)
    }

    /// What a user pastes into OBS's Server field: `rtmp://<public host>:<port>/live`.
    pub fn rtmp(&self) -> String {
        format!("rtmp://{}:{}/live", self.0.host, self.0.rtmp_port)
    }

    /// `srt://<public host>:<port>`, when SRT is on.
    pub fn srt(&self) -> Option<String> {
        let port = self.0.srt_port?;
        Some(format!("srt://{}:{port}", self.0.host))
    }

    /// The same over TLS, `rtmps://<public host>:<port>/live`, when RTMPS is on.
    pub fn rtmps(&self) -> Option<String> {
        let port = self.0.rtmps_port?;
        Some(format!("rtmps://{}:{port}/live", self.0.host))
    }
}
