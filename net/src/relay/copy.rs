//! The relay for data connections without a descriptor to splice (vsock, and
//! every transport on Windows): the same segments, copied through fixed
//! buffers with the transport's own async reads and writes.

use super::{
    at_end, bad_segment, local, take_answer, transport, Moved, RelayError, Relayed, State,
    ENDED_BEFORE_ANSWER, HEADING,
};
use bytes::{Buf, BytesMut};
use hoist_wire::{SegmentHeader, SegmentKind, SEGMENT_HEADER_LEN};
use std::io;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes of stream data per segment, and read per call.
const BUF: usize = 16 * 1024;

pub(super) async fn relay<D: AsyncRead + AsyncWrite + Unpin>(
    tcp: &mut TcpStream,
    data: &mut D,
    early: BytesMut,
    state: &State<'_>,
) -> Result<Relayed, RelayError> {
    let (tcp_r, tcp_w) = tcp.split();
    let (data_r, data_w) = tokio::io::split(data);
    let (sent, (received, leftover)) =
        tokio::try_join!(encode(tcp_r, data_w, state), decode(data_r, tcp_w, early, state))?;
    Ok(Relayed { moved: Moved { sent, received }, leftover })
}

/// TCP side -> segments, until the TCP side's end of stream (sent as `Fin`).
/// A read that took the stream's last bytes sends them with the `Fin`
/// behind, in one write (see [`read`]).
async fn encode(
    mut tcp: tokio::net::tcp::ReadHalf<'_>,
    mut data: impl AsyncWrite + Unpin,
    state: &State<'_>,
) -> Result<u64, RelayError> {
    // What this side owes and a header, the bytes, room for a `Fin`: one
    // write per segment.
    let mut buf = vec![0u8; HEADING + BUF + SEGMENT_HEADER_LEN];
    let mut total = 0u64;
    // The host's opening goes out at once: with the client's first bytes
    // when it has sent some (a client that speaks first has, by the time it
    // is accepted), else alone, so a server that speaks first hears of it.
    let mut first = None;
    if state.opening.awaited() {
        match super::first_bytes(tcp.as_ref(), &mut buf[HEADING..HEADING + BUF]).map_err(local)? {
            0 => {
                if let Some(open) = state.take_owed() {
                    data.write_all(open).await.map_err(transport)?;
                    data.flush().await.map_err(transport)?;
                }
            }
            n => first = Some((n, false)),
        }
    }
    loop {
        let (n, ended) = match first.take() {
            Some(read) => read,
            None => read(&mut tcp, &mut buf[HEADING..HEADING + BUF]).await.map_err(local)?,
        };
        if n == 0 {
            let (fin, from) = state.heading(SegmentKind::Fin, 0);
            data.write_all(&fin[from..]).await.map_err(transport)?;
            data.flush().await.map_err(transport)?;
            state.sent_fin();
            return Ok(total);
        }
        let out = state.frame(&mut buf, n, ended);
        state.mid_segment.store(true, Ordering::Relaxed);
        data.write_all(&buf[out]).await.map_err(transport)?;
        data.flush().await.map_err(transport)?;
        state.mid_segment.store(false, Ordering::Relaxed);
        total += n as u64;
        state.sent(n);
        if ended {
            state.sent_fin();
            return Ok(total);
        }
    }
}

/// A read from the TCP side, and whether the stream ends right behind the
/// bytes read: on Linux, when the peer's FIN had arrived without an error
/// (readiness READ_CLOSED and not ERROR, asked together: a reset shows as a
/// closed read side too, always with an error) before a read that came back
/// short, which therefore took everything before the FIN. A server that
/// answers and closes then costs one message, not two (the agent relays over
/// vsock with this relay). Elsewhere the end is read as such.
async fn read(
    tcp: &mut tokio::net::tcp::ReadHalf<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, bool)> {
    #[cfg(target_os = "linux")]
    {
        use tokio::io::Interest;
        let r = tcp.as_ref().ready(Interest::READABLE | Interest::ERROR).await?;
        let closed = r.is_read_closed() && !r.is_error();
        let n = tcp.read(buf).await?;
        Ok((n, closed && n > 0 && n < buf.len()))
    }
    #[cfg(not(target_os = "linux"))]
    Ok((tcp.read(buf).await?, false))
}

/// Segments -> TCP side, until a `Fin` went each way; returns the bytes
/// relayed and what was read past the end.
async fn decode(
    mut data: impl AsyncRead + Unpin,
    mut tcp: impl AsyncWrite + Unpin,
    early: BytesMut,
    state: &State<'_>,
) -> Result<(u64, BytesMut), RelayError> {
    let mut inbox = early;
    let mut total = 0u64;
    let mut fin = false;
    if state.opening.awaited() {
        while !take_answer(&mut inbox)? {
            inbox.reserve(BUF);
            if data.read_buf(&mut inbox).await.map_err(transport)? == 0 {
                return Err(ENDED_BEFORE_ANSWER);
            }
        }
    }
    'segments: loop {
        // A Fin went each way: what follows belongs to the connection's
        // next use.
        if fin && state.fin_sent.load(Ordering::Relaxed) {
            return Ok((total, inbox));
        }
        while inbox.len() < SEGMENT_HEADER_LEN {
            inbox.reserve(BUF);
            // After the peer's Fin only a Reset may follow: the connection
            // is done once this side has sent its own.
            let n = tokio::select! {
                biased;
                _ = state.until_fin_sent(), if fin => continue 'segments,
                r = data.read_buf(&mut inbox) => r.map_err(transport)?,
            };
            if n == 0 {
                if !inbox.is_empty() {
                    return Err(RelayError::Peer(
                        "the data connection ended inside a segment header",
                    ));
                }
                return at_end(fin, state).map(|_| (total, inbox));
            }
        }
        let h = SegmentHeader::decode(inbox[..SEGMENT_HEADER_LEN].try_into().expect("5 bytes"))
            .map_err(bad_segment)?;
        inbox.advance(SEGMENT_HEADER_LEN);
        match h.kind {
            SegmentKind::Bytes if !fin => {
                let mut left = h.len;
                while left > 0 {
                    if inbox.is_empty() {
                        inbox.reserve(BUF.min(left));
                        if data.read_buf(&mut inbox).await.map_err(transport)? == 0 {
                            return Err(RelayError::Peer(
                                "the data connection ended inside a segment",
                            ));
                        }
                    }
                    let n = left.min(inbox.len());
                    tcp.write_all(&inbox[..n]).await.map_err(local)?;
                    inbox.advance(n);
                    left -= n;
                }
                total += h.len as u64;
                state.traffic.received.fetch_add(h.len as u64, Ordering::Relaxed);
            }
            SegmentKind::Fin if !fin => {
                fin = true;
                // Once the TCP side has ended too, the close that follows
                // the relay sends the FIN.
                if !state.fin_sent.load(Ordering::Relaxed) {
                    tcp.shutdown().await.map_err(local)?;
                }
            }
            SegmentKind::Reset => return Err(RelayError::Peer("the peer's side was reset")),
            _ => {
                let e = io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected {:?} segment", h.kind),
                );
                return Err(RelayError::Transport(e));
            }
        }
    }
}
