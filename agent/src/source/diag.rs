//! The snapshot's first half: every listening TCP socket and every
//! unconnected, bound UDP socket of the calling thread's network namespace,
//! from one `NETLINK_SOCK_DIAG` dump per protocol and family. Taken at start
//! and on resync, never periodically. The messages are modelled by
//! `netlink-packet-sock-diag`; parsing a reply is a pure function and strict:
//! a malformed message is an error, not a guess.

use anyhow::{bail, Context, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::inet::{
    nlas::Nla, ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags,
};
use netlink_packet_sock_diag::{SockDiagMessage, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};
use std::net::IpAddr;

/// One listening TCP socket, or one unconnected UDP socket, as sock_diag
/// reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    /// Bound address (IPv4 for AF_INET, IPv6 for AF_INET6, as bound).
    pub addr: IpAddr,
    /// Bound port.
    pub port: u16,
    /// `IPV6_V6ONLY` of an AF_INET6 socket.
    pub ipv6only: bool,
    /// The kernel's socket cookie (what the eBPF program reports).
    pub cookie: u64,
    /// The socket's inode, to find its owner in /proc.
    pub inode: u64,
    /// The owner's uid.
    pub uid: u32,
}

/// Every TCP socket in LISTEN state, both families.
pub fn listening_tcp() -> Result<Vec<DiagSocket>> {
    dump(IPPROTO_TCP, StateFlags::LISTEN)
}

/// Every bound UDP socket that is not connected, both families: the ones
/// that may be servers (UDP sockets are CLOSE when not connected,
/// ESTABLISHED when they are; an unbound one is not in the table at all).
pub fn unconnected_udp() -> Result<Vec<DiagSocket>> {
    dump(IPPROTO_UDP, StateFlags::CLOSE)
}

fn dump(protocol: u8, states: StateFlags) -> Result<Vec<DiagSocket>> {
    let fd = crate::sys::sock_diag_socket().context("opening a NETLINK_SOCK_DIAG socket")?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    for (family, seq) in [(AF_INET, 1u32), (AF_INET6, 2)] {
        crate::sys::netlink_send(&fd, &request(family, protocol, states.clone(), seq))
            .context("sending the sock_diag request")?;
        loop {
            let n =
                crate::sys::netlink_recv(&fd, &mut buf).context("receiving sock_diag replies")?;
            if parse_replies(&buf[..n], &mut out).context("parsing sock_diag replies")?
                == Parsed::Done
            {
                break;
            }
        }
    }
    Ok(out)
}

/// The dump request for sockets of `protocol` and `family` in `states`.
fn request(family: u8, protocol: u8, states: StateFlags, seq: u32) -> Vec<u8> {
    let socket_id = if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() };
    let req =
        InetRequest { family, protocol, extensions: ExtensionFlags::empty(), states, socket_id };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(header, SockDiagMessage::InetRequest(req).into());
    msg.finalize();
    let mut bytes = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut bytes);
    bytes
}

/// Whether a dump is complete.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More datagrams follow.
    More,
    /// The dump ended.
    Done,
}

