//! A UDP flow's side of a data connection, shared by both ends: reading the
//! segments a flow carries (`Datagram`, `Fin`, `Reset`, and the agent's
//! answer to `Open`) and writing datagrams whole, one per segment, so their
//! boundaries survive the byte stream. The host's flows are in
//! `hoist-host`'s `udp`, the agent's in `hoist-agent`'s `udp`.

use bytes::{Buf, Bytes, BytesMut};
use hoist_wire::{
    datagram_header, parse_refused, Refusal, SegmentHeader, SegmentKind, MAX_DATAGRAM,
    SEGMENT_HEADER_LEN,
};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes a read asks for at least: a whole largest datagram and its header.
const READ_CHUNK: usize = SEGMENT_HEADER_LEN + MAX_DATAGRAM;

/// A segment of a UDP flow.
#[derive(Debug, PartialEq, Eq)]
pub enum FlowSegment {
    /// The agent opened the flow (its socket to the guest server exists).
    Opened,
    /// The agent refused the flow.
    Refused(Refusal, String),
    /// One datagram, whole.
    Datagram(Bytes),
    /// The sender ends the flow.
    Fin,
    /// The sender gave the flow up.
    Reset,
}

/// Reads a flow's segments from a data connection, keeping what it read
/// past the last one.
#[derive(Debug, Default)]
pub struct SegmentReader {
    inbox: BytesMut,
}

impl SegmentReader {
    /// A reader that starts with `early`, segment bytes already read.
    pub fn new(early: BytesMut) -> SegmentReader {
        SegmentReader { inbox: early }
    }

    /// The next segment; `None` when the connection ends between segments.
    /// Cancel-safe: bytes read stay for the next call. A segment a flow
    /// cannot carry (`Bytes`, `Open`) is an error.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> io::Result<Option<FlowSegment>> {
        loop {
            if let Some(seg) = self.take()? {
                return Ok(Some(seg));
            }
            self.inbox.reserve(READ_CHUNK);
            if r.read_buf(&mut self.inbox).await? == 0 {
                return match self.inbox.is_empty() {
                    true => Ok(None),
                    false => Err(io::ErrorKind::UnexpectedEof.into()),
                };
            }
        }
    }

    /// A whole segment off the front of what was read, if there is one.
    fn take(&mut self) -> io::Result<Option<FlowSegment>> {
        if self.inbox.len() < SEGMENT_HEADER_LEN {
            return Ok(None);
        }
        let h =
            SegmentHeader::decode(self.inbox[..SEGMENT_HEADER_LEN].try_into().expect("5 bytes"))
                .map_err(invalid)?;
        // The header's bounds keep every segment small (a Datagram at most
        // 64 KiB, a Refused 1 KiB); a Bytes one is refused before it is read.
        if h.kind == SegmentKind::Bytes || h.kind == SegmentKind::Open {
            return Err(invalid(format!("a UDP flow carries no {:?} segment", h.kind)));
        }
        if self.inbox.len() < SEGMENT_HEADER_LEN + h.len {
            return Ok(None);
        }
        self.inbox.advance(SEGMENT_HEADER_LEN);
        let payload = self.inbox.split_to(h.len);
        Ok(Some(match h.kind {
            SegmentKind::Opened => FlowSegment::Opened,
            SegmentKind::Refused => {
                let (why, reason) = parse_refused(&payload).map_err(invalid)?;
                FlowSegment::Refused(why, reason)
            }
            SegmentKind::Datagram => FlowSegment::Datagram(payload.freeze()),
            SegmentKind::Fin => FlowSegment::Fin,
            SegmentKind::Reset => FlowSegment::Reset,
            SegmentKind::Bytes | SegmentKind::Open => unreachable!("refused above"),
        }))
    }

    /// What was read past the last segment returned.
    pub fn into_leftover(self) -> BytesMut {
        self.inbox
    }
}

fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// A buffer a datagram is received into right behind the room for its
/// segment header, so it goes out with one write.
#[derive(Debug)]
pub struct DatagramBuf {
    buf: Vec<u8>,
}

impl Default for DatagramBuf {
    fn default() -> DatagramBuf {
        DatagramBuf { buf: vec![0; SEGMENT_HEADER_LEN + MAX_DATAGRAM] }
    }
}

