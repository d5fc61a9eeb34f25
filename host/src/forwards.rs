//! The host's forwards: the guest's endpoints, what the rules decide for
//! each, and an owned handle per served one. Opening a forward binds its
//! host port; dropping its handle closes the port and stops its accept loop
//! (connections already carried live on until either side closes them) or,
//! for UDP, its socket's task and its flows (`udp`). A
//! port a host program already holds is reported once and retried while it
//! lasts; hoist never shares or steals it. New rules re-decide every
//! endpoint: a forward whose place did not change keeps its port and its
//! connections.
//!
//! A closed forward's socket is closed by the runtime when it drops the
//! aborted task (and, for UDP, its flows), a moment after the close. A
//! guest server that restarts on its port can be opened again before that
//! moment: the new forward then waits for its own predecessor's socket
//! ([`HeldPort`] says when it is gone, [`Forwards::settle`] waits for it)
//! instead of meeting it as a conflict and retrying later. Where the port
//! outlives the socket a little (Wine frees it after closesocket returns),
//! the new forward retries every few milliseconds, for a second at most,
//! before it counts as a conflict.

use crate::listener::{accept_loop, bind_host_port};
use crate::rules::{Decision, Defaults, Rules};
use crate::{Config, ForwardState, ForwardStats, ForwardStatus, Status};
use hoist_wire::{Endpoint, Forward, Proto};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// A mirrored guest listener (TCP) or server (UDP). Dropping it closes the
/// host port.
pub struct ForwardHandle {
    proto: Proto,
    host: SocketAddr,
    rule: Option<String>,
    since: SystemTime,
    stats: Arc<ForwardStats>,
    task: JoinHandle<()>,
    /// A second descriptor for the socket `task` serves.
    socket: socket2::Socket,
    /// Resolves once the socket `task` serves is closed.
    freed: Option<oneshot::Receiver<()>>,
}

/// A forward's host socket, owned by its task, with the signal that it is
/// closed: fields drop in order, so the sender goes (and the forward's
/// [`ForwardHandle`] learns that the port is free) only after the socket.
pub struct HeldPort<S> {
    socket: S,
    _freed: oneshot::Sender<()>,
}

impl<S> HeldPort<S> {
    /// `socket`, and the receiver that resolves once it is closed.
    pub(crate) fn new(socket: S) -> (HeldPort<S>, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (HeldPort { socket, _freed: tx }, rx)
    }
}

impl<S> std::ops::Deref for HeldPort<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.socket
    }
}

/// A host port a closed forward's socket holds until `freed` (and, on
/// some systems, a little after).
struct Closing {
    proto: Proto,
    host: SocketAddr,
    /// Until awaited once.
    freed: Option<oneshot::Receiver<()>>,
    /// Until when a bind of `host` that fails is taken to meet this
    /// forward's socket, not another program's.
    until: Instant,
}

/// How long after a forward's close its port may still be held by it: the
/// runtime drops an aborted task at once, so this bounds only the absurd.
const OWN_GRACE: Duration = Duration::from_secs(1);
/// How soon a forward waiting for its predecessor's port tries again when
/// the port outlived the socket.
const OWN_RETRY: Duration = Duration::from_millis(5);

/// Why a forward waits, in the status, while its predecessor lets go.
const OWN_PORT: &str = "is still held by hoist's previous forward of it, closing now";

impl Drop for ForwardHandle {
    fn drop(&mut self) {
        // Aborting the task drops its socket only when the runtime next
        // gets to it; shutting a listener down refuses new connections now
        // (deafening a UDP socket refuses new datagrams), so the port is
        // closed by the time "forward_closed" is logged.
        match self.proto {
            Proto::Tcp => {
                let _ = self.socket.shutdown(std::net::Shutdown::Both);
            }
            Proto::Udp => crate::udp::deafen(&self.socket),
        }
        self.task.abort();
    }
}

/// The endpoints the host knows (`have`) that the guest's full table
/// (`want`) no longer has: a resync closes them and opens or refreshes
/// everything in `want`. Pure.
pub fn stale(have: &BTreeSet<Endpoint>, want: &[Forward]) -> Vec<Endpoint> {
    let wanted: BTreeSet<Endpoint> = want.iter().map(|f| f.endpoint).collect();
    have.difference(&wanted).copied().collect()
}