/// Parses one datagram of netlink messages, appending sockets.
pub fn parse_replies(mut buf: &[u8], out: &mut Vec<DiagSocket>) -> Result<Parsed> {
    while !buf.is_empty() {
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(buf)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("malformed netlink message")?;
        let len = msg.header.length as usize;
        match msg.payload {
            NetlinkPayload::Done(_) => return Ok(Parsed::Done),
            NetlinkPayload::Error(e) => match e.code {
                None => return Ok(Parsed::Done),
                Some(code) => {
                    return Err(std::io::Error::from_raw_os_error(code.get().wrapping_neg()))
                        .context("the kernel refused the sock_diag request")
                }
            },
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => out.push(socket(&r)?),
            _ => {}
        }
        if len == 0 {
            bail!("netlink message of length 0");
        }
        // Messages are 4-byte aligned.
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    Ok(Parsed::More)
}

fn socket(r: &InetResponse) -> Result<DiagSocket> {
    let id = &r.header.socket_id;
    match (r.header.family, id.source_address) {
        (AF_INET, IpAddr::V4(_)) | (AF_INET6, IpAddr::V6(_)) => {}
        (f, _) => bail!("unexpected address family {f} in a sock_diag reply"),
    }
    Ok(DiagSocket {
        addr: id.source_address,
        port: id.source_port,
        ipv6only: r.nlas.iter().any(|n| matches!(n, Nla::SkV6Only(true))),
        cookie: u64::from_ne_bytes(id.cookie),
        inode: r.header.inode.into(),
        uid: r.header.uid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    /// Byte offsets of `struct inet_diag_msg` (linux/inet_diag.h), written out
    /// here independently of the crate that parses them.
    const DIAG_MSG: usize = 72;
    const NLMSG_HDR: usize = 16;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const INET_DIAG_SKV6ONLY: u16 = 11;

    fn msg(
        family: u8,
        port: u16,
        src: [u8; 16],
        cookie: u64,
        inode: u32,
        attrs: &[(u16, &[u8])],
    ) -> Vec<u8> {
        let mut b = vec![0u8; DIAG_MSG];
        b[0] = family;
        b[1] = 10; // TCP_LISTEN
        b[4..6].copy_from_slice(&port.to_be_bytes());
        b[8..24].copy_from_slice(&src);
        b[44..48].copy_from_slice(&(cookie as u32).to_ne_bytes());
        b[48..52].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        b[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        b[68..72].copy_from_slice(&inode.to_ne_bytes());
        for (t, v) in attrs {
            b.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
            b.extend_from_slice(&t.to_ne_bytes());
            b.extend_from_slice(v);
            b.resize((b.len() + 3) & !3, 0);
        }
        b
    }

    fn nl(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((NLMSG_HDR + body.len()) as u32).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&[0u8; 10]);
        b.extend_from_slice(body);
        b.resize((b.len() + 3) & !3, 0);
        b
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut s = [0u8; 16];
        s[..4].copy_from_slice(&a);
        s
    }

    #[test]
    fn replies_parse_strictly() {
        let v4msg = nl(
            SOCK_DIAG_BY_FAMILY,
            &msg(AF_INET, 8080, v4([127, 0, 0, 1]), 0x1_0000_0002, 77, &[]),
        );
        let v6msg = nl(
            SOCK_DIAG_BY_FAMILY,
            &msg(
                AF_INET6,
                443,
                Ipv6Addr::LOCALHOST.octets(),
                5,
                78,
                &[(99, &[1, 2, 3]), (INET_DIAG_SKV6ONLY, &[1])],
            ),
        );
        let done = nl(NLMSG_DONE, &[0, 0, 0, 0]);
        let mut err_body = (-libc_eperm()).to_ne_bytes().to_vec();
        err_body.extend_from_slice(&[0u8; NLMSG_HDR]);
        let err = nl(NLMSG_ERROR, &err_body);
        // Found by the sock_diag fuzz target: negating i32::MIN overflowed.
        let err_min = nl(NLMSG_ERROR, &[&i32::MIN.to_ne_bytes()[..], &[0u8; NLMSG_HDR]].concat());
        let both = [v4msg.clone(), v6msg.clone()].concat();
        type Want = std::result::Result<(Parsed, usize), &'static str>;
        let cases: Vec<(&str, Vec<u8>, Want)> = vec![
            ("one v4", v4msg.clone(), Ok((Parsed::More, 1))),
            ("two then done", [both.clone(), done.clone()].concat(), Ok((Parsed::Done, 2))),
            ("done only", done.clone(), Ok((Parsed::Done, 0))),
            ("error", err, Err("refused")),
            ("error code i32::MIN", err_min, Err("refused")),
            ("short header", v4msg[..8].to_vec(), Err("malformed")),
            ("length beyond data", v4msg[..40].to_vec(), Err("malformed")),
            ("short body", nl(SOCK_DIAG_BY_FAMILY, &[0u8; 20]), Err("malformed")),
            (
                "bad family",
                nl(SOCK_DIAG_BY_FAMILY, &msg(1, 80, v4([1, 2, 3, 4]), 1, 1, &[])),
                Err("malformed"),
            ),
        ];
        for (name, wire, want) in cases {
            let mut out = Vec::new();
            match (parse_replies(&wire, &mut out), want) {
                (Ok(p), Ok((wp, n))) => {
                    assert_eq!(p, wp, "{name}");
                    assert_eq!(out.len(), n, "{name}");
                }
                (Err(e), Err(w)) => assert!(format!("{e:#}").contains(w), "{name}: {e:#}"),
                (got, want) => panic!("{name}: got {got:?} want {want:?}"),
            }
        }
        let mut out = Vec::new();
        parse_replies(&both, &mut out).unwrap();
        assert_eq!(
            out,
            vec![
                DiagSocket {
                    addr: "127.0.0.1".parse().unwrap(),
                    port: 8080,
                    ipv6only: false,
                    cookie: 0x1_0000_0002,
                    inode: 77,
                    uid: 1000
                },
                DiagSocket {
                    addr: "::1".parse().unwrap(),
                    port: 443,
                    ipv6only: true,
                    cookie: 5,
                    inode: 78,
                    uid: 1000
                },
            ]
        );
    }

    #[test]
    fn requests_ask_for_listening_tcp_and_unconnected_udp_sockets() {
        // (family, protocol, states, state bits: TCP_LISTEN 10, TCP_CLOSE 7)
        let cases = [
            (AF_INET6, IPPROTO_TCP, StateFlags::LISTEN, 1u32 << 10),
            (AF_INET, IPPROTO_UDP, StateFlags::CLOSE, 1 << 7),
        ];
        for (family, protocol, states, bits) in cases {
            let r = request(family, protocol, states, 7);
            // nlmsghdr: len, type SOCK_DIAG_BY_FAMILY, flags REQUEST|DUMP, seq 7.
            assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()) as usize, r.len());
            assert_eq!(u16::from_ne_bytes([r[4], r[5]]), SOCK_DIAG_BY_FAMILY);
            assert_eq!(u16::from_ne_bytes([r[6], r[7]]), NLM_F_REQUEST | NLM_F_DUMP);
            assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 7);
            // inet_diag_req_v2: family, protocol, ext, pad, states.
            assert_eq!(&r[16..20], &[family, protocol, 0, 0]);
            assert_eq!(u32::from_ne_bytes(r[20..24].try_into().unwrap()), bits);
        }
    }

    fn libc_eperm() -> i32 {
        1
    }
}
