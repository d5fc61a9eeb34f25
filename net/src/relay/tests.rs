//! The relay end to end, in process: a client, the host's relay, a data
//! connection (a Unix socket pair), the agent's relay, a server; each test
//! runs the splicing and the copying relay.

use super::*;
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};
use tokio::task::JoinHandle;

type Ends = JoinHandle<Result<Moved, RelayError>>;

/// Relays over an owned data connection, for tests that do not reuse it.
async fn run_once(
    tcp: TcpStream,
    data: Stream,
    early: BytesMut,
    opening: Opening<'static>,
    splice: bool,
) -> Result<Moved, RelayError> {
    let mut data = data;
    run(tcp, &mut data, early, opening, &Traffic::default(), splice).await.map(|r| r.moved)
}

/// A relay over the Unix socket `ua`, in a task of its own.
fn spawned(tcp: TcpStream, ua: UnixStream, opening: Opening<'static>, splice: bool) -> Ends {
    tokio::spawn(run_once(tcp, Stream::Unix(ua), BytesMut::new(), opening, splice))
}

/// The host's relay on a fresh data connection, nothing to open with (its
/// `Open` sent already) and the agent's answer awaited (pipelined).
fn awaiting(tcp: TcpStream, ua: UnixStream, splice: bool) -> Ends {
    spawned(tcp, ua, Opening::Awaited { open: &[] }, splice)
}

/// A connected TCP pair.
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    (a, b)
}

/// client <-> [host's relay] <-> unix pair <-> [agent's relay] <-> server,
/// the agent's answer in band as in hoist.
async fn chain(splice: bool) -> (TcpStream, TcpStream, Ends, Ends) {
    let (client, host_side) = tcp_pair().await;
    let (agent_side, server) = tcp_pair().await;
    let (ua, ub) = UnixStream::pair().unwrap();
    let host = awaiting(host_side, ua, splice);
    let agent = spawned(agent_side, ub, Opening::Announce, splice);
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
            let relay = spawned(tcp, ua, Opening::None, splice);
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
        let relay = tokio::spawn(run_once(tcp, Stream::Unix(ua), early, Opening::None, splice));
        ub.write_all(&[4, 0, 0, 0, 4]).await.unwrap();
        ub.write_all(b"late").await.unwrap();
        let mut got = [0u8; 9];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"earlylate");
        drop((client, ub));
        let _ = relay.await.unwrap();
    }
}

/// The host's end relays the client's bytes before the agent's answer
/// (pipelined); `Opened` lets the relay go on, `Refused` resets the client
/// and says why.
#[tokio::test]
async fn the_agents_answer_opens_or_refuses() {
    for splice in modes() {
        // Opened: the client's request went out before it, the reply follows.
        let (mut client, tcp) = tcp_pair().await;
        let (mut ua, mut ub) = UnixStream::pair().unwrap();
        let host = awaiting(tcp, ua, splice);
        client.write_all(b"GET").await.unwrap();
        let mut req = [0u8; 8];
        ub.read_exact(&mut req).await.unwrap();
        assert_eq!(&req, &[4, 0, 0, 0, 3, b'G', b'E', b'T'], "relayed before the answer");
        ub.write_all(&hoist_wire::SegmentHeader::new(hoist_wire::SegmentKind::Opened, 0).encode())
            .await
            .unwrap();
        ub.write_all(&[4, 0, 0, 0, 2, b'o', b'k', 5, 0, 0, 0, 0]).await.unwrap();
        let mut reply = [0u8; 2];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"ok");
        client.shutdown().await.unwrap();
        let mut fin = [0u8; 5];
        ub.read_exact(&mut fin).await.unwrap();
        assert_eq!(fin, [5, 0, 0, 0, 0]);
        assert_eq!(host.await.unwrap().unwrap(), Moved { sent: 3, received: 2 });

        // Refused: the client is reset, the reason comes back typed.
        let (mut client, tcp) = tcp_pair().await;
        (ua, ub) = UnixStream::pair().unwrap();
        let host = awaiting(tcp, ua, splice);
        let mut ub = ub;
        ub.write_all(&hoist_wire::refused_segment(hoist_wire::Refusal::NotListening, "gone"))
            .await
            .unwrap();
        assert_eq!(
            read_until_end(&mut client).await,
            Some(io::ErrorKind::ConnectionReset),
            "splice {splice}"
        );
        match host.await.unwrap() {
            Err(RelayError::Refused(hoist_wire::Refusal::NotListening, reason)) => {
                assert_eq!(reason, "gone")
            }
            other => panic!("{other:?}"),
        }
    }
}

