//! The local admin endpoint each binary owns, for `status` (and the host's
//! `reload`): a Unix socket (mode 0600, its peers' credentials checked: only
//! the process's own user and root) on Linux, a named pipe on Windows (its
//! default security lets only its creator, administrators and SYSTEM write
//! to it, and remote clients are rejected). A request is one JSON line; the
//! answer is one or more JSON lines.

use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use std::io;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// Longest request line a server reads.
const MAX_REQUEST: usize = 4096;
/// Longest answer line a client reads: a status of the largest table
/// (4 x 65,535 forwards, a few hundred bytes each) fits.
const MAX_ANSWER: usize = 256 << 20;

/// A byte stream of either OS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where `name` (`hoist-host`, `hoist-agent`) listens unless told otherwise:
/// `/run/hoist/NAME.sock` for root, `$XDG_RUNTIME_DIR/hoist/NAME.sock` (or
/// `/tmp/hoist-UID/NAME.sock`) for anyone else; on Windows the pipe
/// `\\.\pipe\hoist-NAME-USER`.
pub fn default_path(name: &str) -> PathBuf {
    #[cfg(unix)]
    {
        let uid = crate::sys::effective_uid();
        let dir = match (uid, std::env::var_os("XDG_RUNTIME_DIR")) {
            (0, _) => PathBuf::from("/run/hoist"),
            (_, Some(d)) if !d.is_empty() => PathBuf::from(d).join("hoist"),
            _ => std::env::temp_dir().join(format!("hoist-{uid}")),
        };
        dir.join(format!("{name}.sock"))
    }
    #[cfg(windows)]
    {
        let user = std::env::var("USERNAME").unwrap_or_else(|_| "user".into());
        let user: String =
            user.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        PathBuf::from(format!(r"\\.\pipe\hoist-{name}-{user}"))
    }
}

/// The listening side.
pub struct AdminListener {
    #[cfg(unix)]
    inner: tokio::net::UnixListener,
    #[cfg(windows)]
    inner: tokio::net::windows::named_pipe::NamedPipeServer,
    path: PathBuf,
}

/// One admin connection: JSON lines both ways.
pub struct AdminConn {
    reader: BufReader<tokio::io::ReadHalf<Box<dyn Io>>>,
    writer: tokio::io::WriteHalf<Box<dyn Io>>,
    /// Longest line `recv` takes: a request's on the server side, an
    /// answer's on the client side.
    max_line: usize,
}

impl AdminListener {
    /// Listens at `path`. Another live process there is an error (two
    /// relays cannot share one status socket); a stale socket is replaced.
    pub async fn bind(path: &Path) -> Result<AdminListener> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::{DirBuilderExt, MetadataExt};
            if let Some(dir) = path.parent() {
                if !dir.exists() {
                    let mode = if crate::sys::effective_uid() == 0 { 0o755 } else { 0o700 };
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(mode)
                        .create(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                let owner = std::fs::metadata(dir)
                    .with_context(|| format!("reading {}", dir.display()))?
                    .uid();
                if owner != crate::sys::effective_uid() && owner != 0 {
                    anyhow::bail!(
                        "{} belongs to uid {owner}: another user could replace the admin socket",
                        dir.display()
                    );
                }
            }
            let inner = crate::transport::bind_unix(path, 0o600).await.map_err(|e| {
                if format!("{e:#}").contains("in use by a running process") {
                    anyhow!("{} is in use: another instance is running (give this one its own with --admin-socket)", path.display())
                } else {
                    e
                }
            })?;
            Ok(AdminListener { inner, path: path.to_path_buf() })
        }
        #[cfg(windows)]
        {
            use tokio::net::windows::named_pipe::ServerOptions;
            let inner = ServerOptions::new()
                .first_pipe_instance(true)
                .reject_remote_clients(true)
                .create(path)
                .map_err(|e| {
                    anyhow!("{}: {e}: another instance is running (give this one its own with --admin-socket)", path.display())
                })?;
            Ok(AdminListener { inner, path: path.to_path_buf() })
        }
    }

    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next connection from the process's own user (or root).
    pub async fn accept(&mut self) -> io::Result<AdminConn> {
        #[cfg(unix)]
        loop {
            let (s, _) = self.inner.accept().await?;
            let (uid, pid) = crate::sys::peer_credentials(&s)?;
            if uid == 0 || uid == crate::sys::effective_uid() {
                return Ok(AdminConn::new(Box::new(s), MAX_REQUEST));
            }
            tracing::warn!(uid, pid, "refused an admin connection from another user");
        }
        #[cfg(windows)]
        {
            use tokio::net::windows::named_pipe::ServerOptions;
            self.inner.connect().await?;
            let next = ServerOptions::new().reject_remote_clients(true).create(&self.path)?;
            let connected = std::mem::replace(&mut self.inner, next);
            Ok(AdminConn::new(Box::new(connected), MAX_REQUEST))
        }
    }

