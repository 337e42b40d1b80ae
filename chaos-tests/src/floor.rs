//! The kernel's cost of a WebRTC fan-out's sends: the same datagrams a fan-out edge sends its
//! viewers (count, sizes, cadence), sent the way the edge sends them (one unconnected UDP
//! socket, one `sendmmsg` per burst across viewers, a viewer's packets of one frame as one GSO
//! message), by a process that does nothing else. No SRTP, no sessions, no runtime: what a core
//! spends on it is the UDP/IP send path alone, the floor of any send path built the same way on
//! standard sockets. `whep_bench` runs it as the path `floor` to say how far above it the edge
//! is.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// The audio cadence: one Opus packet per viewer every 20 ms.
pub const TICK: Duration = Duration::from_millis(20);
/// Messages per `sendmmsg`, as the edge (the kernel's UIO_MAXIOV).
const MAX_MESSAGES: usize = 1024;
/// Datagrams per GSO message, as the edge's outbox allows at most.
const MAX_SEGMENTS: usize = 64;
/// Bytes per GSO message, as the edge's outbox (under the 64 KiB of a UDP datagram).
const MAX_GSO_BYTES: usize = 60_000;

/// What each viewer gets per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// The size of the audio datagram each viewer gets every [`TICK`] (50 a second); 0: none.
    pub audio_bytes: usize,
    /// Video datagrams per second and their size in bytes.
    pub video_per_sec: f64,
    pub video_bytes: usize,
    /// Video frames per second: a frame's datagrams go out together, as the edge sends them.
    pub fps: u32,
}

impl Plan {
    /// The plan for viewers who each received `packets` datagrams and `payload` bytes of RTP
    /// payload per second, of which an Opus packet of `audio_payload` bytes every [`TICK`]
    /// (`None`: no audio): every datagram adds an RTP header and an SRTP tag (`overhead`
    /// bytes).
    pub fn from_received(
        packets: f64,
        payload: f64,
        audio_payload: Option<usize>,
        overhead: usize,
        fps: u32,
    ) -> Plan {
        let audio = if audio_payload.is_some() {
            1.0 / TICK.as_secs_f64()
        } else {
            0.0
        };
        let audio_payload = audio_payload.unwrap_or(0);
        let video_per_sec = (packets - audio).max(0.0);
        let video_payload = (payload - audio * audio_payload as f64).max(0.0);
        let video_bytes = if video_per_sec > 0.0 {
            (video_payload / video_per_sec).round() as usize + overhead
        } else {
            0
        };
        Plan {
            audio_bytes: if audio > 0.0 {
                audio_payload + overhead
            } else {
                0
            },
            video_per_sec,
            video_bytes: video_bytes.min(1500),
            fps: fps.max(1),
        }
    }
}

/// Sends `plan` to every address of `dests` from `socket` until `stop`, asked before each burst
/// with the time of that burst in the schedule (from the start), says so; returns the datagrams
/// sent. Late bursts catch up. Blocking: a full socket buffer holds the sender back, as a full
/// NIC ring does.
pub fn send(
    socket: &UdpSocket,
    dests: &[SocketAddrV4],
    plan: Plan,
    stop: impl Fn(Duration) -> bool,
) -> u64 {
    let payload = vec![0x5au8; plan.audio_bytes.max(MAX_GSO_BYTES).max(1)];
    let addrs: Vec<libc::sockaddr_in> = dests.iter().map(|d| sockaddr(*d)).collect();
    let mut sent = 0u64;
    let start = Instant::now();
    let frame_every = Duration::from_secs(1) / plan.fps;
    let (mut next_tick, mut next_frame) = (start, start);
    let mut video_due = 0.0;
    let mut video_sent = 0u64;
    loop {
        let wake = next_tick.min(next_frame);
        if stop(wake - start) {
            break;
        }
        let now = Instant::now();
        if wake > now {
            std::thread::sleep(wake - now);
            continue;
        }
        if next_tick <= now {
            if plan.audio_bytes > 0 {
                sent += burst(socket, &addrs, &payload, plan.audio_bytes, 1);
            }
            next_tick += TICK;
        }
        if next_frame <= now {
            // The frame's share of the video datagrams, whole datagrams only (the rest carries).
            video_due += plan.video_per_sec / f64::from(plan.fps);
            let n = (video_due.floor() as u64).saturating_sub(video_sent);
            if n > 0 && plan.video_bytes > 0 {
                sent += burst(socket, &addrs, &payload, plan.video_bytes, n as usize);
                video_sent += n;
            }
            next_frame += frame_every;
        }
    }
    sent
}

