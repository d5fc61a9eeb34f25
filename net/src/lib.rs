//! hoist's runtime pieces, shared by the host relay and the guest agent: the
//! transports that carry the wire protocol (`transport`, the only place that
//! opens sockets to the peer), the full-duplex byte relay both sides run on
//! data connections (`relay`), log set-up and process start-up. The wire
//! format itself lives in `hoist-wire`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod logging;
mod process;
mod relay;
mod sys;
mod transport;

pub use logging::LogFormat;
pub use process::{read_token_file, run_main, stop_on_signal};
pub use relay::{relay, reset, Moved, RelayError};
pub use sys::effective_uid;
pub use transport::{
    check_target, classify_failure, connect, parse_mux_reply, Acceptor, AcceptorOptions, Addr,
    ConnectFailure, Peer, Stream, CID_ANY, CID_HOST,
};
