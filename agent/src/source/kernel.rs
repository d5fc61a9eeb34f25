//! The kernel event source: loads the embedded eBPF object with struct
//! offsets from the running kernel's BTF, attaches the best hook set the
//! kernel allows (trampoline, else tracepoint, whose UDP half is a set of
//! cgroup hooks on the cgroup v2 root), forwards the programs' aya-log
//! records to the agent's log, and reads the `EVENTS` ring buffer through
//! tokio's `AsyncFd`: the agent sleeps until the kernel has something to say.
//! Its snapshots apply the UDP server rule with the hooks' record of UDP
//! sockets bound to a port they named (`UDP_BOUND`).

use super::btf::{Offsets, UDP_TRAMPOLINE_FUNCS};
use super::pidns::PidNs;
use super::udp_rule::{classify, ephemeral_ports, Verdict};
use super::{DiagSocket, EventSource};
use crate::table::GuestListener;
use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{Array, HashMap, MapData, RingBuf};
use aya::programs::{
    BtfTracePoint, CgroupAttachMode, CgroupSock, CgroupSockAddr, FEntry, FExit, TracePoint,
};
use aya::{Btf, Ebpf, EbpfLoader};
use hoist_common::{
    global, prog, ListenEvent, UdpBound, IPPROTO_UDP, MAP_DROPS, MAP_EVENTS, MAP_UDP_BOUND,
};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

/// Which hooks to use, from the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HookMode {
    /// Trampolines where the kernel allows them, else tracepoints.
    Auto,
    /// fexit/fentry: inet_csk_listen_start/stop, and for UDP inet_bind,
    /// the datagram connects and udp_lib_unhash.
    Trampoline,
    /// tp_btf/inet_sock_set_state with syscalls/sys_exit_listen, and for UDP
    /// cgroup hooks on the cgroup v2 root with syscalls/sys_exit_connect.
    Tracepoint,
}

/// The hook set attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hooks {
    Trampoline,
    Tracepoint,
}

impl fmt::Display for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hooks::Trampoline => "trampoline",
            Hooks::Tracepoint => "tracepoint",
        })
    }
}

static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("HOIST_EBPF_OBJECT_PATH"));

/// Which network namespace's sockets the hooks report: its inode (what the
/// BTF-reading hooks compare) and its cookie (what the cgroup hooks can
/// read). Zero for both: every namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Watch {
    /// The namespace's inode.
    pub inum: u32,
    /// The namespace's cookie (`SO_NETNS_COOKIE`).
    pub cookie: u64,
}

impl Watch {
    /// The calling thread's network namespace.
    pub fn current() -> Result<Watch> {
        use std::os::unix::fs::MetadataExt;
        let inum = std::fs::metadata("/proc/thread-self/ns/net")
            .context("reading own network namespace")?
            .ino() as u32;
        let cookie = crate::sys::netns_cookie()
            .context("reading own network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14+)")?;
        Ok(Watch { inum, cookie })
    }
}

/// The attached eBPF programs and the ring buffer they write to. Dropping it
/// detaches the programs and stops the log forwarding task.
pub struct KernelSource {
    ring: AsyncFd<RingBuf<MapData>>,
    drops: Array<MapData, u64>,
    /// Cookie -> `UdpBound` bytes: UDP sockets bound to a port they named.
    udp_bound: HashMap<MapData, u64, u32>,
    /// Whether UDP servers are tracked: not when the kernel cannot dump UDP
    /// sockets (no snapshot could be the truth about them).
    udp: bool,
    hooks: Hooks,
    log_task: Option<tokio::task::JoinHandle<()>>,
    // Holds the programs and their links: dropping it detaches everything.
    _ebpf: Ebpf,
}

impl Drop for KernelSource {
    fn drop(&mut self) {
        if let Some(t) = self.log_task.take() {
            t.abort();
        }
    }
}