/// After a clean end the data connection carries the next connection, even
/// when the next one's first segments were read together with this one's
/// last: they come back as leftover.
#[tokio::test]
async fn a_data_connection_carries_one_connection_after_another() {
    for splice in modes() {
        let (ua, mut ub) = UnixStream::pair().unwrap();
        let mut data = Stream::Unix(ua);
        let mut early = BytesMut::new();
        for round in 0..3u8 {
            let (mut client, tcp) = tcp_pair().await;
            // The peer's bytes, its Fin, and (after round 0) the start of
            // the next connection, all at once.
            let mut wire = vec![4, 0, 0, 0, 1, b'a' + round, 5, 0, 0, 0, 0];
            wire.extend_from_slice(&[4, 0, 0, 0, 1, b'z']);
            ub.write_all(&wire[..11]).await.unwrap();
            let traffic = Traffic::default();
            let relay =
                run(tcp, &mut data, std::mem::take(&mut early), Opening::None, &traffic, splice);
            let peer = async {
                let mut got = [0u8; 1];
                client.read_exact(&mut got).await.unwrap();
                assert_eq!(got[0], b'a' + round);
                client.shutdown().await.unwrap();
                let mut rest = Vec::new();
                client.read_to_end(&mut rest).await.unwrap();
                // The client's Fin reaches the peer, which then starts the
                // next connection at once.
                let mut fin = [0u8; 5];
                ub.read_exact(&mut fin).await.unwrap();
                assert_eq!(fin, [5, 0, 0, 0, 0]);
            };
            let (r, ()) = tokio::join!(relay, peer);
            let r = r.unwrap();
            assert_eq!(r.moved, Moved { sent: 0, received: 1 }, "round {round}");
            early = r.leftover;
        }
    }
}

/// Reads `Bytes` segments until they carried `n` bytes; returns those.
async fn payload(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < n {
        let mut h = [0u8; 5];
        s.read_exact(&mut h).await.unwrap();
        assert_eq!(h[0], 4, "a Bytes segment");
        let len = u32::from_be_bytes(h[1..].try_into().unwrap()) as usize;
        let at = out.len();
        out.resize(at + len, 0);
        s.read_exact(&mut out[at..]).await.unwrap();
    }
    out
}

/// The host's opening goes out at once: in front of the client's first
/// bytes when they are there already (one segment stream, whatever the
/// size), alone when the client waits for the server to speak first, and in
/// front of the `Fin` of a client that only closed. A client reset before
/// any of it went out costs the agent nothing: not even a `Reset`.
#[tokio::test]
async fn the_hosts_opening_goes_out_at_once() {
    const OPEN: &[u8] = b"<open>";
    for splice in modes() {
        for sent in [&b"GET /"[..], &[7u8; 5000][..], b"", b"close"] {
            let (mut client, tcp) = tcp_pair().await;
            let (ua, mut ub) = UnixStream::pair().unwrap();
            if sent == b"close" {
                client.shutdown().await.unwrap();
            } else {
                client.write_all(sent).await.unwrap();
            }
            // The client's bytes are in the host's socket before the relay
            // starts, as they are when a client speaks first.
            tokio::task::yield_now().await;
            let host = tokio::spawn(async move {
                let mut data = Stream::Unix(ua);
                let opening = Opening::Awaited { open: OPEN };
                run(tcp, &mut data, BytesMut::new(), opening, &Traffic::default(), splice)
                    .await
                    .map(|r| r.moved)
            });
            let label = format!("{} bytes sent, splice {splice}", sent.len());
            let mut open = [0u8; OPEN.len()];
            ub.read_exact(&mut open).await.unwrap();
            assert_eq!(open, OPEN, "{label}");
            match sent {
                b"" => {}
                b"close" => {
                    let mut fin = [0u8; 5];
                    ub.read_exact(&mut fin).await.unwrap();
                    assert_eq!(fin, [5, 0, 0, 0, 0], "{label}");
                }
                bytes => assert!(payload(&mut ub, bytes.len()).await == bytes, "{label}"),
            }
            drop((client, ub));
            let _ = host.await.unwrap();
        }
    }
    // Reset before anything went out: the data connection carries nothing.
    for splice in modes() {
        let (client, tcp) = tcp_pair().await;
        let (ua, mut ub) = UnixStream::pair().unwrap();
        reset(client);
        tokio::task::yield_now().await;
        let host = tokio::spawn(async move {
            let mut data = Stream::Unix(ua);
            let opening = Opening::Awaited { open: OPEN };
            run(tcp, &mut data, BytesMut::new(), opening, &Traffic::default(), splice).await
        });
        assert!(matches!(host.await.unwrap(), Err(RelayError::Local(_))), "splice {splice}");
        let mut rest = Vec::new();
        ub.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}, splice {splice}");
    }
}

/// The agent's answer may come late: it rides with the guest server's first
/// segment, so a server that is silent for long (a long poll, a protocol
/// where the client speaks first and then waits) is not cut off; the
/// client's bytes go out meanwhile.
#[tokio::test(start_paused = true)]
async fn the_agents_answer_may_come_late() {
    for splice in modes() {
        let (mut client, tcp) = tcp_pair().await;
        let (ua, mut ub) = UnixStream::pair().unwrap();
        let host = awaiting(tcp, ua, splice);
        client.write_all(b"GET").await.unwrap();
        let mut req = [0u8; 8];
        ub.read_exact(&mut req).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!host.is_finished(), "still waiting after an hour (splice {splice})");
        ub.write_all(&[2, 0, 0, 0, 0, 4, 0, 0, 0, 2, b'o', b'k', 5, 0, 0, 0, 0]).await.unwrap();
        let mut reply = [0u8; 2];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"ok");
        client.shutdown().await.unwrap();
        assert_eq!(host.await.unwrap().unwrap(), Moved { sent: 3, received: 2 });
    }
}

