//! The host's forwards: endpoint -> owned handle. Opening a forward binds the
//! host port; dropping its handle closes the port and stops its accept loop
//! (connections already carried live on until either side closes them). A
//! port a host program already holds is reported once and skipped; hoist
//! never shares or steals it.

use crate::listener::{accept_loop, bind_host_port};
use crate::{Config, Status};
use hoist_wire::{Endpoint, Family, Forward};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// A mirrored guest listener. Dropping it closes the host port.
pub struct ForwardHandle {
    forward: Forward,
    task: JoinHandle<()>,
    /// A second descriptor for the listening socket `task` accepts on.
    socket: socket2::Socket,
}

impl Drop for ForwardHandle {
    fn drop(&mut self) {
        // Aborting the task drops its listener only when the runtime next
        // gets to it; shutting the socket down refuses new connections now,
        // so the port is closed by the time "forward_closed" is logged.
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        self.task.abort();
    }
}

/// The endpoints the host serves (`have`) that the guest's full table
/// (`want`) no longer has: a resync closes them and opens or refreshes
/// everything in `want`. Pure.
pub fn stale(have: &BTreeSet<Endpoint>, want: &[Forward]) -> Vec<Endpoint> {
    let wanted: BTreeSet<Endpoint> = want.iter().map(|f| f.endpoint).collect();
    have.difference(&wanted).copied().collect()
}

/// A guest listener whose host port could not be bound, retried while it
/// lasts.
struct Conflict {
    forward: Forward,
    /// Why the last try failed, as logged.
    why: String,
    tries: u32,
    next_try: Instant,
}

/// How long to wait before retry number `tries` of a port in conflict:
/// quick at first, never more than 4 s, so a port freed on the host is
/// forwarded within 5 s.
pub fn retry_delay(tries: u32) -> Duration {
    (Duration::from_millis(250) * 2u32.saturating_pow(tries.min(8))).min(Duration::from_secs(4))
}

pub struct Forwards {
    config: Arc<Config>,
    open: BTreeMap<Endpoint, ForwardHandle>,
    conflicts: BTreeMap<Endpoint, Conflict>,
}

impl Forwards {
    /// No forwards yet.
    pub fn new(config: Arc<Config>) -> Forwards {
        Forwards { config, open: BTreeMap::new(), conflicts: BTreeMap::new() }
    }

    /// Makes the forwards equal to the guest's full table.
    pub fn resync(&mut self, table: Vec<Forward>) {
        let have: BTreeSet<Endpoint> =
            self.open.keys().chain(self.conflicts.keys()).copied().collect();
        for e in stale(&have, &table) {
            self.remove(e);
        }
        for f in table {
            self.add(f);
        }
    }

    /// Opens (or refreshes the details of) the forward for `f.endpoint`.
    pub fn add(&mut self, f: Forward) {
        if let Some(h) = self.open.get_mut(&f.endpoint) {
            h.forward = f;
            return;
        }
        if let Some(c) = self.conflicts.get_mut(&f.endpoint) {
            c.forward = f;
            return;
        }
        if let Err(why) = self.open_port(f.clone()) {
            let addr = self.host_addr(f.endpoint);
            warn!(event = "host_port_conflict", port = f.endpoint.port, family = %f.endpoint.family, host = %addr, pid = f.pid, comm = %f.comm, reason = %why, "host port {addr} {why}; guest listener of pid {} ({}) is not forwarded until it is free", f.pid, f.comm);
            let next_try = Instant::now() + retry_delay(0);
            self.conflicts.insert(f.endpoint, Conflict { forward: f, why, tries: 0, next_try });
        }
    }

