//! The task that owns the listener table: it drains kernel events into the
//! table, takes a `sock_diag` snapshot when the table must be resynced (start,
//! a control connection from the host, ring-buffer loss, a listen whose port
//! the kernel had not chosen yet), and publishes the resulting host endpoints
//! on a watch channel. Nothing here runs on a timer.

use crate::table::{Change, Exposed, Listener, Table};
use anyhow::{Context, Result};
use hoist_common::{ListenEvent, AF_INET, AF_INET6, EVENT_LISTEN, EVENT_UNLISTEN};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Where listen/unlisten events come from (the kernel, or a test).
pub trait EventSource: Send + 'static {
    /// Waits for events and appends every available one to `out`.
    fn next_batch<'a>(&'a mut self, out: &'a mut Vec<ListenEvent>) -> impl Future<Output = Result<()>> + Send + 'a;
    /// Events lost so far because the ring buffer was full.
    fn drops(&self) -> Result<u64>;
}

impl EventSource for crate::source::KernelSource {
    fn next_batch<'a>(&'a mut self, out: &'a mut Vec<ListenEvent>) -> impl Future<Output = Result<()>> + Send + 'a {
        crate::source::KernelSource::next_batch(self, out)
    }
    fn drops(&self) -> Result<u64> {
        crate::source::KernelSource::drops(self)
    }
}

/// Takes the snapshot: every listener of the namespace, now.
pub type SnapshotFn = Box<dyn Fn() -> Result<Vec<Listener>> + Send>;

/// The real snapshot: `sock_diag` for the listeners, `/proc` for owners of
/// sockets the table does not know yet.
pub fn diag_snapshot() -> Result<Vec<Listener>> {
    let found = crate::source::diag::listeners().context("sock_diag snapshot of TCP listeners")?;
    let inodes: Vec<u64> = found.iter().map(|d| d.inode).collect();
    let owners = crate::source::diag::owners(&inodes);
    Ok(found
        .into_iter()
        .map(|d| {
            let (pid, comm) = owners.get(&d.inode).cloned().unwrap_or_default();
            Listener { cookie: d.cookie, addr: d.addr, port: d.port, ipv6only: d.ipv6only, pid, comm }
        })
        .collect())
}

/// Asks the tracker for a fresh snapshot; answered once it is published.
pub type ResyncRequest = oneshot::Sender<()>;

/// Handles held by the rest of the agent.
#[derive(Clone)]
pub struct TrackerHandle {
    pub exposed: watch::Receiver<Arc<Exposed>>,
    resync: mpsc::Sender<ResyncRequest>,
}

impl TrackerHandle {
    /// Resyncs the table from a snapshot and waits until it is published.
    pub async fn resync(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.resync.send(tx).await.context("tracker has stopped")?;
        rx.await.context("tracker has stopped")
    }
}

pub struct Tracker<S> {
    source: S,
    snapshot: SnapshotFn,
    table: Table,
    published: watch::Sender<Arc<Exposed>>,
    resync: mpsc::Receiver<ResyncRequest>,
    drops_seen: u64,
}

impl<S: EventSource> Tracker<S> {
    /// Builds the tracker and takes the first snapshot, so listeners that
    /// existed before the agent started are in the table from the start.
    pub fn new(source: S, snapshot: SnapshotFn, forward_any_address: bool) -> Result<(Tracker<S>, TrackerHandle)> {
        let (published, exposed) = watch::channel(Arc::new(Exposed::new()));
        let (resync_tx, resync) = mpsc::channel(16);
        let drops_seen = source.drops()?;
        let mut t = Tracker { source, snapshot, table: Table::new(forward_any_address), published, resync, drops_seen };
        t.resync_now().context("initial snapshot")?;
        info!(listeners = t.table.len(), "initial snapshot taken");
        Ok((t, TrackerHandle { exposed, resync: resync_tx }))
    }

