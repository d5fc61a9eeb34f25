//! `hoist-agent check`: whether this kernel and this process can run the
//! agent, told before anyone debugs. Each item is tried the way the agent
//! uses it (the eBPF object is loaded, each hook set attached and detached,
//! sock_diag dumps asked for, tracefs mounted in a private mount namespace)
//! and reported on one line: ok, missing (the kernel lacks it) or refused
//! (it is there but this process may not use it), with what to do.
//!
//! The probes are I/O ([`run`]); what an item means for the verdict and how
//! it is written ([`verdict`], [`text`], [`json`], and the pure judges such as
//! [`privileges`] and [`vsock`]) are pure, table-tested functions.
//! [`KERNEL_CONFIG`] names the kernel options behind each item: the WSL kernel
//! fragment (packaging/wsl/hoist.config) and README's kernel requirements are
//! tested against it.

use crate::source::{HookMode, Hooks, Object, Offsets, PidNs, Watch};
use anyhow::Context;
use hoist_net::Addr;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

/// How an item stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Works.
    Ok,
    /// The kernel (or the system) lacks it.
    Missing,
    /// It is there, but this process may not use it.
    Refused,
}

impl State {
    fn word(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Missing => "missing",
            State::Refused => "refused",
        }
    }
}

/// What the agent needs an item for: whether a failure stops it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// The agent cannot run without it.
    Always,
    /// One hook set: needed when it is the one the agent would attach
    /// (with `--hooks auto`, when neither set works).
    HookSet(Hooks),
    /// Only the tracepoint hook set needs it (tracefs): needed unless the
    /// trampoline set is the one attached.
    Tracepoints,
    /// The agent runs without it, with less (UDP listeners, owners of other
    /// users' listeners, a transport it does not listen on).
    Optional,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// Stable name, also the JSON key: `btf`, `hooks.trampoline`, ...
    pub key: &'static str,
    pub state: State,
    pub need: Need,
    /// What was found, in words.
    pub detail: String,
    /// What to do, when it is not ok.
    pub fix: Option<String>,
}

impl Item {
    fn ok(key: &'static str, need: Need, detail: impl Into<String>) -> Item {
        Item { key, state: State::Ok, need, detail: detail.into(), fix: None }
    }
    fn bad(
        key: &'static str,
        state: State,
        need: Need,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Item {
        Item { key, state, need, detail: detail.into(), fix: Some(fix.into()) }
    }
}

/// The report's items, in the order [`run`] gives them.
pub const ITEMS: &[&str] = &[
    "privileges",
    "btf",
    "bpf",
    "ringbuf",
    "tracefs",
    "hooks.trampoline",
    "hooks.tracepoint",
    "sock_diag.tcp4",
    "sock_diag.tcp6",
    "sock_diag.udp4",
    "sock_diag.udp6",
    "vsock",
    "netns",
    "pidns",
];

/// The kernel options behind each item (`=y`, or a module loaded), in report
/// order. An option may stand behind several items.
pub const KERNEL_CONFIG: &[(&str, &[&str])] = &[
    ("btf", &["CONFIG_DEBUG_INFO_BTF", "CONFIG_DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT"]),
    ("bpf", &["CONFIG_BPF", "CONFIG_BPF_SYSCALL", "CONFIG_BPF_JIT"]),
    ("ringbuf", &["CONFIG_BPF_SYSCALL"]),
    ("tracefs", &["CONFIG_FTRACE"]),
    (
        "hooks.trampoline",
        &[
            "CONFIG_BPF_EVENTS",
            "CONFIG_BPF_JIT",
            "CONFIG_FUNCTION_TRACER",
            "CONFIG_DYNAMIC_FTRACE",
            "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS",
        ],
    ),
    (
        "hooks.tracepoint",
        &[
            "CONFIG_BPF_EVENTS",
            "CONFIG_PERF_EVENTS",
            "CONFIG_UPROBE_EVENTS",
            "CONFIG_FTRACE_SYSCALLS",
            "CONFIG_CGROUPS",
            "CONFIG_CGROUP_BPF",
        ],
    ),
    ("sock_diag.tcp4", &["CONFIG_INET_DIAG", "CONFIG_INET_TCP_DIAG"]),
    ("sock_diag.tcp6", &["CONFIG_INET_DIAG", "CONFIG_INET_TCP_DIAG", "CONFIG_IPV6"]),
    ("sock_diag.udp4", &["CONFIG_INET_DIAG", "CONFIG_INET_UDP_DIAG"]),
    ("sock_diag.udp6", &["CONFIG_INET_DIAG", "CONFIG_INET_UDP_DIAG", "CONFIG_IPV6"]),
    (
        "vsock",
        &[
            "CONFIG_VSOCKETS",
            "CONFIG_HYPERV",
            "CONFIG_HYPERV_VSOCKETS",
            "CONFIG_VIRTIO_VSOCKETS",
            "CONFIG_VMWARE_VMCI_VSOCKETS",
        ],
    ),
];

/// Options of [`KERNEL_CONFIG`] a WSL kernel does not need: the transports
/// of other hypervisors.
pub const NOT_FOR_WSL: &[&str] = &["CONFIG_VIRTIO_VSOCKETS", "CONFIG_VMWARE_VMCI_VSOCKETS"];

/// The options behind `key`, as "CONFIG_A=y, CONFIG_B=y".
fn options(key: &str) -> String {
    KERNEL_CONFIG
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, o)| o.iter().map(|o| format!("{o}=y")).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

// ---- the verdict ----

/// What the report concludes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The agent can run here.
    pub runs: bool,
    /// The hook set it would attach.
    pub hooks: Option<Hooks>,
    /// The items that stop it.
    pub blocking: Vec<&'static str>,
}

fn state_of(items: &[Item], key: &str) -> Option<State> {
    items.iter().find(|i| i.key == key).map(|i| i.state)
}

