//! `unix:` transport: the local demo, the tests, and the host side of hybrid
//! vsock (`vsock_mux`).

use anyhow::{bail, Context, Result};
use std::path::Path;
use tokio::net::{UnixListener, UnixStream};

pub(super) async fn connect(path: &Path) -> Result<UnixStream> {
    Ok(UnixStream::connect(path).await?)
}

/// Binds `path`. A socket file left behind by a dead agent is replaced; one a
/// live agent still answers on is an error.
pub(super) async fn bind(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!("{} is in use by a running process", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    Ok(UnixListener::bind(path)?)
}
