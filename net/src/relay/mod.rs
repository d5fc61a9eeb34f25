//! The one full-duplex byte relay, used by the host (client <-> agent) and the
//! agent (host <-> guest server). Both directions are driven by one future, so
//! a peer that writes without reading cannot deadlock the other direction; an
//! end of stream in one direction becomes a write shutdown (FIN) on the other
//! side while the opposite direction keeps flowing; an error closes both
//! sides, as resets where the transport has them. Memory per connection is
//! bounded, whatever the peers' speeds.
//!
//! On Linux, between TCP and Unix sockets the bytes move with splice(2)
//! (`splice`); other transports (vsock), and every transport on Windows,
//! copy through fixed buffers (`copy`).

mod copy;
#[cfg(target_os = "linux")]
mod splice;

use crate::transport::Stream;
use std::io;

/// Bytes moved each way by a finished relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    /// From the first stream to the second.
    pub a_to_b: u64,
    /// From the second stream to the first.
    pub b_to_a: u64,
}

/// Relays until both directions have ended.
pub async fn relay(mut a: Stream, mut b: Stream) -> io::Result<Moved> {
    #[cfg(target_os = "linux")]
    let r = match (a.fd().is_some(), b.fd().is_some()) {
        (true, true) => splice::relay(&a, &b).await,
        _ => copy::relay(&mut a, &mut b).await,
    };
    #[cfg(not(target_os = "linux"))]
    let r = copy::relay(&mut a, &mut b).await;
    if r.is_err() {
        a.set_reset_on_close();
        b.set_reset_on_close();
    }
    r
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream, UnixStream};

    /// A TCP pair and a Unix pair, relayed:
    /// tcp_client <-> [tcp_server | relay | unix_a] <-> unix_b.
    async fn rig() -> (TcpStream, UnixStream, tokio::task::JoinHandle<io::Result<Moved>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        let (ua, ub) = UnixStream::pair().unwrap();
        let task = tokio::spawn(relay(Stream::Tcp(server), Stream::Unix(ua)));
        (client, ub, task)
    }

    #[tokio::test]
    async fn bytes_and_half_close_cross_both_ways() {
        let (mut tcp, mut unix, task) = rig().await;
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut tr, mut tw) = tcp.split();
        let (mut ur, mut uw) = unix.split();
        let send_tcp = async {
            tw.write_all(&big).await.unwrap();
            tw.shutdown().await.unwrap();
        };
        let send_unix = async {
            uw.write_all(&big[..1_000_000]).await.unwrap();
            uw.shutdown().await.unwrap();
        };
        let (mut got_u, mut got_t) = (Vec::new(), Vec::new());
        let recv_unix = ur.read_to_end(&mut got_u);
        let recv_tcp = tr.read_to_end(&mut got_t);
        let (_, _, a, b) = tokio::join!(send_tcp, send_unix, recv_unix, recv_tcp);
        a.unwrap();
        b.unwrap();
        assert!(got_u == big, "tcp -> unix intact");
        assert!(got_t == big[..1_000_000], "unix -> tcp intact");
        assert_eq!(task.await.unwrap().unwrap(), Moved { a_to_b: 3_000_000, b_to_a: 1_000_000 });
    }

    #[tokio::test]
    async fn one_side_may_keep_talking_after_the_other_half_closes() {
        let (mut tcp, mut unix, task) = rig().await;
        tcp.shutdown().await.unwrap();
        let mut b = [0u8; 1];
        assert_eq!(unix.read(&mut b).await.unwrap(), 0, "FIN arrived");
        unix.write_all(b"reply after FIN").await.unwrap();
        drop(unix);
        let mut got = String::new();
        tcp.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "reply after FIN");
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_reset_ends_the_relay_with_an_error_and_resets_the_other_side() {
        let (tcp, mut unix, task) = rig().await;
        unix.write_all(b"x").await.unwrap();
        // Reset the TCP client while the relay has data for it.
        socket2::SockRef::from(&tcp).set_linger(Some(std::time::Duration::ZERO)).unwrap();
        drop(tcp);
        let r = task.await.unwrap();
        // Either direction may notice first; both mean the relay is over.
        if let Ok(m) = &r {
            assert_eq!(m.a_to_b, 0);
        }
        let mut rest = Vec::new();
        let _ = unix.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
    }
}
