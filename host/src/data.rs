//! The host's end of a data connection: one per accepted client. Open a
//! connection to the agent with the session's ticket, name the endpoint,
//! wait for the agent to have dialled the guest, then relay. A refusal
//! resets the client, so it sees what it would have seen connecting to a
//! closed port in the guest. The agent's end is `agent/src/data.rs`.

use crate::Link;
use anyhow::{anyhow, Context, Result};
use hoist_net::{connect, relay, RelayError};
use hoist_wire::{
    open_segment, parse_refused, Conn, Endpoint, HostMsg, Message, Refusal, SegmentKind, WireError,
    PROTOCOL_VERSION,
};
use std::time::Duration;
use tokio::net::TcpStream;

/// How long the host waits for the agent's answer: strictly longer than the
/// agent's own dial timeout (5 s, `agent/src/data.rs`), so a slow dial that
/// succeeds is never met by a connection the host already dropped.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(7);

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
pub async fn carry(client: TcpStream, endpoint: Endpoint, link: &Link) -> Result<(), CarryError> {
    client.set_nodelay(true).ok();
    let opened = open(endpoint, link).await;
    let (agent, early) = match opened {
        Ok(x) => x,
        Err(e) => {
            hoist_net::reset(client);
            return Err(e);
        }
    };
    match relay(client, agent, early).await {
        Ok(_) => Ok(()),
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

async fn open(
    endpoint: Endpoint,
    link: &Link,
) -> Result<(hoist_net::Stream, bytes::BytesMut), CarryError> {
    let failed = CarryError::Failed;
    let (addr, ticket) = link.get().ok_or_else(|| failed(anyhow!("no session with the agent")))?;
    let agent = connect(&addr).await.context("opening a data connection").map_err(failed)?;
    let mut conn = Conn::new(agent);
    let mut first = Vec::new();
    HostMsg::Data { version: PROTOCOL_VERSION, ticket }.encode_frame(&mut first);
    first.extend_from_slice(&open_segment(&endpoint));
    conn.send_raw(&first).await.map_err(|e| failed(e.into()))?;
    let (h, payload) = conn
        .recv_segment_within(OPEN_TIMEOUT)
        .await
        .map_err(|e| failed(anyhow::Error::new(e).context("waiting for the agent to dial")))?;
    match h.kind {
        SegmentKind::Opened => Ok(conn.into_parts()),
        SegmentKind::Refused => {
            let (why, reason) =
                parse_refused(&payload).map_err(|e| failed(WireError::Decode(e).into()))?;
            Err(CarryError::Refused(why, reason))
        }
        _ => Err(failed(
            WireError::Unexpected { wanted: "Opened or Refused", got: "another segment" }.into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host outwaits the agent's dial, by a margin that covers a
    /// scheduling hiccup on either side.
    #[test]
    fn the_host_waits_longer_than_the_agent_dials() {
        const AGENT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
        assert!(OPEN_TIMEOUT >= AGENT_DIAL_TIMEOUT + Duration::from_secs(1));
    }
}
