//! bare-chain: the bench's yardstick for issue 9, not part of hoist. One
//! hop of a two-hop relay chain with nothing but the bytes: no framing, no
//! opening, no pool (a new connection to the next hop per client), one
//! thread, every socket operation batched through one io_uring (the
//! direction the issue asks to measure). Two of them, one on the host and
//! one in the guest, are the least any relay with hoist's shape costs here:
//! `cargo xtask bench --only floor` compares hoist with them.
//!
//! usage: bare-chain --listen tcp:127.0.0.1:8080 --dial unix:/run/chain.sock

#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

#[cfg(target_os = "linux")]
mod pair;
#[cfg(target_os = "linux")]
mod sys;

use anyhow::{bail, Context, Result};

#[derive(clap::Parser)]
struct Args {
    /// Where to accept clients: tcp:ADDR:PORT or unix:PATH.
    #[arg(long)]
    listen: String,
    /// Where to carry each client: tcp:ADDR:PORT or unix:PATH.
    #[arg(long)]
    dial: String,
}

#[cfg(target_os = "linux")]
fn parse(s: &str) -> Result<sys::Addr> {
    if let Some(a) = s.strip_prefix("tcp:") {
        return Ok(sys::Addr::Tcp(a.parse().with_context(|| format!("bad TCP address {a:?}"))?));
    }
    if let Some(p) = s.strip_prefix("unix:") {
        return Ok(sys::Addr::Unix(p.into()));
    }
    bail!("{s:?}: expected tcp:ADDR:PORT or unix:PATH")
}

#[cfg(target_os = "linux")]
fn main() -> Result<()> {
    let args: Args = clap::Parser::parse();
    let (listen, dial) = (parse(&args.listen)?, parse(&args.dial)?);
    let listener = sys::listen(&listen).with_context(|| format!("listening on {}", args.listen))?;
    serve(&listener, &dial)
}

#[cfg(not(target_os = "linux"))]
fn main() -> Result<()> {
    let _: Args = clap::Parser::parse();
    bail!("bare-chain runs on Linux only (io_uring)")
}

/// Relays every client of `listener` to `dial`, forever.
#[cfg(target_os = "linux")]
fn serve(listener: &std::os::fd::OwnedFd, dial: &sys::Addr) -> Result<()> {
    use pair::Pair;
    let mut ring = sys::Ring::new().context("setting up io_uring")?;
    ring.accept(listener)?;
    // Slots hold the pairs' buffers (boxed: the kernel points into them).
    let mut slots: Vec<Option<(Pair, Box<sys::Slot>)>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut done = Vec::new();
    loop {
        done.clear();
        ring.complete(&mut done).context("waiting for io_uring completions")?;
        for &(ud, res, flags) in &done {
            if ud == sys::ACCEPT {
                if !sys::more(flags) {
                    ring.accept(listener)?;
                }
                if res < 0 {
                    eprintln!("bare-chain: accept: {}", std::io::Error::from_raw_os_error(-res));
                    continue;
                }
                let slot = match sys::slot(sys::own(res), dial) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("bare-chain: a socket for {dial:?}: {e}");
                        continue;
                    }
                };
                let i = free.pop().unwrap_or_else(|| {
                    slots.push(None);
                    slots.len() - 1
                });
                ring.connect(i, &slot)?;
                slots[i] = Some((Pair::dialling(), slot));
                continue;
            }
            let (i, event) =
                sys::untag(ud, res).with_context(|| format!("unknown completion {ud:#x}"))?;
            let (pair, slot) = slots[i].as_mut().context("a completion for a freed pair")?;
            let next = pair.on(event);
            for op in next.ops {
                ring.submit_op(i, slot, op)?;
            }
            if next.done {
                slots[i] = None;
                free.push(i);
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::time::Duration;

    /// A hop from a new TCP listener to `dial`; its address.
    fn hop(dial: sys::Addr) -> std::net::SocketAddr {
        let front = sys::listen(&sys::Addr::Tcp("127.0.0.1:0".parse().unwrap())).unwrap();
        let addr = socket2::SockRef::from(&front).local_addr().unwrap().as_socket().unwrap();
        std::thread::spawn(move || serve(&front, &dial).map_err(|e| eprintln!("hop: {e:#}")));
        addr
    }

    /// A chain of two hops (TCP -> Unix -> TCP) in front of `server`; the
    /// address clients connect to.
    fn chain(server: std::net::SocketAddr) -> std::net::SocketAddr {
        let dir = std::env::temp_dir().join(format!("bare-chain-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let unix = sys::Addr::Unix(dir.join(format!("{}.sock", server.port())));
        let guest = sys::listen(&unix).unwrap();
        let dial = sys::Addr::Tcp(server);
        std::thread::spawn(move || serve(&guest, &dial).map_err(|e| eprintln!("hop: {e:#}")));
        hop(unix)
    }

    fn client(addr: std::net::SocketAddr) -> TcpStream {
        let c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c
    }

    #[test]
    fn bytes_and_ends_cross_the_chain_whole() {
        // An echo server that closes after echoing everything.
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = chain(server.local_addr().unwrap());
        std::thread::spawn(move || {
            for c in server.incoming() {
                let mut c = c.unwrap();
                std::thread::spawn(move || {
                    let mut r = c.try_clone().unwrap();
                    std::io::copy(&mut r, &mut c).unwrap();
                });
            }
        });
        for len in [1usize, 5000, 16 * 1024, 1 << 20] {
            let mut c = client(addr);
            let sent: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut w = c.try_clone().unwrap();
            let data = sent.clone();
            let writer = std::thread::spawn(move || {
                w.write_all(&data).unwrap();
                w.shutdown(Shutdown::Write).unwrap();
            });
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            writer.join().unwrap();
            assert_eq!(got.len(), len, "{len} bytes: length back");
            assert!(got == sent, "{len} bytes: content back");
        }
    }

    // Resets are passed on as resets by a TCP -> TCP hop. Across a Unix
    // socket a reset reads as an end: a bare chain has no way to say which
    // (hoist's segments do).
    #[test]
    fn a_reset_crosses_a_hop_as_a_reset() {
        // A server that reads a byte and resets.
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = hop(sys::Addr::Tcp(server.local_addr().unwrap()));
        std::thread::spawn(move || {
            for c in server.incoming() {
                let mut c = c.unwrap();
                let _ = c.read(&mut [0u8; 1]);
                socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO)).unwrap();
            }
        });
        let mut c = client(addr);
        c.write_all(b"x").unwrap();
        let e = c.read(&mut [0u8; 16]).expect_err("a reset, not an end");
        assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    }

    #[test]
    fn a_client_of_a_missing_server_is_reset() {
        let gone = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = hop(sys::Addr::Tcp(gone.local_addr().unwrap()));
        drop(gone);
        let mut c = client(addr);
        let e = c.read(&mut [0u8; 16]).expect_err("a reset, not an end");
        assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    }
}
