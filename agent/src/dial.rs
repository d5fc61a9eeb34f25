//! Data connections from the host: look the endpoint up in the published
//! table (a port that is not listening is refused), dial the guest's local
//! listener, confirm, and relay until both directions end.

use crate::serve::reject;
use crate::tracker::TrackerHandle;
use anyhow::Result;
use hoist_proto::frame::{write_frame, HANDSHAKE_TIMEOUT};
use hoist_proto::relay::relay;
use hoist_proto::transport::Stream;
use hoist_proto::{AgentMsg, Endpoint};
use tokio::net::TcpStream;
use tracing::{debug, warn};

pub async fn serve_data(mut stream: Stream, endpoint: Endpoint, tracker: &TrackerHandle) -> Result<()> {
    let target = tracker.exposed.borrow().get(&endpoint).map(|x| x.dial);
    let Some(target) = target else {
        reject(&mut stream, format!("no guest listener behind {endpoint}")).await?;
        debug!(%endpoint, "refused data connection: not listening");
        return Ok(());
    };
    let guest = match tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            // The host logs the failed connection; a listener that closed a
            // moment ago is routine, so this side only notes it.
            debug!(%endpoint, %target, "dialling the guest listener: {e}");
            reject(&mut stream, format!("dialling {target}: {e}")).await?;
            return Ok(());
        }
        Err(_) => {
            warn!(%endpoint, %target, "dialling the guest listener timed out");
            reject(&mut stream, format!("dialling {target}: timed out")).await?;
            return Ok(());
        }
    };
    guest.set_nodelay(true).ok();
    write_frame(&mut stream, &AgentMsg::Connected.encode()).await?;
    // A reset or a vanished peer ends a relay routinely; the host side logs
    // the connection's fate, so this side keeps it to debug.
    if let Err(e) = relay(stream, Stream::Tcp(guest)).await {
        debug!(%endpoint, %target, "relay ended: {e}");
    }
    Ok(())
}
