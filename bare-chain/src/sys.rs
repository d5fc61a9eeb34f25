//! The chain's ring and sockets: every `unsafe` of this crate. Operations on
//! a pair are submitted with the pair's slot and operation in `user_data`;
//! the buffers and addresses they point into live in a [`Slot`], which the
//! caller keeps (and does not move: it is boxed) until the pair is done.

use crate::pair::{Dir, Event, Op};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// Bytes read per receive, per direction.
pub const BUF: usize = 16 * 1024;

/// Where a side of the chain listens or dials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A pair's memory the kernel reads or writes while its operations run.
pub struct Slot {
    pub accepted: RawFd,
    pub dialled: RawFd,
    bufs: [Box<[u8; BUF]>; 2],
    peer: socket2::SockAddr,
}

impl Slot {
    fn fd_of(&self, d: Dir, source: bool) -> RawFd {
        match (d, source) {
            (Dir::Up, true) | (Dir::Down, false) => self.accepted,
            (Dir::Up, false) | (Dir::Down, true) => self.dialled,
        }
    }
}

/// A listening socket, with Nagle off for what it accepts when TCP.
pub fn listen(addr: &Addr) -> io::Result<OwnedFd> {
    let (domain, sa) = sockaddr(addr)?;
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    if let Addr::Unix(path) = addr {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    } else {
        s.set_reuse_address(true)?;
    }
    s.bind(&sa)?;
    s.listen(4096)?;
    Ok(s.into())
}

fn sockaddr(addr: &Addr) -> io::Result<(socket2::Domain, socket2::SockAddr)> {
    Ok(match addr {
        Addr::Tcp(a) => (socket2::Domain::for_address(*a), (*a).into()),
        Addr::Unix(p) => (socket2::Domain::UNIX, socket2::SockAddr::unix(p)?),
    })
}

/// Takes ownership of a descriptor an accept completion returned.
pub fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel just created `fd` for this accept and nothing else
    // holds it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A slot for an accepted socket and a new, not yet connected one for
/// `dial`. From here until its Close completes, the slot owns both.
pub fn slot(accepted: OwnedFd, dial: &Addr) -> io::Result<Box<Slot>> {
    let a = socket2::SockRef::from(&accepted);
    if a.local_addr()?.as_socket().is_some() {
        a.set_tcp_nodelay(true)?;
    }
    let (domain, peer) = sockaddr(dial)?;
    let d = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    if matches!(dial, Addr::Tcp(_)) {
        d.set_tcp_nodelay(true)?;
    }
    let bufs = [Box::new([0; BUF]), Box::new([0; BUF])];
    Ok(Box::new(Slot { accepted: accepted.into_raw_fd(), dialled: d.into_raw_fd(), bufs, peer }))
}

/// Abort: both sockets reset on close, and their reading side shut now,
/// which sends nothing (a write side's shutdown would send an end ahead of
/// the reset) and completes the receives pending on them.
pub fn abort(slot: &Slot) {
    for fd in [slot.accepted, slot.dialled] {
        // SAFETY: the slot owns both descriptors until its Close completes,
        // which comes after this.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let s = socket2::SockRef::from(&fd);
        let _ = s.set_linger(Some(std::time::Duration::ZERO));
        let _ = s.shutdown(std::net::Shutdown::Read);
    }
}

/// The ring: one thread's queue of operations on every pair it relays.
pub struct Ring {
    ring: IoUring,
}

/// `user_data` of the listener's multishot accept.
pub const ACCEPT: u64 = u64::MAX;

/// Operation codes in the low byte of `user_data`, even: its lowest bit is
/// the direction.
mod code {
    pub const CONNECT: u8 = 2;
    pub const RECV: u8 = 4;
    pub const SEND: u8 = 6;
    pub const SHUT: u8 = 8;
    pub const CLOSE: u8 = 10;
}

