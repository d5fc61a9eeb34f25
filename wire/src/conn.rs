//! [`Conn`]: a connection that owns the framing. Callers send and receive
//! whole messages; the buffer, the frame limit and the handshake timeout live
//! here, in one place, instead of at every call site.

use crate::error::WireError;
use crate::frame::{self, MAX_FRAME};
use crate::msg::Message;
use crate::segment::{SegmentHeader, SEGMENT_HEADER_LEN};
use bytes::{Buf, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes asked of the transport per read: a whole control frame or a burst of
/// changes usually arrives in one.
const READ_CHUNK: usize = 4096;

/// A framed connection over any byte stream `S`.
#[derive(Debug)]
pub struct Conn<S> {
    io: S,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    max_frame: usize,
}

impl<S> Conn<S> {
    /// Frames `io`, accepting frames of up to [`MAX_FRAME`] bytes.
    pub fn new(io: S) -> Conn<S> {
        Conn { io, rbuf: BytesMut::new(), wbuf: Vec::new(), max_frame: MAX_FRAME }
    }

    /// Lowers (or restores, up to [`MAX_FRAME`]) the largest frame accepted:
    /// a handshake frame is a few bytes, so a peer that announces more is
    /// refused before anything is allocated for it.
    pub fn set_max_frame(&mut self, max: usize) {
        self.max_frame = max.min(MAX_FRAME);
    }

    /// The transport.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The transport, and the bytes already read past the last frame: they
    /// belong to whatever follows the framed part of the conversation.
    pub fn into_parts(self) -> (S, BytesMut) {
        (self.io, self.rbuf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Sends one message as one frame.
    pub async fn send<M: Message>(&mut self, msg: &M) -> Result<(), WireError> {
        self.send_all(std::iter::once(msg)).await
    }

    /// Sends several messages with one write.
    pub async fn send_all<'a, M: Message + 'a>(
        &mut self,
        msgs: impl IntoIterator<Item = &'a M>,
    ) -> Result<(), WireError> {
        self.wbuf.clear();
        for m in msgs {
            m.encode_frame(&mut self.wbuf);
        }
        self.io.write_all(&self.wbuf).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Sends bytes already encoded (segments, several frames at once).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        self.io.write_all(bytes).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Receives the next message; `Ok(None)` when the peer closed the
    /// connection between frames. Cancel-safe: bytes already read stay in the
    /// buffer for the next call.
    pub async fn recv<M: Message>(&mut self) -> Result<Option<M>, WireError> {
        match self.recv_frame().await? {
            Some(body) => Ok(Some(M::decode_body(&body)?)),
            None => Ok(None),
        }
    }

    /// Receives the next frame's body undecoded (to read a first frame's
    /// version before the rest); `Ok(None)` at a clean end. Cancel-safe.
    pub async fn recv_frame(&mut self) -> Result<Option<BytesMut>, WireError> {
        loop {
            if let Some(body) = frame::split(&mut self.rbuf, self.max_frame)? {
                return Ok(Some(body));
            }
            if !self.fill().await? {
                return match self.rbuf.is_empty() {
                    true => Ok(None),
                    false => Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into())),
                };
            }
        }
    }

    /// Receives one segment (see `segment`) that must arrive within `limit`:
    /// the opening segments of a data connection, whose payloads are small.
    pub async fn recv_segment_within(
        &mut self,
        limit: Duration,
    ) -> Result<(SegmentHeader, BytesMut), WireError> {
        let read = async {
            loop {
                if self.rbuf.len() >= SEGMENT_HEADER_LEN {
                    let h = SegmentHeader::decode(
                        self.rbuf[..SEGMENT_HEADER_LEN].try_into().expect("5 bytes"),
                    )?;
                    if h.len > self.max_frame {
                        return Err(crate::DecodeError::FrameTooLong {
                            len: h.len,
                            max: self.max_frame,
                        }
                        .into());
                    }
                    if self.rbuf.len() >= SEGMENT_HEADER_LEN + h.len {
                        self.rbuf.advance(SEGMENT_HEADER_LEN);
                        return Ok((h, self.rbuf.split_to(h.len)));
                    }
                }
                if !self.fill().await? {
                    return Err(WireError::Closed);
                }
            }
        };
        tokio::time::timeout(limit, read).await.map_err(|_| WireError::Timeout(limit))?
    }

    /// Reads more bytes into the buffer; false at the end of the stream.
    async fn fill(&mut self) -> Result<bool, WireError> {
        self.rbuf.reserve(READ_CHUNK);
        Ok(self.io.read_buf(&mut self.rbuf).await? > 0)
    }

    /// Receives a frame's body that must arrive within `limit`: a timeout and
    /// an end of stream are errors.
    pub async fn recv_frame_within(&mut self, limit: Duration) -> Result<BytesMut, WireError> {
        match tokio::time::timeout(limit, self.recv_frame()).await {
            Err(_) => Err(WireError::Timeout(limit)),
            Ok(Ok(None)) => Err(WireError::Closed),
            Ok(Ok(Some(body))) => Ok(body),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Receives a message that must arrive within `limit` (a handshake): a
    /// timeout and an end of stream are errors.
    pub async fn recv_within<M: Message>(&mut self, limit: Duration) -> Result<M, WireError> {
        match tokio::time::timeout(limit, self.recv()).await {
            Err(_) => Err(WireError::Timeout(limit)),
            Ok(Ok(None)) => Err(WireError::Closed),
            Ok(Ok(Some(m))) => Ok(m),
            Ok(Err(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::DecodeError;
    use crate::msg::{AgentMsg, HostMsg};

    #[tokio::test]
    async fn messages_cross_and_leftover_bytes_are_kept() {
        let (a, b) = tokio::io::duplex(1024);
        let (mut a, mut b) = (Conn::new(a), Conn::new(b));
        a.send_all([&AgentMsg::Pong { seq: 1 }, &AgentMsg::Refused { reason: "x".into() }])
            .await
            .unwrap();
        a.get_ref();
        let (mut raw, _) = a.into_parts();
        raw.write_all(b"raw bytes").await.unwrap();
        drop(raw);
        assert_eq!(b.recv::<AgentMsg>().await.unwrap(), Some(AgentMsg::Pong { seq: 1 }));
        assert_eq!(
            b.recv::<AgentMsg>().await.unwrap(),
            Some(AgentMsg::Refused { reason: "x".into() })
        );
        let (_, rest) = b.into_parts();
        // Whatever followed the frames in the same read is handed back.
        assert!(b"raw bytes".starts_with(&rest), "{rest:?}");
    }

    #[tokio::test]
    async fn errors_are_typed() {
        let cases: Vec<(&str, Vec<u8>, usize)> = vec![
            ("unknown tag", vec![0, 0, 0, 1, 9], MAX_FRAME),
            ("too long for a handshake", vec![0, 0, 1, 0], 64),
            ("cut inside a frame", vec![0, 0, 0, 5, 1], MAX_FRAME),
            ("closed", vec![], MAX_FRAME),
        ];
        for (name, wire, max) in cases {
            let (mut peer, io) = tokio::io::duplex(4096);
            peer.write_all(&wire).await.unwrap();
            drop(peer);
            let mut c = Conn::new(io);
            c.set_max_frame(max);
            let got = c.recv::<HostMsg>().await;
            match (name, got) {
                ("unknown tag", Err(WireError::Decode(DecodeError::UnknownTag { tag: 9, .. }))) => {
                }
                (
                    "too long for a handshake",
                    Err(WireError::Decode(DecodeError::FrameTooLong { len: 256, max: 64 })),
                ) => {}
                ("cut inside a frame", Err(WireError::Io(e)))
                    if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
                ("closed", Ok(None)) => {}
                (name, got) => panic!("{name}: {got:?}"),
            }
        }
    }

    #[tokio::test]
    async fn handshake_reads_time_out() {
        tokio::time::pause();
        let (_keep, b) = tokio::io::duplex(64);
        let mut b = Conn::new(b);
        let err = b.recv_within::<HostMsg>(Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, WireError::Timeout(d) if d == Duration::from_secs(5)), "{err:?}");
    }
}