impl DatagramBuf {
    /// Where to receive a datagram: room for the largest one.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buf[SEGMENT_HEADER_LEN..]
    }

    /// The `Datagram` segment of the `n` bytes received, header included.
    pub fn segment(&mut self, n: usize) -> &[u8] {
        self.buf[..SEGMENT_HEADER_LEN].copy_from_slice(&datagram_header(n));
        &self.buf[..SEGMENT_HEADER_LEN + n]
    }
}

/// The `Datagram` segment of `payload`, header included, as one buffer.
pub fn datagram_segment(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(SEGMENT_HEADER_LEN + payload.len());
    b.extend_from_slice(&datagram_header(payload.len()));
    b.extend_from_slice(payload);
    b.freeze()
}

/// Gives a UDP socket that many clients send to at once room for `bytes` of
/// datagrams: past `net.core.rmem_max` where the process may (Linux,
/// CAP_NET_ADMIN), else as far as the system allows. Best effort.
pub fn grow_recv_buffer(socket: &socket2::Socket, bytes: usize) {
    #[cfg(target_os = "linux")]
    let _ = crate::sys::set_recv_buffer(socket, bytes);
    #[cfg(not(target_os = "linux"))]
    let _ = socket.set_recv_buffer_size(bytes);
}

/// Writes a flow's end (`Fin`).
pub async fn write_fin<W: AsyncWrite + Unpin>(w: &mut W) -> io::Result<()> {
    w.write_all(&SegmentHeader::new(SegmentKind::Fin, 0).encode()).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoist_wire::refused_segment;

    #[tokio::test]
    async fn segments_cross_whole_and_what_follows_is_kept() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let big = vec![0xa5; MAX_DATAGRAM];
        let mut wire = Vec::new();
        wire.extend_from_slice(&SegmentHeader::new(SegmentKind::Opened, 0).encode());
        wire.extend_from_slice(&datagram_segment(b"one"));
        wire.extend_from_slice(&datagram_segment(b""));
        wire.extend_from_slice(&datagram_segment(&big));
        let mut buf = DatagramBuf::default();
        buf.payload_mut()[..3].copy_from_slice(b"two");
        wire.extend_from_slice(buf.segment(3));
        wire.extend_from_slice(&SegmentHeader::new(SegmentKind::Fin, 0).encode());
        wire.extend_from_slice(b"next");
        // Dribbled a few bytes at a time: segments are reassembled.
        let writer = tokio::spawn(async move {
            for chunk in wire.chunks(7) {
                a.write_all(chunk).await.unwrap();
            }
        });
        let mut r = SegmentReader::default();
        let mut got = Vec::new();
        while got.last() != Some(&FlowSegment::Fin) {
            got.push(r.next(&mut b).await.unwrap().unwrap());
        }
        writer.await.unwrap();
        assert_eq!(
            got,
            vec![
                FlowSegment::Opened,
                FlowSegment::Datagram(Bytes::from_static(b"one")),
                FlowSegment::Datagram(Bytes::new()),
                FlowSegment::Datagram(Bytes::from(big)),
                FlowSegment::Datagram(Bytes::from_static(b"two")),
                FlowSegment::Fin,
            ]
        );
        assert!(b"next".starts_with(&r.into_leftover()));
    }

    #[tokio::test]
    async fn what_a_flow_cannot_carry_is_an_error() {
        let cases: Vec<(&str, Vec<u8>, Result<Option<FlowSegment>, io::ErrorKind>)> = vec![
            ("clean end", vec![], Ok(None)),
            ("reset", vec![6, 0, 0, 0, 0], Ok(Some(FlowSegment::Reset))),
            (
                "refused",
                refused_segment(Refusal::NotListening, "gone"),
                Ok(Some(FlowSegment::Refused(Refusal::NotListening, "gone".into()))),
            ),
            ("stream bytes", vec![4, 0, 0, 0, 1, b'x'], Err(io::ErrorKind::InvalidData)),
            ("an Open", vec![1, 0, 0, 0, 4, 17, 4, 0, 53], Err(io::ErrorKind::InvalidData)),
            ("unknown kind", vec![9, 0, 0, 0, 0], Err(io::ErrorKind::InvalidData)),
            ("cut in a datagram", vec![7, 0, 0, 0, 9, 1, 2], Err(io::ErrorKind::UnexpectedEof)),
        ];
        for (name, wire, want) in cases {
            let mut r = SegmentReader::default();
            let got = r.next(&mut &wire[..]).await.map_err(|e| e.kind());
            assert_eq!(got, want, "{name}");
        }
    }
}
