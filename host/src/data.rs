//! One data connection per accepted client: open a connection to the agent,
//! name the endpoint, wait for the agent to have dialled the guest, then
//! relay. A refusal resets the client, so it sees what it would have seen
//! connecting to a closed port in the guest.

use anyhow::{bail, Context, Result};
use hoist_proto::frame::{read_frame_timeout, write_frame};
use hoist_proto::relay::relay;
use hoist_proto::transport::{connect, Addr, Stream};
use hoist_proto::{AgentMsg, Endpoint, HostMsg, PROTOCOL_VERSION};
use tokio::net::TcpStream;

pub async fn carry(client: TcpStream, endpoint: Endpoint, guest: &Addr) -> Result<()> {
    client.set_nodelay(true).ok();
    let client = Stream::Tcp(client);
    let agent = match open(endpoint, guest).await {
        Ok(s) => s,
        Err(e) => {
            client.set_reset_on_close();
            return Err(e);
        }
    };
    relay(client, agent).await.with_context(|| format!("relaying {endpoint}"))?;
    Ok(())
}

async fn open(endpoint: Endpoint, guest: &Addr) -> Result<Stream> {
    let mut agent = connect(guest).await.context("opening a data connection")?;
    write_frame(&mut agent, &HostMsg::Data { version: PROTOCOL_VERSION, endpoint }.encode()).await?;
    let reply = read_frame_timeout(&mut agent).await.context("waiting for the agent to dial")?;
    match AgentMsg::decode(&reply).context("decoding the agent's answer")? {
        AgentMsg::Connected => Ok(agent),
        AgentMsg::Rejected { reason } => bail!("agent refused {endpoint}: {reason}"),
        other => bail!("unexpected answer to a data connection: {other:?}"),
    }
}
