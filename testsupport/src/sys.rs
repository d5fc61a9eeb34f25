//! The test helpers' one raw system call: a listen through io_uring
//! (IORING_OP_LISTEN, Linux 6.11+), which never passes through listen(2).

use std::io;
use std::os::fd::AsRawFd;

/// Makes `socket` (bound, not listening) listen through io_uring.
pub fn listen_via_io_uring(socket: &impl AsRawFd, backlog: i32) -> io::Result<()> {
    use io_uring::{opcode, types, IoUring};
    let mut ring = IoUring::new(2)?;
    let sqe = opcode::Listen::new(types::Fd(socket.as_raw_fd()), backlog).build().user_data(1);
    // SAFETY: a listen holds no buffers, and the descriptor outlives the
    // wait for its completion below.
    unsafe { ring.submission().push(&sqe) }.map_err(|_| io::Error::other("io_uring queue full"))?;
    ring.submit_and_wait(1)?;
    let cqe = ring.completion().next().ok_or_else(|| io::Error::other("no io_uring completion"))?;
    match cqe.result() {
        0 => Ok(()),
        e if e < 0 => Err(io::Error::from_raw_os_error(-e)),
        other => Err(io::Error::other(format!("io_uring listen returned {other}"))),
    }
}
