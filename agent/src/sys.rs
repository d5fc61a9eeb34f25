//! The agent's system calls, as safe wrappers, and its only `unsafe` blocks:
//! registering an eBPF map's descriptor with tokio, reading a network
//! namespace's cookie (`SO_NETNS_COOKIE`, which rustix does not wrap), and
//! unsharing the mount namespace (`hoist-agent check`). Everything else goes
//! through rustix (setns, mount, netlink sockets, the guest dial's connect)
//! except what aya and tokio own.

use rustix::fd::{AsFd, OwnedFd};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Registers an eBPF map (ring buffer, log buffer) with tokio's reactor for
/// readability.
pub fn async_fd<T: AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its descriptor (aya's maps close it on drop) and
    // moves into the AsyncFd, which deregisters before dropping it, so the
    // descriptor stays open and the same for as long as it is registered.
    Ok(unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }?)
}

/// Starts a TCP connection to a listener in the agent's network namespace,
/// non-blocking, with Nagle off; says whether it is up already. A dial on
/// loopback is usually complete when connect(2) returns (the handshake runs
/// inside the call), and a zero-timeout poll tells, sparing a round through
/// the reactor. A dial that failed at once is an error.
pub fn dial_local(addr: std::net::SocketAddr) -> io::Result<(std::net::TcpStream, bool)> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    use rustix::io::Errno;
    let family = if addr.is_ipv6() { AddressFamily::INET6 } else { AddressFamily::INET };
    let fd = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::sockopt::set_tcp_nodelay(&fd, true)?;
    match rustix::net::connect(&fd, &addr) {
        Ok(()) => return Ok((fd.into(), true)),
        Err(Errno::INPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
    poll(&mut fds, Some(&Timespec { tv_sec: 0, tv_nsec: 0 }))?;
    let got = fds[0].revents();
    if got.intersects(PollFlags::ERR | PollFlags::HUP) {
        rustix::net::sockopt::socket_error(&fd)??;
        return Err(io::ErrorKind::ConnectionRefused.into());
    }
    let up = got.contains(PollFlags::OUT);
    Ok((fd.into(), up))
}

/// Moves the calling thread into the network namespace of `file` (a file
/// such as /run/netns/NAME). Threads spawned afterwards inherit it.
pub fn enter_netns(file: &std::fs::File) -> io::Result<()> {
    use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
    Ok(move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))?)
}

/// Mounts a cgroup v2 hierarchy at `target` (an existing directory).
pub fn mount_cgroup2(target: &Path) -> io::Result<()> {
    use rustix::mount::{mount, MountFlags};
    Ok(mount("cgroup2", target, "cgroup2", MountFlags::empty(), None)?)
}

/// The cookie of the calling thread's network namespace (Linux 5.14+), as
/// `bpf_get_netns_cookie` reports it for that namespace's sockets.
pub fn netns_cookie() -> io::Result<u64> {
    let fd = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, a u64 of
    // that size, and the new length into `len`; `fd` is an open socket.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Moves the calling process into a mount namespace of its own whose mounts
/// propagate nowhere: what it mounts afterwards vanishes with it. Only from
/// a single-threaded process (CLONE_NEWNS implies CLONE_FS, which the kernel
/// refuses to a thread sharing its fs with others).
pub fn private_mount_namespace() -> io::Result<()> {
    use rustix::mount::{mount_change, MountPropagationFlags};
    use rustix::thread::{unshare_unsafe, UnshareFlags};
    // SAFETY: only the mount namespace is unshared, not the descriptor table
    // (CLONE_FILES), so no thread can lose sight of a descriptor.
    unsafe { unshare_unsafe(UnshareFlags::NEWNS) }?;
    mount_change("/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC)?;
    Ok(())
}

/// Mounts tracefs at `target`.
pub fn mount_tracefs(target: &str) -> io::Result<()> {
    use rustix::mount::{mount, MountFlags};
    Ok(mount("tracefs", Path::new(target), "tracefs", MountFlags::empty(), None)?)
}

/// A `NETLINK_SOCK_DIAG` socket in the calling thread's network namespace.
pub fn sock_diag_socket() -> io::Result<OwnedFd> {
    let proto = rustix::net::netlink::SOCK_DIAG;
    Ok(rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(proto),
    )?)
}

/// Sends one netlink request to the kernel.
pub fn netlink_send(fd: &OwnedFd, req: &[u8]) -> io::Result<()> {
    rustix::net::send(fd, req, SendFlags::empty())?;
    Ok(())
}

/// Receives one netlink datagram, retrying on EINTR.
pub fn netlink_recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::net::recv(fd, &mut *buf, RecvFlags::empty()) {
            Err(rustix::io::Errno::INTR) => continue,
            r => return Ok(r?.0),
        }
    }
}
