//! Process set-up both binaries share: enough file descriptors for every
//! relayed connection (each one holds a socket on either side).

use tracing::debug;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; the default soft limit
/// of 1024 would cap a relay at a few hundred connections.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
            return;
        }
        let old = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
            debug!(from = old, to = lim.rlim_cur, "raised the open-file limit");
        }
    }
}