/// The hook set the agent would attach with `mode`, judging by the items.
fn chosen(items: &[Item], mode: HookMode) -> Option<Hooks> {
    let works = |h: Hooks| {
        let key = match h {
            Hooks::Trampoline => "hooks.trampoline",
            Hooks::Tracepoint => "hooks.tracepoint",
        };
        state_of(items, key) == Some(State::Ok)
    };
    match mode {
        HookMode::Trampoline => works(Hooks::Trampoline).then_some(Hooks::Trampoline),
        HookMode::Tracepoint => works(Hooks::Tracepoint).then_some(Hooks::Tracepoint),
        HookMode::Auto => [Hooks::Trampoline, Hooks::Tracepoint].into_iter().find(|h| works(*h)),
    }
}

/// Whether `item`, not being ok, stops the agent.
fn blocks(item: &Item, mode: HookMode, hooks: Option<Hooks>) -> bool {
    if item.state == State::Ok {
        return false;
    }
    match item.need {
        Need::Always => true,
        Need::Optional => false,
        Need::Tracepoints => hooks != Some(Hooks::Trampoline),
        Need::HookSet(h) => match mode {
            HookMode::Auto => hooks.is_none(),
            HookMode::Trampoline => h == Hooks::Trampoline,
            HookMode::Tracepoint => h == Hooks::Tracepoint,
        },
    }
}

/// Whether the agent can run with hook mode `mode`, and why not. Pure.
pub fn verdict(items: &[Item], mode: HookMode) -> Verdict {
    let hooks = chosen(items, mode);
    let blocking: Vec<&'static str> =
        items.iter().filter(|i| blocks(i, mode, hooks)).map(|i| i.key).collect();
    Verdict { runs: hooks.is_some() && blocking.is_empty(), hooks, blocking }
}

/// Why a failed item does not stop the agent, for its line.
fn harmless(item: &Item, hooks: Option<Hooks>) -> Option<String> {
    match item.need {
        Need::HookSet(_) | Need::Tracepoints => {
            hooks.map(|h| format!("not needed: the agent uses the {h} hooks"))
        }
        Need::Optional => Some("the agent runs without it".into()),
        Need::Always => None,
    }
}

/// The report as text: one line per item, then the verdict. Pure.
pub fn text(items: &[Item], mode: HookMode) -> String {
    let v = verdict(items, mode);
    let mut out = String::new();
    for i in items {
        let _ = write!(out, "{:<8} {:<17} {}", i.state.word(), i.key, i.detail);
        if i.state != State::Ok {
            if let Some(fix) = &i.fix {
                let _ = write!(out, " -> {fix}");
            }
            if !blocks(i, mode, v.hooks) {
                if let Some(why) = harmless(i, v.hooks) {
                    let _ = write!(out, " ({why})");
                }
            }
        }
        out.push('\n');
    }
    match (&v.runs, v.hooks) {
        (true, Some(h)) => {
            let _ = writeln!(out, "verdict: hoist-agent can run here, on the {h} hooks");
        }
        _ if v.blocking.is_empty() => {
            let _ = writeln!(out, "verdict: hoist-agent cannot run here: no hook set loads");
        }
        _ => {
            let _ = writeln!(
                out,
                "verdict: hoist-agent cannot run here: fix {}",
                v.blocking.join(", ")
            );
        }
    }
    out
}

/// The report as one JSON object. Pure.
pub fn json(items: &[Item], mode: HookMode) -> serde_json::Value {
    let v = verdict(items, mode);
    let items: Vec<serde_json::Value> = items
        .iter()
        .map(|i| {
            serde_json::json!({
                "item": i.key,
                "state": i.state.word(),
                "blocking": blocks(i, mode, v.hooks),
                "detail": i.detail,
                "fix": i.fix,
            })
        })
        .collect();
    serde_json::json!({
        "runs": v.runs,
        "hooks": v.hooks.map(|h| h.to_string()),
        "blocking": v.blocking,
        "items": items,
    })
}

// ---- pure judges ----

/// Capability bits (linux/capability.h).
pub mod cap {
    pub const DAC_READ_SEARCH: u32 = 2;
    pub const NET_BIND_SERVICE: u32 = 10;
    pub const NET_ADMIN: u32 = 12;
    pub const SYS_PTRACE: u32 = 19;
    pub const SYS_ADMIN: u32 = 21;
    pub const PERFMON: u32 = 38;
    pub const BPF: u32 = 39;
}

/// The effective capability set from /proc/self/status.
pub fn cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// What this run of the agent would do that needs privilege beyond loading
/// and attaching programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wants {
    /// tracefs is not mounted: the agent mounts it (CAP_SYS_ADMIN).
    pub mount_tracefs: bool,
    /// `--netns`: the agent enters a network namespace (CAP_SYS_ADMIN).
    pub enter_netns: bool,
    /// Listening on a vsock port up to 1023 (CAP_NET_BIND_SERVICE).
    pub privileged_port: bool,
    /// The tracepoint set may be attached: its cgroup socket programs (UDP
    /// servers) need CAP_NET_ADMIN.
    pub cgroup_hooks: bool,
}

/// Judges the effective capabilities against what the agent does. Needed:
/// CAP_BPF (maps, programs) and CAP_PERFMON (tracing programs and their
/// attachment), each or CAP_SYS_ADMIN (which implies both, and is the only
/// one before Linux 5.8); CAP_SYS_ADMIN to mount tracefs or enter `--netns`;
/// CAP_NET_BIND_SERVICE for a vsock port up to 1023; CAP_NET_ADMIN (or
/// CAP_SYS_ADMIN) for the tracepoint set's cgroup programs; CAP_DAC_READ_SEARCH and
/// CAP_SYS_PTRACE, to read tracefs and name the owners of other users'
/// listeners from /proc (the agent will not run without them). Pure.
pub fn privileges(cap_eff: u64, wants: Wants) -> Item {
    let has = |c: u32| cap_eff & (1u64 << c) != 0;
    let admin = has(cap::SYS_ADMIN);
    let mut missing = Vec::new();
    if !has(cap::BPF) && !admin {
        missing.push("CAP_BPF (maps and programs)");
    }
    if !has(cap::PERFMON) && !admin {
        missing.push("CAP_PERFMON (tracing programs)");
    }
    if wants.mount_tracefs && !admin {
        missing.push("CAP_SYS_ADMIN (to mount tracefs)");
    } else if wants.enter_netns && !admin {
        missing.push("CAP_SYS_ADMIN (to enter --netns)");
    }
    if wants.privileged_port && !has(cap::NET_BIND_SERVICE) {
        missing.push("CAP_NET_BIND_SERVICE (the vsock port up to 1023)");
    }
    if wants.cgroup_hooks && !has(cap::NET_ADMIN) && !admin {
        missing.push("CAP_NET_ADMIN (the tracepoint set's cgroup programs, for UDP servers)");
    }
    // The agent refuses to start without these (agent/src/privileges.rs):
    // every listener must come with its owner.
    if !has(cap::DAC_READ_SEARCH) {
        missing.push("CAP_DAC_READ_SEARCH (tracefs, and listing other users' /proc/<pid>/fd)");
    }
    if !has(cap::SYS_PTRACE) {
        missing.push("CAP_SYS_PTRACE (reading those /proc/<pid>/fd links: who owns a listener)");
    }
    if !missing.is_empty() {
        return Item::bad(
            "privileges",
            State::Missing,
            Need::Always,
            format!("this process lacks {}", missing.join(", ")),
            "run hoist-agent as root, or give it these capabilities (packaging/systemd/hoist-agent.service grants them)",
        );
    }
    Item::ok("privileges", Need::Always, "every capability the agent uses is effective")
}

