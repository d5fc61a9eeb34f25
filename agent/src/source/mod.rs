//! Where the listener table's input comes from: kernel events (a hint) and
//! snapshots (the truth). [`EventSource`] is the seam: the agent runs on
//! [`KernelSource`] (eBPF programs, the ring buffer, `sock_diag` and /proc),
//! the in-process tests on a scripted source.

mod btf;
mod diag;
mod kernel;
mod owners;
mod pidns;

pub use btf::Offsets;
pub use diag::{listening_tcp, parse_replies as parse_diag_replies, DiagSocket, Parsed};
pub use kernel::{HookMode, Hooks, KernelSource, Object};
pub use pidns::PidNs;

use crate::table::GuestListener;
use anyhow::Result;
use hoist_common::ListenEvent;
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

/// The real snapshot: `sock_diag` for the listeners, `/proc` for the owners
/// `owner_known` does not know.
pub fn snapshot(owner_known: &dyn Fn(u64) -> bool) -> Result<Vec<GuestListener>> {
    use anyhow::Context;
    let found = listening_tcp().context("sock_diag snapshot of TCP listeners")?;
    let inodes: Vec<u64> =
        found.iter().filter(|d| !owner_known(d.cookie)).map(|d| d.inode).collect();
    let owners = owners::owners(&inodes);
    Ok(found
        .into_iter()
        .map(|d| {
            let (pid, comm) = owners.get(&d.inode).cloned().unwrap_or_default();
            GuestListener {
                cookie: d.cookie,
                addr: d.addr,
                port: d.port,
                ipv6only: d.ipv6only,
                pid,
                comm,
            }
        })
        .collect())
}
