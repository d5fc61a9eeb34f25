//! The servers the measurements load, each run in the guest and stopped when
//! its guard is dropped (also on every error path): nginx, redis-server, and
//! a small TCP and a small UDP echo server on a thread. Also the time limit
//! every client command runs under.

use super::measure::{free_port, listener};
use super::Rig;
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long any single connect or read in a measurement may wait.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one client run (a loop of round trips, a redis-benchmark) may
/// take in all.
pub const LOOP_LIMIT: Duration = Duration::from_secs(120);

/// A server process in the guest, listening on `port`; stopped on drop.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Server {
    /// Guards `child` at once, then waits until hoist forwards `port`.
    fn up(rig: &Rig, child: Child, port: u16, what: &str) -> Result<Server> {
        let server = Server { child, port };
        rig.wait_forwarded(port, what)?;
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master stops its workers (SIGKILL would
        // orphan them, still listening); redis-server exits at once.
        crate::sys::signal(&self.child, crate::sys::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // A no-op when it has exited (and was reaped above).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx answering every request with a 3-byte body, one worker, no logs.
pub fn nginx(rig: &Rig) -> Result<Server> {
    const PORT: u16 = 18080;
    let conf = rig.dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx.err;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; server {{ listen 127.0.0.1:{PORT} backlog=4096; location / {{ return 200 \"ok\\n\"; }} }} }}\n",
            dir = rig.dir.display()
        ),
    )?;
    let child = rig
        .ns
        .command("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(&rig.dir)
        .stdout(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    Server::up(rig, child, PORT, "nginx")
}

/// redis-server on a fixed loopback port, nothing persisted.
pub fn redis(rig: &Rig) -> Result<Server> {
    const PORT: u16 = 16379;
    let child = rig
        .ns
        .command("redis-server")
        .args([
            "--port",
            &PORT.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ])
        .arg("--dir")
        .arg(&rig.dir)
        .stdout(Stdio::null())
        .spawn()
        .context("starting redis-server")?;
    Server::up(rig, child, PORT, "redis-server")
}

/// A TCP echo server on a thread of this process, its listening socket in
/// the guest; serves one connection at a time. Stopped on drop.
pub struct Echo {
    pub port: u16,
    listener: TcpListener,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    pub fn start(rig: &Rig) -> Result<Echo> {
        let port = free_port()?;
        let l = rig
            .ns
            .run(move || listener(SocketAddr::from(([127, 0, 0, 1], port))))?
            .context("the echo server's listener in the guest")?;
        let stop = l.try_clone()?;
        // The socket keeps the guest's namespace: any thread may accept.
        let thread = std::thread::spawn(move || {
            // Ends when the guard shuts the listener down.
            while let Ok((c, _)) = l.accept() {
                let _ = echo(c);
            }
        });
        let e = Echo { port, listener: stop, thread: Some(thread) };
        rig.wait_forwarded(port, "the echo server")?;
        Ok(e)
    }
}

fn echo(mut c: TcpStream) -> std::io::Result<()> {
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf)? {
            0 => return Ok(()),
            n => c.write_all(&buf[..n])?,
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        // shutdown() wakes the thread's accept() with an error; close() would not.
        let _ = socket2::SockRef::from(&self.listener).shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP echo server on a thread of this process, its socket bound in the
/// guest to 127.0.0.1 and a port it names: a server by hoist's rule (bound to
/// port 0 it would be a client, never forwarded). Echoes each datagram to
/// its sender. Closed by [`UdpEcho::close`] or on drop.
pub struct UdpEcho {
    pub port: u16,
    /// Another descriptor of the socket, to wake the thread with; `None`
    /// once closed.
    socket: Option<UdpSocket>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpEcho {
    /// Binds 127.0.0.1:`port` in the guest and starts echoing, without
    /// waiting for hoist; also returns when the bind returned.
    pub fn bind(rig: &Rig, port: u16) -> Result<(UdpEcho, Instant)> {
        let (socket, bound) = rig.ns.run(move || {
            let s = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], port)));
            (s, Instant::now())
        })?;
        let socket =
            socket.with_context(|| format!("binding the UDP echo server to 127.0.0.1:{port}"))?;
        let wake = socket.try_clone().context("cloning the UDP echo server's socket")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        // The socket keeps the guest's namespace: any thread may serve it.
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                match socket.recv_from(&mut buf) {
                    Ok((n, from)) if !stopped.load(Ordering::Acquire) => {
                        let _ = socket.send_to(&buf[..n], from);
                    }
                    // The guard shut the socket down: leave, closing it.
                    _ if stopped.load(Ordering::Acquire) => return,
                    // An unconnected socket hears of no client's ICMP error:
                    // whatever failed concerned one datagram.
                    _ => {}
                }
            }
        });
        Ok((UdpEcho { port, socket: Some(wake), stop, thread: Some(thread) }, bound))
    }

    /// Binds a port that was free on the host, then waits until hoist
    /// forwards it.
    pub fn start(rig: &Rig) -> Result<UdpEcho> {
        let (e, _) = UdpEcho::bind(rig, free_udp_port()?)?;
        rig.wait_udp_forwarded(e.port, "the UDP echo server")?;
        Ok(e)
    }

    /// Closes the server's socket; returns when it is closed.
    pub fn close(mut self) -> Instant {
        self.shut();
        Instant::now()
    }

    fn shut(&mut self) {
        let Some(socket) = self.socket.take() else { return };
        self.stop.store(true, Ordering::Release);
        // On an unconnected UDP socket shutdown() fails with ENOTCONN but
        // still wakes the thread's recv_from(), which then returns at once.
        let _ = socket2::SockRef::from(&socket).shutdown(std::net::Shutdown::Read);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The thread dropped its descriptor: this one is the last.
        drop(socket);
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.shut();
    }
}

/// A UDP port free on the host now, for a guest server (see [`free_port`]).
pub fn free_udp_port() -> Result<u16> {
    let s = UdpSocket::bind("127.0.0.1:0").context("binding a UDP socket to find a free port")?;
    Ok(s.local_addr()?.port())
}

/// Runs `cmd` to its end, killing it after `limit`; its exit status and stdout.
pub fn output_within(
    cmd: &mut Command,
    limit: Duration,
    what: &str,
) -> Result<(ExitStatus, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let mut out = child.stdout.take().unwrap();
    // Drained meanwhile, so a full pipe cannot stall the child.
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = reader.join().map_err(|_| anyhow::anyhow!("reading {what}'s output"))?;
    Ok((status, String::from_utf8_lossy(&stdout).into_owned()))
}
