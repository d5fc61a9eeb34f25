//! The control stream to the host: a welcome, a full snapshot taken fresh for
//! this connection, then every change to the host endpoints as it happens.
//! Each connection remembers what it sent and sends the difference to the
//! table's latest state, so a slow host sees coalesced changes, never stale
//! ones, and memory does not grow with its lag.

use crate::table::{changes, Exposed};
use crate::tracker::TrackerHandle;
use crate::Settings;
use anyhow::{Context, Result};
use hoist_net::Stream;
use hoist_wire::{AgentMsg, Conn, Forward, HostMsg, Message, WireError, PROTOCOL_VERSION};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub async fn serve(
    mut conn: Conn<Stream>,
    tracker: TrackerHandle,
    settings: &Settings,
    shutdown: CancellationToken,
) -> Result<()> {
    let welcome =
        AgentMsg::Welcome { version: PROTOCOL_VERSION, agent: settings.description.clone() };
    conn.send(&welcome).await?;
    // A new host may have missed anything: the snapshot, not the last event,
    // is what it gets.
    tracker.resync().await?;
    let mut exposed = tracker.exposed.clone();
    let mut sent: Arc<Exposed> = exposed.borrow_and_update().clone();
    let all: Vec<Forward> = sent.values().map(|x| x.forward.clone()).collect();
    conn.send_all(&AgentMsg::snapshot_parts(&all)).await?;
    info!(event = "host_connected", forwards = all.len(), "host connected; snapshot sent");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = exposed.changed() => {
                r.context("the tracker has stopped")?;
                let now = exposed.borrow_and_update().clone();
                conn.send_all(&changes(&sent, &now)).await?;
                sent = now;
            }
            // The host sends nothing after its first frame: a message is a
            // protocol error, and end of stream means it went away.
            r = conn.recv::<HostMsg>() => match r? {
                None => {
                    info!(event = "host_disconnected", "host closed the control stream");
                    return Ok(());
                }
                Some(m) => return Err(WireError::Unexpected { wanted: "nothing", got: m.name() }.into()),
            },
        }
    }
}
