//! `tcp:` transport: for tests and the local demo. Sockets carry small
//! control frames, so Nagle's delay is off.

use std::io;
use std::net::SocketAddr;
use tokio::net::TcpStream;

pub(super) async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true).ok();
    Ok(s)
}

/// A zero linger makes close send RST at once; on a non-blocking socket it
/// never blocks.
pub(super) fn reset_on_close(s: &TcpStream) {
    let _: io::Result<()> = socket2::SockRef::from(s).set_linger(Some(std::time::Duration::ZERO));
}
