//! The relay between descriptors the kernel can splice (a TCP connection
//! and a TCP or Unix data connection). Small exchanges (a request, a reply)
//! go through a small buffer, one read and one write each; once a read fills
//! it the direction is bulk, and each chunk moves socket -> pipe -> socket
//! with splice(2), never entering this process, behind a 5-byte header.

use super::pipes::{Pipe, PIPE_SIZE};
use super::{
    at_end, bad_segment, local, take_answer, transport, Moved, Opening, RelayError, Relayed, State,
    ENDED_BEFORE_ANSWER, HEADING,
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
        f: impl FnMut(BorrowedFd<'_>) -> io::Result<usize>,
    ) -> io::Result<usize> {
        self.read_to_end(want, f).await.map(|(n, _)| n)
    }

    /// [`read`](Self::read), and whether the stream ends right behind the
    /// bytes read: the socket had its peer's FIN (and no error) before the
    /// read, and the read came back short, so it took everything before the
    /// FIN and the next read would return the end. A peer that answers and
    /// closes (HTTP/1.0, `Connection: close`) then costs one read, not two.
    async fn read_to_end(
        &self,
        want: usize,
        mut f: impl FnMut(BorrowedFd<'_>) -> io::Result<usize>,
    ) -> io::Result<(usize, bool)> {
        loop {
            let ended = self.ready(Interest::READABLE).await?;
            let mut short = None;
            let r = self.try_io(Interest::READABLE, |fd| match f(fd) {
                Ok(n) if n > 0 && n < want => {
                    short = Some(n);
                    Err(io::ErrorKind::WouldBlock.into())
                }
                r => r,
            });
            if let Some(n) = short {
                return Ok((n, ended));
            }
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r.map(|n| (n, false)),
            }
        }
    }

    /// Waits for readiness; true when the peer's FIN had arrived without an
    /// error (known for the TCP side only). A reset shows as a closed read
    /// side too, but always with an error (EPOLLERR), so readable readiness
    /// is asked together with the error's.
    async fn ready(&self, interest: Interest) -> io::Result<bool> {
        match self {
            Fd::Tcp(s) if interest == Interest::READABLE => s
                .ready(interest | Interest::ERROR)
                .await
                .map(|r| r.is_read_closed() && !r.is_error()),
            Fd::Tcp(s) => s.ready(interest).await.map(|_| false),
            Fd::Data(s) => s.ready(interest).await.map(|()| false),
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

/// TCP side -> segments, until the TCP side's end of stream (sent as `Fin`).
/// Each segment is written with its header in one system call (behind the
/// `Opened` this side may still owe); a small read that took the stream's
/// last bytes goes out with the `Fin` behind it.
async fn encode(tcp: &Fd<'_>, data: &Fd<'_>, state: &State<'_>) -> Result<u64, RelayError> {
    const H: usize = SEGMENT_HEADER_LEN;
    // An owed `Opened` and a header, the bytes, room for a `Fin`.
    let mut buf = [0u8; HEADING + SMALL + H];
    let mut fallback: Vec<u8> = Vec::new();
    let mut total = 0u64;
    let mut bulk = false;
    // The host's opening goes out at once: with the client's first bytes
    // when it has sent some (a client that speaks first has, by the time it
    // is accepted), else alone, so a server that speaks first hears of it.
    let mut first = None;
    if let (Opening::Awaited { .. }, Fd::Tcp(client)) = (state.opening, tcp) {
        match super::first_bytes(client, &mut buf[HEADING..HEADING + SMALL]).map_err(local)? {
            0 => {
                if let Some(open) = state.take_owed() {
                    data.write_all(open).await.map_err(transport)?;
                }
            }
            n => first = Some((n, false)),
        }
    }
    loop {
        let n = if !bulk {
            let (n, ended) = match first.take() {
                Some(read) => read,
                None => tcp
                    .read_to_end(SMALL, |fd| sys::read(fd, &mut buf[HEADING..HEADING + SMALL]))
                    .await
                    .map_err(local)?,
            };
            if n > 0 {
                let out = state.frame(&mut buf, n, ended);
                segment(state, data.write_all(&buf[out])).await?;
                total += n as u64;
                state.sent(n);
                if ended {
                    state.sent_fin();
                    return Ok(total);
                }
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
                let (head, from) = state.heading(SegmentKind::Bytes, n);
                segment(state, async {
                    data.write_all(&head[from..]).await?;
                    data.drain(&mut pipe).await
                })
                .await?;
                total += n as u64;
                state.sent(n);
            }
            n
        } else {
            // The pool is used up: this chunk goes through a buffer.
            fallback.resize(HEADING + FALLBACK, 0);
            let n = tcp
                .read(FALLBACK, |fd| sys::read(fd, &mut fallback[HEADING..]))
                .await
                .map_err(local)?;
            if n > 0 {
                let out = state.frame(&mut fallback, n, false);
                segment(state, data.write_all(&fallback[out])).await?;
                total += n as u64;
                state.sent(n);
            }
            n
        };
        if n == 0 {
            let (fin, from) = state.heading(SegmentKind::Fin, 0);
            data.write_all(&fin[from..]).await.map_err(transport)?;
            state.sent_fin();
            return Ok(total);
        }
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
    if state.opening.awaited() {
        while !take_answer(&mut inbox)? {
            let n = data.read(SMALL, |fd| sys::read(fd, &mut scratch)).await.map_err(transport)?;
            if n == 0 {
                return Err(ENDED_BEFORE_ANSWER);
            }
            inbox.extend_from_slice(&scratch[..n]);
        }
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
                // Once the TCP side has ended too, the relay is done and the
                // close that follows sends the FIN: no shutdown of its own.
                if !state.fin_sent.load(Ordering::Relaxed) {
                    sys::shutdown_write(tcp.fd()).map_err(local)?;
                }
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
