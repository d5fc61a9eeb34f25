//! The lab for end-to-end tests: a fresh network namespace as the guest, the
//! real `hoist-agent` inside it and the real `hoist-host` outside, talking
//! over a Unix socket. Both log JSON; tests wait on log events (never on
//! sleeps), each wait bounded so a missing event fails the test.

#![allow(dead_code)]

use hoist_testsupport::Netns;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(10);

pub fn bin(var: &str) -> PathBuf {
    let p = std::env::var_os(var).unwrap_or_else(|| {
        panic!("{var} is not set: run the end-to-end tests through `cargo xtask test`, which builds the binaries and sets it")
    });
    PathBuf::from(p)
}

/// Log lines of a child process, parsed as JSON, with a way to wait on them.
#[derive(Clone)]
pub struct Logs {
    inner: Arc<(Mutex<Vec<serde_json::Value>>, Condvar)>,
}

impl Logs {
    fn follow(name: &'static str, stream: impl std::io::Read + Send + 'static) -> Logs {
        let logs = Logs { inner: Arc::new((Mutex::new(Vec::new()), Condvar::new())) };
        let l = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                eprintln!("{name} | {line}");
                let v = serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line));
                let (m, c) = &*l.inner;
                m.lock().unwrap().push(v);
                c.notify_all();
            }
        });
        logs
    }

    /// Waits until `pred` holds over all lines so far.
    pub fn wait<T>(
        &self,
        what: &str,
        mut pred: impl FnMut(&[serde_json::Value]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + WAIT;
        let (m, c) = &*self.inner;
        let mut lines = m.lock().unwrap();
        loop {
            if let Some(t) = pred(&lines) {
                return t;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out after {WAIT:?} waiting for {what}");
            lines = c.wait_timeout(lines, left).unwrap().0;
        }
    }

    pub fn snapshot(&self) -> Vec<serde_json::Value> {
        self.inner.0.lock().unwrap().clone()
    }
}

pub fn is_event(v: &serde_json::Value, event: &str) -> bool {
    v.get("event").and_then(|e| e.as_str()) == Some(event)
}

pub fn port_of(v: &serde_json::Value) -> Option<u16> {
    v.get("port").and_then(|p| p.as_u64()).map(|p| p as u16)
}

/// (family, port) as the host logs them: "ipv4" or "ipv6".
pub type Ep = (String, u16);

pub fn ep(family: &str, port: u16) -> Ep {
    (family.to_string(), port)
}

/// The set of host TCP forwards implied by the host's log so far.
pub fn serving(lines: &[serde_json::Value]) -> BTreeSet<Ep> {
    serving_proto(lines, "tcp")
}

/// The set of host forwards of one protocol ("tcp", "udp") implied by the
/// host's log so far.
pub fn serving_proto(lines: &[serde_json::Value], proto: &str) -> BTreeSet<Ep> {
    let mut s = BTreeSet::new();
    for v in lines.iter().filter(|v| v.get("proto").and_then(|p| p.as_str()) == Some(proto)) {
        let fam = v.get("family").and_then(|f| f.as_str()).unwrap_or_default().to_string();
        if is_event(v, "forward_opened") {
            s.insert((fam, port_of(v).unwrap()));
        } else if is_event(v, "forward_closed") {
            s.remove(&(fam, port_of(v).unwrap()));
        }
    }
    s
}

pub struct Proc {
    child: Child,
    pub logs: Logs,
}

impl Proc {
    /// Starts `cmd` with its log followed; its RUST_LOG is `info`, or what
    /// E2E_LOG says (`E2E_LOG=debug` to see why a test failed).
    pub fn spawn(name: &'static str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("RUST_LOG", std::env::var("E2E_LOG").unwrap_or_else(|_| "info".into()));
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        let logs = Logs::follow(name, child.stderr.take().unwrap());
        Proc { child, logs }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: a clean stop.
    pub fn stop(&mut self) {
        terminate(&self.child);
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Lab {
    pub ns: Netns,
    pub dir: PathBuf,
    pub agent: Option<Proc>,
    pub host: Option<Proc>,
}

impl Lab {
    /// A namespace only; start the processes with [`Lab::start_agent`] and
    /// [`Lab::start_host`] (tests that need something in place first).
    pub fn empty() -> Lab {
        hoist_testsupport::require_root();
        let ns = Netns::new().expect("creating the guest namespace");
        let dir = std::env::temp_dir().join(format!("hoist-e2e-{}", ns.name()));
        std::fs::create_dir_all(&dir).unwrap();
        Lab { ns, dir, agent: None, host: None }
    }

    /// Namespace, agent and host, connected.
    pub fn new() -> Lab {
        let mut lab = Lab::empty();
        lab.start_agent(&[]);
        lab.start_host(&[]);
        lab
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    /// The host's admin socket (each lab its own).
    pub fn host_admin(&self) -> PathBuf {
        self.dir.join("host-admin.sock")
    }

    /// The agent's admin socket.
    pub fn agent_admin(&self) -> PathBuf {
        self.dir.join("agent-admin.sock")
    }

    pub fn start_agent(&mut self, extra: &[&str]) {
        let mut cmd = self.ns.command(bin("HOIST_AGENT_BIN").to_str().unwrap());
        cmd.args(["--listen", &format!("unix:{}", self.sock().display()), "--log-format", "json"])
            .arg("--admin-socket")
            .arg(self.dir.join("agent-admin.sock"))
            .args(extra);
        let p = Proc::spawn("agent", cmd);
        p.logs.wait("the agent to be ready", |l| {
            l.iter().any(|v| is_event(v, "agent_ready")).then_some(())
        });
        self.agent = Some(p);
    }

    pub fn start_host(&mut self, extra: &[&str]) {
        let mut cmd = Command::new(bin("HOIST_HOST_BIN"));
        cmd.args(["--guest", &format!("unix:{}", self.sock().display()), "--log-format", "json"])
            .arg("--admin-socket")
            .arg(self.host_admin())
            .args(extra);
        let p = Proc::spawn("host", cmd);
        p.logs.wait("the host to connect", |l| {
            l.iter().any(|v| is_event(v, "connected")).then_some(())
        });
        self.host = Some(p);
    }

    pub fn host_logs(&self) -> &Logs {
        &self.host.as_ref().expect("host running").logs
    }

    pub fn agent_logs(&self) -> &Logs {
        &self.agent.as_ref().expect("agent running").logs
    }

    /// Waits until the host serves exactly what `pred` accepts.
    pub fn wait_serving(&self, what: &str, pred: impl Fn(&BTreeSet<Ep>) -> bool) -> BTreeSet<Ep> {
        self.host_logs().wait(what, |l| {
            let s = serving(l);
            pred(&s).then_some(s)
        })
    }

    pub fn wait_forwarded(&self, family: &str, port: u16) {
        self.wait_serving(&format!("{family}/{port} to be forwarded"), |s| {
            s.contains(&ep(family, port))
        });
    }

    pub fn wait_unforwarded(&self, family: &str, port: u16) {
        self.wait_serving(&format!("{family}/{port} to be closed"), |s| {
            !s.contains(&ep(family, port))
        });
    }

    /// Runs `f` inside the guest namespace (sockets it makes live there).
    pub fn guest<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.ns.run(f).expect("running in the guest namespace")
    }

    /// A listener in the guest.
    pub fn listen(&self, addr: &str) -> TcpListener {
        let addr: SocketAddr = addr.parse().unwrap();
        self.guest(move || listen_socket(addr, None).unwrap())
    }

    /// Opens and keeps a guest listener on 127.0.0.1, waits for it on the
    /// host: after it appears, every kernel event before it has been handled.
    pub fn barrier(&self) -> TcpListener {
        let l = self.listen("127.0.0.1:0");
        self.wait_forwarded("ipv4", l.local_addr().unwrap().port());
        l
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.host.take();
        self.agent.take();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A listening socket with the options the tests need set before listen().
pub fn listen_socket(addr: SocketAddr, v6only: Option<bool>) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if let Some(v) = v6only {
        s.set_only_v6(v)?;
    }
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(128)?;
    Ok(s.into())
}

/// Echoes every connection of `l` on a thread of its own.
pub fn serve_echo(l: TcpListener) {
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            std::thread::spawn(move || {
                let mut r = c.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut c);
                let _ = c.shutdown(std::net::Shutdown::Write);
            });
        }
    });
}

/// Connects to the host side and checks an echo round trip.
pub fn echo_ok(addr: &str) {
    use std::io::{Read, Write};
    let mut c = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(b"ping").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"ping", "echo through {addr}");
}

