//! Linux system calls, as safe wrappers (rustix): the relay's pipes and
//! splice(2), reads and writes on raw descriptors that never raise SIGPIPE,
//! write shutdowns, and the open-file limit. Everything else goes through
//! tokio or socket2.

use rustix::fd::{AsFd, OwnedFd};
use rustix::pipe::{PipeFlags, SpliceFlags};
use std::io;

/// A non-blocking pipe (read end, write end), asking for `size` bytes of
/// capacity; a refused size keeps the kernel's default.
pub fn pipe(size: usize) -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
    // Best effort: a larger pipe means fewer system calls per byte.
    let _ = rustix::pipe::fcntl_setpipe_size(&w, size);
    Ok((r, w))
}

/// Moves up to `len` bytes from `from` to `to` inside the kernel, without
/// blocking.
pub fn splice(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    Ok(rustix::pipe::splice(from, None, to, None, len, flags)?)
}

/// read(2) on a non-blocking descriptor.
pub fn read(fd: impl AsFd, buf: &mut [u8]) -> io::Result<usize> {
    Ok(rustix::io::read(fd, buf)?)
}

/// Peeks at one byte without consuming it or waiting: 0 at the end of the
/// stream.
pub fn peek(fd: impl AsFd) -> io::Result<usize> {
    let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
    Ok(rustix::net::recv(fd, &mut [0u8; 1], flags)?.0)
}

/// send(2) with `MSG_NOSIGNAL`: a peer that went away is an error, never a
/// SIGPIPE that kills the process.
pub fn send(fd: impl AsFd, buf: &[u8]) -> io::Result<usize> {
    Ok(rustix::net::send(fd, buf, rustix::net::SendFlags::NOSIGNAL)?)
}

/// Shuts the write side down (sends FIN). A socket whose peer is already
/// gone (ENOTCONN) has nothing left to shut.
pub fn shutdown_write(fd: impl AsFd) -> io::Result<()> {
    match rustix::net::shutdown(fd, rustix::net::Shutdown::Write) {
        Err(rustix::io::Errno::NOTCONN) => Ok(()),
        r => Ok(r?),
    }
}

/// Raises the soft open-file limit to the hard one; returns (old, new) when
/// it changed. The default soft limit of 1024 would cap a relay at a few
/// hundred connections.
pub fn raise_fd_limit() -> Option<(u64, u64)> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    let (old, max) = (lim.current?, lim.maximum);
    if max.is_some_and(|m| m <= old) {
        return None;
    }
    lim.current = max;
    setrlimit(Resource::Nofile, lim).ok()?;
    Some((old, max.unwrap_or(u64::MAX)))
}

/// The soft open-file limit (after `raise_fd_limit`); `None` when unlimited.
pub fn open_file_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// The user and process id of a Unix socket's peer (SO_PEERCRED); pid 0 for
/// a peer in a PID namespace this process cannot see (e.g. a host relay
/// outside the agent's namespace). Not rustix's `socket_peercred`: its
/// `UCred` holds a non-zero `Pid`, so the kernel's pid 0 came back as an
/// error, "Success (os error 0)", and such a peer was never served.
pub fn peer_credentials(s: &tokio::net::UnixStream) -> io::Result<(u32, u32)> {
    let cred = s.peer_cred()?;
    Ok((cred.uid(), cred.pid().map_or(0, |p| p as u32)))
}

/// Sets a socket's receive buffer to `bytes`: past `net.core.rmem_max` when
/// the process may (CAP_NET_ADMIN), else as far as that allows.
pub fn set_recv_buffer(fd: impl AsFd, bytes: usize) -> io::Result<()> {
    use rustix::net::sockopt::{set_socket_recv_buffer_size, set_socket_recv_buffer_size_force};
    match set_socket_recv_buffer_size_force(&fd, bytes) {
        Ok(()) => Ok(()),
        Err(_) => Ok(set_socket_recv_buffer_size(&fd, bytes)?),
    }
}

/// This process's effective user id.
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}
