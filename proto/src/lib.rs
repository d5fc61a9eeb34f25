//! What the host relay and the guest agent share: the wire protocol (`frame`,
//! `msg`), the transports that carry it (`transport`), the full-duplex byte
//! relay both sides run on data connections (`relay`), and log set-up.

pub mod frame;
pub mod logging;
pub mod msg;
pub mod relay;
pub mod sys;
pub mod transport;

pub use msg::{AgentMsg, Endpoint, Family, Forward, HostMsg, PROTOCOL_VERSION};
