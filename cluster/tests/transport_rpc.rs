//! The cluster endpoint on real loopback sockets: mutual TLS, RPC dispatch, failures kept apart.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use streamhub_cluster::transport::pki::{create_ca, issue_node_cert, CaBundle};
use streamhub_cluster::transport::{
    service_fn, service_fn_with_limit, Endpoint, NodeIdentity, RemoteError, RpcError,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const ECHO: u16 = 0x7001;
const FAIL: u16 = 0x7002;
const SILENT: u16 = 0x7003;
const SMALL: u16 = 0x7004;
const T: Duration = Duration::from_secs(5);

fn identity(ca: &CaBundle, name: &str) -> NodeIdentity {
    identity_as(ca, name, "origin")
}

fn identity_as(ca: &CaBundle, name: &str, role: &str) -> NodeIdentity {
    let (cert, key) = issue_node_cert(ca, name, role).unwrap();
    NodeIdentity::from_pem(ca.cert_pem.clone(), cert, key).unwrap()
}

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// An endpoint serving ECHO (answers `<peer name>:<body>`), FAIL, SILENT and SMALL (16 bytes max).
fn server(ca: &CaBundle, name: &str, addr: SocketAddr) -> Endpoint {
    let ep = Endpoint::bind(addr, &identity(ca, name), CancellationToken::new()).unwrap();
    ep.register(
        ECHO,
        service_fn(|peer, body: Bytes| async move {
            let mut out = format!("{}:", peer.name).into_bytes();
            out.extend_from_slice(&body);
            Ok(Bytes::from(out))
        }),
    );
    ep.register(
        FAIL,
        service_fn(|_, _| async { Err(RemoteError::new("no_such_app", "app x does not exist")) }),
    );
    ep.register(
        SILENT,
        service_fn(|_, _| futures::future::pending::<Result<Bytes, RemoteError>>()),
    );
    ep.register(
        SMALL,
        service_fn_with_limit(16, |_, body| async move { Ok(body) }),
    );
    ep
}

fn client(ca: &CaBundle, name: &str) -> Endpoint {
    Endpoint::bind(local(), &identity(ca, name), CancellationToken::new()).unwrap()
}

#[tokio::test]
async fn request_response_with_the_peer_name_from_its_certificate() {
    let ca = create_ca("test").unwrap();
    let srv = server(&ca, "origin-1", local());
    let cli = client(&ca, "edge-7");
    let answer = cli
        .request(srv.local_addr(), ECHO, Bytes::from_static(b"hello"), T)
        .await
        .unwrap();
    assert_eq!(&answer[..], b"edge-7:hello");
    // Many concurrent requests share the one pooled connection.
    let calls = (0..50).map(|i| {
        let cli = cli.clone();
        let addr = srv.local_addr();
        async move { cli.request(addr, ECHO, Bytes::from(i.to_string()), T).await }
    });
    for (i, r) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(r.unwrap(), Bytes::from(format!("edge-7:{i}")));
    }
    let conn = cli.connection(srv.local_addr()).await.unwrap();
    assert_eq!(
        streamhub_cluster::transport::peer_name(&conn).as_deref(),
        Some("origin-1")
    );
    cli.close().await;
    srv.close().await;
}

#[tokio::test]
async fn unknown_kind_remote_error_and_oversized_request_are_told_apart() {
    let ca = create_ca("test").unwrap();
    let srv = server(&ca, "origin-1", local());
    let cli = client(&ca, "origin-2");
    let addr = srv.local_addr();
    let err = cli
        .request(addr, 0x7fff, Bytes::new(), T)
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::UnknownKind(0x7fff)), "{err:?}");
    let err = cli.request(addr, FAIL, Bytes::new(), T).await.unwrap_err();
    match err {
        RpcError::Remote(e) => assert_eq!(e.code, "no_such_app"),
        other => panic!("{other:?}"),
    }
    let err = cli
        .request(addr, SMALL, Bytes::from(vec![7u8; 17]), T)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RpcError::Remote(e) if e.code == "frame_too_large"),
        "{err:?}"
    );
    // None of that hurt the connection.
    let ok = cli
        .request(addr, SMALL, Bytes::from_static(b"fits"), T)
        .await;
    assert_eq!(ok.unwrap(), Bytes::from_static(b"fits"));
    cli.close().await;
    srv.close().await;
}

