//! A data connection after its first frame ([`HostMsg::Data`]): segments,
//! both ways, each a 5-byte header and a payload. The bytes of the client's
//! (or guest server's) stream travel in `Bytes` segments; a stream's end and a
//! reset travel in band, so they survive every transport (a Unix socket or a
//! vsock multiplexer has no reset and may not carry a half-close). A UDP flow
//! (an `Open` of a UDP endpoint) carries one datagram per `Datagram`
//! segment instead, so datagram boundaries survive the byte stream.
//!
//! ```text
//! +-----------+---------------+-------------------+
//! | kind: u8  | len: u32 (BE) | payload: len bytes |
//! +-----------+---------------+-------------------+
//! ```
//!
//! | kind | segment   | payload                          | sent by                   |
//! |------|-----------|----------------------------------|---------------------------|
//! | 1    | `Open`    | endpoint (see `msg`)             | host, first               |
//! | 2    | `Opened`  | none                             | agent, first: dialled (1) |
//! | 3    | `Refused` | code:u8 reason:str               | agent, first; then closes |
//! | 4    | `Bytes`   | 1..=[`MAX_SEGMENT`] stream bytes | both                      |
//! | 5    | `Fin`     | none: the sender's stream ended  | both, once                |
//! | 6    | `Reset`   | none: the sender's side reset    | both                      |
//! | 7    | `Datagram`| one UDP datagram, 0..=[`MAX_DATAGRAM`] bytes | both, UDP flows only |
//!
//! (1) For a TCP endpoint the agent sends `Opened` in the same write as its
//! first other segment (the guest server's first bytes, its end or its
//! reset), however late that is, and the host waits for it without a
//! deadline: the answer costs no write and no wake-up of its own. A UDP
//! flow's `Opened` comes at once, as its socket is made.
//!
//! A connection ends cleanly only after a `Fin` each way; an end of stream
//! any earlier, or a `Reset`, resets the other side's TCP connection. A UDP
//! flow carries `Datagram`s, never `Bytes`; the host ends it with `Fin` when
//! it has been idle (the agent answers `Fin`), and either side may `Reset`
//! it.
//!
//! A data connection carries one client connection after another: after a
//! clean end the next `Open` may follow at once, or after any idle time (the
//! host keeps at most [`MAX_IDLE_DATA`] such connections waiting). The host
//! sends the client's first `Bytes` right behind its `Open`, without waiting
//! for the answer; after a `Refused` or a reset the connection is closed.
//!
//! [`HostMsg::Data`]: crate::HostMsg::Data

use crate::error::DecodeError;
use crate::msg::{put_endpoint, put_str, Endpoint, Reader};
use std::fmt;

/// Bytes of a segment header.
pub const SEGMENT_HEADER_LEN: usize = 5;

/// Largest `Bytes` payload sent or accepted.
pub const MAX_SEGMENT: usize = 1 << 20;

/// Largest `Datagram` payload: a UDP length field's maximum (the largest
/// datagram IPv4 carries is 65,507 bytes, IPv6 65,527).
pub const MAX_DATAGRAM: usize = 65_535;

/// Idle data connections a host keeps open to the agent at most, per
/// session: the agent's bound on data connections is its bound on carried
/// connections plus this.
pub const MAX_IDLE_DATA: usize = 64;

/// Longest `Refused` payload: a code, a length and a reason of 1 KiB.
const MAX_REFUSED: usize = 3 + 1024;

/// What a segment is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentKind {
    /// Host -> agent, first: the endpoint a client connected to.
    Open,
    /// Agent -> host, first: the guest's port answered.
    Opened,
    /// Agent -> host, first: the guest's port did not answer.
    Refused,
    /// Stream bytes.
    Bytes,
    /// The sender's stream ended.
    Fin,
    /// The sender's side was reset.
    Reset,
    /// One UDP datagram, whole (a UDP flow's only payload).
    Datagram,
}

/// A segment's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// What follows.
    pub kind: SegmentKind,
    /// Bytes of payload that follow.
    pub len: usize,
}

impl SegmentHeader {
    /// A header for `kind` with `len` bytes of payload.
    pub fn new(kind: SegmentKind, len: usize) -> SegmentHeader {
        SegmentHeader { kind, len }
    }

