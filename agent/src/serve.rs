//! The agent's door to the host: accepts connections on the transport, checks
//! who is calling (vsock peers must come from the allowed CID, Unix peers must
//! be root or an allowed user), reads the first frame under a timeout, refuses
//! another protocol version in words every version reads, and hands the
//! connection to `control` or `data`. Handshakes are bounded: a first frame is
//! a few bytes, and at most [`MAX_PENDING`] connections may be mid-handshake
//! at once. When all places are taken the door waits for one to free; a
//! connection that has held its place for [`STALL`] without finishing its
//! handshake loses it to a newcomer, so a flood of stalled peers cannot keep
//! the host (which sends its first frame at once) out, while a burst of real
//! connections is never dropped. A bad connection is logged and closed; the
//! loop goes on.

use crate::session::Sessions;
use crate::tracker::TrackerHandle;
use crate::Settings;
use anyhow::Result;
use hoist_net::{Acceptor, Peer, Stream};
use hoist_wire::{
    AgentMsg, Conn, HostMsg, Message, WireError, HANDSHAKE_TIMEOUT, MAX_HOST_FRAME,
    PROTOCOL_VERSION,
};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Connections allowed to be mid-handshake at once.
pub const MAX_PENDING: usize = 64;

/// How long a connection may hold a place without finishing its handshake
/// before a newcomer may take it.
pub const STALL: Duration = Duration::from_millis(250);

/// What every connection's task needs.
#[derive(Clone)]
pub struct Door {
    /// The bound on data connections.
    pub limit: hoist_net::Limit,
    /// Bytes relayed, all connections together.
    pub traffic: Arc<hoist_net::Traffic>,
    pub tracker: TrackerHandle,
    pub settings: Arc<Settings>,
    pub sessions: Sessions,
    pub pending: Pending,
    pub shutdown: CancellationToken,
}

/// Serves host connections on `acceptor` until `door.shutdown`.
pub async fn serve(acceptor: Acceptor, door: Door) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = door.shutdown.cancelled() => return,
            r = acceptor.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!("accepting a host connection: {e:#}");
                    // Out of descriptors or memory: give the system a moment
                    // rather than spinning on the same error.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(why) = admit(&peer, &door.settings) {
            warn!(peer = %peer, "refusing a connection: {why}");
            continue;
        }
        let slot = door.pending.enter().await;
        let door = door.clone();
        tokio::spawn(async move {
            let cancelled = slot.cancelled.clone();
            let r = tokio::select! {
                r = handle(Conn::new(stream), &door, slot, &peer) => r,
                _ = cancelled.cancelled() => Err(anyhow::anyhow!("dropped mid-handshake: stalled for {STALL:?} while {MAX_PENDING} connections waited")),
            };
            if let Err(e) = r {
                if host_went_away(&e) {
                    debug!(peer = %peer, "host connection: {e:#}");
                } else {
                    warn!(peer = %peer, "host connection: {e:#}");
                }
            }
        });
    }
}

/// Whether a connection ended because the host went away mid-conversation
/// (it closed, or dropped a data connection it no longer needed while the
/// agent answered): routine, not worth a warning.
fn host_went_away(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<WireError>() {
        Some(WireError::Closed) => true,
        Some(WireError::Io(io)) => matches!(
            io.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ),
        _ => false,
    }
}

/// Who may talk to the agent: see README's trust model.
fn admit(peer: &Peer, settings: &Settings) -> Result<(), String> {
    match peer {
        Peer::Vsock { cid, .. } => match settings.accept_cid {
            Some(allowed) if *cid != allowed => {
                Err(format!("vsock CID {cid} is not the host's ({allowed})"))
            }
            _ => Ok(()),
        },
        Peer::Unix { uid, .. } => {
            if *uid == 0
                || *uid == hoist_net::effective_uid()
                || settings.allowed_uids.contains(uid)
            {
                Ok(())
            } else {
                Err(format!(
                    "uid {uid} is neither root, the agent's user, nor allowed (--allow-uid)"
                ))
            }
        }
        Peer::Tcp(_) => Ok(()),
    }
}