    /// Runs until `shutdown`; an error means the event source failed.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        let mut batch = Vec::with_capacity(64);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = self.source.next_batch(&mut batch) => {
                    r.context("reading kernel events")?;
                    self.apply_batch(&mut batch);
                }
                Some(done) = self.resync.recv() => {
                    if let Err(e) = self.resync_now() {
                        warn!("resync failed: {e:#}");
                    }
                    let _ = done.send(());
                }
            }
        }
    }

    fn apply_batch(&mut self, batch: &mut Vec<ListenEvent>) {
        for ev in batch.drain(..) {
            match ev.kind {
                EVENT_LISTEN => match to_listener(&ev) {
                    Some(l) => log_change(self.table.listen(l), "kernel"),
                    None => warn!(family = ev.family, "ignoring listen event of unknown family"),
                },
                EVENT_UNLISTEN => log_change(self.table.unlisten(ev.cookie), "kernel"),
                k => warn!(kind = k, "ignoring kernel event of unknown kind"),
            }
        }
        let mut must_resync = self.table.has_unresolved();
        match self.source.drops() {
            Ok(d) if d > self.drops_seen => {
                warn!(lost = d - self.drops_seen, "ring buffer was full and events were lost: resyncing from a snapshot");
                self.drops_seen = d;
                must_resync = true;
            }
            Ok(_) => {}
            Err(e) => warn!("reading the drop counter: {e:#}"),
        }
        if must_resync {
            if let Err(e) = self.resync_now() {
                warn!("resync failed: {e:#}");
            }
        }
        self.publish();
    }

    fn resync_now(&mut self) -> Result<()> {
        let snap = (self.snapshot)()?;
        for c in self.table.reconcile(snap) {
            log_change(Some(c), "snapshot");
        }
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        let next = self.table.exposed();
        self.published.send_if_modified(|cur| {
            if **cur == next {
                return false;
            }
            *cur = Arc::new(next);
            true
        });
    }
}

fn log_change(change: Option<Change>, via: &'static str) {
    match change {
        Some(Change::Listen(l)) if l.port == 0 => {}
        Some(Change::Listen(l)) => {
            info!(event = "listen", port = l.port, address = %l.addr, ipv6only = l.ipv6only, pid = l.pid, comm = %l.comm, via, "guest listener opened")
        }
        Some(Change::Unlisten(l)) => {
            info!(event = "unlisten", port = l.port, address = %l.addr, pid = l.pid, comm = %l.comm, via, "guest listener closed")
        }
        None => {}
    }
}

/// Converts a kernel event; `None` for a family the table does not handle.
pub fn to_listener(ev: &ListenEvent) -> Option<Listener> {
    let addr = match ev.family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(ev.addr[0], ev.addr[1], ev.addr[2], ev.addr[3])),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(ev.addr)),
        _ => return None,
    };
    let end = ev.comm.iter().position(|&b| b == 0).unwrap_or(ev.comm.len());
    Some(Listener {
        cookie: ev.cookie,
        addr,
        port: ev.port,
        ipv6only: ev.ipv6only != 0,
        pid: ev.pid,
        comm: String::from_utf8_lossy(&ev.comm[..end]).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_events_convert() {
        let mut ev = ListenEvent::zeroed();
        ev.kind = EVENT_LISTEN;
        ev.family = AF_INET;
        ev.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        ev.port = 8000;
        ev.pid = 7;
        ev.cookie = 99;
        ev.comm[..7].copy_from_slice(b"python3");
        let l = to_listener(&ev).unwrap();
        assert_eq!((l.addr.to_string().as_str(), l.port, l.pid, l.comm.as_str(), l.cookie), ("127.0.0.1", 8000, 7, "python3", 99));
        ev.family = AF_INET6;
        ev.addr = Ipv6Addr::LOCALHOST.octets();
        ev.ipv6only = 1;
        ev.comm = [b'x'; 16];
        let l = to_listener(&ev).unwrap();
        assert_eq!((l.addr.to_string().as_str(), l.ipv6only, l.comm.len()), ("::1", true, 16));
        ev.family = 1;
        assert_eq!(to_listener(&ev), None);
    }
}
