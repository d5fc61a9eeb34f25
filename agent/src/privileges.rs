//! What the agent needs from the kernel when it does not run as root, and
//! the one line it ends with when it lacks some of it. The set was found by
//! running the agent as an ordinary user with ambient capabilities and
//! dropping each in turn (e2e/tests/capabilities.rs); the systemd unit
//! (packaging/systemd/hoist-agent.service) grants exactly these:
//!
//! - CAP_BPF: maps, BTF and programs (bpf(2));
//! - CAP_PERFMON: tracing programs (fexit/fentry, tp_btf, tracepoints) and
//!   attaching them;
//! - CAP_DAC_READ_SEARCH: tracefs (mode 0700, root's) for the tracepoint
//!   hooks' ids, and listing /proc/<pid>/fd (0500, the owner's) of other
//!   users' processes;
//! - CAP_SYS_PTRACE: reading the links in those /proc/<pid>/fd (the kernel
//!   asks for ptrace read access), which say who owns a listener;
//! - CAP_NET_BIND_SERVICE: the vsock port, up to 1023 (net's vsock.rs);
//! - CAP_NET_ADMIN: the tracepoint set's cgroup socket programs (UDP
//!   servers), which the kernel counts as networking programs;
//! - CAP_SYS_ADMIN only where tracefs is not mounted and the agent must mount
//!   it (the tracepoint hooks; systemd mounts it at boot). It would also
//!   stand in for CAP_BPF and CAP_PERFMON, which is why those two are only
//!   seen to be needed without it.
//!
//! sock_diag needs nothing: it dumps every TCP and UDP socket to any user.

use anyhow::{bail, Context, Result};
use rustix::thread::CapabilitySet;
use std::io::ErrorKind;
use std::path::Path;

/// The first words of every such error: what to grant.
pub const NEEDS: &str = "hoist-agent needs root, or the capabilities CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, CAP_NET_BIND_SERVICE and CAP_NET_ADMIN (as packaging/systemd/hoist-agent.service grants them)";

/// Checks that the agent can tell who owns another user's listener. The
/// snapshot reads /proc/<pid>/fd of every process, and without these two
/// capabilities it would silently lose the owner (pid and command) of every
/// listener not its own; so the agent says so and stops instead. Asked of
/// the capability sets, not by probing some process: a process may refuse
/// even root (another user namespace's, or a sandbox's init).
pub fn check_owner_access() -> Result<()> {
    let caps = rustix::thread::capabilities(None).context("reading the agent's capabilities")?;
    owner_access(caps.effective)
}

fn owner_access(effective: CapabilitySet) -> Result<()> {
    let needed = [
        (
            CapabilitySet::DAC_READ_SEARCH,
            "CAP_DAC_READ_SEARCH it cannot list /proc/<pid>/fd (mode 0500, the owner's)",
        ),
        (
            CapabilitySet::SYS_PTRACE,
            "CAP_SYS_PTRACE it cannot read the links in /proc/<pid>/fd (the kernel asks for ptrace read access)",
        ),
    ];
    for (cap, without) in needed {
        if !effective.contains(cap) {
            bail!(
                "{NEEDS}: without {without} of other users' processes, to tell who owns a listener"
            );
        }
    }
    Ok(())
}

/// The tracefs folder of the tracepoint hooks could not be read.
pub fn tracefs_unreadable(path: &Path, e: &std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "{NEEDS}: without CAP_DAC_READ_SEARCH it cannot read tracefs, which is root's ({}: {e})",
        path.display()
    )
}

/// tracefs was not mounted and mounting it failed.
pub fn tracefs_unmountable(target: &str, e: &std::io::Error) -> anyhow::Error {
    if e.kind() == ErrorKind::PermissionDenied || e.raw_os_error() == Some(1) {
        return anyhow::anyhow!(
            "tracefs is not mounted on {target} and mounting it needs root or CAP_SYS_ADMIN: mount it first (mount -t tracefs tracefs {target}; systemd does at boot) ({e})"
        );
    }
    anyhow::anyhow!("tracefs is not mounted and mounting it on {target} failed: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_need_both_capabilities() {
        let both = CapabilitySet::DAC_READ_SEARCH | CapabilitySet::SYS_PTRACE;
        owner_access(both | CapabilitySet::BPF).unwrap();
        let e = owner_access(CapabilitySet::SYS_PTRACE).unwrap_err().to_string();
        assert!(e.starts_with(NEEDS) && e.contains("without CAP_DAC_READ_SEARCH"), "{e}");
        let e = owner_access(CapabilitySet::DAC_READ_SEARCH).unwrap_err().to_string();
        assert!(e.contains("without CAP_SYS_PTRACE"), "{e}");
    }

    #[test]
    fn tracefs_errors_say_what_to_grant() {
        let denied = std::io::Error::from_raw_os_error(13);
        let e = tracefs_unreadable(Path::new("/sys/kernel/tracing/events"), &denied);
        assert!(e.to_string().starts_with(NEEDS), "{e}");
        assert!(e.to_string().contains("without CAP_DAC_READ_SEARCH"), "{e}");
        let eperm = std::io::Error::from_raw_os_error(1);
        let e = tracefs_unmountable("/sys/kernel/tracing", &eperm);
        assert!(e.to_string().contains("needs root or CAP_SYS_ADMIN"), "{e}");
        let enodev = std::io::Error::from_raw_os_error(19);
        let e = tracefs_unmountable("/sys/kernel/tracing", &enodev);
        assert!(!e.to_string().contains("CAP_SYS_ADMIN"), "{e}");
    }
}
