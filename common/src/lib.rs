//! The ABI between the eBPF program (`agent-ebpf`) and the agent: the one event
//! type that crosses the ring buffer (for TCP listeners and UDP servers alike,
//! the protocol a field), the map of explicitly bound UDP sockets both sides
//! read, and the names of the maps and read-only globals the agent fills in
//! at load time. `no_std` so both sides share it.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// A socket entered the listening state and `listen()` returned success.
pub const EVENT_LISTEN: u8 = 1;
/// A listening socket stopped listening (closed, shut down, owner killed).
pub const EVENT_UNLISTEN: u8 = 2;
/// A socket entered the listening state outside listen(2) (an io_uring
/// listen, a listener the kernel opens itself), where no syscall exit can
/// confirm it succeeded: the agent confirms it with a snapshot.
pub const EVENT_LISTEN_UNCONFIRMED: u8 = 3;
/// A UDP server may have stopped being one: it began a connect() outside
/// connect(2) (io_uring), where no syscall exit tells whether it succeeded.
/// The agent checks with a snapshot.
pub const EVENT_UNLISTEN_UNCONFIRMED: u8 = 4;

/// `IPPROTO_TCP`: a listener (listen() succeeded).
pub const IPPROTO_TCP: u8 = 6;
/// `IPPROTO_UDP`: a server (bound to a port it named, not connected).
pub const IPPROTO_UDP: u8 = 17;

/// `SOCK_BINDPORT_LOCK` in `sk_userlocks`: bind() was given the port (the
/// kernel did not choose it). 8, include/net/sock.h; 4 is
/// `SOCK_BINDADDR_LOCK`, set by a bind to any address but the wildcard.
pub const SOCK_BINDPORT_LOCK: u8 = 8;

/// `AF_INET` as the kernel spells it.
pub const AF_INET: u16 = 2;
/// `AF_INET6` as the kernel spells it.
pub const AF_INET6: u16 = 10;

/// Ring buffer carrying [`ListenEvent`]s to the agent.
pub const MAP_EVENTS: &str = "EVENTS";
/// One-slot array counting events lost because the ring buffer was full.
pub const MAP_DROPS: &str = "DROPS";
/// Size of the ring buffer in bytes (a power of two, a multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;
/// Hash map: cookie -> [`UdpBound`] of every UDP socket of the watched
/// namespace bound to a port it named, while it lives (see [`UdpBound`]).
pub const MAP_UDP_BOUND: &str = "UDP_BOUND";
/// Entries [`MAP_UDP_BOUND`] holds at most.
pub const UDP_BOUND_ENTRIES: u32 = 65536;

/// A UDP socket bound to a port it named (`bind()` with a port, which sets
/// [`SOCK_BINDPORT_LOCK`]): the value of [`MAP_UDP_BOUND`], keyed by the
/// socket's cookie. The eBPF program adds it at bind and removes it at close;
/// the agent adds the ones it finds in a snapshot whose port the kernel
/// cannot have chosen, so their close is reported too. Such a socket is a
/// server while it is not connected.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UdpBound {
    /// The bound port, host order.
    pub port: u16,
    /// 1 while the socket is connected (a client): its UNLISTEN was sent.
    pub connected: u8,
    /// Padding, zero.
    pub _pad: u8,
}

impl UdpBound {
    /// Size of the map value.
    pub const SIZE: usize = core::mem::size_of::<UdpBound>();

    /// The map value's bytes (native order, the `repr(C)` layout).
    pub fn to_bytes(self) -> [u8; 4] {
        let p = self.port.to_ne_bytes();
        [p[0], p[1], self.connected, self._pad]
    }

    /// A map value from its bytes.
    pub fn from_bytes(b: [u8; 4]) -> UdpBound {
        UdpBound { port: u16::from_ne_bytes([b[0], b[1]]), connected: b[2], _pad: b[3] }
    }
}

const _: () = assert!(UdpBound::SIZE == 4);

