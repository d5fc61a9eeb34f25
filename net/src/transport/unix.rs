//! `unix:` transport: the local demo, the tests, and the host side of hybrid
//! vsock (`vsock_mux`).

use anyhow::{bail, Context, Result};
use std::path::Path;
use tokio::net::{UnixListener, UnixStream};

pub(super) async fn connect(path: &Path) -> Result<UnixStream> {
    Ok(UnixStream::connect(path).await?)
}

/// Binds `path` with permission bits `mode`. A socket file left behind by a
/// dead agent is replaced; one a live agent still answers on is an error, and
/// so is any file that is not a socket: that is never removed.
pub(crate) async fn bind(path: &Path, mode: u32) -> Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            bail!("{} exists and is not a socket; refusing to replace it", path.display())
        }
        Ok(_) => {
            if UnixStream::connect(path).await.is_ok() {
                bail!("{} is in use by a running process", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        }
        Err(_) => {}
    }
    let l = UnixListener::bind(path)?;
    // Until this line the socket has the umask's bits; peers are checked by
    // their credentials on every connection anyway.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", path.display()))?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a socket is ever replaced: a regular file (say /etc/hosts given
    /// by mistake) is refused and left as it was.
    #[tokio::test]
    async fn only_stale_sockets_are_replaced_and_the_mode_is_set() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("hoist-unix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("precious");
        std::fs::write(&file, b"keep me").unwrap();
        let err = bind(&file, 0o600).await.unwrap_err();
        assert!(format!("{err:#}").contains("is not a socket"), "{err:#}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

        let sock = dir.join("agent.sock");
        let live = bind(&sock, 0o600).await.unwrap();
        assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
        let err = bind(&sock, 0o600).await.unwrap_err();
        assert!(format!("{err:#}").contains("in use"), "{err:#}");
        drop(live);
        // The file of a dead listener is stale: replaced, with the new mode.
        let _again = bind(&sock, 0o660).await.unwrap();
        assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o660);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
