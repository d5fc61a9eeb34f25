//! The control stream from the agent: connect, say hello, take the full
//! snapshot (the truth, replacing whatever the host held), then apply changes
//! as they come. When the agent goes away the forwards stay up and the relay
//! reconnects with backoff; the next snapshot closes whatever vanished.

use crate::forwards::Forwards;
use crate::{Config, Status};
use anyhow::{Context, Result};
use hoist_net::{connect, Stream};
use hoist_wire::{
    AgentMsg, Conn, HostMsg, Message, WireError, HANDSHAKE_TIMEOUT, PROTOCOL_VERSION,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Runs the relay until `shutdown`, publishing its state on `status`.
pub async fn run(
    config: Config,
    status: watch::Sender<Status>,
    shutdown: CancellationToken,
) -> Result<()> {
    let config = Arc::new(config);
    let mut forwards = Forwards::new(config.clone());
    let mut backoff = BACKOFF_MIN;
    let mut quiet = false;
    loop {
        let r = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = session(&config, &mut forwards, &status) => r,
        };
        status.send_modify(|s| s.connected = false);
        match r {
            Ok(Session { established }) => {
                if established {
                    backoff = BACKOFF_MIN;
                }
                info!(event = "reconnect", guest = %config.guest, "agent closed the control stream; reconnecting");
                quiet = false;
            }
            Err((e, established)) => {
                if established {
                    backoff = BACKOFF_MIN;
                    quiet = false;
                }
                // One line per outage, not one per retry.
                if quiet {
                    debug!(guest = %config.guest, "agent still unreachable: {e:#}");
                } else {
                    warn!(event = "reconnect", guest = %config.guest, retry_in_ms = backoff.as_millis() as u64, "agent unreachable: {e:#}; retrying until it answers");
                    quiet = true;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    info!(event = "shutdown", "host relay stopping");
    Ok(())
}

struct Session {
    established: bool,
}

async fn session(
    config: &Config,
    forwards: &mut Forwards,
    status: &watch::Sender<Status>,
) -> Result<Session, (anyhow::Error, bool)> {
    // hvsock:wsl: finds the WSL VM anew before each connect (its id changes).
    let addr = config.target.resolve(&config.guest).await.map_err(|e| (e, false))?;
    let s = connect(&addr).await.map_err(|e| (e, false))?;
    let mut conn = Conn::new(s);
    let agent = handshake(&mut conn, forwards).await.map_err(|e| (e, false))?;
    status.send_modify(|st| {
        st.connected = true;
        st.sessions += 1;
        forwards.fill_status(st);
    });
    info!(event = "connected", guest = %config.guest, agent = %agent, "connected to the agent; table in sync");
    loop {
        let msg = match conn.recv::<AgentMsg>().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(Session { established: true }),
            Err(e) => {
                return Err((anyhow::Error::new(e).context("reading the control stream"), true))
            }
        };
        match msg {
            AgentMsg::Added(f) => forwards.add(f),
            AgentMsg::Removed(e) => forwards.remove(e),
            other => {
                let e = WireError::Unexpected { wanted: "Added or Removed", got: other.name() };
                return Err((e.into(), true));
            }
        }
        status.send_modify(|st| forwards.fill_status(st));
    }
}

/// Hello, welcome, and the full snapshot, each read under the handshake timeout.
async fn handshake(conn: &mut Conn<Stream>, forwards: &mut Forwards) -> Result<String> {
    conn.send(&HostMsg::Control { version: PROTOCOL_VERSION }).await?;
    let agent =
        match conn.recv_within(HANDSHAKE_TIMEOUT).await.context("waiting for the welcome")? {
            AgentMsg::Welcome { version, agent } if version == PROTOCOL_VERSION => agent,
            AgentMsg::Welcome { version, .. } => {
                return Err(WireError::Version { ours: PROTOCOL_VERSION, theirs: version }.into())
            }
            AgentMsg::Rejected { reason } => return Err(WireError::Refused(reason).into()),
            other => {
                return Err(WireError::Unexpected { wanted: "Welcome", got: other.name() }.into())
            }
        };
    let mut table = Vec::new();
    loop {
        match conn.recv_within(HANDSHAKE_TIMEOUT).await.context("waiting for the snapshot")? {
            AgentMsg::Snapshot { forwards: part, last } => {
                table.extend(part);
                if last {
                    break;
                }
            }
            other => {
                return Err(WireError::Unexpected { wanted: "Snapshot", got: other.name() }.into())
            }
        }
    }
    forwards.resync(table);
    Ok(agent)
}