/// What the host does with one guest endpoint now.
enum Place {
    Open(ForwardHandle),
    /// Its host port could not be bound; retried while it lasts.
    Conflict {
        host: SocketAddr,
        rule: Option<String>,
        /// Why the last try failed, as logged.
        why: String,
        tries: u32,
        next_try: Instant,
        since: SystemTime,
        /// The port is held by a forward of ours that is closing: retried
        /// the moment it lets go (`settle`), without a warning.
        own: bool,
    },
    Ignored {
        why: String,
        since: SystemTime,
    },
}

/// How long to wait before retry number `tries` of a port in conflict:
/// quick at first, never more than 4 s, so a port freed on the host is
/// forwarded within 5 s.
pub fn retry_delay(tries: u32) -> Duration {
    (Duration::from_millis(250) * 2u32.saturating_pow(tries.min(8))).min(Duration::from_secs(4))
}

pub struct Forwards {
    config: Arc<Config>,
    rules: Rules,
    /// The guest's endpoints, as last told, and what is done with each.
    all: BTreeMap<Endpoint, (Forward, Place)>,
    /// Host ports of closed forwards whose sockets may not be closed yet.
    /// Oldest first (each stays `OWN_GRACE`).
    closing: VecDeque<Closing>,
}

impl Forwards {
    /// No forwards yet.
    pub fn new(config: Arc<Config>, rules: Rules) -> Forwards {
        Forwards { config, rules, all: BTreeMap::new(), closing: VecDeque::new() }
    }

    /// Makes the forwards equal to the guest's full table.
    pub fn resync(&mut self, table: Vec<Forward>) {
        let have: BTreeSet<Endpoint> = self.all.keys().copied().collect();
        for e in stale(&have, &table) {
            self.remove(e);
        }
        for f in table {
            self.add(f);
        }
    }

    /// Puts new rules in force: every endpoint is decided again; one whose
    /// host address and port stay the same keeps its port and connections.
    pub fn set_rules(&mut self, rules: Rules) {
        self.rules = rules;
        let all: Vec<Forward> = self.all.values().map(|(f, _)| f.clone()).collect();
        for f in all {
            self.add(f);
        }
    }

    /// Applies what the rules decide for `f`: opens its forward, refreshes
    /// its details, moves it, or closes it.
    pub fn add(&mut self, f: Forward) {
        let e = f.endpoint;
        let defaults = Defaults { bind_v4: self.config.bind_v4, bind_v6: self.config.bind_v6 };
        let decision = self.rules.decide(&f, defaults);
        let old = self.all.remove(&e);
        let place = match (decision, old) {
            // Unchanged: keep the port and its connections.
            (Decision::Serve { host, rule }, Some((_, Place::Open(mut h)))) if h.host == host => {
                h.rule = rule;
                Place::Open(h)
            }
            (Decision::Serve { host, rule }, Some((_, p @ Place::Conflict { host: at, .. })))
                if at == host =>
            {
                match p {
                    Place::Conflict { why, tries, next_try, since, own, .. } => {
                        Place::Conflict { host, rule, why, tries, next_try, since, own }
                    }
                    _ => unreachable!("matched a conflict"),
                }
            }
            (Decision::Ignore { why }, Some((_, Place::Ignored { since, .. }))) => {
                Place::Ignored { why, since }
            }
            (decision, old) => {
                if let Some((old_f, old_place)) = old {
                    self.close(&old_f, old_place, "its rule changed");
                }
                match decision {
                    Decision::Serve { host, rule } => self.open(&f, host, rule, 0),
                    Decision::Ignore { why } => {
                        info!(event = "forward_ignored", port = e.port, proto = %e.proto, guest = %f.guest_addr, pid = f.pid, comm = %f.comm, reason = %why, "guest listener {} of pid {} ({}) not forwarded: {why}", e, f.pid, f.comm);
                        Place::Ignored { why, since: SystemTime::now() }
                    }
                }
            }
        };
        self.all.insert(e, (f, place));
    }

