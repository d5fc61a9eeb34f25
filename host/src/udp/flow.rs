//! One UDP flow, host end: a data connection from the session's pool, the
//! `Open` of the forward's endpoint with the flow's first datagrams right
//! behind it (no round trip before the first datagram leaves), then both
//! directions at once: the flow's queued datagrams to the agent, one per
//! `Datagram` segment, and the agent's datagrams back to the client. The
//! agent's answer to `Open` is read in band: `Refused` ends the flow. When
//! the forward's task expires the flow, it sends `Fin` and waits for the
//! agent's (bounded); after that clean end the data connection goes back to
//! the pool. Anything else drops the connection; the datagrams the flow
//! still had waiting are counted dropped. The agent's end is in
//! `hoist-agent`'s `udp`.

use super::flows::{DropReason, FlowId};
use super::{FlowCtl, Forward};
use crate::pool::greeting;
use bytes::Bytes;
use hoist_net::{write_fin, FlowSegment, Permit, SegmentReader, Stream};
use hoist_wire::{open_segment, Refusal};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;
use tracing::{debug, warn};

/// How long the agent may take to answer a flow's `Open`: it only creates a
/// socket connected to the guest server, so this bounds a stuck agent, not
/// a slow server (unlike a TCP connection's, a flow's answer never waits
/// for the server).
const OPEN_TIMEOUT: Duration = Duration::from_secs(7);

/// How long the agent may take to answer a flow's `Fin`.
const FIN_WAIT: Duration = OPEN_TIMEOUT;

/// How a flow ended, when not cleanly.
#[derive(Debug)]
enum FlowError {
    /// The agent refused it: routine when a guest server just closed.
    Refused(Refusal, String),
    /// Anything else: no session, the connection failed or misbehaved.
    Failed(String),
}

/// Carries flow `id` of `client` until it expires or fails, then takes it
/// out of the forward's table.
pub(super) async fn run(
    fwd: Arc<Forward>,
    id: FlowId,
    client: SocketAddr,
    ctl: Arc<FlowCtl>,
    _permit: Permit,
) {
    let e = fwd.endpoint;
    fwd.stats.open.fetch_add(1, Ordering::Relaxed);
    fwd.stats.total.fetch_add(1, Ordering::Relaxed);
    let carried = carry(&fwd, id, client, &ctl).await;
    fwd.stats.open.fetch_sub(1, Ordering::Relaxed);
    match carried {
        Ok(()) => debug!(port = e.port, %client, "UDP flow expired"),
        Err(FlowError::Refused(Refusal::NotListening, reason)) => {
            debug!(port = e.port, %client, "UDP flow refused: {reason}")
        }
        Err(FlowError::Refused(why, reason)) => {
            warn!(event = "connection_error", proto = "udp", port = e.port, family = %e.family(), client = %client, "the agent refused: {why}: {reason}")
        }
        Err(FlowError::Failed(why)) => {
            debug!(port = e.port, %client, "UDP flow ended: {why}")
        }
    }
    let mut st = fwd.lock();
    st.table.remove(id);
    st.flows.remove(&id);
}

async fn carry(
    fwd: &Forward,
    id: FlowId,
    client: SocketAddr,
    ctl: &FlowCtl,
) -> Result<(), FlowError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| FlowError::Failed(format!("{what}: {e}"));
    let pool = &fwd.config.pool;
    let mut data = pool.take().await.map_err(|e| failed("no data connection", &e))?;
    // The greeting (a new connection), the Open and what waits already, in
    // one write.
    let mut opening = data.greeting.map(greeting).unwrap_or_default();
    opening.extend_from_slice(&open_segment(&fwd.endpoint));
    let mut waiting = Vec::new();
    fwd.lock().table.take_queued(id, &mut waiting);
    for d in &waiting {
        opening.extend_from_slice(d);
        let payload = d.len().saturating_sub(hoist_wire::SEGMENT_HEADER_LEN);
        fwd.stats.traffic.sent.fetch_add(payload as u64, Ordering::Relaxed);
    }
    data.stream.write_all(&opening).await.map_err(|e| failed("opening the flow", &e))?;
    let leftover = {
        let (rd, wr) = tokio::io::split(&mut data.stream);
        let up = to_agent(wr, fwd, id, ctl);
        let down = to_client(rd, fwd, id, client);
        tokio::pin!(up, down);
        tokio::select! {
            r = &mut up => {
                r.map_err(|e| failed("sending to the agent", &e))?;
                within(FIN_WAIT, &mut down).await?
            }
            r = &mut down => {
                // The agent ended first (it may not, but a clean end is one).
                let leftover = r?;
                ctl.ending.store(true, Ordering::Release);
                ctl.wake.notify_one();
                within(FIN_WAIT, &mut up).await?;
                leftover
            }
        }
    };
    // Nothing may follow a clean end unasked: such a connection is not fit
    // for another flow.
    if leftover.is_empty() {
        pool.put_back(data);
    }
    Ok(())
}

