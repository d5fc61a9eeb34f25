//! Where the listener table's input comes from: kernel events (a hint) and
//! snapshots (the truth). [`EventSource`] is the seam: the agent runs on
//! [`KernelSource`] (eBPF programs, the ring buffer, `sock_diag` and /proc),
//! the in-process tests on a scripted source.

mod btf;
mod diag;
mod kernel;
mod owners;
mod pidns;
mod udp_rule;

pub use btf::Offsets;
pub use diag::{
    listening_tcp, parse_replies as parse_diag_replies, unconnected_udp, DiagSocket, Parsed,
};
pub use kernel::{HookMode, Hooks, KernelSource, Object, Watch};
pub use pidns::PidNs;
pub use udp_rule::{classify as classify_udp, ephemeral_ports, Verdict as UdpVerdict};

use crate::table::GuestListener;
use anyhow::Result;
use hoist_common::ListenEvent;
use hoist_wire::Proto;
use std::future::Future;

/// The table's inputs: listen/unlisten events as they happen, and the full
/// set of listeners on demand.
pub trait EventSource: Send + 'static {
    /// Waits for events and appends every available one to `out`.
    /// Cancel-safe: nothing is consumed before the wait completes.
    fn next_batch<'a>(
        &'a mut self,
        out: &'a mut Vec<ListenEvent>,
    ) -> impl Future<Output = Result<()>> + Send + 'a;
    /// Events lost so far because the ring buffer was full.
    fn drops(&self) -> Result<u64>;
    /// Every listener of the namespace, now. Owners are looked up only for
    /// sockets whose cookie `owner_known` does not know (pid 0 otherwise).
    fn snapshot(&mut self, owner_known: &dyn Fn(u64) -> bool) -> Result<Vec<GuestListener>>;
}

/// The real snapshot: `sock_diag` for the TCP listeners and (unless UDP is
/// not tracked: `None`) the unconnected UDP sockets, of which `udp_server`
/// keeps the servers (see `udp_rule`), and `/proc` for the owners
/// `owner_known` does not know.
pub fn snapshot(
    owner_known: &dyn Fn(u64) -> bool,
    udp_server: Option<&mut dyn FnMut(&DiagSocket) -> bool>,
) -> Result<Vec<GuestListener>> {
    use anyhow::Context;
    let tcp = listening_tcp().context("sock_diag snapshot of TCP listeners")?;
    let mut found: Vec<(Proto, DiagSocket)> = tcp.into_iter().map(|d| (Proto::Tcp, d)).collect();
    if let Some(udp_server) = udp_server {
        let udp = unconnected_udp().context("sock_diag snapshot of UDP sockets")?;
        found.extend(udp.into_iter().filter(|d| udp_server(d)).map(|d| (Proto::Udp, d)));
    }
    let inodes: Vec<u64> =
        found.iter().filter(|(_, d)| !owner_known(d.cookie)).map(|(_, d)| d.inode).collect();
    let owners = owners::owners(&inodes);
    Ok(found
        .into_iter()
        .map(|(proto, d)| {
            let (pid, comm) = owners.get(&d.inode).cloned().unwrap_or_default();
            GuestListener {
                cookie: d.cookie,
                proto,
                addr: d.addr,
                port: d.port,
                ipv6only: d.ipv6only,
                pid,
                comm,
            }
        })
        .collect())
}