/// Whether `cap_eff` lets a process load and attach tracing programs:
/// CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN. Pure.
pub fn can_load(cap_eff: u64) -> bool {
    let has = |c: u32| cap_eff & (1u64 << c) != 0;
    has(cap::SYS_ADMIN) || (has(cap::BPF) && has(cap::PERFMON))
}

/// What sysfs says about vsock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockEvidence {
    /// The vsock core (/sys/module/vsock or /dev/vsock).
    pub core: bool,
    /// virtio transport (/sys/module/vmw_vsock_virtio_transport, or its
    /// virtio driver).
    pub virtio: bool,
    /// Hyper-V transport (/sys/module/hv_sock, or its vmbus driver).
    pub hyperv: bool,
    /// VMware VMCI transport (/sys/module/vmw_vsock_vmci_transport).
    pub vmci: bool,
    /// This is a Hyper-V guest (/sys/bus/vmbus): WSL2, Hyper-V.
    pub vmbus: bool,
}

/// Judges the vsock transport; `needed` when the agent listens on vsock.
/// Pure.
pub fn vsock(ev: VsockEvidence, needed: bool, listen: &str) -> Item {
    let need = if needed { Need::Always } else { Need::Optional };
    let loaded: Vec<&str> = [
        (ev.hyperv, "Hyper-V (hv_sock: WSL2, Hyper-V)"),
        (ev.virtio, "virtio (QEMU, Firecracker, Cloud Hypervisor)"),
        (ev.vmci, "VMware VMCI"),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| n)
    .collect();
    let why = if needed { String::new() } else { format!("; the agent listens on {listen}") };
    if !loaded.is_empty() {
        return Item::ok("vsock", need, format!("transport loaded: {}{why}", loaded.join(", ")));
    }
    let (found, fix) = if ev.vmbus {
        (
            "a Hyper-V guest (WSL2) without the Hyper-V vsock transport",
            "modprobe hv_sock, or a kernel with CONFIG_VSOCKETS=y and CONFIG_HYPERV_VSOCKETS=y (WSL: README's WSL2 section)",
        )
    } else if ev.core {
        (
            "vsock without a hypervisor transport",
            "modprobe the hypervisor's transport (vmw_vsock_virtio_transport, hv_sock or vmw_vsock_vmci_transport); the VM needs a vsock device",
        )
    } else {
        (
            "no vsock in this kernel",
            "a kernel with CONFIG_VSOCKETS and the hypervisor's transport (CONFIG_VIRTIO_VSOCKETS, CONFIG_HYPERV_VSOCKETS or CONFIG_VMWARE_VMCI_VSOCKETS), or modprobe them",
        )
    };
    Item::bad("vsock", State::Missing, need, format!("{found}{why}"), fix)
}

/// The mount points of tracefs in a /proc/self/mountinfo. Pure.
pub fn tracefs_mounts(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "tracefs")
                .then(|| left.split_whitespace().nth(4).map(unescape_mount))?
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The errno names the report uses.
fn errno_name(errno: i32) -> String {
    match errno {
        1 => "EPERM".into(),
        2 => "ENOENT".into(),
        13 => "EACCES".into(),
        16 => "EBUSY".into(),
        19 => "ENODEV".into(),
        22 => "EINVAL".into(),
        38 => "ENOSYS".into(),
        93 => "EPROTONOSUPPORT".into(),
        95 => "EOPNOTSUPP".into(),
        97 => "EAFNOSUPPORT".into(),
        524 => "ENOTSUPP".into(),
        n => format!("errno {n}"),
    }
}

/// What went wrong when a hook set would not load or attach, in the
/// kernel's words, judged. `program` names the hook (fexit/...), `errno` and
/// `verifier_log` are the kernel's answer, `privileged` whether this process
/// has CAP_BPF and CAP_PERFMON (so an EPERM is the kernel's policy, not a
/// missing capability). Pure.
pub fn hook_failure(
    hooks: Hooks,
    program: &str,
    errno: Option<i32>,
    verifier_log: &str,
    message: &str,
    privileged: bool,
) -> Item {
    let key = match hooks {
        Hooks::Trampoline => "hooks.trampoline",
        Hooks::Tracepoint => "hooks.tracepoint",
    };
    let need = Need::HookSet(hooks);
    let log = verifier_log.lines().rev().find(|l| !l.trim().is_empty()).map(str::trim);
    let said = match (errno, log) {
        (Some(e), None) => format!("{} with an empty verifier log", errno_name(e)),
        (Some(e), Some(l)) => format!("{}, verifier: {l:?}", errno_name(e)),
        (None, _) => message.to_string(),
    };
    let subject = if program.is_empty() { "the programs".to_string() } else { program.to_string() };
    match errno {
        Some(1) if privileged && log.is_none() => Item::bad(
            key,
            State::Refused,
            need,
            format!("{subject}: {said}: this kernel refuses {hooks} programs to every process (a lockdown, LSM or BPF policy), though bpf() itself is allowed"),
            match hooks {
                Hooks::Trampoline => "none while the tracepoint hooks load; trampolines need a kernel that allows fentry/fexit".to_string(),
                Hooks::Tracepoint => "a kernel whose policy allows BPF tracing programs".to_string(),
            },
        ),
        Some(1 | 13) => Item::bad(
            key,
            State::Refused,
            need,
            format!("{subject}: {said}"),
            if privileged {
                "see the verifier's words; run hoist-agent as root".to_string()
            } else {
                "run hoist-agent as root, or with CAP_BPF and CAP_PERFMON".to_string()
            },
        ),
        Some(2 | 22 | 95 | 524) => Item::bad(
            key,
            State::Missing,
            need,
            format!("{subject}: {said}: the kernel cannot attach these hooks"),
            format!("a kernel with {}", options(key)),
        ),
        _ => Item::bad(
            key,
            State::Refused,
            need,
            format!("{subject}: {said}"),
            format!("check the kernel has {}", options(key)),
        ),
    }
}

