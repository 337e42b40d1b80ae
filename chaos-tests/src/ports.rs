//! Free loopback ports for the nodes' listeners.
//!
//! The port is found by binding port 0 and released before the node binds it, so another process
//! could take it in between; a set of ports already handed out keeps the nodes of one test
//! process from colliding with each other.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Mutex;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

fn claim(port: u16) -> bool {
    let mut set = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    set.get_or_insert_with(HashSet::new).insert(port)
}

/// A free TCP port on 127.0.0.1, never handed out before by this process.
pub fn free_tcp() -> SocketAddr {
    loop {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind a TCP port on 127.0.0.1");
        if claim(addr.port()) {
            return addr;
        }
    }
}

/// A free UDP port on 127.0.0.1 (for `--cluster`), never handed out before by this process.
pub fn free_udp() -> SocketAddr {
    loop {
        let addr = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("bind a UDP port on 127.0.0.1");
        if claim(addr.port()) {
            return addr;
        }
    }
}
