//! The host listener: bind a forward's port on the host without sharing it with
//! anyone (no SO_REUSEPORT; SO_REUSEADDR only so a port in TIME_WAIT can be
//! re-mirrored, which Linux never lets override a live listener), and accept
//! clients, each carried by its own task, as many at once as the connection
//! limit allows. Accept errors are logged and the loop goes on.

use crate::data::{carry, CarryError};
use crate::forwards::HeldPort;
use crate::{Config, ForwardStats};
use hoist_wire::{Endpoint, Refusal};
#[cfg(unix)]
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
#[cfg(unix)]
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

#[cfg(windows)]
pub use crate::listener_windows::bind_host_port;

/// Binds and listens on `addr` with Nagle off for every client; IPv6
/// sockets are v6-only so they never take the IPv4 port as well.
#[cfg(unix)]
pub fn bind_host_port(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    // Accepted connections inherit it (Linux copies the listener's TCP
    // options): one system call per port instead of one per client.
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Accepts until the task is aborted (its forward's handle dropped). A
/// client beyond the connection limit is reset at once.
pub async fn accept_loop(
    listener: HeldPort<TcpListener>,
    endpoint: Endpoint,
    config: Arc<Config>,
    stats: Arc<ForwardStats>,
) {
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                let permit = match config.limit.try_admit() {
                    Ok(permit) => permit,
                    Err(over) => {
                        if over.first_in_burst {
                            warn!(event = "connection_limit", max = over.max, port = endpoint.port, "at the limit of {} client connections: resetting new clients until some end", over.max);
                        }
                        hoist_net::reset(client);
                        continue;
                    }
                };
                if let Some(n) = permit.ended_burst {
                    info!(
                        event = "connection_limit_cleared",
                        refused = n,
                        "below the connection limit again; {n} clients were reset meanwhile"
                    );
                }
                let config = config.clone();
                let stats = stats.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    stats.open.fetch_add(1, Ordering::Relaxed);
                    stats.total.fetch_add(1, Ordering::Relaxed);
                    let carried = carry(client, endpoint, &config.pool, &stats.traffic).await;
                    stats.open.fetch_sub(1, Ordering::Relaxed);
                    match carried {
                        Ok(()) => {
                            debug!(port = endpoint.port, client = %peer, "connection finished")
                        }
                        // A guest listener that closed a moment ago: routine.
                        Err(CarryError::Refused(Refusal::NotListening, reason)) => {
                            debug!(port = endpoint.port, client = %peer, "refused: {reason}")
                        }
                        Err(e) => {
                            warn!(event = "connection_error", port = endpoint.port, family = %endpoint.family(), client = %peer, "{e}")
                        }
                    }
                });
            }
            // The forward's handle shut the listener down: it is closing.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => return,
            Err(e) => {
                warn!(event = "accept_error", port = endpoint.port, family = %endpoint.family(), "accepting: {e}");
                // Out of descriptors: pause instead of spinning on the error.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// Clients come with Nagle off without a system call each: they inherit
    /// it from the host listener.
    #[tokio::test]
    async fn clients_inherit_nodelay_from_the_host_listener() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(l) = bind_host_port(addr.parse().unwrap()) else { continue };
            let _c = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let (accepted, _) = l.accept().await.unwrap();
            assert!(accepted.nodelay().unwrap(), "{addr}");
        }
    }
}
