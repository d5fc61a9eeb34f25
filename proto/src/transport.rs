//! Transports between host and agent: the only place that opens sockets to the
//! peer. `vsock:` is production (a Linux host with vhost-vsock, or inside the
//! guest), `vsock-mux:` is the hybrid-vsock Unix socket of Firecracker, Cloud
//! Hypervisor and vhost-device-vsock (`CONNECT <port>\n` -> `OK <n>\n`), and
//! `unix:` / `tcp:` serve tests and the local demo. Every transport yields the
//! same [`Stream`].

use anyhow::{bail, Context, Result};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context as TaskContext, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_vsock::{VsockAddr, VsockListener, VsockStream};

/// `VMADDR_CID_ANY`: bind on every CID the guest has.
pub const CID_ANY: u32 = u32::MAX;
/// `VMADDR_CID_HOST`: the hypervisor's host.
pub const CID_HOST: u32 = 2;

/// Where a peer is reached or listened for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addr {
    /// `unix:<path>`
    Unix(PathBuf),
    /// `vsock:<cid>:<port>`; cid may be `any` or `host`.
    Vsock { cid: u32, port: u32 },
    /// `vsock-mux:<path>:<port>`: a hybrid-vsock Unix socket and the guest port.
    VsockMux { path: PathBuf, port: u32 },
    /// `tcp:<ip>:<port>`
    Tcp(SocketAddr),
}

impl FromStr for Addr {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Addr> {
        let (scheme, rest) = s
            .split_once(':')
            .with_context(|| format!("address {s:?} has no scheme (unix:, vsock:, vsock-mux:, tcp:)"))?;
        let addr = match scheme {
            "unix" if !rest.is_empty() => Addr::Unix(rest.into()),
            "vsock" => {
                let (cid, port) = rest
                    .split_once(':')
                    .with_context(|| format!("{s:?}: expected vsock:<cid>:<port>"))?;
                let cid = match cid {
                    "any" | "-1" => CID_ANY,
                    "host" => CID_HOST,
                    n => n.parse().with_context(|| format!("{s:?}: bad vsock CID {n:?}"))?,
                };
                Addr::Vsock { cid, port: parse_port(s, port)? }
            }
            "vsock-mux" => {
                let (path, port) = rest
                    .rsplit_once(':')
                    .with_context(|| format!("{s:?}: expected vsock-mux:<path>:<port>"))?;
                if path.is_empty() {
                    bail!("{s:?}: empty socket path");
                }
                Addr::VsockMux { path: path.into(), port: parse_port(s, port)? }
            }
            "tcp" => Addr::Tcp(rest.parse().with_context(|| format!("{s:?}: expected tcp:<ip>:<port>"))?),
            _ => bail!("address {s:?}: unknown scheme {scheme:?} (unix:, vsock:, vsock-mux:, tcp:)"),
        };
        Ok(addr)
    }
}

fn parse_port(whole: &str, port: &str) -> Result<u32> {
    port.parse().with_context(|| format!("{whole:?}: bad port {port:?}"))
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
            Addr::Vsock { cid: CID_ANY, port } => write!(f, "vsock:any:{port}"),
            Addr::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Addr::VsockMux { path, port } => write!(f, "vsock-mux:{}:{port}", path.display()),
            Addr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// A connected byte stream over any transport.
pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
    Vsock(VsockStream),
}

