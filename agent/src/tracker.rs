//! The table's driver: the one task that owns the listener table. It drains
//! kernel events into the table, takes a snapshot when the table must be
//! resynced (start, a control connection from the host, ring-buffer loss, a
//! listen whose port the kernel had not chosen yet, a UDP server on the IPv6
//! wildcard whose v6-only flag the cgroup hooks cannot read), and publishes
//! the resulting host endpoints on a watch channel. The one timer: a listen
//! the kernel could not confirm (io_uring, the kernel's own listeners), or a
//! UDP server's connect it could not confirm (io_uring), is checked against
//! snapshots, quickly at first, until it shows up or goes; no timer exists
//! while nothing is unconfirmed.

use crate::source::EventSource;
use crate::table::{Change, Exposed, GuestListener, Table};
use anyhow::{Context, Result};
use hoist_common::{
    ListenEvent, EVENT_LISTEN, EVENT_LISTEN_UNCONFIRMED, EVENT_UNLISTEN, EVENT_UNLISTEN_UNCONFIRMED,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
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
    /// Events the ring buffer lost so far (each loss was repaired by a
    /// snapshot).
    pub drops: Arc<std::sync::atomic::AtomicU64>,
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
    /// `drops_seen`, for the status view.
    drops: Arc<std::sync::atomic::AtomicU64>,
    /// Listens the kernel reported as unconfirmed, by cookie: what the event
    /// said, and how many snapshots have not shown them yet.
    unconfirmed: HashMap<u64, (GuestListener, u32)>,
    /// UDP servers whose connect the kernel could not confirm, by cookie:
    /// how many snapshots have still shown them unconnected.
    doubted: HashMap<u64, u32>,
    /// When to look at both next.
    check_at: Option<Instant>,
    /// Cookies whose UNLISTEN came while the table did not know them: a
    /// LISTEN for one of them afterwards may be a listen that is already
    /// over (the tracepoint hooks' race, closed in the kernel too), so it is
    /// confirmed by snapshot before it counts. Bounded, oldest first out.
    orphans: std::collections::VecDeque<u64>,
}

/// Orphan unlistens remembered at most.
const MAX_ORPHANS: usize = 1024;

/// How long after `tries` snapshots that did not show an unconfirmed listen
/// the next one is taken; `None` once it is given up for gone (a listen that
/// failed without a trace).
pub fn confirm_delay(tries: u32) -> Option<Duration> {
    const STEPS_MS: [u64; 6] = [1, 5, 25, 125, 625, 3000];
    STEPS_MS.get(tries as usize).map(|ms| Duration::from_millis(*ms))
}

impl<S: EventSource> Tracker<S> {
    /// Builds the tracker and takes the first snapshot, so listeners that
    /// existed before the agent started are in the table from the start.
    pub fn new(source: S) -> Result<(Tracker<S>, TrackerHandle)> {
        let (published, exposed) = watch::channel(Arc::new(Exposed::new()));
        let (resync_tx, resync) = mpsc::channel(RESYNC_QUEUE);
        let drops_seen = source.drops()?;
        let drops = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut t = Tracker {
            source,
            table: Table::new(),
            published,
            resync,
            drops_seen,
            drops: drops.clone(),
            unconfirmed: HashMap::new(),
            doubted: HashMap::new(),
            check_at: None,
            orphans: Default::default(),
        };
        t.resync_now().context("initial snapshot")?;
        info!(listeners = t.table.len(), "initial snapshot taken");
        Ok((t, TrackerHandle { exposed, drops, resync: resync_tx }))
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
                _ = sleep_until(self.check_at), if self.check_at.is_some() => self.check_unconfirmed(),
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
                    Some(l) if self.orphans.contains(&l.cookie) => {
                        self.orphans.retain(|c| *c != l.cookie);
                        self.unconfirmed.insert(l.cookie, (l, 0));
                        self.schedule_check(0);
                    }
                    Some(l) => log_change(self.table.listen(l), "kernel"),
                    None => warn!(
                        family = ev.family,
                        proto = ev.proto,
                        "ignoring a listen event of another family or protocol"
                    ),
                },
                EVENT_UNLISTEN => {
                    let pending = self.unconfirmed.remove(&ev.cookie).is_some();
                    match self.table.unlisten(ev.cookie) {
                        None if !pending => {
                            if self.orphans.len() == MAX_ORPHANS {
                                self.orphans.pop_front();
                            }
                            self.orphans.push_back(ev.cookie);
                        }
                        change => log_change(change, "kernel"),
                    }
                }
                EVENT_LISTEN_UNCONFIRMED => {
                    if let Some(l) = GuestListener::from_event(&ev) {
                        self.unconfirmed.insert(l.cookie, (l, 0));
                        self.schedule_check(0);
                    }
                }
                EVENT_UNLISTEN_UNCONFIRMED => {
                    if self.table.get(ev.cookie).is_some() {
                        self.doubted.insert(ev.cookie, 0);
                        self.schedule_check(0);
                    }
                }
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
                self.drops.fetch_add(d - self.drops_seen, std::sync::atomic::Ordering::Relaxed);
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

