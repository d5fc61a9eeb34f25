//! The messages, one enum per direction, and their byte encoding. Every
//! connection starts with a [`HostMsg`] that names the protocol version and
//! the connection's role (control or data). Decoding is strict: unknown tags,
//! truncated fields and trailing bytes are errors, never guesses.
//!
//! Byte layout of a frame body (integers big-endian):
//!
//! | message                  | bytes                                                   |
//! |--------------------------|---------------------------------------------------------|
//! | `HostMsg::Control`       | `01` version:u16                                        |
//! | `HostMsg::Data`          | `02` version:u16 endpoint                               |
//! | `AgentMsg::Welcome`      | `01` version:u16 agent:str                              |
//! | `AgentMsg::Snapshot`     | `02` last:u8(0/1) count:u32 forward*count               |
//! | `AgentMsg::Added`        | `03` forward                                            |
//! | `AgentMsg::Removed`      | `04` endpoint                                           |
//! | `AgentMsg::Connected`    | `05`                                                    |
//! | `AgentMsg::Rejected`     | `06` reason:str                                         |
//! | endpoint                 | family:u8 (4 or 6) port:u16 (not 0)                     |
//! | forward                  | endpoint addr-family:u8 addr:4 or 16 bytes pid:u32 comm:str (<= 15 bytes) |
//! | str                      | len:u16 UTF-8 bytes                                     |

use crate::error::DecodeError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Version spoken by this build; both sides refuse any other.
pub const PROTOCOL_VERSION: u16 = 1;

/// Longest command name carried (the kernel's TASK_COMM_LEN less the NUL).
pub const MAX_COMM: usize = 15;

/// Most forwards sent in one [`AgentMsg::Snapshot`] frame; larger tables span
/// several frames so every frame stays far below the frame limit.
pub const SNAPSHOT_CHUNK: usize = 4096;

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

/// What the host serves: a port on its IPv4 or IPv6 side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// The host side it is served on.
    pub family: Family,
    /// The port, never 0.
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.family, self.port)
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

/// Host -> agent. Exactly one per connection, as its first frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMsg {
    /// Opens the control stream: the agent answers [`AgentMsg::Welcome`], a
    /// full [`AgentMsg::Snapshot`], then every change.
    Control {
        /// The protocol version the host speaks.
        version: u16,
    },
    /// Opens a data connection to the guest listener behind `endpoint`: the
    /// agent answers [`AgentMsg::Connected`] and relays bytes, or
    /// [`AgentMsg::Rejected`] and closes.
    Data {
        /// The protocol version the host speaks.
        version: u16,
        /// The host endpoint a client connected to.
        endpoint: Endpoint,
    },
}

/// Agent -> host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentMsg {
    /// Accepts a control stream; `agent` describes the agent (version, hooks).
    Welcome {
        /// The protocol version the agent speaks.
        version: u16,
        /// A description of the agent, for the host's log.
        agent: String,
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
    /// The data connection is dialled: raw bytes follow in both directions.
    Connected,
    /// The connection is refused (version mismatch, no such listener, dial
    /// failure); the agent closes it after this frame.
    Rejected {
        /// Why, for the host's log.
        reason: String,
    },
}

const TAG_CONTROL: u8 = 1;
const TAG_DATA: u8 = 2;
const TAG_WELCOME: u8 = 1;
const TAG_SNAPSHOT: u8 = 2;
const TAG_ADDED: u8 = 3;
const TAG_REMOVED: u8 = 4;
const TAG_CONNECTED: u8 = 5;
const TAG_REJECTED: u8 = 6;

impl HostMsg {
    /// The protocol version the message announces.
    pub fn version(&self) -> u16 {
        match self {
            HostMsg::Control { version } | HostMsg::Data { version, .. } => *version,
        }
    }
}

