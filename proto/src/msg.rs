//! The messages, one enum per direction, and their byte encoding. Every
//! connection starts with a [`HostMsg`] that names the protocol version and the
//! connection's role (control or data). Decoding is strict: unknown tags,
//! truncated fields and trailing bytes are errors, never guesses.

use anyhow::{bail, Context, Result};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Version spoken by this build; both sides refuse any other.
pub const PROTOCOL_VERSION: u16 = 1;

/// Longest command name carried (the kernel's TASK_COMM_LEN less the NUL).
pub const MAX_COMM: usize = 15;

/// Most forwards sent in one [`AgentMsg::Snapshot`] frame; larger tables span
/// several frames so every frame stays far below the frame limit.
pub const SNAPSHOT_CHUNK: usize = 4096;

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
    pub family: Family,
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
    Control { version: u16 },
    /// Opens a data connection to the guest listener behind `endpoint`: the
    /// agent answers [`AgentMsg::Connected`] and relays bytes, or
    /// [`AgentMsg::Rejected`] and closes.
    Data { version: u16, endpoint: Endpoint },
}

/// Agent -> host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentMsg {
    /// Accepts a control stream; `agent` describes the agent (version, hooks).
    Welcome { version: u16, agent: String },
    /// Part of the full table; the table is complete at the part with
    /// `last == true`, and replaces whatever the host had.
    Snapshot { forwards: Vec<Forward>, last: bool },
    /// A forward appeared.
    Added(Forward),
    /// A forward went away.
    Removed(Endpoint),
    /// The data connection is dialled: raw bytes follow in both directions.
    Connected,
    /// The connection is refused (version mismatch, no such listener, dial
    /// failure); the agent closes it after this frame.
    Rejected { reason: String },
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
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(8);
        match self {
            HostMsg::Control { version } => {
                w.push(TAG_CONTROL);
                w.extend_from_slice(&version.to_be_bytes());
            }
            HostMsg::Data { version, endpoint } => {
                w.push(TAG_DATA);
                w.extend_from_slice(&version.to_be_bytes());
                put_endpoint(&mut w, endpoint);
            }
        }
        w
    }

    pub fn decode(body: &[u8]) -> Result<HostMsg> {
        let mut r = Reader(body);
        let msg = match r.u8()? {
            TAG_CONTROL => HostMsg::Control { version: r.u16()? },
            TAG_DATA => HostMsg::Data { version: r.u16()?, endpoint: r.endpoint()? },
            tag => bail!("unknown host message tag {tag}"),
        };
        r.finish()?;
        Ok(msg)
    }
}

impl AgentMsg {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(64);
        match self {
            AgentMsg::Welcome { version, agent } => {
                w.push(TAG_WELCOME);
                w.extend_from_slice(&version.to_be_bytes());
                put_str(&mut w, agent);
            }
            AgentMsg::Snapshot { forwards, last } => {
                w.push(TAG_SNAPSHOT);
                w.push(*last as u8);
                w.extend_from_slice(&(forwards.len() as u32).to_be_bytes());
                for f in forwards {
                    put_forward(&mut w, f);
                }
            }
            AgentMsg::Added(f) => {
                w.push(TAG_ADDED);
                put_forward(&mut w, f);
            }
            AgentMsg::Removed(e) => {
                w.push(TAG_REMOVED);
                put_endpoint(&mut w, e);
            }
            AgentMsg::Connected => w.push(TAG_CONNECTED),
            AgentMsg::Rejected { reason } => {
                w.push(TAG_REJECTED);
                put_str(&mut w, reason);
            }
        }
        w
    }

    pub fn decode(body: &[u8]) -> Result<AgentMsg> {
        let mut r = Reader(body);
        let msg = match r.u8()? {
            TAG_WELCOME => AgentMsg::Welcome { version: r.u16()?, agent: r.string()? },
            TAG_SNAPSHOT => {
                let last = r.bool()?;
                let n = r.u32()? as usize;
                if n > SNAPSHOT_CHUNK {
                    bail!("snapshot part of {n} forwards exceeds {SNAPSHOT_CHUNK}");
                }
                let mut forwards = Vec::with_capacity(n);
                for _ in 0..n {
                    forwards.push(r.forward()?);
                }
                AgentMsg::Snapshot { forwards, last }
            }
            TAG_ADDED => AgentMsg::Added(r.forward()?),
            TAG_REMOVED => AgentMsg::Removed(r.endpoint()?),
            TAG_CONNECTED => AgentMsg::Connected,
            TAG_REJECTED => AgentMsg::Rejected { reason: r.string()? },
            tag => bail!("unknown agent message tag {tag}"),
        };
        r.finish()?;
        Ok(msg)
    }

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

