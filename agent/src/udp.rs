//! A UDP flow, agent end: one host client's datagrams to a guest UDP server
//! and the server's replies back, over a data connection that presented an
//! `Open` of a UDP endpoint. The flow's socket is connected to the server's
//! address (dialled as for TCP, in the agent's network namespace), so the
//! server's replies, and only they, come back to it; it is bound by the
//! kernel (autobind at connect), so it is a client by the server rule and
//! never becomes a forward itself. Memory is one datagram buffer per
//! direction. The agent keeps no timer: the host ends an idle flow with
//! `Fin` (answered `Fin`, the data connection then waits for its next
//! `Open`), or gives it up by closing the connection. The host's end is in
//! `hoist-host`'s `udp`.

use crate::serve::Door;
use anyhow::Result;
use bytes::BytesMut;
use hoist_net::{write_fin, DatagramBuf, FlowSegment, SegmentReader, Stream, Traffic};
use hoist_wire::{refused_segment, Endpoint, Refusal, SegmentHeader, SegmentKind, WireError};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::UdpSocket;
use tracing::debug;

/// Carries the flow `Open` named; `inbox` holds what the host sent behind
/// its `Open`. Returns what it read past the flow's end after a clean end
/// (the connection can carry another), `None` when the connection must
/// close.
pub async fn flow(
    data: &mut Stream,
    inbox: BytesMut,
    endpoint: Endpoint,
    door: &Door,
) -> Result<Option<BytesMut>> {
    let target = door.tracker.exposed.borrow().get(&endpoint).map(|x| x.dial);
    let Some(target) = target else {
        let reason = format!("no guest UDP server behind {endpoint}");
        send(data, &refused_segment(Refusal::NotListening, &reason)).await?;
        debug!(%endpoint, "refused a UDP flow: no server");
        return Ok(None);
    };
    let socket = match connect(target) {
        Ok(s) => s,
        Err(e) => {
            let reason = format!("a UDP socket to {target}: {e}");
            debug!(%endpoint, "{reason}");
            send(data, &refused_segment(Refusal::DialFailed, &reason)).await?;
            return Ok(None);
        }
    };
    send(data, &SegmentHeader::new(SegmentKind::Opened, 0).encode()).await?;
    let (rd, wr) = tokio::io::split(&mut *data);
    let ended = tokio::sync::Notify::new();
    let traffic = &door.traffic;
    let relayed = tokio::try_join!(
        to_server(rd, inbox, &socket, &ended, traffic),
        to_host(wr, &socket, &ended, traffic)
    );
    match relayed {
        Ok((leftover, ())) => Ok(Some(leftover)),
        // A host that gave the flow up, or went away, is routine.
        Err(e) => {
            debug!(%endpoint, "UDP flow ended: {e}");
            Ok(None)
        }
    }
}

/// A socket connected to the guest server at `target`: autobound, so a
/// client by the rule, and it hears from nobody else.
fn connect(target: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(
        Domain::for_address(target),
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    s.connect(&target.into())?;
    UdpSocket::from_std(s.into())
}

/// Host -> guest server, until the host's `Fin`; returns what was read past
/// it.
async fn to_server(
    mut rd: ReadHalf<&mut Stream>,
    inbox: BytesMut,
    socket: &UdpSocket,
    ended: &tokio::sync::Notify,
    traffic: &Traffic,
) -> io::Result<BytesMut> {
    let mut segments = SegmentReader::new(inbox);
    loop {
        match segments.next(&mut rd).await? {
            Some(FlowSegment::Datagram(d)) => match socket.send(&d).await {
                Ok(n) => {
                    traffic.received.fetch_add(n as u64, Ordering::Relaxed);
                }
                // A datagram that cannot be delivered (the server's port
                // closed a moment ago: an ICMP error, reported on the next
                // send) is dropped, as the network would.
                Err(e) => debug!("a datagram to the guest server was dropped: {e}"),
            },
            Some(FlowSegment::Fin) => {
                ended.notify_one();
                return Ok(segments.into_leftover());
            }
            Some(FlowSegment::Reset) => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "the host reset the flow",
                ))
            }
            Some(other) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a UDP flow from the host carried {other:?}"),
                ))
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the host closed the data connection",
                ))
            }
        }
    }
}

/// Bytes of segments one write to the host carries at most (a batch stops
/// growing past it).
const BATCH_BYTES: usize = 256 << 10;

/// Guest server -> host, until the host's `Fin` came (then this side's).
async fn to_host(
    mut wr: WriteHalf<&mut Stream>,
    socket: &UdpSocket,
    ended: &tokio::sync::Notify,
    traffic: &Traffic,
) -> io::Result<()> {
    let mut buf = DatagramBuf::default();
    let mut out = Vec::new();
    loop {
        let n = tokio::select! {
            r = socket.recv(buf.payload_mut()) => match r {
                Ok(n) => n,
                // The ICMP error of a datagram to a closed port: nothing to
                // carry back.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            },
            _ = ended.notified() => return write_fin(&mut wr).await,
        };
        // The datagrams already waiting join this one in a single write
        // (bounded): one system call per datagram bounded the flow's rate.
        out.clear();
        out.extend_from_slice(buf.segment(n));
        let mut bytes = n;
        while out.len() < BATCH_BYTES {
            match socket.try_recv(buf.payload_mut()) {
                Ok(n) => {
                    out.extend_from_slice(buf.segment(n));
                    bytes += n;
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(_) => break,
            }
        }
        wr.write_all(&out).await?;
        traffic.sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

async fn send(data: &mut Stream, bytes: &[u8]) -> Result<()> {
    data.write_all(bytes).await.map_err(|e| WireError::Io(e).into())
}
