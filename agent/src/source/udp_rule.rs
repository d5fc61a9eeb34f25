//! The UDP server rule as a snapshot applies it. A snapshot sees every bound
//! UDP socket that is not connected, but not whether bind() was given its
//! port (a server) or the kernel chose it (a client's autobind at its first
//! sendto, or a bind to port 0). The kernel hooks record every socket that
//! named its port while the agent runs (`UDP_BOUND`); a socket bound before
//! they were attached is judged by its port: one outside the namespace's
//! ephemeral range (`net.ipv4.ip_local_port_range`, which both families
//! use) cannot have been chosen by the kernel. Pure.

use anyhow::{bail, Context, Result};
use hoist_common::UdpBound;
use std::ops::RangeInclusive;

/// What a snapshot makes of one unconnected UDP socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A server the hooks recorded binding to a port it named.
    Recorded,
    /// A server by its port, bound before the hooks were attached: the map
    /// must learn it so its close is reported.
    ByPort,
    /// A client (or one the rule cannot call a server).
    Client,
}

/// Judges an unconnected UDP socket on `port`, given what the hooks
/// recorded for its cookie.
pub fn classify(port: u16, recorded: Option<UdpBound>, ephemeral: &RangeInclusive<u16>) -> Verdict {
    match recorded {
        // Connected once, unconnected now (an association dissolved where
        // no hook saw it): a server again.
        Some(_) => Verdict::Recorded,
        None if port != 0 && !ephemeral.contains(&port) => Verdict::ByPort,
        None => Verdict::Client,
    }
}

/// Reads `ip_local_port_range` ("32768\t60999").
pub fn parse_port_range(text: &str) -> Result<RangeInclusive<u16>> {
    let mut it = text.split_whitespace().map(|n| n.parse::<u16>());
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi)), None) if lo <= hi => Ok(lo..=hi),
        _ => bail!("ip_local_port_range holds {:?}, not two ports low to high", text.trim()),
    }
}

/// The calling thread's namespace's ephemeral port range.
pub fn ephemeral_ports() -> Result<RangeInclusive<u16>> {
    // /proc/sys/net shows the namespace of the thread that opens it.
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    parse_port_range(&text).with_context(|| format!("parsing {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_is_a_server_if_recorded_or_its_port_cannot_be_the_kernels() {
        let range = 32768..=60999;
        let rec = |connected| Some(UdpBound { port: 1, connected, _pad: 0 });
        let cases: &[(&str, u16, Option<UdpBound>, Verdict)] = &[
            ("recorded, outside the range", 53, rec(0), Verdict::Recorded),
            ("recorded, inside the range (WireGuard's 51820)", 51820, rec(0), Verdict::Recorded),
            ("recorded as connected, unconnected now", 51820, rec(1), Verdict::Recorded),
            ("unrecorded, outside the range", 5353, None, Verdict::ByPort),
            ("unrecorded, below the range", 1024, None, Verdict::ByPort),
            ("unrecorded, above the range", 61000, None, Verdict::ByPort),
            ("unrecorded, inside the range: maybe an autobind", 40000, None, Verdict::Client),
            ("unrecorded, the range's first port", 32768, None, Verdict::Client),
            ("unrecorded, the range's last port", 60999, None, Verdict::Client),
        ];
        for (name, port, recorded, want) in cases {
            assert_eq!(classify(*port, *recorded, &range), *want, "{name}");
        }
    }

    #[test]
    fn port_ranges_parse_or_explain() {
        assert_eq!(parse_port_range("32768\t60999\n").unwrap(), 32768..=60999);
        assert_eq!(parse_port_range("1024 1024").unwrap(), 1024..=1024);
        for bad in ["", "1", "2 1", "1 2 3", "a b", "70000 80000"] {
            let e = parse_port_range(bad).unwrap_err();
            assert!(e.to_string().contains("not two ports"), "{bad:?}: {e}");
        }
    }
}
