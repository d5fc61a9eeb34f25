//! The kernel side of hoist: sees every successful listen() and every close of
//! a listening TCP socket and writes one `ListenEvent` per change into the
//! `EVENTS` ring buffer. Two hook sets live in this one object; the agent
//! attaches whichever the running kernel allows:
//! - trampoline: fexit on `inet_csk_listen_start` (only a listen that
//!   succeeded, port already chosen) and fentry on `inet_csk_listen_stop`;
//! - tracepoint: `tp_btf/inet_sock_set_state` sees every state change.
//!   A LISTEN inside listen(2) (marked by `syscalls/sys_enter_listen`) is
//!   stashed per thread until `syscalls/sys_exit_listen` confirms listen()
//!   returned 0; a LISTEN -> CLOSE of a stashed socket (a listen() that
//!   failed, or a socket another thread shut down before listen() returned)
//!   reports nothing, any other is an unlisten. Which of the two comes first
//!   is settled by deleting the socket's entry in `PENDING_COOKIE`, an atomic
//!   claim, and the confirming side reserves its ring-buffer slot before it
//!   claims, so its LISTEN is always read before any later UNLISTEN. A
//!   LISTEN outside listen(2) (io_uring, the kernel's own listeners) is
//!   reported at once as unconfirmed: the agent checks it with a snapshot.
//!
//! Only TCP sockets are reported here: SCTP reaches the LISTEN state and DCCP
//! `inet_csk_listen_start` too, and neither may become a TCP forward. UDP
//! servers have hooks of their own in `udp` (both sets), sharing the ring
//! buffer, the socket reads and the globals below.
//!
//! An event names the task that made the change by its pid in the agent's
//! PID namespace (0 for a task of another one) and its command.
//!
//! An event the full ring buffer cannot take is counted in `DROPS`, never
//! lost silently. Struct offsets are read-only globals the agent fills in
//! from the running kernel's BTF; nothing about the layout is compiled in.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so core's atomic types offer no
// fetch_add there; the intrinsic still lowers to the BPF atomic add.
#![feature(core_intrinsics)]
#![allow(internal_features)]
// Inline asm pins a context read to a constant offset (see `listen_start`).
#![feature(asm_experimental_arch)]

use aya_ebpf::bindings::bpf_pidns_info;
use aya_ebpf::helpers::generated::{
    bpf_get_ns_current_pid_tgid, bpf_get_socket_cookie, bpf_skc_to_tcp_sock,
};
use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid};
use aya_ebpf::macros::{btf_tracepoint, fentry, fexit, map, tracepoint};
use aya_ebpf::maps::{Array, LruHashMap, RingBuf};
use aya_ebpf::programs::{BtfTracePointContext, FEntryContext, FExitContext, TracePointContext};
use aya_ebpf::EbpfContext;
use aya_log_ebpf::{debug, warn};
use core::intrinsics::{atomic_xadd, AtomicOrdering};
use core::ptr::read_volatile;

mod udp;
use hoist_common::{
    ListenEvent, ABSENT, AF_INET, AF_INET6, EVENTS_RING_BYTES, EVENT_LISTEN,
    EVENT_LISTEN_UNCONFIRMED, EVENT_UNLISTEN, IPPROTO_TCP,
};

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Events lost to a full ring buffer: one counter every CPU adds to
/// atomically, so a loss is never silent.
#[map(name = "DROPS")]
static DROPS: Array<u64> = Array::with_max_entries(1, 0);

/// Listens seen entering LISTEN, waiting for their listen() to return.
#[map(name = "PENDING")]
static PENDING: LruHashMap<u64, ListenEvent> = LruHashMap::with_max_entries(4096, 0);

/// The cookies of stashed listens: whoever deletes the entry first (the
/// confirming syscall exit, or the socket's LISTEN -> CLOSE) decides.
#[map(name = "PENDING_COOKIE")]
static PENDING_COOKIE: LruHashMap<u64, u8> = LruHashMap::with_max_entries(4096, 0);

/// Threads inside listen(2), between its entry and its exit.
#[map(name = "IN_LISTEN")]
static IN_LISTEN: LruHashMap<u64, u8> = LruHashMap::with_max_entries(4096, 0);

