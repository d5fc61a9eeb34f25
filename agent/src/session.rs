//! Live control sessions and their tickets: a data connection is served only
//! when it presents the ticket of a session that is up (and, with a shared
//! token, authenticated). A session's ticket dies with its control stream,
//! and so do its idle data connections: each one waits on the session's
//! `ended` token.

use hoist_wire::Ticket;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The sessions that are up, by ticket; and, for the status view, who is
/// connected (told on a watch channel as it changes).
#[derive(Clone)]
pub struct Sessions {
    up: Arc<Mutex<HashMap<Ticket, Session>>>,
    hosts: watch::Sender<Vec<Host>>,
}

struct Session {
    ended: CancellationToken,
    host: Host,
}

/// A connected host, for the status view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Who it is (its transport address, or for a Unix peer its uid and pid).
    pub peer: String,
    /// Since when.
    pub since: SystemTime,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions { up: Default::default(), hosts: watch::channel(Vec::new()).0 }
    }
}

impl Sessions {
    /// Starts accepting data connections with `ticket` until the guard drops.
    pub fn register(&self, ticket: Ticket, peer: String) -> SessionGuard {
        let host = Host { peer, since: SystemTime::now() };
        let mut up = self.up.lock().unwrap_or_else(|p| p.into_inner());
        up.insert(ticket, Session { ended: CancellationToken::new(), host });
        self.publish(&up);
        SessionGuard { sessions: self.clone(), ticket }
    }

    /// The session `ticket` belongs to, as the token cancelled when it ends;
    /// `None` when no such session is up.
    pub fn find(&self, ticket: &Ticket) -> Option<CancellationToken> {
        self.up.lock().unwrap_or_else(|p| p.into_inner()).get(ticket).map(|s| s.ended.clone())
    }

    /// The connected hosts, as they change.
    pub fn hosts(&self) -> watch::Receiver<Vec<Host>> {
        self.hosts.subscribe()
    }

    fn publish(&self, up: &HashMap<Ticket, Session>) {
        let mut hosts: Vec<Host> = up.values().map(|s| s.host.clone()).collect();
        hosts.sort_by_key(|h| h.since);
        self.hosts.send_replace(hosts);
    }
}

/// A registered session; dropping it revokes its ticket and ends its data
/// connections' waits.
pub struct SessionGuard {
    sessions: Sessions,
    ticket: Ticket,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut up = self.sessions.up.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = up.remove(&self.ticket) {
            s.ended.cancel();
        }
        self.sessions.publish(&up);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_live_as_long_as_their_session() {
        let s = Sessions::default();
        let (a, b) = ([1; 16], [2; 16]);
        let hosts = s.hosts();
        let ga = s.register(a, "first".into());
        assert!(s.find(&a).is_some() && s.find(&b).is_none());
        let gb = s.register(b, "second".into());
        let peers: Vec<String> = hosts.borrow().iter().map(|h| h.peer.clone()).collect();
        assert_eq!(peers, ["first", "second"]);
        let a_ended = s.find(&a).unwrap();
        drop(ga);
        assert!(a_ended.is_cancelled(), "a's connections are told");
        assert!(s.find(&a).is_none() && s.find(&b).is_some());
        assert!(!s.find(&b).unwrap().is_cancelled());
        drop(gb);
        assert!(s.find(&b).is_none());
        assert!(hosts.borrow().is_empty(), "the status view sees them go");
    }
}