fn tag(slot: usize, code: u8, d: Dir) -> u64 {
    (slot as u64) << 8 | u64::from(code + d.index() as u8)
}

/// The pair's slot and what happened to it, from a completion's
/// `user_data` (see [`tag`]) and result; `None` for a code no operation has.
pub fn untag(user_data: u64, res: i32) -> Option<(usize, Event)> {
    let op = (user_data & 0xff) as u8;
    let d = if op & 1 == 1 { Dir::Down } else { Dir::Up };
    let event = match op & !1 {
        code::CONNECT => Event::Connected(res),
        code::RECV => Event::Received(d, res),
        code::SEND => Event::Sent(d, res),
        code::SHUT => Event::Shut(d),
        code::CLOSE => Event::Closed,
        _ => return None,
    };
    Some(((user_data >> 8) as usize, event))
}

impl Ring {
    /// A ring whose completions run only when this thread waits for them
    /// (DEFER_TASKRUN), as a single-threaded server's should.
    pub fn new() -> io::Result<Ring> {
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(4096)?;
        Ok(Ring { ring })
    }

    fn push(&mut self, e: &squeue::Entry) -> io::Result<()> {
        // SAFETY: every entry points only into a boxed Slot (buffers, peer
        // address) that the caller keeps until the pair's operations have
        // all completed, or at nothing.
        while unsafe { self.ring.submission().push(e) }.is_err() {
            self.ring.submit()?;
        }
        Ok(())
    }

    /// A multishot accept on `listener`, which must outlive the ring's use.
    pub fn accept(&mut self, listener: &OwnedFd) -> io::Result<()> {
        self.push(
            &opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd())).build().user_data(ACCEPT),
        )
    }

    pub fn connect(&mut self, i: usize, slot: &Slot) -> io::Result<()> {
        let e = opcode::Connect::new(
            types::Fd(slot.dialled),
            slot.peer.as_ptr().cast(),
            slot.peer.len(),
        )
        .build()
        .user_data(tag(i, code::CONNECT, Dir::Up));
        self.push(&e)
    }

    /// Submits `op` for the pair in slot `i` (Abort is carried out at once).
    pub fn submit_op(&mut self, i: usize, slot: &mut Slot, op: Op) -> io::Result<()> {
        let e = match op {
            Op::Recv(d) => {
                let fd = slot.fd_of(d, true);
                let buf = &mut slot.bufs[d.index()];
                opcode::Recv::new(types::Fd(fd), buf.as_mut_ptr(), BUF as u32)
                    .build()
                    .user_data(tag(i, code::RECV, d))
            }
            Op::Send(d, from, to) => {
                let buf = &slot.bufs[d.index()][from..to];
                opcode::Send::new(types::Fd(slot.fd_of(d, false)), buf.as_ptr(), buf.len() as u32)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(tag(i, code::SEND, d))
            }
            Op::ShutWrite(d) => {
                opcode::Shutdown::new(types::Fd(slot.fd_of(d, false)), libc::SHUT_WR)
                    .build()
                    .user_data(tag(i, code::SHUT, d))
            }
            Op::Abort => {
                abort(slot);
                return Ok(());
            }
            Op::Close => {
                for fd in [slot.accepted, slot.dialled] {
                    self.push(&opcode::Close::new(types::Fd(fd)).build().user_data(tag(
                        i,
                        code::CLOSE,
                        Dir::Up,
                    )))?;
                }
                return Ok(());
            }
        };
        self.push(&e)
    }

    /// Submits what is queued, waits for at least one completion, and
    /// returns all that are ready (user_data, result, flags).
    pub fn complete(&mut self, out: &mut Vec<(u64, i32, u32)>) -> io::Result<()> {
        self.ring.submit_and_wait(1)?;
        out.extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
        Ok(())
    }
}

/// Whether a multishot accept's completion says it stays armed.
pub fn more(flags: u32) -> bool {
    cqueue::more(flags)
}
