//! The table's driver: the one task that owns the listener table. It drains
//! kernel events into the table, takes a snapshot when the table must be
//! resynced (start, a control connection from the host, ring-buffer loss, a
//! listen whose port the kernel had not chosen yet), and publishes the
//! resulting host endpoints on a watch channel. Nothing here runs on a timer.

use crate::source::EventSource;
use crate::table::{Change, Exposed, GuestListener, Table};
use anyhow::{Context, Result};
use hoist_common::{ListenEvent, EVENT_LISTEN, EVENT_UNLISTEN};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Asks the tracker for a fresh snapshot; answered once it is published.
type ResyncRequest = oneshot::Sender<()>;

/// Resync requests that may wait at once; more wait to be queued.
const RESYNC_QUEUE: usize = 16;

/// What the rest of the agent holds: the published endpoints and a way to
/// ask for a resync.
#[derive(Clone)]
pub struct TrackerHandle {
    /// The host endpoints, as last published.
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

/// Owns the table and its source.
pub struct Tracker<S> {
    source: S,
    table: Table,
    published: watch::Sender<Arc<Exposed>>,
    resync: mpsc::Receiver<ResyncRequest>,
    drops_seen: u64,
}

impl<S: EventSource> Tracker<S> {
    /// Builds the tracker and takes the first snapshot, so listeners that
    /// existed before the agent started are in the table from the start.
    pub fn new(source: S, forward_any_address: bool) -> Result<(Tracker<S>, TrackerHandle)> {
        let (published, exposed) = watch::channel(Arc::new(Exposed::new()));
        let (resync_tx, resync) = mpsc::channel(RESYNC_QUEUE);
        let drops_seen = source.drops()?;
        let mut t = Tracker {
            source,
            table: Table::new(forward_any_address),
            published,
            resync,
            drops_seen,
        };
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
                Some(first) = self.resync.recv() => self.resync_for(first),
            }
        }
    }

    /// Answers a resync request and every other one already queued with one
    /// snapshot: hosts that connect together share it.
    fn resync_for(&mut self, first: ResyncRequest) {
        let mut waiting = vec![first];
        while let Ok(more) = self.resync.try_recv() {
            waiting.push(more);
        }
        if let Err(e) = self.resync_now() {
            warn!("resync failed: {e:#}");
        }
        for done in waiting {
            let _ = done.send(());
        }
    }

    fn apply_batch(&mut self, batch: &mut Vec<ListenEvent>) {
        for ev in batch.drain(..) {
            match ev.kind {
                EVENT_LISTEN => match GuestListener::from_event(&ev) {
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
                warn!(
                    lost = d - self.drops_seen,
                    "ring buffer was full and events were lost: resyncing from a snapshot"
                );
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
        // Owners the table already knows need no /proc scan.
        let table = &self.table;
        let snap = self.source.snapshot(&|cookie| table.get(cookie).is_some_and(|l| l.pid != 0))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A source with no events whose snapshots are counted.
    struct Counting(Arc<AtomicUsize>);

    impl EventSource for Counting {
        async fn next_batch(&mut self, _: &mut Vec<ListenEvent>) -> Result<()> {
            std::future::pending().await
        }
        fn drops(&self) -> Result<u64> {
            Ok(0)
        }
        fn snapshot(&mut self, _: &dyn Fn(u64) -> bool) -> Result<Vec<GuestListener>> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(vec![])
        }
    }

    /// A full queue of hosts asking at once costs one snapshot, and every one
    /// of them gets its answer.
    #[tokio::test]
    async fn resync_requests_that_arrive_together_share_one_snapshot() {
        let count = Arc::new(AtomicUsize::new(0));
        let (tracker, handle) = Tracker::new(Counting(count.clone()), false).unwrap();
        assert_eq!(count.load(Ordering::Relaxed), 1, "the initial snapshot");
        let mut answers = Vec::new();
        for _ in 0..RESYNC_QUEUE {
            let (tx, rx) = oneshot::channel();
            handle.resync.send(tx).await.unwrap();
            answers.push(rx);
        }
        let stop = CancellationToken::new();
        let run = tokio::spawn(tracker.run(stop.clone()));
        for a in answers {
            a.await.unwrap();
        }
        assert_eq!(count.load(Ordering::Relaxed), 2, "one snapshot for all of them");
        stop.cancel();
        run.await.unwrap().unwrap();
    }
}
