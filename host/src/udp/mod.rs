//! A UDP forward on the host: one UDP socket bound like a TCP forward's port
//! (loopback or `--bind-address`, IPv6 v6-only, never shared: no
//! SO_REUSEADDR or SO_REUSEPORT, SO_EXCLUSIVEADDRUSE on Windows) and one task
//! that reads it. Each client address is a flow (`flows`, the pure table:
//! bounded queue per flow, bounded flows, idle expiry); each flow is carried
//! over a data connection of its own from the session's pool (`flow`), so
//! it counts against the connection limit like a TCP client. The task sleeps
//! until the first flow may expire only while flows exist: an idle forward
//! wakes for nothing. Its handle (`forwards::ForwardHandle`) makes the port
//! deaf at once when dropped ([`deafen`]): the socket is connected to itself,
//! so every client's datagram meets no socket (the client sees the port
//! closed) even before the runtime has dropped the aborted task, which closes
//! it. On Windows (as far as Wine shows) a deafened socket refuses nobody: the
//! port refuses once the runtime drops the task, right after, as a TCP
//! forward's does there.

mod flow;
pub mod flows;

use crate::forwards::HeldPort;
use crate::{Config, ForwardStats};
use flows::{Arrival, DropReason, FlowId, FlowTable, Limits};
use hoist_net::DatagramBuf;
use hoist_wire::Endpoint;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

/// Flows one forward carries at once.
pub const MAX_FLOWS: usize = 512;
/// Datagrams one flow may have waiting for its data connection.
pub const QUEUE_DATAGRAMS: usize = 256;
/// Bytes one flow may have waiting (two of the largest datagrams fit).
pub const QUEUE_BYTES: usize = 128 * 1024;
/// The forward socket's receive buffer: room for a burst of the largest
/// datagrams from many clients at once while the task drains it.
const RECV_BUFFER: usize = 8 << 20;

/// Binds `addr` for a UDP forward: IPv6 v6-only, exclusive, non-blocking.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // On Windows a plain bind could be co-bound by a program asking for
    // SO_REUSEADDR: take the port exclusively. On Linux nobody can share a
    // UDP port unless every holder asks to, and this one does not.
    #[cfg(windows)]
    hoist_net::set_exclusive_addr_use(&socket)?;
    socket.set_nonblocking(true)?;
    #[cfg(unix)]
    socket.set_cloexec(true)?;
    socket.bind(&addr.into())?;
    hoist_net::grow_recv_buffer(&socket, RECV_BUFFER);
    Ok(socket.into())
}

/// Makes a forward's port refuse every client at once, through another
/// descriptor of its socket: connected to itself, the socket matches no
/// client's datagram, which the kernel then answers as for a closed port.
pub fn deafen(socket: &socket2::Socket) {
    if let Ok(own) = socket.local_addr() {
        let _ = socket.connect(&own);
    }
}

/// A forward's shared state: its socket, its flows and how to wake each
/// flow's sender.
struct Forward {
    endpoint: Endpoint,
    /// Closed (and the port freed) with the last flow's reference.
    socket: HeldPort<UdpSocket>,
    config: Arc<Config>,
    /// Flows carried now and since the forward opened, bytes both ways.
    stats: Arc<ForwardStats>,
    state: Mutex<State>,
}

struct State {
    table: FlowTable,
    flows: HashMap<FlowId, Arc<FlowCtl>>,
}

/// How the forward's task tells a flow's sender what to do.
#[derive(Default)]
struct FlowCtl {
    /// Datagrams are waiting, or the flow is ending.
    wake: Notify,
    /// The flow expired: send what waits, then `Fin`.
    ending: AtomicBool,
}

