//! Common types of streamhub: identifiers, the media model, codec bitstream helpers and the
//! claims of the tokens every node verifies. Pure code: no sockets, no storage, no HTTP.

pub mod aac;
pub mod auth;
pub mod h264;
pub mod id;
pub mod jpeg;
pub mod media;
pub mod relay;
pub mod rtp_h264;
pub mod srtp;
pub mod ttl;

pub use id::{AppName, NameError, RoomName};
pub use media::{CodecConfig, Frame, RoomMedia, TrackId, TrackInfo};
