//! Transports between host and agent: the only place that opens sockets to
//! the peer. `vsock:` is production (a Linux host with vhost-vsock, or inside
//! the guest), `vsock-mux:` is the hybrid-vsock Unix socket of Firecracker,
//! Cloud Hypervisor and vhost-device-vsock, and `unix:` / `tcp:` serve tests
//! and the local demo. Every transport yields the same [`Stream`]; the agent
//! listens with an [`Acceptor`].

pub mod hvsock;
mod tcp;
#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::bind as bind_unix;
#[cfg(target_os = "linux")]
mod vsock;
#[cfg(unix)]
mod vsock_mux;

use anyhow::{bail, Context, Result};
use std::fmt;
use std::io;
use std::net::SocketAddr;
#[cfg(unix)]
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context as TaskContext, Poll};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
#[cfg(unix)]
use tokio::net::{UnixListener, UnixStream};
#[cfg(target_os = "linux")]
use tokio_vsock::{VsockListener, VsockStream};

pub use hvsock::{Guid, HvVm};
#[cfg(unix)]
pub use vsock_mux::parse_reply as parse_mux_reply;

/// `VMADDR_CID_ANY`: bind on every CID the guest has.
pub const CID_ANY: u32 = u32::MAX;
/// `VMADDR_CID_HOST`: the hypervisor's host.
pub const CID_HOST: u32 = 2;

const SCHEMES: &str = "unix:<path>, vsock:<cid>:<port>, vsock-mux:<path>:<port>, tcp:<ip>:<port>, hvsock:<vm-guid|wsl>:<port>";

/// Where a peer is reached or listened for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addr {
    /// `unix:<path>`
    Unix(PathBuf),
    /// `vsock:<cid>:<port>`; cid may be `any` or `host`.
    Vsock {
        /// The context id (`CID_ANY` to listen on every one).
        cid: u32,
        /// The vsock port.
        port: u32,
    },
    /// `vsock-mux:<path>:<port>`: a hybrid-vsock Unix socket and the guest port.
    VsockMux {
        /// The multiplexer's Unix socket.
        path: PathBuf,
        /// The guest's vsock port.
        port: u32,
    },
    /// `tcp:<ip>:<port>`
    Tcp(SocketAddr),
    /// `hvsock:<vm-guid|wsl>:<port>`: a Hyper-V VM's vsock port, from Windows.
    Hvsock {
        /// The VM, by id or `wsl`.
        vm: HvVm,
        /// The guest's vsock port.
        port: u32,
    },
}

impl FromStr for Addr {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Addr> {
        let Some((scheme, rest)) = s.split_once(':') else {
            bail!("address {s:?} has no scheme: expected one of {SCHEMES}");
        };
        let addr = match scheme {
            "unix" if rest.is_empty() => bail!("{s:?}: expected unix:<path>, the path is missing"),
            "unix" => Addr::Unix(rest.into()),
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
            "tcp" => {
                Addr::Tcp(rest.parse().with_context(|| format!("{s:?}: expected tcp:<ip>:<port>"))?)
            }
            "hvsock" => hvsock::parse(s, rest).map(|(vm, port)| Addr::Hvsock { vm, port })?,
            _ => bail!("address {s:?}: unknown scheme {scheme:?}: expected one of {SCHEMES}"),
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
            Addr::Hvsock { vm, port } => write!(f, "hvsock:{vm}:{port}"),
        }
    }
}

/// Connects to `addr`.
pub async fn connect(addr: &Addr) -> Result<Stream> {
    let stream = match addr {
        #[cfg(unix)]
        Addr::Unix(path) => unix::connect(path).await.map(Stream::Unix),
        Addr::Tcp(sa) => tcp::connect(*sa).await.map(Stream::Tcp),
        #[cfg(target_os = "linux")]
        Addr::Vsock { cid, port } => vsock::connect(*cid, *port).await.map(Stream::Vsock),
        #[cfg(unix)]
        Addr::VsockMux { path, port } => vsock_mux::connect(path, *port).await.map(Stream::Unix),
        #[cfg(windows)]
        Addr::Hvsock { vm: HvVm::Id(g), port } => {
            hvsock::connect(*g, *port).await.map(Stream::Hvsock)
        }
        Addr::Hvsock { vm, port } => Err(hvsock::cannot_connect(*vm, *port)),
        #[cfg(not(target_os = "linux"))]
        other => Err(unsupported(other)),
    };
    stream.with_context(|| format!("connecting to {addr}"))
}

