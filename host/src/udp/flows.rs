//! The flow table of one UDP forward, pure (no I/O, no clock: the caller
//! passes the time): each client address is a flow; a flow has a bounded
//! queue of datagrams waiting for its data connection, and expires after it
//! has been idle (no datagram either way) for the idle time. A datagram that
//! cannot be queued (the flow's queue is full, or the forward has as many
//! flows as it may) is dropped whole and counted, never truncated; a full
//! queue holds up only its own flow. The expiry time is computed, not
//! timed: the caller sleeps until [`FlowTable::next_expiry`], which is
//! `None` while there are no flows.

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// A flow's number, unique within its forward.
pub type FlowId = u64;

/// The bounds of a forward's flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Flows at once; a datagram from a new client beyond it is dropped.
    pub max_flows: usize,
    /// Datagrams one flow may have waiting.
    pub queue_datagrams: usize,
    /// Bytes one flow may have waiting; one datagram always fits an empty
    /// queue, whatever its size.
    pub queue_bytes: usize,
    /// A flow with no datagram either way for this long expires.
    pub idle: Duration,
}

/// Why a datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Its flow's queue was full: the data connection is slower than the
    /// client.
    QueueFull,
    /// The forward had as many flows as it may.
    TooManyFlows,
    /// The flow could not be carried (no data connection to the agent, the
    /// agent refused, the connection limit), or ended with datagrams waiting.
    FlowFailed,
}

/// What became of a datagram from a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// It starts a new flow (queued): the caller opens its data connection.
    New(FlowId),
    /// Queued on the client's flow: the caller wakes the flow's sender.
    Queued(FlowId),
    /// Dropped, and counted.
    Dropped(DropReason),
}

/// Datagrams dropped, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    pub queue_full: u64,
    pub too_many_flows: u64,
    pub flow_failed: u64,
}

impl Drops {
    pub fn total(&self) -> u64 {
        self.queue_full + self.too_many_flows + self.flow_failed
    }

    fn count(&mut self, why: DropReason, n: u64) {
        match why {
            DropReason::QueueFull => self.queue_full += n,
            DropReason::TooManyFlows => self.too_many_flows += n,
            DropReason::FlowFailed => self.flow_failed += n,
        }
    }
}

#[derive(Debug)]
struct Flow {
    client: SocketAddr,
    last_active: Instant,
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
}

/// One forward's flows.
#[derive(Debug)]
pub struct FlowTable {
    limits: Limits,
    by_client: HashMap<SocketAddr, FlowId>,
    flows: HashMap<FlowId, Flow>,
    next_id: FlowId,
    drops: Drops,
    /// Flows opened so far.
    opened: u64,
}

impl FlowTable {
    pub fn new(limits: Limits) -> FlowTable {
        FlowTable {
            limits,
            by_client: HashMap::new(),
            flows: HashMap::new(),
            next_id: 1,
            drops: Drops::default(),
            opened: 0,
        }
    }

    /// A datagram (`len` bytes as queued) from `client` at `now`.
    pub fn arrive(&mut self, now: Instant, client: SocketAddr, datagram: Bytes) -> Arrival {
        if let Some(&id) = self.by_client.get(&client) {
            let f = self.flows.get_mut(&id).expect("indexed flows exist");
            let fits = f.queue.is_empty()
                || (f.queue.len() < self.limits.queue_datagrams
                    && f.queued_bytes + datagram.len() <= self.limits.queue_bytes);
            if !fits {
                self.drops.count(DropReason::QueueFull, 1);
                return Arrival::Dropped(DropReason::QueueFull);
            }
            f.last_active = now;
            f.queued_bytes += datagram.len();
            f.queue.push_back(datagram);
            return Arrival::Queued(id);
        }
        if self.flows.len() >= self.limits.max_flows {
            self.drops.count(DropReason::TooManyFlows, 1);
            return Arrival::Dropped(DropReason::TooManyFlows);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.opened += 1;
        self.by_client.insert(client, id);
        let queued_bytes = datagram.len();
        self.flows.insert(
            id,
            Flow { client, last_active: now, queue: VecDeque::from([datagram]), queued_bytes },
        );
        Arrival::New(id)
    }

    /// Moves flow `id`'s waiting datagrams to `out`, oldest first.
    pub fn take_queued(&mut self, id: FlowId, out: &mut Vec<Bytes>) {
        if let Some(f) = self.flows.get_mut(&id) {
            out.extend(f.queue.drain(..));
            f.queued_bytes = 0;
        }
    }

    /// A datagram of flow `id` went back to its client at `now`.
    pub fn touch(&mut self, id: FlowId, now: Instant) {
        if let Some(f) = self.flows.get_mut(&id) {
            f.last_active = f.last_active.max(now);
        }
    }

    /// Removes the flows idle for the idle time at `now`; datagrams they
    /// still had waiting are counted dropped.
    pub fn expire(&mut self, now: Instant) -> Vec<FlowId> {
        let idle = self.limits.idle;
        let mut gone: Vec<FlowId> = self
            .flows
            .iter()
            .filter(|(_, f)| now.saturating_duration_since(f.last_active) >= idle)
            .map(|(id, _)| *id)
            .collect();
        gone.sort_unstable();
        for id in &gone {
            self.remove(*id);
        }
        gone
    }

    /// When the first flow may expire; `None` without flows.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.flows.values().map(|f| f.last_active + self.limits.idle).min()
    }

