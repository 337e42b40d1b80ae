//! The media socket takes datagrams one by one even when the kernel coalesces them: a sender
//! using UDP GSO toward it (the socket has UDP GRO on, for its own GSO sends) must still be
//! seen as so many datagrams, here garbage for no session, each counted.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

#[tokio::test]
async fn coalesced_datagrams_are_split_before_routing() {
    let node = common::node(10).await;
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let state = quinn_udp::UdpSocketState::new((&sender).into()).unwrap();
    let segments = state.max_gso_segments().min(10);
    // Linux has had UDP GSO since 4.18; without it this test would prove nothing.
    assert!(segments > 1, "no UDP GSO on this machine");
    let contents = vec![0x42u8; 100 * segments];
    let transmit = quinn_udp::Transmit {
        destination: node.local_addr(),
        ecn: None,
        contents: &contents,
        segment_size: (segments > 1).then_some(100),
        src_ip: None,
    };
    state.send((&sender).into(), &transmit).unwrap();
    let want = segments as u64;
    let counted = || node.stats.garbage_datagrams.load(Ordering::Relaxed);
    for _ in 0..100 {
        if counted() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counted(), want, "{segments} datagrams sent in one GSO send");
}
