//! The messages, one enum per direction, and their byte encoding. Every
//! connection starts with a [`HostMsg`] whose first three bytes, a tag and
//! the protocol version, never change between versions: a peer of another
//! version reads them and refuses with [`AgentMsg::Refused`], whose layout is
//! frozen too, so an old peer gets a clear one-line error, never a hang or a
//! decode error. Decoding is strict: unknown tags, truncated fields and
//! trailing bytes are errors, never guesses.
//!
//! Byte layout of a frame body (integers big-endian):
//!
//! | message              | bytes                                                           |
//! |----------------------|-----------------------------------------------------------------|
//! | `HostMsg::Control`   | `01` version:u16 (frozen)                                       |
//! | `HostMsg::Data`      | `02` version:u16 (frozen) ticket:16                             |
//! | `HostMsg::Hello`     | `03` nonce:16 ping_interval_ms:u32                              |
//! | `HostMsg::Auth`      | `04` proof:32                                                   |
//! | `HostMsg::Ping`      | `05` seq:u32                                                    |
//! | `AgentMsg::Welcome`  | `01` version:u16 agent-version:str hooks:str pid:u32 ticket:16 challenge |
//! | `AgentMsg::Snapshot` | `02` last:u8(0/1) count:u32 forward*count                       |
//! | `AgentMsg::Added`    | `03` forward                                                    |
//! | `AgentMsg::Removed`  | `04` endpoint                                                   |
//! | `AgentMsg::Pong`     | `05` seq:u32                                                    |
//! | `AgentMsg::Refused`  | `06` reason:str (frozen)                                        |
//! | challenge            | `00`, or `01` nonce:16 proof:32                                 |
//! | endpoint             | proto:u8 (6 TCP, 17 UDP) addr port:u16 (not 0)                  |
//! | forward              | endpoint guest-addr:addr pid:u32 comm:str (<= 15 bytes)         |
//! | addr                 | `04` 4 bytes, or `06` 16 bytes                                  |
//! | str                  | len:u16 UTF-8 bytes                                             |

use crate::error::DecodeError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Version spoken by this build; both sides refuse any other. Version 3:
/// a TCP connection's `Opened` comes with the guest server's first segment
/// (a version 2 host would give up on a server silent for 7 s).
pub const PROTOCOL_VERSION: u16 = 3;

/// Longest command name carried (the kernel's TASK_COMM_LEN less the NUL).
pub const MAX_COMM: usize = 15;

/// Most forwards sent in one [`AgentMsg::Snapshot`] frame; larger tables span
/// several frames so every frame stays far below the frame limit.
pub const SNAPSHOT_CHUNK: usize = 4096;

/// Most forwards a whole snapshot can hold: every port of both families and
/// both protocols. A peer that sends more is not an agent.
pub const MAX_FORWARDS: usize = 4 * 65535;

/// Largest frame the host ever sends: the agent reads host frames with this
/// limit, so a peer cannot make it buffer more than a few bytes.
pub const MAX_HOST_FRAME: usize = 64;

/// A message that travels as one frame body.
pub trait Message: Sized {
    /// The variant's name, for errors and logs.
    fn name(&self) -> &'static str;
    /// Appends the body's bytes.
    fn encode_body(&self, out: &mut Vec<u8>);
    /// Decodes a whole body; every byte must be used.
    fn decode_body(body: &[u8]) -> Result<Self, DecodeError>;

    /// Appends the message as a complete frame (length prefix and body).
    fn encode_frame(&self, out: &mut Vec<u8>) {
        let start = crate::frame::begin(out);
        self.encode_body(out);
        crate::frame::finish(out, start);
    }
}

/// The transport protocol of a forwarded port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP: a data connection per client connection.
    Tcp,
    /// UDP: a data connection per client flow.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// Address family of a host-side endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// Served on the host's IPv4 loopback (or the configured IPv4 bind address).
    V4,
    /// Served on the host's IPv6 loopback (or the configured IPv6 bind address).
    V6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        })
    }
}

/// What the host serves, named by the guest: a port of one protocol at a
/// guest-side address. The address is the one that tells guest listeners on
/// one port apart: a loopback or wildcard listener is at its family's
/// loopback (127.0.0.1 or ::1), one bound to another address (127.0.0.2, or
/// a non-loopback one) at that address, so two guest services on one port
/// of different loopback addresses are two endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// TCP or UDP.
    pub proto: Proto,
    /// The guest-side address.
    pub addr: IpAddr,
    /// The port, never 0.
    pub port: u16,
}

