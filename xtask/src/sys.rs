//! xtask's system calls, as safe wrappers (rustix, signal-hook), and its one
//! `unsafe` call: a `pre_exec` hook for the demo's children.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub use rustix::process::Signal;

/// Whether xtask runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Sets `flag` on SIGINT and SIGTERM instead of dying.
pub fn flag_on_stop_signals(flag: Arc<AtomicBool>) -> io::Result<()> {
    signal_hook::flag::register(signal_hook::consts::SIGINT, flag.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, flag)?;
    Ok(())
}

/// Makes `cmd`'s process die (SIGTERM) when xtask dies, even by SIGKILL, and
/// refuse to start if xtask already died.
pub fn die_with_parent(cmd: &mut Command) {
    let parent = rustix::process::getpid();
    // SAFETY: the hook runs between fork and exec and makes only raw system
    // calls (prctl, getppid), which are async-signal-safe; it touches no
    // memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::TERM))?;
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::other("xtask exited during start-up"));
            }
            Ok(())
        });
    }
}

/// Sends `sig` to a child process.
pub fn signal(child: &Child, sig: Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Sends `sig` to a process by pid (a child not yet reaped).
pub fn signal_pid(pid: u32, sig: Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Sends `sig` to the process group a child leads.
pub fn signal_group(child: &Child, sig: Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// Takes an exclusive lock on `file` without waiting; false when another
/// process holds it.
pub fn try_lock(file: &std::fs::File) -> bool {
    rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
}
