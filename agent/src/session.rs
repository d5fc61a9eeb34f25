//! Live control sessions and their tickets: a data connection is served only
//! when it presents the ticket of a session that is up (and, with a shared
//! token, authenticated). A session's ticket dies with its control stream,
//! and so do its idle data connections: each one waits on the session's
//! `ended` token.

use hoist_wire::Ticket;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// The sessions that are up, by ticket.
#[derive(Clone, Default)]
pub struct Sessions(Arc<Mutex<HashMap<Ticket, CancellationToken>>>);

impl Sessions {
    /// Starts accepting data connections with `ticket` until the guard drops.
    pub fn register(&self, ticket: Ticket) -> SessionGuard {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(ticket, CancellationToken::new());
        SessionGuard { sessions: self.clone(), ticket }
    }

    /// The session `ticket` belongs to, as the token cancelled when it ends;
    /// `None` when no such session is up.
    pub fn find(&self, ticket: &Ticket) -> Option<CancellationToken> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(ticket).cloned()
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
        let ended = self.sessions.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.ticket);
        if let Some(ended) = ended {
            ended.cancel();
        }
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
        assert!(s.find(&a).is_some() && s.find(&b).is_none());
        let gb = s.register(b);
        let a_ended = s.find(&a).unwrap();
        drop(ga);
        assert!(a_ended.is_cancelled(), "a's connections are told");
        assert!(s.find(&a).is_none() && s.find(&b).is_some());
        assert!(!s.find(&b).unwrap().is_cancelled());
        drop(gb);
        assert!(s.find(&b).is_none());
    }
}
