//! The one relay, used by both ends of a data connection: the host relays a
//! client's TCP connection, the agent a guest server's, each to the data
//! connection between them, which carries segments (see `hoist_wire`'s
//! `segment`): the TCP side's bytes in `Bytes` segments, its end of stream as
//! `Fin`, its reset as `Reset`. Both directions are driven by one future, so
//! a peer that writes without reading cannot deadlock the other direction;
//! memory per connection is bounded whatever the peers' speeds.
//!
//! How it ends:
//! - the TCP side's FIN becomes `Fin`, and a `Fin` received becomes a write
//!   shutdown of the TCP side, while the other direction keeps flowing;
//! - the TCP side's reset becomes `Reset`, and a `Reset` received (or the data
//!   connection ending before its `Fin`) resets the TCP side: a guest server
//!   that aborts is an abort for the client too, never a clean, truncated end.
//!
//! Between TCP and Unix sockets the bytes move with splice(2) (`splice`,
//! pipes from the bounded pool in `pipes`); other transports copy through
//! fixed buffers (`copy`).

mod copy;
#[cfg(target_os = "linux")]
mod pipes;
#[cfg(target_os = "linux")]
mod splice;

use crate::transport::Stream;
use bytes::BytesMut;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::net::TcpStream;

/// Bytes moved each way by a finished relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    /// From the TCP side into the data connection.
    pub sent: u64,
    /// From the data connection out to the TCP side.
    pub received: u64,
}

/// What a relay hands back after a clean end: the counts, and the segment
/// bytes read past the end (the start of what follows on a data connection
/// that is used again).
#[derive(Debug)]
pub struct Relayed {
    /// Bytes moved each way.
    pub moved: Moved,
    /// Bytes read from the data connection past this relay's end.
    pub leftover: BytesMut,
}

/// The agent's answer to an `Open`, and which end of the data connection
/// this relay is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opening<'a> {
    /// No answer either way: segments from the start (tests, and relays
    /// that stand in for both ends).
    None,
    /// The agent's end, after a successful dial: `Opened` goes out in front
    /// of the first segment this side sends (the guest server's first bytes,
    /// its end or its reset), in the same write, so the answer costs neither
    /// side a system call or a wake-up of its own.
    Announce,
    /// The host's end. `open` (a new connection's greeting and the `Open`
    /// segment) goes out at once, in the same write as the client's first
    /// bytes when the client has sent some by then (a client that speaks
    /// first has), else alone. The agent's answer comes first, however late
    /// (with the guest server's first segment): `Opened` lets the relay go
    /// on, `Refused` resets the client. The client's bytes are relayed
    /// without waiting for it.
    Awaited {
        /// The bytes that open the connection.
        open: &'a [u8],
    },
}

impl Opening<'_> {
    fn awaited(&self) -> bool {
        matches!(self, Opening::Awaited { .. })
    }
}

/// Why a relay ended without a clean close on both sides.
#[derive(Debug)]
pub enum RelayError {
    /// The agent refused to open the connection; the TCP side was reset.
    Refused(hoist_wire::Refusal, String),
    /// The TCP side was reset (or failed); the peer was told with `Reset`.
    Local(io::Error),
    /// The peer sent `Reset`, or the data connection ended before its `Fin`;
    /// the TCP side was reset.
    Peer(&'static str),
    /// The data connection failed or carried something that is not a segment
    /// stream; the TCP side was reset.
    Transport(io::Error),
}

impl std::fmt::Display for RelayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayError::Refused(why, reason) => write!(f, "refused: {why}: {reason}"),
            RelayError::Local(e) => write!(f, "the TCP side failed: {e}; the peer was reset"),
            RelayError::Peer(why) => write!(f, "{why}; the TCP side was reset"),
            RelayError::Transport(e) => write!(f, "the data connection failed: {e}"),
        }
    }
}

impl std::error::Error for RelayError {}

/// Relays between `tcp` and the data connection `data` until both
/// directions have ended. `early` holds segment bytes already read from
/// `data` (what a handshake read past its last frame). After a clean end
/// `data` may carry another connection; after an error it must be closed.
pub async fn relay(
    tcp: TcpStream,
    data: &mut Stream,
    early: BytesMut,
    opening: Opening<'_>,
    traffic: &Traffic,
) -> Result<Relayed, RelayError> {
    #[cfg(target_os = "linux")]
    let splice = data.fd().is_some();
    #[cfg(not(target_os = "linux"))]
    let splice = false;
    run(tcp, data, early, opening, traffic, splice).await
}

/// Bytes relayed so far, counted as they move (a forward's connections, or
/// all of a process's, share one): what a status view shows of connections
/// that are still open.
#[derive(Debug, Default)]
pub struct Traffic {
    /// From TCP sides into data connections.
    pub sent: AtomicU64,
    /// From data connections out to TCP sides.
    pub received: AtomicU64,
}