async fn handle(mut conn: Conn<Stream>, door: &Door, slot: Slot, peer: &Peer) -> Result<()> {
    // A host frame is a few bytes: a peer announcing more is refused before
    // anything is allocated for it.
    conn.set_max_frame(MAX_HOST_FRAME);
    let first = match conn.recv_frame_within(HANDSHAKE_TIMEOUT).await {
        Ok(body) => body,
        Err(e @ WireError::Decode(_)) => {
            let _ = refuse(&mut conn, format!("malformed first frame: {e}")).await;
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    match HostMsg::peek_version(&first) {
        Some(PROTOCOL_VERSION) => {}
        Some(theirs) => {
            let e = WireError::Version { ours: PROTOCOL_VERSION, theirs };
            let why = format!("protocol version {theirs} not supported: this agent speaks {PROTOCOL_VERSION}; run hoist-host and hoist-agent of the same release");
            let _ = refuse(&mut conn, why).await;
            return Err(e.into());
        }
        None => {
            let _ = refuse(&mut conn, "malformed first frame: not a Control or Data frame".into())
                .await;
            return Err(
                WireError::Unexpected { wanted: "Control or Data", got: "another frame" }.into()
            );
        }
    }
    match HostMsg::decode_body(&first) {
        Ok(HostMsg::Control { .. }) => {
            crate::control::serve(conn, door, slot, peer.to_string()).await
        }
        Ok(HostMsg::Data { ticket, .. }) => crate::data::serve(conn, ticket, door, slot).await,
        Ok(other) => {
            Err(WireError::Unexpected { wanted: "Control or Data", got: other.name() }.into())
        }
        Err(e) => {
            let _ = refuse(&mut conn, format!("malformed first frame: {e}")).await;
            Err(WireError::Decode(e).into())
        }
    }
}

/// Refuses a connection, saying why, in words every protocol version reads.
pub(crate) async fn refuse(conn: &mut Conn<Stream>, reason: String) -> Result<(), WireError> {
    conn.send(&AgentMsg::Refused { reason }).await
}

/// The connections mid-handshake, oldest first.
#[derive(Clone, Default)]
pub struct Pending(Arc<PendingInner>);

#[derive(Default)]
pub struct PendingInner {
    queue: Mutex<VecDeque<Waiting>>,
    next_id: std::sync::atomic::AtomicU64,
    freed: tokio::sync::Notify,
}

struct Waiting {
    id: u64,
    since: Instant,
    cancelled: CancellationToken,
}

/// A connection's place among those mid-handshake; leaving it (drop or
/// [`Slot::done`]) frees the place.
pub struct Slot {
    pending: Pending,
    id: u64,
    cancelled: CancellationToken,
}

impl Pending {
    /// Takes a place: a free one, or the place of a connection stalled for
    /// [`STALL`], waiting until there is one.
    async fn enter(&self) -> Slot {
        loop {
            let freed = self.0.freed.notified();
            let wait_until = {
                let mut q = self.0.queue.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                if q.len() >= MAX_PENDING && q.front().is_some_and(|w| now >= w.since + STALL) {
                    if let Some(stalled) = q.pop_front() {
                        stalled.cancelled.cancel();
                    }
                }
                if q.len() < MAX_PENDING {
                    let id = self.0.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let cancelled = CancellationToken::new();
                    q.push_back(Waiting { id, since: now, cancelled: cancelled.clone() });
                    return Slot { pending: self.clone(), id, cancelled };
                }
                q.front().map(|w| w.since + STALL)
            };
            tokio::select! {
                _ = freed => {}
                _ = tokio::time::sleep_until(wait_until.unwrap_or_else(Instant::now)) => {}
            }
        }
    }

    /// Connections mid-handshake now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.queue.lock().unwrap().len()
    }
}

impl Slot {
    /// The handshake is over: the connection no longer counts as pending and
    /// can no longer be dropped for a newer one.
    pub fn done(self) {}
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut q = self.pending.0.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.retain(|w| w.id != self.id);
        self.pending.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host that closed or dropped the connection is routine (debug); any
    /// other failure is worth a warning.
    #[test]
    fn a_host_that_went_away_is_routine() {
        use std::io::{Error, ErrorKind::*};
        let cases: Vec<(&str, anyhow::Error, bool)> = vec![
            ("closed", WireError::Closed.into(), true),
            ("broken pipe", WireError::Io(Error::from(BrokenPipe)).into(), true),
            ("reset", WireError::Io(Error::from(ConnectionReset)).into(), true),
            (
                "reset, with context",
                anyhow::Error::from(WireError::Io(Error::from(ConnectionReset)))
                    .context("answering Open"),
                true,
            ),
            ("permission", WireError::Io(Error::from(PermissionDenied)).into(), false),
            ("timeout", WireError::Timeout(std::time::Duration::from_secs(5)).into(), false),
            ("not wire", anyhow::anyhow!("dialling the guest"), false),
        ];
        for (name, e, routine) in cases {
            assert_eq!(host_went_away(&e), routine, "{name}: {e:#}");
        }
    }

    /// A full house waits for a place rather than drop a connection that is
    /// merely busy; a connection stalled past STALL loses its place to a
    /// newcomer, oldest first.
    #[tokio::test(start_paused = true)]
    async fn pending_handshakes_are_bounded_and_stalled_ones_give_way() {
        let p = Pending::default();
        let mut slots = Vec::new();
        for _ in 0..MAX_PENDING {
            slots.push(p.enter().await);
        }
        assert_eq!(p.len(), MAX_PENDING);
        // Full, nobody stalled yet: the newcomer waits, then gets the place
        // of the oldest once it has stalled.
        let start = tokio::time::Instant::now();
        let newest = p.enter().await;
        assert!(start.elapsed() >= STALL, "waited {:?}", start.elapsed());
        assert_eq!(p.len(), MAX_PENDING);
        assert!(slots[0].cancelled.is_cancelled(), "the oldest was dropped");
        assert!(slots[1..].iter().all(|s| !s.cancelled.is_cancelled()));
        // A place that frees is taken at once.
        slots.pop().unwrap().done();
        let start = tokio::time::Instant::now();
        let _another = p.enter().await;
        assert!(start.elapsed() < Duration::from_millis(1));
        newest.done();
        drop(slots);
        assert_eq!(p.len(), 1);
    }
}
