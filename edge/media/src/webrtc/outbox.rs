//! Datagrams to many viewers, sent with one `sendmmsg` per batch.
//!
//! A fan-out worker writes each viewer's protected packets straight into one buffer; packets to
//! the same viewer that follow each other and have the same size (a frame's full FU-A
//! fragments, the last one possibly shorter) become one message with `UDP_SEGMENT` (GSO), and
//! the messages of all viewers go to the kernel in one `sendmmsg`. No allocation per packet or
//! per batch: the buffer and the syscall's arrays are kept.

use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Buffer size: a keyframe (~40 packets at 2.5 Mb/s) to ~6 viewers, or a P-frame to ~100,
/// before the worker sends.
const BUFFER: usize = 256 * 1024;
/// The largest datagram a worker writes (RTP MTU, header and SRTP tag).
pub(super) const MAX_DATAGRAM: usize = 1500;
/// Messages per `sendmmsg` (the kernel's UIO_MAXIOV).
const MAX_MESSAGES: usize = 1024;
/// Bytes in one GSO message: under the 64 KiB of a UDP datagram.
const MAX_GSO_BYTES: usize = 60_000;

#[derive(Debug, Clone, Copy)]
struct Msg {
    dest: SocketAddr,
    /// The viewer the datagrams are for.
    owner: u64,
    start: usize,
    len: usize,
    /// Segment size (all but possibly the last datagram have it).
    segment: usize,
    count: usize,
    /// A shorter datagram ended it (GSO allows only the last segment to be short).
    closed: bool,
}

/// What a send did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sent {
    pub datagrams: u64,
    pub bytes: u64,
    /// Datagrams the socket did not take.
    pub dropped: u64,
}

/// Datagrams waiting for one `sendmmsg`.
pub(super) struct Outbox {
    buf: Box<[u8]>,
    used: usize,
    msgs: Vec<Msg>,
    /// Datagrams per GSO message (1: GSO unavailable).
    max_segments: usize,
    /// The socket is IPv6: IPv4 destinations are sent as mapped addresses.
    v6_socket: bool,
    // The syscall's arrays, kept between sends.
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_in6>,
    cmsgs: Vec<[u64; 4]>,
}

// The raw pointers in `hdrs`/`iovs` only point into this struct's own buffers while a send runs.
unsafe impl Send for Outbox {}

impl Outbox {
    pub fn new(max_segments: usize, v6_socket: bool) -> Self {
        Self {
            buf: vec![0u8; BUFFER].into_boxed_slice(),
            used: 0,
            msgs: Vec::with_capacity(256),
            max_segments: max_segments.clamp(1, 64),
            v6_socket,
            hdrs: Vec::new(),
            iovs: Vec::new(),
            addrs: Vec::new(),
            cmsgs: Vec::new(),
        }
    }

    /// True if a datagram of up to [`MAX_DATAGRAM`] bytes fits without sending first.
    pub fn has_room(&self) -> bool {
        self.used + MAX_DATAGRAM <= self.buf.len() && self.msgs.len() < MAX_MESSAGES
    }

