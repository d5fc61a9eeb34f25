//! `hvsock:<vm-guid|wsl>:<port>` transport: a Windows host reaching the agent
//! in a Hyper-V VM (WSL2's utility VM) over a Hyper-V socket. The guest's
//! vsock port P is the Hyper-V service id `P-FACB-11E6-BD58-64006A7986D3`;
//! Windows dials (VM id, service id) and the guest's kernel hands the
//! connection to whoever listens on vsock port P. `wsl` names the WSL VM,
//! whose id changes at every start: the host resolves it (host/src/discovery.rs)
//! before connecting.
//!
//! The address arithmetic (GUIDs, service ids, the SOCKADDR_HV bytes, error
//! wording) is pure and tested on every OS; only the connect itself is
//! Windows code. Microsoft's `SOCKADDR_HV` and socket options come from
//! windows-sys through `sys/windows.rs`.

use anyhow::{bail, Context, Result};
use std::fmt;
use std::io;
use std::str::FromStr;
use std::time::Duration;

/// How long Windows may take to connect before giving up: a connect to a
/// port nobody listens on can otherwise hang (HVSOCKET_CONNECT_TIMEOUT).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// `AF_HYPERV`.
pub const AF_HYPERV: u16 = 34;
/// `HV_PROTOCOL_RAW`.
pub const HV_PROTOCOL_RAW: i32 = 1;
/// Bytes in a `SOCKADDR_HV`: family, reserved, VM id, service id.
pub const SOCKADDR_HV_LEN: usize = 36;

/// The service ids of Linux vsock ports: the port goes in Data1.
const VSOCK_TEMPLATE: u128 = 0x00000000_facb_11e6_bd58_64006a7986d3;

/// A GUID, held as the number its canonical text spells: Data1 in the top 32
/// bits, then Data2, Data3 and the 8 bytes of Data4.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub u128);

impl Guid {
    /// The Hyper-V service id of the guest's vsock port `port`.
    pub const fn for_vsock_port(port: u32) -> Guid {
        Guid(VSOCK_TEMPLATE | (port as u128) << 96)
    }

    /// The vsock port this service id stands for, if it is one.
    pub const fn vsock_port(self) -> Option<u32> {
        if self.0 & !(0xffff_ffff << 96) == VSOCK_TEMPLATE {
            Some((self.0 >> 96) as u32)
        } else {
            None
        }
    }

    /// The 16 bytes as Windows lays a GUID out in memory: Data1, Data2 and
    /// Data3 little-endian, Data4 in order.
    pub fn to_bytes_le(self) -> [u8; 16] {
        let be = self.0.to_be_bytes();
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&((self.0 >> 96) as u32).to_le_bytes());
        b[4..6].copy_from_slice(&((self.0 >> 80) as u16).to_le_bytes());
        b[6..8].copy_from_slice(&((self.0 >> 64) as u16).to_le_bytes());
        b[8..].copy_from_slice(&be[8..]);
        b
    }
}

impl FromStr for Guid {
    type Err = anyhow::Error;

    /// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, braces optional, any case.
    fn from_str(s: &str) -> Result<Guid> {
        let inner = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')).unwrap_or(s);
        let groups: Vec<&str> = inner.split('-').collect();
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        let hex = groups.iter().all(|g| g.bytes().all(|c| c.is_ascii_hexdigit()));
        if lens != [8, 4, 4, 4, 12] || !hex {
            bail!("{s:?} is not a GUID (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
        }
        Ok(Guid(u128::from_str_radix(&groups.concat(), 16)?))
    }
}

/// Upper case without braces, as `wslinfo --vm-id` and the registry print it.
impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        write!(
            f,
            "{:08X}-{:04X}-{:04X}-{:04X}-{:012X}",
            n >> 96,
            (n >> 80) & 0xffff,
            (n >> 64) & 0xffff,
            (n >> 48) & 0xffff,
            n & 0xffff_ffff_ffff
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The VM an `hvsock:` address names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HvVm {
    /// The WSL2 utility VM, found at run time.
    Wsl,
    /// A VM by its id.
    Id(Guid),
}

impl fmt::Display for HvVm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HvVm::Wsl => f.write_str("wsl"),
            HvVm::Id(g) => g.fmt(f),
        }
    }
}

