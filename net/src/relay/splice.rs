//! The relay between descriptors the kernel can splice (a TCP connection
//! and a TCP or Unix data connection). Small exchanges (a request, a reply)
//! go through a small buffer, one read and one write each; once a read fills
//! it the direction is bulk, and each chunk moves socket -> pipe -> socket
//! with splice(2), never entering this process, behind a 5-byte header.

use super::pipes::{Pipe, PIPE_SIZE};
use super::{
    at_end, bad_segment, local, take_answer, transport, within, Moved, Opening, RelayError,
    Relayed, State, ENDED_BEFORE_ANSWER,
};
use crate::sys;
use crate::transport::Stream;
use bytes::{Buf, BytesMut};
use hoist_wire::{SegmentHeader, SegmentKind, SEGMENT_HEADER_LEN};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes read per system call before a direction turns to splice.
const SMALL: usize = 2048;

/// A payload at least this long is spliced rather than read.
const BULK: usize = 16 * 1024;

/// Bytes copied per read when the pipe pool is used up.
const FALLBACK: usize = 64 * 1024;

pub(super) async fn relay(
    tcp: &TcpStream,
    data: &Stream,
    early: BytesMut,
    state: &State<'_>,
) -> Result<Relayed, RelayError> {
    let tcp = Fd::Tcp(tcp);
    let data = Fd::Data(data);
    let (sent, (received, leftover)) =
        tokio::try_join!(encode(&tcp, &data, state), decode(&data, &tcp, early, state))?;
    Ok(Relayed { moved: Moved { sent, received }, leftover })
}