// Read-only globals set by the agent at load (see hoist_common::global). They
// must be plain statics read with read_volatile: the compiler would otherwise
// fold them to these placeholder values.
#[no_mangle]
pub(crate) static NETNS_INUM: u32 = 0;
#[no_mangle]
static OFF_FAMILY: u32 = ABSENT;
#[no_mangle]
static OFF_PROTOCOL: u32 = ABSENT;
#[no_mangle]
static PROTOCOL_SIZE: u32 = 0;
#[no_mangle]
static OFF_NUM: u32 = ABSENT;
#[no_mangle]
static OFF_RCV_SADDR: u32 = ABSENT;
#[no_mangle]
static OFF_V6_RCV_SADDR: u32 = ABSENT;
#[no_mangle]
static OFF_IPV6ONLY_BYTE: u32 = ABSENT;
#[no_mangle]
static IPV6ONLY_BIT: u32 = 0;
#[no_mangle]
static OFF_NET: u32 = ABSENT;
#[no_mangle]
static OFF_NET_INUM: u32 = ABSENT;
#[no_mangle]
static OFF_INET_SPORT: u32 = ABSENT;
#[no_mangle]
static LISTEN_START_NARGS: u32 = 0;
#[no_mangle]
static PIDNS_DEV: u64 = 0;
#[no_mangle]
pub(crate) static PIDNS_INO: u64 = 0;

const TCP_LISTEN: i32 = 10;
const TCP_CLOSE: i32 = 7;

#[inline(always)]
pub(crate) fn global<T: Copy>(g: &'static T) -> T {
    // SAFETY: a valid static; volatile keeps the load from being folded.
    unsafe { read_volatile(g) }
}

/// The current task's thread-group id as the agent's PID namespace sees it
/// (`PIDNS_DEV`/`PIDNS_INO`), so the pid an event names is one the agent's
/// /proc shows. A task whose PID namespace is another one (another WSL
/// distro's, a container's) gets 0: the kernel's helper answers only for
/// tasks of exactly that namespace. Without a namespace set, the root
/// namespace's pid.
#[inline(always)]
fn current_tgid() -> u32 {
    let ino = global(&PIDNS_INO);
    if ino == 0 {
        return (bpf_get_current_pid_tgid() >> 32) as u32;
    }
    let mut ns = bpf_pidns_info { pid: 0, tgid: 0 };
    // SAFETY: `ns` is a stack buffer of the size passed; the helper writes
    // only inside it (zeroes on failure).
    let r = unsafe {
        bpf_get_ns_current_pid_tgid(
            global(&PIDNS_DEV),
            ino,
            &mut ns,
            core::mem::size_of::<bpf_pidns_info>() as u32,
        )
    };
    if r == 0 {
        ns.tgid
    } else {
        0
    }
}

/// A load at a BTF-checked offset from a kernel pointer the verifier knows
/// the type of; the verifier rejects any offset not inside a real member.
#[inline(always)]
pub(crate) unsafe fn load<T: Copy>(base: *const u8, off: u32) -> T {
    read_volatile(base.add(off as usize) as *const T)
}

/// Builds the event for a TCP socket `sk`, or `None` for a socket this agent
/// does not watch (other protocol or family, other network namespace).
#[inline(always)]
unsafe fn describe(sk: *const u8, kind: u8) -> Option<ListenEvent> {
    describe_as(sk, kind, IPPROTO_TCP)
}

/// `sk`'s family and network namespace inode, if it is a socket of
/// `protocol` in a family and the network namespace the agent watches.
#[inline(always)]
pub(crate) unsafe fn watched_sock(sk: *const u8, protocol: u8) -> Option<(u16, u32)> {
    let family: u16 = load(sk, global(&OFF_FAMILY));
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    // The frozen global makes one arm dead code; each reads at a constant
    // size the verifier checks against the member.
    let proto = match global(&PROTOCOL_SIZE) {
        2 => load::<u16>(sk, global(&OFF_PROTOCOL)),
        1 => load::<u8>(sk, global(&OFF_PROTOCOL)) as u16,
        _ => return None,
    };
    if proto != protocol as u16 {
        return None;
    }
    let net: *const u8 = load(sk, global(&OFF_NET));
    if net.is_null() {
        return None;
    }
    let netns: u32 = load(net, global(&OFF_NET_INUM));
    let want = global(&NETNS_INUM);
    if want != 0 && netns != want {
        return None;
    }
    Some((family, netns))
}

