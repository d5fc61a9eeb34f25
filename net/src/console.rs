//! Stopping on Windows, where there are no Unix signals: Ctrl-C and
//! Ctrl-Break, the console window closing, the user logging off and the
//! machine shutting down all cancel the relay. For the last three Windows
//! ends the process soon after the handler returns, so the clean-up is best
//! effort there; the host's ports close with the process either way.

use std::future::Future;
use std::io;
use tokio::signal::windows::{ctrl_break, ctrl_c, ctrl_close, ctrl_logoff, ctrl_shutdown};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Cancels `shutdown` on the first console control event.
pub async fn stop_on_signal(shutdown: CancellationToken) {
    let what = tokio::select! {
        w = event("Ctrl-C", ctrl_c().map(|mut s| async move { s.recv().await })) => w,
        w = event("Ctrl-Break", ctrl_break().map(|mut s| async move { s.recv().await })) => w,
        w = event("console closed", ctrl_close().map(|mut s| async move { s.recv().await })) => w,
        w = event("logoff", ctrl_logoff().map(|mut s| async move { s.recv().await })) => w,
        w = event("shutdown", ctrl_shutdown().map(|mut s| async move { s.recv().await })) => w,
    };
    info!(event = "shutdown", "{what}, stopping");
    shutdown.cancel();
}

/// Waits for one event; one that cannot be watched never fires (and says so).
async fn event<F: Future<Output = Option<()>>>(
    what: &'static str,
    r: io::Result<F>,
) -> &'static str {
    match r {
        Ok(f) => match f.await {
            Some(()) => what,
            None => std::future::pending().await,
        },
        Err(e) => {
            warn!("cannot watch for {what}: {e}");
            std::future::pending().await
        }
    }
}