/// Names of the eBPF programs, one per hook.
pub mod prog {
    /// `tp_btf/inet_sock_set_state`: the tracepoint path's state changes.
    pub const STATE: &str = "listen_state";
    /// `tracepoint/syscalls/sys_enter_listen`: marks a thread inside listen(2).
    pub const SYS_ENTER_LISTEN: &str = "listen_enter";
    /// `tracepoint/syscalls/sys_exit_listen`: confirms a pending listen.
    pub const SYS_EXIT_LISTEN: &str = "listen_exit";
    /// `fexit/inet_csk_listen_start`: the trampoline path's listen.
    pub const LISTEN_START: &str = "listen_start";
    /// `fentry/inet_csk_listen_stop`: the trampoline path's unlisten.
    pub const LISTEN_STOP: &str = "listen_stop";
    /// `fexit/inet_bind`: the trampoline path's UDP bind (IPv4 sockets).
    pub const UDP_BIND: &str = "udp_bind";
    /// `fexit/inet6_bind`: the trampoline path's UDP bind (IPv6 sockets).
    pub const UDP_BIND6: &str = "udp_bind6";
    /// `fexit/__ip4_datagram_connect`: a UDP server connected (IPv4, and
    /// an IPv6 socket connecting to an IPv4 peer).
    pub const UDP_CONNECTED: &str = "udp_connected";
    /// `fexit/__ip6_datagram_connect`: a UDP server connected (IPv6).
    pub const UDP_CONNECTED6: &str = "udp_connected6";
    /// `fexit/udp_disconnect`: a connected UDP socket with a port it named
    /// dissolved its association (connect(AF_UNSPEC)): a server again.
    pub const UDP_DISCONNECTED: &str = "udp_disconnected";
    /// `fentry/udp_lib_unhash`: a UDP socket closes.
    pub const UDP_UNHASH: &str = "udp_unhash";
    /// `cgroup/bind4`: the port an IPv4 bind() asks for, before it runs.
    pub const CG_BIND4: &str = "cg_bind4";
    /// `cgroup/bind6`: the port an IPv6 bind() asks for, before it runs.
    pub const CG_BIND6: &str = "cg_bind6";
    /// `cgroup/post_bind4`: an IPv4 bind() succeeded.
    pub const CG_POST_BIND4: &str = "cg_post_bind4";
    /// `cgroup/post_bind6`: an IPv6 bind() succeeded.
    pub const CG_POST_BIND6: &str = "cg_post_bind6";
    /// `cgroup/connect4`: an IPv4 connect() is about to run.
    pub const CG_CONNECT4: &str = "cg_connect4";
    /// `cgroup/connect6`: an IPv6 connect() is about to run.
    pub const CG_CONNECT6: &str = "cg_connect6";
    /// `cgroup/sock_release`: an inet socket closes.
    pub const CG_RELEASE: &str = "cg_release";
    /// `tracepoint/syscalls/sys_enter_connect`: marks a thread inside connect(2).
    pub const SYS_ENTER_CONNECT: &str = "connect_enter";
    /// `tracepoint/syscalls/sys_exit_connect`: confirms a UDP server's connect.
    pub const SYS_EXIT_CONNECT: &str = "connect_exit";
}

/// Names of the read-only globals (`.rodata`) the agent sets from the running
/// kernel's BTF before loading, so no struct layout is compiled in.
pub mod global {
    /// Only report sockets of this network-namespace inode (0: all).
    pub const NETNS_INUM: &str = "NETNS_INUM";
    /// The same namespace's cookie (`SO_NETNS_COOKIE`), for the cgroup
    /// hooks, which cannot read the socket's namespace (0: all).
    pub const NETNS_COOKIE: &str = "NETNS_COOKIE";
    /// `struct sock_common.skc_family` (u16).
    pub const OFF_FAMILY: &str = "OFF_FAMILY";
    /// `struct sock.sk_protocol`: a u16 since Linux 5.6, an 8-bit field
    /// before.
    pub const OFF_PROTOCOL: &str = "OFF_PROTOCOL";
    /// Bytes to read at [`OFF_PROTOCOL`]: 2 or 1.
    pub const PROTOCOL_SIZE: &str = "PROTOCOL_SIZE";
    /// `struct sock_common.skc_num` (u16, host order).
    pub const OFF_NUM: &str = "OFF_NUM";
    /// `struct sock_common.skc_rcv_saddr` (u32, network order).
    pub const OFF_RCV_SADDR: &str = "OFF_RCV_SADDR";
    /// `struct sock_common.skc_v6_rcv_saddr` (16 bytes), or [`ABSENT`](super::ABSENT).
    pub const OFF_V6_RCV_SADDR: &str = "OFF_V6_RCV_SADDR";
    /// Byte holding the `skc_ipv6only` bit, or [`ABSENT`](super::ABSENT).
    pub const OFF_IPV6ONLY_BYTE: &str = "OFF_IPV6ONLY_BYTE";
    /// Bit of `skc_ipv6only` within that byte.
    pub const IPV6ONLY_BIT: &str = "IPV6ONLY_BIT";
    /// `struct sock_common.skc_net` (pointer to `struct net`).
    pub const OFF_NET: &str = "OFF_NET";
    /// `struct net.ns.inum` (u32).
    pub const OFF_NET_INUM: &str = "OFF_NET_INUM";
    /// `struct tcp_sock` -> `inet_sport` (u16, network order).
    pub const OFF_INET_SPORT: &str = "OFF_INET_SPORT";
    /// Byte of `struct sock` holding `sk_userlocks` (a u8, or a 4-bit
    /// field before Linux 6.2).
    pub const OFF_USERLOCKS_BYTE: &str = "OFF_USERLOCKS_BYTE";
    /// Bit of that byte where `sk_userlocks` starts.
    pub const USERLOCKS_SHIFT: &str = "USERLOCKS_SHIFT";
    /// `struct socket.sk` (pointer to `struct sock`).
    pub const OFF_SOCKET_SK: &str = "OFF_SOCKET_SK";
    /// Parameter count of `inet_csk_listen_start` (2 before Linux 5.19, 1
    /// since): fexit finds the return value right after the parameters. 0 when
    /// the kernel's BTF has no such function.
    pub const LISTEN_START_NARGS: &str = "LISTEN_START_NARGS";
    /// The agent's PID namespace (u64): the device of its nsfs file as the
    /// kernel encodes a `dev_t` (major << 20 | minor). Events name tasks by
    /// their pid in that namespace.
    pub const PIDNS_DEV: &str = "PIDNS_DEV";
    /// The agent's PID namespace (u64): the inode of `/proc/self/ns/pid`.
    /// 0: name tasks by their pid in the root namespace.
    pub const PIDNS_INO: &str = "PIDNS_INO";
}