#[tokio::test]
async fn a_client_of_another_ca_is_refused_and_the_server_keeps_serving() {
    let ca = create_ca("test").unwrap();
    let other = create_ca("test").unwrap();
    let srv = server(&ca, "origin-1", local());
    let intruder = client(&other, "origin-2");
    let err = intruder
        .request(srv.local_addr(), ECHO, Bytes::new(), T)
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
    // A client of the cluster also refuses a server of another CA.
    let foreign_srv = server(&other, "origin-9", local());
    let member = client(&ca, "origin-3");
    let err = member
        .request(foreign_srv.local_addr(), ECHO, Bytes::new(), T)
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
    let ok = member
        .request(srv.local_addr(), ECHO, Bytes::from_static(b"x"), T)
        .await
        .unwrap();
    assert_eq!(&ok[..], b"origin-3:x");
    for ep in [intruder, foreign_srv, member, srv] {
        ep.close().await;
    }
}

#[tokio::test]
async fn an_expected_peer_name_is_enforced() {
    let ca = create_ca("test").unwrap();
    let srv = server(&ca, "origin-1", local());
    let cli = client(&ca, "origin-2");
    cli.expect_peer(srv.local_addr(), Some("origin-5".into()));
    let err = cli
        .request(srv.local_addr(), ECHO, Bytes::new(), T)
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
    let cli2 = client(&ca, "origin-3");
    cli2.expect_peer(srv.local_addr(), Some("origin-1".into()));
    assert!(cli2
        .request(srv.local_addr(), ECHO, Bytes::new(), T)
        .await
        .is_ok());
    for ep in [cli, cli2, srv] {
        ep.close().await;
    }
}

#[tokio::test]
async fn garbage_datagrams_do_not_break_the_endpoint() {
    let ca = create_ca("test").unwrap();
    let srv = server(&ca, "origin-1", local());
    let cli = client(&ca, "origin-2");
    let addr = srv.local_addr();
    assert!(cli.request(addr, ECHO, Bytes::new(), T).await.is_ok());
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..500usize {
        // xorshift: varied lengths and contents, including QUIC-looking first bytes.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = 1 + (seed as usize % 1400);
        let mut packet: Vec<u8> = (0..len).map(|j| (seed >> (j % 56)) as u8).collect();
        packet[0] = [0xc0, 0x40, 0x00, 0xff][i % 4] | (packet[0] & 0x0f);
        junk.send_to(&packet, addr).unwrap();
    }
    let answer = cli
        .request(addr, ECHO, Bytes::from_static(b"still"), T)
        .await;
    assert_eq!(answer.unwrap(), Bytes::from_static(b"origin-2:still"));
    let fresh = client(&ca, "origin-3");
    assert!(fresh.request(addr, ECHO, Bytes::new(), T).await.is_ok());
    for ep in [cli, fresh, srv] {
        ep.close().await;
    }
}

#[tokio::test]
async fn a_down_server_is_unreachable_and_then_fails_fast() {
    let ca = create_ca("test").unwrap();
    // A bound but silent UDP port: nothing answers the handshake.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let cli = client(&ca, "origin-2");
    let started = Instant::now();
    let err = cli
        .request(addr, ECHO, Bytes::new(), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // The dial keeps going in the background; once it fails, requests fail fast in backoff.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let started = Instant::now();
        let err = cli.request(addr, ECHO, Bytes::new(), T).await.unwrap_err();
        assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
        if err.to_string().contains("backing off") {
            // No dial while backing off: the answer comes at once, far under the connect
            // timeout (3 s) a dial would take to fail (a loaded machine may delay it a little).
            assert!(started.elapsed() < Duration::from_secs(1));
            break;
        }
        assert!(Instant::now() < deadline, "never backed off: {err}");
    }
    cli.close().await;
}