    fn schedule_check(&mut self, tries: u32) {
        if let Some(d) = confirm_delay(tries) {
            let at = Instant::now() + d;
            self.check_at = Some(self.check_at.map_or(at, |c| c.min(at)));
        }
    }

    /// Takes a snapshot for the unconfirmed listens: those it shows join the
    /// table (with the pid and command the event named, when /proc knows no
    /// owner, as for the kernel's own listeners); the others wait for the
    /// next check, until given up. The same snapshot settles the doubted UDP
    /// servers.
    fn check_unconfirmed(&mut self) {
        self.check_at = None;
        if let Err(e) = self.resync_now() {
            warn!("resync failed: {e:#}");
        }
        let mut retry = None;
        for (cookie, (l, tries)) in std::mem::take(&mut self.unconfirmed) {
            match self.table.get(cookie) {
                Some(found) if found.pid == 0 => {
                    let merged = GuestListener { pid: l.pid, comm: l.comm, ..found.clone() };
                    log_change(self.table.listen(merged), "kernel, confirmed by snapshot");
                }
                Some(_) => {}
                None => match confirm_delay(tries + 1) {
                    Some(_) => {
                        retry = Some(retry.map_or(tries + 1, |r: u32| r.min(tries + 1)));
                        self.unconfirmed.insert(cookie, (l, tries + 1));
                    }
                    None => info!(
                        cookie,
                        port = l.port,
                        "an unconfirmed listen never showed up; given up"
                    ),
                },
            }
        }
        // A server the snapshot still shows unconnected: its connect failed,
        // or has not happened yet; gone from the table: it connected (or
        // closed), and the snapshot's reconcile removed it.
        for (cookie, tries) in std::mem::take(&mut self.doubted) {
            if self.table.get(cookie).is_none() {
                continue;
            }
            match confirm_delay(tries + 1) {
                Some(_) => {
                    retry = Some(retry.map_or(tries + 1, |r: u32| r.min(tries + 1)));
                    self.doubted.insert(cookie, tries + 1);
                }
                None => {
                    info!(cookie, "a UDP server's unconfirmed connect never showed; still a server")
                }
            }
        }
        if let Some(tries) = retry {
            self.schedule_check(tries);
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

/// Sleeps until `at`; never when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn log_change(change: Option<Change>, via: &'static str) {
    match change {
        Some(Change::Listen(l)) if l.port == 0 => {}
        Some(Change::Listen(l)) => {
            info!(event = "listen", proto = %l.proto, port = l.port, address = %l.addr, ipv6only = l.ipv6only, pid = l.pid, comm = %l.comm, via, "guest listener opened")
        }
        Some(Change::Unlisten(l)) => {
            info!(event = "unlisten", proto = %l.proto, port = l.port, address = %l.addr, pid = l.pid, comm = %l.comm, via, "guest listener closed")
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

    #[test]
    fn unconfirmed_listens_are_checked_quickly_then_given_up() {
        let ms: Vec<Option<u128>> =
            (0..7).map(|t| confirm_delay(t).map(|d| d.as_millis())).collect();
        assert_eq!(ms, [Some(1), Some(5), Some(25), Some(125), Some(625), Some(3000), None]);
    }

    /// A source whose events the test scripts and whose snapshots show a
    /// truth the test sets.
    struct Scripted {
        events: mpsc::UnboundedReceiver<ListenEvent>,
        truth: Arc<std::sync::Mutex<Vec<GuestListener>>>,
    }

    impl EventSource for Scripted {
        async fn next_batch(&mut self, out: &mut Vec<ListenEvent>) -> Result<()> {
            out.push(self.events.recv().await.context("script over")?);
            Ok(())
        }
        fn drops(&self) -> Result<u64> {
            Ok(0)
        }
        fn snapshot(&mut self, _: &dyn Fn(u64) -> bool) -> Result<Vec<GuestListener>> {
            Ok(self.truth.lock().unwrap().clone())
        }
    }

    fn event(kind: u8, cookie: u64, port: u16) -> ListenEvent {
        let mut e = ListenEvent::zeroed();
        e.kind = kind;
        e.proto = hoist_common::IPPROTO_TCP;
        e.family = hoist_common::AF_INET;
        e.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        e.port = port;
        e.cookie = cookie;
        e
    }

    /// A socket shut down by another thread just as its listen() returns
    /// can reach the agent as UNLISTEN, then LISTEN. The LISTEN must not
    /// leave a listener that is gone: it counts only once a snapshot shows
    /// it. And a socket that really listens again after such a pair does.
    #[tokio::test(start_paused = true)]
    async fn a_listen_after_its_own_unlisten_counts_only_if_a_snapshot_shows_it() {
        let truth = Arc::new(std::sync::Mutex::new(vec![]));
        let (tx, events) = mpsc::unbounded_channel();
        let (tracker, handle) = Tracker::new(Scripted { events, truth: truth.clone() }).unwrap();
        let stop = CancellationToken::new();
        let run = tokio::spawn(tracker.run(stop.clone()));
        let mut exposed = handle.exposed.clone();
        // The race: the kernel's order is UNLISTEN, then LISTEN, for a
        // socket that is not listening (the snapshot shows nothing).
        tx.send(event(EVENT_UNLISTEN, 7, 8080)).unwrap();
        tx.send(event(EVENT_LISTEN, 7, 8080)).unwrap();
        // Long enough for every check, given up at the last.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(exposed.borrow_and_update().is_empty(), "a listener that is gone is exposed");
        // The same pair for a socket that did listen again: exposed once a
        // snapshot shows it.
        tx.send(event(EVENT_UNLISTEN, 9, 9090)).unwrap();
        tx.send(event(EVENT_LISTEN, 9, 9090)).unwrap();
        let l = GuestListener::from_event(&event(EVENT_LISTEN, 9, 9090)).unwrap();
        truth.lock().unwrap().push(l);
        let exposed =
            tokio::time::timeout(Duration::from_secs(5), exposed.wait_for(|x| !x.is_empty()))
                .await
                .unwrap()
                .unwrap()
                .clone();
        assert_eq!(exposed.keys().map(|e| e.port).collect::<Vec<_>>(), [9090]);
        stop.cancel();
        run.await.unwrap().unwrap();
    }

    /// A UDP server whose connect the kernel could not confirm (io_uring)
    /// stays until a snapshot shows it connected (or closed); one whose
    /// connect failed stays a server once the checks give up.
    #[tokio::test(start_paused = true)]
    async fn an_unconfirmed_udp_connect_is_settled_by_snapshots() {
        let udp = |cookie, port| {
            let mut e = event(EVENT_LISTEN, cookie, port);
            e.proto = hoist_common::IPPROTO_UDP;
            GuestListener::from_event(&e).unwrap()
        };
        let truth = Arc::new(std::sync::Mutex::new(vec![udp(1, 5353), udp(2, 5354)]));
        let (tx, events) = mpsc::unbounded_channel();
        let (tracker, handle) = Tracker::new(Scripted { events, truth: truth.clone() }).unwrap();
        let stop = CancellationToken::new();
        let run = tokio::spawn(tracker.run(stop.clone()));
        let mut exposed = handle.exposed.clone();
        let ports = |x: &Exposed| x.keys().map(|e| e.port).collect::<Vec<_>>();
        assert_eq!(ports(&exposed.borrow_and_update()), [5353, 5354]);
        for cookie in [1, 2] {
            let mut e = event(EVENT_UNLISTEN_UNCONFIRMED, cookie, 0);
            e.proto = hoist_common::IPPROTO_UDP;
            tx.send(e).unwrap();
        }
        // The first check comes before the connect has happened: both stay.
        tokio::time::sleep(Duration::from_millis(3)).await;
        assert_eq!(ports(&exposed.borrow_and_update()), [5353, 5354]);
        // Server 1 connects; server 2's connect failed.
        truth.lock().unwrap().retain(|l| l.cookie != 1);
        let x = tokio::time::timeout(Duration::from_secs(5), exposed.wait_for(|x| x.len() == 1))
            .await
            .unwrap()
            .unwrap()
            .clone();
        assert_eq!(ports(&x), [5354]);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(ports(&exposed.borrow_and_update()), [5354], "a failed connect leaves a server");
        stop.cancel();
        run.await.unwrap().unwrap();
    }

    /// A full queue of hosts asking at once costs one snapshot, and every one
    /// of them gets its answer.
    #[tokio::test]
    async fn resync_requests_that_arrive_together_share_one_snapshot() {
        let count = Arc::new(AtomicUsize::new(0));
        let (tracker, handle) = Tracker::new(Counting(count.clone())).unwrap();
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