    /// Where the next datagram is written (call [`has_room`](Self::has_room) first).
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.buf[self.used..self.used + MAX_DATAGRAM]
    }

    /// Takes the `len` bytes just written into [`space`](Self::space) as a datagram to `dest`.
    pub fn commit(&mut self, dest: SocketAddr, owner: u64, len: usize) {
        let start = self.used;
        self.used += len;
        if let Some(m) = self.msgs.last_mut() {
            if m.dest == dest
                && m.owner == owner
                && !m.closed
                && len <= m.segment
                && m.count < self.max_segments
                && m.len + len <= MAX_GSO_BYTES
                && m.start + m.len == start
            {
                m.len += len;
                m.count += 1;
                m.closed = len < m.segment;
                return;
            }
        }
        self.msgs.push(Msg {
            dest,
            owner,
            start,
            len,
            segment: len,
            count: 1,
            closed: false,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Datagrams waiting.
    #[cfg(test)]
    pub fn datagrams(&self) -> usize {
        self.msgs.iter().map(|m| m.count).sum()
    }

    /// Sends what waits on `fd` (non-blocking) from message `from` on; returns how many
    /// messages the kernel took, or the error of the first it did not take.
    fn send_from(&mut self, fd: RawFd, from: usize) -> std::io::Result<usize> {
        let msgs = &self.msgs[from..];
        self.hdrs.clear();
        self.iovs.clear();
        self.addrs.clear();
        self.cmsgs.clear();
        for m in msgs {
            self.iovs.push(libc::iovec {
                iov_base: self.buf[m.start..].as_mut_ptr().cast(),
                iov_len: m.len,
            });
            self.addrs.push(sockaddr(m.dest, self.v6_socket));
            let mut c = [0u64; 4];
            if m.count > 1 {
                // SAFETY: `c` is 32 bytes, 8-aligned: room for one cmsghdr and a u16 on Linux.
                unsafe {
                    let h = c.as_mut_ptr().cast::<libc::cmsghdr>();
                    (*h).cmsg_level = libc::SOL_UDP;
                    (*h).cmsg_type = libc::UDP_SEGMENT;
                    (*h).cmsg_len = libc::CMSG_LEN(2) as _;
                    let data = libc::CMSG_DATA(h).cast::<u16>();
                    data.write_unaligned(m.segment as u16);
                }
            }
            self.cmsgs.push(c);
        }
        for (i, m) in msgs.iter().enumerate() {
            // SAFETY: zeroed msghdr is valid; every pointer set points into vectors not resized
            // until the syscall returns.
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in6).cast();
            h.msg_namelen = addr_len(m.dest, self.v6_socket);
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            if m.count > 1 {
                h.msg_control = self.cmsgs[i].as_mut_ptr().cast();
                h.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as _;
            }
            self.hdrs.push(libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            });
        }
        // SAFETY: `hdrs` holds `len` valid headers whose buffers live in `self`.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                0,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Sends from message `*done` on until all went or the socket is full (`false`).
    fn send_some(
        &mut self,
        fd: RawFd,
        done: &mut usize,
        sent: &mut Sent,
        overflowed: &mut impl FnMut(u64),
    ) -> bool {
        while *done < self.msgs.len() {
            match self.send_from(fd, *done) {
                Ok(n) => {
                    for m in &self.msgs[*done..*done + n] {
                        sent.datagrams += m.count as u64;
                        sent.bytes += m.len as u64;
                    }
                    *done += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) if e.raw_os_error() == Some(libc::EIO) && self.max_segments > 1 => {
                    // A device without GSO checksum offload: single datagrams from now on.
                    tracing::warn!(
                        "UDP GSO refused by the network device; sending datagrams one by one"
                    );
                    self.max_segments = 1;
                    let m = self.msgs[*done];
                    sent.dropped += m.count as u64;
                    overflowed(m.owner);
                    *done += 1;
                }
                Err(e) => {
                    // An address the kernel refuses (unreachable network): that message only.
                    tracing::trace!(error = %e, "media send");
                    sent.dropped += self.msgs[*done].count as u64;
                    *done += 1;
                }
            }
        }
        true
    }

    /// Drops what was not sent (its viewers to `overflowed`) and empties the outbox.
    fn finish(&mut self, done: usize, sent: &mut Sent, overflowed: &mut impl FnMut(u64)) {
        for m in &self.msgs[done..] {
            sent.dropped += m.count as u64;
            overflowed(m.owner);
        }
        self.msgs.clear();
        self.used = 0;
    }

    /// Sends everything: what the socket does not take at once waits for it to be writable,
    /// at most `wait` in all; what is left then is dropped (its viewers reported to
    /// `overflowed`). Empties the outbox.
    pub async fn flush(
        &mut self,
        socket: &super::socket::MediaSocket,
        fd: RawFd,
        wait: std::time::Duration,
        mut overflowed: impl FnMut(u64),
    ) -> Sent {
        let (mut sent, mut done) = (Sent::default(), 0);
        let deadline = tokio::time::Instant::now() + wait;
        while !self.send_some(fd, &mut done, &mut sent, &mut overflowed) {
            // Full: wait for the kernel to say the socket drained.
            if !socket.writable_by(deadline).await {
                break;
            }
        }
        self.finish(done, &mut sent, &mut overflowed);
        sent
    }
}

fn sockaddr(a: SocketAddr, v6_socket: bool) -> libc::sockaddr_in6 {
    // SAFETY: all-zero is a valid sockaddr_in6 (and sockaddr_in, which fits in it).
    let mut s: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    match a {
        SocketAddr::V4(v4) if !v6_socket => {
            let p = (&mut s as *mut libc::sockaddr_in6).cast::<libc::sockaddr_in>();
            // SAFETY: sockaddr_in is smaller than sockaddr_in6 and has no stricter alignment.
            unsafe {
                (*p).sin_family = libc::AF_INET as libc::sa_family_t;
                (*p).sin_port = v4.port().to_be();
                (*p).sin_addr = libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                };
            }
        }
        SocketAddr::V4(v4) => {
            s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            s.sin6_port = v4.port().to_be();
            s.sin6_addr.s6_addr = v4.ip().to_ipv6_mapped().octets();
        }
        SocketAddr::V6(v6) => {
            s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            s.sin6_port = v6.port().to_be();
            s.sin6_addr.s6_addr = v6.ip().octets();
            s.sin6_flowinfo = v6.flowinfo();
            s.sin6_scope_id = v6.scope_id();
        }
    }
    s
}

