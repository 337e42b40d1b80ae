//! Outgoing connections: one per peer address, reused by every request, redialed on failure with
//! capped exponential backoff and jitter between failed dials ([`Backoff`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use tokio::time::Instant;

use crate::backoff::Backoff;

/// The first delay after a failed dial.
const BACKOFF_BASE: Duration = Duration::from_millis(50);
/// The longest delay between dials of one peer.
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// The outcome of one dial, shared by every request waiting for it.
pub(crate) type Dial = Shared<BoxFuture<'static, Result<quinn::Connection, String>>>;

/// The state of one peer: its live connection, the dial in progress, or the backoff after failed
/// dials.
pub(crate) struct PeerSlot {
    conn: Option<quinn::Connection>,
    dialing: Option<Dial>,
    backoff: Backoff,
    last_error: String,
    /// The node name the peer's certificate must carry, if the caller knows it.
    pub(crate) expected_name: Option<String>,
}

impl Default for PeerSlot {
    fn default() -> Self {
        Self {
            conn: None,
            dialing: None,
            backoff: Backoff::new(BACKOFF_BASE, BACKOFF_CAP),
            last_error: String::new(),
            expected_name: None,
        }
    }
}

/// What a request finds in a peer's slot.
pub(crate) enum Lookup {
    /// A live pooled connection.
    Live(quinn::Connection),
    /// A dial is in progress (possibly just started by this lookup).
    Dialing(Dial),
    /// Dials failed recently; the next one is allowed after `wait`.
    BackingOff {
        /// Time left before the next dial.
        wait: Duration,
        /// Why the last dial failed.
        last_error: String,
    },
    /// No connection and no dial: the caller must start one and register it with
    /// [`Pool::start_dial`].
    Idle,
}

/// Per-peer slots behind one `std` mutex, held only for map and slot bookkeeping (never across
/// `.await`). A dial runs as its own task; requests wait on its shared outcome with their own
/// deadline, so a short RPC timeout (openraft's heartbeat) never aborts a slower handshake.
#[derive(Default)]
pub(crate) struct Pool {
    peers: Mutex<HashMap<SocketAddr, PeerSlot>>,
}

impl Pool {
    fn with_slot<T>(&self, addr: SocketAddr, f: impl FnOnce(&mut PeerSlot) -> T) -> T {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        f(peers.entry(addr).or_default())
    }

    /// What a request to `addr` at `now` should do.
    pub(crate) fn lookup(&self, addr: SocketAddr, now: Instant) -> Lookup {
        self.with_slot(addr, |slot| {
            if let Some(conn) = &slot.conn {
                if conn.close_reason().is_none() {
                    return Lookup::Live(conn.clone());
                }
                slot.conn = None;
            }
            if let Some(dial) = &slot.dialing {
                return Lookup::Dialing(dial.clone());
            }
            match slot.backoff.wait(now) {
                Some(wait) => Lookup::BackingOff {
                    wait,
                    last_error: slot.last_error.clone(),
                },
                None => Lookup::Idle,
            }
        })
    }

    /// Registers a dial started after [`Lookup::Idle`], unless another caller raced ahead; returns
    /// the dial to wait on. The name the peer must carry is returned by [`Pool::expected_name`].
    pub(crate) fn start_dial(&self, addr: SocketAddr, dial: impl FnOnce() -> Dial) -> Dial {
        self.with_slot(addr, |slot| slot.dialing.get_or_insert_with(dial).clone())
    }

    /// The node name the peer at `addr` must carry, if known.
    pub(crate) fn expected_name(&self, addr: SocketAddr) -> Option<String> {
        self.with_slot(addr, |slot| slot.expected_name.clone())
    }

    /// Sets the node name the peer at `addr` must carry from the next dial on.
    pub(crate) fn expect_name(&self, addr: SocketAddr, name: Option<String>) {
        self.with_slot(addr, |slot| slot.expected_name = name);
    }

    /// Records the outcome of a dial (called by the dial task itself).
    pub(crate) fn finish_dial(
        &self,
        addr: SocketAddr,
        outcome: &Result<quinn::Connection, String>,
        now: Instant,
    ) {
        self.with_slot(addr, |slot| {
            slot.dialing = None;
            match outcome {
                Ok(conn) => {
                    slot.backoff.succeeded();
                    slot.conn = Some(conn.clone());
                }
                Err(reason) => {
                    slot.backoff.failed(now, rand::random::<f64>());
                    slot.last_error.clone_from(reason);
                }
            }
        });
    }

    /// The live pooled connections for which `f` holds.
    pub(crate) fn matching(
        &self,
        f: impl Fn(&quinn::Connection) -> bool,
    ) -> Vec<quinn::Connection> {
        let peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        peers
            .values()
            .filter_map(|slot| slot.conn.as_ref())
            .filter(|conn| f(conn))
            .cloned()
            .collect()
    }

    /// Closes and forgets every connection (endpoint shutdown).
    pub(crate) fn clear(&self) {
        let peers = std::mem::take(&mut *self.peers.lock().unwrap_or_else(PoisonError::into_inner));
        for slot in peers.into_values() {
            if let Some(conn) = slot.conn {
                conn.close(0u32.into(), b"shutdown");
            }
        }
    }
}