#[tokio::test]
async fn a_handler_that_never_answers_is_a_network_error_after_the_timeout() {
    let ca = create_ca("test").unwrap();
    let srv = server(&ca, "origin-1", local());
    // Counts live handlers: each holds a guard that decrements when its future is dropped.
    let live = Arc::new(AtomicUsize::new(0));
    let counter = live.clone();
    srv.register(
        SILENT,
        service_fn(move |_, _| {
            counter.fetch_add(1, Ordering::SeqCst);
            let guard = Live(counter.clone());
            async move {
                let _guard = guard;
                futures::future::pending::<Result<Bytes, RemoteError>>().await
            }
        }),
    );
    let cli = client(&ca, "origin-2");
    let addr = srv.local_addr();
    assert!(cli.request(addr, ECHO, Bytes::new(), T).await.is_ok());
    let started = Instant::now();
    let err = cli
        .request(addr, SILENT, Bytes::new(), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Network { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // The server drops the handler of a caller that gave up.
    let deadline = Instant::now() + Duration::from_secs(5);
    while live.load(Ordering::SeqCst) != 0 {
        assert!(Instant::now() < deadline, "abandoned handler still running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(cli.request(addr, ECHO, Bytes::new(), T).await.is_ok());
    cli.close().await;
    srv.close().await;
}

struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_client_reconnects_after_the_server_restarts_on_its_port() {
    let ca = create_ca("test").unwrap();
    let srv_id = identity(&ca, "origin-1");
    let srv = server_with(&ca, &srv_id, local());
    let addr = srv.local_addr();
    let cli = client(&ca, "origin-2");
    assert!(cli.request(addr, ECHO, Bytes::new(), T).await.is_ok());
    srv.close().await;
    drop(srv);

    let deadline = Instant::now() + Duration::from_secs(10);
    let srv = loop {
        match Endpoint::bind(addr, &srv_id, CancellationToken::new()) {
            Ok(ep) => break ep,
            Err(e) => assert!(Instant::now() < deadline, "cannot rebind: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    register_echo(&srv);
    let started = Instant::now();
    loop {
        match cli
            .request(
                addr,
                ECHO,
                Bytes::from_static(b"again"),
                Duration::from_millis(500),
            )
            .await
        {
            Ok(answer) => {
                assert_eq!(&answer[..], b"origin-2:again");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "no reconnect: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The old process closed its connections, so the client redials at once.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    cli.close().await;
    srv.close().await;
}

fn server_with(_ca: &CaBundle, id: &NodeIdentity, addr: SocketAddr) -> Endpoint {
    let ep = Endpoint::bind(addr, id, CancellationToken::new()).unwrap();
    register_echo(&ep);
    ep
}

fn register_echo(ep: &Endpoint) {
    ep.register(
        ECHO,
        Arc::new(EchoService) as Arc<dyn streamhub_cluster::transport::RpcService>,
    );
}

/// The trait implemented directly, as a service with state would.
struct EchoService;

impl streamhub_cluster::transport::RpcService for EchoService {
    fn handle(
        &self,
        peer: streamhub_cluster::transport::PeerInfo,
        body: Bytes,
    ) -> futures::future::BoxFuture<'static, Result<Bytes, RemoteError>> {
        let mut out = format!("{}:", peer.name).into_bytes();
        out.extend_from_slice(&body);
        Box::pin(async move { Ok(Bytes::from(out)) })
    }
}

#[tokio::test]
async fn each_kind_admits_only_the_roles_it_declares() {
    let ca = create_ca("test").unwrap();
    let srv = server(&ca, "origin-1", local());
    srv.register(
        streamhub_cluster::transport::kinds::HEARTBEAT,
        service_fn(|peer, _| async move { Ok(Bytes::from(peer.role.as_str())) }),
    );
    let edge = Endpoint::bind(
        local(),
        &identity_as(&ca, "edge-1", "edge"),
        CancellationToken::new(),
    )
    .unwrap();
    let addr = srv.local_addr();
    // ECHO is not declared for edges: refused before its handler runs.
    match edge.request(addr, ECHO, Bytes::from_static(b"x"), T).await {
        Err(RpcError::Remote(e)) => assert_eq!(e.code, "forbidden", "{e:?}"),
        other => panic!("an edge reached an origin-only kind: {other:?}"),
    }
    // HEARTBEAT is for any node, and the handler sees the role from the certificate.
    let kind = streamhub_cluster::transport::kinds::HEARTBEAT;
    let answer = edge.request(addr, kind, Bytes::new(), T).await.unwrap();
    assert_eq!(&answer[..], b"edge");
    let origin = client(&ca, "origin-2");
    assert_eq!(
        &origin.request(addr, ECHO, Bytes::new(), T).await.unwrap()[..],
        b"origin-2:"
    );
    // A certificate with no known role is not served at all.
    let odd = Endpoint::bind(
        local(),
        &identity_as(&ca, "odd-1", "admin"),
        CancellationToken::new(),
    )
    .unwrap();
    assert!(odd.request(addr, kind, Bytes::new(), T).await.is_err());
    for ep in [edge, origin, odd, srv] {
        ep.close().await;
    }
}

#[tokio::test]
async fn a_revoked_certificate_loses_its_connections_and_every_new_handshake() {
    let ca = create_ca("test").unwrap();
    let srv = server(&ca, "origin-1", local());
    let cli = client(&ca, "origin-2");
    let keeper = client(&ca, "origin-3");
    let addr = srv.local_addr();
    assert!(cli.request(addr, ECHO, Bytes::new(), T).await.is_ok());
    assert!(keeper.request(addr, ECHO, Bytes::new(), T).await.is_ok());
    let conn = cli.connection(addr).await.unwrap();
    // Another certificate revoked: nothing happens to this one.
    srv.set_revoked([identity(&ca, "unused").fingerprint].into());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(conn.close_reason().is_none());
    // Revoke origin-2's certificate: its open connection is closed at once...
    let cli_fp = cli.fingerprint().to_string();
    srv.set_revoked([cli_fp.clone()].into());
    tokio::time::timeout(T, conn.closed())
        .await
        .expect("the open connection is closed");
    assert!(srv.is_revoked(&cli_fp));
    // ...and every new handshake fails, while other peers are untouched. (In TLS 1.3 the
    // server checks the client's certificate after the client thinks it is connected: the
    // client may see a lost connection rather than a failed dial.)
    for _ in 0..3 {
        assert!(cli.request(addr, ECHO, Bytes::new(), T).await.is_err());
    }
    if let Ok(conn) = cli.connection(addr).await {
        // The handshake "succeeded" here: the server's refusal names the revocation.
        let reason = tokio::time::timeout(T, conn.closed()).await.unwrap();
        assert!(reason.to_string().contains("Revoked"), "{reason}");
    }
    let fresh = client(&ca, "origin-2b");
    assert!(fresh.request(addr, ECHO, Bytes::new(), T).await.is_ok());
    assert!(keeper.request(addr, ECHO, Bytes::new(), T).await.is_ok());
    // A client refuses a server whose certificate it knows is revoked.
    let wary = client(&ca, "origin-4");
    wary.set_revoked([srv.fingerprint().to_string()].into());
    let err = wary.request(addr, ECHO, Bytes::new(), T).await.unwrap_err();
    assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
    for ep in [cli, keeper, fresh, wary, srv] {
        ep.close().await;
    }
}