impl Stream {
    /// The socket's descriptor where readiness can be driven directly (TCP and
    /// Unix); `None` for vsock, which the relay copies instead of splicing.
    pub fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        match self {
            Stream::Unix(s) => Some(s.as_raw_fd()),
            Stream::Tcp(s) => Some(s.as_raw_fd()),
            Stream::Vsock(_) => None,
        }
    }

    /// Waits for readiness (TCP and Unix only).
    pub async fn ready(&self, interest: tokio::io::Interest) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.ready(interest).await.map(|_| ()),
            Stream::Tcp(s) => s.ready(interest).await.map(|_| ()),
            Stream::Vsock(_) => Err(io::Error::new(io::ErrorKind::Unsupported, "no readiness for vsock")),
        }
    }

    /// Runs a non-blocking operation, clearing readiness on `WouldBlock`.
    pub fn try_io<R>(&self, interest: tokio::io::Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        match self {
            Stream::Unix(s) => s.try_io(interest, f),
            Stream::Tcp(s) => s.try_io(interest, f),
            Stream::Vsock(_) => Err(io::Error::new(io::ErrorKind::Unsupported, "no readiness for vsock")),
        }
    }

    /// Makes the next close a reset where the transport has one, so a peer's
    /// reset is passed on as a reset.
    pub fn set_reset_on_close(&self) {
        // A zero linger on a non-blocking socket never blocks: close sends
        // RST at once.
        if let Stream::Tcp(s) = self {
            let _ = socket2::SockRef::from(s).set_linger(Some(std::time::Duration::ZERO));
        }
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Unix($s) => $e,
            Stream::Tcp($s) => $e,
            Stream::Vsock($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// Longest line a hybrid-vsock multiplexer may answer `CONNECT` with.
const MUX_REPLY_MAX: usize = 64;

/// Connects to `addr`.
pub async fn connect(addr: &Addr) -> Result<Stream> {
    let stream = match addr {
        Addr::Unix(path) => Stream::Unix(
            UnixStream::connect(path).await.with_context(|| format!("connecting to {addr}"))?,
        ),
        Addr::Tcp(sa) => {
            let s = TcpStream::connect(sa).await.with_context(|| format!("connecting to {addr}"))?;
            s.set_nodelay(true).ok();
            Stream::Tcp(s)
        }
        Addr::Vsock { cid, port } => Stream::Vsock(
            VsockStream::connect(VsockAddr::new(*cid, *port))
                .await
                .with_context(|| format!("connecting to {addr}"))?,
        ),
        Addr::VsockMux { path, port } => {
            let mut s = UnixStream::connect(path).await.with_context(|| format!("connecting to {addr}"))?;
            tokio::time::timeout(crate::frame::HANDSHAKE_TIMEOUT, mux_handshake(&mut s, *port))
                .await
                .map_err(|_| anyhow::anyhow!("no answer to CONNECT {port}"))
                .and_then(|r| r)
                .with_context(|| format!("hybrid-vsock handshake with {addr}"))?;
            Stream::Unix(s)
        }
    };
    Ok(stream)
}

/// Reads the reply byte by byte: whatever follows the newline already belongs
/// to the guest's stream and must not be swallowed by a buffer.
async fn mux_handshake(s: &mut UnixStream, port: u32) -> Result<()> {
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await.context("sending CONNECT")?;
    let mut line = Vec::with_capacity(16);
    loop {
        let b = match s.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                bail!("closed before answering CONNECT {port}: nothing listens on guest vsock port {port}")
            }
            Err(e) => return Err(e).context("reading CONNECT reply"),
        };
        if b == b'\n' {
            break;
        }
        line.push(b);
        if line.len() > MUX_REPLY_MAX {
            bail!("CONNECT reply longer than {MUX_REPLY_MAX} bytes");
        }
    }
    let line = String::from_utf8_lossy(&line);
    match line.strip_prefix("OK ") {
        Some(_) => Ok(()),
        None => bail!("unexpected CONNECT reply {line:?}"),
    }
}

/// Who connected to a [`Listener`].
#[derive(Clone, Debug)]
pub enum Peer {
    Unix,
    Tcp(SocketAddr),
    Vsock { cid: u32, port: u32 },
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Unix => f.write_str("unix peer"),
            Peer::Tcp(a) => write!(f, "tcp:{a}"),
            Peer::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}

/// The agent's listening side of a transport.
pub enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
    Vsock(VsockListener),
}

impl Listener {
    /// Binds `addr`. A Unix socket file left behind by a dead agent is
    /// replaced; one a live agent still answers on is an error.
    pub async fn bind(addr: &Addr) -> Result<Listener> {
        Ok(match addr {
            Addr::Unix(path) => {
                if path.exists() {
                    if UnixStream::connect(path).await.is_ok() {
                        bail!("{addr} is in use by a running process");
                    }
                    std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
                }
                let l = UnixListener::bind(path).with_context(|| format!("binding {addr}"))?;
                Listener::Unix(l, path.clone())
            }
            Addr::Tcp(sa) => Listener::Tcp(TcpListener::bind(sa).await.with_context(|| format!("binding {addr}"))?),
            Addr::Vsock { cid, port } => Listener::Vsock(
                VsockListener::bind(VsockAddr::new(*cid, *port)).with_context(|| format!("binding {addr}"))?,
            ),
            Addr::VsockMux { .. } => bail!("{addr}: vsock-mux is a host-side address; the agent listens on vsock:"),
        })
    }