/// The embedded object in the kernel, with this kernel's struct offsets and
/// the agent's namespaces: its maps exist, and each hook set's programs are
/// loaded and attached with [`Object::attach`] (and taken out again with
/// [`Object::detach`]). [`KernelSource`] attaches one set for good;
/// `hoist-agent check` tries each and detaches it. Dropping it unloads
/// everything.
pub struct Object {
    ebpf: Ebpf,
    btf: Btf,
    offsets: Offsets,
}

impl Object {
    /// Loads the object: offsets from the running kernel's BTF, sockets of
    /// the network namespace `watch` names only, tasks named by their pid
    /// in the calling process's PID namespace. Creates the maps; loads no
    /// program yet.
    pub fn load(watch: Watch) -> Result<Object> {
        let offsets = Offsets::from_running_kernel()?;
        let pidns = PidNs::of_self()?;
        let ebpf = EbpfLoader::new()
            .override_global(global::NETNS_INUM, &watch.inum, true)
            .override_global(global::NETNS_COOKIE, &watch.cookie, true)
            .override_global(global::OFF_USERLOCKS_BYTE, &offsets.userlocks_byte, true)
            .override_global(global::USERLOCKS_SHIFT, &offsets.userlocks_shift, true)
            .override_global(global::OFF_SOCKET_SK, &offsets.socket_sk, true)
            .override_global(global::PIDNS_DEV, &pidns.dev, true)
            .override_global(global::PIDNS_INO, &pidns.ino, true)
            .override_global(global::OFF_FAMILY, &offsets.family, true)
            .override_global(global::OFF_PROTOCOL, &offsets.protocol, true)
            .override_global(global::PROTOCOL_SIZE, &offsets.protocol_size, true)
            .override_global(global::OFF_NUM, &offsets.num, true)
            .override_global(global::OFF_RCV_SADDR, &offsets.rcv_saddr, true)
            .override_global(global::OFF_V6_RCV_SADDR, &offsets.v6_rcv_saddr, true)
            .override_global(global::OFF_IPV6ONLY_BYTE, &offsets.ipv6only_byte, true)
            .override_global(global::IPV6ONLY_BIT, &offsets.ipv6only_bit, true)
            .override_global(global::OFF_NET, &offsets.net, true)
            .override_global(global::OFF_NET_INUM, &offsets.net_inum, true)
            .override_global(global::OFF_INET_SPORT, &offsets.inet_sport, true)
            .override_global(global::LISTEN_START_NARGS, &offsets.listen_start_nargs, true)
            .load(OBJECT)
            .map_err(|e| explained(anyhow::Error::new(e)))
            .context("loading the eBPF object")?;
        let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
        Ok(Object { ebpf, btf, offsets })
    }

    /// Loads and attaches the programs of one hook set.
    pub fn attach(&mut self, hooks: Hooks) -> Result<()> {
        match hooks {
            Hooks::Trampoline => attach_trampolines(&mut self.ebpf, &self.btf, &self.offsets)
                .context("attaching the trampoline hooks (fexit/fentry)"),
            Hooks::Tracepoint => attach_tracepoints(&mut self.ebpf, &self.btf)
                .map_err(explained)
                .context("attaching the tracepoint hooks"),
        }
    }

    /// Detaches and unloads the programs of one hook set, also after a
    /// half-done [`Object::attach`].
    pub fn detach(&mut self, hooks: Hooks) {
        let names: &[&str] = match hooks {
            Hooks::Trampoline => &[
                prog::LISTEN_START,
                prog::LISTEN_STOP,
                prog::UDP_BIND,
                prog::UDP_BIND6,
                prog::UDP_CONNECTED,
                prog::UDP_CONNECTED6,
                prog::UDP_DISCONNECTED,
                prog::UDP_UNHASH,
            ],
            Hooks::Tracepoint => &[
                prog::SYS_ENTER_LISTEN,
                prog::SYS_EXIT_LISTEN,
                prog::STATE,
                prog::SYS_ENTER_CONNECT,
                prog::SYS_EXIT_CONNECT,
                prog::CG_BIND4,
                prog::CG_BIND6,
                prog::CG_CONNECT4,
                prog::CG_CONNECT6,
                prog::CG_POST_BIND4,
                prog::CG_POST_BIND6,
                prog::CG_RELEASE,
            ],
        };
        for name in names {
            use aya::programs::Program;
            // Unloading a program detaches its links; one never loaded says so.
            let _ = match self.ebpf.program_mut(name) {
                Some(Program::FExit(p)) => p.unload(),
                Some(Program::FEntry(p)) => p.unload(),
                Some(Program::TracePoint(p)) => p.unload(),
                Some(Program::BtfTracePoint(p)) => p.unload(),
                Some(Program::CgroupSockAddr(p)) => p.unload(),
                Some(Program::CgroupSock(p)) => p.unload(),
                _ => Ok(()),
            };
        }
    }
}

