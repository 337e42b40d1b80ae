//! Loopback ports for the nodes' listeners that never collide.
//!
//! A port is free when a bind to it succeeds, but the test releases it before the node binds it,
//! so something else could take it in between. Three rules close that window:
//! - ports are taken below the kernel's ephemeral range (`ip_local_port_range`), where no
//!   outgoing connection of any process is ever given one;
//! - each port handed out is locked in a file under the temp dir for the life of the test
//!   process (`flock`), so test processes running side by side (nextest, two `cargo test`s)
//!   never hand out the same port;
//! - within a process, a port is never handed out twice.

use std::collections::HashSet;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// The lowest port handed out (well above the privileged and the usual service ports).
const FIRST: u16 = 20_000;

/// Ports this process handed out, with the lock files that reserve them.
static HANDED_OUT: Mutex<Option<(HashSet<u16>, Vec<File>)>> = Mutex::new(None);

/// Where the next search starts: spread per process, so processes rarely probe the same ports.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

fn reserve(port: u16, usable: impl Fn(u16) -> bool) -> bool {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let (set, locks) = guard.get_or_insert_with(Default::default);
    if set.contains(&port) || !usable(port) {
        return false;
    }
    let dir = std::env::temp_dir().join("streamhub-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    let Ok(file) = File::create(dir.join(port.to_string())) else {
        return false;
    };
    // Held until the process exits: another test process skips this port.
    if file.try_lock().is_err() {
        return false;
    }
    set.insert(port);
    locks.push(file);
    true
}

fn pick(usable: impl Fn(u16) -> bool) -> u16 {
    let span = u32::from(ephemeral_start().saturating_sub(FIRST)).max(1);
    if NEXT.load(Ordering::Relaxed) == 0 {
        NEXT.store(
            std::process::id().wrapping_mul(7919) % span + 1,
            Ordering::Relaxed,
        );
    }
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = FIRST + offset as u16;
        if reserve(port, &usable) {
            return port;
        }
    }
    panic!("no free loopback port between {FIRST} and the ephemeral range");
}

/// A free TCP port on 127.0.0.1 that no other test (of this or another process) is given.
pub fn free_tcp() -> SocketAddr {
    let port = pick(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A free UDP port on 127.0.0.1 that no other test (of this or another process) is given.
pub fn free_udp() -> SocketAddr {
    let port = pick(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok());
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_out_twice_and_sit_below_the_ephemeral_range() {
        let mut seen = HashSet::new();
        for _ in 0..200 {
            for addr in [free_tcp(), free_udp()] {
                assert!(seen.insert(addr.port()), "{addr} handed out twice");
                assert!(addr.port() >= FIRST && addr.port() < ephemeral_start());
            }
        }
    }
}
