//! The ABI between the eBPF program (`agent-ebpf`) and the agent: the one event
//! type that crosses the ring buffer, and the names of the maps and read-only
//! globals the agent fills in at load time. `no_std` so both sides share it.
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

/// `IPPROTO_TCP`: the only protocol reported as a listener.
pub const IPPROTO_TCP: u8 = 6;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u8 = 17;

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
}

/// Names of the read-only globals (`.rodata`) the agent sets from the running
/// kernel's BTF before loading, so no struct layout is compiled in.
pub mod global {
    /// Only report sockets of this network-namespace inode (0: all).
    pub const NETNS_INUM: &str = "NETNS_INUM";
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

/// One listen or unlisten, as the eBPF program writes it into the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenEvent {
    /// [`EVENT_LISTEN`] or [`EVENT_UNLISTEN`].
    pub kind: u8,
    /// 1 when an `AF_INET6` socket has `IPV6_V6ONLY` set.
    pub ipv6only: u8,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Local port in host byte order; 0 when the kernel had not chosen it yet
    /// (the agent resolves it by `cookie`).
    pub port: u16,
    /// The socket's protocol ([`IPPROTO_TCP`]).
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
