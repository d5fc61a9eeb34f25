//! UDP servers: a UDP socket bound to a port it named (bind() with a port,
//! which sets `SOCK_BINDPORT_LOCK`; a port the kernel chooses, at bind(:0) or
//! at the autobind of a first sendto or connect, never counts) and not
//! connected. Every such socket of the watched namespace has an entry in
//! `UDP_BOUND` from its bind to its close; the events say when it starts
//! being a server (bind; a connected one that dissolves its association) and
//! when it stops (close; a connect, which makes it a client). A client never
//! enters the map, so its binds, connects and closes report nothing.
//!
//! Two hook sets, as for TCP:
//! - trampoline: fexit on `inet_bind`/`inet6_bind` (every bind: bind(2),
//!   io_uring's, the kernel's) reads `sk_userlocks`; fexit on
//!   `__ip4_datagram_connect`/`__ip6_datagram_connect` (every UDP connect
//!   goes through one of them) and on `udp_disconnect`; fentry on
//!   `udp_lib_unhash`, which every UDP close runs.
//! - cgroup (with the tracepoint set): `cgroup/bind4|6` see the port bind()
//!   asks for before it runs, `cgroup/post_bind4|6` see it succeed;
//!   `cgroup/sock_release` sees the close; `cgroup/connect4|6` see a connect
//!   begin, and `syscalls/sys_exit_connect` whether it succeeded (a connect
//!   outside connect(2), io_uring's, is reported unconfirmed: the agent
//!   checks a snapshot). These hooks cannot see a dissolved association, nor
//!   whether an IPv6 wildcard socket is v6-only: such a bind is reported
//!   with port 0 and resolved from a snapshot. Attached to the cgroup v2
//!   root, they see every process's sockets; they only ever allow.

use crate::{count_drop, ctx_slot, emit, global, load, sport_num, NETNS_INUM, PIDNS_INO};
use aya_ebpf::bindings::{bpf_sock, bpf_sock_addr, BPF_F_NO_PREALLOC, BPF_NOEXIST};
use aya_ebpf::helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie};
use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid};
use aya_ebpf::macros::{cgroup_sock, cgroup_sock_addr, fentry, fexit, map, tracepoint};
use aya_ebpf::maps::{HashMap, LruHashMap};
use aya_ebpf::programs::{
    FEntryContext, FExitContext, SockAddrContext, SockContext, TracePointContext,
};
use aya_ebpf::EbpfContext;
use core::ptr::read_volatile;
use hoist_common::{
    ListenEvent, UdpBound, ABSENT, AF_INET, AF_INET6, EVENT_LISTEN, EVENT_UNLISTEN,
    EVENT_UNLISTEN_UNCONFIRMED, IPPROTO_UDP, SOCK_BINDPORT_LOCK, UDP_BOUND_ENTRIES,
};

/// Cookie -> the port of every UDP socket bound to a port it named. Not
/// preallocated: it costs what it holds.
#[map(name = "UDP_BOUND")]
static UDP_BOUND: HashMap<u64, UdpBound> =
    HashMap::with_max_entries(UDP_BOUND_ENTRIES, BPF_F_NO_PREALLOC);

/// Cookies whose bind() in flight named a port (cgroup path: from
/// `cgroup/bind4|6` to `cgroup/post_bind4|6`).
#[map(name = "UDP_BIND_NAMED")]
static UDP_BIND_NAMED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(4096, 0);

/// Threads inside connect(2).
#[map(name = "IN_CONNECT")]
static IN_CONNECT: LruHashMap<u64, u8> = LruHashMap::with_max_entries(4096, 0);

/// The UDP server a thread inside connect(2) is connecting, by thread.
#[map(name = "PENDING_CONNECT")]
static PENDING_CONNECT: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

#[no_mangle]
static NETNS_COOKIE: u64 = 0;
#[no_mangle]
static OFF_USERLOCKS_BYTE: u32 = ABSENT;
#[no_mangle]
static USERLOCKS_SHIFT: u32 = 0;
#[no_mangle]
static OFF_SOCKET_SK: u32 = ABSENT;

/// What cgroup hooks return: the operation goes on. They never deny.
const ALLOW: i32 = 1;

/// The initial PID namespace's inode (`PROC_PID_INIT_INO`, fixed by the
/// kernel).
const PID_INIT_INO: u64 = 0xEFFF_FFFC;

/// The running task's pid as the agent names it, in hooks that may lack
/// `bpf_get_ns_current_pid_tgid` (cgroup programs before Linux 6.10): the
/// global pid when the agent is in the initial PID namespace, else 0
/// (unknown). `PIDNS_INO` is read-only, so the verifier sees one branch.
#[inline(always)]
fn plain_tgid() -> u32 {
    if global(&PIDNS_INO) == PID_INIT_INO {
        (bpf_get_current_pid_tgid() >> 32) as u32
    } else {
        0
    }
}

