//! `vsock:` transport: the guest agent's listener and a Linux host with
//! vhost-vsock.

use anyhow::Result;
use tokio_vsock::{VsockAddr, VsockListener, VsockStream};

pub(super) async fn connect(cid: u32, port: u32) -> Result<VsockStream> {
    Ok(VsockStream::connect(VsockAddr::new(cid, port)).await?)
}

pub(super) fn bind(cid: u32, port: u32) -> Result<VsockListener> {
    Ok(VsockListener::bind(VsockAddr::new(cid, port))?)
}