impl Endpoint {
    /// A TCP endpoint at the family's loopback address.
    pub fn tcp(family: Family, port: u16) -> Endpoint {
        Endpoint { proto: Proto::Tcp, addr: family.loopback(), port }
    }

    /// A UDP endpoint at the family's loopback address.
    pub fn udp(family: Family, port: u16) -> Endpoint {
        Endpoint { proto: Proto::Udp, addr: family.loopback(), port }
    }

    /// The address family.
    pub fn family(&self) -> Family {
        Family::of(self.addr)
    }

    /// Whether it stands for the family's loopback and wildcard listeners
    /// (the address most forwards have).
    pub fn is_primary(&self) -> bool {
        self.addr == self.family().loopback()
    }
}

impl Family {
    /// The family of `addr`.
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The family's loopback address.
    pub fn loopback(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Family::V6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.proto, std::net::SocketAddr::new(self.addr, self.port))
    }
}

/// A guest listener the host should mirror, with who opened it (for logs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    /// Where the host serves it.
    pub endpoint: Endpoint,
    /// The guest address the listener is bound to.
    pub guest_addr: IpAddr,
    /// Process that opened it (0 when unknown).
    pub pid: u32,
    /// Its command name (empty when unknown).
    pub comm: String,
}

/// A data connection's credential: the agent hands one out per control
/// session and accepts data connections that present it while that session
/// lives.
pub type Ticket = [u8; 16];

/// Who the host reached: sent in the welcome, logged by the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentInfo {
    /// The agent's release (its crate version).
    pub version: String,
    /// The kernel hook set in use ("trampoline", "tracepoint").
    pub hooks: String,
    /// The agent's process id in its own PID namespace.
    pub pid: u32,
}

/// The agent's half of the token handshake: its nonce, and its proof that it
/// knows the shared token (see `auth`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The agent's random nonce, which the host's proof must cover.
    pub nonce: [u8; 16],
    /// The agent's proof over both nonces.
    pub proof: [u8; 32],
}

/// Host -> agent. The first frame of a connection is `Control` or `Data`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMsg {
    /// Opens the control stream; [`HostMsg::Hello`] follows at once. The
    /// agent answers [`AgentMsg::Welcome`], a full [`AgentMsg::Snapshot`],
    /// then every change.
    Control {
        /// The protocol version the host speaks.
        version: u16,
    },
    /// Opens a data connection for the session whose ticket it presents;
    /// data segments (see `segment`) follow.
    Data {
        /// The protocol version the host speaks.
        version: u16,
        /// The ticket from the session's welcome.
        ticket: Ticket,
    },
    /// The host's parameters for a control stream.
    Hello {
        /// The host's random nonce, which the agent's proof must cover.
        nonce: [u8; 16],
        /// How often the host pings; 0 when it does not. The agent may drop
        /// a stream that stays silent for three intervals.
        ping_interval_ms: u32,
    },
    /// The host's proof that it knows the shared token, answering a
    /// [`Challenge`].
    Auth {
        /// The host's proof over both nonces.
        proof: [u8; 32],
    },
    /// Liveness: the agent answers [`AgentMsg::Pong`] with the same number.
    Ping {
        /// A sequence number.
        seq: u32,
    },
}

/// Agent -> host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentMsg {
    /// Accepts a control stream.
    Welcome {
        /// The protocol version the agent speaks.
        version: u16,
        /// Who the agent is.
        agent: AgentInfo,
        /// The ticket data connections of this session present; good from
        /// the first `Snapshot` frame on (after the token check, if any).
        ticket: Ticket,
        /// Present when the agent has a shared token: the host must check the
        /// proof and answer with [`HostMsg::Auth`].
        challenge: Option<Challenge>,
    },
    /// Part of the full table; the table is complete at the part with
    /// `last == true`, and replaces whatever the host had.
    Snapshot {
        /// At most [`SNAPSHOT_CHUNK`] forwards.
        forwards: Vec<Forward>,
        /// Whether this part completes the table.
        last: bool,
    },
    /// A forward appeared (or its details changed).
    Added(Forward),
    /// A forward went away.
    Removed(Endpoint),
    /// Answers [`HostMsg::Ping`].
    Pong {
        /// The ping's sequence number.
        seq: u32,
    },
    /// The connection is refused (version, malformed frame, authentication,
    /// unknown ticket); the agent closes it after this frame. Its layout is
    /// the same in every protocol version.
    Refused {
        /// Why, for the host's log.
        reason: String,
    },
}