fn addr_len(a: SocketAddr, v6_socket: bool) -> libc::socklen_t {
    if a.is_ipv4() && !v6_socket {
        std::mem::size_of::<libc::sockaddr_in>() as _
    } else {
        std::mem::size_of::<libc::sockaddr_in6>() as _
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn push(o: &mut Outbox, dest: SocketAddr, owner: u64, len: usize, fill: u8) {
        o.space()[..len].fill(fill);
        o.commit(dest, owner, len);
    }

    #[tokio::test]
    async fn datagrams_to_many_receivers_arrive_whole_with_gso_runs_split() {
        let tx = super::super::socket::MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let a = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut o = Outbox::new(64, false);
        // A frame to a: three full packets and a short one (one GSO message); one packet to b;
        // then a again (a new message: another viewer's came in between).
        for _ in 0..3 {
            push(&mut o, aa, 1, 1200, 1);
        }
        push(&mut o, aa, 1, 300, 2);
        push(&mut o, ba, 2, 500, 3);
        push(&mut o, aa, 1, 100, 4);
        assert_eq!(o.msgs.len(), 3);
        assert_eq!(o.datagrams(), 6);
        let sent = o
            .flush(
                &tx,
                tx.as_raw_fd(),
                std::time::Duration::from_millis(100),
                |_| panic!("nothing overflows"),
            )
            .await;
        assert_eq!(
            sent,
            Sent {
                datagrams: 6,
                bytes: 3 * 1200 + 300 + 500 + 100,
                dropped: 0
            }
        );
        assert!(o.is_empty());
        let mut buf = [0u8; 2000];
        let mut got = Vec::new();
        for _ in 0..5 {
            let n = a.recv(&mut buf).await.unwrap();
            got.push((n, buf[0]));
        }
        assert_eq!(
            got,
            vec![(1200, 1), (1200, 1), (1200, 1), (300, 2), (100, 4)]
        );
        let n = b.recv(&mut buf).await.unwrap();
        assert_eq!((n, buf[0]), (500, 3));
    }

    #[test]
    fn gso_runs_break_on_size_growth_owner_and_segment_count() {
        let d: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut o = Outbox::new(2, false);
        push(&mut o, d, 1, 100, 0);
        push(&mut o, d, 1, 200, 0); // larger: new message
        push(&mut o, d, 1, 200, 0);
        push(&mut o, d, 1, 200, 0); // third of max 2: new message
        push(&mut o, d, 2, 200, 0); // another owner
        let counts: Vec<usize> = o.msgs.iter().map(|m| m.count).collect();
        assert_eq!(counts, vec![1, 2, 1, 1]);
    }
}