/// `count` datagrams of `size` bytes (from `payload`) to every address, a viewer's as GSO
/// messages of up to [`MAX_SEGMENTS`] (as the edge sends a frame's equal packets), in `sendmmsg`
/// calls of up to [`MAX_MESSAGES`].
fn burst(
    socket: &UdpSocket,
    addrs: &[libc::sockaddr_in],
    payload: &[u8],
    size: usize,
    count: usize,
) -> u64 {
    // A viewer's messages: full ones (MAX_SEGMENTS datagrams, at most MAX_GSO_BYTES, as the
    // edge's), then the rest.
    let per = MAX_SEGMENTS.min(MAX_GSO_BYTES / size.max(1)).max(1);
    let (full, rest) = (count / per, count % per);
    let shapes: Vec<usize> = std::iter::repeat_n(per, full)
        .chain((rest > 0).then_some(rest))
        .collect();
    // One iovec per shape and one control message; the kernel only reads them.
    let mut iovs: Vec<libc::iovec> = shapes
        .iter()
        .map(|&n| libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: size * n,
        })
        .collect();
    let mut cmsg = [0u64; 4];
    // SAFETY: `cmsg` is 32 bytes, 8-aligned: room for one cmsghdr and a u16 on Linux.
    unsafe {
        let h = cmsg.as_mut_ptr().cast::<libc::cmsghdr>();
        (*h).cmsg_level = libc::SOL_UDP;
        (*h).cmsg_type = libc::UDP_SEGMENT;
        (*h).cmsg_len = libc::CMSG_LEN(2) as _;
        libc::CMSG_DATA(h)
            .cast::<u16>()
            .write_unaligned(size as u16);
    }
    // Taken once: every header points through these, valid until the function returns.
    let iov_ptr = iovs.as_mut_ptr();
    let cmsg_ptr = cmsg.as_mut_ptr().cast::<libc::c_void>();
    let messages = addrs
        .iter()
        .flat_map(|a| shapes.iter().enumerate().map(move |(k, &n)| (a, k, n)));
    let mut messages = messages.peekable();
    let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(MAX_MESSAGES);
    let mut sent = 0u64;
    while messages.peek().is_some() {
        hdrs.clear();
        for (a, k, n) in messages.by_ref().take(MAX_MESSAGES) {
            // SAFETY: a zeroed msghdr is valid; `addrs`, `iovs` and `cmsg` outlive the
            // `sendmmsg` below and are not moved meanwhile (the kernel only reads them).
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = a as *const libc::sockaddr_in as *mut libc::c_void;
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            h.msg_hdr.msg_iov = iov_ptr.wrapping_add(k);
            h.msg_hdr.msg_iovlen = 1;
            if n > 1 {
                h.msg_hdr.msg_control = cmsg_ptr;
                // SAFETY: a size computation only.
                h.msg_hdr.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as _;
            }
            hdrs.push(h);
        }
        let mut done = 0;
        while done < hdrs.len() {
            // SAFETY: `hdrs[done..]` are initialized headers pointing at live buffers.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    hdrs[done..].as_mut_ptr(),
                    (hdrs.len() - done) as u32,
                    0,
                )
            };
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            if n <= 0 {
                // An error on the first message (a receiver gone): skip it.
                done += 1;
                continue;
            }
            let n = n as usize;
            for h in &hdrs[done..done + n] {
                // SAFETY: `msg_iov` points into `iovs`, alive here.
                sent += (unsafe { (*h.msg_hdr.msg_iov).iov_len } / size) as u64;
            }
            done += n;
        }
    }
    drop(iovs);
    sent
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Parses the sender's destinations, one `ip:port` per line (IPv4 only).
pub fn parse_dests(text: &str) -> anyhow::Result<Vec<SocketAddrV4>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match l.trim().parse::<SocketAddr>()? {
            SocketAddr::V4(a) => Ok(a),
            SocketAddr::V6(a) => anyhow::bail!("IPv4 only: {a}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_keeps_what_the_viewers_received() {
        // 80 packets and 247 kb/s of payload a second, 120-byte Opus packets, 28 bytes added.
        let p = Plan::from_received(80.0, 247_000.0 / 8.0, Some(120), 28, 25);
        assert_eq!(p.audio_bytes, 148);
        assert!((p.video_per_sec - 30.0).abs() < 1e-9);
        let video = (30_875.0 - 6_000.0) / 30.0_f64;
        assert_eq!(p.video_bytes, video.round() as usize + 28);
        // Video only: every datagram is video.
        let p = Plan::from_received(30.0, 25_000.0, None, 28, 25);
        assert_eq!(p.audio_bytes, 0);
        assert!((p.video_per_sec - 30.0).abs() < 1e-9);
        assert_eq!(p.video_bytes, (25_000.0_f64 / 30.0).round() as usize + 28);
    }

    #[test]
    fn the_floor_sends_the_plan_to_every_viewer() {
        let receivers: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let dests: Vec<SocketAddrV4> = receivers
            .iter()
            .map(|r| match r.local_addr().unwrap() {
                SocketAddr::V4(a) => a,
                SocketAddr::V6(_) => unreachable!(),
            })
            .collect();
        let listed: String = dests.iter().map(|d| format!("{d}\n")).collect();
        assert_eq!(parse_dests(&listed).unwrap(), dests);
        let plan = Plan {
            audio_bytes: 148,
            video_per_sec: 50.0,
            video_bytes: 900,
            fps: 25,
        };
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Half a second of the schedule, however late the bursts: audio at 0, 20, .., 480 ms
        // (25), frames at 0, 40, .., 480 ms (13, two datagrams each).
        let sent = send(&socket, &dests, plan, |at| at >= Duration::from_millis(500));
        let mut buf = [0u8; 2048];
        let mut sizes = Vec::new();
        for r in &receivers {
            // Loopback delivers in a softirq that a loaded machine may defer: read what is due
            // (more would be a failure too), each read waiting up to 2 s.
            r.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut got = (0, 0);
            while got.0 + got.1 < 25 + 26 {
                let Ok(n) = r.recv(&mut buf) else { break };
                match n {
                    148 => got.0 += 1,
                    900 => got.1 += 1,
                    other => panic!("unexpected datagram of {other} bytes"),
                }
            }
            r.set_nonblocking(true).unwrap();
            assert!(r.recv(&mut buf).is_err(), "more datagrams than planned");
            sizes.push(got);
        }
        let received: u64 = sizes.iter().map(|(a, v)| (a + v) as u64).sum();
        assert_eq!(received, sent, "loopback loses nothing: {sizes:?}");
        assert_eq!(sizes, vec![(25, 26); 3]);
    }
}