/// Asserts that a connection to the port of `taken` (a host program's
/// listener on 127.0.0.1) reaches `taken`, not hoist.
pub fn assert_owns(taken: &TcpListener) {
    use std::io::{Read, Write};
    let mut c = TcpStream::connect(taken.local_addr().unwrap()).unwrap();
    let (mut accepted, _) = taken.accept().unwrap();
    c.write_all(b"mine").unwrap();
    let mut b = [0u8; 4];
    accepted.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"mine");
}

/// Asserts the host refuses connections to `addr`.
pub fn refused(addr: &str) {
    match TcpStream::connect(addr) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{addr}: {e}"),
        Ok(_) => panic!("{addr} still accepts connections"),
    }
}

/// `program` to be run as nobody with no capability at all (setpriv).
pub fn as_nobody(program: &std::path::Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
    ])
    .arg(program);
    cmd
}

/// Sends SIGTERM to a child process.
pub fn terminate(child: &Child) {
    use rustix::process::{kill_process, Pid, Signal};
    if let Some(pid) = Pid::from_raw(child.id() as i32) {
        let _ = kill_process(pid, Signal::TERM);
    }
}

/// Waits until the host's UDP forwards are what `pred` accepts.
pub fn wait_udp(lab: &Lab, what: &str, pred: impl Fn(&BTreeSet<Ep>) -> bool) -> BTreeSet<Ep> {
    lab.host_logs().wait(what, |l| {
        let s = serving_proto(l, "udp");
        pred(&s).then_some(s)
    })
}