impl KernelSource {
    /// Loads the embedded object (see [`Object::load`]) and attaches the best
    /// hook set `mode` allows; only sockets of the network namespace `watch`
    /// names are reported, and tasks are named by their pid in the calling
    /// process's PID namespace. Must run inside a tokio runtime: the ring
    /// buffer and the log forwarding are driven by it.
    pub fn load(mode: HookMode, watch: Watch) -> Result<KernelSource> {
        tokio::runtime::Handle::try_current()
            .context("KernelSource::load must run inside a tokio runtime")?;
        let mut object = Object::load(watch)?;
        // Before any program runs, so no log record is missed.
        let log_task = start_ebpf_log(&mut object.ebpf);
        let hooks = match mode {
            HookMode::Trampoline => {
                object.attach(Hooks::Trampoline)?;
                Hooks::Trampoline
            }
            HookMode::Tracepoint => {
                object.attach(Hooks::Tracepoint)?;
                Hooks::Tracepoint
            }
            HookMode::Auto => match object.attach(Hooks::Trampoline) {
                Ok(()) => Hooks::Trampoline,
                Err(e) => {
                    info!("trampoline hooks refused by this kernel ({e:#}); using tracepoints");
                    object.detach(Hooks::Trampoline);
                    object.attach(Hooks::Tracepoint)?;
                    Hooks::Tracepoint
                }
            },
        };
        info!(hooks = %hooks, "kernel hooks attached");
        let mut ebpf = object.ebpf;
        let ring = RingBuf::try_from(ebpf.take_map(MAP_EVENTS).context("map EVENTS missing")?)
            .context("opening map EVENTS")?;
        let drops = Array::try_from(ebpf.take_map(MAP_DROPS).context("map DROPS missing")?)
            .context("opening map DROPS")?;
        let udp_bound =
            HashMap::try_from(ebpf.take_map(MAP_UDP_BOUND).context("map UDP_BOUND missing")?)
                .context("opening map UDP_BOUND")?;
        let ring = crate::sys::async_fd(ring).context("registering the ring buffer")?;
        let udp = match super::unconnected_udp() {
            Ok(_) => true,
            Err(e) => {
                warn!(event = "udp_forwarding_off", "{e:#}: UDP servers are not forwarded (the kernel needs CONFIG_INET_UDP_DIAG: modprobe udp_diag); TCP is");
                false
            }
        };
        Ok(KernelSource { ring, drops, udp_bound, udp, hooks, log_task, _ebpf: ebpf })
    }

    /// Whether an unconnected UDP socket of a snapshot is a server (see
    /// `udp_rule`); one judged by its port is added to `UDP_BOUND`, so the
    /// hooks report its close, and one recorded as connected that no longer
    /// is (a dissolved association no hook saw) is marked unconnected again.
    fn udp_server(&mut self, d: &DiagSocket, ephemeral: &std::ops::RangeInclusive<u16>) -> bool {
        let recorded =
            self.udp_bound.get(&d.cookie, 0).ok().map(|v| UdpBound::from_bytes(v.to_ne_bytes()));
        let verdict = classify(d.port, recorded, ephemeral);
        let learn = match (verdict, recorded) {
            (Verdict::ByPort, _) => Some(1),
            (Verdict::Recorded, Some(r)) if r.connected != 0 => Some(0),
            _ => None,
        };
        if let Some(flags) = learn {
            let value = UdpBound { port: d.port, connected: 0, _pad: 0 };
            // BPF_NOEXIST (1) for a new entry: the hooks' own, if they made one
            // meanwhile, is newer.
            if let Err(e) =
                self.udp_bound.insert(d.cookie, u32::from_ne_bytes(value.to_bytes()), flags)
            {
                warn!(
                    cookie = d.cookie,
                    port = d.port,
                    "recording a UDP server found by snapshot: {e}"
                );
            }
        }
        verdict != Verdict::Client
    }

