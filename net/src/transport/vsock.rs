//! `vsock:` transport: the guest agent's listener and a Linux host with
//! vhost-vsock.

use anyhow::Result;
use tokio_vsock::{VsockAddr, VsockListener, VsockStream};

pub(super) async fn connect(cid: u32, port: u32) -> Result<VsockStream> {
    Ok(VsockStream::connect(VsockAddr::new(cid, port)).await?)
}

pub(super) fn bind(cid: u32, port: u32) -> Result<VsockListener> {
    VsockListener::bind(VsockAddr::new(cid, port)).map_err(|e| bind_error(port, e))
}

/// Ports up to 1023 need root or CAP_NET_BIND_SERVICE (the kernel's
/// `__vsock_bind_connectible` answers EACCES): say so.
fn bind_error(port: u32, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::PermissionDenied && port <= 1023 {
        return anyhow::anyhow!(
            "binding vsock port {port} needs root or CAP_NET_BIND_SERVICE (vsock ports up to 1023 are privileged): {e}"
        );
    }
    e.into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_privileged_port_refused_says_what_to_grant() {
        let denied = || std::io::Error::from_raw_os_error(13);
        let e = super::bind_error(1023, denied()).to_string();
        assert!(e.contains("needs root or CAP_NET_BIND_SERVICE"), "{e}");
        let e = format!("{:#}", super::bind_error(5000, denied()));
        assert!(!e.contains("CAP_NET_BIND_SERVICE"), "{e}");
    }
}
