//! The host's forwards: endpoint -> owned handle. Opening a forward binds the
//! host port; dropping its handle closes the port and stops its accept loop
//! (connections already carried live on until either side closes them). A
//! port a host program already holds is reported once and skipped; hoist
//! never shares or steals it.

use crate::listener::{bind, accept_loop};
use crate::{Config, Status};
use hoist_proto::{Endpoint, Family, Forward};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// A mirrored guest listener. Dropping it closes the host port.
pub struct ForwardHandle {
    forward: Forward,
    task: JoinHandle<()>,
    /// The listening socket, owned by `task`.
    fd: RawFd,
}

impl Drop for ForwardHandle {
    fn drop(&mut self) {
        // Aborting the task drops its listener only when the runtime next
        // gets to it; shutting the socket down refuses new connections now,
        // so the port is closed by the time "forward_closed" is logged.
        // SAFETY: the task still owns the descriptor (it is dropped after
        // the abort below), so it is valid here.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        self.task.abort();
    }
}

/// What a resync must do: endpoints to close, forwards to open or refresh.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub close: Vec<Endpoint>,
    pub open: Vec<Forward>,
}

/// Compares what the host has (`have`) with the guest's full table. Pure.
pub fn plan(have: &BTreeSet<Endpoint>, want: &[Forward]) -> Plan {
    let wanted: BTreeSet<Endpoint> = want.iter().map(|f| f.endpoint).collect();
    Plan {
        close: have.difference(&wanted).copied().collect(),
        open: want.to_vec(),
    }
}

pub struct Forwards {
    config: Arc<Config>,
    open: BTreeMap<Endpoint, ForwardHandle>,
    conflicts: BTreeMap<Endpoint, Forward>,
}

impl Forwards {
    pub fn new(config: Arc<Config>) -> Forwards {
        Forwards { config, open: BTreeMap::new(), conflicts: BTreeMap::new() }
    }

    /// Makes the forwards equal to the guest's full table.
    pub fn resync(&mut self, table: Vec<Forward>) {
        let have: BTreeSet<Endpoint> = self.open.keys().chain(self.conflicts.keys()).copied().collect();
        let p = plan(&have, &table);
        for e in p.close {
            self.remove(e);
        }
        for f in p.open {
            // A port that conflicted before gets another try on every resync.
            self.conflicts.remove(&f.endpoint);
            self.add(f);
        }
    }

    /// Opens (or refreshes the details of) the forward for `f.endpoint`.
    pub fn add(&mut self, f: Forward) {
        if let Some(h) = self.open.get_mut(&f.endpoint) {
            h.forward = f;
            return;
        }
        if let Some(old) = self.conflicts.get_mut(&f.endpoint) {
            *old = f;
            return;
        }
        let addr = self.host_addr(f.endpoint);
        match bind(addr) {
            Ok(listener) => {
                let fd = listener.as_raw_fd();
                info!(event = "forward_opened", port = f.endpoint.port, family = %f.endpoint.family, host = %addr, guest_address = %f.guest_addr, pid = f.pid, comm = %f.comm, "forwarding {addr} to the guest");
                let task = tokio::spawn(accept_loop(listener, f.endpoint, self.config.clone()));
                self.open.insert(f.endpoint, ForwardHandle { forward: f, task, fd });
            }
            Err(e) => {
                let taken = e.kind() == std::io::ErrorKind::AddrInUse;
                let why = if taken { "already in use on the host".to_string() } else { format!("cannot be bound: {e}") };
                warn!(event = "host_port_conflict", port = f.endpoint.port, family = %f.endpoint.family, host = %addr, pid = f.pid, comm = %f.comm, "host port {addr} {why}; guest listener of pid {} ({}) is not forwarded", f.pid, f.comm);
                self.conflicts.insert(f.endpoint, f);
            }
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
        Forward { endpoint: Endpoint { family, port }, guest_addr: "127.0.0.1".parse().unwrap(), pid: 1, comm: "x".into() }
    }

    /// The port refuses connections as soon as the forward is removed, not
    /// whenever the runtime next drops the aborted accept task.
    #[tokio::test]
    async fn removing_a_forward_closes_its_port_at_once() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut fw = Forwards::new(Arc::new(Config::new("unix:/nonexistent".parse().unwrap())));
        fw.add(f(Family::V4, port));
        let mut st = Status::default();
        fw.fill_status(&mut st);
        assert!(st.serving.contains(&Endpoint { family: Family::V4, port }), "{st:?}");
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("forward accepts");
        fw.remove(Endpoint { family: Family::V4, port });
        let err = std::net::TcpStream::connect(("127.0.0.1", port)).expect_err("port still open after remove");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn plans_close_what_vanished_and_open_the_rest() {
        use Family::*;
        let e = |fam, port| Endpoint { family: fam, port };
        let cases: Vec<(&str, Vec<Endpoint>, Vec<Forward>, Vec<Endpoint>)> = vec![
            ("empty both", vec![], vec![], vec![]),
            ("fresh host", vec![], vec![f(V4, 80)], vec![]),
            ("guest emptied", vec![e(V4, 80), e(V6, 80)], vec![], vec![e(V4, 80), e(V6, 80)]),
            ("family matters", vec![e(V4, 80)], vec![f(V6, 80)], vec![e(V4, 80)]),
            ("kept and changed", vec![e(V4, 80), e(V4, 81)], vec![f(V4, 81), f(V4, 82)], vec![e(V4, 80)]),
        ];
        for (name, have, want, close) in cases {
            let p = plan(&have.into_iter().collect(), &want);
            assert_eq!(p.close, close, "{name}");
            assert_eq!(p.open, want, "{name}");
        }
    }
}