async fn run(
    mut tcp: TcpStream,
    data: &mut Stream,
    early: BytesMut,
    opening: Opening<'_>,
    traffic: &Traffic,
    splice: bool,
) -> Result<Relayed, RelayError> {
    let opened = hoist_wire::SegmentHeader::new(hoist_wire::SegmentKind::Opened, 0).encode();
    let mut owed = match opening {
        Opening::None => &[][..],
        Opening::Announce => &opened[..],
        Opening::Awaited { open } => open,
    };
    if owed.len() > MAX_OWED {
        // Longer than the room in front of a segment (no opening is): on
        // its own.
        tokio::io::AsyncWriteExt::write_all(data, owed).await.map_err(transport)?;
        owed = &[];
    }
    let state = State {
        opening,
        traffic,
        owed,
        owing: AtomicBool::new(!owed.is_empty()),
        ..State::default()
    };
    let r = match splice {
        #[cfg(target_os = "linux")]
        true => splice::relay(&tcp, data, early, &state).await,
        _ => copy::relay(&mut tcp, data, early, &state).await,
    };
    if let Err(e) = &r {
        reset_on_close(&tcp);
        // A host that has not sent its `Open` yet owes the agent nothing.
        let opened = !(opening.awaited() && state.owing.load(Ordering::Relaxed));
        if matches!(e, RelayError::Local(_)) && !state.mid_segment.load(Ordering::Relaxed) && opened
        {
            let (reset, from) = state.heading(hoist_wire::SegmentKind::Reset, 0);
            // Best effort, never waiting: the peer reads an end before `Fin`
            // as a reset anyway.
            let _ = data.try_write(&reset[from..]);
        }
    }
    r
}

/// The host's end, before relaying: how many bytes the client has sent
/// already (up to `buf`'s length; 0: none yet, or it only closed its side,
/// which a later read sees again), without waiting. Read straight from the
/// socket: the runtime may not have looked at a connection accepted a moment
/// ago. On Unix a read that drained the socket clears the runtime's readable
/// readiness, so the relay's next read waits for the kernel's word (epoll
/// reports every new arrival). Never on Windows: there the runtime re-arms
/// its readiness only when one of its own reads comes back empty, so a
/// cleared readiness would never be reported again (the next read is one
/// in vain, then waits).
fn first_bytes(tcp: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    use std::io::Read;
    let n = match (&*socket2::SockRef::from(tcp)).read(buf) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
        Err(e) => return Err(e),
    };
    #[cfg(unix)]
    if n > 0 && n < buf.len() {
        let _ = tcp.try_io(tokio::io::Interest::READABLE, || {
            Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
        });
    }
    Ok(n)
}

/// The longest opening sent in front of a segment: a greeting (23 bytes)
/// and an `Open` of an IPv6 endpoint (25 bytes) fit.
const MAX_OWED: usize = 64;

/// Room for a segment header and what is owed in front of it.
const HEADING: usize = MAX_OWED + hoist_wire::SEGMENT_HEADER_LEN;

/// What the two directions share.
struct State<'a> {
    /// Where moved bytes are counted.
    traffic: &'a Traffic,
    /// Which end this is: whether the decoding direction first reads the
    /// agent's answer.
    opening: Opening<'a>,
    /// What goes in front of this side's first segment (see [`Opening`]).
    owed: &'a [u8],
    /// `owed` is still to be sent.
    owing: AtomicBool,
    /// The encoding direction has announced a segment it has not finished
    /// writing: a `Reset` now would land inside its payload.
    mid_segment: AtomicBool,
    /// The encoding direction has sent its `Fin`.
    fin_sent: AtomicBool,
    /// Told when `fin_sent` is set, so a decoding direction that already has
    /// the peer's `Fin` can end.
    fin_sent_now: tokio::sync::Notify,
}

/// The counter of relays that count nowhere else.
static UNCOUNTED: Traffic = Traffic { sent: AtomicU64::new(0), received: AtomicU64::new(0) };

impl Default for State<'_> {
    fn default() -> Self {
        State {
            traffic: &UNCOUNTED,
            opening: Opening::None,
            owed: &[],
            owing: AtomicBool::new(false),
            mid_segment: AtomicBool::new(false),
            fin_sent: AtomicBool::new(false),
            fin_sent_now: tokio::sync::Notify::new(),
        }
    }
}