// ---- the probes ----

/// What `hoist-agent check` is asked about: the run it would vouch for.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the agent would listen.
    pub listen: Addr,
    /// The network namespace it would watch (`--netns`), or its own.
    pub netns: Option<PathBuf>,
    /// The hook sets it may use.
    pub hooks: HookMode,
}

/// Runs every probe and returns the report's items, in order. Call it from
/// a single-threaded process (before any runtime exists): it moves the
/// process into a private mount namespace, so a tracefs mount it tries
/// leaves no trace, and into `--netns` if asked.
pub fn run(config: &Config) -> Vec<Item> {
    // Mounts made from here on are this process's alone.
    let private_mounts = crate::sys::private_mount_namespace().is_ok();
    let netns = netns_item(config.netns.as_deref());
    let watch = netns.1;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = cap_eff(&status).unwrap_or(0);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let tracefs_mounted = !tracefs_mounts(&mountinfo).is_empty();
    let privileged_port = matches!(config.listen, Addr::Vsock { port, .. } if port <= 1023);
    let wants = Wants {
        mount_tracefs: !tracefs_mounted,
        enter_netns: config.netns.is_some(),
        privileged_port,
        cgroup_hooks: config.hooks != HookMode::Trampoline,
    };
    let privileged = can_load(caps);

    let mut items = vec![privileges(caps, wants), btf(), bpf(), ringbuf()];
    items.push(tracefs(&tracefs_mounts(&mountinfo), private_mounts));
    items.extend(hook_sets(watch, privileged));
    for (key, family, protocol) in [
        ("sock_diag.tcp4", AF_INET, IPPROTO_TCP),
        ("sock_diag.tcp6", AF_INET6, IPPROTO_TCP),
        ("sock_diag.udp4", AF_INET, IPPROTO_UDP),
        ("sock_diag.udp6", AF_INET6, IPPROTO_UDP),
    ] {
        items.push(sock_diag(key, family, protocol));
    }
    let on_vsock = matches!(config.listen, Addr::Vsock { .. });
    items.push(vsock(vsock_evidence(), on_vsock, &config.listen.to_string()));
    items.push(netns.0);
    items.push(pidns());
    items
}

fn btf() -> Item {
    let path = "/sys/kernel/btf/vmlinux";
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Item::bad(
                "btf",
                State::Missing,
                Need::Always,
                format!("no {path}: the kernel carries no BTF"),
                format!("a kernel with {}", options("btf")),
            )
        }
        Err(e) => {
            return Item::bad(
                "btf",
                State::Refused,
                Need::Always,
                format!("reading {path}: {e}"),
                "run hoist-agent as root",
            )
        }
    };
    match Offsets::from_btf(&data) {
        Ok(o) => Item::ok(
            "btf",
            Need::Always,
            format!(
                "{path} parses; struct offsets found (sock_common.skc_family {}, skc_num {}, net.ns.inum {}, tcp_sock inet_sport {})",
                o.family, o.num, o.net_inum, o.inet_sport
            ),
        ),
        Err(e) => Item::bad(
            "btf",
            State::Missing,
            Need::Always,
            format!("{path} does not give what hoist reads: {e:#}"),
            "report this kernel (uname -r) to hoist: its struct layout is unknown",
        ),
    }
}

/// The errno of a syscall aya reports as an error.
fn syscall_errno(e: &aya::sys::SyscallError) -> Option<i32> {
    e.io_error.raw_os_error()
}

fn bpf() -> Item {
    use aya::maps::MapType;
    match aya::sys::is_map_supported(MapType::Array) {
        Ok(true) => Item::ok("bpf", Need::Always, "bpf() is allowed (an array map was created)"),
        Ok(false) => Item::bad(
            "bpf",
            State::Missing,
            Need::Always,
            "bpf() refuses even an array map (EINVAL)",
            format!("a kernel with {}", options("bpf")),
        ),
        Err(e) => match syscall_errno(&e) {
            Some(38) => Item::bad(
                "bpf",
                State::Missing,
                Need::Always,
                "this kernel has no bpf() system call (ENOSYS)",
                format!("a kernel with {}", options("bpf")),
            ),
            Some(n) => Item::bad(
                "bpf",
                State::Refused,
                Need::Always,
                format!("bpf() refused to create a map: {}", errno_name(n)),
                "run hoist-agent as root, or with CAP_BPF (see the privileges line)",
            ),
            None => Item::bad("bpf", State::Refused, Need::Always, e.to_string(), "run as root"),
        },
    }
}

fn ringbuf() -> Item {
    use aya::maps::MapType;
    match aya::sys::is_map_supported(MapType::RingBuf) {
        Ok(true) => Item::ok("ringbuf", Need::Always, "a BPF ring buffer map was created"),
        Ok(false) => Item::bad(
            "ringbuf",
            State::Missing,
            Need::Always,
            "the kernel has no BPF ring buffer (Linux 5.8 and later have it)",
            "a kernel of Linux 5.8 or later",
        ),
        Err(e) => Item::bad(
            "ringbuf",
            State::Refused,
            Need::Always,
            format!(
                "creating a ring buffer: {}",
                syscall_errno(&e).map_or(e.to_string(), errno_name)
            ),
            "run hoist-agent as root, or with CAP_BPF",
        ),
    }
}

