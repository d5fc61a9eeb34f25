//! The agent's PID namespace, as the eBPF programs are told it. WSL runs
//! every distro of a VM in a PID namespace of its own, all sharing one
//! network namespace: one agent sees the listeners of every distro, and
//! `bpf_get_current_pid_tgid` would name their owners by the root
//! namespace's pids, which no distro's /proc shows. The programs instead ask
//! `bpf_get_ns_current_pid_tgid` for the pid in this namespace (0 for a task
//! of another one), which is what the snapshot's /proc look-up reports too.

use anyhow::{Context, Result};
use std::os::unix::fs::MetadataExt;

/// A PID namespace as `bpf_get_ns_current_pid_tgid` identifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidNs {
    /// The nsfs device as the kernel encodes a `dev_t` (major << 20 | minor),
    /// which is what the helper compares with; stat(2) reports another
    /// encoding.
    pub dev: u64,
    /// The namespace's inode (`pid:[ino]`).
    pub ino: u64,
}

impl PidNs {
    /// The calling process's own PID namespace (`/proc/self/ns/pid`).
    pub fn of_self() -> Result<PidNs> {
        let path = "/proc/self/ns/pid";
        let m = std::fs::metadata(path).with_context(|| format!("reading {path}"))?;
        Ok(PidNs::from_stat(m.dev(), m.ino()))
    }

    /// From stat(2)'s `st_dev` and `st_ino` of a namespace file.
    pub fn from_stat(st_dev: u64, st_ino: u64) -> PidNs {
        let (major, minor) = (rustix::fs::major(st_dev), rustix::fs::minor(st_dev));
        PidNs { dev: (u64::from(major) << 20) | u64::from(minor), ino: st_ino }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// stat(2) and the kernel encode a device number differently once the
    /// minor is above 255: the helper must get the kernel's.
    #[test]
    fn device_numbers_are_given_in_the_kernels_encoding() {
        let cases: &[(u32, u32, u64)] = &[
            (0, 4, 4),
            (0, 255, 255),
            (0, 300, 300),
            (0, 0xfffff, 0xfffff),
            (8, 1, (8 << 20) | 1),
            (259, 70000, (259 << 20) | 70000),
        ];
        for &(major, minor, kernel) in cases {
            let st_dev = rustix::fs::makedev(major, minor);
            assert_eq!(
                PidNs::from_stat(st_dev, 7),
                PidNs { dev: kernel, ino: 7 },
                "{major}:{minor}"
            );
        }
        // Where the two encodings differ (the reason for the conversion).
        assert_ne!(rustix::fs::makedev(0, 300), 300);
    }

    #[test]
    fn its_own_namespace_is_found() {
        let ns = PidNs::of_self().unwrap();
        let link = std::fs::read_link("/proc/self/ns/pid").unwrap();
        assert_eq!(link.to_str().unwrap(), format!("pid:[{}]", ns.ino));
    }
}