/// Parses what follows `hvsock:` in `whole`.
pub(super) fn parse(whole: &str, rest: &str) -> Result<(HvVm, u32)> {
    let (vm, port) = rest
        .rsplit_once(':')
        .with_context(|| format!("{whole:?}: expected hvsock:<vm-guid|wsl>:<port>"))?;
    let vm = if vm.eq_ignore_ascii_case("wsl") {
        HvVm::Wsl
    } else {
        HvVm::Id(vm.parse().with_context(|| {
            format!("{whole:?}: bad VM id: expected hvsock:<vm-guid|wsl>:<port>")
        })?)
    };
    Ok((vm, super::parse_port(whole, port)?))
}

/// A `SOCKADDR_HV` as bytes: family 34 (u16, little-endian), reserved 0, the
/// VM id and the service id in Windows' GUID layout.
pub fn sockaddr_hv_bytes(vm: Guid, service: Guid) -> [u8; SOCKADDR_HV_LEN] {
    let mut b = [0u8; SOCKADDR_HV_LEN];
    b[..2].copy_from_slice(&AF_HYPERV.to_le_bytes());
    b[4..20].copy_from_slice(&vm.to_bytes_le());
    b[20..].copy_from_slice(&service.to_bytes_le());
    b
}

/// One line saying what a failed Hyper-V connect means and what to do.
pub fn explain(e: &io::Error, vm: Guid, port: u32) -> String {
    let agent = format!("is hoist-agent running there with --listen vsock:any:{port}?");
    match e.raw_os_error() {
        // WSAEACCES
        Some(10013) => format!(
            "access denied to VM {vm}: it belongs to another user (a WSL VM admits only the user who started it, and SYSTEM)"
        ),
        // WSAETIMEDOUT
        Some(10060) => format!(
            "no answer from vsock port {port} in VM {vm} within {}s: {agent}",
            CONNECT_TIMEOUT.as_secs()
        ),
        // WSAECONNREFUSED
        Some(10061) => format!("VM {vm} refused vsock port {port}: {agent}"),
        // WSAEADDRNOTAVAIL, WSAENETUNREACH, WSAEHOSTDOWN, WSAEHOSTUNREACH
        Some(10049 | 10051 | 10064 | 10065) => format!(
            "VM {vm} is not running (VM ids change at every start; for WSL use hvsock:wsl:{port})"
        ),
        // WSAEPROTONOSUPPORT, WSAESOCKTNOSUPPORT, WSAEAFNOSUPPORT
        Some(10043 | 10044 | 10047) => format!(
            "this system has no Hyper-V sockets (AF_HYPERV; Windows 10 1709 or later with WSL2 or Hyper-V): {e}"
        ),
        _ => format!("connecting to vsock port {port} in VM {vm}: {e}"),
    }
}

/// The error for an address that needs discovery first, or (a VM id off
/// Windows) another OS.
pub(super) fn cannot_connect(vm: HvVm, port: u32) -> anyhow::Error {
    match vm {
        HvVm::Wsl => anyhow::anyhow!(
            "hvsock:wsl:{port} names the WSL VM, which hoist-host looks up before connecting; no WSL VM found yet"
        ),
        HvVm::Id(_) => anyhow::anyhow!(
            "hvsock: Hyper-V sockets exist only on Windows; a Linux host reaches its guest with vsock:<cid>:<port>"
        ),
    }
}

/// Connects to vsock port `port` in VM `vm`: a blocking connect (bounded by
/// the Hyper-V connect timeout) on tokio's blocking pool, then the socket
/// joins tokio as a stream. It is no TCP socket: nothing TCP-only (no
/// nodelay, no peer_addr) is called on it.
#[cfg(windows)]
pub(super) async fn connect(vm: Guid, port: u32) -> Result<tokio::net::TcpStream> {
    let std = tokio::task::spawn_blocking(move || connect_blocking(vm, port))
        .await
        .context("the hvsock connect thread")?
        .map_err(|e| anyhow::anyhow!(explain(&e, vm, port)))?;
    Ok(tokio::net::TcpStream::from_std(std)?)
}