    /// The bound address (with the real port for `tcp:…:0`).
    pub fn local_addr(&self) -> Result<Addr> {
        Ok(match self {
            Listener::Unix(_, p) => Addr::Unix(p.clone()),
            Listener::Tcp(l) => Addr::Tcp(l.local_addr()?),
            Listener::Vsock(l) => {
                let a = l.local_addr()?;
                Addr::Vsock { cid: a.cid(), port: a.port() }
            }
        })
    }

    pub async fn accept(&self) -> io::Result<(Stream, Peer)> {
        Ok(match self {
            Listener::Unix(l, _) => (Stream::Unix(l.accept().await?.0), Peer::Unix),
            Listener::Tcp(l) => {
                let (s, a) = l.accept().await?;
                s.set_nodelay(true).ok();
                (Stream::Tcp(s), Peer::Tcp(a))
            }
            Listener::Vsock(l) => {
                let (s, a) = l.accept().await?;
                (Stream::Vsock(s), Peer::Vsock { cid: a.cid(), port: a.port() })
            }
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_or_explain() {
        let ok: &[(&str, Addr)] = &[
            ("unix:/run/hoist.sock", Addr::Unix("/run/hoist.sock".into())),
            ("vsock:any:1024", Addr::Vsock { cid: CID_ANY, port: 1024 }),
            ("vsock:-1:1024", Addr::Vsock { cid: CID_ANY, port: 1024 }),
            ("vsock:host:5", Addr::Vsock { cid: CID_HOST, port: 5 }),
            ("vsock:3:1024", Addr::Vsock { cid: 3, port: 1024 }),
            ("vsock-mux:/tmp/v.sock:1024", Addr::VsockMux { path: "/tmp/v.sock".into(), port: 1024 }),
            ("vsock-mux:/a:b/v.sock:7", Addr::VsockMux { path: "/a:b/v.sock".into(), port: 7 }),
            ("tcp:127.0.0.1:9", Addr::Tcp("127.0.0.1:9".parse().unwrap())),
            ("tcp:[::1]:9", Addr::Tcp("[::1]:9".parse().unwrap())),
        ];
        for (s, want) in ok {
            assert_eq!(&s.parse::<Addr>().unwrap(), want, "{s}");
            assert_eq!(s.parse::<Addr>().unwrap().to_string().parse::<Addr>().unwrap(), *want);
        }
        let bad: &[(&str, &str)] = &[
            ("/run/hoist.sock", "no scheme"),
            ("unix:", "unknown scheme"),
            ("vsock:3", "expected vsock:<cid>:<port>"),
            ("vsock:x:1", "bad vsock CID"),
            ("vsock:3:y", "bad port"),
            ("vsock-mux::5", "empty socket path"),
            ("tcp:localhost", "expected tcp:<ip>:<port>"),
            ("http://x", "unknown scheme"),
        ];
        for (s, want) in bad {
            let err = s.parse::<Addr>().unwrap_err();
            assert!(format!("{err:#}").contains(want), "{s}: {err:#}");
        }
    }

    /// A stand-in multiplexer on a Unix socket pair answers CONNECT like
    /// Firecracker does; bytes after the reply stay in the stream.
    #[tokio::test]
    async fn hybrid_vsock_handshake() {
        let dir = std::env::temp_dir().join(format!("hoist-mux-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mux.sock");
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            for reply in [&b"OK 1073741824\nhello"[..], b"", b"NO\n"] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut req = [0u8; 13];
                s.read_exact(&mut req).await.unwrap();
                assert_eq!(&req, b"CONNECT 5000\n");
                s.write_all(reply).await.unwrap();
            }
        });
        let addr = Addr::VsockMux { path: path.clone(), port: 5000 };
        let mut s = connect(&addr).await.unwrap();
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"hello");
        let err = connect(&addr).await.err().unwrap();
        assert!(format!("{err:#}").contains("nothing listens on guest vsock port 5000"), "{err:#}");
        let err = connect(&addr).await.err().unwrap();
        assert!(format!("{err:#}").contains("unexpected CONNECT reply"), "{err:#}");
        server.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
