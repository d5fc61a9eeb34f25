//! The agent's door to the host: accepts connections on the transport, checks
//! who is calling (vsock peers must come from the allowed CID), reads the
//! first frame under a timeout and hands the connection to `control` or
//! `data`. A bad connection is logged and closed; the loop goes on.

use crate::tracker::TrackerHandle;
use crate::Settings;
use anyhow::Result;
use hoist_net::{Acceptor, Peer, Stream};
use hoist_wire::{AgentMsg, Conn, HostMsg, WireError, HANDSHAKE_TIMEOUT, PROTOCOL_VERSION};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Serves host connections on `acceptor` until `shutdown`.
pub async fn serve(
    acceptor: Acceptor,
    tracker: TrackerHandle,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
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
        if let (Peer::Vsock { cid, .. }, Some(allowed)) = (&peer, settings.accept_cid) {
            if *cid != allowed {
                warn!(peer = %peer, allowed_cid = allowed, "refusing vsock connection from a CID other than the host's");
                continue;
            }
        }
        let (tracker, settings, shutdown) = (tracker.clone(), settings.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(Conn::new(stream), tracker, settings, shutdown).await {
                match e.downcast_ref::<WireError>() {
                    // A host that went away mid-conversation is routine.
                    Some(WireError::Closed) => debug!(peer = %peer, "host connection: {e:#}"),
                    _ => warn!(peer = %peer, "host connection: {e:#}"),
                }
            }
        });
    }
}

async fn handle(
    mut conn: Conn<Stream>,
    tracker: TrackerHandle,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
) -> Result<()> {
    let first = match conn.recv_within::<HostMsg>(HANDSHAKE_TIMEOUT).await {
        Ok(m) => m,
        Err(e @ WireError::Decode(_)) => {
            let _ = reject(&mut conn, format!("malformed first frame: {e}")).await;
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    if first.version() != PROTOCOL_VERSION {
        let e = WireError::Version { ours: PROTOCOL_VERSION, theirs: first.version() };
        let _ = reject(&mut conn, e.to_string()).await;
        return Err(e.into());
    }
    match first {
        HostMsg::Control { .. } => crate::control::serve(conn, tracker, &settings, shutdown).await,
        HostMsg::Data { endpoint, .. } => {
            debug!(%endpoint, "data connection");
            crate::data::serve(conn, endpoint, &tracker).await
        }
    }
}

/// Refuses a connection, saying why.
pub(crate) async fn reject(conn: &mut Conn<Stream>, reason: String) -> Result<(), WireError> {
    conn.send(&AgentMsg::Rejected { reason }).await
}