const TAG_CONTROL: u8 = 1;
const TAG_DATA: u8 = 2;
const TAG_HELLO: u8 = 3;
const TAG_AUTH: u8 = 4;
const TAG_PING: u8 = 5;
const TAG_WELCOME: u8 = 1;
const TAG_SNAPSHOT: u8 = 2;
const TAG_ADDED: u8 = 3;
const TAG_REMOVED: u8 = 4;
const TAG_PONG: u8 = 5;
const TAG_REFUSED: u8 = 6;

impl HostMsg {
    /// The protocol version a connection's first frame announces, read from
    /// its frozen first three bytes before anything else is decoded; `None`
    /// for a body that is not a first frame.
    pub fn peek_version(body: &[u8]) -> Option<u16> {
        match body {
            [TAG_CONTROL | TAG_DATA, hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo])),
            _ => None,
        }
    }
}

impl Message for HostMsg {
    fn name(&self) -> &'static str {
        match self {
            HostMsg::Control { .. } => "Control",
            HostMsg::Data { .. } => "Data",
            HostMsg::Hello { .. } => "Hello",
            HostMsg::Auth { .. } => "Auth",
            HostMsg::Ping { .. } => "Ping",
        }
    }

    fn encode_body(&self, w: &mut Vec<u8>) {
        match self {
            HostMsg::Control { version } => {
                w.push(TAG_CONTROL);
                w.extend_from_slice(&version.to_be_bytes());
            }
            HostMsg::Data { version, ticket } => {
                w.push(TAG_DATA);
                w.extend_from_slice(&version.to_be_bytes());
                w.extend_from_slice(ticket);
            }
            HostMsg::Hello { nonce, ping_interval_ms } => {
                w.push(TAG_HELLO);
                w.extend_from_slice(nonce);
                w.extend_from_slice(&ping_interval_ms.to_be_bytes());
            }
            HostMsg::Auth { proof } => {
                w.push(TAG_AUTH);
                w.extend_from_slice(proof);
            }
            HostMsg::Ping { seq } => {
                w.push(TAG_PING);
                w.extend_from_slice(&seq.to_be_bytes());
            }
        }
    }

    fn decode_body(body: &[u8]) -> Result<HostMsg, DecodeError> {
        let mut r = Reader(body);
        let msg = match r.u8()? {
            TAG_CONTROL => HostMsg::Control { version: r.u16()? },
            TAG_DATA => HostMsg::Data { version: r.u16()?, ticket: r.array()? },
            TAG_HELLO => HostMsg::Hello { nonce: r.array()?, ping_interval_ms: r.u32()? },
            TAG_AUTH => HostMsg::Auth { proof: r.array()? },
            TAG_PING => HostMsg::Ping { seq: r.u32()? },
            tag => return Err(DecodeError::UnknownTag { what: "host message", tag }),
        };
        r.finish()?;
        Ok(msg)
    }
}