    /// The header's bytes.
    pub fn encode(self) -> [u8; SEGMENT_HEADER_LEN] {
        let kind = match self.kind {
            SegmentKind::Open => 1,
            SegmentKind::Opened => 2,
            SegmentKind::Refused => 3,
            SegmentKind::Bytes => 4,
            SegmentKind::Fin => 5,
            SegmentKind::Reset => 6,
            SegmentKind::Datagram => 7,
        };
        let len = (self.len as u32).to_be_bytes();
        [kind, len[0], len[1], len[2], len[3]]
    }

    /// Reads a header, checking the length its kind allows.
    pub fn decode(b: [u8; SEGMENT_HEADER_LEN]) -> Result<SegmentHeader, DecodeError> {
        use SegmentKind::*;
        let kind = match b[0] {
            1 => Open,
            2 => Opened,
            3 => Refused,
            4 => Bytes,
            5 => Fin,
            6 => Reset,
            7 => Datagram,
            tag => return Err(DecodeError::UnknownTag { what: "segment", tag }),
        };
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        let ok = match kind {
            Open => len == ENDPOINT_V4_LEN || len == ENDPOINT_V6_LEN,
            Opened | Fin | Reset => len == 0,
            Refused => (3..=MAX_REFUSED).contains(&len),
            Bytes => (1..=MAX_SEGMENT).contains(&len),
            // An empty datagram is a datagram.
            Datagram => len <= MAX_DATAGRAM,
        };
        if !ok {
            return Err(DecodeError::Invalid { what: "segment length", value: len as u64 });
        }
        Ok(SegmentHeader { kind, len })
    }
}

/// Bytes of an encoded endpoint.
const ENDPOINT_V4_LEN: usize = 8;
const ENDPOINT_V6_LEN: usize = 20;

/// Why the agent did not open a data connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No guest listener is behind the endpoint (it closed a moment ago).
    NotListening,
    /// Dialling the guest listener failed.
    DialFailed,
    /// Dialling the guest listener took too long.
    DialTimedOut,
    /// The agent already carries as many connections as it may.
    OverLimit,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::NotListening => "no guest listener",
            Refusal::DialFailed => "dialling the guest listener failed",
            Refusal::DialTimedOut => "dialling the guest listener timed out",
            Refusal::OverLimit => "the agent carries as many connections as it may",
        })
    }
}

/// The header of a `Datagram` segment carrying `len` bytes (at most
/// [`MAX_DATAGRAM`]: the payload is one UDP datagram).
pub fn datagram_header(len: usize) -> [u8; SEGMENT_HEADER_LEN] {
    debug_assert!(len <= MAX_DATAGRAM, "a UDP datagram holds at most {MAX_DATAGRAM} bytes");
    SegmentHeader::new(SegmentKind::Datagram, len).encode()
}

/// The `Open` segment for `endpoint`, header included.
pub fn open_segment(endpoint: &Endpoint) -> Vec<u8> {
    let mut payload = Vec::with_capacity(ENDPOINT_V6_LEN);
    put_endpoint(&mut payload, endpoint);
    let mut out = SegmentHeader::new(SegmentKind::Open, payload.len()).encode().to_vec();
    out.extend_from_slice(&payload);
    out
}

/// Reads an `Open` payload.
pub fn parse_open(payload: &[u8]) -> Result<Endpoint, DecodeError> {
    let mut r = Reader(payload);
    let e = r.endpoint()?;
    r.finish()?;
    Ok(e)
}

/// The `Refused` segment, header included; the reason is clipped to fit.
pub fn refused_segment(why: Refusal, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_REFUSED - 3);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = vec![match why {
        Refusal::NotListening => 1,
        Refusal::DialFailed => 2,
        Refusal::DialTimedOut => 3,
        Refusal::OverLimit => 4,
    }];
    put_str(&mut payload, &reason[..end]);
    let mut out = SegmentHeader::new(SegmentKind::Refused, payload.len()).encode().to_vec();
    out.extend_from_slice(&payload);
    out
}