    /// Serves connections until `shutdown`, each on a task of its own with
    /// `handle`; a connection's failure is its own (debug), a failed accept
    /// is logged and retried.
    pub async fn serve<F, Fut>(mut self, shutdown: tokio_util::sync::CancellationToken, handle: F)
    where
        F: Fn(AdminConn) -> Fut,
        Fut: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        loop {
            let conn = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = self.accept() => c,
            };
            match conn {
                Ok(conn) => {
                    let served = handle(conn);
                    tokio::spawn(async move {
                        if let Err(e) = served.await {
                            tracing::debug!("admin connection: {e:#}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("accepting an admin connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

#[cfg(unix)]
impl Drop for AdminListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl AdminConn {
    fn new(io: Box<dyn Io>, max_line: usize) -> AdminConn {
        let (r, w) = tokio::io::split(io);
        AdminConn { reader: BufReader::new(r), writer: w, max_line }
    }

    /// The next JSON line; `None` at the end.
    pub async fn recv(&mut self) -> Result<Option<Value>> {
        let mut line = Vec::new();
        let max = self.max_line;
        let n = (&mut self.reader).take(max as u64 + 1).read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Ok(None);
        }
        if line.len() > max {
            anyhow::bail!("a line longer than {max} bytes");
        }
        Ok(Some(serde_json::from_slice(&line).context("a line that is not JSON")?))
    }

    /// Sends one JSON line.
    pub async fn send(&mut self, v: &Value) -> io::Result<()> {
        let mut line = serde_json::to_vec(v).map_err(io::Error::other)?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        self.writer.flush().await
    }
}

use tokio::io::AsyncReadExt as _;

/// Connects to the admin endpoint of `who` at `path` and sends `request`.
/// Nothing listening there is said in one line, with how to start it.
pub async fn ask(path: &Path, request: &Value, who: &str, start: &str) -> Result<AdminConn> {
    let nothing = |e: &io::Error| {
        matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused)
    };
    #[cfg(unix)]
    let io: Box<dyn Io> = match tokio::net::UnixStream::connect(path).await {
        Ok(s) => Box::new(s),
        Err(e) if nothing(&e) => {
            anyhow::bail!(
                "no {who} is running for this user (nothing at {}): start it with `{start}`",
                path.display()
            )
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            anyhow::bail!(
                "{}: permission denied: only the user running {who} (and root) may ask it",
                path.display()
            )
        }
        Err(e) => return Err(anyhow!("connecting to {}: {e}", path.display())),
    };
    #[cfg(windows)]
    let io: Box<dyn Io> = match tokio::net::windows::named_pipe::ClientOptions::new().open(path) {
        Ok(s) => Box::new(s),
        Err(e) if nothing(&e) => {
            anyhow::bail!(
                "no {who} is running for this user (nothing at {}): start it with `{start}`",
                path.display()
            )
        }
        Err(e) => return Err(anyhow!("connecting to {}: {e}", path.display())),
    };
    let mut conn = AdminConn::new(io, MAX_ANSWER);
    conn.send(request).await.with_context(|| format!("asking {}", path.display()))?;
    Ok(conn)
}

/// Asks `who` at `path` for its status and prints it: the JSON, or
/// `table` of it; with `watch`, every line that follows too, as it comes.
pub async fn print_status(
    path: &Path,
    who: &str,
    start: &str,
    as_json: bool,
    watch: bool,
    table: impl Fn(&Value) -> String,
) -> Result<()> {
    use std::io::Write;
    let command = if watch { "watch" } else { "status" };
    let mut conn = ask(path, &serde_json::json!({ "command": command }), who, start).await?;
    let mut out = std::io::stdout().lock();
    while let Some(v) = conn.recv().await? {
        if watch || as_json {
            writeln!(out, "{v}")?;
            out.flush()?;
        } else {
            write!(out, "{}", table(&v))?;
        }
        if !watch {
            break;
        }
    }
    Ok(())
}

/// Runs a command that talks to a running binary (status, reload) and
/// exits: 0, or 1 with its error on one line.
pub fn run_client(name: &str, f: impl std::future::Future<Output = Result<()>>) -> ! {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
    match rt.map_err(anyhow::Error::from).and_then(|rt| rt.block_on(f)) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::exit(1);
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// A request and its answer cross; a second instance at the same path
    /// is refused; nothing listening is one line that says how to start it.
    #[tokio::test]
    async fn requests_are_answered_and_absence_is_explained() {
        let dir = std::env::temp_dir().join(format!("hoist-admin-{}", std::process::id()));
        let path = dir.join("sub").join("x.sock");
        let mut l = AdminListener::bind(&path).await.unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let err = AdminListener::bind(&path).await.err().unwrap();
        assert!(format!("{err:#}").contains("another instance is running"), "{err:#}");
        let server = tokio::spawn(async move {
            // The second bind's liveness probe comes first, saying nothing.
            loop {
                let mut c = l.accept().await.unwrap();
                if let Some(req) = c.recv().await.unwrap() {
                    c.send(&serde_json::json!({ "echo": req["command"] })).await.unwrap();
                    return l;
                }
            }
        });
        let mut c =
            ask(&path, &serde_json::json!({"command": "status"}), "x", "x run").await.unwrap();
        assert_eq!(c.recv().await.unwrap().unwrap(), serde_json::json!({"echo": "status"}));
        drop(server.await.unwrap());
        let err = ask(&path, &serde_json::json!({}), "hoist-host", "hoist-host --guest ...")
            .await
            .err()
            .unwrap();
        assert_eq!(
            format!("{err:#}"),
            format!(
                "no hoist-host is running for this user (nothing at {}): start it with `hoist-host --guest ...`",
                path.display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A status is as long as the forwards it lists: a client reads an
    /// answer far longer than a request may be; a server still refuses a
    /// request that long.
    #[tokio::test]
    async fn long_answers_are_read_and_long_requests_refused() {
        let dir = std::env::temp_dir().join(format!("hoist-admin-long-{}", std::process::id()));
        let path = dir.join("x.sock");
        let mut l = AdminListener::bind(&path).await.unwrap();
        let long = "f".repeat(1 << 20);
        let answer = serde_json::json!({ "forwards": long });
        let sent = answer.clone();
        let server = tokio::spawn(async move {
            let mut c = l.accept().await.unwrap();
            c.recv().await.unwrap().unwrap();
            c.send(&sent).await.unwrap();
            let mut c = l.accept().await.unwrap();
            c.recv().await.map(|_| ()).unwrap_err().to_string()
        });
        let mut c = ask(&path, &serde_json::json!({"command": "status"}), "x", "x").await.unwrap();
        assert_eq!(c.recv().await.unwrap().unwrap(), answer);
        // The server stops reading at its limit and closes: the rest of the
        // request may meet a closed socket.
        let _ = ask(&path, &serde_json::json!({ "command": long }), "x", "x").await;
        let refused = server.await.unwrap();
        assert!(refused.contains("longer than"), "{refused}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