impl State<'_> {
    /// The header of a segment of `kind` carrying `len` bytes, behind what
    /// this side still owes, if it does (then no more): the bytes to send
    /// are `heading[from..]`.
    fn heading(&self, kind: hoist_wire::SegmentKind, len: usize) -> ([u8; HEADING], usize) {
        use hoist_wire::{SegmentHeader, SEGMENT_HEADER_LEN};
        let mut out = [0u8; HEADING];
        let at = HEADING - SEGMENT_HEADER_LEN;
        out[at..].copy_from_slice(&SegmentHeader::new(kind, len).encode());
        match self.take_owed() {
            Some(owed) => {
                out[at - owed.len()..at].copy_from_slice(owed);
                (out, at - owed.len())
            }
            None => (out, at),
        }
    }

    /// Frames the `n` bytes read into `buf[HEADING..]` as a `Bytes` segment
    /// (behind what this side still owes), with a `Fin` behind them when
    /// `fin` (`buf` then has room for it): the bytes to send, in one write,
    /// are `buf[range]`.
    fn frame(&self, buf: &mut [u8], n: usize, fin: bool) -> std::ops::Range<usize> {
        use hoist_wire::{SegmentHeader, SegmentKind, SEGMENT_HEADER_LEN};
        let (head, from) = self.heading(SegmentKind::Bytes, n);
        buf[..HEADING].copy_from_slice(&head);
        let mut end = HEADING + n;
        if fin {
            buf[end..end + SEGMENT_HEADER_LEN]
                .copy_from_slice(&SegmentHeader::new(SegmentKind::Fin, 0).encode());
            end += SEGMENT_HEADER_LEN;
        }
        from..end
    }

    /// Counts `n` bytes sent from the TCP side.
    fn sent(&self, n: usize) {
        self.traffic.sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// What this side owes, once: the caller sends it.
    fn take_owed(&self) -> Option<&[u8]> {
        let owing = self.owing.load(Ordering::Relaxed) && self.owing.swap(false, Ordering::Relaxed);
        owing.then_some(self.owed)
    }

    fn sent_fin(&self) {
        self.fin_sent.store(true, Ordering::Relaxed);
        self.fin_sent_now.notify_one();
    }

    /// Waits until this side has sent its `Fin`.
    async fn until_fin_sent(&self) {
        while !self.fin_sent.load(Ordering::Relaxed) {
            self.fin_sent_now.notified().await;
        }
    }
}

/// Closes a TCP connection with a reset (a refused data connection: the
/// client sees what connecting to a closed guest port would show).
pub fn reset(s: TcpStream) {
    reset_on_close(&s);
}

/// A zero linger makes close send RST at once; on a non-blocking socket it
/// never blocks.
pub(crate) fn reset_on_close(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(std::time::Duration::ZERO));
}

/// What the decoding direction does when the data connection ends: a
/// connection ends cleanly once each side has sent its `Fin` (the decoding
/// direction returns then, without waiting for the end), so an end of stream
/// is always the peer giving up.
fn at_end(fin_received: bool, state: &State) -> Result<(), RelayError> {
    match (fin_received, state.fin_sent.load(Ordering::Relaxed)) {
        (true, true) => Ok(()),
        (false, _) => Err(RelayError::Peer("the data connection ended before the peer's Fin")),
        (true, false) => Err(RelayError::Peer("the peer closed before this side's Fin")),
    }
}

/// The error a write to the TCP side becomes: a peer that went away
/// resets; anything else too.
fn local(e: io::Error) -> RelayError {
    RelayError::Local(e)
}

fn transport(e: io::Error) -> RelayError {
    RelayError::Transport(e)
}

/// Takes the agent's answer off the front of `inbox` once it is there whole
/// (`Ok(false)`: not yet). `Opened` lets the relay go on; `Refused` ends it
/// with the agent's reason; anything else is a protocol error.
fn take_answer(inbox: &mut BytesMut) -> Result<bool, RelayError> {
    use hoist_wire::{SegmentHeader, SegmentKind, SEGMENT_HEADER_LEN};
    if inbox.len() < SEGMENT_HEADER_LEN {
        return Ok(false);
    }
    let h = SegmentHeader::decode(inbox[..SEGMENT_HEADER_LEN].try_into().expect("5 bytes"))
        .map_err(bad_segment)?;
    // The header's bounds keep an answer small (a Refused is at most 1 KiB).
    if inbox.len() < SEGMENT_HEADER_LEN + h.len {
        return Ok(false);
    }
    let payload = &inbox[SEGMENT_HEADER_LEN..SEGMENT_HEADER_LEN + h.len];
    match h.kind {
        SegmentKind::Opened => {}
        SegmentKind::Refused => {
            let (why, reason) = hoist_wire::parse_refused(payload).map_err(bad_segment)?;
            return Err(RelayError::Refused(why, reason));
        }
        other => return Err(invalid(format!("expected Opened or Refused, got {other:?}"))),
    }
    bytes::Buf::advance(inbox, SEGMENT_HEADER_LEN + h.len);
    Ok(true)
}

const ENDED_BEFORE_ANSWER: RelayError =
    RelayError::Peer("the data connection ended before the agent's answer");

fn invalid(what: String) -> RelayError {
    RelayError::Transport(io::Error::new(io::ErrorKind::InvalidData, what))
}

fn bad_segment(e: hoist_wire::DecodeError) -> RelayError {
    RelayError::Transport(io::Error::new(io::ErrorKind::InvalidData, e))
}

// In process over Unix socket pairs; net/tests/relay_tcp.rs runs a TCP
// data connection on every OS.
#[cfg(all(test, unix))]
mod tests;
