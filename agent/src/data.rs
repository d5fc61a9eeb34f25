//! The agent's end of a data connection (the guest dial): check the
//! session's ticket, read the endpoint the host opens, look it up in the
//! published table (a port that is not listening is refused), dial the
//! guest's local listener, answer `Opened`, and relay. A host that hangs up
//! while the dial is in flight cancels it. The host's end is
//! `host/src/data.rs`.

use crate::serve::{Door, Slot};
use anyhow::Result;
use hoist_net::{relay, Stream};
use hoist_wire::{
    parse_open, refused_segment, Conn, Refusal, SegmentHeader, SegmentKind, Ticket, WireError,
    HANDSHAKE_TIMEOUT,
};
use std::time::Duration;
use tokio::net::TcpStream;
use tracing::debug;

/// How long a dial to a guest listener may take. The host waits longer for
/// the answer (see `host/src/data.rs`), so a slow dial that succeeds never
/// meets a connection the host already dropped.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(mut conn: Conn<Stream>, ticket: Ticket, door: &Door, slot: Slot) -> Result<()> {
    if !door.sessions.contains(&ticket) {
        // Not a protocol slip: a stale pooled connection, or a guess.
        conn.send_raw(&refused_segment(Refusal::NotListening, "no session with this ticket"))
            .await?;
        debug!("refused a data connection with an unknown ticket");
        return Ok(());
    }
    // The real host: it no longer counts against the handshake bound.
    slot.done();
    let (h, payload) = conn.recv_segment_within(HANDSHAKE_TIMEOUT).await?;
    if h.kind != SegmentKind::Open {
        return Err(
            WireError::Unexpected { wanted: "an Open segment", got: "another segment" }.into()
        );
    }
    let endpoint = parse_open(&payload).map_err(WireError::Decode)?;
    let target = door.tracker.exposed.borrow().get(&endpoint).map(|x| x.dial);
    let Some(target) = target else {
        conn.send_raw(&refused_segment(
            Refusal::NotListening,
            &format!("no guest listener behind {endpoint}"),
        ))
        .await?;
        debug!(%endpoint, "refused data connection: not listening");
        return Ok(());
    };
    let dial = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(target));
    let guest = tokio::select! {
        r = dial => r,
        _ = hung_up(conn.get_ref()) => {
            debug!(%endpoint, %target, "the host hung up while dialling; dial cancelled");
            return Ok(());
        }
    };
    let guest = match guest {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            // The host logs the failed connection; a listener that closed a
            // moment ago is routine, so this side only notes it.
            debug!(%endpoint, %target, "dialling the guest listener: {e}");
            conn.send_raw(&refused_segment(
                Refusal::DialFailed,
                &format!("dialling {target}: {e}"),
            ))
            .await?;
            return Ok(());
        }
        Err(_) => {
            debug!(%endpoint, %target, "dialling the guest listener timed out");
            conn.send_raw(&refused_segment(
                Refusal::DialTimedOut,
                &format!("dialling {target}: no answer within {DIAL_TIMEOUT:?}"),
            ))
            .await?;
            return Ok(());
        }
    };
    guest.set_nodelay(true).ok();
    conn.send_raw(&SegmentHeader::new(SegmentKind::Opened, 0).encode()).await?;
    // Segments the host sent behind its Open belong to the relay.
    let (host, early) = conn.into_parts();
    // A reset or a vanished peer ends a relay routinely; the host side logs
    // the connection's fate, so this side keeps it to debug.
    if let Err(e) = relay(guest, host, early).await {
        debug!(%endpoint, %target, "relay ended: {e}");
    }
    Ok(())
}

/// Resolves when the host has closed the data connection; never, while it is
/// open (pending bytes are not an end) or where the transport cannot tell.
async fn hung_up(s: &Stream) {
    if s.closed_by_peer().await {
        return;
    }
    std::future::pending::<()>().await
}