    /// Binds `host` for `f` and starts its accept loop, or records the
    /// conflict (try number `tries`) when the port cannot be had.
    fn open(&mut self, f: &Forward, host: SocketAddr, rule: Option<String>, tries: u32) -> Place {
        let e = f.endpoint;
        let stats = Arc::new(ForwardStats::default());
        let (config, stats2) = (self.config.clone(), stats.clone());
        let opened = match e.proto {
            Proto::Tcp => bind_host_port(host).and_then(|l| {
                let socket = socket2::SockRef::from(&l).try_clone()?;
                let (l, freed) = HeldPort::new(l);
                Ok((socket, freed, tokio::spawn(accept_loop(l, e, config, stats2))))
            }),
            Proto::Udp => crate::udp::bind(host).and_then(|s| {
                let socket = socket2::SockRef::from(&s).try_clone()?;
                let (s, freed) = HeldPort::new(tokio::net::UdpSocket::from_std(s)?);
                Ok((socket, freed, tokio::spawn(crate::udp::serve(s, e, config, stats2))))
            }),
        };
        let now = Instant::now();
        // Only a bind that failed asks whom it met.
        let own = opened.is_err() && {
            self.forget_closed(now);
            self.closing.iter().any(|c| c.proto == e.proto && c.host == host)
        };
        match opened {
            Ok((socket, freed, task)) => {
                info!(event = "forward_opened", proto = %e.proto, port = e.port, family = %e.family(), host = %host, guest_address = %f.guest_addr, pid = f.pid, comm = %f.comm, rule = rule.as_deref().unwrap_or("default"), "forwarding {} {host} to the guest's {}", e.proto, e);
                Place::Open(ForwardHandle {
                    proto: e.proto,
                    host,
                    rule,
                    since: SystemTime::now(),
                    stats,
                    task,
                    socket,
                    freed: Some(freed),
                })
            }
            Err(_) if own => {
                debug!(proto = %e.proto, port = e.port, host = %host, tries, "waiting for the previous forward of {host} to let go of its port");
                Place::Conflict {
                    host,
                    rule,
                    why: OWN_PORT.into(),
                    // A real conflict, if it comes to that, starts afresh.
                    tries: 0,
                    next_try: now + OWN_RETRY,
                    since: SystemTime::now(),
                    own,
                }
            }
            Err(err) => {
                let why = explain_bind_error(&err, host);
                if tries == 0 {
                    warn_conflict(f, host, &why);
                }
                Place::Conflict {
                    host,
                    rule,
                    why,
                    tries,
                    next_try: Instant::now() + retry_delay(tries),
                    since: SystemTime::now(),
                    own: false,
                }
            }
        }
    }

    /// Waits for the sockets of closed forwards that a new forward of the
    /// same host port waits on (the runtime closes them at once), then opens
    /// those forwards. Returns at once when no forward waits. Called after
    /// every change, before the status is published, so a guest server's
    /// restart on its port never shows as a conflict.
    pub async fn settle(&mut self) {
        if self.closing.is_empty() {
            return;
        }
        let waiting: Vec<(Endpoint, SocketAddr)> = self
            .all
            .iter()
            .filter_map(|(e, (_, p))| match p {
                Place::Conflict { host, own: true, .. } => Some((*e, *host)),
                _ => None,
            })
            .collect();
        if waiting.is_empty() {
            return;
        }
        for c in &mut self.closing {
            let awaited = waiting.iter().any(|(e, host)| e.proto == c.proto && *host == c.host);
            if let Some(freed) = c.freed.take_if(|_| awaited) {
                let _ = tokio::time::timeout_at(c.until, freed).await;
            }
        }
        for (e, _) in waiting {
            self.retry(e);
        }
    }

    /// When the next port in conflict is due for a retry, if any is.
    pub fn next_retry(&self) -> Option<Instant> {
        self.all
            .values()
            .filter_map(|(_, p)| match p {
                Place::Conflict { next_try, .. } => Some(*next_try),
                _ => None,
            })
            .min()
    }

    /// Retries the ports in conflict that are due; logs only what changed.
    pub fn retry_conflicts(&mut self) {
        let now = Instant::now();
        let due: Vec<Endpoint> = self
            .all
            .iter()
            .filter(|(_, (_, p))| matches!(p, Place::Conflict { next_try, .. } if *next_try <= now))
            .map(|(e, _)| *e)
            .collect();
        for e in due {
            self.retry(e);
        }
    }

