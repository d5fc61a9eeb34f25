//! Process set-up both binaries share: logging, enough file descriptors for
//! every relayed connection, the exit path, and stopping on SIGINT/SIGTERM
//! (on Windows: on console control events, `console.rs`).

use crate::logging::{self, LogFormat};
#[cfg(unix)]
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

/// Sets up the process, runs `body`, logs its error and exits non-zero.
pub fn run_main(name: &str, format: LogFormat, body: impl FnOnce() -> anyhow::Result<()>) -> ! {
    if let Err(e) = logging::init(format) {
        eprintln!("{name}: {e:#}");
        std::process::exit(2);
    }
    if let Some((from, to)) = crate::sys::raise_fd_limit() {
        debug!(from, to, "raised the open-file limit");
    }
    match body() {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            error!("{e:#}");
            std::process::exit(1);
        }
    }
}

#[cfg(windows)]
pub use crate::console::stop_on_signal;

/// Cancels `shutdown` on the first SIGINT or SIGTERM.
#[cfg(unix)]
pub async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!(event = "shutdown", "signal received, stopping");
    shutdown.cancel();
}