impl Message for AgentMsg {
    fn name(&self) -> &'static str {
        match self {
            AgentMsg::Welcome { .. } => "Welcome",
            AgentMsg::Snapshot { .. } => "Snapshot",
            AgentMsg::Added(_) => "Added",
            AgentMsg::Removed(_) => "Removed",
            AgentMsg::Pong { .. } => "Pong",
            AgentMsg::Refused { .. } => "Refused",
        }
    }

    fn encode_body(&self, w: &mut Vec<u8>) {
        match self {
            AgentMsg::Welcome { version, agent, ticket, challenge } => {
                w.push(TAG_WELCOME);
                w.extend_from_slice(&version.to_be_bytes());
                put_str(w, &agent.version);
                put_str(w, &agent.hooks);
                w.extend_from_slice(&agent.pid.to_be_bytes());
                w.extend_from_slice(ticket);
                match challenge {
                    None => w.push(0),
                    Some(c) => {
                        w.push(1);
                        w.extend_from_slice(&c.nonce);
                        w.extend_from_slice(&c.proof);
                    }
                }
            }
            AgentMsg::Snapshot { forwards, last } => {
                w.push(TAG_SNAPSHOT);
                w.push(*last as u8);
                w.extend_from_slice(&(forwards.len() as u32).to_be_bytes());
                for f in forwards {
                    put_forward(w, f);
                }
            }
            AgentMsg::Added(f) => {
                w.push(TAG_ADDED);
                put_forward(w, f);
            }
            AgentMsg::Removed(e) => {
                w.push(TAG_REMOVED);
                put_endpoint(w, e);
            }
            AgentMsg::Pong { seq } => {
                w.push(TAG_PONG);
                w.extend_from_slice(&seq.to_be_bytes());
            }
            AgentMsg::Refused { reason } => {
                w.push(TAG_REFUSED);
                put_str(w, reason);
            }
        }
    }

    fn decode_body(body: &[u8]) -> Result<AgentMsg, DecodeError> {
        let mut r = Reader(body);
        let msg = match r.u8()? {
            TAG_WELCOME => {
                let version = r.u16()?;
                let agent = AgentInfo { version: r.string()?, hooks: r.string()?, pid: r.u32()? };
                let ticket = r.array()?;
                let challenge = match r.bool()? {
                    false => None,
                    true => Some(Challenge { nonce: r.array()?, proof: r.array()? }),
                };
                AgentMsg::Welcome { version, agent, ticket, challenge }
            }
            TAG_SNAPSHOT => {
                let last = r.bool()?;
                let n = r.u32()? as usize;
                if n > SNAPSHOT_CHUNK {
                    return Err(DecodeError::TooMany {
                        what: "snapshot part",
                        n,
                        max: SNAPSHOT_CHUNK,
                    });
                }
                // Each forward takes at least 14 bytes: a count beyond what the
                // body holds is caught before allocating for it.
                let mut forwards = Vec::with_capacity(n.min(r.0.len() / 14));
                for _ in 0..n {
                    forwards.push(r.forward()?);
                }
                AgentMsg::Snapshot { forwards, last }
            }
            TAG_ADDED => AgentMsg::Added(r.forward()?),
            TAG_REMOVED => AgentMsg::Removed(r.endpoint()?),
            TAG_PONG => AgentMsg::Pong { seq: r.u32()? },
            TAG_REFUSED => AgentMsg::Refused { reason: r.string()? },
            tag => return Err(DecodeError::UnknownTag { what: "agent message", tag }),
        };
        r.finish()?;
        Ok(msg)
    }
}

impl AgentMsg {
    /// The snapshot of `forwards` as frames of at most [`SNAPSHOT_CHUNK`]
    /// forwards; an empty table is one empty, final part.
    pub fn snapshot_parts(forwards: &[Forward]) -> Vec<AgentMsg> {
        if forwards.is_empty() {
            return vec![AgentMsg::Snapshot { forwards: vec![], last: true }];
        }
        let chunks = forwards.chunks(SNAPSHOT_CHUNK);
        let n = chunks.len();
        chunks
            .enumerate()
            .map(|(i, c)| AgentMsg::Snapshot { forwards: c.to_vec(), last: i + 1 == n })
            .collect()
    }
}

pub(crate) fn put_endpoint(w: &mut Vec<u8>, e: &Endpoint) {
    w.push(match e.proto {
        Proto::Tcp => 6,
        Proto::Udp => 17,
    });
    put_addr(w, e.addr);
    w.extend_from_slice(&e.port.to_be_bytes());
}

pub(crate) fn put_addr(w: &mut Vec<u8>, a: IpAddr) {
    match a {
        IpAddr::V4(a) => {
            w.push(4);
            w.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            w.push(6);
            w.extend_from_slice(&a.octets());
        }
    }
}

/// Strings are short by construction (reasons, names); an overlong one is
/// clipped at a character boundary so a frame can never become unencodable.
pub(crate) fn put_str(w: &mut Vec<u8>, s: &str) {
    let s = clip(s, u16::MAX as usize);
    w.extend_from_slice(&(s.len() as u16).to_be_bytes());
    w.extend_from_slice(s.as_bytes());
}

fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_forward(w: &mut Vec<u8>, f: &Forward) {
    put_endpoint(w, &f.endpoint);
    put_addr(w, f.guest_addr);
    w.extend_from_slice(&f.pid.to_be_bytes());
    put_str(w, clip(&f.comm, MAX_COMM));
}