    /// The hook set attached.
    pub fn hooks(&self) -> Hooks {
        self.hooks
    }

    /// Waits until events are available, then appends every available one.
    /// Cancel-safe: nothing is consumed before the wait completes.
    pub async fn next_batch(&mut self, out: &mut Vec<ListenEvent>) -> Result<()> {
        let start = out.len();
        loop {
            let mut guard = self.ring.readable_mut().await.context("waiting on the ring buffer")?;
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                match ListenEvent::from_bytes(&item) {
                    Some(ev) if ev.proto == IPPROTO_UDP && !self.udp => {}
                    Some(ev) => out.push(ev),
                    None => warn!(len = item.len(), "short record in the ring buffer"),
                }
            }
            guard.clear_ready();
            if out.len() > start {
                return Ok(());
            }
        }
    }

    /// Events lost so far because the ring buffer was full.
    pub fn drops(&self) -> Result<u64> {
        self.drops.get(&0, 0).context("reading the drop counter (map DROPS)")
    }
}

impl EventSource for KernelSource {
    fn next_batch<'a>(
        &'a mut self,
        out: &'a mut Vec<ListenEvent>,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        KernelSource::next_batch(self, out)
    }
    fn drops(&self) -> Result<u64> {
        KernelSource::drops(self)
    }
    fn snapshot(&mut self, owner_known: &dyn Fn(u64) -> bool) -> Result<Vec<GuestListener>> {
        if !self.udp {
            return super::snapshot(owner_known, None);
        }
        let ephemeral = ephemeral_ports()?;
        super::snapshot(owner_known, Some(&mut |d| self.udp_server(d, &ephemeral)))
    }
}

/// What to do about a bpf() failure a user can act on, in one line.
pub fn advice(errno: i32) -> Option<&'static str> {
    match errno {
        1 => Some(crate::privileges::NEEDS),
        38 => Some("this kernel has no bpf() system call (CONFIG_BPF_SYSCALL is off): hoist-agent needs a kernel with BPF and BTF, see README's kernel requirements"),
        _ => None,
    }
}

/// Puts the advice for a bpf() failure first, where the user reads it.
fn explained(e: anyhow::Error) -> anyhow::Error {
    let errno = e
        .chain()
        .find_map(|c| c.downcast_ref::<std::io::Error>())
        .and_then(std::io::Error::raw_os_error);
    match errno.and_then(advice) {
        Some(what) => e.context(what),
        None => e,
    }
}

fn attach_trampolines(ebpf: &mut Ebpf, btf: &Btf, offsets: &Offsets) -> Result<()> {
    // The fexit program reads the return value after one or two parameters
    // (the kernels it knows); any other prototype would make it report
    // nothing, so refuse rather than attach a blind hook.
    if !matches!(offsets.listen_start_nargs, 1 | 2) {
        bail!(
            "inet_csk_listen_start has {} parameters in the kernel's BTF (expected 1 or 2)",
            offsets.listen_start_nargs
        );
    }
    let p: &mut FExit = program(ebpf, prog::LISTEN_START)?.try_into()?;
    p.load("inet_csk_listen_start", btf).context("loading fexit/inet_csk_listen_start")?;
    p.attach().context("attaching fexit/inet_csk_listen_start")?;
    let p: &mut FEntry = program(ebpf, prog::LISTEN_STOP)?.try_into()?;
    p.load("inet_csk_listen_stop", btf).context("loading fentry/inet_csk_listen_stop")?;
    p.attach().context("attaching fentry/inet_csk_listen_stop")?;
    // The UDP hooks read each function's return value after its
    // parameters: a prototype they were not written for would make them
    // read something else.
    for ((func, want), got) in UDP_TRAMPOLINE_FUNCS.iter().zip(offsets.udp_nargs) {
        if got != *want {
            bail!("{func} has {got} parameters in the kernel's BTF (expected {want}; 0: absent)");
        }
    }
    for (name, func) in UDP_FEXITS {
        let p: &mut FExit = program(ebpf, name)?.try_into()?;
        p.load(func, btf).with_context(|| format!("loading fexit/{func}"))?;
        p.attach().with_context(|| format!("attaching fexit/{func}"))?;
    }
    let p: &mut FEntry = program(ebpf, prog::UDP_UNHASH)?.try_into()?;
    p.load("udp_lib_unhash", btf).context("loading fentry/udp_lib_unhash")?;
    p.attach().context("attaching fentry/udp_lib_unhash")?;
    Ok(())
}

