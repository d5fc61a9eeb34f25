//! The control stream to the host: the host's hello, the welcome (and, with
//! a shared token, both proofs), a full snapshot taken fresh for this
//! connection, then every change to the host endpoints as it happens, and a
//! pong for every ping. Each connection remembers what it sent and sends the
//! difference to the table's latest state, so a slow host sees coalesced
//! changes, never stale ones, and memory does not grow with its lag. A host
//! that stops pinging is dropped after three of its intervals; a host that
//! does not ping is never timed: the agent keeps no timer of its own.

use crate::serve::{refuse, Door, Slot};
use crate::table::{changes, Exposed};
use anyhow::{Context, Result};
use hoist_net::Stream;
use hoist_wire::{
    random, AgentMsg, Challenge, Conn, Forward, HostMsg, Message, WireError, HANDSHAKE_TIMEOUT,
    PROTOCOL_VERSION,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::info;

pub async fn serve(mut conn: Conn<Stream>, door: &Door, slot: Slot, peer: String) -> Result<()> {
    let (host_nonce, interval) = match conn.recv_within::<HostMsg>(HANDSHAKE_TIMEOUT).await? {
        HostMsg::Hello { nonce, ping_interval_ms } => (nonce, ping_interval_ms),
        other => return Err(WireError::Unexpected { wanted: "Hello", got: other.name() }.into()),
    };
    let ticket = random::<16>();
    let challenge = door.settings.token.as_ref().map(|t| {
        let nonce = random::<16>();
        Challenge { nonce, proof: t.agent_proof(&host_nonce, &nonce) }
    });
    let welcome = AgentMsg::Welcome {
        version: PROTOCOL_VERSION,
        agent: door.settings.info.clone(),
        ticket,
        challenge: challenge.clone(),
    };
    conn.send(&welcome).await?;
    if let (Some(token), Some(c)) = (&door.settings.token, &challenge) {
        let proof = match conn.recv_within::<HostMsg>(HANDSHAKE_TIMEOUT).await? {
            HostMsg::Auth { proof } => proof,
            other => return Err(WireError::Unexpected { wanted: "Auth", got: other.name() }.into()),
        };
        if !token.verify_host(&c.nonce, &host_nonce, &proof) {
            let _ = refuse(&mut conn, "the host's proof of the shared token is wrong".into()).await;
            anyhow::bail!("a host failed the token check: its token differs from this agent's");
        }
    }
    slot.done();
    let _session = door.sessions.register(ticket, peer);
    // A new host may have missed anything: the snapshot, not the last event,
    // is what it gets.
    door.tracker.resync().await?;
    let mut exposed = door.tracker.exposed.clone();
    let mut sent: Arc<Exposed> = exposed.borrow_and_update().clone();
    let all: Vec<Forward> = sent.values().map(|x| x.forward.clone()).collect();
    conn.send_all(&AgentMsg::snapshot_parts(&all)).await?;
    info!(
        event = "host_connected",
        forwards = all.len(),
        ping_interval_ms = interval,
        "host connected; snapshot sent"
    );
    // Three missed pings and the host is gone (a frozen VM host, a lost
    // network); with no pings announced, no deadline at all.
    let silence = (interval > 0).then(|| Duration::from_millis(interval as u64) * 3);
    let deadline = tokio::time::sleep(silence.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = door.shutdown.cancelled() => return Ok(()),
            r = exposed.changed() => {
                r.context("the tracker has stopped")?;
                let now = exposed.borrow_and_update().clone();
                conn.send_all(&changes(&sent, &now)).await?;
                sent = now;
            }
            r = conn.recv::<HostMsg>() => match r? {
                Some(HostMsg::Ping { seq }) => {
                    conn.send(&AgentMsg::Pong { seq }).await?;
                    if let Some(s) = silence {
                        deadline.as_mut().reset(Instant::now() + s);
                    }
                }
                Some(m) => return Err(WireError::Unexpected { wanted: "Ping", got: m.name() }.into()),
                None => {
                    info!(event = "host_disconnected", "host closed the control stream");
                    return Ok(());
                }
            },
            _ = &mut deadline, if silence.is_some() => {
                info!(event = "host_disconnected", silent_ms = silence.unwrap_or_default().as_millis() as u64, "the host stopped pinging; dropping its control stream");
                return Ok(());
            }
        }
    }
}