/// An event for the task running now; the caller fills in the socket.
#[inline(always)]
fn event(kind: u8, family: u16, cookie: u64) -> ListenEvent {
    let mut ev = ListenEvent::zeroed();
    ev.kind = kind;
    ev.proto = IPPROTO_UDP;
    ev.family = family;
    ev.cookie = cookie;
    ev.netns = global(&NETNS_INUM);
    ev.pid = plain_tgid();
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    ev
}

/// Records a server and reports it. A full map is a lost event: counted, so
/// the agent resyncs (and the snapshot finds it by its port, if it can).
#[inline(always)]
fn add_server<C: EbpfContext>(ctx: &C, ev: &ListenEvent, port: u16) {
    let bound = UdpBound { port, connected: 0, _pad: 0 };
    if UDP_BOUND.insert(ev.cookie, bound, BPF_NOEXIST as u64).is_err() {
        // Present already: this socket was reported (a second hook on one
        // bind); or the map is full.
        // SAFETY: a map value pointer valid for this program run.
        if unsafe { UDP_BOUND.get(ev.cookie) }.is_none() {
            count_drop();
        }
        return;
    }
    emit(ctx, ev);
}

/// The socket `cookie` closes: if it was a server, it stops being one.
#[inline(always)]
fn closing<C: EbpfContext>(ctx: &C, cookie: u64, family: u16) {
    // SAFETY: a map value pointer valid for this program run.
    let Some(bound) = (unsafe { UDP_BOUND.get(cookie) }).copied() else { return };
    // Whoever removes the entry reports it (a second hook on one close
    // finds it gone).
    if UDP_BOUND.remove(cookie).is_err() || bound.connected != 0 {
        return;
    }
    let mut ev = event(EVENT_UNLISTEN, family, cookie);
    ev.port = bound.port;
    emit(ctx, &ev);
}

/// The server `cookie` connected: a client now (reported once).
#[inline(always)]
fn connected<C: EbpfContext>(ctx: &C, cookie: u64, family: u16) {
    let Some(bound) = UDP_BOUND.get_ptr_mut(cookie) else { return };
    // SAFETY: a map value of a not-preallocated map, valid for this run;
    // the socket's own lock serialises its connects.
    let port = unsafe {
        if (*bound).connected != 0 {
            return;
        }
        (*bound).connected = 1;
        (*bound).port
    };
    let mut ev = event(EVENT_UNLISTEN, family, cookie);
    ev.port = port;
    emit(ctx, &ev);
}

// ---- trampoline path ----

/// Whether `sk` is a UDP socket of the watched namespace; its family.
#[inline(always)]
unsafe fn udp_family(sk: *const u8) -> Option<u16> {
    crate::watched_sock(sk, IPPROTO_UDP).map(|(family, _)| family)
}

/// Whether bind() was given `sk`'s port.
#[inline(always)]
unsafe fn port_named(sk: *const u8) -> bool {
    let byte: u8 = load(sk, global(&OFF_USERLOCKS_BYTE));
    (byte >> (global(&USERLOCKS_SHIFT) & 7)) & SOCK_BINDPORT_LOCK != 0
}

/// Reports `sk` as a server if it is a UDP socket of the watched namespace
/// bound to a port it named.
#[inline(always)]
unsafe fn server_bound<C: EbpfContext>(ctx: &C, sk: *const u8) {
    if sk.is_null() || udp_family(sk).is_none() || !port_named(sk) {
        return;
    }
    // The same reading as a listener's: address, v6-only, netns, owner.
    if let Some(mut ev) = crate::describe_as(sk, EVENT_LISTEN, IPPROTO_UDP) {
        ev.port = sport_num(sk);
        add_server(ctx, &ev, ev.port);
    }
}

/// A bind that succeeded: `inet_bind` and `inet6_bind` both take
/// (struct socket *, struct sockaddr *, int), the return value following the
/// three parameters (the agent checks the prototypes).
#[inline(always)]
fn bind_returned(ctx: &FExitContext) -> i32 {
    if ctx_slot::<24>(ctx) as i32 != 0 {
        return 0;
    }
    let sock: *const u8 = ctx.arg(0);
    // SAFETY: sock is the BTF-typed argument; loads are verifier-checked.
    unsafe {
        let sk: *const u8 = load(sock, global(&OFF_SOCKET_SK));
        server_bound(ctx, sk);
    }
    0
}

