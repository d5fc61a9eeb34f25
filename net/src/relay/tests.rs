//! The relay end to end, in process: a client, the host's relay, a data
//! connection (a Unix socket pair), the agent's relay, a server; each test
//! runs the splicing and the copying relay.

use super::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};
use tokio::task::JoinHandle;

type Ends = JoinHandle<Result<Moved, RelayError>>;

/// A connected TCP pair.
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    (a, b)
}

/// client <-> [relay] <-> unix pair <-> [relay] <-> server.
async fn chain(splice: bool) -> (TcpStream, TcpStream, Ends, Ends) {
    let (client, host_side) = tcp_pair().await;
    let (agent_side, server) = tcp_pair().await;
    let (ua, ub) = UnixStream::pair().unwrap();
    let host = tokio::spawn(run(host_side, Stream::Unix(ua), BytesMut::new(), splice));
    let agent = tokio::spawn(run(agent_side, Stream::Unix(ub), BytesMut::new(), splice));
    (client, server, host, agent)
}

fn modes() -> [bool; 2] {
    [cfg!(target_os = "linux"), false]
}

#[tokio::test]
async fn bytes_and_half_close_cross_both_ways() {
    for splice in modes() {
        let (mut client, mut server, host, agent) = chain(splice).await;
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        let up = async {
            cw.write_all(&big).await.unwrap();
            cw.shutdown().await.unwrap();
        };
        let down = async {
            sw.write_all(&big[..1_000_000]).await.unwrap();
            sw.shutdown().await.unwrap();
        };
        let (mut at_server, mut at_client) = (Vec::new(), Vec::new());
        let (_, _, a, b) =
            tokio::join!(up, down, sr.read_to_end(&mut at_server), cr.read_to_end(&mut at_client));
        a.unwrap();
        b.unwrap();
        assert!(at_server == big, "client -> server intact (splice {splice})");
        assert!(at_client == big[..1_000_000], "server -> client intact (splice {splice})");
        assert_eq!(host.await.unwrap().unwrap(), Moved { sent: 3_000_000, received: 1_000_000 });
        assert_eq!(agent.await.unwrap().unwrap(), Moved { sent: 1_000_000, received: 3_000_000 });
    }
}

#[tokio::test]
async fn one_side_may_keep_talking_after_the_other_half_closes() {
    for splice in modes() {
        let (mut client, mut server, host, agent) = chain(splice).await;
        client.shutdown().await.unwrap();
        let mut b = [0u8; 1];
        assert_eq!(server.read(&mut b).await.unwrap(), 0, "FIN arrived");
        server.write_all(b"reply after FIN").await.unwrap();
        drop(server);
        let mut got = String::new();
        client.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "reply after FIN");
        host.await.unwrap().unwrap();
        agent.await.unwrap().unwrap();
    }
}

fn reset(s: TcpStream) {
    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
    drop(s);
}

/// Reads until an error or the end; returns the error kind, or None for a
/// clean end.
async fn read_until_end(s: &mut TcpStream) -> Option<io::ErrorKind> {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("an end within 10 s")
        {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => return Some(e.kind()),
        }
    }
}

/// A server that aborts mid-response is an abort for the client, and a
/// client that aborts is one for the server: never a clean, truncated end.
#[tokio::test]
async fn a_reset_on_either_side_arrives_as_a_reset() {
    for splice in modes() {
        let (mut client, mut server, host, agent) = chain(splice).await;
        client.write_all(b"GET /").await.unwrap();
        let mut req = [0u8; 5];
        server.read_exact(&mut req).await.unwrap();
        server.write_all(b"partial respo").await.unwrap();
        reset(server);
        assert_eq!(
            read_until_end(&mut client).await,
            Some(io::ErrorKind::ConnectionReset),
            "splice {splice}"
        );
        assert!(matches!(agent.await.unwrap(), Err(RelayError::Local(_))));
        assert!(matches!(host.await.unwrap(), Err(RelayError::Peer(_))));

        let (client, mut server, host, agent) = chain(splice).await;
        reset(client);
        assert_eq!(
            read_until_end(&mut server).await,
            Some(io::ErrorKind::ConnectionReset),
            "splice {splice}"
        );
        assert!(matches!(host.await.unwrap(), Err(RelayError::Local(_))));
        assert!(matches!(agent.await.unwrap(), Err(RelayError::Peer(_))));
    }
}

/// A data connection that ends without its Fin (the peer died) resets the
/// TCP side; a segment stream that makes no sense does too.
#[tokio::test]
async fn a_data_connection_that_dies_or_lies_resets_the_tcp_side() {
    let garbage = [9u8, 0, 0, 0, 0];
    let half_header = [4u8, 0];
    let fin_twice = [5u8, 0, 0, 0, 0, 5, 0, 0, 0, 0];
    // (case, segments the peer sends before it goes away, whether the
    // client still sees a reset: after a Fin it has seen its clean end).
    let cases = [
        ("dies", &[][..], true),
        ("garbage", &garbage[..], true),
        ("half a header", &half_header[..], true),
        ("two fins", &fin_twice[..], false),
    ];
    for splice in modes() {
        for (name, wire, client_reset) in cases {
            let (mut client, tcp) = tcp_pair().await;
            let (ua, mut ub) = UnixStream::pair().unwrap();
            let relay = tokio::spawn(run(tcp, Stream::Unix(ua), BytesMut::new(), splice));
            ub.write_all(wire).await.unwrap();
            drop(ub);
            let want = client_reset.then_some(io::ErrorKind::ConnectionReset);
            assert_eq!(read_until_end(&mut client).await, want, "{name}, splice {splice}");
            assert!(relay.await.unwrap().is_err(), "{name}, splice {splice}");
        }
    }
}

/// Segment bytes a handshake already read are relayed first.
#[tokio::test]
async fn early_bytes_come_first() {
    for splice in modes() {
        let (mut client, tcp) = tcp_pair().await;
        let (ua, mut ub) = UnixStream::pair().unwrap();
        let mut early = BytesMut::new();
        early.extend_from_slice(
            &hoist_wire::SegmentHeader::new(hoist_wire::SegmentKind::Bytes, 5).encode(),
        );
        early.extend_from_slice(b"early");
        let relay = tokio::spawn(run(tcp, Stream::Unix(ua), early, splice));
        ub.write_all(&[4, 0, 0, 0, 4]).await.unwrap();
        ub.write_all(b"late").await.unwrap();
        let mut got = [0u8; 9];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"earlylate");
        drop((client, ub));
        let _ = relay.await.unwrap();
    }
}
