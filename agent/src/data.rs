//! The agent's end of a data connection (the guest dial): look the endpoint
//! up in the published table (a port that is not listening is refused), dial
//! the guest's local listener, confirm, and relay until both directions end.
//! The host's end is `host/src/data.rs`.

use crate::serve::reject;
use crate::tracker::TrackerHandle;
use anyhow::Result;
use hoist_net::{relay, Stream};
use hoist_wire::{AgentMsg, Conn, Endpoint, HANDSHAKE_TIMEOUT};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, warn};

pub async fn serve(
    mut conn: Conn<Stream>,
    endpoint: Endpoint,
    tracker: &TrackerHandle,
) -> Result<()> {
    let target = tracker.exposed.borrow().get(&endpoint).map(|x| x.dial);
    let Some(target) = target else {
        reject(&mut conn, format!("no guest listener behind {endpoint}")).await?;
        debug!(%endpoint, "refused data connection: not listening");
        return Ok(());
    };
    let mut guest = match tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(target)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            // The host logs the failed connection; a listener that closed a
            // moment ago is routine, so this side only notes it.
            debug!(%endpoint, %target, "dialling the guest listener: {e}");
            reject(&mut conn, format!("dialling {target}: {e}")).await?;
            return Ok(());
        }
        Err(_) => {
            warn!(%endpoint, %target, "dialling the guest listener timed out");
            reject(&mut conn, format!("dialling {target}: timed out")).await?;
            return Ok(());
        }
    };
    guest.set_nodelay(true).ok();
    conn.send(&AgentMsg::Connected).await?;
    // Bytes the host sent after its first frame belong to the guest.
    let (host, early) = conn.into_parts();
    if !early.is_empty() {
        guest.write_all(&early).await?;
    }
    // A reset or a vanished peer ends a relay routinely; the host side logs
    // the connection's fate, so this side keeps it to debug.
    if let Err(e) = relay(host, Stream::Tcp(guest)).await {
        debug!(%endpoint, %target, "relay ended: {e}");
    }
    Ok(())
}
