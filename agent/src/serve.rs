//! The agent's door to the host: accepts connections on the transport, checks
//! who is calling (vsock peers must come from the allowed CID), reads the
//! first frame under a timeout and hands the connection to `control` or
//! `dial`. A bad connection is logged and closed; the loop goes on.

use crate::tracker::TrackerHandle;
use anyhow::{bail, Result};
use hoist_proto::frame::{read_frame_timeout, write_frame};
use hoist_proto::transport::{Listener, Peer, Stream};
use hoist_proto::{AgentMsg, HostMsg, PROTOCOL_VERSION};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Serves host connections on `listener` until `shutdown`.
pub async fn serve(listener: Listener, tracker: TrackerHandle, accept_cid: Option<u32>, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
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
        if let (Peer::Vsock { cid, .. }, Some(allowed)) = (&peer, accept_cid) {
            if cid != &allowed {
                warn!(peer = %peer, allowed_cid = allowed, "refusing vsock connection from a CID other than the host's");
                continue;
            }
        }
        let tracker = tracker.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, tracker, shutdown).await {
                warn!(peer = %peer, "host connection: {e:#}");
            }
        });
    }
}

async fn handle(mut stream: Stream, tracker: TrackerHandle, shutdown: CancellationToken) -> Result<()> {
    let first = read_frame_timeout(&mut stream).await?;
    let msg = match HostMsg::decode(&first) {
        Ok(m) => m,
        Err(e) => {
            let _ = reject(&mut stream, format!("malformed first frame: {e:#}")).await;
            bail!("malformed first frame: {e:#}");
        }
    };
    let version = match msg {
        HostMsg::Control { version } | HostMsg::Data { version, .. } => version,
    };
    if version != PROTOCOL_VERSION {
        let reason = format!("protocol version {version} not supported (agent speaks {PROTOCOL_VERSION})");
        let _ = reject(&mut stream, reason.clone()).await;
        bail!(reason);
    }
    match msg {
        HostMsg::Control { .. } => crate::control::serve_control(stream, tracker, shutdown).await,
        HostMsg::Data { endpoint, .. } => {
            debug!(%endpoint, "data connection");
            crate::dial::serve_data(stream, endpoint, &tracker).await
        }
    }
}

pub(crate) async fn reject(stream: &mut Stream, reason: String) -> Result<()> {
    write_frame(stream, &AgentMsg::Rejected { reason }.encode()).await
}
