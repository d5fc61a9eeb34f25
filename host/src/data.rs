//! The host's end of a data connection: one client connection at a time,
//! carried through the agent. Take a data connection from the pool (an idle,
//! greeted one, or a new one greeted now) and relay at once: the relay names
//! the endpoint with `Open`, in the same write as the client's first bytes
//! when the client has sent some by then, and relays the client's bytes
//! without waiting for the agent's answer. It reads that answer in band:
//! `Opened`, which comes with the guest server's first segment (so the wait
//! has no deadline of its own: a failed dial is answered within the agent's
//! dial timeout), or `Refused`, which resets the client, so it sees what it
//! would have seen connecting to a closed port in the guest. A clean end on
//! both sides puts the data connection back in the pool. The agent's end is
//! `agent/src/data.rs`.

use crate::pool::{greeting, DataPool};
use anyhow::anyhow;
use bytes::BytesMut;
use hoist_net::{relay, Opening, RelayError, Traffic};
use hoist_wire::{open_segment, Endpoint, Refusal};
use tokio::net::TcpStream;

/// How a client connection ended, when not cleanly.
#[derive(Debug)]
pub enum CarryError {
    /// The agent refused it: routine when a guest listener just closed.
    Refused(Refusal, String),
    /// Anything else.
    Failed(anyhow::Error),
}

impl std::fmt::Display for CarryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CarryError::Refused(why, reason) => write!(f, "the agent refused: {why}: {reason}"),
            CarryError::Failed(e) => write!(f, "{e:#}"),
        }
    }
}

/// Carries one client connection through the agent.
pub async fn carry(
    client: TcpStream,
    endpoint: Endpoint,
    pool: &DataPool,
    traffic: &Traffic,
) -> Result<(), CarryError> {
    // On Linux the client inherited Nagle off from the host listener.
    #[cfg(not(target_os = "linux"))]
    client.set_nodelay(true).ok();
    let mut data = match pool.take().await {
        Ok(d) => d,
        Err(e) => {
            hoist_net::reset(client);
            return Err(CarryError::Failed(e));
        }
    };
    let mut open = data.greeting.map(greeting).unwrap_or_default();
    open.extend_from_slice(&open_segment(&endpoint));
    let opening = Opening::Awaited { open: &open };
    let relayed = relay(client, &mut data.stream, BytesMut::new(), opening, traffic).await;
    match relayed {
        Ok(done) => {
            // Nothing may follow a clean end unasked: a connection that
            // carries more is not fit to be used again.
            if done.leftover.is_empty() {
                pool.put_back(data);
            }
            Ok(())
        }
        Err(RelayError::Refused(why, reason)) => Err(CarryError::Refused(why, reason)),
        // A client or guest server that resets is routine; the log names
        // the connection's fate at debug level (see `listener`).
        Err(e @ (RelayError::Local(_) | RelayError::Peer(_))) => {
            Err(CarryError::Failed(anyhow!("{e}")))
        }
        Err(e) => {
            Err(CarryError::Failed(anyhow::Error::new(e).context(format!("relaying {endpoint}"))))
        }
    }
}