/// Waits for `f` at most `limit`.
async fn within<T, E>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, FlowError>
where
    E: Into<FlowError>,
{
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => {
            Err(FlowError::Failed(format!("the agent did not end the flow within {limit:?}")))
        }
    }
}

impl From<io::Error> for FlowError {
    fn from(e: io::Error) -> FlowError {
        FlowError::Failed(e.to_string())
    }
}

/// The flow's queued datagrams to the agent as they come; at expiry, `Fin`.
async fn to_agent(
    mut wr: WriteHalf<&mut Stream>,
    fwd: &Forward,
    id: FlowId,
    ctl: &FlowCtl,
) -> io::Result<()> {
    let mut batch: Vec<Bytes> = Vec::new();
    let mut out = Vec::new();
    loop {
        fwd.lock().table.take_queued(id, &mut batch);
        if batch.is_empty() {
            if ctl.ending.load(Ordering::Acquire) {
                return write_fin(&mut wr).await;
            }
            // A wake-up stored while this side was busy is not lost.
            ctl.wake.notified().await;
            continue;
        }
        // What waits goes out in one write: under load a batch holds many
        // datagrams, and a system call each was the cost that bounded the
        // flow's rate.
        out.clear();
        for segment in batch.drain(..) {
            out.extend_from_slice(&segment);
            let payload = segment.len().saturating_sub(hoist_wire::SEGMENT_HEADER_LEN);
            fwd.stats.traffic.sent.fetch_add(payload as u64, Ordering::Relaxed);
        }
        wr.write_all(&out).await?;
    }
}

/// The agent's answer, then its datagrams to the client, until its `Fin`;
/// returns what was read past it.
async fn to_client(
    mut rd: ReadHalf<&mut Stream>,
    fwd: &Forward,
    id: FlowId,
    client: SocketAddr,
) -> Result<bytes::BytesMut, FlowError> {
    let mut segments = SegmentReader::default();
    let answer =
        tokio::time::timeout(OPEN_TIMEOUT, segments.next(&mut rd)).await.map_err(|_| {
            FlowError::Failed(format!("no answer from the agent within {OPEN_TIMEOUT:?}"))
        })?;
    match answer? {
        Some(FlowSegment::Opened) => {}
        Some(FlowSegment::Refused(why, reason)) => return Err(FlowError::Refused(why, reason)),
        other => {
            return Err(FlowError::Failed(format!("expected Opened or Refused, got {other:?}")))
        }
    }
    loop {
        match segments.next(&mut rd).await? {
            Some(FlowSegment::Datagram(d)) => {
                fwd.lock().table.touch(id, Instant::now());
                fwd.stats.traffic.received.fetch_add(d.len() as u64, Ordering::Relaxed);
                if let Err(e) = fwd.socket.send_to(&d, client).await {
                    // The client's socket is gone, or its buffer full: lost,
                    // as on any network.
                    debug!(%client, "a datagram to the client was dropped: {e}");
                    fwd.lock().table.count_dropped(DropReason::FlowFailed, 1);
                }
            }
            Some(FlowSegment::Fin) => return Ok(segments.into_leftover()),
            Some(FlowSegment::Reset) => {
                return Err(FlowError::Failed("the agent reset the flow".into()))
            }
            Some(other) => {
                return Err(FlowError::Failed(format!(
                    "a UDP flow from the agent carried {other:?}"
                )))
            }
            None => return Err(FlowError::Failed("the agent closed the data connection".into())),
        }
    }
}