#[fexit(function = "inet_bind")]
pub fn udp_bind(ctx: FExitContext) -> i32 {
    bind_returned(&ctx)
}

#[fexit(function = "inet6_bind")]
pub fn udp_bind6(ctx: FExitContext) -> i32 {
    bind_returned(&ctx)
}

/// A connect that succeeded on a socket of the map.
#[inline(always)]
fn datagram_connected(ctx: &FExitContext) -> i32 {
    // (struct sock *, struct sockaddr *, int) -> int.
    if ctx_slot::<24>(ctx) as i32 != 0 {
        return 0;
    }
    let sk: *const u8 = ctx.arg(0);
    // SAFETY: as above; the cookie of a socket the map does not hold is
    // looked up and ignored.
    unsafe {
        if let Some(family) = udp_family(sk) {
            connected(ctx, bpf_get_socket_cookie(sk as *mut _), family);
        }
    }
    0
}

#[fexit(function = "__ip4_datagram_connect")]
pub fn udp_connected(ctx: FExitContext) -> i32 {
    datagram_connected(&ctx)
}

#[fexit(function = "__ip6_datagram_connect")]
pub fn udp_connected6(ctx: FExitContext) -> i32 {
    datagram_connected(&ctx)
}

#[fexit(function = "udp_disconnect")]
pub fn udp_disconnected(ctx: FExitContext) -> i32 {
    // udp_disconnect(struct sock *, int) -> int.
    if ctx_slot::<16>(&ctx) as i32 != 0 {
        return 0;
    }
    let sk: *const u8 = ctx.arg(0);
    // SAFETY: as above.
    unsafe {
        if udp_family(sk).is_none() {
            return 0;
        }
        let cookie = bpf_get_socket_cookie(sk as *mut _);
        let Some(bound) = UDP_BOUND.get_ptr_mut(cookie) else { return 0 };
        // A socket whose port the kernel chose loses it here; one that
        // named it keeps it and is a server again.
        if (*bound).connected == 0 || !port_named(sk) {
            return 0;
        }
        (*bound).connected = 0;
        if let Some(mut ev) = crate::describe_as(sk, EVENT_LISTEN, IPPROTO_UDP) {
            ev.port = (*bound).port;
            emit(&ctx, &ev);
        }
    }
    0
}

#[fentry(function = "udp_lib_unhash")]
pub fn udp_unhash(ctx: FEntryContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    // SAFETY: as above.
    unsafe {
        if let Some(family) = udp_family(sk) {
            closing(&ctx, bpf_get_socket_cookie(sk as *mut _), family);
        }
    }
    0
}

// ---- cgroup path ----

/// Whether a cgroup hook's socket is in the watched namespace.
#[inline(always)]
fn watched(ctx: *mut core::ffi::c_void) -> bool {
    // SAFETY: a valid static, read so it is not folded (see `global`).
    let want = unsafe { read_volatile(&NETNS_COOKIE) };
    // SAFETY: the helper takes the program's own context.
    want == 0 || unsafe { bpf_get_netns_cookie(ctx) } == want
}

/// `cgroup/bind4|6`: remembers whether this bind() names a port (and
/// forgets an earlier attempt on the same socket that failed).
#[inline(always)]
fn bind_asked(ctx: &SockAddrContext) -> i32 {
    let a: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: context fields the verifier allows a bind hook to read.
    let (proto, port) = unsafe { (read_volatile(&(*a).protocol), read_volatile(&(*a).user_port)) };
    if proto != IPPROTO_UDP as u32 || !watched(ctx.as_ptr()) {
        return ALLOW;
    }
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // user_port holds the port in network order in its first two bytes.
    if port & 0xffff != 0 {
        let _ = UDP_BIND_NAMED.insert(cookie, 1, 0);
    } else {
        let _ = UDP_BIND_NAMED.remove(cookie);
    }
    ALLOW
}

#[cgroup_sock_addr(bind4)]
pub fn cg_bind4(ctx: SockAddrContext) -> i32 {
    bind_asked(&ctx)
}

#[cgroup_sock_addr(bind6)]
pub fn cg_bind6(ctx: SockAddrContext) -> i32 {
    bind_asked(&ctx)
}

