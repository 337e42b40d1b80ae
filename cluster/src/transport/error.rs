//! Errors of the cluster transport: one enum for setting up an endpoint, one for an RPC.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::pki::PkiError;

/// Failure to set up an [`Endpoint`](super::Endpoint).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The node's certificates could not be parsed.
    #[error("cluster identity")]
    Pki(#[from] PkiError),
    /// rustls refused a certificate, key or setting.
    #[error("TLS {what}")]
    Tls {
        /// What was being configured.
        what: &'static str,
        /// The underlying error.
        source: rustls::Error,
    },
    /// The certificate verifier or the QUIC crypto config could not be built.
    #[error("TLS verifier: {0}")]
    Verifier(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind cluster endpoint to {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The error a service returns to a remote caller: a stable code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RemoteError {
    /// A stable, machine-readable code (`snake_case`).
    pub code: String,
    /// A human-readable message.
    pub message: String,
}

impl RemoteError {
    /// A remote error with `code` and `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// Failure of one RPC.
///
/// `Unreachable` means the request certainly did not reach the peer's handler (safe to retry
/// anything; openraft backs off); `Network` means it may have (the outcome is unknown).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    /// No connection: connect failed or timed out, the handshake failed, the peer is in connect
    /// backoff, or the connection was closed before the request was sent.
    #[error("peer {addr} unreachable: {reason}")]
    Unreachable {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The request was (maybe partly) sent but the exchange failed: stream reset, connection lost,
    /// timeout, or a malformed response.
    #[error("rpc to {addr} failed: {reason}")]
    Network {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The peer's handler answered with an error.
    #[error("remote error: {0}")]
    Remote(RemoteError),
    /// The request body exceeds the transport's bound; nothing was sent.
    #[error("request body of {len} bytes exceeds the bound of {max}")]
    TooLarge {
        /// The body length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The peer has no service for this kind.
    #[error("peer does not serve rpc kind {0:#06x}")]
    UnknownKind(u16),
}

impl RpcError {
    pub(crate) fn unreachable(addr: SocketAddr, reason: impl ToString) -> Self {
        Self::Unreachable {
            addr,
            reason: reason.to_string(),
        }
    }

    pub(crate) fn network(addr: SocketAddr, reason: impl ToString) -> Self {
        Self::Network {
            addr,
            reason: reason.to_string(),
        }
    }
}
