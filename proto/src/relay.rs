//! The one full-duplex byte relay, used by the host (client <-> agent) and the
//! agent (host <-> guest server). Both directions are driven by one future, so
//! a peer that writes without reading cannot deadlock the other direction; an
//! end of stream in one direction becomes a write shutdown (FIN) on the other
//! side while the opposite direction keeps flowing; an error closes both
//! sides, as resets where the transport has them.
//!
//! Between TCP and Unix sockets the bytes never enter this process: each
//! direction moves them socket -> pipe -> socket with splice(2), so the
//! kernel hands pages along instead of copying them through user buffers.
//! Other transports (vsock) use a copy with fixed buffers. Either way memory
//! per connection is bounded, whatever the peers' speeds.

use crate::transport::Stream;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use tokio::io::Interest;

/// Bytes buffered per direction by the copying relay.
pub const BUF_SIZE: usize = 16 * 1024;

/// Capacity asked for each splice pipe. Pages are only held while data is in
/// flight, so an idle connection costs no pipe memory.
const PIPE_SIZE: i32 = 1 << 20;

/// Bytes moved each way by a finished relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

/// Relays until both directions have ended.
pub async fn relay(mut a: Stream, mut b: Stream) -> io::Result<Moved> {
    let r = if a.raw_fd().is_some() && b.raw_fd().is_some() {
        spliced(&a, &b).await
    } else {
        tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, BUF_SIZE, BUF_SIZE)
            .await
            .map(|(a_to_b, b_to_a)| Moved { a_to_b, b_to_a })
    };
    if r.is_err() {
        a.set_reset_on_close();
        b.set_reset_on_close();
    }
    r
}

async fn spliced(a: &Stream, b: &Stream) -> io::Result<Moved> {
    let (a_to_b, b_to_a) = tokio::try_join!(one_way(a, b), one_way(b, a))?;
    Ok(Moved { a_to_b, b_to_a })
}

struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptors owned by nobody else.
        let p = unsafe { Pipe { r: OwnedFd::from_raw_fd(fds[0]), w: OwnedFd::from_raw_fd(fds[1]) } };
        // Best effort: a larger pipe means fewer system calls per byte.
        // SAFETY: fcntl on our own descriptor.
        unsafe { libc::fcntl(p.w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        Ok(p)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain descriptors; no user memory is involved.
    let n = unsafe {
        libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK)
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Bytes read per system call before a direction turns to splice.
const SMALL: usize = 2048;

fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for its length; MSG_NOSIGNAL keeps a closed peer
    // from raising SIGPIPE.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One non-blocking operation on `s`, waiting for readiness as needed.
async fn io_op(s: &Stream, interest: Interest, mut f: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        s.ready(interest).await?;
        match s.try_io(interest, &mut f) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// Moves `src`'s bytes to `dst` until `src` ends, then shuts `dst`'s write
/// side: the FIN travels on while the other direction goes on. Small
/// exchanges (a request, a reply) go through a small buffer; once a read
/// fills it the direction is bulk and turns to splice, whose pipe would cost
/// more than it saves on a short connection.
async fn one_way(src: &Stream, dst: &Stream) -> io::Result<u64> {
    let (sfd, dfd) = (src.raw_fd().unwrap(), dst.raw_fd().unwrap());
    let mut total = 0u64;
    let mut pipe: Option<Pipe> = None;
    let mut buf = [0u8; SMALL];
    loop {
        let n = match &pipe {
            None => {
                let n = io_op(src, Interest::READABLE, || read(sfd, &mut buf)).await?;
                let mut off = 0;
                while off < n {
                    off += io_op(dst, Interest::WRITABLE, || write(dfd, &buf[off..n])).await?;
                }
                if n == SMALL {
                    pipe = Some(Pipe::new()?);
                }
                n
            }
            Some(p) => {
                // The pipe is empty here, so EAGAIN only means "src has nothing".
                let n = io_op(src, Interest::READABLE, || splice(sfd, p.w.as_raw_fd(), PIPE_SIZE as usize)).await?;
                let mut left = n;
                while left > 0 {
                    left -= io_op(dst, Interest::WRITABLE, || splice(p.r.as_raw_fd(), dfd, left)).await?;
                }
                n
            }
        };
        if n == 0 {
            // SAFETY: shutdown on a descriptor `dst` owns.
            if unsafe { libc::shutdown(dfd, libc::SHUT_WR) } != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ENOTCONN) {
                    return Err(e);
                }
            }
            return Ok(total);
        }
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream, UnixStream};

    /// A TCP pair and a Unix pair, relayed: tcp_client <-> [tcp_server | relay | unix_a] <-> unix_b.
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