/// `cgroup/post_bind4|6`: the bind succeeded; a UDP socket that named its
/// port is a server.
#[inline(always)]
fn bound(ctx: &SockContext, v6: bool) -> i32 {
    let s: *const bpf_sock = ctx.sock;
    // SAFETY: context fields the verifier allows a post-bind hook to read.
    let proto = unsafe { read_volatile(&(*s).protocol) };
    if proto != IPPROTO_UDP as u32 || !watched(ctx.as_ptr()) {
        return ALLOW;
    }
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if UDP_BIND_NAMED.remove(cookie).is_err() {
        return ALLOW;
    }
    // SAFETY: as above.
    let port = unsafe { read_volatile(&(*s).src_port) } as u16;
    let mut ev = event(EVENT_LISTEN, if v6 { AF_INET6 } else { AF_INET }, cookie);
    ev.port = port;
    if v6 {
        // SAFETY: as above, one 4-byte word at a time.
        let words = unsafe {
            [
                read_volatile(&(*s).src_ip6[0]),
                read_volatile(&(*s).src_ip6[1]),
                read_volatile(&(*s).src_ip6[2]),
                read_volatile(&(*s).src_ip6[3]),
            ]
        };
        let mut i = 0;
        while i < 4 {
            let b = words[i].to_ne_bytes();
            ev.addr[i * 4] = b[0];
            ev.addr[i * 4 + 1] = b[1];
            ev.addr[i * 4 + 2] = b[2];
            ev.addr[i * 4 + 3] = b[3];
            i += 1;
        }
        // Whether a wildcard socket is v6-only is not in this context: the
        // agent takes it (and the port) from a snapshot.
        if words == [0; 4] {
            ev.port = 0;
        }
    } else {
        // SAFETY: as above.
        let a = unsafe { read_volatile(&(*s).src_ip4) }.to_ne_bytes();
        ev.addr[0] = a[0];
        ev.addr[1] = a[1];
        ev.addr[2] = a[2];
        ev.addr[3] = a[3];
    }
    add_server(ctx, &ev, port);
    ALLOW
}

#[cgroup_sock(post_bind4)]
pub fn cg_post_bind4(ctx: SockContext) -> i32 {
    bound(&ctx, false)
}

#[cgroup_sock(post_bind6)]
pub fn cg_post_bind6(ctx: SockContext) -> i32 {
    bound(&ctx, true)
}

#[cgroup_sock(sock_release)]
pub fn cg_release(ctx: SockContext) -> i32 {
    let s: *const bpf_sock = ctx.sock;
    // SAFETY: context fields the verifier allows a release hook to read.
    let (proto, family) = unsafe { (read_volatile(&(*s).protocol), read_volatile(&(*s).family)) };
    if proto == IPPROTO_UDP as u32 {
        // SAFETY: the helper takes the program's own context.
        closing(&ctx, unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }, family as u16);
    }
    ALLOW
}

/// `cgroup/connect4|6`: a server begins a connect. Inside connect(2) its
/// exit says whether it succeeded; elsewhere the agent checks a snapshot.
#[inline(always)]
fn connecting(ctx: &SockAddrContext, family: u16) -> i32 {
    let a: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: context fields the verifier allows a connect hook to read.
    let proto = unsafe { read_volatile(&(*a).protocol) };
    if proto != IPPROTO_UDP as u32 {
        return ALLOW;
    }
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: a map value pointer valid for this program run.
    let Some(bound) = (unsafe { UDP_BOUND.get(cookie) }).copied() else { return ALLOW };
    if bound.connected != 0 {
        return ALLOW;
    }
    let key = bpf_get_current_pid_tgid();
    // SAFETY: as above.
    if unsafe { IN_CONNECT.get(key) }.is_some() {
        let _ = PENDING_CONNECT.insert(key, cookie, 0);
    } else {
        let mut ev = event(EVENT_UNLISTEN_UNCONFIRMED, family, cookie);
        ev.port = bound.port;
        emit(ctx, &ev);
    }
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn cg_connect4(ctx: SockAddrContext) -> i32 {
    connecting(&ctx, AF_INET)
}

#[cgroup_sock_addr(connect6)]
pub fn cg_connect6(ctx: SockAddrContext) -> i32 {
    connecting(&ctx, AF_INET6)
}

#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn connect_enter(_ctx: TracePointContext) -> i32 {
    let _ = IN_CONNECT.insert(bpf_get_current_pid_tgid(), 1, 0);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn connect_exit(ctx: TracePointContext) -> i32 {
    let key = bpf_get_current_pid_tgid();
    let _ = IN_CONNECT.remove(key);
    // SAFETY: a map value pointer valid for this program run.
    let Some(cookie) = (unsafe { PENDING_CONNECT.get(key) }).copied() else { return 0 };
    let _ = PENDING_CONNECT.remove(key);
    // SAFETY: reads the tracepoint record at its fixed layout.
    let ret: i64 = unsafe { ctx.read_at(crate::SYS_EXIT_RET) }.unwrap_or(-1);
    if ret == 0 {
        // The family only names the event; the agent knows the socket.
        connected(&ctx, cookie, 0);
    }
    0
}
