//! Process set-up both binaries share: logging, enough file descriptors for
//! every relayed connection, the exit path, and stopping on SIGINT/SIGTERM
//! (on Windows: on console control events, `console.rs`).

use crate::logging::{self, LogFormat};
#[cfg(unix)]
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

/// Sets up the process, runs `body`, logs its error and exits non-zero.
pub fn run_main(name: &str, format: LogFormat, body: impl FnOnce() -> anyhow::Result<()>) -> ! {
    run_main_logging_to(name, format, None, body)
}

/// [`run_main`], logging to the end of `log_file` instead of stderr when
/// one is given (a relay started at logon has no terminal to log to).
pub fn run_main_logging_to(
    name: &str,
    format: LogFormat,
    log_file: Option<&std::path::Path>,
    body: impl FnOnce() -> anyhow::Result<()>,
) -> ! {
    let logger = match log_file {
        Some(path) => logging::init_file(format, path),
        None => logging::init(format),
    };
    if let Err(e) = logger {
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

/// Reads a shared-token file. The file must be readable by its owner alone:
/// a token others can read protects nothing.
pub fn read_token_file(path: &std::path::Path) -> anyhow::Result<hoist_wire::Token> {
    use anyhow::Context;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "the token file {} is readable by others (mode {mode:o}): chmod 600 {}",
                path.display(),
                path.display()
            );
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    hoist_wire::Token::from_file_contents(&bytes)
        .map_err(|e| anyhow::anyhow!("the token file {}: {e}", path.display()))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_files_must_be_private_and_long_enough() {
        let dir = std::env::temp_dir().join(format!("hoist-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("token");
        let cases: &[(&[u8], u32, Option<&str>)] = &[
            (b"0123456789abcdef0123\n", 0o600, None),
            (b"0123456789abcdef0123\n", 0o644, Some("readable by others (mode 644)")),
            (b"short\n", 0o600, Some("at least 16")),
        ];
        for (content, mode, want) in cases {
            std::fs::write(&p, content).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
            match (read_token_file(&p), want) {
                (Ok(_), None) => {}
                (Err(e), Some(w)) => assert!(format!("{e:#}").contains(w), "{e:#}"),
                (r, w) => panic!("mode {mode:o}: got {:?}, want {w:?}", r.map(|_| ())),
            }
        }
        let missing = read_token_file(&dir.join("missing")).unwrap_err();
        assert!(format!("{missing:#}").contains("reading the token file"), "{missing:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