/// Reads fields off the front of a body.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated { wanted: n, left: self.0.len() });
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(DecodeError::Invalid { what: "boolean", value: b.into() }),
        }
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| DecodeError::NotUtf8)
    }
    fn family(&mut self) -> Result<Family, DecodeError> {
        match self.u8()? {
            4 => Ok(Family::V4),
            6 => Ok(Family::V6),
            tag => Err(DecodeError::UnknownTag { what: "address family", tag }),
        }
    }
    fn proto(&mut self) -> Result<Proto, DecodeError> {
        match self.u8()? {
            6 => Ok(Proto::Tcp),
            17 => Ok(Proto::Udp),
            tag => Err(DecodeError::UnknownTag { what: "protocol", tag }),
        }
    }
    pub(crate) fn endpoint(&mut self) -> Result<Endpoint, DecodeError> {
        let proto = self.proto()?;
        let addr = self.addr()?;
        let port = self.u16()?;
        if port == 0 {
            return Err(DecodeError::Invalid { what: "endpoint port", value: 0 });
        }
        Ok(Endpoint { proto, addr, port })
    }
    fn addr(&mut self) -> Result<IpAddr, DecodeError> {
        Ok(match self.family()? {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
        })
    }
    fn forward(&mut self) -> Result<Forward, DecodeError> {
        let endpoint = self.endpoint()?;
        let guest_addr = self.addr()?;
        let pid = self.u32()?;
        let comm = self.string()?;
        if comm.len() > MAX_COMM {
            return Err(DecodeError::TooMany {
                what: "command name",
                n: comm.len(),
                max: MAX_COMM,
            });
        }
        Ok(Forward { endpoint, guest_addr, pid, comm })
    }
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(family: Family, port: u16, addr: &str) -> Forward {
        Forward {
            endpoint: Endpoint::tcp(family, port),
            guest_addr: addr.parse().unwrap(),
            pid: 4242,
            comm: "python3".into(),
        }
    }

    fn frame<M: Message>(m: &M) -> Vec<u8> {
        let mut out = Vec::new();
        m.encode_frame(&mut out);
        out
    }

    fn welcome(challenge: Option<Challenge>) -> AgentMsg {
        AgentMsg::Welcome {
            version: 2,
            agent: AgentInfo { version: "0.2.0".into(), hooks: "tp".into(), pid: 7 },
            ticket: [0xaa; 16],
            challenge,
        }
    }

    /// The wire format, pinned byte for byte: a change to the encoding (even
    /// one made to encoder and decoder alike) fails here.
    #[test]
    fn golden_bytes() {
        let v4 = Forward {
            endpoint: Endpoint::tcp(Family::V4, 8080),
            guest_addr: "127.0.0.1".parse().unwrap(),
            pid: 0x01020304,
            comm: "nc".into(),
        };
        let ticket: Ticket = std::array::from_fn(|i| i as u8 + 1);
        let cat = |parts: &[&[u8]]| parts.concat();
        let host: Vec<(HostMsg, Vec<u8>)> = vec![
            (HostMsg::Control { version: 2 }, vec![0, 0, 0, 3, 1, 0, 2]),
            (HostMsg::Data { version: 2, ticket }, cat(&[&[0, 0, 0, 19, 2, 0, 2], &ticket])),
            (
                HostMsg::Hello { nonce: [0x11; 16], ping_interval_ms: 5000 },
                cat(&[&[0, 0, 0, 21, 3], &[0x11; 16], &[0, 0, 0x13, 0x88]]),
            ),
            (HostMsg::Auth { proof: [0x22; 32] }, cat(&[&[0, 0, 0, 33, 4], &[0x22; 32]])),
            (HostMsg::Ping { seq: 7 }, vec![0, 0, 0, 5, 5, 0, 0, 0, 7]),
        ];
        for (m, bytes) in &host {
            assert_eq!(&frame(m), bytes, "{m:?}");
            assert_eq!(&HostMsg::decode_body(&bytes[4..]).unwrap(), m);
        }
        let agent_header: &[u8] =
            &[1, 0, 2, 0, 5, b'0', b'.', b'2', b'.', b'0', 0, 2, b't', b'p', 0, 0, 0, 7];
        let added = [6, 4, 127, 0, 0, 1, 0x1f, 0x90, 4, 127, 0, 0, 1, 1, 2, 3, 4, 0, 2, b'n', b'c'];
        let udp_v6 = Endpoint { proto: Proto::Udp, addr: "::2".parse().unwrap(), port: 22 };
        let agent: Vec<(AgentMsg, Vec<u8>)> = vec![
            (welcome(None), cat(&[&[0, 0, 0, 35], agent_header, &[0xaa; 16], &[0]])),
            (
                welcome(Some(Challenge { nonce: [0x33; 16], proof: [0x44; 32] })),
                cat(&[&[0, 0, 0, 83], agent_header, &[0xaa; 16], &[1], &[0x33; 16], &[0x44; 32]]),
            ),
            (
                AgentMsg::Snapshot { forwards: vec![], last: true },
                vec![0, 0, 0, 6, 2, 1, 0, 0, 0, 0],
            ),
            (AgentMsg::Added(v4.clone()), cat(&[&[0, 0, 0, 22, 3], &added])),
            (
                AgentMsg::Snapshot { forwards: vec![v4], last: false },
                cat(&[&[0, 0, 0, 27, 2, 0, 0, 0, 0, 1], &added]),
            ),
            (AgentMsg::Removed(udp_v6), cat(&[&[0, 0, 0, 21, 4, 17, 6], &[0; 15], &[2], &[0, 22]])),
            (AgentMsg::Pong { seq: 7 }, vec![0, 0, 0, 5, 5, 0, 0, 0, 7]),
            (AgentMsg::Refused { reason: "no".into() }, vec![0, 0, 0, 5, 6, 0, 2, b'n', b'o']),
        ];
        for (m, bytes) in &agent {
            assert_eq!(&frame(m), bytes, "{m:?}");
            assert_eq!(&AgentMsg::decode_body(&bytes[4..]).unwrap(), m);
        }
    }

    /// What every version must keep: the first frame's tag and version come
    /// first, and a refusal reads the same in every version, so peers of two
    /// versions can always tell each other why they part.
    #[test]
    fn version_one_peers_are_understood() {
        // Protocol 1's first frames: a control stream, a data connection.
        assert_eq!(HostMsg::peek_version(&[1, 0, 1]), Some(1));
        assert_eq!(HostMsg::peek_version(&[2, 0, 1, 4, 0, 80]), Some(1));
        assert_eq!(HostMsg::peek_version(&[3, 0, 1]), None);
        assert_eq!(HostMsg::peek_version(&[1, 0]), None);
        // Protocol 1's "Rejected" and this version's "Refused" are the same bytes.
        let v1_rejected = [6, 0, 3, b'o', b'l', b'd'];
        assert_eq!(
            AgentMsg::decode_body(&v1_rejected).unwrap(),
            AgentMsg::Refused { reason: "old".into() }
        );
    }

    #[test]
    fn every_message_round_trips() {
        let host = [
            HostMsg::Control { version: PROTOCOL_VERSION },
            HostMsg::Data { version: 7, ticket: [9; 16] },
            HostMsg::Hello { nonce: [1; 16], ping_interval_ms: 0 },
            HostMsg::Auth { proof: [2; 32] },
            HostMsg::Ping { seq: u32::MAX },
        ];
        for m in host {
            let mut body = Vec::new();
            m.encode_body(&mut body);
            assert!(body.len() <= MAX_HOST_FRAME, "{m:?} is over the host frame limit");
            assert_eq!(HostMsg::decode_body(&body).unwrap(), m);
        }
        let agent = [
            welcome(None),
            welcome(Some(Challenge { nonce: [5; 16], proof: [6; 32] })),
            AgentMsg::Snapshot { forwards: vec![], last: true },
            AgentMsg::Snapshot {
                forwards: vec![fwd(Family::V4, 80, "127.0.0.1"), fwd(Family::V6, 8080, "::")],
                last: false,
            },
            AgentMsg::Added(fwd(Family::V4, 1, "0.0.0.0")),
            AgentMsg::Removed(Endpoint::tcp(Family::V4, 22)),
            AgentMsg::Pong { seq: 1 },
            AgentMsg::Refused { reason: "protocol version 1 not supported".into() },
        ];
        for m in agent {
            let mut body = Vec::new();
            m.encode_body(&mut body);
            assert_eq!(AgentMsg::decode_body(&body).unwrap(), m);
        }
    }

    #[test]
    fn malformed_messages_are_typed_errors() {
        use DecodeError::*;
        let cases: &[(&str, &[u8], DecodeError)] = &[
            ("empty", &[], Truncated { wanted: 1, left: 0 }),
            ("unknown host tag", &[9, 0, 1], UnknownTag { what: "host message", tag: 9 }),
            ("short version", &[TAG_CONTROL, 0], Truncated { wanted: 2, left: 1 }),
            ("trailing bytes", &[TAG_CONTROL, 0, 2, 0], TrailingBytes(1)),
            ("short ticket", &[TAG_DATA, 0, 2, 1, 2], Truncated { wanted: 16, left: 2 }),
            ("short ping", &[TAG_PING, 0, 0], Truncated { wanted: 4, left: 2 }),
        ];
        for (name, wire, want) in cases {
            assert_eq!(&HostMsg::decode_body(wire).unwrap_err(), want, "{name}");
        }
        let mut too_many = vec![TAG_SNAPSHOT, 1];
        too_many.extend_from_slice(&((SNAPSHOT_CHUNK + 1) as u32).to_be_bytes());
        let mut long_comm =
            vec![TAG_ADDED, 6, 4, 127, 0, 0, 1, 0, 80, 4, 127, 0, 0, 1, 0, 0, 0, 1, 0, 16];
        long_comm.extend_from_slice(&[b'a'; 16]);
        let cases: &[(&str, &[u8], DecodeError)] = &[
            ("unknown agent tag", &[0], UnknownTag { what: "agent message", tag: 0 }),
            ("bad bool", &[TAG_SNAPSHOT, 2, 0, 0, 0, 0], Invalid { what: "boolean", value: 2 }),
            ("count beyond data", &[TAG_SNAPSHOT, 1, 0, 0, 0, 1], Truncated { wanted: 1, left: 0 }),
            (
                "count over chunk",
                &too_many,
                TooMany { what: "snapshot part", n: SNAPSHOT_CHUNK + 1, max: SNAPSHOT_CHUNK },
            ),
            ("comm too long", &long_comm, TooMany { what: "command name", n: 16, max: MAX_COMM }),
            ("invalid utf8", &[TAG_REFUSED, 0, 1, 0xff], NotUtf8),
            (
                "bad protocol",
                &[TAG_REMOVED, 7, 4, 127, 0, 0, 1, 0, 80],
                UnknownTag { what: "protocol", tag: 7 },
            ),
            (
                "bad family",
                &[TAG_REMOVED, 6, 5, 127, 0, 0, 1, 0, 80],
                UnknownTag { what: "address family", tag: 5 },
            ),
            ("short address", &[TAG_REMOVED, 6, 6, 0, 0, 0, 1], Truncated { wanted: 16, left: 4 }),
            (
                "port zero",
                &[TAG_REMOVED, 6, 4, 127, 0, 0, 1, 0, 0],
                Invalid { what: "endpoint port", value: 0 },
            ),
        ];
        for (name, wire, want) in cases {
            assert_eq!(&AgentMsg::decode_body(wire).unwrap_err(), want, "{name}");
        }
    }

    #[test]
    fn snapshots_split_into_bounded_parts() {
        for (n, parts) in
            [(0, 1), (1, 1), (SNAPSHOT_CHUNK, 1), (SNAPSHOT_CHUNK + 1, 2), (3 * SNAPSHOT_CHUNK, 3)]
        {
            let all: Vec<Forward> =
                (0..n).map(|i| fwd(Family::V4, (i % 65535 + 1) as u16, "127.0.0.1")).collect();
            let msgs = AgentMsg::snapshot_parts(&all);
            assert_eq!(msgs.len(), parts, "n={n}");
            let mut back = Vec::new();
            for (i, m) in msgs.iter().enumerate() {
                let mut body = Vec::new();
                m.encode_body(&mut body);
                assert!(body.len() <= crate::frame::MAX_FRAME);
                match AgentMsg::decode_body(&body).unwrap() {
                    AgentMsg::Snapshot { forwards, last } => {
                        assert_eq!(last, i + 1 == parts);
                        back.extend(forwards);
                    }
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(back, all);
        }
    }

    #[test]
    fn overlong_strings_are_clipped_at_a_character_boundary() {
        let mut f = fwd(Family::V4, 80, "127.0.0.1");
        f.comm = "a-very-long-command-name".into();
        let mut body = Vec::new();
        AgentMsg::Added(f).encode_body(&mut body);
        match AgentMsg::decode_body(&body).unwrap() {
            AgentMsg::Added(back) => assert_eq!(back.comm, "a-very-long-com"),
            other => panic!("{other:?}"),
        }
        assert_eq!(clip("aé", 2), "a");
    }
}