/// Builds the event for `sk` if its protocol is `protocol` (and its family and
/// network namespace are watched). The port is the caller's to fill in.
#[inline(always)]
pub(crate) unsafe fn describe_as(sk: *const u8, kind: u8, protocol: u8) -> Option<ListenEvent> {
    let (family, netns) = watched_sock(sk, protocol)?;
    let mut ev = ListenEvent::zeroed();
    ev.kind = kind;
    ev.proto = protocol;
    ev.family = family;
    ev.netns = netns;
    ev.pid = current_tgid();
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    ev.cookie = bpf_get_socket_cookie(sk as *mut _);
    if family == AF_INET {
        let a: [u8; 4] = load(sk, global(&OFF_RCV_SADDR));
        ev.addr[0] = a[0];
        ev.addr[1] = a[1];
        ev.addr[2] = a[2];
        ev.addr[3] = a[3];
    } else {
        let off6 = global(&OFF_V6_RCV_SADDR);
        if off6 == ABSENT {
            return None;
        }
        let words: [u32; 4] =
            [load(sk, off6), load(sk, off6 + 4), load(sk, off6 + 8), load(sk, off6 + 12)];
        let mut i = 0;
        while i < 4 {
            let b = words[i].to_ne_bytes();
            ev.addr[i * 4] = b[0];
            ev.addr[i * 4 + 1] = b[1];
            ev.addr[i * 4 + 2] = b[2];
            ev.addr[i * 4 + 3] = b[3];
            i += 1;
        }
        let byte_off = global(&OFF_IPV6ONLY_BYTE);
        if byte_off != ABSENT {
            let byte: u8 = load(sk, byte_off);
            ev.ipv6only = (byte >> (global(&IPV6ONLY_BIT) & 7)) & 1;
        }
    }
    Some(ev)
}

/// The local port from `inet_sport`, which survives into LISTEN -> CLOSE when
/// `skc_num` of an autobound port is already cleared. It lies beyond
/// `struct sock`, so it is read through the `tcp_sock` view of the socket.
#[inline(always)]
unsafe fn sport(sk: *const u8) -> u16 {
    let tp = bpf_skc_to_tcp_sock(sk as *mut _) as *const u8;
    if tp.is_null() {
        return 0;
    }
    u16::from_be(load::<u16>(tp, global(&OFF_INET_SPORT)))
}

/// The local port in `skc_num` (host order): set once the socket is bound.
#[inline(always)]
pub(crate) unsafe fn sport_num(sk: *const u8) -> u16 {
    load::<u16>(sk, global(&OFF_NUM))
}

#[inline(always)]
pub(crate) fn emit<C: EbpfContext>(ctx: &C, ev: &ListenEvent) {
    let Some(mut slot) = EVENTS.reserve::<ListenEvent>(0) else {
        count_drop();
        warn!(ctx, "hoist: ring buffer full, event for port {} lost", ev.port);
        return;
    };
    slot.write(*ev);
    slot.submit(0);
    debug!(ctx, "hoist: kind {} family {} port {} pid {}", ev.kind, ev.family, ev.port, ev.pid);
}

/// Counts an event the full ring buffer could not take: the agent resyncs.
#[inline(always)]
pub(crate) fn count_drop() {
    if let Some(n) = DROPS.get_ptr_mut(0) {
        // SAFETY: a valid, 8-byte aligned map value. Every CPU adds to it,
        // hence the atomic; its result is unused, so it compiles to the plain
        // atomic add every BPF kernel has (no BPF_FETCH).
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, 1) };
    }
}

// ---- trampoline path ----

/// Reads the 8-byte context slot at `OFF` with the offset in the load
/// instruction itself. Plain Rust lets LLVM merge the arms of `listen_start`
/// into one load from `ctx + (8 or 16)`, a modified context pointer the
/// verifier refuses to dereference.
#[inline(always)]
pub(crate) fn ctx_slot<const OFF: i16>(ctx: &FExitContext) -> u64 {
    let v: u64;
    // SAFETY: a load from the context; the verifier checks OFF against the
    // traced function's BTF prototype.
    unsafe {
        core::arch::asm!(
            "{v} = *(u64 *)({ctx} + {off})",
            v = out(reg) v,
            ctx = in(reg) ctx.as_ptr(),
            off = const OFF,
            options(readonly, nostack, preserves_flags),
        )
    };
    v
}

