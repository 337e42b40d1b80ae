//! One UDP port for every WebRTC session of a node: datagrams are routed by remote address,
//! and a remote address is learned from the first STUN binding request it sends, whose
//! `USERNAME` (`<our ufrag>:<their ufrag>`, RFC 8445 7.2.2) names the session. Anything else
//! from an unknown address is garbage: counted and dropped, no session sees it.

use std::collections::HashMap;
use std::net::SocketAddr;

/// STUN magic cookie (RFC 5389).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// STUN attribute USERNAME.
const ATTR_USERNAME: u16 = 0x0006;
/// Remote addresses one session may have (ICE candidate pairs it was checked on).
pub const MAX_ADDRS_PER_SESSION: usize = 8;

/// The local ufrag a STUN binding request is for, if `b` is one with a USERNAME.
pub fn stun_local_ufrag(b: &[u8]) -> Option<&str> {
    if b.len() < 20 || b[0] & 0xc0 != 0 || b[4..8] != MAGIC_COOKIE {
        return None;
    }
    // Binding request: method 0x001, class request.
    if u16::from_be_bytes([b[0], b[1]]) != 0x0001 {
        return None;
    }
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    let mut attrs = b.get(20..20 + len)?;
    while attrs.len() >= 4 {
        let typ = u16::from_be_bytes([attrs[0], attrs[1]]);
        let alen = u16::from_be_bytes([attrs[2], attrs[3]]) as usize;
        let value = attrs.get(4..4 + alen)?;
        if typ == ATTR_USERNAME {
            let user = std::str::from_utf8(value).ok()?;
            return user.split(':').next();
        }
        let padded = (alen + 3) & !3;
        attrs = attrs.get(4 + padded..)?;
    }
    None
}

/// The routing table: session ids by local ufrag and by remote address.
#[derive(Debug)]
pub struct Routes<T> {
    by_ufrag: HashMap<String, u64>,
    by_addr: HashMap<SocketAddr, u64>,
    sessions: HashMap<u64, Route<T>>,
}

impl<T> Default for Routes<T> {
    fn default() -> Self {
        Self {
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            sessions: HashMap::new(),
        }
    }
}

#[derive(Debug)]
struct Route<T> {
    ufrag: String,
    addrs: Vec<SocketAddr>,
    sink: T,
}

impl<T: Clone> Routes<T> {
    /// Adds a session reachable by `ufrag`.
    pub fn insert(&mut self, id: u64, ufrag: String, sink: T) {
        self.by_ufrag.insert(ufrag.clone(), id);
        self.sessions.insert(
            id,
            Route {
                ufrag,
                addrs: Vec::new(),
                sink,
            },
        );
    }

    /// Removes a session and every address it had.
    pub fn remove(&mut self, id: u64) {
        if let Some(r) = self.sessions.remove(&id) {
            self.by_ufrag.remove(&r.ufrag);
            for a in r.addrs {
                self.by_addr.remove(&a);
            }
        }
    }

    /// Where a datagram from `from` goes: the session of a known address, or the session a STUN
    /// binding request names (its address is learned). `None`: garbage.
    pub fn route(&mut self, from: SocketAddr, datagram: &[u8]) -> Option<(u64, T)> {
        if let Some(id) = self.by_addr.get(&from) {
            let r = self.sessions.get(id)?;
            return Some((*id, r.sink.clone()));
        }
        let ufrag = stun_local_ufrag(datagram)?;
        let id = *self.by_ufrag.get(ufrag)?;
        let r = self.sessions.get_mut(&id)?;
        if r.addrs.len() >= MAX_ADDRS_PER_SESSION {
            return None;
        }
        r.addrs.push(from);
        self.by_addr.insert(from, id);
        Some((id, r.sink.clone()))
    }

    /// Sessions in the table.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True when no session is routed.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        // A PRIORITY attribute first, so the parser has to step over one.
        attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
        attrs.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut b = vec![0x00, 0x01];
        b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        b.extend_from_slice(&MAGIC_COOKIE);
        b.extend_from_slice(&[7; 12]);
        b.extend_from_slice(&attrs);
        b
    }

    #[test]
    fn reads_the_local_ufrag_of_a_binding_request() {
        assert_eq!(
            stun_local_ufrag(&binding_request("ours:theirs")),
            Some("ours")
        );
        // A binding response (class success) is not a request.
        let mut resp = binding_request("ours:theirs");
        resp[0] = 0x01;
        assert_eq!(stun_local_ufrag(&resp), None);
        // RTP, DTLS and short garbage are not STUN.
        assert_eq!(stun_local_ufrag(&[0x80; 40]), None);
        assert_eq!(stun_local_ufrag(&[22, 254, 253]), None);
        // A length that runs past the datagram.
        let mut cut = binding_request("ours:theirs");
        cut.truncate(26);
        assert_eq!(stun_local_ufrag(&cut), None);
    }

    #[test]
    fn learns_addresses_from_stun_then_routes_by_address() {
        let mut r = Routes::default();
        r.insert(1, "aaaa".into(), 'a');
        r.insert(2, "bbbb".into(), 'b');
        let x: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let y: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        assert_eq!(r.route(x, &[0x80, 1, 2]), None, "unknown address, not STUN");
        assert_eq!(r.route(x, &binding_request("bbbb:zz")), Some((2, 'b')));
        assert_eq!(r.route(x, &[0x80, 1, 2]), Some((2, 'b')), "now known");
        assert_eq!(
            r.route(y, &binding_request("nope:zz")),
            None,
            "unknown ufrag"
        );
        r.remove(2);
        assert_eq!(r.route(x, &[0x80, 1, 2]), None, "gone with its session");
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn one_session_cannot_claim_unbounded_addresses() {
        let mut r = Routes::default();
        r.insert(1, "aaaa".into(), ());
        let req = binding_request("aaaa:zz");
        for port in 0..MAX_ADDRS_PER_SESSION as u16 {
            let a = SocketAddr::from(([10, 0, 0, 1], 1000 + port));
            assert!(r.route(a, &req).is_some());
        }
        assert!(r
            .route(SocketAddr::from(([10, 0, 0, 1], 999)), &req)
            .is_none());
    }
}
