//! hoist's wire format: what crosses between the host relay and the guest
//! agent, and nothing else (no sockets, no logging, no command line). Frames
//! are length-prefixed and bounded (`frame`), there is one message enum per
//! direction with a strict, typed decoder (`msg`, `error`), and [`Conn`] owns
//! the framing of a connection.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod conn;
mod error;
mod frame;
mod msg;

pub use conn::Conn;
pub use error::{DecodeError, WireError};
pub use frame::{split as split_frame, HANDSHAKE_TIMEOUT, HEADER_LEN, MAX_FRAME};
pub use msg::{
    AgentMsg, Endpoint, Family, Forward, HostMsg, Message, MAX_COMM, PROTOCOL_VERSION,
    SNAPSHOT_CHUNK,
};