/// Reads a `Refused` payload.
pub fn parse_refused(payload: &[u8]) -> Result<(Refusal, String), DecodeError> {
    let mut r = Reader(payload);
    let why = match r.u8()? {
        1 => Refusal::NotListening,
        2 => Refusal::DialFailed,
        3 => Refusal::DialTimedOut,
        4 => Refusal::OverLimit,
        tag => return Err(DecodeError::UnknownTag { what: "refusal", tag }),
    };
    let reason = r.string()?;
    r.finish()?;
    Ok((why, reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Family, Proto};

    /// The segment format, pinned byte for byte.
    #[test]
    fn golden_bytes() {
        let e = Endpoint::tcp(Family::V6, 443);
        let mut v6 = vec![1, 0, 0, 0, 20, 6, 6];
        v6.extend_from_slice(&[0; 15]);
        v6.extend_from_slice(&[1, 1, 187]);
        assert_eq!(open_segment(&e), v6);
        assert_eq!(parse_open(&v6[5..]).unwrap(), e);
        let e = Endpoint { proto: Proto::Udp, addr: "127.0.0.2".parse().unwrap(), port: 53 };
        assert_eq!(open_segment(&e), [1, 0, 0, 0, 8, 17, 4, 127, 0, 0, 2, 0, 53]);
        let u = Endpoint::udp(Family::V4, 53);
        assert_eq!(open_segment(&u), [1, 0, 0, 0, 8, 17, 4, 127, 0, 0, 1, 0, 53]);
        assert_eq!(parse_open(&[17, 4, 127, 0, 0, 1, 0, 53]).unwrap(), u);
        assert_eq!(datagram_header(3), [7, 0, 0, 0, 3]);
        assert_eq!(
            refused_segment(Refusal::DialFailed, "no"),
            [3, 0, 0, 0, 5, 2, 0, 2, b'n', b'o']
        );
        assert_eq!(
            parse_refused(&[2, 0, 2, b'n', b'o']).unwrap(),
            (Refusal::DialFailed, "no".into())
        );
        let codes = [
            (Refusal::NotListening, 1),
            (Refusal::DialFailed, 2),
            (Refusal::DialTimedOut, 3),
            (Refusal::OverLimit, 4),
        ];
        for (why, code) in codes {
            assert_eq!(refused_segment(why, "")[5..], [code, 0, 0], "{why:?}");
            assert_eq!(parse_refused(&[code, 0, 0]).unwrap(), (why, String::new()));
        }
        let headers = [
            (SegmentKind::Opened, 0, [2, 0, 0, 0, 0]),
            (SegmentKind::Bytes, 0x0102, [4, 0, 0, 1, 2]),
            (SegmentKind::Fin, 0, [5, 0, 0, 0, 0]),
            (SegmentKind::Reset, 0, [6, 0, 0, 0, 0]),
            (SegmentKind::Datagram, 0, [7, 0, 0, 0, 0]),
            (SegmentKind::Datagram, 65_535, [7, 0, 0, 0xff, 0xff]),
        ];
        for (kind, len, bytes) in headers {
            assert_eq!(SegmentHeader::new(kind, len).encode(), bytes, "{kind:?}");
            assert_eq!(SegmentHeader::decode(bytes).unwrap(), SegmentHeader::new(kind, len));
        }
    }

    #[test]
    fn headers_outside_their_bounds_are_refused() {
        use DecodeError::*;
        let big = (MAX_SEGMENT as u32 + 1).to_be_bytes();
        let cases: &[(&str, [u8; 5], DecodeError)] = &[
            ("unknown kind", [9, 0, 0, 0, 0], UnknownTag { what: "segment", tag: 9 }),
            ("empty bytes", [4, 0, 0, 0, 0], Invalid { what: "segment length", value: 0 }),
            (
                "bytes over the limit",
                [4, big[0], big[1], big[2], big[3]],
                Invalid { what: "segment length", value: MAX_SEGMENT as u64 + 1 },
            ),
            ("fin with payload", [5, 0, 0, 0, 1], Invalid { what: "segment length", value: 1 }),
            (
                "open of the wrong size",
                [1, 0, 0, 0, 4],
                Invalid { what: "segment length", value: 4 },
            ),
            ("huge refusal", [3, 0, 1, 0, 0], Invalid { what: "segment length", value: 65536 }),
            (
                "datagram longer than UDP allows",
                [7, 0, 1, 0, 0],
                Invalid { what: "segment length", value: 65536 },
            ),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(&SegmentHeader::decode(*bytes).unwrap_err(), want, "{name}");
        }
        assert_eq!(parse_refused(&[9, 0, 0]).unwrap_err(), UnknownTag { what: "refusal", tag: 9 });
        let long = "x".repeat(5000);
        let seg = refused_segment(Refusal::NotListening, &long);
        let header = SegmentHeader::decode(seg[..5].try_into().unwrap()).unwrap();
        assert_eq!(header.len, seg.len() - 5, "a long reason is clipped to a valid segment");
    }
}
