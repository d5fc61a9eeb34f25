//! The snapshot: every TCP listener of the calling thread's network namespace,
//! from one `NETLINK_SOCK_DIAG` dump per family, and the owners of their
//! sockets from `/proc`. Taken at start and on resync, never periodically.
//! Parsing is pure and strict: a truncated message is an error, not a guess.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// One listening TCP socket as sock_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagListener {
    /// Bound address (IPv4 for AF_INET, IPv6 for AF_INET6, as bound).
    pub addr: IpAddr,
    pub port: u16,
    /// `IPV6_V6ONLY` of an AF_INET6 socket.
    pub ipv6only: bool,
    /// The kernel's socket cookie (what the eBPF program reports).
    pub cookie: u64,
    pub inode: u64,
    pub uid: u32,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_LISTEN: u32 = 10;
const INET_DIAG_SKV6ONLY: u16 = 11;
const NLMSG_HDR: usize = 16;
/// struct inet_diag_msg
const DIAG_MSG: usize = 72;

/// Every TCP socket in LISTEN state, both families.
pub fn listeners() -> Result<Vec<DiagListener>> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening a NETLINK_SOCK_DIAG socket");
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut out = Vec::new();
    for (family, seq) in [(libc::AF_INET as u8, 1u32), (libc::AF_INET6 as u8, 2)] {
        send_request(&fd, family, seq)?;
        let mut buf = vec![0u8; 32 * 1024];
        'recv: loop {
            // SAFETY: buf is valid for its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).context("receiving sock_diag replies");
            }
            match parse_replies(&buf[..n as usize], &mut out).context("parsing sock_diag replies")? {
                Parsed::More => {}
                Parsed::Done => break 'recv,
            }
        }
    }
    Ok(out)
}