/// A socket the relay drives by readiness.
enum Fd<'a> {
    Tcp(&'a TcpStream),
    Data(&'a Stream),
}

impl Fd<'_> {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Fd::Tcp(s) => s.as_fd(),
            Fd::Data(s) => s.fd().expect("the splice relay runs on descriptors"),
        }
    }

    /// One non-blocking operation, waiting for readiness as needed.
    async fn op(
        &self,
        interest: Interest,
        mut f: impl FnMut(BorrowedFd<'_>) -> io::Result<usize>,
    ) -> io::Result<usize> {
        loop {
            self.ready(interest).await?;
            match self.try_io(interest, &mut f) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    /// A read of up to `want` bytes (with `f`), waiting for readiness as
    /// needed. A read that comes back short drained the socket: its
    /// readiness is cleared with it, so the next read waits for the kernel's
    /// word instead of trying once in vain (tokio clears only what it saw
    /// before the read, so bytes that arrive meanwhile are never missed).
    async fn read(
        &self,
        want: usize,
        mut f: impl FnMut(BorrowedFd<'_>) -> io::Result<usize>,
    ) -> io::Result<usize> {
        loop {
            self.ready(Interest::READABLE).await?;
            let mut short = None;
            let r = self.try_io(Interest::READABLE, |fd| match f(fd) {
                Ok(n) if n > 0 && n < want => {
                    short = Some(n);
                    Err(io::ErrorKind::WouldBlock.into())
                }
                r => r,
            });
            if let Some(n) = short {
                return Ok(n);
            }
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    async fn ready(&self, interest: Interest) -> io::Result<()> {
        match self {
            Fd::Tcp(s) => s.ready(interest).await.map(drop),
            Fd::Data(s) => s.ready(interest).await,
        }
    }

    fn try_io(
        &self,
        interest: Interest,
        f: impl FnOnce(BorrowedFd<'_>) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let fd = self.fd();
        match self {
            Fd::Tcp(s) => s.try_io(interest, || f(fd)),
            Fd::Data(s) => s.try_io(interest, || f(fd)),
        }
    }

    async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.op(Interest::WRITABLE, |fd| sys::send(fd, buf)).await?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Moves everything `pipe` holds into this socket.
    async fn drain(&self, pipe: &mut Pipe) -> io::Result<()> {
        while pipe.held > 0 {
            let left = pipe.held;
            pipe.held -= self.op(Interest::WRITABLE, |fd| sys::splice(pipe.r(), fd, left)).await?;
        }
        Ok(())
    }
}

fn header(kind: SegmentKind, len: usize) -> [u8; SEGMENT_HEADER_LEN] {
    SegmentHeader::new(kind, len).encode()
}

/// TCP side -> segments, until the TCP side's end of stream (sent as `Fin`).
async fn encode(tcp: &Fd<'_>, data: &Fd<'_>, state: &State<'_>) -> Result<u64, RelayError> {
    let mut buf = [0u8; SEGMENT_HEADER_LEN + SMALL];
    let mut fallback: Vec<u8> = Vec::new();
    let mut total = 0u64;
    let mut bulk = false;
    loop {
        let n = if !bulk {
            let n = tcp
                .read(SMALL, |fd| sys::read(fd, &mut buf[SEGMENT_HEADER_LEN..]))
                .await
                .map_err(local)?;
            if n > 0 {
                buf[..SEGMENT_HEADER_LEN].copy_from_slice(&header(SegmentKind::Bytes, n));
                segment(state, data.write_all(&buf[..SEGMENT_HEADER_LEN + n])).await?;
            }
            bulk = n == SMALL;
            n
        } else if let Some(mut pipe) = Pipe::take() {
            let n = tcp
                .op(Interest::READABLE, |fd| sys::splice(fd, pipe.w(), PIPE_SIZE))
                .await
                .map_err(local)?;
            pipe.held = n;
            if n > 0 {
                segment(state, async {
                    data.write_all(&header(SegmentKind::Bytes, n)).await?;
                    data.drain(&mut pipe).await
                })
                .await?;
            }
            n
        } else {
            // The pool is used up: this chunk goes through a buffer.
            fallback.resize(SEGMENT_HEADER_LEN + FALLBACK, 0);
            let n = tcp
                .read(FALLBACK, |fd| sys::read(fd, &mut fallback[SEGMENT_HEADER_LEN..]))
                .await
                .map_err(local)?;
            if n > 0 {
                fallback[..SEGMENT_HEADER_LEN].copy_from_slice(&header(SegmentKind::Bytes, n));
                segment(state, data.write_all(&fallback[..SEGMENT_HEADER_LEN + n])).await?;
            }
            n
        };
        if n == 0 {
            data.write_all(&header(SegmentKind::Fin, 0)).await.map_err(transport)?;
            state.sent_fin();
            return Ok(total);
        }
        total += n as u64;
        state.traffic.sent.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Writes one segment to the data connection, marking the time it is
/// half-written.
async fn segment(
    state: &State<'_>,
    write: impl std::future::Future<Output = io::Result<()>>,
) -> Result<(), RelayError> {
    state.mid_segment.store(true, Ordering::Relaxed);
    write.await.map_err(transport)?;
    state.mid_segment.store(false, Ordering::Relaxed);
    Ok(())
}

/// Segments -> TCP side, until the data connection ends.
async fn decode(
    data: &Fd<'_>,
    tcp: &Fd<'_>,
    early: BytesMut,
    state: &State<'_>,
) -> Result<(u64, BytesMut), RelayError> {
    let mut inbox = early;
    let mut scratch = vec![0u8; SMALL];
    let mut total = 0u64;
    let mut fin = false;
    let mut bulk = false;
    if let Opening::Awaited(limit) = state.opening {
        let answer = async {
            while !take_answer(&mut inbox)? {
                let n =
                    data.read(SMALL, |fd| sys::read(fd, &mut scratch)).await.map_err(transport)?;
                if n == 0 {
                    return Err(ENDED_BEFORE_ANSWER);
                }
                inbox.extend_from_slice(&scratch[..n]);
            }
            Ok(())
        };
        within(limit, answer).await?;
    }
    'segments: loop {
        // A Fin went each way: what follows belongs to the connection's
        // next use.
        if fin && state.fin_sent.load(Ordering::Relaxed) {
            return Ok((total, inbox));
        }
        while inbox.len() < SEGMENT_HEADER_LEN {
            // Behind a bulk segment most likely comes another: read just
            // its header, so its payload is spliced whole rather than its
            // first bytes copied through here (and sent as a small packet).
            let want = if bulk { SEGMENT_HEADER_LEN - inbox.len() } else { SMALL };
            let read = data.read(want, |fd| sys::read(fd, &mut scratch[..want]));
            // After the peer's Fin only a Reset may follow: the connection
            // is done once this side has sent its own.
            let n = tokio::select! {
                biased;
                _ = state.until_fin_sent(), if fin => continue 'segments,
                r = read => r.map_err(transport)?,
            };
            if n == 0 {
                if !inbox.is_empty() {
                    return Err(RelayError::Peer(
                        "the data connection ended inside a segment header",
                    ));
                }
                return at_end(fin, state).map(|_| (total, inbox));
            }
            inbox.extend_from_slice(&scratch[..n]);
        }
        let h = SegmentHeader::decode(inbox[..SEGMENT_HEADER_LEN].try_into().expect("5 bytes"))
            .map_err(bad_segment)?;
        inbox.advance(SEGMENT_HEADER_LEN);
        match h.kind {
            SegmentKind::Bytes if !fin => {
                let buffered = h.len.min(inbox.len());
                tcp.write_all(&inbox[..buffered]).await.map_err(local)?;
                inbox.advance(buffered);
                let mut left = h.len - buffered;
                while left > 0 {
                    let pipe = if left >= BULK { Pipe::take() } else { None };
                    let n = match pipe {
                        Some(mut pipe) => {
                            let want = left.min(PIPE_SIZE);
                            let n = data
                                .op(Interest::READABLE, |fd| sys::splice(fd, pipe.w(), want))
                                .await
                                .map_err(transport)?;
                            pipe.held = n;
                            tcp.drain(&mut pipe).await.map_err(local)?;
                            n
                        }
                        None => {
                            if scratch.len() < left.min(FALLBACK) {
                                scratch.resize(left.min(FALLBACK), 0);
                            }
                            let want = left.min(scratch.len());
                            let n = data
                                .read(want, |fd| sys::read(fd, &mut scratch[..want]))
                                .await
                                .map_err(transport)?;
                            tcp.write_all(&scratch[..n]).await.map_err(local)?;
                            n
                        }
                    };
                    if n == 0 {
                        return Err(RelayError::Peer("the data connection ended inside a segment"));
                    }
                    left -= n;
                }
                total += h.len as u64;
                state.traffic.received.fetch_add(h.len as u64, Ordering::Relaxed);
                bulk = h.len >= BULK;
            }
            SegmentKind::Fin if !fin => {
                fin = true;
                sys::shutdown_write(tcp.fd()).map_err(local)?;
            }
            SegmentKind::Reset => return Err(RelayError::Peer("the peer's side was reset")),
            _ => {
                return Err(RelayError::Transport(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected {:?} segment", h.kind),
                )))
            }
        }
    }
}
