//! The control stream to the host: a welcome, a full snapshot taken fresh for
//! this connection, then every change to the host endpoints as it happens.
//! Each connection remembers what it sent and sends the difference to the
//! table's latest state, so a slow host sees coalesced changes, never stale
//! ones, and memory does not grow with its lag.

use crate::table::{changes, Exposed};
use crate::tracker::TrackerHandle;
use anyhow::{bail, Context, Result};
use hoist_proto::frame::write_frame;
use hoist_proto::transport::Stream;
use hoist_proto::{AgentMsg, Forward, PROTOCOL_VERSION};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Describes this agent in the welcome frame.
pub static AGENT_DESCRIPTION: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub async fn serve_control(mut stream: Stream, tracker: TrackerHandle, shutdown: CancellationToken) -> Result<()> {
    let agent = AGENT_DESCRIPTION.get().cloned().unwrap_or_else(|| format!("hoist-agent {}", env!("CARGO_PKG_VERSION")));
    write_frame(&mut stream, &AgentMsg::Welcome { version: PROTOCOL_VERSION, agent }.encode()).await?;
    // A new host may have missed anything: the snapshot, not the last event,
    // is what it gets.
    tracker.resync().await?;
    let mut exposed = tracker.exposed.clone();
    let mut sent: Arc<Exposed> = exposed.borrow_and_update().clone();
    let all: Vec<Forward> = sent.values().map(|x| x.forward.clone()).collect();
    for part in AgentMsg::snapshot_parts(&all) {
        write_frame(&mut stream, &part.encode()).await.context("sending snapshot")?;
    }
    info!(event = "host_connected", forwards = all.len(), "host connected; snapshot sent");
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = Vec::new();
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = exposed.changed() => {
                r.context("tracker has stopped")?;
                let now = exposed.borrow_and_update().clone();
                buf.clear();
                for m in changes(&sent, &now) {
                    hoist_proto::frame::encode_frame(&m.encode(), &mut buf)?;
                }
                wr.write_all(&buf).await.context("sending changes to the host")?;
                sent = now;
            }
            // The host sends nothing after its first frame: any byte is a
            // protocol error, and end of stream means it went away. A one-byte
            // read is cancel-safe, unlike reading a whole frame.
            r = rd.read(&mut probe) => match r.context("reading the control stream")? {
                0 => {
                    info!(event = "host_disconnected", "host closed the control stream");
                    return Ok(());
                }
                _ => bail!("unexpected data from the host on the control stream"),
            },
        }
    }
}