/// What a failed [`connect`] means for whoever retries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectFailure {
    /// It can never work as given: stop and say why.
    Fatal(String),
    /// The peer is not there yet (a VM not started: its socket file does
    /// not exist): wait quietly.
    NotYet(String),
    /// Try again later (refused, reset, timed out).
    Retry,
}

/// Refuses, before any connect, an address that can only be listened on.
pub fn check_target(addr: &Addr) -> Result<()> {
    if let Addr::Vsock { cid: CID_ANY, port } = addr {
        bail!("vsock:any is for the agent to listen on; the host needs the guest's CID (e.g. vsock:3:{port})");
    }
    Ok(())
}

/// Classifies a failed [`connect`] to `addr`.
pub fn classify_failure(addr: &Addr, err: &anyhow::Error) -> ConnectFailure {
    #[cfg(unix)]
    use std::os::unix::fs::FileTypeExt;
    #[cfg(unix)]
    if let Addr::Unix(path) | Addr::VsockMux { path, .. } = addr {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return ConnectFailure::NotYet(format!(
                    "{} does not exist yet (is the VM running?)",
                    path.display()
                ))
            }
            Ok(m) if !m.file_type().is_socket() => {
                return ConnectFailure::Fatal(format!(
                    "{} exists but is not a socket",
                    path.display()
                ))
            }
            _ => {}
        }
    }
    #[cfg(target_os = "linux")]
    {
        let errno = err
            .chain()
            .find_map(|e| e.downcast_ref::<io::Error>())
            .and_then(io::Error::raw_os_error);
        if matches!(addr, Addr::Vsock { .. })
            && errno == Some(rustix::io::Errno::AFNOSUPPORT.raw_os_error())
        {
            return ConnectFailure::Fatal(
                "this kernel has no vsock support (EAFNOSUPPORT): load vhost_vsock (modprobe vhost_vsock), or reach the guest through vsock-mux: or unix:".into(),
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (addr, err);
    ConnectFailure::Retry
}

/// The error for a transport this OS does not have.
#[cfg(not(target_os = "linux"))]
fn unsupported(addr: &Addr) -> anyhow::Error {
    anyhow::anyhow!("{addr}: this transport is not available on {}", std::env::consts::OS)
}

/// A connected byte stream over any transport.
#[derive(Debug)]
pub enum Stream {
    /// A Unix socket (also the host side of hybrid vsock).
    #[cfg(unix)]
    Unix(UnixStream),
    /// A TCP socket.
    Tcp(TcpStream),
    /// A kernel vsock socket.
    #[cfg(target_os = "linux")]
    Vsock(VsockStream),
    /// A Hyper-V socket (Windows), driven through tokio's TCP stream type.
    #[cfg(windows)]
    Hvsock(TcpStream),
}

impl Stream {
    /// The socket's descriptor where the relay can drive readiness itself
    /// (TCP and Unix); `None` for vsock, which the relay copies instead.
    #[cfg(unix)]
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Stream::Unix(s) => Some(s.as_fd()),
            Stream::Tcp(s) => Some(s.as_fd()),
            #[cfg(target_os = "linux")]
            Stream::Vsock(_) => None,
        }
    }

    /// Waits for readiness (TCP and Unix only).
    pub async fn ready(&self, interest: Interest) -> io::Result<()> {
        match self {
            #[cfg(unix)]
            Stream::Unix(s) => s.ready(interest).await.map(|_| ()),
            Stream::Tcp(s) => s.ready(interest).await.map(|_| ()),
            #[cfg(windows)]
            Stream::Hvsock(s) => s.ready(interest).await.map(|_| ()),
            #[cfg(target_os = "linux")]
            Stream::Vsock(_) => {
                Err(io::Error::new(io::ErrorKind::Unsupported, "no readiness for vsock"))
            }
        }
    }

    /// Runs a non-blocking operation, clearing readiness on `WouldBlock`.
    pub fn try_io<R>(
        &self,
        interest: Interest,
        f: impl FnOnce() -> io::Result<R>,
    ) -> io::Result<R> {
        match self {
            #[cfg(unix)]
            Stream::Unix(s) => s.try_io(interest, f),
            Stream::Tcp(s) => s.try_io(interest, f),
            #[cfg(windows)]
            Stream::Hvsock(s) => s.try_io(interest, f),
            #[cfg(target_os = "linux")]
            Stream::Vsock(_) => {
                Err(io::Error::new(io::ErrorKind::Unsupported, "no readiness for vsock"))
            }
        }
    }

    /// Whether the peer has closed the connection (an end of stream or a
    /// reset, not merely bytes waiting): waits until the socket is readable
    /// and peeks. False where the transport cannot tell, and when bytes are
    /// pending.
    #[cfg(not(target_os = "linux"))]
    pub async fn closed_by_peer(&self) -> bool {
        false
    }

    /// Whether the peer has closed the connection (an end of stream or a
    /// reset, not merely bytes waiting): waits until the socket is readable
    /// and peeks. False where the transport cannot tell, and when bytes are
    /// pending.
    #[cfg(target_os = "linux")]
    pub async fn closed_by_peer(&self) -> bool {
        let Some(_) = self.fd() else { return false };
        loop {
            if self.ready(Interest::READABLE).await.is_err() {
                return true;
            }
            let fd = self.fd().expect("checked above");
            match self.try_io(Interest::READABLE, || crate::sys::peek(fd)) {
                Ok(0) => return true,
                Ok(_) => return false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return true,
            }
        }
    }

    /// Reads what is there (up to `buf`'s spare room, at least 4 KiB made),
    /// appending it to `buf`; waits until something is; 0 at the end of the
    /// stream. On Linux a short read clears the socket's readiness with it,
    /// so the next read waits for the kernel's word instead of trying once
    /// in vain (see the relay's reads).
    pub async fn read_some(&mut self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        buf.reserve(4096);
        #[cfg(target_os = "linux")]
        if self.fd().is_some() {
            let start = buf.len();
            let want = buf.capacity() - start;
            buf.resize(start + want, 0);
            let r = loop {
                if let Err(e) = self.ready(Interest::READABLE).await {
                    break Err(e);
                }
                let fd = self.fd().expect("checked above");
                let mut short = None;
                let r = self.try_io(Interest::READABLE, || {
                    match crate::sys::read(fd, &mut buf[start..]) {
                        Ok(n) if n > 0 && n < want => {
                            short = Some(n);
                            Err(io::ErrorKind::WouldBlock.into())
                        }
                        r => r,
                    }
                });
                match (short, r) {
                    (Some(n), _) => break Ok(n),
                    (None, Err(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    (None, r) => break r,
                }
            };
            buf.truncate(start + *r.as_ref().unwrap_or(&0));
            return r;
        }
        tokio::io::AsyncReadExt::read_buf(self, buf).await
    }

    /// Whether the connection is open with nothing waiting to be read, now,
    /// without waiting: what an idle pooled data connection must be before
    /// it carries a client (bytes or an end of stream mean the agent gave
    /// up on it).
    pub fn is_quiet(&self) -> bool {
        #[cfg(target_os = "linux")]
        let peeked = match self {
            Stream::Unix(s) => crate::sys::peek(s),
            Stream::Tcp(s) => crate::sys::peek(s),
            Stream::Vsock(s) => crate::sys::peek(s),
        };
        #[cfg(not(target_os = "linux"))]
        let peeked = match self {
            #[cfg(unix)]
            Stream::Unix(s) => socket2::SockRef::from(s).peek(&mut [std::mem::MaybeUninit::new(0)]),
            Stream::Tcp(s) => socket2::SockRef::from(s).peek(&mut [std::mem::MaybeUninit::new(0)]),
            #[cfg(windows)]
            Stream::Hvsock(s) => {
                socket2::SockRef::from(s).peek(&mut [std::mem::MaybeUninit::new(0)])
            }
        };
        matches!(peeked, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Writes what fits now without waiting (a last word before closing);
    /// `WouldBlock` where the transport has no such write.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            #[cfg(unix)]
            Stream::Unix(s) => s.try_write(buf),
            Stream::Tcp(s) => s.try_write(buf),
            #[cfg(windows)]
            Stream::Hvsock(s) => s.try_write(buf),
            #[cfg(target_os = "linux")]
            Stream::Vsock(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            #[cfg(unix)]
            Stream::Unix($s) => $e,
            Stream::Tcp($s) => $e,
            #[cfg(target_os = "linux")]
            Stream::Vsock($s) => $e,
            #[cfg(windows)]
            Stream::Hvsock($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// Who connected to an [`Acceptor`].
#[derive(Clone, Debug)]
pub enum Peer {
    /// A Unix-socket peer and its credentials (SO_PEERCRED).
    Unix {
        /// The peer process's user id.
        uid: u32,
        /// The peer process's id.
        pid: u32,
    },
    /// A TCP peer and its address.
    Tcp(SocketAddr),
    /// A vsock peer.
    Vsock {
        /// The peer's context id (2 is the host).
        cid: u32,
        /// The peer's port.
        port: u32,
    },
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Unix { uid, pid } => write!(f, "unix peer (uid {uid}, pid {pid})"),
            Peer::Tcp(a) => write!(f, "tcp:{a}"),
            Peer::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}

/// The agent's listening side of a transport.
#[derive(Debug)]
pub enum Acceptor {
    /// A Unix socket and its path (removed when the acceptor is dropped).
    #[cfg(unix)]
    Unix(UnixListener, PathBuf),
    /// A TCP listener.
    Tcp(TcpListener),
    /// A vsock listener.
    #[cfg(target_os = "linux")]
    Vsock(VsockListener),
}

/// How an [`Acceptor`] sets up its socket.
#[derive(Clone, Copy, Debug)]
pub struct AcceptorOptions {
    /// The permission bits of a Unix socket file.
    pub unix_mode: u32,
}

impl Default for AcceptorOptions {
    fn default() -> AcceptorOptions {
        AcceptorOptions { unix_mode: 0o600 }
    }
}

impl Acceptor {
    /// Binds `addr`. A Unix socket file left behind by a dead agent is
    /// replaced; one a live agent still answers on, and any file that is not
    /// a socket, is an error.
    #[cfg_attr(not(unix), allow(unused_variables))]
    pub async fn bind(addr: &Addr, options: AcceptorOptions) -> Result<Acceptor> {
        let acceptor = match addr {
            #[cfg(unix)]
            Addr::Unix(path) => {
                unix::bind(path, options.unix_mode).await.map(|l| Acceptor::Unix(l, path.clone()))
            }
            Addr::Tcp(sa) => TcpListener::bind(sa).await.map_err(Into::into).map(Acceptor::Tcp),
            #[cfg(target_os = "linux")]
            Addr::Vsock { cid, port } => vsock::bind(*cid, *port).map(Acceptor::Vsock),
            Addr::VsockMux { .. } => {
                bail!("{addr}: vsock-mux is a host-side address; the agent listens on vsock:")
            }
            Addr::Hvsock { .. } => {
                bail!("{addr}: hvsock is the Windows host's side; the agent listens on vsock:")
            }
            #[cfg(not(target_os = "linux"))]
            other => Err(unsupported(other)),
        };
        acceptor.with_context(|| format!("listening on {addr}"))
    }

    /// The bound address (with the real port for `tcp:…:0`).
    pub fn local_addr(&self) -> Result<Addr> {
        Ok(match self {
            #[cfg(unix)]
            Acceptor::Unix(_, p) => Addr::Unix(p.clone()),
            Acceptor::Tcp(l) => Addr::Tcp(l.local_addr()?),
            #[cfg(target_os = "linux")]
            Acceptor::Vsock(l) => {
                let a = l.local_addr()?;
                Addr::Vsock { cid: a.cid(), port: a.port() }
            }
        })
    }

    /// Waits for the next connection.
    pub async fn accept(&self) -> io::Result<(Stream, Peer)> {
        Ok(match self {
            #[cfg(unix)]
            Acceptor::Unix(l, _) => {
                let s = l.accept().await?.0;
                let (uid, pid) = crate::sys::peer_credentials(&s)?;
                (Stream::Unix(s), Peer::Unix { uid, pid })
            }
            Acceptor::Tcp(l) => {
                let (s, a) = l.accept().await?;
                s.set_nodelay(true).ok();
                (Stream::Tcp(s), Peer::Tcp(a))
            }
            #[cfg(target_os = "linux")]
            Acceptor::Vsock(l) => {
                let (s, a) = l.accept().await?;
                (Stream::Vsock(s), Peer::Vsock { cid: a.cid(), port: a.port() })
            }
        })
    }
}

#[cfg(unix)]
impl Drop for Acceptor {
    fn drop(&mut self) {
        if let Acceptor::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn failures_that_cannot_heal_are_fatal_and_missing_sockets_are_awaited() {
        let dir = std::env::temp_dir().join(format!("hoist-classify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("file");
        std::fs::write(&file, b"").unwrap();
        let refused = anyhow::Error::new(io::Error::from(io::ErrorKind::ConnectionRefused));
        let no_vsock = anyhow::Error::new(io::Error::from_raw_os_error(
            rustix::io::Errno::AFNOSUPPORT.raw_os_error(),
        ));
        let cases: Vec<(Addr, &anyhow::Error, &str)> = vec![
            (Addr::Unix(dir.join("missing.sock")), &refused, "not yet"),
            (Addr::VsockMux { path: dir.join("missing.sock"), port: 5 }, &refused, "not yet"),
            (Addr::Unix(file.clone()), &refused, "fatal: exists but is not a socket"),
            (Addr::Unix(dir.clone()), &refused, "fatal: exists but is not a socket"),
            (Addr::Vsock { cid: 3, port: 1023 }, &no_vsock, "fatal: no vsock support"),
            (Addr::Vsock { cid: 3, port: 1023 }, &refused, "retry"),
            (Addr::Tcp("127.0.0.1:9".parse().unwrap()), &refused, "retry"),
        ];
        for (addr, err, want) in cases {
            let got = match classify_failure(&addr, err) {
                ConnectFailure::Fatal(why) => format!("fatal: {why}"),
                ConnectFailure::NotYet(_) => "not yet".into(),
                ConnectFailure::Retry => "retry".into(),
            };
            let (kind, detail) = want.split_once(": ").unwrap_or((want, ""));
            assert!(got.starts_with(kind) && got.contains(detail), "{addr}: {got}");
        }
        assert!(check_target(&"vsock:any:1023".parse().unwrap()).is_err());
        assert!(check_target(&"vsock:3:1023".parse().unwrap()).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn addresses_parse_or_explain() {
        let ok: &[(&str, Addr)] = &[
            ("unix:/run/hoist.sock", Addr::Unix("/run/hoist.sock".into())),
            ("vsock:any:1024", Addr::Vsock { cid: CID_ANY, port: 1024 }),
            ("vsock:-1:1024", Addr::Vsock { cid: CID_ANY, port: 1024 }),
            ("vsock:host:5", Addr::Vsock { cid: CID_HOST, port: 5 }),
            ("vsock:3:1024", Addr::Vsock { cid: 3, port: 1024 }),
            (
                "vsock-mux:/tmp/v.sock:1024",
                Addr::VsockMux { path: "/tmp/v.sock".into(), port: 1024 },
            ),
            ("vsock-mux:/a:b/v.sock:7", Addr::VsockMux { path: "/a:b/v.sock".into(), port: 7 }),
            ("tcp:127.0.0.1:9", Addr::Tcp("127.0.0.1:9".parse().unwrap())),
            ("tcp:[::1]:9", Addr::Tcp("[::1]:9".parse().unwrap())),
        ];
        for (s, want) in ok {
            assert_eq!(&s.parse::<Addr>().unwrap(), want, "{s}");
            assert_eq!(s.parse::<Addr>().unwrap().to_string().parse::<Addr>().unwrap(), *want);
        }
        let bad: &[(&str, &str)] = &[
            ("/run/hoist.sock", "has no scheme: expected one of unix:<path>"),
            ("unix:", "expected unix:<path>, the path is missing"),
            ("vsock:3", "expected vsock:<cid>:<port>"),
            ("vsock:x:1", "bad vsock CID"),
            ("vsock:3:y", "bad port"),
            ("vsock-mux::5", "empty socket path"),
            ("tcp:localhost", "expected tcp:<ip>:<port>"),
            ("http://x", "unknown scheme \"http\""),
        ];
        for (s, want) in bad {
            let err = s.parse::<Addr>().unwrap_err();
            assert!(format!("{err:#}").contains(want), "{s}: {err:#}");
        }
    }

    /// An idle connection is quiet; one with bytes waiting, or whose peer
    /// closed or reset it, is not (a pooled data connection in either state
    /// must not carry a client).
    #[tokio::test]
    async fn only_an_open_idle_connection_is_quiet() {
        #[cfg(unix)]
        {
            use tokio::io::AsyncWriteExt;
            let (a, mut b) = UnixStream::pair().unwrap();
            let a = Stream::Unix(a);
            assert!(a.is_quiet());
            b.write_all(b"x").await.unwrap();
            assert!(!a.is_quiet(), "bytes waiting");
            let (a, b) = UnixStream::pair().unwrap();
            drop(b);
            assert!(!Stream::Unix(a).is_quiet(), "closed");
        }
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        let a = Stream::Tcp(a);
        assert!(a.is_quiet());
        socket2::SockRef::from(&b).set_linger(Some(std::time::Duration::ZERO)).unwrap();
        drop(b);
        a.ready(Interest::READABLE).await.unwrap();
        assert!(!a.is_quiet(), "reset");
    }
}