    /// Tries again to open `e`'s forward, in conflict; logs only what
    /// changed.
    fn retry(&mut self, e: Endpoint) {
        let Some((f, Place::Conflict { host, rule, why, tries, since, .. })) = self.all.remove(&e)
        else {
            return;
        };
        let place = match self.open(&f, host, rule, tries + 1) {
            Place::Conflict { host, rule, why: now_why, tries, next_try, own, .. } => {
                if now_why != why && !own {
                    warn_conflict(&f, host, &now_why);
                }
                Place::Conflict { host, rule, why: now_why, tries, next_try, since, own }
            }
            open => {
                debug!(port = e.port, tries = tries + 1, "host port freed");
                open
            }
        };
        self.all.insert(e, (f, place));
    }

    /// Guest endpoints known (served, in conflict or ignored).
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Closes every forward.
    pub fn clear(&mut self) {
        let all: Vec<Endpoint> = self.all.keys().copied().collect();
        for e in all {
            self.remove(e);
        }
    }

    /// Closes the forward for `e`, if any.
    pub fn remove(&mut self, e: Endpoint) {
        if let Some((f, place)) = self.all.remove(&e) {
            self.close(&f, place, "guest listener gone");
        }
    }

    fn close(&mut self, f: &Forward, place: Place, why: &str) {
        let e = f.endpoint;
        match place {
            Place::Open(mut h) => {
                // Close the port before saying so: whoever reads the log may
                // connect the moment the line appears.
                let host = h.host;
                if let Some(freed) = h.freed.take() {
                    let now = Instant::now();
                    self.forget_closed(now);
                    let until = now + OWN_GRACE;
                    self.closing.push_back(Closing {
                        proto: e.proto,
                        host,
                        freed: Some(freed),
                        until,
                    });
                }
                drop(h);
                info!(event = "forward_closed", proto = %e.proto, port = e.port, family = %e.family(), host = %host, pid = f.pid, comm = %f.comm, "{why}; host port {host} closed");
            }
            Place::Conflict { host, .. } => {
                info!(event = "forward_closed", proto = %e.proto, port = e.port, family = %e.family(), host = %host, "{why} (its host port was in conflict)");
            }
            Place::Ignored { .. } => debug!(port = e.port, "{why} (it was ignored)"),
        }
    }

    /// Forgets the closed forwards whose grace is over.
    fn forget_closed(&mut self, now: Instant) {
        while self.closing.front().is_some_and(|c| c.until <= now) {
            self.closing.pop_front();
        }
    }

    /// Publishes every endpoint and what is done with it.
    pub fn fill_status(&self, s: &mut Status) {
        s.serving.clear();
        s.conflicts.clear();
        s.forwards.clear();
        for (e, (f, place)) in &self.all {
            let (state, since, stats) = match place {
                Place::Open(h) => {
                    s.serving.insert(*e);
                    let state = ForwardState::Serving { host: h.host, rule: h.rule.clone() };
                    (state, h.since, Some(h.stats.clone()))
                }
                Place::Conflict { host, why, since, .. } => {
                    s.conflicts.insert(*e);
                    (ForwardState::Conflict { host: *host, why: why.clone() }, *since, None)
                }
                Place::Ignored { why, since } => {
                    (ForwardState::Ignored { why: why.clone() }, *since, None)
                }
            };
            s.forwards.push(ForwardStatus { forward: f.clone(), state, since, stats });
        }
        s.rules = self.config.rules.describe(self.rules.len());
    }
}

/// Reports that `f`'s host port cannot be had, and why.
fn warn_conflict(f: &Forward, host: SocketAddr, why: &str) {
    let e = f.endpoint;
    warn!(event = "host_port_conflict", proto = %e.proto, port = e.port, family = %e.family(), host = %host, pid = f.pid, comm = %f.comm, reason = %why, "{} port {host} {why}; guest listener of pid {} ({}) is not forwarded until it is free", e.proto, f.pid, f.comm);
}

