//! The relay between two TCP connections, on every OS: splice(2) on Linux,
//! the copying relay elsewhere (Windows, where `cargo xtask test` runs this
//! under Wine). Bytes arrive intact both ways at once, and a half-close
//! passes through while the other direction keeps flowing.

use hoist_net::{relay, Moved, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A connected pair on loopback.
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    (c, l.accept().await.unwrap().0)
}

#[tokio::test]
async fn tcp_to_tcp_carries_both_ways_and_passes_half_close_on() {
    // left <-> [a | relay | b] <-> right
    let ((mut left, a), (b, mut right)) = (pair().await, pair().await);
    let task = tokio::spawn(relay(Stream::Tcp(a), Stream::Tcp(b)));
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    let (mut lr, mut lw) = left.split();
    let (mut rr, mut rw) = right.split();
    let (mut got_r, mut got_l) = (Vec::new(), Vec::new());
    let send_l = async {
        lw.write_all(&big).await.unwrap();
        lw.shutdown().await.unwrap();
    };
    // The right side answers only after the left's FIN arrived.
    let right_side = async {
        rr.read_to_end(&mut got_r).await.unwrap();
        rw.write_all(b"after your FIN").await.unwrap();
        rw.shutdown().await.unwrap();
    };
    let recv_l = lr.read_to_end(&mut got_l);
    let (_, _, n) = tokio::join!(send_l, right_side, recv_l);
    n.unwrap();
    assert!(got_r == big, "left -> right intact");
    assert_eq!(got_l, b"after your FIN");
    let moved = task.await.unwrap().unwrap();
    assert_eq!(moved, Moved { a_to_b: 2_000_000, b_to_a: 14 });
}