fn tracefs(mounts: &[String], private_mounts: bool) -> Item {
    let need = Need::Tracepoints;
    if let Some(m) = mounts.first() {
        return match std::fs::metadata(Path::new(m).join("events")) {
            Ok(_) => Item::ok("tracefs", need, format!("mounted at {m}")),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Item::bad(
                "tracefs",
                State::Refused,
                need,
                format!("mounted at {m}, but this process may not read it"),
                "run hoist-agent as root (tracefs belongs to root), or with CAP_DAC_READ_SEARCH",
            ),
            Err(e) => Item::bad(
                "tracefs",
                State::Missing,
                need,
                format!("mounted at {m}, but {m}/events: {e}"),
                format!("a kernel with {}", options("tracefs")),
            ),
        };
    }
    let target = "/sys/kernel/tracing";
    if !private_mounts {
        return Item::bad(
            "tracefs",
            State::Refused,
            need,
            "not mounted, and this process may not mount it (no CAP_SYS_ADMIN)",
            format!(
                "run hoist-agent as root, or mount it first: mount -t tracefs tracefs {target}"
            ),
        );
    }
    match crate::sys::mount_tracefs(target) {
        Ok(()) => Item::ok(
            "tracefs",
            need,
            format!("not mounted; the agent mounts it on {target} (mounted here in a private mount namespace)"),
        ),
        Err(e) if matches!(e.raw_os_error(), Some(2 | 19)) => Item::bad(
            "tracefs",
            State::Missing,
            need,
            format!(
                "not mounted, and this kernel has no tracefs ({} mounting it on {target})",
                e.raw_os_error().map_or(String::new(), errno_name)
            ),
            format!("a kernel with {}", options("tracefs")),
        ),
        Err(e) => Item::bad(
            "tracefs",
            State::Refused,
            need,
            format!(
                "not mounted, and mounting it on {target} failed: {}",
                e.raw_os_error().map_or(e.to_string(), errno_name)
            ),
            format!("run hoist-agent as root, or mount it first: mount -t tracefs tracefs {target}"),
        ),
    }
}

/// The pieces of a failed attach: the hook it names, the errno, the
/// verifier's log.
fn hook_error_parts(e: &anyhow::Error) -> (String, Option<i32>, String) {
    // The innermost context naming a program: "loading fexit/...".
    let program = e
        .chain()
        .map(|c| c.to_string())
        .filter_map(|m| {
            let rest = m.strip_prefix("loading ").or_else(|| m.strip_prefix("attaching "))?;
            let name = rest.split_whitespace().next()?;
            name.contains('/').then(|| name.to_string())
        })
        .last()
        .unwrap_or_default();
    let errno =
        e.chain().find_map(|c| c.downcast_ref::<io::Error>()).and_then(io::Error::raw_os_error);
    let log = e
        .chain()
        .find_map(|c| match c.downcast_ref::<aya::programs::ProgramError>() {
            Some(aya::programs::ProgramError::LoadError { verifier_log, .. }) => {
                Some(verifier_log.to_string())
            }
            _ => None,
        })
        .unwrap_or_default();
    (program, errno, log)
}

fn hook_sets(watch: Watch, privileged: bool) -> Vec<Item> {
    let sets = [Hooks::Trampoline, Hooks::Tracepoint];
    let mut object = match Object::load(watch) {
        Ok(o) => o,
        Err(e) => {
            let (_, errno, log) = hook_error_parts(&e);
            return sets
                .into_iter()
                .map(|h| {
                    let mut i = hook_failure(h, "", errno, &log, &format!("{e:#}"), privileged);
                    let cause = errno.map_or_else(|| e.root_cause().to_string(), errno_name);
                    i.detail = format!("the eBPF object did not load (its maps: {cause})");
                    i
                })
                .collect();
        }
    };
    sets.into_iter()
        .map(|h| {
            let r = object.attach(h);
            object.detach(h);
            match r {
                Ok(()) => Item::ok(
                    match h {
                        Hooks::Trampoline => "hooks.trampoline",
                        Hooks::Tracepoint => "hooks.tracepoint",
                    },
                    Need::HookSet(h),
                    match h {
                        Hooks::Trampoline => "fexit/inet_csk_listen_start and fentry/inet_csk_listen_stop load and attach",
                        Hooks::Tracepoint => "tp_btf/inet_sock_set_state and syscalls/sys_{enter,exit}_listen load and attach",
                    },
                ),
                Err(e) => {
                    let (program, errno, log) = hook_error_parts(&e);
                    hook_failure(h, &program, errno, &log, &format!("{e:#}"), privileged)
                }
            }
        })
        .collect()
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

fn sock_diag(key: &'static str, family: u8, protocol: u8) -> Item {
    let proto = if protocol == IPPROTO_TCP { "TCP" } else { "UDP" };
    let v = if family == AF_INET { "IPv4" } else { "IPv6" };
    // UDP: needed for UDP forwarding; without it the agent forwards TCP only
    // (and says so at start-up).
    let need = if protocol == IPPROTO_TCP { Need::Always } else { Need::Optional };
    match diag_dump(family, protocol) {
        Ok(n) => Item::ok(
            key,
            need,
            format!("{v} {proto} dump answered ({n} socket{})", if n == 1 { "" } else { "s" }),
        ),
        Err(e) => {
            let errno = e.raw_os_error();
            let (state, fix) = match errno {
                Some(2 | 93 | 97) => (State::Missing, {
                    let module = if protocol == IPPROTO_TCP { "tcp_diag" } else { "udp_diag" };
                    format!("modprobe {module}, or a kernel with {}", options(key))
                }),
                _ => (State::Refused, "run hoist-agent as root".to_string()),
            };
            Item::bad(
                key,
                state,
                need,
                format!(
                    "the kernel refused the {v} {proto} sock_diag dump: {}",
                    errno.map_or(e.to_string(), errno_name)
                ),
                fix,
            )
        }
    }
}

/// One sock_diag dump of every socket of (family, protocol); how many.
fn diag_dump(family: u8, protocol: u8) -> io::Result<usize> {
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NLM_F_DUMP, NLM_F_REQUEST};
    use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
    use netlink_packet_sock_diag::SockDiagMessage;
    let fd = crate::sys::sock_diag_socket()?;
    let socket_id = if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() };
    let req = InetRequest {
        family,
        protocol,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id,
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut msg = NetlinkMessage::new(header, SockDiagMessage::InetRequest(req).into());
    msg.finalize();
    let mut bytes = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut bytes);
    crate::sys::netlink_send(&fd, &bytes)?;
    let mut buf = vec![0u8; 32 * 1024];
    let mut out = Vec::new();
    loop {
        let n = crate::sys::netlink_recv(&fd, &mut buf)?;
        match crate::source::parse_diag_replies(&buf[..n], &mut out) {
            Ok(crate::source::Parsed::Done) => return Ok(out.len()),
            Ok(crate::source::Parsed::More) => {}
            Err(e) => {
                let io = e.chain().find_map(|c| c.downcast_ref::<io::Error>());
                return Err(match io.and_then(io::Error::raw_os_error) {
                    Some(n) => io::Error::from_raw_os_error(n),
                    None => io::Error::other(format!("{e:#}")),
                });
            }
        }
    }
}

