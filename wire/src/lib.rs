//! hoist's wire format: what crosses between the host relay and the guest
//! agent, and nothing else (no sockets, no logging, no command line). Frames
//! are length-prefixed and bounded (`frame`), there is one message enum per
//! direction with a strict, typed decoder (`msg`, `error`), a data connection
//! carries segments (`segment`), control streams may prove a shared token
//! (`auth`), and [`Conn`] owns the framing of a connection.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auth;
mod conn;
mod error;
mod frame;
mod msg;
mod segment;

pub use auth::{random, Token, MIN_TOKEN};
pub use conn::Conn;
pub use error::{DecodeError, WireError};
pub use frame::{split as split_frame, HANDSHAKE_TIMEOUT, HEADER_LEN, MAX_FRAME};
pub use msg::{
    AgentInfo, AgentMsg, Challenge, Endpoint, Family, Forward, HostMsg, Message, Proto, Ticket,
    MAX_COMM, MAX_FORWARDS, MAX_HOST_FRAME, PROTOCOL_VERSION, SNAPSHOT_CHUNK,
};
pub use segment::{
    datagram_header, open_segment, parse_open, parse_refused, refused_segment, Refusal,
    SegmentHeader, SegmentKind, MAX_DATAGRAM, MAX_IDLE_DATA, MAX_SEGMENT, SEGMENT_HEADER_LEN,
};