impl Forward {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Forward {
    /// The forward's account, once its task and every flow are gone.
    fn drop(&mut self) {
        let st = self.lock();
        let (e, drops) = (self.endpoint, st.table.drops());
        if drops.total() > 0 {
            info!(event = "udp_forward_drops", port = e.port, family = %e.family(), flows = st.table.opened(), dropped = drops.total(), queue_full = drops.queue_full, too_many_flows = drops.too_many_flows, flow_failed = drops.flow_failed, "UDP forward closed: {} datagrams were dropped over its life", drops.total());
        } else {
            tracing::debug!(port = e.port, family = %e.family(), flows = st.table.opened(), open_flows = st.table.len(), "UDP forward closed");
        }
    }
}

/// Serves the forward on `socket` until the task is aborted (its handle
/// dropped).
pub async fn serve(
    socket: HeldPort<UdpSocket>,
    endpoint: Endpoint,
    config: Arc<Config>,
    stats: Arc<ForwardStats>,
) {
    let limits = Limits {
        max_flows: MAX_FLOWS,
        queue_datagrams: QUEUE_DATAGRAMS,
        queue_bytes: QUEUE_BYTES,
        idle: config.udp_idle_timeout,
    };
    let fwd = Arc::new(Forward {
        endpoint,
        socket,
        config,
        stats,
        state: Mutex::new(State { table: FlowTable::new(limits), flows: HashMap::new() }),
    });
    // Flow tasks end with the forward: dropping the set aborts them.
    let mut tasks = JoinSet::new();
    let mut buf = DatagramBuf::default();
    let mut expiry: Option<Instant> = None;
    let mut burst = Burst::default();
    loop {
        tokio::select! {
            r = fwd.socket.recv_from(buf.payload_mut()) => match r {
                Ok((n, client)) => {
                    // The segment as it will be written: the copy holds the
                    // datagram's bytes and no more, whatever its size.
                    let segment = bytes::Bytes::copy_from_slice(buf.segment(n));
                    arrive(&fwd, client, segment, &mut tasks, &mut expiry, &mut burst);
                }
                // Windows reports a client's ICMP "port unreachable" on the
                // next receive: it concerns one client, not the forward.
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused) => {}
                Err(e) => {
                    warn!(event = "accept_error", proto = "udp", port = endpoint.port, family = %endpoint.family(), "receiving: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = sleep_until(expiry), if expiry.is_some() => {
                let now = Instant::now();
                let mut st = fwd.lock();
                for id in st.table.expire(now) {
                    if let Some(ctl) = st.flows.remove(&id) {
                        ctl.ending.store(true, std::sync::atomic::Ordering::Release);
                        ctl.wake.notify_one();
                    }
                }
                expiry = st.table.next_expiry();
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// A datagram from `client`: queued on its flow, or a new flow started.
fn arrive(
    fwd: &Arc<Forward>,
    client: SocketAddr,
    segment: bytes::Bytes,
    tasks: &mut JoinSet<()>,
    expiry: &mut Option<Instant>,
    burst: &mut Burst,
) {
    let endpoint = fwd.endpoint;
    let mut st = fwd.lock();
    match st.table.arrive(Instant::now(), client, segment) {
        Arrival::Queued(id) => {
            burst.accepted(endpoint);
            if let Some(ctl) = st.flows.get(&id) {
                ctl.wake.notify_one();
            }
        }
        Arrival::New(id) => {
            let permit = match fwd.config.limit.try_admit() {
                Ok(permit) => permit,
                Err(over) => {
                    if over.first_in_burst {
                        warn!(event = "connection_limit", max = over.max, proto = "udp", port = endpoint.port, "at the limit of {} client connections: dropping new UDP flows until some end", over.max);
                    }
                    st.table.remove(id);
                    burst.dropped(endpoint, DropReason::FlowFailed);
                    return;
                }
            };
            burst.accepted(endpoint);
            let ctl = Arc::new(FlowCtl::default());
            st.flows.insert(id, ctl.clone());
            if expiry.is_none() {
                *expiry = st.table.next_expiry();
            }
            drop(st);
            tasks.spawn(flow::run(fwd.clone(), id, client, ctl, permit));
        }
        Arrival::Dropped(why) => burst.dropped(endpoint, why),
    }
}

/// Drops are logged once when they start and once when they stop, not once
/// per datagram.
#[derive(Default)]
struct Burst {
    dropped: u64,
}

impl Burst {
    fn dropped(&mut self, endpoint: Endpoint, why: DropReason) {
        if self.dropped == 0 {
            let reason = match why {
                DropReason::QueueFull => {
                    "a flow's queue is full (its data connection is slower than its client)"
                }
                DropReason::TooManyFlows => "the forward carries as many flows as it may",
                DropReason::FlowFailed => "a flow could not be carried",
            };
            warn!(event = "udp_drops", port = endpoint.port, family = %endpoint.family(), "dropping datagrams: {reason}");
        }
        self.dropped += 1;
    }

    fn accepted(&mut self, endpoint: Endpoint) {
        if self.dropped > 0 {
            info!(event = "udp_drops_cleared", port = endpoint.port, family = %endpoint.family(), dropped = self.dropped, "datagrams pass again; {} were dropped meanwhile", self.dropped);
            self.dropped = 0;
        }
    }
}

/// Sleeps until `at`; never when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forward's port refuses a client at once when its handle deafens it,
    /// while its task still holds the socket (nothing has yielded to the
    /// runtime since). Linux only: under Wine the client sees no refusal
    /// from a deafened socket (see the module's doc).
    #[cfg(not(windows))]
    #[tokio::test]
    async fn a_deafened_forward_refuses_at_once() {
        let std_socket = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = std_socket.local_addr().unwrap();
        let handle = socket2::SockRef::from(&std_socket).try_clone().unwrap();
        let config = Arc::new(Config::new("unix:/nonexistent".parse().unwrap()));
        let (socket, _freed) = HeldPort::new(UdpSocket::from_std(std_socket).unwrap());
        let task = tokio::spawn(serve(
            socket,
            Endpoint::udp(hoist_wire::Family::V4, addr.port()),
            config,
            Default::default(),
        ));
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(addr).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        deafen(&handle);
        client.send(b"anyone?").unwrap();
        let err = client.recv(&mut [0u8; 16]).unwrap_err();
        // Windows (and Wine) say "reset" where Linux says "refused".
        assert!(
            matches!(err.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset),
            "{err}"
        );
        task.abort();
    }

    /// A UDP forward's port is its own: another socket cannot bind it, even
    /// asking to share it; IPv6 forwards are v6-only (the IPv4 port stays
    /// free for the IPv4 forward).
    #[test]
    fn a_forward_port_is_exclusive_and_ipv6_ones_are_v6_only() {
        let held = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = held.local_addr().unwrap();
        let thief =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        thief.set_reuse_address(true).unwrap();
        assert!(thief.bind(&addr.into()).is_err(), "co-bound a forwarded UDP port");
        let e = bind(addr).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        let v6: SocketAddr = ([0u16, 0, 0, 0, 0, 0, 0, 1], 0).into();
        if let Ok(v6) = bind(v6) {
            let port = v6.local_addr().unwrap().port();
            let v4 = std::net::UdpSocket::bind(("127.0.0.1", port));
            assert!(v4.is_ok(), "the IPv6 forward took the IPv4 port too");
        }
    }
}