    /// Binds the host port of `f` and starts its accept loop; the reason,
    /// in words, when the port cannot be had.
    fn open_port(&mut self, f: Forward) -> Result<(), String> {
        let addr = self.host_addr(f.endpoint);
        match bind_host_port(addr).and_then(|l| Ok((socket2::SockRef::from(&l).try_clone()?, l))) {
            Ok((socket, listener)) => {
                info!(event = "forward_opened", port = f.endpoint.port, family = %f.endpoint.family, host = %addr, guest_address = %f.guest_addr, pid = f.pid, comm = %f.comm, "forwarding {addr} to the guest");
                let task = tokio::spawn(accept_loop(listener, f.endpoint, self.config.clone()));
                self.open.insert(f.endpoint, ForwardHandle { forward: f, task, socket });
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                Err("is already in use on the host".into())
            }
            Err(e) => Err(format!("cannot be bound: {e}")),
        }
    }

    /// When the next port in conflict is due for a retry, if any is.
    pub fn next_retry(&self) -> Option<Instant> {
        self.conflicts.values().map(|c| c.next_try).min()
    }

    /// Retries the ports in conflict that are due; logs only what changed.
    pub fn retry_conflicts(&mut self) {
        let now = Instant::now();
        let due: Vec<Endpoint> =
            self.conflicts.iter().filter(|(_, c)| c.next_try <= now).map(|(e, _)| *e).collect();
        for e in due {
            let Some(mut c) = self.conflicts.remove(&e) else { continue };
            match self.open_port(c.forward.clone()) {
                Ok(()) => debug!(port = e.port, tries = c.tries + 1, "host port freed"),
                Err(why) => {
                    if why != c.why {
                        warn!(event = "host_port_conflict", port = e.port, family = %e.family, host = %self.host_addr(e), reason = %why, "host port {} {why}", self.host_addr(e));
                        c.why = why;
                    }
                    c.tries += 1;
                    c.next_try = now + retry_delay(c.tries);
                    self.conflicts.insert(e, c);
                }
            }
        }
    }

    /// Forwards open or in conflict.
    pub fn len(&self) -> usize {
        self.open.len() + self.conflicts.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every forward.
    pub fn clear(&mut self) {
        let all: Vec<Endpoint> = self.open.keys().chain(self.conflicts.keys()).copied().collect();
        for e in all {
            self.remove(e);
        }
    }

    /// Closes the forward for `e`, if any.
    pub fn remove(&mut self, e: Endpoint) {
        if let Some(h) = self.open.remove(&e) {
            // Close the port before saying so: whoever reads the log may
            // connect the moment the line appears.
            let f = h.forward.clone();
            drop(h);
            info!(event = "forward_closed", port = e.port, family = %e.family, host = %self.host_addr(e), pid = f.pid, comm = %f.comm, "guest listener gone; host port closed");
        } else if self.conflicts.remove(&e).is_some() {
            info!(event = "forward_closed", port = e.port, family = %e.family, "guest listener gone (its host port was in conflict)");
        }
    }

    /// Publishes what is open and what is in conflict.
    pub fn fill_status(&self, s: &mut Status) {
        s.serving = self.open.keys().copied().collect();
        s.conflicts = self.conflicts.keys().copied().collect();
    }

    fn host_addr(&self, e: Endpoint) -> SocketAddr {
        let ip = match e.family {
            Family::V4 => IpAddr::V4(self.config.bind_v4),
            Family::V6 => IpAddr::V6(self.config.bind_v6),
        };
        SocketAddr::new(ip, e.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(family: Family, port: u16) -> Forward {
        Forward {
            endpoint: Endpoint::tcp(family, port),
            guest_addr: "127.0.0.1".parse().unwrap(),
            pid: 1,
            comm: "x".into(),
        }
    }

    /// The port refuses connections as soon as the forward is removed, not
    /// whenever the runtime next drops the aborted accept task. (Windows
    /// cannot shut a listener down: listener_windows.rs tests its version.)
    #[cfg(unix)]
    #[tokio::test]
    async fn removing_a_forward_closes_its_port_at_once() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut fw = Forwards::new(Arc::new(Config::new("unix:/nonexistent".parse().unwrap())));
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
