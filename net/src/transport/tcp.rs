//! `tcp:` transport: for tests and the local demo. Sockets carry small
//! control frames, so Nagle's delay is off.

use std::net::SocketAddr;
use tokio::net::TcpStream;

pub(super) async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true).ok();
    Ok(s)
}