#[cfg(windows)]
fn connect_blocking(vm: Guid, port: u32) -> io::Result<std::net::TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(
        Domain::from(i32::from(AF_HYPERV)),
        Type::STREAM,
        Some(Protocol::from(HV_PROTOCOL_RAW)),
    )?;
    crate::sys::set_hv_connect_timeout(&s, CONNECT_TIMEOUT)?;
    s.connect(&crate::sys::hv_sockaddr(vm, Guid::for_vsock_port(port)))?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Addr;

    const WSL_LIKE: u128 = 0x3a1b_4c2d_5e6f_4711_8899_aabb_ccdd_eeff;

    #[test]
    fn guids_parse_with_or_without_braces_in_any_case_and_print_upper_case() {
        let g = Guid(WSL_LIKE);
        let ok = [
            "3A1B4C2D-5E6F-4711-8899-AABBCCDDEEFF",
            "3a1b4c2d-5e6f-4711-8899-aabbccddeeff",
            "{3a1b4c2d-5E6F-4711-8899-AABBccddeeff}",
        ];
        for s in ok {
            assert_eq!(s.parse::<Guid>().unwrap(), g, "{s}");
        }
        assert_eq!(g.to_string(), "3A1B4C2D-5E6F-4711-8899-AABBCCDDEEFF");
        assert_eq!(Guid(1).to_string(), "00000000-0000-0000-0000-000000000001");
        let bad = [
            "",
            "wsl",
            "3A1B4C2D5E6F47118899AABBCCDDEEFF",
            "3A1B4C2D-5E6F-4711-8899-AABBCCDDEEF",
            "3A1B4C2D-5E6F-4711-8899-AABBCCDDEEFFF",
            "3A1B4C2D-5E6F-4711-889-9AABBCCDDEEFF",
            "3A1B4C2D-5E6F-4711-8899-AABBCCDDEEFG",
            "{3A1B4C2D-5E6F-4711-8899-AABBCCDDEEFF",
            "+A1B4C2D-5E6F-4711-8899-AABBCCDDEEFF",
        ];
        for s in bad {
            let e = s.parse::<Guid>().unwrap_err();
            assert!(format!("{e:#}").contains("is not a GUID"), "{s}: {e:#}");
        }
    }

    #[test]
    fn vsock_ports_are_service_ids_with_the_port_in_data1() {
        let cases: &[(u32, &str)] = &[
            (0, "00000000-FACB-11E6-BD58-64006A7986D3"),
            (1023, "000003FF-FACB-11E6-BD58-64006A7986D3"),
            (1024, "00000400-FACB-11E6-BD58-64006A7986D3"),
            (u32::MAX, "FFFFFFFF-FACB-11E6-BD58-64006A7986D3"),
        ];
        for (port, text) in cases {
            let g = Guid::for_vsock_port(*port);
            assert_eq!(g.to_string(), *text);
            assert_eq!(text.parse::<Guid>().unwrap().vsock_port(), Some(*port));
        }
        assert_eq!(Guid(WSL_LIKE).vsock_port(), None);
        assert_eq!(
            "000003FF-FACB-11E6-BD58-64006A7986D4".parse::<Guid>().unwrap().vsock_port(),
            None
        );
    }

    #[test]
    fn sockaddr_hv_is_family_reserved_and_two_mixed_endian_guids() {
        let vm: Guid = "01020304-0506-0708-090A-0B0C0D0E0F10".parse().unwrap();
        let b = sockaddr_hv_bytes(vm, Guid::for_vsock_port(1024));
        let want: [u8; SOCKADDR_HV_LEN] = [
            34, 0, // AF_HYPERV, little-endian
            0, 0, // reserved
            4, 3, 2, 1, 6, 5, 8, 7, 9, 10, 11, 12, 13, 14, 15, 16, // VmId
            0x00, 0x04, 0, 0, 0xcb, 0xfa, 0xe6, 0x11, 0xbd, 0x58, 0x64, 0x00, 0x6a, 0x79, 0x86,
            0xd3, // ServiceId: port 1024 in Data1
        ];
        assert_eq!(b, want);
    }

    #[test]
    fn hvsock_addresses_parse_print_or_explain() {
        let g = Guid(WSL_LIKE);
        let ok: &[(&str, Addr, &str)] = &[
            ("hvsock:wsl:1024", Addr::Hvsock { vm: HvVm::Wsl, port: 1024 }, "hvsock:wsl:1024"),
            ("hvsock:WSL:5", Addr::Hvsock { vm: HvVm::Wsl, port: 5 }, "hvsock:wsl:5"),
            (
                "hvsock:3a1b4c2d-5e6f-4711-8899-aabbccddeeff:1024",
                Addr::Hvsock { vm: HvVm::Id(g), port: 1024 },
                "hvsock:3A1B4C2D-5E6F-4711-8899-AABBCCDDEEFF:1024",
            ),
            (
                "hvsock:{3A1B4C2D-5E6F-4711-8899-AABBCCDDEEFF}:1",
                Addr::Hvsock { vm: HvVm::Id(g), port: 1 },
                "hvsock:3A1B4C2D-5E6F-4711-8899-AABBCCDDEEFF:1",
            ),
        ];
        for (s, want, printed) in ok {
            let a = s.parse::<Addr>().unwrap();
            assert_eq!(&a, want, "{s}");
            assert_eq!(a.to_string(), *printed);
            assert_eq!(printed.parse::<Addr>().unwrap(), *want);
        }
        let bad: &[(&str, &str)] = &[
            ("hvsock:wsl", "expected hvsock:<vm-guid|wsl>:<port>"),
            ("hvsock:1024", "expected hvsock:<vm-guid|wsl>:<port>"),
            ("hvsock:wsl:x", "bad port"),
            ("hvsock:wsl:-1", "bad port"),
            ("hvsock:3a1b4c2d:1024", "bad VM id"),
            ("hvsock::1024", "bad VM id"),
        ];
        for (s, want) in bad {
            let e = s.parse::<Addr>().unwrap_err();
            assert!(format!("{e:#}").contains(want), "{s}: {e:#}");
        }
    }

    #[test]
    fn connect_errors_say_what_to_do_in_one_line() {
        let g = Guid(WSL_LIKE);
        let cases: &[(i32, &str)] = &[
            (10013, "belongs to another user"),
            (10060, "is hoist-agent running there with --listen vsock:any:1024?"),
            (10061, "refused vsock port 1024"),
            (10065, "is not running"),
            (10051, "is not running"),
            (10047, "no Hyper-V sockets"),
            (10054, "connecting to vsock port 1024 in VM 3A1B4C2D-5E6F-4711-8899-AABBCCDDEEFF"),
        ];
        for (code, want) in cases {
            let msg = explain(&io::Error::from_raw_os_error(*code), g, 1024);
            assert!(msg.contains(want), "{code}: {msg}");
            assert!(!msg.contains('\n'), "{code}: one line: {msg}");
        }
    }

    #[cfg(not(windows))]
    #[tokio::test]
    async fn off_windows_a_connect_says_hvsock_is_windows_only() {
        let addr = Addr::Hvsock { vm: HvVm::Id(Guid(WSL_LIKE)), port: 1024 };
        let e = crate::transport::connect(&addr).await.unwrap_err();
        assert!(format!("{e:#}").contains("exist only on Windows"), "{e:#}");
        let e = crate::transport::connect(&"hvsock:wsl:1".parse().unwrap()).await.unwrap_err();
        assert!(format!("{e:#}").contains("looks up before connecting"), "{e:#}");
    }

    /// Under Wine (no AF_HYPERV) and on a Windows without that VM alike, a
    /// connect fails in bounded time with one explaining line.
    #[cfg(windows)]
    #[tokio::test]
    async fn a_connect_to_a_vm_that_is_not_there_fails_with_one_line() {
        let addr = Addr::Hvsock { vm: HvVm::Id(Guid(WSL_LIKE)), port: 1024 };
        let r = tokio::time::timeout(CONNECT_TIMEOUT * 5, crate::transport::connect(&addr))
            .await
            .expect("the connect is bounded");
        let e = r.expect_err("no such VM");
        let msg = format!("{e:#}");
        assert!(msg.contains("hvsock:3A1B4C2D-5E6F-4711-8899-AABBCCDDEEFF:1024"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
}