fn send_request(fd: &OwnedFd, family: u8, seq: u32) -> Result<()> {
    let mut req = Vec::with_capacity(NLMSG_HDR + 56);
    let len = (NLMSG_HDR + 56) as u32;
    req.extend_from_slice(&len.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&seq.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    // struct inet_diag_req_v2: family, protocol, ext, pad, states, then a
    // zeroed inet_diag_sockid (48 bytes).
    req.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    req.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    req.extend_from_slice(&[0u8; 48]);
    // SAFETY: req is valid for its length; the kernel is the destination by default.
    let n = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("sending the sock_diag request");
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    More,
    Done,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_ne_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes(b[o..o + 4].try_into().unwrap())
}

/// Parses one datagram of netlink messages, appending listeners.
fn parse_replies(mut buf: &[u8], out: &mut Vec<DiagListener>) -> Result<Parsed> {
    while !buf.is_empty() {
        if buf.len() < NLMSG_HDR {
            bail!("netlink header truncated ({} bytes)", buf.len());
        }
        let len = u32_at(buf, 0) as usize;
        let kind = u16_at(buf, 4);
        if len < NLMSG_HDR || len > buf.len() {
            bail!("netlink message length {len} out of bounds ({} bytes left)", buf.len());
        }
        let body = &buf[NLMSG_HDR..len];
        match kind {
            NLMSG_DONE => return Ok(Parsed::Done),
            NLMSG_ERROR => {
                if body.len() < 4 {
                    bail!("netlink error message truncated");
                }
                let errno = -(u32_at(body, 0) as i32);
                if errno == 0 {
                    return Ok(Parsed::Done);
                }
                return Err(std::io::Error::from_raw_os_error(errno)).context("kernel refused the sock_diag request");
            }
            SOCK_DIAG_BY_FAMILY => out.push(parse_msg(body)?),
            _ => {}
        }
        // Messages are 4-byte aligned.
        let step = (len + 3) & !3;
        buf = &buf[step.min(buf.len())..];
    }
    Ok(Parsed::More)
}

/// Parses a struct inet_diag_msg and its attributes.
fn parse_msg(b: &[u8]) -> Result<DiagListener> {
    if b.len() < DIAG_MSG {
        bail!("inet_diag_msg truncated ({} bytes)", b.len());
    }
    let family = b[0];
    // inet_diag_sockid at 4: sport, dport (be16), src[16], dst[16], if, cookie[2].
    let port = u16::from_be_bytes([b[4], b[5]]);
    let src: [u8; 16] = b[8..24].try_into().unwrap();
    let cookie = u32_at(b, 44) as u64 | (u32_at(b, 48) as u64) << 32;
    let uid = u32_at(b, 64);
    let inode = u32_at(b, 68) as u64;
    let addr = match family as i32 {
        libc::AF_INET => IpAddr::V4(Ipv4Addr::new(src[0], src[1], src[2], src[3])),
        libc::AF_INET6 => IpAddr::V6(Ipv6Addr::from(src)),
        f => bail!("unexpected address family {f} in a sock_diag reply"),
    };
    let mut ipv6only = false;
    let mut attrs = &b[DIAG_MSG..];
    while attrs.len() >= 4 {
        let alen = u16_at(attrs, 0) as usize;
        let atype = u16_at(attrs, 2);
        if alen < 4 || alen > attrs.len() {
            bail!("sock_diag attribute length {alen} out of bounds");
        }
        if atype == INET_DIAG_SKV6ONLY && alen >= 5 {
            ipv6only = attrs[4] != 0;
        }
        attrs = &attrs[((alen + 3) & !3).min(attrs.len())..];
    }
    Ok(DiagListener { addr, port, ipv6only, cookie, inode, uid })
}

/// Maps socket inodes to their owning process (pid, comm) from /proc. Only
/// the inodes asked for; processes that vanish mid-scan are skipped.
pub fn owners(inodes: &[u64]) -> HashMap<u64, (u32, String)> {
    let mut found = HashMap::new();
    if inodes.is_empty() {
        return found;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else { return found };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let Some(inode) = target.to_str().and_then(|t| t.strip_prefix("socket:[")).and_then(|t| t.strip_suffix(']')).and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            if inodes.contains(&inode) && !found.contains_key(&inode) {
                let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default().trim_end().to_string();
                found.insert(inode, (pid, comm));
            }
        }
        if found.len() == inodes.len() {
            break;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(family: u8, port: u16, src: [u8; 16], cookie: u64, inode: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; DIAG_MSG];
        b[0] = family;
        b[1] = TCP_LISTEN as u8;
        b[4..6].copy_from_slice(&port.to_be_bytes());
        b[8..24].copy_from_slice(&src);
        b[44..48].copy_from_slice(&(cookie as u32).to_ne_bytes());
        b[48..52].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        b[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        b[68..72].copy_from_slice(&inode.to_ne_bytes());
        for (t, v) in attrs {
            let len = 4 + v.len();
            b.extend_from_slice(&(len as u16).to_ne_bytes());
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
        let v4msg = nl(SOCK_DIAG_BY_FAMILY, &msg(libc::AF_INET as u8, 8080, v4([127, 0, 0, 1]), 0x1_0000_0002, 77, &[]));
        let v6msg = nl(
            SOCK_DIAG_BY_FAMILY,
            &msg(libc::AF_INET6 as u8, 443, Ipv6Addr::LOCALHOST.octets(), 5, 78, &[(99, &[1, 2, 3]), (INET_DIAG_SKV6ONLY, &[1])]),
        );
        let done = nl(NLMSG_DONE, &[0, 0, 0, 0]);
        let err = nl(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes());
        let both = [v4msg.clone(), v6msg.clone()].concat();
        struct Case {
            name: &'static str,
            wire: Vec<u8>,
            want: std::result::Result<(Parsed, usize), &'static str>,
        }
        let cases = [
            Case { name: "one v4", wire: v4msg.clone(), want: Ok((Parsed::More, 1)) },
            Case { name: "two then done", wire: [both.clone(), done.clone()].concat(), want: Ok((Parsed::Done, 2)) },
            Case { name: "done only", wire: done.clone(), want: Ok((Parsed::Done, 0)) },
            Case { name: "error", wire: err, want: Err("refused") },
            Case { name: "short header", wire: v4msg[..8].to_vec(), want: Err("header truncated") },
            Case { name: "length beyond data", wire: v4msg[..40].to_vec(), want: Err("out of bounds") },
            Case { name: "short body", wire: nl(SOCK_DIAG_BY_FAMILY, &[0u8; 20]), want: Err("inet_diag_msg truncated") },
        ];
        for c in cases {
            let mut out = Vec::new();
            match (parse_replies(&c.wire, &mut out), c.want) {
                (Ok(p), Ok((wp, n))) => {
                    assert_eq!(p, wp, "{}", c.name);
                    assert_eq!(out.len(), n, "{}", c.name);
                }
                (Err(e), Err(w)) => assert!(format!("{e:#}").contains(w), "{}: {e:#}", c.name),
                (got, want) => panic!("{}: got {got:?} want {want:?}", c.name),
            }
        }
        let mut out = Vec::new();
        parse_replies(&both, &mut out).unwrap();
        assert_eq!(
            out,
            vec![
                DiagListener { addr: "127.0.0.1".parse().unwrap(), port: 8080, ipv6only: false, cookie: 0x1_0000_0002, inode: 77, uid: 1000 },
                DiagListener { addr: "::1".parse().unwrap(), port: 443, ipv6only: true, cookie: 5, inode: 78, uid: 1000 },
            ]
        );
    }
}