impl Message for HostMsg {
    fn name(&self) -> &'static str {
        match self {
            HostMsg::Control { .. } => "Control",
            HostMsg::Data { .. } => "Data",
        }
    }

    fn encode_body(&self, w: &mut Vec<u8>) {
        match self {
            HostMsg::Control { version } => {
                w.push(TAG_CONTROL);
                w.extend_from_slice(&version.to_be_bytes());
            }
            HostMsg::Data { version, endpoint } => {
                w.push(TAG_DATA);
                w.extend_from_slice(&version.to_be_bytes());
                put_endpoint(w, endpoint);
            }
        }
    }

    fn decode_body(body: &[u8]) -> Result<HostMsg, DecodeError> {
        let mut r = Reader(body);
        let msg = match r.u8()? {
            TAG_CONTROL => HostMsg::Control { version: r.u16()? },
            TAG_DATA => HostMsg::Data { version: r.u16()?, endpoint: r.endpoint()? },
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
            AgentMsg::Connected => "Connected",
            AgentMsg::Rejected { .. } => "Rejected",
        }
    }

    fn encode_body(&self, w: &mut Vec<u8>) {
        match self {
            AgentMsg::Welcome { version, agent } => {
                w.push(TAG_WELCOME);
                w.extend_from_slice(&version.to_be_bytes());
                put_str(w, agent);
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
            AgentMsg::Connected => w.push(TAG_CONNECTED),
            AgentMsg::Rejected { reason } => {
                w.push(TAG_REJECTED);
                put_str(w, reason);
            }
        }
    }

    fn decode_body(body: &[u8]) -> Result<AgentMsg, DecodeError> {
        let mut r = Reader(body);
        let msg = match r.u8()? {
            TAG_WELCOME => AgentMsg::Welcome { version: r.u16()?, agent: r.string()? },
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
                // Each forward takes at least 13 bytes: a count beyond what the
                // body holds is caught before allocating for it.
                let mut forwards = Vec::with_capacity(n.min(r.0.len() / 13));
                for _ in 0..n {
                    forwards.push(r.forward()?);
                }
                AgentMsg::Snapshot { forwards, last }
            }
            TAG_ADDED => AgentMsg::Added(r.forward()?),
            TAG_REMOVED => AgentMsg::Removed(r.endpoint()?),
            TAG_CONNECTED => AgentMsg::Connected,
            TAG_REJECTED => AgentMsg::Rejected { reason: r.string()? },
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

fn put_endpoint(w: &mut Vec<u8>, e: &Endpoint) {
    w.push(match e.family {
        Family::V4 => 4,
        Family::V6 => 6,
    });
    w.extend_from_slice(&e.port.to_be_bytes());
}

/// Strings are short by construction (reasons, names); an overlong one is
/// clipped at a character boundary so a frame can never become unencodable.
fn put_str(w: &mut Vec<u8>, s: &str) {
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
    match f.guest_addr {
        IpAddr::V4(a) => {
            w.push(4);
            w.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            w.push(6);
            w.extend_from_slice(&a.octets());
        }
    }
    w.extend_from_slice(&f.pid.to_be_bytes());
    put_str(w, clip(&f.comm, MAX_COMM));
}

/// Reads fields off the front of a body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated { wanted: n, left: self.0.len() });
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
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
    fn string(&mut self) -> Result<String, DecodeError> {
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
    fn endpoint(&mut self) -> Result<Endpoint, DecodeError> {
        let family = self.family()?;
        let port = self.u16()?;
        if port == 0 {
            return Err(DecodeError::Invalid { what: "endpoint port", value: 0 });
        }
        Ok(Endpoint { family, port })
    }
    fn forward(&mut self) -> Result<Forward, DecodeError> {
        let endpoint = self.endpoint()?;
        let guest_addr = match self.family()? {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
        };
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
    fn finish(&self) -> Result<(), DecodeError> {
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
            endpoint: Endpoint { family, port },
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

    /// The wire format, pinned byte for byte: a change to the encoding (even
    /// one made to encoder and decoder alike) fails here.
    #[test]
    fn golden_bytes() {
        let v4 = Forward {
            endpoint: Endpoint { family: Family::V4, port: 8080 },
            guest_addr: "127.0.0.1".parse().unwrap(),
            pid: 0x01020304,
            comm: "nc".into(),
        };
        let host: &[(HostMsg, &[u8])] = &[
            (HostMsg::Control { version: 1 }, &[0, 0, 0, 3, 1, 0, 1]),
            (
                HostMsg::Data { version: 1, endpoint: Endpoint { family: Family::V6, port: 443 } },
                &[0, 0, 0, 6, 2, 0, 1, 6, 1, 187],
            ),
        ];
        for (m, bytes) in host {
            assert_eq!(frame(m), *bytes, "{m:?}");
            assert_eq!(&HostMsg::decode_body(&bytes[4..]).unwrap(), m);
        }
        #[rustfmt::skip]
        let agent: &[(AgentMsg, &[u8])] = &[
            (AgentMsg::Welcome { version: 1, agent: "a".into() }, &[0, 0, 0, 6, 1, 0, 1, 0, 1, b'a']),
            (AgentMsg::Snapshot { forwards: vec![], last: true }, &[0, 0, 0, 6, 2, 1, 0, 0, 0, 0]),
            (
                AgentMsg::Added(v4.clone()),
                &[0, 0, 0, 17, 3, 4, 0x1f, 0x90, 4, 127, 0, 0, 1, 1, 2, 3, 4, 0, 2, b'n', b'c'],
            ),
            (
                AgentMsg::Snapshot { forwards: vec![v4], last: false },
                &[0, 0, 0, 22, 2, 0, 0, 0, 0, 1, 4, 0x1f, 0x90, 4, 127, 0, 0, 1, 1, 2, 3, 4, 0, 2, b'n', b'c'],
            ),
            (AgentMsg::Removed(Endpoint { family: Family::V4, port: 22 }), &[0, 0, 0, 4, 4, 4, 0, 22]),
            (AgentMsg::Connected, &[0, 0, 0, 1, 5]),
            (AgentMsg::Rejected { reason: "no".into() }, &[0, 0, 0, 5, 6, 0, 2, b'n', b'o']),
        ];
        for (m, bytes) in agent {
            assert_eq!(frame(m), *bytes, "{m:?}");
            assert_eq!(&AgentMsg::decode_body(&bytes[4..]).unwrap(), m);
        }
    }

    #[test]
    fn every_message_round_trips() {
        let host = [
            HostMsg::Control { version: PROTOCOL_VERSION },
            HostMsg::Data { version: 7, endpoint: Endpoint { family: Family::V6, port: 65535 } },
        ];
        for m in host {
            let mut body = Vec::new();
            m.encode_body(&mut body);
            assert_eq!(HostMsg::decode_body(&body).unwrap(), m);
        }
        let agent = [
            AgentMsg::Welcome { version: 1, agent: "hoist-agent 0.1.0 (tracepoint hooks)".into() },
            AgentMsg::Snapshot { forwards: vec![], last: true },
            AgentMsg::Snapshot {
                forwards: vec![fwd(Family::V4, 80, "127.0.0.1"), fwd(Family::V6, 8080, "::")],
                last: false,
            },
            AgentMsg::Added(fwd(Family::V4, 1, "0.0.0.0")),
            AgentMsg::Removed(Endpoint { family: Family::V4, port: 22 }),
            AgentMsg::Connected,
            AgentMsg::Rejected { reason: "no listener on ipv4/9".into() },
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
            ("trailing bytes", &[TAG_CONTROL, 0, 1, 0], TrailingBytes(1)),
            (
                "bad family",
                &[TAG_DATA, 0, 1, 5, 0, 80],
                UnknownTag { what: "address family", tag: 5 },
            ),
            ("port zero", &[TAG_DATA, 0, 1, 4, 0, 0], Invalid { what: "endpoint port", value: 0 }),
        ];
        for (name, wire, want) in cases {
            assert_eq!(&HostMsg::decode_body(wire).unwrap_err(), want, "{name}");
        }
        let mut too_many = vec![TAG_SNAPSHOT, 1];
        too_many.extend_from_slice(&((SNAPSHOT_CHUNK + 1) as u32).to_be_bytes());
        let mut long_comm = vec![TAG_ADDED, 4, 0, 80, 4, 127, 0, 0, 1, 0, 0, 0, 1, 0, 16];
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
            ("invalid utf8", &[TAG_REJECTED, 0, 1, 0xff], NotUtf8),
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
