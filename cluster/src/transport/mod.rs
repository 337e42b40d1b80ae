//! The inter-node QUIC transport: one endpoint per node, mutual TLS against a private cluster CA,
//! request/response RPCs multiplexed as one bidirectional stream each.
//!
//! - [`pki`]: the cluster CA, node keys, CSRs and certificates, the saved node identity.
//! - [`frame`]: the RPC wire format (sans-IO).
//! - [`Endpoint`]: the socket, the accept loop, RPC dispatch and the outgoing connection pool.
//! - [`kinds`]: every RPC kind number in one place.

#![warn(missing_docs)]

mod endpoint;
mod error;
pub mod frame;
pub mod kinds;
pub mod pki;
mod pool;
mod tls;

pub use endpoint::{
    service_fn, service_fn_with_limit, stream_service_fn, Endpoint, IncomingStream, PeerInfo,
    RpcService, ServiceFn, StreamService,
};
pub use error::{RemoteError, RpcError, TransportError};
pub use kinds::{Callers, PeerRole};
pub use pki::{peer_cert, peer_name, CaBundle, NodeIdentity, NodeKey, PeerCert, PkiError};
pub use tls::ALPN;
