//! The copying relay, for transports without a descriptor the relay can
//! splice (vsock): tokio's bidirectional copy with fixed buffers, which
//! passes an end of stream on as a write shutdown.

use super::Moved;
use crate::transport::Stream;
use std::io;

/// Bytes buffered per direction.
const BUF_SIZE: usize = 16 * 1024;

pub(super) async fn relay(a: &mut Stream, b: &mut Stream) -> io::Result<Moved> {
    let (a_to_b, b_to_a) =
        tokio::io::copy_bidirectional_with_sizes(a, b, BUF_SIZE, BUF_SIZE).await?;
    Ok(Moved { a_to_b, b_to_a })
}
