//! Windows system calls (windows-sys), as safe wrappers. The only `unsafe` in
//! this crate, each block with its reason.
#![allow(unsafe_code)]

/// Windows has no per-process socket limit to raise (sockets are handles,
/// bounded by memory only).
pub fn raise_fd_limit() -> Option<(u64, u64)> {
    None
}