/// The UDP trampoline set's fexit programs and the functions they trace.
const UDP_FEXITS: [(&str, &str); 5] = [
    (prog::UDP_BIND, "inet_bind"),
    (prog::UDP_BIND6, "inet6_bind"),
    (prog::UDP_CONNECTED, "__ip4_datagram_connect"),
    (prog::UDP_CONNECTED6, "__ip6_datagram_connect"),
    (prog::UDP_DISCONNECTED, "udp_disconnect"),
];

fn attach_tracepoints(ebpf: &mut Ebpf, btf: &Btf) -> Result<()> {
    ensure_tracefs()?;
    // The marking and confirming hooks first: a LISTEN stashed before they
    // are attached would never be confirmed (the startup snapshot covers
    // that window).
    let p: &mut TracePoint = program(ebpf, prog::SYS_ENTER_LISTEN)?.try_into()?;
    p.load().context("loading tracepoint/syscalls/sys_enter_listen")?;
    p.attach("syscalls", "sys_enter_listen")
        .context("attaching tracepoint/syscalls/sys_enter_listen")?;
    let p: &mut TracePoint = program(ebpf, prog::SYS_EXIT_LISTEN)?.try_into()?;
    p.load().context("loading tracepoint/syscalls/sys_exit_listen")?;
    p.attach("syscalls", "sys_exit_listen")
        .context("attaching tracepoint/syscalls/sys_exit_listen")?;
    let p: &mut BtfTracePoint = program(ebpf, prog::STATE)?.try_into()?;
    p.load("inet_sock_set_state", btf).context("loading tp_btf/inet_sock_set_state")?;
    p.attach().context("attaching tp_btf/inet_sock_set_state")?;
    // UDP: the connect confirmations before the hooks that stash for them.
    for (name, tp) in [
        (prog::SYS_ENTER_CONNECT, "sys_enter_connect"),
        (prog::SYS_EXIT_CONNECT, "sys_exit_connect"),
    ] {
        let p: &mut TracePoint = program(ebpf, name)?.try_into()?;
        p.load().with_context(|| format!("loading tracepoint/syscalls/{tp}"))?;
        p.attach("syscalls", tp).with_context(|| format!("attaching tracepoint/syscalls/{tp}"))?;
    }
    let root = cgroup2_root()?;
    let cgroup = std::fs::File::open(&root)
        .with_context(|| format!("opening the cgroup v2 root {}", root.display()))?;
    // A link to the cgroup (Linux 5.7+) is detached when the agent exits,
    // however it exits; it runs beside any other program attached there.
    for (name, hook) in [
        (prog::CG_BIND4, "bind4"),
        (prog::CG_BIND6, "bind6"),
        (prog::CG_CONNECT4, "connect4"),
        (prog::CG_CONNECT6, "connect6"),
    ] {
        let p: &mut CgroupSockAddr = program(ebpf, name)?.try_into()?;
        p.load().with_context(|| format!("loading cgroup/{hook}"))?;
        p.attach(&cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching cgroup/{hook} to {}", root.display()))?;
    }
    for (name, hook) in [
        (prog::CG_POST_BIND4, "post_bind4"),
        (prog::CG_POST_BIND6, "post_bind6"),
        (prog::CG_RELEASE, "sock_release"),
    ] {
        let p: &mut CgroupSock = program(ebpf, name)?.try_into()?;
        p.load().with_context(|| format!("loading cgroup/{hook}"))?;
        p.attach(&cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching cgroup/{hook} to {}", root.display()))?;
    }
    Ok(())
}

/// Where a cgroup v2 hierarchy is mounted: the first one mountinfo lists, or
/// one mounted now under /run (a minimal guest, or `ip netns exec`, which
/// remounts /sys, may have none). Hooks attached to its root see every
/// process's sockets (in a cgroup namespace: the namespace's).
fn cgroup2_root() -> Result<PathBuf> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    if let Some(p) = cgroup2_mount(&mountinfo) {
        return Ok(p);
    }
    let target = Path::new("/run/hoist-agent/cgroup2");
    std::fs::create_dir_all(target)
        .with_context(|| format!("creating {} to mount cgroup2 on", target.display()))?;
    crate::sys::mount_cgroup2(target).with_context(|| {
        format!("no cgroup v2 hierarchy is mounted and mounting one on {} failed", target.display())
    })?;
    info!("mounted the cgroup v2 hierarchy on {}", target.display());
    Ok(target.to_path_buf())
}

/// The mount point of the first cgroup2 file system in a mountinfo text.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "<id> <parent> <dev> <root> <mount point> <options> [tags] - <fstype> ..."
        let (before, after) = line.split_once(" - ")?;
        let fstype = after.split_whitespace().next()?;
        let mount_point = before.split_whitespace().nth(4)?;
        // Octal escapes (\040 for a space) are left as they are: such a
        // path fails to open and says so.
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))
}