/// Offset value meaning "the running kernel has no such member".
pub const ABSENT: u32 = u32::MAX;

/// One listen or unlisten, as the eBPF program writes it into the ring buffer:
/// a TCP socket that starts or stops listening, or a UDP socket that starts
/// or stops being a server (see [`UdpBound`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenEvent {
    /// One of the `EVENT_*` kinds.
    pub kind: u8,
    /// 1 when an `AF_INET6` socket has `IPV6_V6ONLY` set.
    pub ipv6only: u8,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Local port in host byte order; 0 when the kernel had not chosen it yet,
    /// or when the event cannot tell whether an IPv6 wildcard socket is
    /// v6-only (the agent resolves both by `cookie` from a snapshot).
    pub port: u16,
    /// The socket's protocol ([`IPPROTO_TCP`] or [`IPPROTO_UDP`]).
    pub proto: u8,
    /// Padding, zero.
    pub _pad: u8,
    /// Inode of the socket's network namespace.
    pub netns: u32,
    /// Thread-group id of the task that made the change, as the agent's PID
    /// namespace sees it; 0 for a task of another PID namespace.
    pub pid: u32,
    /// Padding, zero.
    pub _pad2: u32,
    /// Bound address in network order: IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
    /// Command name of that task, NUL padded.
    pub comm: [u8; 16],
    /// The socket's cookie (as `sock_diag` reports it): identifies the socket.
    pub cookie: u64,
}

impl ListenEvent {
    /// Size of the record in the ring buffer.
    pub const SIZE: usize = core::mem::size_of::<ListenEvent>();

    /// An event with every field zero.
    pub const fn zeroed() -> Self {
        ListenEvent {
            kind: 0,
            ipv6only: 0,
            family: 0,
            port: 0,
            proto: 0,
            _pad: 0,
            netns: 0,
            pid: 0,
            _pad2: 0,
            addr: [0; 16],
            comm: [0; 16],
            cookie: 0,
        }
    }

    /// Reads an event from a ring-buffer record (native byte order, the
    /// `repr(C)` layout), field by field: no unsafe cast, any bytes accepted.
    /// `None` when the record is shorter than an event; longer records (a
    /// newer program) are read up to the fields this build knows.
    pub fn from_bytes(b: &[u8]) -> Option<ListenEvent> {
        if b.len() < Self::SIZE {
            return None;
        }
        let arr = |o: usize| -> [u8; 16] { b[o..o + 16].try_into().expect("16 bytes") };
        let u16_at = |o: usize| u16::from_ne_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        Some(ListenEvent {
            kind: b[0],
            ipv6only: b[1],
            family: u16_at(2),
            port: u16_at(4),
            proto: b[6],
            _pad: b[7],
            netns: u32_at(8),
            pid: u32_at(12),
            _pad2: u32_at(16),
            addr: arr(20),
            comm: arr(36),
            cookie: u64::from_ne_bytes(b[56..64].try_into().expect("8 bytes")),
        })
    }
}

// The layout `from_bytes` reads: a change to the struct must change it too.
const _: () = assert!(ListenEvent::SIZE == 64);
const _: () = assert!(core::mem::offset_of!(ListenEvent, addr) == 20);
const _: () = assert!(core::mem::offset_of!(ListenEvent, comm) == 36);
const _: () = assert!(core::mem::offset_of!(ListenEvent, cookie) == 56);
