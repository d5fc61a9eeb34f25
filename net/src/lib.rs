//! hoist's runtime pieces, shared by the host relay and the guest agent: the
//! transports that carry the wire protocol (`transport`, the only place that
//! opens sockets to the peer), the full-duplex byte relay both sides run on
//! data connections (`relay`), a UDP flow's segments on them (`datagram`),
//! the bound on connections carried at once (`limit`), log set-up and
//! process start-up. The wire format itself lives in `hoist-wire`.
// `unsafe` lives only in sys/windows.rs (Windows system calls); elsewhere,
// and on every other OS, there is none.
#![cfg_attr(not(windows), forbid(unsafe_code))]
#![cfg_attr(windows, deny(unsafe_code))]
#![warn(missing_docs)]

pub mod admin;
#[cfg(windows)]
mod console;
mod datagram;
pub mod docs;
mod limit;
mod logging;
mod process;
mod relay;
mod sys;
mod transport;

pub use datagram::{
    datagram_segment, grow_recv_buffer, write_fin, DatagramBuf, FlowSegment, SegmentReader,
};
pub use limit::{Limit, Permit, Refused, DEFAULT_MAX_CONNECTIONS};
pub use logging::LogFormat;
pub use process::{read_token_file, run_main, run_main_logging_to, stop_on_signal};
pub use relay::{relay, reset, Moved, Opening, RelayError, Relayed, Traffic};
#[cfg(target_os = "linux")]
pub use sys::effective_uid;
pub use sys::open_file_limit;
#[cfg(windows)]
pub use sys::{
    registry_delete_value, registry_get_string, registry_set_string, registry_subkeys,
    release_own_console, set_exclusive_addr_use, RegistryRoot,
};
#[cfg(unix)]
pub use transport::parse_mux_reply;
pub use transport::{
    check_target, classify_failure, connect, hvsock, Acceptor, AcceptorOptions, Addr,
    ConnectFailure, Guid, HvVm, Peer, Stream, CID_ANY, CID_HOST,
};
