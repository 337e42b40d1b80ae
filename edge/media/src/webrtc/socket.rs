//! The media port's socket, registered with the runtime for reading only.
//!
//! `tokio::net::UdpSocket` registers for reading and writing at once. On a socket that sends a
//! fan-out's datagrams that is costly: every time the kernel frees a sent datagram (a NIC's
//! transmit completion, or the receiving end of a veth) the socket reports write space, and with
//! a write registration that wakes the runtime's thread, idle or not, although nothing waits to
//! write. Measured with 500 WHEP viewers at 200 kb/s: ~2,500 of the edge's ~2,900 wake-ups a
//! second were these. Here the socket is registered for reading only; a sender that found the
//! socket full registers a duplicate of its descriptor for writing just while it waits
//! ([`MediaSocket::writable_by`]).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A UDP socket the runtime watches for reading only.
#[derive(Debug)]
pub struct MediaSocket {
    io: AsyncFd<std::net::UdpSocket>,
}

impl MediaSocket {
    /// Binds `addr` (non-blocking) and registers it for reading.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = std::net::UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        // SAFETY: the socket is owned by the `AsyncFd`: its descriptor stays open and the same
        // for as long as the registration lives.
        let io = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Self { io })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    /// Waits until the socket may have a datagram, then runs `f` (a non-blocking receive) and
    /// returns what it did; a `WouldBlock` from it clears the readiness and is returned for the
    /// caller to wait again. The outer error: waiting itself failed (the runtime is going away).
    pub async fn recv_with<T>(
        &self,
        f: impl FnOnce(&std::net::UdpSocket) -> io::Result<T>,
    ) -> io::Result<io::Result<T>> {
        let mut guard = self.io.readable().await?;
        Ok(match guard.try_io(|s| f(s.get_ref())) {
            Ok(r) => r,
            Err(_would_block) => Err(io::ErrorKind::WouldBlock.into()),
        })
    }

    /// Waits until the socket takes datagrams again or `deadline` passes; false if it passed.
    /// Registers a duplicate descriptor for writing for the wait only (see the module docs). If
    /// that fails (no descriptor left), waits a millisecond instead (never past `deadline`) and
    /// says whether time is left: the caller tries again without spinning.
    pub async fn writable_by(&self, deadline: tokio::time::Instant) -> bool {
        let retry_soon = || async {
            let soon = tokio::time::Instant::now() + std::time::Duration::from_millis(1);
            tokio::time::sleep_until(soon.min(deadline)).await;
            tokio::time::Instant::now() < deadline
        };
        // SAFETY: `dup` of a valid descriptor; the result is owned (closed on drop) only here.
        let dup = unsafe { libc::dup(self.as_raw_fd()) };
        if dup < 0 {
            return retry_soon().await;
        }
        // SAFETY: `dup` is a fresh descriptor this function owns.
        let dup = unsafe { OwnedFd::from_raw_fd(dup) };
        // SAFETY: the duplicate is owned by the `AsyncFd`, open for its whole life.
        let Ok(fd) = (unsafe { AsyncFd::register_with_interest(dup, Interest::WRITABLE) }) else {
            return retry_soon().await;
        };
        // Registering reports the current state: a socket that drained meanwhile is writable at
        // once, so no wake-up is lost between the failed send and this registration.
        tokio::time::timeout_at(deadline, fd.writable())
            .await
            .is_ok()
    }
}

impl AsRawFd for MediaSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.io.as_raw_fd()
    }
}

impl AsFd for MediaSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.get_ref().as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn reads_wait_for_datagrams_and_an_idle_socket_is_writable() {
        let rx = MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                match rx.recv_with(|s| s.recv_from(&mut buf)).await.unwrap() {
                    Ok((n, _)) => return (buf[..n].to_vec(), rx),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send_to(b"hello", to).unwrap();
        let (got, rx) = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the datagram wakes the reader")
            .unwrap();
        assert_eq!(got, b"hello");
        // An idle socket is writable at once.
        let soon = tokio::time::Instant::now() + Duration::from_secs(1);
        assert!(rx.writable_by(soon).await);
    }

    /// The event mask a runtime registered for `fd`, read from the process's epoll instances
    /// (`/proc/self/fdinfo`).
    fn registered_events(fd: RawFd) -> Option<u32> {
        for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
            let is_epoll = std::fs::read_link(entry.path())
                .is_ok_and(|t| t.to_str() == Some("anon_inode:[eventpoll]"));
            if !is_epoll {
                continue;
            }
            let name = entry.file_name();
            let Ok(info) =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{}", name.to_string_lossy()))
            else {
                continue;
            };
            for line in info.lines() {
                // "tfd:        7 events:       19 data: ..."
                let words: Vec<&str> = line.split_whitespace().collect();
                if let ["tfd:", target, "events:", mask, ..] = words[..] {
                    if target.parse() == Ok(fd) {
                        return u32::from_str_radix(mask, 16).ok();
                    }
                }
            }
        }
        None
    }

    #[tokio::test]
    async fn registered_for_reading_only_unlike_tokios_socket() {
        let media = MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let plain = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let plain_events = registered_events(plain.as_raw_fd()).expect("tokio's socket");
        // The control: tokio's own socket asks for write space, which wakes for every sent
        // datagram the kernel frees.
        assert_ne!(plain_events & libc::EPOLLOUT as u32, 0, "{plain_events:#x}");
        let events = registered_events(media.as_raw_fd()).expect("the media socket");
        assert_ne!(events & libc::EPOLLIN as u32, 0, "{events:#x}");
        assert_eq!(events & libc::EPOLLOUT as u32, 0, "{events:#x}");
    }
}
