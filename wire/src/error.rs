//! What can go wrong on the wire, as types: [`DecodeError`] for bytes that
//! are not a valid frame or message (pure decoding), [`WireError`] for a
//! connection as a whole (transport, timeouts, the peer's protocol). Callers
//! and tests match variants, never message text.

use std::fmt;
use std::io;
use std::time::Duration;

/// Bytes that are not a valid frame or message. Decoding is strict: nothing
/// is guessed, skipped or clipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A frame's length prefix announces more than the connection accepts.
    FrameTooLong {
        /// The announced body length.
        len: usize,
        /// The connection's limit.
        max: usize,
    },
    /// The message ends before one of its fields.
    Truncated {
        /// Bytes the next field needs.
        wanted: usize,
        /// Bytes left in the message.
        left: usize,
    },
    /// A tag byte names no known variant.
    UnknownTag {
        /// Which tag: "host message", "agent message", "address family", ...
        what: &'static str,
        /// The byte found.
        tag: u8,
    },
    /// A field holds a value its type does not allow (a boolean of 2, port 0).
    Invalid {
        /// Which field.
        what: &'static str,
        /// The value found.
        value: u64,
    },
    /// A count or length exceeds the protocol's bound for it.
    TooMany {
        /// Which count.
        what: &'static str,
        /// The count found.
        n: usize,
        /// The bound.
        max: usize,
    },
    /// A string field is not UTF-8.
    NotUtf8,
    /// Bytes follow the end of the message.
    TrailingBytes(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::FrameTooLong { len, max } => {
                write!(f, "frame of {len} bytes announced, over the {max}-byte limit")
            }
            DecodeError::Truncated { wanted, left } => {
                write!(f, "message truncated: wanted {wanted} more bytes, {left} left")
            }
            DecodeError::UnknownTag { what, tag } => write!(f, "unknown {what} tag {tag}"),
            DecodeError::Invalid { what, value } => write!(f, "invalid {what}: {value}"),
            DecodeError::TooMany { what, n, max } => write!(f, "{what} of {n} exceeds {max}"),
            DecodeError::NotUtf8 => f.write_str("string is not UTF-8"),
            DecodeError::TrailingBytes(n) => write!(f, "{n} unexpected bytes after the message"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a connection could not carry the protocol further.
#[derive(Debug)]
pub enum WireError {
    /// The transport failed (reset, broken pipe, ...).
    Io(io::Error),
    /// The peer closed the connection where a message was required.
    Closed,
    /// No message within the allowed time.
    Timeout(Duration),
    /// The peer sent bytes that are not a valid frame or message.
    Decode(DecodeError),
    /// The peer speaks another protocol version.
    Version {
        /// The version this build speaks.
        ours: u16,
        /// The version the peer announced.
        theirs: u16,
    },
    /// A valid message that the protocol does not allow at this point.
    Unexpected {
        /// What the protocol allows here.
        wanted: &'static str,
        /// What arrived (the message's variant name).
        got: &'static str,
    },
    /// The peer refused the connection and said why.
    Refused(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Io(e) => write!(f, "{e}"),
            WireError::Closed => f.write_str("the peer closed the connection"),
            WireError::Timeout(d) => write!(f, "no answer within {d:?}"),
            WireError::Decode(e) => write!(f, "malformed frame: {e}"),
            WireError::Version { ours, theirs } => {
                write!(f, "the peer speaks protocol version {theirs}, this build {ours}")
            }
            WireError::Unexpected { wanted, got } => write!(f, "expected {wanted}, got {got}"),
            WireError::Refused(reason) => write!(f, "refused: {reason}"),
        }
    }
}

impl std::error::Error for WireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WireError::Io(e) => Some(e),
            WireError::Decode(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> WireError {
        WireError::Io(e)
    }
}

impl From<DecodeError> for WireError {
    fn from(e: DecodeError) -> WireError {
        WireError::Decode(e)
    }
}