fn vsock_evidence() -> VsockEvidence {
    let is = |p: &str| Path::new(p).exists();
    VsockEvidence {
        core: is("/sys/module/vsock") || is("/dev/vsock"),
        virtio: is("/sys/module/vmw_vsock_virtio_transport")
            || is("/sys/bus/virtio/drivers/vmw_vsock_virtio_transport"),
        hyperv: is("/sys/module/hv_sock") || is("/sys/bus/vmbus/drivers/hv_sock"),
        vmci: is("/sys/module/vmw_vsock_vmci_transport"),
        vmbus: is("/sys/bus/vmbus"),
    }
}

/// The network namespace watched, entering `--netns` first.
fn netns_item(path: Option<&Path>) -> (Item, Watch) {
    if let Some(path) = path {
        let entered = std::fs::File::open(path)
            .with_context(|| format!("opening {}", path.display()))
            .and_then(|f| {
                crate::sys::enter_netns(&f).with_context(|| format!("entering {}", path.display()))
            });
        if let Err(e) = entered {
            let item = Item::bad(
                "netns",
                State::Refused,
                Need::Always,
                format!("{e:#}"),
                "give --netns a namespace file such as /run/netns/NAME, and run as root",
            );
            return (item, Watch::default());
        }
    }
    let watch = match Watch::current() {
        Ok(w) => w,
        Err(e) => {
            let item = Item::bad(
                "netns",
                State::Refused,
                Need::Always,
                format!("{e:#}"),
                "hoist-agent needs Linux 5.14 or later (SO_NETNS_COOKIE)",
            );
            return (item, Watch::default());
        }
    };
    let ino = watch.inum;
    let whose = match path {
        Some(p) => format!("from {}", p.display()),
        None => "this process's own".to_string(),
    };
    (
        Item::ok(
            "netns",
            Need::Always,
            format!("watching net:[{ino}] ({whose}): its listeners are forwarded"),
        ),
        watch,
    )
}

