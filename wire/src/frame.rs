//! Framing: every message travels as a big-endian `u32` body length followed
//! by the body, bounded by a per-connection limit (at most [`MAX_FRAME`]) so
//! a corrupt or hostile peer cannot make the reader allocate without limit.
//!
//! ```text
//! +----------------+---------------------------+
//! | len: u32 (BE)  | body: len bytes           |
//! +----------------+---------------------------+
//! ```
//!
//! Pure functions over buffers; [`crate::Conn`] does the I/O.

use crate::error::DecodeError;
use bytes::{Buf, BytesMut};
use std::time::Duration;

/// Largest frame body sent or accepted.
pub const MAX_FRAME: usize = 1024 * 1024;

/// How long a peer may take to send a handshake frame.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Starts a frame in `out`: a length placeholder that [`finish`] fills in.
/// Returns where the frame starts.
pub(crate) fn begin(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    start
}

/// Writes the length of the frame begun at `start`. Bodies are bounded by
/// construction (clipped strings, chunked snapshots); an oversized one is a
/// bug in this crate, not a peer's doing.
pub(crate) fn finish(out: &mut [u8], start: usize) {
    let len = out.len() - start - HEADER_LEN;
    assert!(len <= MAX_FRAME, "a message encoded to {len} bytes, over the frame limit");
    out[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
}

/// Takes one complete frame's body off the front of `buf`; `Ok(None)` when
/// more bytes are needed. A length over `max` is an error before any of the
/// body is read.
pub fn split(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buf[..HEADER_LEN].try_into().expect("4 bytes")) as usize;
    if len > max {
        return Err(DecodeError::FrameTooLong { len, max });
    }
    if buf.len() < HEADER_LEN + len {
        // Reserve at once, so the reader fills the frame without regrowing.
        buf.reserve(HEADER_LEN + len - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    Ok(Some(buf.split_to(len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_or_ask_for_more_and_bounds_hold() {
        type Want = Result<Vec<Vec<u8>>, DecodeError>;
        let cases: &[(&str, &[u8], usize, Want)] = &[
            ("nothing", &[], 16, Ok(vec![])),
            ("cut length", &[0, 0], 16, Ok(vec![])),
            ("cut body", &[0, 0, 0, 5, 1, 2], 16, Ok(vec![])),
            ("empty frame", &[0, 0, 0, 0], 16, Ok(vec![vec![]])),
            ("two frames", &[0, 0, 0, 1, 7, 0, 0, 0, 2, 8, 9], 16, Ok(vec![vec![7], vec![8, 9]])),
            ("at the limit", &[0, 0, 0, 2, 1, 2], 2, Ok(vec![vec![1, 2]])),
            ("over the limit", &[0, 0, 0, 3], 2, Err(DecodeError::FrameTooLong { len: 3, max: 2 })),
            (
                "huge",
                &[0xff, 0xff, 0xff, 0xff],
                MAX_FRAME,
                Err(DecodeError::FrameTooLong { len: u32::MAX as usize, max: MAX_FRAME }),
            ),
        ];
        for (name, wire, max, want) in cases {
            let mut buf = BytesMut::from(*wire);
            let mut got = Vec::new();
            let r = loop {
                match split(&mut buf, *max) {
                    Ok(Some(body)) => got.push(body.to_vec()),
                    Ok(None) => break Ok(got),
                    Err(e) => break Err(e),
                }
            };
            assert_eq!(&r, want, "{name}");
        }
    }

    #[test]
    fn begin_and_finish_write_the_length() {
        let mut out = vec![0xaa];
        let start = begin(&mut out);
        out.extend_from_slice(b"abc");
        finish(&mut out, start);
        assert_eq!(out, [0xaa, 0, 0, 0, 3, b'a', b'b', b'c']);
    }
}