#[fexit(function = "inet_csk_listen_start")]
pub fn listen_start(ctx: FExitContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    // fexit's context holds the arguments, then the return value; the
    // parameter count changed in 5.19, so it comes from the kernel's BTF. Each
    // arm reads at a constant offset (the verifier refuses a variable one) and
    // the frozen global makes the other arms dead code. The return value is an
    // int: only the low 32 bits of its slot are meaningful.
    let ret = match global(&LISTEN_START_NARGS) {
        1 => ctx_slot::<8>(&ctx),
        2 => ctx_slot::<16>(&ctx),
        _ => return 0,
    } as i32;
    if ret != 0 {
        return 0;
    }
    // SAFETY: sk is the BTF-typed argument; loads are verifier-checked.
    if let Some(mut ev) = unsafe { describe(sk, EVENT_LISTEN) } {
        ev.port = unsafe { load::<u16>(sk, global(&OFF_NUM)) };
        emit(&ctx, &ev);
    }
    0
}

#[fentry(function = "inet_csk_listen_stop")]
pub fn listen_stop(ctx: FEntryContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    // SAFETY: as above.
    if let Some(mut ev) = unsafe { describe(sk, EVENT_UNLISTEN) } {
        ev.port = unsafe { sport(sk) };
        emit(&ctx, &ev);
    }
    0
}

// ---- tracepoint path ----

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn listen_state(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let key = bpf_get_current_pid_tgid();
    if new == TCP_LISTEN {
        // SAFETY: sk is the BTF-typed tracepoint argument.
        if let Some(mut ev) = unsafe { describe(sk, EVENT_LISTEN) } {
            // 0 for an autobind listen: the port is chosen after this point,
            // and the agent resolves it by cookie.
            ev.port = unsafe { load::<u16>(sk, global(&OFF_NUM)) };
            // SAFETY: a map value pointer valid for this program run.
            if unsafe { IN_LISTEN.get(key) }.is_some() {
                let _ = PENDING_COOKIE.insert(ev.cookie, 1, 0);
                let _ = PENDING.insert(key, ev, 0);
            } else {
                // No syscall exit will confirm this one.
                ev.kind = EVENT_LISTEN_UNCONFIRMED;
                emit(&ctx, &ev);
            }
        }
    } else if old == TCP_LISTEN && new == TCP_CLOSE {
        // SAFETY: as above.
        if let Some(mut ev) = unsafe { describe(sk, EVENT_UNLISTEN) } {
            // A stashed listen ends before anyone heard of it: a listen()
            // that failed (EADDRINUSE), or a socket another thread shut down
            // before listen() returned. Its exit will find the claim gone.
            if PENDING_COOKIE.remove(ev.cookie).is_ok() {
                return 0;
            }
            ev.port = unsafe { sport(sk) };
            emit(&ctx, &ev);
        }
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_listen")]
pub fn listen_enter(_ctx: TracePointContext) -> i32 {
    let _ = IN_LISTEN.insert(bpf_get_current_pid_tgid(), 1, 0);
    0
}

/// Offset of `ret` in the syscall-exit tracepoint record (a stable ABI:
/// common header, `__syscall_nr`, padding, `long ret`).
pub(crate) const SYS_EXIT_RET: usize = 16;

#[tracepoint(category = "syscalls", name = "sys_exit_listen")]
pub fn listen_exit(ctx: TracePointContext) -> i32 {
    let key = bpf_get_current_pid_tgid();
    let _ = IN_LISTEN.remove(key);
    // SAFETY: a map value pointer valid for this program run.
    let Some(pending) = (unsafe { PENDING.get(key) }) else {
        return 0;
    };
    let ev = *pending;
    let _ = PENDING.remove(key);
    // SAFETY: reads the tracepoint record at its fixed layout.
    let ret: i64 = unsafe { ctx.read_at(SYS_EXIT_RET) }.unwrap_or(-1);
    // The slot before the claim: an UNLISTEN that loses the claim to us is
    // reserved after this LISTEN, so the agent reads them in that order.
    let slot = EVENTS.reserve::<ListenEvent>(0);
    let claimed = PENDING_COOKIE.remove(ev.cookie).is_ok();
    match slot {
        Some(mut slot) if claimed && ret == 0 => {
            slot.write(ev);
            slot.submit(0);
        }
        Some(slot) => slot.discard(0),
        None if claimed && ret == 0 => count_drop(),
        None => {}
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