fn put_str(w: &mut Vec<u8>, s: &str) {
    // Strings are short by construction (reasons, names); clip rather than
    // fail so an overlong reason can never make a frame unencodable.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    w.extend_from_slice(&(end as u16).to_be_bytes());
    w.extend_from_slice(&s.as_bytes()[..end]);
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
    let mut end = f.comm.len().min(MAX_COMM);
    while !f.comm.is_char_boundary(end) {
        end -= 1;
    }
    put_str(w, &f.comm[..end]);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.0.len() < n {
            bail!("message truncated: wanted {n} more bytes, {} left", self.0.len());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => bail!("invalid boolean {b}"),
        }
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn string(&mut self) -> Result<String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).context("string is not UTF-8")
    }
    fn family(&mut self) -> Result<Family> {
        match self.u8()? {
            4 => Ok(Family::V4),
            6 => Ok(Family::V6),
            f => bail!("unknown address family {f}"),
        }
    }
    fn endpoint(&mut self) -> Result<Endpoint> {
        let family = self.family()?;
        let port = self.u16()?;
        if port == 0 {
            bail!("endpoint with port 0");
        }
        Ok(Endpoint { family, port })
    }
    fn forward(&mut self) -> Result<Forward> {
        let endpoint = self.endpoint()?;
        let guest_addr = match self.family()? {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(self.take(4)?).unwrap())),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(self.take(16)?).unwrap())),
        };
        let pid = self.u32()?;
        let comm = self.string()?;
        if comm.len() > MAX_COMM {
            bail!("command name of {} bytes exceeds {MAX_COMM}", comm.len());
        }
        Ok(Forward { endpoint, guest_addr, pid, comm })
    }
    fn finish(&self) -> Result<()> {
        if !self.0.is_empty() {
            bail!("{} unexpected bytes after the message", self.0.len());
        }
        Ok(())
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

    #[test]
    fn every_message_round_trips() {
        let host = [
            HostMsg::Control { version: PROTOCOL_VERSION },
            HostMsg::Data { version: 7, endpoint: Endpoint { family: Family::V6, port: 65535 } },
        ];
        for m in host {
            assert_eq!(HostMsg::decode(&m.encode()).unwrap(), m);
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
            assert_eq!(AgentMsg::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn malformed_messages_are_errors() {
        let cases: &[(&str, &[u8], &str)] = &[
            ("empty", &[], "truncated"),
            ("unknown host tag", &[9, 0, 1], "unknown host message tag 9"),
            ("short version", &[TAG_CONTROL, 0], "truncated"),
            ("trailing bytes", &[TAG_CONTROL, 0, 1, 0], "unexpected bytes"),
            ("bad family", &[TAG_DATA, 0, 1, 5, 0, 80], "unknown address family 5"),
            ("port zero", &[TAG_DATA, 0, 1, 4, 0, 0], "port 0"),
        ];
        for (name, wire, want) in cases {
            let err = HostMsg::decode(wire).unwrap_err();
            assert!(format!("{err:#}").contains(want), "{name}: {err:#}");
        }
        let mut too_many = vec![TAG_SNAPSHOT, 1];
        too_many.extend_from_slice(&((SNAPSHOT_CHUNK + 1) as u32).to_be_bytes());
        let mut long_comm = vec![TAG_ADDED, 4, 0, 80, 4, 127, 0, 0, 1, 0, 0, 0, 1, 0, 16];
        long_comm.extend_from_slice(&[b'a'; 16]);
        let cases: &[(&str, &[u8], &str)] = &[
            ("unknown agent tag", &[0], "unknown agent message tag 0"),
            ("bad bool", &[TAG_SNAPSHOT, 2, 0, 0, 0, 0], "invalid boolean"),
            ("count beyond data", &[TAG_SNAPSHOT, 1, 0, 0, 0, 1], "truncated"),
            ("count over chunk", &too_many, "exceeds"),
            ("comm too long", &long_comm, "command name"),
            ("invalid utf8", &[TAG_REJECTED, 0, 1, 0xff], "UTF-8"),
        ];
        for (name, wire, want) in cases {
            let err = AgentMsg::decode(wire).unwrap_err();
            assert!(format!("{err:#}").contains(want), "{name}: {err:#}");
        }
    }

    #[test]
    fn snapshots_split_into_bounded_parts() {
        for (n, parts) in [(0, 1), (1, 1), (SNAPSHOT_CHUNK, 1), (SNAPSHOT_CHUNK + 1, 2), (3 * SNAPSHOT_CHUNK, 3)] {
            let all: Vec<Forward> = (0..n).map(|i| fwd(Family::V4, (i % 65535 + 1) as u16, "127.0.0.1")).collect();
            let msgs = AgentMsg::snapshot_parts(&all);
            assert_eq!(msgs.len(), parts, "n={n}");
            let mut back = Vec::new();
            for (i, m) in msgs.iter().enumerate() {
                let body = m.encode();
                assert!(body.len() <= crate::frame::MAX_FRAME);
                match AgentMsg::decode(&body).unwrap() {
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
    fn overlong_comm_is_clipped_on_encode() {
        let mut f = fwd(Family::V4, 80, "127.0.0.1");
        f.comm = "a-very-long-command-name".into();
        match AgentMsg::decode(&AgentMsg::Added(f).encode()).unwrap() {
            AgentMsg::Added(back) => assert_eq!(back.comm, "a-very-long-com"),
            other => panic!("{other:?}"),
        }
    }
}
