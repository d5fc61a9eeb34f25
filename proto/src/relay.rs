//! The one full-duplex byte relay, used by the host (client <-> agent) and the
//! agent (host <-> guest server). Both directions are driven by one future, so
//! a peer that writes without reading cannot deadlock the other direction; an
//! end of stream in one direction becomes a write shutdown (FIN) on the other
//! side while the opposite direction keeps flowing. Buffers are fixed per
//! connection, so memory stays flat whatever the peers' speeds.

use crate::transport::Stream;
use std::io;

/// Bytes buffered per direction.
pub const BUF_SIZE: usize = 16 * 1024;

/// Bytes moved each way by a finished relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

/// Relays until both directions have ended. On an error (a reset, say) both
/// streams are closed as resets where the transport has them, so the error is
/// passed on rather than turned into a clean end of stream.
pub async fn relay(mut a: Stream, mut b: Stream) -> io::Result<Moved> {
    match tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, BUF_SIZE, BUF_SIZE).await {
        Ok((a_to_b, b_to_a)) => Ok(Moved { a_to_b, b_to_a }),
        Err(e) => {
            a.set_reset_on_close();
            b.set_reset_on_close();
            Err(e)
        }
    }
}