/// A host port that cannot be bound, in words that say what to do.
fn explain_bind_error(e: &std::io::Error, host: SocketAddr) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "is already in use on the host".into(),
        std::io::ErrorKind::PermissionDenied if host.port() < 1024 => format!(
            "needs privilege (ports below 1024): map it to a high port with a rule (--rule port={p},host_port={q}) or let hoist-host bind it (setcap cap_net_bind_service=ep on the binary, or AmbientCapabilities=CAP_NET_BIND_SERVICE in its unit)",
            p = host.port(),
            q = 10000 + host.port()
        ),
        std::io::ErrorKind::AddrNotAvailable => {
            format!("cannot be bound: {} is not an address of this host", host.ip())
        }
        _ => format!("cannot be bound: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoist_wire::Family;

    fn f(family: Family, port: u16) -> Forward {
        Forward {
            endpoint: Endpoint::tcp(family, port),
            guest_addr: "127.0.0.1".parse().unwrap(),
            pid: 1,
            comm: "x".into(),
        }
    }

    /// Forwards under the default rules, for an agent nobody reaches.
    #[cfg(unix)]
    fn forwards() -> Forwards {
        Forwards::new(Arc::new(Config::new("unix:/nonexistent".parse().unwrap())), Rules::default())
    }

    /// The port refuses connections as soon as the forward is removed, not
    /// whenever the runtime next drops the aborted accept task. (Windows
    /// cannot shut a listener down: listener_windows.rs tests its version.)
    #[cfg(unix)]
    #[tokio::test]
    async fn removing_a_forward_closes_its_port_at_once() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut fw = forwards();
        fw.add(f(Family::V4, port));
        let mut st = Status::default();
        fw.fill_status(&mut st);
        assert!(st.serving.contains(&Endpoint::tcp(Family::V4, port)), "{st:?}");
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("forward accepts");
        fw.remove(Endpoint::tcp(Family::V4, port));
        let err = std::net::TcpStream::connect(("127.0.0.1", port))
            .expect_err("port still open after remove");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    /// A UDP forward closed and opened again on the same port before the
    /// runtime has dropped the old task (nothing yielded in between) meets
    /// its own predecessor's socket: it waits for it, not counted as a
    /// conflict, and `settle` opens it. (Under Wine the port outlives the
    /// socket a little: the e2e Wine test covers that case.)
    #[cfg(unix)]
    #[tokio::test]
    async fn a_forward_reopened_on_its_port_waits_for_its_predecessor() {
        let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut fw = forwards();
        let e = Endpoint::udp(Family::V4, port);
        let server = |pid| Forward { endpoint: e, pid, ..f(Family::V4, port) };
        let served = |fw: &Forwards| {
            let mut st = Status::default();
            fw.fill_status(&mut st);
            (st.serving.contains(&e), st.conflicts.contains(&e))
        };
        fw.add(server(1));
        assert_eq!(served(&fw), (true, false), "opened");
        fw.remove(e);
        fw.add(server(2));
        assert_eq!(served(&fw), (false, true), "waits: the old socket still holds the port");
        fw.settle().await;
        assert_eq!(served(&fw), (true, false), "opened once the old socket closed");
    }

    #[test]
    fn conflicts_are_retried_quickly_then_every_four_seconds_at_most() {
        let want = [250, 500, 1000, 2000, 4000, 4000, 4000];
        let got: Vec<u128> = (0..7).map(|t| retry_delay(t).as_millis()).collect();
        assert_eq!(got, want);
        assert_eq!(retry_delay(u32::MAX), Duration::from_secs(4));
        // The worst case from a freed port to its forward: the longest wait.
        assert!(retry_delay(u32::MAX) < Duration::from_secs(5));
    }

    #[test]
    fn stale_endpoints_are_what_the_guest_no_longer_has() {
        use Family::*;
        let e = |fam, port| Endpoint::tcp(fam, port);
        let cases: Vec<(&str, Vec<Endpoint>, Vec<Forward>, Vec<Endpoint>)> = vec![
            ("empty both", vec![], vec![], vec![]),
            ("fresh host", vec![], vec![f(V4, 80)], vec![]),
            ("guest emptied", vec![e(V4, 80), e(V6, 80)], vec![], vec![e(V4, 80), e(V6, 80)]),
            ("family matters", vec![e(V4, 80)], vec![f(V6, 80)], vec![e(V4, 80)]),
            (
                "kept and changed",
                vec![e(V4, 80), e(V4, 81)],
                vec![f(V4, 81), f(V4, 82)],
                vec![e(V4, 80)],
            ),
        ];
        for (name, have, want, close) in cases {
            assert_eq!(stale(&have.into_iter().collect(), &want), close, "{name}");
        }
    }
}