/// A port free for UDP and TCP, both families, in the guest and on the host
/// (a server such as dnsmasq takes both protocols on it). The guest is asked
/// by reading its socket tables, not by binding: a bind of a named port
/// would make a server, forwarded and closed again, and a test that waits
/// for its own server's forward could take that one for it.
///
/// The port lies below the range the kernel picks local ports from, so no
/// socket autobound meanwhile (a connection of the Wine bridge or of a test
/// client) can take it on the host before the guest server is forwarded:
/// such a port in the range was taken for TCP once in 7 Wine runs.
pub fn free_udp_port(lab: &Lab) -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let low: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
    loop {
        // The kernel's pick only varies the candidate: [low / 2, low).
        let any = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let port = low / 2 + any % (low / 2);
        let taken_in_guest = lab.guest(move || ports_in_use_here().contains(&port));
        let free_on_host = UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("::1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("::1", port)).is_ok();
        if !taken_in_guest && free_on_host {
            return port;
        }
    }
}

/// The local ports of the UDP and TCP sockets of the calling thread's
/// network namespace, both families (`/proc/thread-self/net/*`: the
/// thread's namespace, which `/proc/self` would not give).
fn ports_in_use_here() -> BTreeSet<u16> {
    ["udp", "udp6", "tcp", "tcp6"]
        .iter()
        .flat_map(|t| {
            let path = format!("/proc/thread-self/net/{t}");
            let table = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            table
                .lines()
                .skip(1)
                .map(|l| {
                    // "  sl  local_address ...": "0100007F:D275", the port in hex.
                    let local = l.split_whitespace().nth(1).expect("a local address column");
                    let port = local.rsplit(':').next().expect("address:port");
                    u16::from_str_radix(port, 16).expect("a hex port")
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A guest UDP socket bound to `addr` (an explicit port): a server.
pub fn guest_udp(lab: &Lab, addr: &str) -> UdpSocket {
    let addr: SocketAddr = addr.parse().unwrap();
    lab.guest(move || {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        // Room for a burst of the largest datagrams from every client.
        let _ = s.set_recv_buffer_size(16 << 20);
        s.bind(&addr.into()).unwrap();
        s.into()
    })
}

/// Echoes every datagram back to its sender until the socket errors out.
pub fn serve_udp_echo(s: UdpSocket) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
}

/// A host client of `addr` with bounded waits.
pub fn udp_client(addr: &str) -> UdpSocket {
    let bind = if addr.starts_with('[') { "[::1]:0" } else { "127.0.0.1:0" };
    let c = UdpSocket::bind(bind).unwrap();
    c.connect(addr).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c
}

/// Asserts the host port behind `c` refuses: the probe meets no socket.
pub fn refused_udp(c: &UdpSocket) {
    c.send(b"anyone?").unwrap();
    let err = c.recv(&mut [0u8; 64]).expect_err("a closed forward answered");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}
