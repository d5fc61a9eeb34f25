//! The guest tool's raw system calls (libc: vsock has no safe wrapper in std),
//! each behind a safe function.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Child;

/// A vsock stream socket listening on `port` of every CID.
pub fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data, for which all zeroes is valid.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as u16;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as u32;
    // SAFETY: addr is a valid sockaddr_vm of `len` bytes; fd is open.
    if unsafe { libc::bind(fd.as_raw_fd(), &addr as *const _ as *const libc::sockaddr, len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on an open, bound socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 16) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Accepts one connection on `listener`.
pub fn accept(listener: &OwnedFd) -> io::Result<File> {
    // SAFETY: accept4 on an open listening socket, not asking for the address.
    let c = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if c < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: c is a fresh connected descriptor nobody else owns.
    Ok(unsafe { File::from_raw_fd(c) })
}

/// Sends `sig` to a child of this process.
pub fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid; failure (already gone) is harmless.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// An SCTP (`sctp`) or DCCP (`dccp`) stream socket listening on
/// 127.0.0.1:`port`.
pub fn listen_other(proto: &str, port: u16) -> io::Result<OwnedFd> {
    let (ty, protocol) = match proto {
        "sctp" => (libc::SOCK_STREAM, libc::IPPROTO_SCTP),
        _ => (6 /* SOCK_DCCP */, 33 /* IPPROTO_DCCP */),
    };
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, ty | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    // SAFETY: addr is a valid sockaddr_in of `len` bytes; fd is open.
    if unsafe { libc::bind(fd.as_raw_fd(), &addr as *const _ as *const libc::sockaddr, len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on an open, bound socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 16) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Closes a TCP connection with a reset (SO_LINGER 0).
pub fn reset(c: std::net::TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    let len = std::mem::size_of::<libc::linger>() as u32;
    // SAFETY: setsockopt on an open socket with a valid linger of `len` bytes.
    unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const _,
            len,
        )
    };
    drop(c);
}

/// An IPv4 UDP socket never bound: the kernel binds it to a port of its
/// choosing at its first sendto() or connect(), as it does a client's.
pub fn udp_unbound() -> io::Result<std::net::UdpSocket> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { std::net::UdpSocket::from_raw_fd(fd) })
}
