//! Process set-up both binaries share: logging, enough file descriptors for
//! every relayed connection, the exit path, and stopping on SIGINT/SIGTERM.

use crate::logging::{self, LogFormat};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

/// Sets up the process, runs `body`, logs its error and exits non-zero.
pub fn run_main(name: &str, format: LogFormat, body: impl FnOnce() -> anyhow::Result<()>) -> ! {
    if let Err(e) = logging::init(format) {
        eprintln!("{name}: {e:#}");
        std::process::exit(2);
    }
    raise_fd_limit();
    match body() {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            error!("{e:#}");
            std::process::exit(1);
        }
    }
}

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

/// Cancels `shutdown` on the first SIGINT or SIGTERM.
pub async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    info!(event = "shutdown", "signal received, stopping");
    shutdown.cancel();
}
