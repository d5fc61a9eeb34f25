//! The splicing relay between TCP and Unix sockets: the bytes never enter
//! this process. Small exchanges (a request, a reply) go through a small
//! buffer; once a read fills it the direction is bulk and moves socket ->
//! pipe -> socket with splice(2), whose pipe would cost more than it saves on
//! a short connection.

use super::Moved;
use crate::sys;
use crate::transport::Stream;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use tokio::io::Interest;

/// Capacity asked for each splice pipe. Pages are only held while data is in
/// flight, so an idle connection costs no pipe memory.
const PIPE_SIZE: usize = 1 << 20;

/// Bytes read per system call before a direction turns to splice.
const SMALL: usize = 2048;

pub(super) async fn relay(a: &Stream, b: &Stream) -> io::Result<Moved> {
    let (a_to_b, b_to_a) = tokio::try_join!(one_way(a, b), one_way(b, a))?;
    Ok(Moved { a_to_b, b_to_a })
}

/// One non-blocking operation on `s`, waiting for readiness as needed.
async fn io_op(
    s: &Stream,
    interest: Interest,
    mut f: impl FnMut() -> io::Result<usize>,
) -> io::Result<usize> {
    loop {
        s.ready(interest).await?;
        match s.try_io(interest, &mut f) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// Moves `src`'s bytes to `dst` until `src` ends, then shuts `dst`'s write
/// side: the FIN travels on while the other direction goes on.
async fn one_way(src: &Stream, dst: &Stream) -> io::Result<u64> {
    let (sfd, dfd) = (src.fd().expect("a descriptor"), dst.fd().expect("a descriptor"));
    let mut total = 0u64;
    let mut pipe: Option<(OwnedFd, OwnedFd)> = None;
    let mut buf = [0u8; SMALL];
    loop {
        let n = match &pipe {
            None => {
                let n = io_op(src, Interest::READABLE, || sys::read(sfd, &mut buf)).await?;
                let mut off = 0;
                while off < n {
                    off += io_op(dst, Interest::WRITABLE, || sys::send(dfd, &buf[off..n])).await?;
                }
                if n == SMALL {
                    pipe = Some(sys::pipe(PIPE_SIZE)?);
                }
                n
            }
            Some((r, w)) => {
                // The pipe is empty here, so EAGAIN only means "src has nothing".
                let n = io_op(src, Interest::READABLE, || sys::splice(sfd, w.as_fd(), PIPE_SIZE))
                    .await?;
                let mut left = n;
                while left > 0 {
                    left -= io_op(dst, Interest::WRITABLE, || sys::splice(r.as_fd(), dfd, left))
                        .await?;
                }
                n
            }
        };
        if n == 0 {
            sys::shutdown_write(dfd)?;
            return Ok(total);
        }
        total += n as u64;
    }
}
