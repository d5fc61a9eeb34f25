//! The host listener's bind on Windows, where the port rules differ from
//! Linux: SO_REUSEADDR there would let another program bind the same port
//! and take its connections, so hoist binds with SO_EXCLUSIVEADDRUSE instead:
//! nobody can co-bind or hijack a mirrored port. (Windows needs no
//! SO_REUSEADDR to re-bind a port whose old connections sit in TIME_WAIT.) A
//! port another program holds fails the bind and is reported and skipped, as
//! on Linux. The accept loop is the same as on Linux (`listener.rs`).

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// WSAEACCES: an exclusive holder, or a port in a range Windows reserves.
const WSAEACCES: i32 = 10013;

/// Binds and listens on `addr` with exclusive use; IPv6 sockets are v6-only
/// so they never take the IPv4 port as well.
pub fn bind_host_port(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    hoist_net::set_exclusive_addr_use(&socket)?;
    socket.bind(&addr.into()).map_err(|e| match e.raw_os_error() {
        Some(WSAEACCES) => io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("held exclusively by another program or reserved by Windows (netsh interface ipv4 show excludedportrange protocol=tcp): {e}"),
        ),
        _ => e,
    })?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwards::Forwards;
    use crate::{Config, Status};
    use hoist_wire::{Endpoint, Family, Forward};
    use std::sync::Arc;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// No other socket can bind a mirrored port, not even with SO_REUSEADDR;
    /// a port already held is reported as in use.
    #[tokio::test]
    async fn a_mirrored_port_is_exclusive_and_a_held_port_is_in_use() {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let _mirror = bind_host_port(addr).unwrap();
        let thief = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        thief.set_reuse_address(true).unwrap();
        assert!(thief.bind(&addr.into()).is_err(), "co-bound a mirrored port");

        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = bind_host_port(held.local_addr().unwrap()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
    }

    #[tokio::test]
    async fn ipv6_mirrors_are_v6_only() {
        let port = free_port();
        let _v6 = bind_host_port(([0u16, 0, 0, 0, 0, 0, 0, 1], port).into()).unwrap();
        let _v4 = bind_host_port(([127, 0, 0, 1], port).into()).unwrap();
    }

    /// Windows cannot shut a listening socket down, so a removed forward's
    /// port closes when its aborted accept task is dropped: the next time
    /// the runtime runs, before anything else of the caller's.
    #[tokio::test]
    async fn a_removed_forward_refuses_once_the_runtime_has_run() {
        let port = free_port();
        let mut fw = Forwards::new(
            Arc::new(Config::new("tcp:127.0.0.1:9".parse().unwrap())),
            crate::Rules::default(),
        );
        let endpoint = Endpoint::tcp(Family::V4, port);
        let forward = Forward {
            endpoint,
            guest_addr: "127.0.0.1".parse().unwrap(),
            pid: 1,
            comm: "x".into(),
        };
        fw.add(forward);
        let mut st = Status::default();
        fw.fill_status(&mut st);
        assert!(st.serving.contains(&endpoint), "{st:?}");
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("forward accepts");
        fw.remove(endpoint);
        tokio::task::yield_now().await;
        let e = std::net::TcpStream::connect(("127.0.0.1", port)).expect_err("still open");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    }
}