    /// Ends flow `id` (it failed, or expired); datagrams it still had
    /// waiting are counted dropped. Its client's next datagram starts a new
    /// flow.
    pub fn remove(&mut self, id: FlowId) {
        if let Some(f) = self.flows.remove(&id) {
            self.by_client.remove(&f.client);
            self.drops.count(DropReason::FlowFailed, f.queue.len() as u64);
        }
    }

    /// Counts `n` datagrams dropped outside the table (a flow's last ones
    /// in flight when it failed).
    pub fn count_dropped(&mut self, why: DropReason, n: u64) {
        self.drops.count(why, n);
    }

    /// Whether flow `id` still exists.
    #[cfg(test)]
    pub fn contains(&self, id: FlowId) -> bool {
        self.flows.contains_key(&id)
    }

    /// The client of flow `id`.
    #[cfg(test)]
    pub fn client(&self, id: FlowId) -> Option<SocketAddr> {
        self.flows.get(&id).map(|f| f.client)
    }

    /// Flows now.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Flows opened since the forward opened.
    pub fn opened(&self) -> u64 {
        self.opened
    }

    /// Datagrams dropped since the forward opened.
    pub fn drops(&self) -> Drops {
        self.drops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_flows: 2,
        queue_datagrams: 3,
        queue_bytes: 100,
        idle: Duration::from_secs(60),
    };

    fn client(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn d(len: usize) -> Bytes {
        Bytes::from(vec![7u8; len])
    }

    /// Each step: (what happens, what the table answers).
    #[test]
    fn clients_are_flows_with_bounded_queues_and_a_bounded_count() {
        use Arrival::*;
        let t0 = Instant::now();
        let mut t = FlowTable::new(LIMITS);
        let steps: Vec<(&str, u16, usize, Arrival)> = vec![
            ("a first datagram opens a flow", 1, 10, New(1)),
            ("the same client queues on it", 1, 10, Queued(1)),
            ("another client is another flow", 2, 10, New(2)),
            ("beyond the flow bound: dropped", 3, 10, Dropped(DropReason::TooManyFlows)),
            ("queue bytes: 20 + 80 fits", 1, 80, Queued(1)),
            ("queue bytes: 101 does not", 1, 1, Dropped(DropReason::QueueFull)),
            ("the other flow is not held up", 2, 10, Queued(2)),
            ("queue count: a third fits", 2, 1, Queued(2)),
            ("queue count: a fourth does not", 2, 1, Dropped(DropReason::QueueFull)),
        ];
        for (name, port, len, want) in steps {
            assert_eq!(t.arrive(t0, client(port), d(len)), want, "{name}");
        }
        let mut out = Vec::new();
        t.take_queued(1, &mut out);
        assert_eq!(out.iter().map(|b| b.len()).collect::<Vec<_>>(), [10, 10, 80], "in order");
        assert_eq!(t.arrive(t0, client(1), d(1)), Queued(1), "a drained queue takes more");
        // One datagram always fits an empty queue, however big.
        let mut one = Vec::new();
        t.take_queued(1, &mut one);
        assert_eq!(t.arrive(t0, client(1), d(65_507)), Queued(1));
        assert_eq!(
            t.drops(),
            Drops { queue_full: 2, too_many_flows: 1, flow_failed: 0 },
            "every drop counted by reason"
        );
        assert_eq!((t.len(), t.opened()), (2, 2));
    }

    #[test]
    fn idle_flows_expire_and_timers_exist_only_while_flows_do() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = FlowTable::new(LIMITS);
        assert_eq!(t.next_expiry(), None, "no flows, nothing to wake for");
        assert_eq!(t.arrive(t0, client(1), d(1)), Arrival::New(1));
        assert_eq!(t.arrive(t0 + 10 * s, client(2), d(1)), Arrival::New(2));
        assert_eq!(t.next_expiry(), Some(t0 + 60 * s));
        // Flow 1 hears back at 30 s: activity either way counts.
        t.touch(1, t0 + 30 * s);
        t.touch(1, t0 + 20 * s);
        assert_eq!(t.next_expiry(), Some(t0 + 70 * s), "flow 2 is due first now");
        assert_eq!(t.expire(t0 + 69 * s), Vec::<FlowId>::new());
        assert_eq!(t.expire(t0 + 70 * s), vec![2]);
        assert_eq!(t.drops().flow_failed, 1, "flow 2's unsent datagram");
        assert!(!t.contains(2) && t.client(1) == Some(client(1)));
        assert_eq!(t.next_expiry(), Some(t0 + 90 * s));
        assert_eq!(t.expire(t0 + 90 * s), vec![1]);
        assert_eq!(t.next_expiry(), None);
        assert_eq!(t.arrive(t0 + 91 * s, client(2), d(1)), Arrival::New(3), "a new flow, new id");
    }

    #[test]
    fn a_failed_flow_counts_what_it_had_waiting_and_its_client_starts_afresh() {
        let t0 = Instant::now();
        let mut t = FlowTable::new(LIMITS);
        t.arrive(t0, client(1), d(1));
        t.arrive(t0, client(1), d(1));
        t.remove(1);
        t.count_dropped(DropReason::FlowFailed, 1);
        assert_eq!(t.drops(), Drops { flow_failed: 3, ..Drops::default() });
        assert_eq!(t.drops().total(), 3);
        assert_eq!(t.arrive(t0, client(1), d(1)), Arrival::New(2));
        t.remove(7);
        t.touch(7, t0);
        assert_eq!(t.len(), 1, "unknown flows change nothing");
    }
}