/// The agent's end sends `Opened` in front of its first segment, whatever
/// that is (the server's bytes, its end, its reset), and never again; a
/// server that answers and closes has its bytes and its end relayed whole.
#[tokio::test]
async fn the_agents_end_announces_with_its_first_segment() {
    const OPENED: [u8; 5] = [2, 0, 0, 0, 0];
    const FIN: [u8; 5] = [5, 0, 0, 0, 0];
    for splice in modes() {
        // (case, what the server does at once, what the host reads first)
        type Act = fn(TcpStream) -> Option<TcpStream>;
        let cases: [(&str, Act, &[u8]); 3] = [
            ("bytes", |s| Some(s), &[4, 0, 0, 0, 2, b'h', b'i']),
            ("end", |s| Some(s), &FIN),
            (
                "reset",
                |s| {
                    reset(s);
                    None
                },
                &[6, 0, 0, 0, 0],
            ),
        ];
        for (name, act, want) in cases {
            let (agent_side, mut server) = tcp_pair().await;
            let (ua, mut ub) = UnixStream::pair().unwrap();
            match name {
                "bytes" => server.write_all(b"hi").await.unwrap(),
                "end" => server.shutdown().await.unwrap(),
                _ => {}
            }
            let server = act(server);
            let agent = spawned(agent_side, ua, Opening::Announce, splice);
            let mut got = vec![0u8; OPENED.len() + want.len()];
            tokio::time::timeout(Duration::from_secs(10), ub.read_exact(&mut got))
                .await
                .unwrap_or_else(|_| panic!("{name}: nothing within 10 s (splice {splice})"))
                .unwrap();
            assert_eq!(&got[..5], &OPENED, "{name}, splice {splice}");
            assert_eq!(&got[5..], want, "{name}, splice {splice}");
            let Some(mut server) = server else {
                assert!(matches!(agent.await.unwrap(), Err(RelayError::Local(_))));
                continue;
            };
            // The second segment comes without an `Opened`.
            if name == "bytes" {
                server.shutdown().await.unwrap();
                let mut fin = [0u8; 5];
                ub.read_exact(&mut fin).await.unwrap();
                assert_eq!(fin, FIN, "{name}, splice {splice}");
            }
            ub.write_all(&FIN).await.unwrap();
            let mut rest = Vec::new();
            server.read_to_end(&mut rest).await.unwrap();
            assert_eq!(agent.await.unwrap().unwrap().sent, 2 * u64::from(name == "bytes"));
        }
    }
}

/// A server that answers and closes at once: the reply and the end reach
/// the client whole, in order, however the two are read.
#[tokio::test]
async fn a_reply_and_its_end_cross_whole() {
    for splice in modes() {
        for size in [1usize, 100, 2047, 2048, 2049, 70_000] {
            let (mut client, mut server, host, agent) = chain(splice).await;
            client.write_all(b"GET").await.unwrap();
            let mut req = [0u8; 3];
            server.read_exact(&mut req).await.unwrap();
            let reply: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
            server.write_all(&reply).await.unwrap();
            drop(server);
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            assert!(got == reply, "size {size}, splice {splice}");
            drop(client);
            assert_eq!(host.await.unwrap().unwrap().received, size as u64);
            assert_eq!(agent.await.unwrap().unwrap().sent, size as u64);
        }
    }
}

/// Bytes are counted as they move, while the connection is still open: a
/// status view shows live connections, not only finished ones.
#[tokio::test]
async fn traffic_is_counted_as_it_moves() {
    for splice in modes() {
        let (mut client, tcp) = tcp_pair().await;
        let (ua, mut ub) = UnixStream::pair().unwrap();
        let traffic = std::sync::Arc::new(Traffic::default());
        let t = traffic.clone();
        let relay = tokio::spawn(async move {
            let mut data = Stream::Unix(ua);
            run(tcp, &mut data, BytesMut::new(), Opening::None, &t, splice).await.map(|r| r.moved)
        });
        client.write_all(b"abc").await.unwrap();
        let mut seg = [0u8; 8];
        ub.read_exact(&mut seg).await.unwrap();
        ub.write_all(&[4, 0, 0, 0, 2, b'o', b'k']).await.unwrap();
        let mut reply = [0u8; 2];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(traffic.sent.load(Ordering::Relaxed), 3, "splice {splice}");
        assert_eq!(traffic.received.load(Ordering::Relaxed), 2, "splice {splice}");
        drop((client, ub));
        let _ = relay.await.unwrap();
    }
}