fn pidns() -> Item {
    match PidNs::of_self() {
        Ok(ns) => Item::ok(
            "pidns",
            Need::Always,
            format!(
                "pid:[{}]: owners are named by their pid here; processes of other PID namespaces (other WSL distros) by command, pid 0",
                ns.ino
            ),
        ),
        Err(e) => Item::bad(
            "pidns",
            State::Missing,
            Need::Always,
            format!("{e:#}"),
            "mount /proc (the agent reads /proc/self/ns/pid)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &'static str, state: State, need: Need) -> Item {
        Item {
            key,
            state,
            need,
            detail: format!("{key} detail"),
            fix: (state != State::Ok).then(|| format!("fix {key}")),
        }
    }

    use Hooks::{Tracepoint as Tp, Trampoline as Tramp};
    use State::{Missing as M, Ok as K, Refused as R};

    /// This machine's case first: trampolines refused, tracepoints fine.
    fn report(tramp: State, tp: State, tracefs: State, udp: State, other: State) -> Vec<Item> {
        vec![
            item("privileges", other, Need::Always),
            item("tracefs", tracefs, Need::Tracepoints),
            item("hooks.trampoline", tramp, Need::HookSet(Tramp)),
            item("hooks.tracepoint", tp, Need::HookSet(Tp)),
            item("sock_diag.udp4", udp, Need::Optional),
        ]
    }

    #[test]
    fn the_verdict_needs_one_hook_set_and_every_needed_item() {
        #[rustfmt::skip]
        let cases: &[(&str, [State; 5], HookMode, bool, Option<Hooks>, &[&str])] = &[
            ("all fine: trampolines preferred", [K, K, K, K, K], HookMode::Auto, true, Some(Tramp), &[]),
            ("this machine: trampolines refused", [R, K, K, K, K], HookMode::Auto, true, Some(Tp), &[]),
            ("UDP diag missing does not block", [R, K, K, M, K], HookMode::Auto, true, Some(Tp), &[]),
            ("no tracefs, trampolines fine", [K, M, R, K, K], HookMode::Auto, true, Some(Tramp), &[]),
            ("no tracefs, no trampolines", [R, M, R, K, K], HookMode::Auto, false, None, &["tracefs", "hooks.trampoline", "hooks.tracepoint"]),
            ("no privileges", [R, R, K, K, M], HookMode::Auto, false, None, &["privileges", "hooks.trampoline", "hooks.tracepoint"]),
            ("privileges missing, hooks fine", [K, K, K, K, M], HookMode::Auto, false, Some(Tramp), &["privileges"]),
            ("forced trampolines, refused", [R, K, K, K, K], HookMode::Trampoline, false, None, &["hooks.trampoline"]),
            ("forced tracepoints, trampolines refused", [R, K, K, K, K], HookMode::Tracepoint, true, Some(Tp), &[]),
            ("forced tracepoints, no tracefs", [K, K, R, K, K], HookMode::Tracepoint, false, Some(Tp), &["tracefs"]),
        ];
        for (what, [tramp, tp, tracefs, udp, other], mode, runs, hooks, blocking) in cases {
            let items = report(*tramp, *tp, *tracefs, *udp, *other);
            let v = verdict(&items, *mode);
            assert_eq!(
                (v.runs, v.hooks, v.blocking.as_slice()),
                (*runs, *hooks, *blocking),
                "{what}"
            );
        }
    }

    #[test]
    fn the_text_report_has_one_line_per_item_and_says_what_does_not_block() {
        let items = report(R, K, K, M, K);
        let out = text(&items, HookMode::Auto);
        let want = "\
ok       privileges        privileges detail
ok       tracefs           tracefs detail
refused  hooks.trampoline  hooks.trampoline detail -> fix hooks.trampoline (not needed: the agent uses the tracepoint hooks)
ok       hooks.tracepoint  hooks.tracepoint detail
missing  sock_diag.udp4    sock_diag.udp4 detail -> fix sock_diag.udp4 (the agent runs without it)
verdict: hoist-agent can run here, on the tracepoint hooks
";
        assert_eq!(out, want);
        let out = text(&report(R, R, K, K, M), HookMode::Auto);
        assert!(
            out.contains("missing  privileges        privileges detail -> fix privileges\n"),
            "{out}"
        );
        assert!(
            out.ends_with(
                "verdict: hoist-agent cannot run here: fix privileges, hooks.trampoline, hooks.tracepoint\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn the_json_report_carries_the_same_verdict() {
        let v = json(&report(R, K, K, M, K), HookMode::Auto);
        assert_eq!(v["runs"], true);
        assert_eq!(v["hooks"], "tracepoint");
        assert_eq!(v["blocking"], serde_json::json!([]));
        let items = v["items"].as_array().unwrap();
        assert_eq!(items.len(), 5);
        assert_eq!(items[2]["item"], "hooks.trampoline");
        assert_eq!(items[2]["state"], "refused");
        assert_eq!(items[2]["blocking"], false);
        assert_eq!(items[2]["fix"], "fix hooks.trampoline");
        assert_eq!(items[0]["fix"], serde_json::Value::Null);
        let v = json(&report(R, R, K, K, K), HookMode::Auto);
        assert_eq!(
            (v["runs"].clone(), v["hooks"].clone()),
            (false.into(), serde_json::Value::Null)
        );
    }

    #[test]
    fn capabilities_are_judged_by_what_the_run_does() {
        let caps = |cs: &[u32]| cs.iter().fold(0u64, |a, c| a | 1 << c);
        let root = 0x000001fffeffffff; // this machine's root: all but CAP_SYS_RESOURCE
        let bpf_only = caps(&[cap::BPF, cap::PERFMON]);
        let vsock = Wants { privileged_port: true, ..Wants::default() };
        let unmounted = Wants { mount_tracefs: true, ..Wants::default() };
        let tracepoints = Wants { cgroup_hooks: true, ..Wants::default() };
        #[rustfmt::skip]
        let cases: &[(u64, Wants, State, Need, &str)] = &[
            (root, vsock, K, Need::Always, "every capability"),
            (0, Wants::default(), M, Need::Always, "lacks CAP_BPF (maps and programs), CAP_PERFMON (tracing programs)"),
            (caps(&[cap::SYS_ADMIN, cap::SYS_PTRACE, cap::DAC_READ_SEARCH]), Wants::default(), K, Need::Always, "every capability"),
            (bpf_only, Wants::default(), M, Need::Always, "lacks CAP_DAC_READ_SEARCH (tracefs, and listing other users' /proc/<pid>/fd), CAP_SYS_PTRACE"),
            (bpf_only | caps(&[cap::DAC_READ_SEARCH, cap::SYS_PTRACE]), Wants::default(), K, Need::Always, "every capability"),
            (bpf_only | caps(&[cap::DAC_READ_SEARCH, cap::SYS_PTRACE]), tracepoints, M, Need::Always, "lacks CAP_NET_ADMIN (the tracepoint set's cgroup programs"),
            (bpf_only | caps(&[cap::DAC_READ_SEARCH, cap::SYS_PTRACE, cap::NET_ADMIN]), tracepoints, K, Need::Always, "every capability"),
            (bpf_only, unmounted, M, Need::Always, "CAP_SYS_ADMIN (to mount tracefs)"),
            (caps(&[cap::BPF, cap::PERFMON, cap::DAC_READ_SEARCH]), Wants::default(), M, Need::Always, "lacks CAP_SYS_PTRACE"),
            (bpf_only, vsock, M, Need::Always, "CAP_NET_BIND_SERVICE"),
            (bpf_only, Wants { enter_netns: true, ..Wants::default() }, M, Need::Always, "CAP_SYS_ADMIN (to enter --netns)"),
            (caps(&[cap::PERFMON]), Wants::default(), M, Need::Always, "lacks CAP_BPF (maps and programs)"),
        ];
        for (eff, wants, state, need, says) in cases {
            let i = privileges(*eff, *wants);
            assert_eq!((i.state, i.need), (*state, *need), "{eff:x} {wants:?}: {i:?}");
            assert!(i.detail.contains(says), "{eff:x} {wants:?}: {}", i.detail);
        }
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\nCapBnd:\t0\n";
        assert_eq!(cap_eff(status), Some(root));
        assert_eq!(cap_eff("Name: x\n"), None);
    }

    #[test]
    fn the_vsock_transport_is_named_or_the_fix_fits_the_hypervisor() {
        let ev = |f: fn(&mut VsockEvidence)| {
            let mut e = VsockEvidence::default();
            f(&mut e);
            e
        };
        #[rustfmt::skip]
        let cases: &[(VsockEvidence, bool, State, Need, &str)] = &[
            (ev(|e| { e.core = true; e.virtio = true }), true, K, Need::Always, "virtio"),
            (ev(|e| { e.core = true; e.hyperv = true; e.vmbus = true }), true, K, Need::Always, "Hyper-V"),
            (ev(|e| e.vmci = true), true, K, Need::Always, "VMware VMCI"),
            (ev(|e| e.vmbus = true), true, M, Need::Always, "modprobe hv_sock"),
            (ev(|e| e.core = true), true, M, Need::Always, "modprobe the hypervisor's transport"),
            (VsockEvidence::default(), true, M, Need::Always, "CONFIG_VSOCKETS"),
            (VsockEvidence::default(), false, M, Need::Optional, "CONFIG_VSOCKETS"),
        ];
        for (e, needed, state, need, says) in cases {
            let i = vsock(*e, *needed, "vsock:any:1023");
            assert_eq!((i.state, i.need), (*state, *need), "{e:?}");
            let all = format!("{} {}", i.detail, i.fix.clone().unwrap_or_default());
            assert!(all.contains(says), "{e:?}: {all}");
        }
        let i = vsock(VsockEvidence::default(), false, "unix:/run/hoist.sock");
        assert!(i.detail.contains("the agent listens on unix:/run/hoist.sock"), "{}", i.detail);
    }

    #[test]
    fn tracefs_mount_points_are_read_from_mountinfo() {
        let info = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
30 22 0:12 / /sys/kernel/tracing rw,relatime shared:9 - tracefs tracefs rw
31 22 0:13 / /mnt/my\\040trace rw - tracefs nodev rw
32 22 0:14 / /sys/kernel/debug rw - debugfs debugfs rw
";
        assert_eq!(tracefs_mounts(info), vec!["/sys/kernel/tracing", "/mnt/my trace"]);
        assert!(tracefs_mounts("22 1 0:21 / /proc rw - proc proc rw\n").is_empty());
        assert!(tracefs_mounts("garbage\n").is_empty());
    }

    #[test]
    fn a_refused_hook_set_is_explained_in_the_kernels_words() {
        // This machine: fentry/fexit refused with EPERM and no verifier output,
        // to a process that holds every capability.
        let i = hook_failure(Tramp, "fexit/inet_csk_listen_start", Some(1), "", "", true);
        assert_eq!((i.state, i.need), (R, Need::HookSet(Tramp)));
        assert_eq!(
            i.detail,
            "fexit/inet_csk_listen_start: EPERM with an empty verifier log: this kernel refuses trampoline programs to every process (a lockdown, LSM or BPF policy), though bpf() itself is allowed"
        );
        // The same errno for a process without the capabilities.
        let i = hook_failure(Tp, "tracepoint/syscalls/sys_enter_listen", Some(1), "", "", false);
        assert_eq!(i.state, R);
        assert_eq!(
            i.fix.as_deref(),
            Some("run hoist-agent as root, or with CAP_BPF and CAP_PERFMON")
        );
        // The verifier's last words are quoted.
        let i = hook_failure(
            Tp,
            "tp_btf/inet_sock_set_state",
            Some(22),
            "0: R1=ctx\ninvalid access\n\n",
            "",
            true,
        );
        assert_eq!(i.state, M);
        assert!(i.detail.contains("EINVAL, verifier: \"invalid access\""), "{}", i.detail);
        assert!(i.fix.as_deref().unwrap().contains("CONFIG_FTRACE_SYSCALLS=y"), "{:?}", i.fix);
        // No errno at all: the message is the reason.
        let i = hook_failure(Tramp, "", None, "", "inet_csk_listen_start has 3 parameters", true);
        assert!(
            i.detail.contains("the programs: inet_csk_listen_start has 3 parameters"),
            "{}",
            i.detail
        );
    }

    /// The `CONFIG_` names in a text.
    fn config_names(text: &str) -> std::collections::BTreeSet<&str> {
        text.match_indices("CONFIG_")
            .map(|(i, _)| {
                let rest = &text[i..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect()
    }

    /// packaging/wsl/hoist.config, README's kernel requirements and what
    /// check tests name the same options: an option added to one and not the
    /// others fails here.
    #[test]
    fn the_wsl_fragment_readme_and_check_name_the_same_kernel_options() {
        use std::collections::BTreeSet;
        let fragment = include_str!("../../packaging/wsl/hoist.config");
        let readme = include_str!("../../README.md");
        let named: BTreeSet<&str> =
            KERNEL_CONFIG.iter().flat_map(|(_, o)| o.iter().copied()).collect();

        let mut in_fragment = BTreeSet::new();
        for line in fragment.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let option = line.strip_suffix("=y").unwrap_or_else(|| {
                panic!("{line}: a custom WSL kernel loads no modules, every option is =y")
            });
            assert!(in_fragment.insert(option), "{option} twice in the fragment");
        }
        let for_wsl: BTreeSet<&str> =
            named.iter().filter(|o| !NOT_FOR_WSL.contains(o)).copied().collect();
        assert_eq!(
            for_wsl.difference(&in_fragment).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "check tests for these, packaging/wsl/hoist.config lacks them"
        );
        assert_eq!(
            in_fragment.difference(&named).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "packaging/wsl/hoist.config sets these, no item of check names them (KERNEL_CONFIG)"
        );

        let section = readme
            .split("### Guest kernel requirements")
            .nth(1)
            .expect("README has a section \"Guest kernel requirements\"")
            .split("\n#")
            .next()
            .unwrap();
        let in_readme = config_names(section);
        assert_eq!(
            named.difference(&in_readme).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "check tests for these, README's kernel requirements do not name them"
        );
        assert_eq!(
            in_readme.difference(&named).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "README's kernel requirements name these, check does not (KERNEL_CONFIG)"
        );
        for (key, _) in KERNEL_CONFIG {
            assert!(ITEMS.contains(key), "{key} is no item of the report");
            assert!(section.contains(&format!("`{key}`")), "README's table lacks the item {key}");
        }
        assert!(readme.contains("packaging/wsl/hoist.config"));
    }

    #[test]
    fn every_item_names_its_kernel_options() {
        let keys: Vec<&str> = KERNEL_CONFIG.iter().map(|(k, _)| *k).collect();
        for k in
            ["btf", "bpf", "ringbuf", "tracefs", "hooks.trampoline", "hooks.tracepoint", "vsock"]
        {
            assert!(keys.contains(&k), "{k}");
            assert!(!options(k).is_empty());
        }
        assert_eq!(options("sock_diag.udp4"), "CONFIG_INET_DIAG=y, CONFIG_INET_UDP_DIAG=y");
    }
}
