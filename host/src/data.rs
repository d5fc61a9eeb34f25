//! The host's end of a data connection: one per accepted client. Open a
//! connection to the agent, name the endpoint, wait for the agent to have
//! dialled the guest, then relay. A refusal resets the client, so it sees
//! what it would have seen connecting to a closed port in the guest. The
//! agent's end is `agent/src/data.rs`.

use anyhow::{Context, Result};
use hoist_net::{connect, relay, Addr, Stream};
use hoist_wire::{
    AgentMsg, Conn, Endpoint, HostMsg, Message, WireError, HANDSHAKE_TIMEOUT, PROTOCOL_VERSION,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Carries one client connection through the agent.
pub async fn carry(client: TcpStream, endpoint: Endpoint, guest: &Addr) -> Result<()> {
    client.set_nodelay(true).ok();
    let mut client = Stream::Tcp(client);
    let (agent, early) = match open(endpoint, guest).await {
        Ok(x) => x,
        Err(e) => {
            client.set_reset_on_close();
            return Err(e);
        }
    };
    // Bytes the guest sent right behind the agent's answer belong to the client.
    if !early.is_empty() {
        client.write_all(&early).await?;
    }
    relay(client, agent).await.with_context(|| format!("relaying {endpoint}"))?;
    Ok(())
}

async fn open(endpoint: Endpoint, guest: &Addr) -> Result<(Stream, bytes::BytesMut)> {
    let agent = connect(guest).await.context("opening a data connection")?;
    let mut conn = Conn::new(agent);
    conn.send(&HostMsg::Data { version: PROTOCOL_VERSION, endpoint }).await?;
    let reply = conn
        .recv_within::<AgentMsg>(HANDSHAKE_TIMEOUT)
        .await
        .context("waiting for the agent to dial")?;
    match reply {
        AgentMsg::Connected => Ok(conn.into_parts()),
        AgentMsg::Rejected { reason } => Err(WireError::Refused(reason).into()),
        other => Err(WireError::Unexpected { wanted: "Connected", got: other.name() }.into()),
    }
}
