//! The agent's end of a data connection (the guest dial). A data connection
//! presents the ticket of a live session, then carries client connections
//! one after another: it waits, idle, for the host's `Open` (a pooled
//! connection may wait long; nothing here wakes while it does), looks the
//! endpoint up in the published table (a port that is not listening is
//! refused), dials the guest's local listener, and relays, its answer
//! `Opened` in front of the guest server's first segment.
//! An `Open` of a UDP endpoint is a UDP flow instead (`udp`).
//! A clean end on both sides returns it to waiting; anything else closes it.
//! A host that hangs up while the dial is in flight cancels it; the end of
//! the session ends the wait. The host's end is `host/src/data.rs`.

use crate::serve::{Door, Slot};
use anyhow::Result;
use bytes::BytesMut;
use hoist_net::{relay, Opening, Stream};
use hoist_wire::{
    parse_open, refused_segment, Conn, Endpoint, Proto, Refusal, SegmentHeader, SegmentKind,
    Ticket, WireError, SEGMENT_HEADER_LEN,
};
use std::time::Duration;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

/// How long a dial to a guest listener may take: a dial that fails or hangs
/// is answered `Refused` within it (the host has no deadline of its own: an
/// `Opened` waits for the guest server's first segment).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves a data connection that presented `ticket`.
pub async fn serve(conn: Conn<Stream>, ticket: Ticket, door: &Door, slot: Slot) -> Result<()> {
    let (mut data, mut inbox) = conn.into_parts();
    let Some(ended) = door.sessions.find(&ticket) else {
        // Not a protocol slip: a stale pooled connection, or a guess.
        let refusal = refused_segment(Refusal::NotListening, "no session with this ticket");
        send(&mut data, &refusal).await?;
        debug!("refused a data connection with an unknown ticket");
        return Ok(());
    };
    let _permit = match door.limit.try_admit() {
        Ok(permit) => {
            if let Some(n) = permit.ended_burst {
                info!(
                    event = "connection_limit_cleared",
                    refused = n,
                    "below the connection limit again; {n} data connections were refused meanwhile"
                );
            }
            permit
        }
        Err(over) => {
            if over.first_in_burst {
                warn!(
                    event = "connection_limit",
                    max = over.max,
                    "at the limit of {} data connections: refusing new ones until some end",
                    over.max
                );
            }
            let reason = format!("the agent carries {} connections already", over.max);
            send(&mut data, &refused_segment(Refusal::OverLimit, &reason)).await?;
            return Ok(());
        }
    };
    // Admitted: it no longer counts against the handshake bound (a refusal
    // above does, while it is written).
    slot.done();
    loop {
        let endpoint = tokio::select! {
            r = next_open(&mut data, &mut inbox) => r?,
            _ = ended.cancelled() => return Ok(()),
        };
        let Some(endpoint) = endpoint else { return Ok(()) };
        if endpoint.proto == Proto::Udp {
            match crate::udp::flow(&mut data, std::mem::take(&mut inbox), endpoint, door).await? {
                Some(leftover) if !ended.is_cancelled() => {
                    inbox = leftover;
                    continue;
                }
                _ => return Ok(()),
            }
        }
        let Some(guest) = dial(&mut data, endpoint, door).await? else { return Ok(()) };
        // `Opened` rides with the guest server's first segment (see
        // `Opening::Announce`). Segments the host sent behind its Open
        // belong to the relay. A reset or a vanished peer ends a relay
        // routinely; the host side logs the connection's fate, so this side
        // keeps it to debug.
        match relay(guest, &mut data, std::mem::take(&mut inbox), Opening::Announce, &door.traffic)
            .await
        {
            Ok(done) => inbox = done.leftover,
            Err(e) => {
                debug!(%endpoint, "relay ended: {e}");
                return Ok(());
            }
        }
        if ended.is_cancelled() {
            return Ok(());
        }
    }
}

/// Waits for the host's next `Open`, with no time limit (an idle pooled
/// connection); `None` when the host closed the connection between uses.
async fn next_open(data: &mut Stream, inbox: &mut BytesMut) -> Result<Option<Endpoint>> {
    while inbox.len() < SEGMENT_HEADER_LEN {
        if data.read_some(inbox).await? == 0 {
            if inbox.is_empty() {
                return Ok(None);
            }
            return Err(WireError::Closed.into());
        }
    }
    let h = SegmentHeader::decode(inbox[..SEGMENT_HEADER_LEN].try_into().expect("5 bytes"))
        .map_err(WireError::Decode)?;
    if h.kind != SegmentKind::Open {
        return Err(
            WireError::Unexpected { wanted: "an Open segment", got: "another segment" }.into()
        );
    }
    // The header's bounds keep an Open at its 4 bytes.
    while inbox.len() < SEGMENT_HEADER_LEN + h.len {
        if data.read_some(inbox).await? == 0 {
            return Err(WireError::Closed.into());
        }
    }
    let endpoint = parse_open(&inbox[SEGMENT_HEADER_LEN..SEGMENT_HEADER_LEN + h.len])
        .map_err(WireError::Decode)?;
    bytes::Buf::advance(inbox, SEGMENT_HEADER_LEN + h.len);
    Ok(Some(endpoint))
}

/// Dials the guest listener behind `endpoint`; `None` after telling the host
/// why not (or when the host hung up meanwhile).
async fn dial(data: &mut Stream, endpoint: Endpoint, door: &Door) -> Result<Option<TcpStream>> {
    let target = door.tracker.exposed.borrow().get(&endpoint).map(|x| x.dial);
    let Some(target) = target else {
        let reason = format!("no guest listener behind {endpoint}");
        send(data, &refused_segment(Refusal::NotListening, &reason)).await?;
        debug!(%endpoint, "refused data connection: not listening");
        return Ok(None);
    };
    let dial = tokio::time::timeout(DIAL_TIMEOUT, connect(target));
    let dialled = tokio::select! {
        // A dial on loopback is usually done at once: the watch for a
        // hang-up is only set while it is not.
        biased;
        r = dial => r,
        _ = hung_up(data) => {
            debug!(%endpoint, %target, "the host hung up while dialling; dial cancelled");
            return Ok(None);
        }
    };
    let (why, reason) = match dialled {
        Ok(Ok(guest)) => return Ok(Some(guest)),
        // The host logs the failed connection; a listener that closed a
        // moment ago is routine, so this side only notes it.
        Ok(Err(e)) => (Refusal::DialFailed, format!("dialling {target}: {e}")),
        Err(_) => {
            (Refusal::DialTimedOut, format!("dialling {target}: no answer within {DIAL_TIMEOUT:?}"))
        }
    };
    debug!(%endpoint, "{reason}");
    send(data, &refused_segment(why, &reason)).await?;
    Ok(None)
}

/// Connects to a guest listener (Nagle off): most often up at once.
async fn connect(target: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let (socket, up) = crate::sys::dial_local(target)?;
    let guest = TcpStream::from_std(socket)?;
    if !up {
        guest.writable().await?;
        if let Some(e) = guest.take_error()? {
            return Err(e);
        }
    }
    Ok(guest)
}

async fn send(data: &mut Stream, bytes: &[u8]) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    data.write_all(bytes).await.map_err(|e| WireError::Io(e).into())
}

/// Resolves when the host has closed the data connection; never, while it is
/// open (pending bytes are not an end) or where the transport cannot tell.
async fn hung_up(s: &Stream) {
    if s.closed_by_peer().await {
        return;
    }
    std::future::pending::<()>().await
}
