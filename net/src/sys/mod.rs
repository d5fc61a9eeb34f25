//! The system calls this crate makes directly, one file per OS, each a set of
//! safe wrappers: `linux.rs` (rustix: the relay's pipes and splice(2), reads
//! and writes that never raise SIGPIPE, write shutdowns, the open-file limit)
//! and `windows.rs` (windows-sys: what socket2 lacks for Hyper-V sockets and
//! exclusive port binding, and the registry). `windows.rs` is the only place
//! in this crate with `unsafe`.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::*;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::*;