/// Classic tracepoints are found through tracefs, which many VMs (and `ip
/// netns exec`, which remounts /sys) leave unmounted: mount it if needed.
fn ensure_tracefs() -> Result<()> {
    // Mounted but root's alone (mode 0700) is not the same as not mounted.
    let readable = || -> Result<bool> {
        for p in ["/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"] {
            match std::fs::metadata(p) {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Err(crate::privileges::tracefs_unreadable(p.as_ref(), &e))
                }
                Err(_) => {}
            }
        }
        Ok(false)
    };
    if readable()? {
        return Ok(());
    }
    if let Err(e) = crate::sys::mount_tracefs("/sys/kernel/tracing") {
        return Err(crate::privileges::tracefs_unmountable("/sys/kernel/tracing", &e));
    }
    info!("mounted tracefs on /sys/kernel/tracing");
    readable().map(|_| ())
}

/// Forwards the eBPF programs' aya-log records to the `log` facade.
fn start_ebpf_log(ebpf: &mut Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            warn!("eBPF logging unavailable: {e}");
            return None;
        }
    };
    let mut fd = match crate::sys::async_fd(logger) {
        Ok(fd) => fd,
        Err(e) => {
            warn!("eBPF logging unavailable: {e}");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else { return };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_in_mountinfo() {
        let hybrid = "35 25 0:29 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      36 35 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n\
                      37 35 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(cgroup2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_mount(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        let v1_only = "37 35 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(cgroup2_mount(v1_only), None);
        assert_eq!(cgroup2_mount(""), None);
    }

    #[test]
    fn bpf_failures_users_can_act_on_are_explained() {
        let denied = explained(
            anyhow::Error::new(std::io::Error::from_raw_os_error(1)).context("creating map EVENTS"),
        );
        assert!(format!("{denied:#}").starts_with("hoist-agent needs root"), "{denied:#}");
        let no_bpf = explained(anyhow::Error::new(std::io::Error::from_raw_os_error(38)));
        assert!(
            format!("{no_bpf:#}").starts_with("this kernel has no bpf() system call"),
            "{no_bpf:#}"
        );
        let other = explained(anyhow::Error::new(std::io::Error::from_raw_os_error(22)));
        assert_eq!(format!("{other:#}"), "Invalid argument (os error 22)");
    }
}
