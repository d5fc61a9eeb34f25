//! Live control sessions and their tickets: a data connection is served only
//! when it presents the ticket of a session that is up (and, with a shared
//! token, authenticated). A session's ticket dies with its control stream.

use hoist_wire::Ticket;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The tickets of the sessions that are up.
#[derive(Clone, Default)]
pub struct Sessions(Arc<Mutex<HashSet<Ticket>>>);

impl Sessions {
    /// Starts accepting data connections with `ticket` until the guard drops.
    pub fn register(&self, ticket: Ticket) -> SessionGuard {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(ticket);
        SessionGuard { sessions: self.clone(), ticket }
    }

    /// Whether `ticket` belongs to a session that is up.
    pub fn contains(&self, ticket: &Ticket) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).contains(ticket)
    }
}

/// A registered session; dropping it revokes its ticket.
pub struct SessionGuard {
    sessions: Sessions,
    ticket: Ticket,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.sessions.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.ticket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_live_as_long_as_their_session() {
        let s = Sessions::default();
        let (a, b) = ([1; 16], [2; 16]);
        let ga = s.register(a);
        assert!(s.contains(&a) && !s.contains(&b));
        let gb = s.register(b);
        drop(ga);
        assert!(!s.contains(&a) && s.contains(&b));
        drop(gb);
        assert!(!s.contains(&b));
    }
}
