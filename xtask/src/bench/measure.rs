//! The measurements. Each returns plain numbers; `report` compares them.

use super::servers::{output_within, Server, UdpEcho};
use super::Rig;
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A plain std listener with SO_REUSEADDR, so a port cycled 1000 times can
/// be bound again while old connections sit in TIME_WAIT.
pub fn listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(128)?;
    Ok(s.into())
}

fn port_of(l: &TcpListener) -> u16 {
    l.local_addr().unwrap().port()
}

/// A port free on the host now, for a guest listener: the guest, a fresh
/// namespace, holds few ports of its own.
pub fn free_port() -> Result<u16> {
    Ok(port_of(&TcpListener::bind("127.0.0.1:0")?))
}

/// Detection latencies, in microseconds.
pub struct Latency {
    pub listen_us: Vec<f64>,
    pub close_us: Vec<f64>,
}

/// Connects until `want_open` holds for 127.0.0.1:port; returns when it did.
fn spin_until(port: u16, want_open: bool) -> Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // A SYN that meets a listener as it closes can be dropped, and the
        // kernel would retry it only after 1 s: bound each probe instead.
        let probe = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(5),
        );
        let now = Instant::now();
        let open = match probe {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Ok(c) => {
                // Reset rather than close: thousands of probes must not
                // leave TIME_WAIT entries behind to collide with later ones.
                let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
                true
            }
            Err(_) => false,
        };
        if open == want_open {
            return Ok(now);
        }
        if now > deadline {
            bail!(
                "127.0.0.1:{port} did not {} within 5 s",
                if want_open { "open" } else { "close" }
            );
        }
        // Probe every 20 µs: a tighter spin would take the CPU from the
        // agent and relay whose latency it measures (2 cores here).
        std::thread::sleep(Duration::from_micros(20));
    }
}

pub fn detection(rig: &Rig, cycles: usize) -> Result<Latency> {
    let port = free_port()?;
    let mut lat =
        Latency { listen_us: Vec::with_capacity(cycles), close_us: Vec::with_capacity(cycles) };
    for _ in 0..cycles {
        let (l, t0) = rig.ns.run(move || {
            let l = listener(SocketAddr::from(([127, 0, 0, 1], port)));
            (l, Instant::now())
        })?;
        let l = l.with_context(|| format!("listening on 127.0.0.1:{port} in the guest"))?;
        let t1 = spin_until(port, true)?;
        let t2 = Instant::now();
        drop(l);
        let t3 = spin_until(port, false)?;
        lat.listen_us.push((t1 - t0).as_secs_f64() * 1e6);
        lat.close_us.push((t3 - t2).as_secs_f64() * 1e6);
    }
    Ok(lat)
}

/// One throughput figure set, Gbit/s, one value per repetition; with the
/// CPU seconds the agent and relay used per GB moved, per repetition.
pub struct Tput {
    pub streams: u32,
    /// true: guest to host (iperf3 -R).
    pub reverse: bool,
    pub direct: Vec<f64>,
    pub hoist: Vec<f64>,
    pub socat: Vec<f64>,
    pub hoist_cpu: Vec<Cpu>,
    /// The same over the direct runs: the noise floor.
    pub direct_cpu: Vec<Cpu>,
}

/// Gbit/s and bytes received.
fn iperf(
    cmd: &mut Command,
    quick: bool,
    streams: u32,
    reverse: bool,
    port: u16,
) -> Result<(f64, f64)> {
    cmd.args(["-c", "127.0.0.1", "-p", &port.to_string(), "-J", "-P", &streams.to_string()]);
    // 5 s: 36 runs of it must leave the whole bench within ~6 minutes.
    if quick {
        cmd.args(["-n", "64M"]);
    } else {
        cmd.args(["-t", "5"]);
    }
    if reverse {
        cmd.arg("-R");
    }
    let (status, out) =
        output_within(cmd.stderr(Stdio::inherit()), Duration::from_secs(60), "iperf3")?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing iperf3 -J output")?;
    let sum = &v["end"]["sum_received"];
    match (sum["bits_per_second"].as_f64(), sum["bytes"].as_f64()) {
        (Some(b), Some(bytes)) if status.success() && bytes > 0.0 => Ok((b / 1e9, bytes)),
        _ => bail!(
            "iperf3 -P {streams}{} to port {port} failed: {}",
            if reverse { " -R" } else { "" },
            v["error"]
        ),
    }
}

/// iperf3 inside the guest (direct), through hoist and through a socat
/// chain, for each count of `streams`, both directions.
pub fn throughput(rig: &Rig, quick: bool, streams: &[u32]) -> Result<Vec<Tput>> {
    const PORT: u16 = 15201;
    const SOCAT_PORT: u16 = 15202;
    let sock = rig.dir.join("socat.sock");
    let mut guest_socat = rig
        .ns
        .command("socat")
        .arg(format!("UNIX-LISTEN:{},fork", sock.display()))
        .arg(format!("TCP:127.0.0.1:{PORT}"))
        .spawn()?;
    let mut host_socat = Command::new("socat")
        .arg(format!("TCP-LISTEN:{SOCAT_PORT},bind=127.0.0.1,reuseaddr,fork"))
        .arg(format!("UNIX-CONNECT:{}", sock.display()))
        .spawn()?;
    let result = (|| {
        let deadline = Instant::now() + Duration::from_secs(10);
        // Probing with a connection would start an iperf3 test with no
        // parameters behind the chain: look at the kernel's table instead.
        while !sock.exists() || !host_listening(SOCAT_PORT) {
            if Instant::now() > deadline {
                bail!("the socat chain did not come up");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let reps = if quick { 1 } else { 3 };
        let mut all = Vec::new();
        for &streams in streams {
            for reverse in [false, true] {
                // Gbit/s, and the agent's and relay's CPU per GB meanwhile
                // (taken around the client alone, not the server's start).
                let run = |cmd: &mut Command, port: u16| {
                    with_server(rig, PORT, || {
                        let ((gbps, bytes), cpu) =
                            Cpu::during(rig, || iperf(cmd, quick, streams, reverse, port))?;
                        Ok((gbps, cpu.per(bytes / 1e9)))
                    })
                };
                let mut t = Tput {
                    streams,
                    reverse,
                    direct: vec![],
                    hoist: vec![],
                    socat: vec![],
                    hoist_cpu: vec![],
                    direct_cpu: vec![],
                };
                for _ in 0..reps {
                    let (gbps, cpu) = run(&mut rig.ns.command("iperf3"), PORT)?;
                    t.direct.push(gbps);
                    t.direct_cpu.push(cpu);
                    let (gbps, cpu) = run(&mut Command::new("iperf3"), PORT)?;
                    t.hoist.push(gbps);
                    t.hoist_cpu.push(cpu);
                    t.socat.push(run(&mut Command::new("iperf3"), SOCAT_PORT)?.0);
                }
                all.push(t);
            }
        }
        Ok(all)
    })();
    for c in [&mut host_socat, &mut guest_socat] {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = std::fs::remove_file(&sock);
    result
}

/// TCP ports listening in the guest, from its own /proc view.
fn guest_listening(rig: &Rig) -> Result<BTreeSet<u16>> {
    let text = rig.ns.run(|| {
        // thread-self: /proc/net would show the thread group leader's namespace.
        ["tcp", "tcp6"]
            .iter()
            .map(|f| {
                std::fs::read_to_string(format!("/proc/thread-self/net/{f}")).unwrap_or_default()
            })
            .collect::<String>()
    })?;
    Ok(crate::util::listening_ports(&text))
}

fn host_listening(port: u16) -> bool {
    std::fs::read_to_string("/proc/net/tcp")
        .map(|t| crate::util::listening_ports(&t).contains(&port))
        .unwrap_or(false)
}

/// Runs `client` against a fresh one-off iperf3 server in the guest, once
/// the guest listens and the host forwards it: a long-lived server carries
/// state from one test to the next (and reopens its socket after each).
pub fn with_server<T>(rig: &Rig, port: u16, client: impl FnOnce() -> Result<T>) -> Result<T> {
    let mut server = rig
        .ns
        .command("iperf3")
        .args(["-s", "-1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .spawn()?;
    let r = (|| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(guest_listening(rig)?.contains(&port) && rig.serving().contains(&port)) {
            if Instant::now() > deadline {
                bail!("iperf3's server is not listening and forwarded on {port}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        client()
    })();
    let _ = server.kill();
    let _ = server.wait();
    // The next server must not find the old forwards still up (a UDP test
    // also had its UDP socket forwarded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while (rig.serving().contains(&port) || rig.udp_serving().contains(&port))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    r
}

/// wrk figures: requests per second, latency p50 / p99 in microseconds,
/// requests completed, and the CPU hoist used meanwhile.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wrk {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests: u64,
    pub cpu: Cpu,
}

pub struct Conn {
    pub direct: Vec<Wrk>,
    pub hoist: Vec<Wrk>,
}

fn parse_duration_us(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * mul)
}

pub(super) fn wrk(cmd: &mut Command, quick: bool, port: u16) -> Result<Wrk> {
    let d = if quick { "1s" } else { "5s" };
    let url = format!("http://127.0.0.1:{port}/");
    let (status, text) = output_within(
        cmd.args(["-t", "2", "-c", "32", "-d", d, "--latency", "-H", "Connection: close", &url]),
        Duration::from_secs(60),
        "wrk",
    )?;
    let mut w = Wrk::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["Requests/sec:", v] => w.rps = v.parse().unwrap_or(0.0),
            ["50%", v] => w.p50_us = parse_duration_us(v).unwrap_or(0.0),
            ["99%", v] => w.p99_us = parse_duration_us(v).unwrap_or(0.0),
            [n, "requests", "in", ..] => w.requests = n.parse().unwrap_or(0),
            _ => {}
        }
    }
    if !status.success() || w.rps <= 0.0 || w.requests == 0 {
        bail!("wrk produced no rate: {text}");
    }
    Ok(w)
}

/// wrk against nginx in the guest, from inside the guest (direct) and
/// through hoist, alternately. Each run also records the CPU the agent and
/// relay used during it: through hoist that is the forwarding cost of the
/// connections wrk completed; during the direct run it shows the noise floor
/// (both should sit idle).
pub fn connections(rig: &Rig, nginx: &Server, quick: bool) -> Result<Conn> {
    let reps = if quick { 1 } else { 3 };
    let mut c = Conn { direct: vec![], hoist: vec![] };
    let run = |cmd: &mut Command| -> Result<Wrk> {
        let (w, cpu) = Cpu::during(rig, || wrk(cmd, quick, nginx.port))?;
        Ok(Wrk { cpu, ..w })
    };
    for _ in 0..reps {
        c.direct.push(run(&mut rig.ns.command("wrk"))?);
        c.hoist.push(run(&mut Command::new("wrk"))?);
    }
    Ok(c)
}

/// CPU time (user + system) of a process, in seconds.
pub(super) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces.
    let rest = &stat[stat.rfind(')').context("bad /proc stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    let hz = rustix::param::clock_ticks_per_second() as f64;
    Ok(ticks / hz)
}

/// CPU time (user + system) hoist's agent and relay used, in seconds, or
/// per unit once divided.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    pub agent_s: f64,
    pub relay_s: f64,
}

impl Cpu {
    pub(super) fn now(rig: &Rig) -> Result<Cpu> {
        Ok(Cpu { agent_s: cpu_seconds(rig.agent.id())?, relay_s: cpu_seconds(rig.host.id())? })
    }

    /// Runs `f`; also returns the CPU the agent and relay used meanwhile.
    fn during<T>(rig: &Rig, f: impl FnOnce() -> Result<T>) -> Result<(T, Cpu)> {
        let c0 = Cpu::now(rig)?;
        let t = f()?;
        let c1 = Cpu::now(rig)?;
        Ok((t, Cpu { agent_s: c1.agent_s - c0.agent_s, relay_s: c1.relay_s - c0.relay_s }))
    }

    pub fn per(self, n: f64) -> Cpu {
        Cpu { agent_s: self.agent_s / n, relay_s: self.relay_s / n }
    }

    pub fn total_s(self) -> f64 {
        self.agent_s + self.relay_s
    }
}

pub struct Storm {
    pub cycles: usize,
    pub events: usize,
    pub elapsed_s: f64,
    pub agent_cpu_s: f64,
    pub table_equal: bool,
    /// Agent CPU share of one core at a paced 1000 listen/close per second.
    pub paced_cpu_share: f64,
    pub paced_rate: f64,
}

pub fn storm(rig: &Rig, cycles: usize, paced_secs: u64) -> Result<Storm> {
    let agent = rig.agent.id();
    let cpu0 = cpu_seconds(agent)?;
    let start = Instant::now();
    // Keep every 100th listener open: the host must end with exactly those.
    let kept: Vec<TcpListener> = rig.ns.run(move || -> Result<Vec<TcpListener>> {
        let mut kept = Vec::new();
        for i in 0..cycles {
            let l = listener(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            if i % 100 == 0 {
                kept.push(l);
            }
        }
        Ok(kept)
    })??;
    let kept_ports: BTreeSet<u16> = kept.iter().map(port_of).collect();
    // The truth is whatever the guest holds (another process may hold more).
    let want = guest_listening(rig)?;
    if !kept_ports.is_subset(&want) {
        bail!("the guest does not list its own kept listeners");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let table_equal = loop {
        if rig.serving() == want {
            break true;
        }
        if Instant::now() > deadline {
            let have = rig.serving();
            crate::util::say(format!(
                "after the storm the host serves {} ports the guest does not hold ({:?}…) and lacks {:?}",
                have.difference(&want).count(),
                have.difference(&want).take(5).collect::<Vec<_>>(),
                want.difference(&have).collect::<Vec<_>>()
            ));
            break false;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed_s = start.elapsed().as_secs_f64();
    let agent_cpu_s = cpu_seconds(agent)? - cpu0;
    drop(kept);

    // 1000 listen/close per second, paced.
    let cpu1 = cpu_seconds(agent)?;
    let t0 = Instant::now();
    let n = rig.ns.run(move || -> Result<usize> {
        let mut n = 0;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(paced_secs) {
            drop(listener(SocketAddr::from(([127, 0, 0, 1], 0)))?);
            n += 1;
            let next = t0 + Duration::from_millis(n as u64);
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        Ok(n)
    })??;
    let wall = t0.elapsed().as_secs_f64();
    let paced_cpu_share = (cpu_seconds(agent)? - cpu1) / wall;
    Ok(Storm {
        cycles,
        events: 2 * cycles - kept_ports.len(),
        elapsed_s,
        agent_cpu_s,
        table_equal,
        paced_cpu_share,
        paced_rate: n as f64 / wall,
    })
}

/// Context switches (voluntary + involuntary, all threads) of a process.
fn switches(pid: u32) -> Result<u64> {
    let mut total = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let status = std::fs::read_to_string(t?.path().join("status"))?;
        for line in status.lines() {
            if line.starts_with("voluntary_ctxt_switches:")
                || line.starts_with("nonvoluntary_ctxt_switches:")
            {
                total += line.split_whitespace().nth(1).unwrap_or("0").parse::<u64>()?;
            }
        }
    }
    Ok(total)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

/// Longer than the protocol's handshake timeout (5 s).
const SETTLE: Duration = Duration::from_secs(6);

/// The host's liveness timeout in the bench (its default): it pings every
/// third of it, the one wake-up an idle hoist makes on purpose.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(15);

/// The relay's UDP idle timeout in the bench: short, so the idle
/// measurement sees its UDP flows expire within seconds; long beside any
/// pause inside a UDP measurement's traffic.
pub const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// UDP servers forwarded during the idle measurement, each with a flow that
/// has expired before the window.
pub const IDLE_UDP_SERVERS: usize = 10;

/// Context switches one wake-up may cost a process (a worker leaving
/// epoll_wait, handing a task to another worker, both going back).
pub const SWITCHES_PER_WAKE: u64 = 4;

pub struct Idle {
    pub window_s: f64,
    /// Liveness pings that can fall in the window.
    pub pings: u64,
    pub agent_switches: u64,
    pub host_switches: u64,
    pub agent_cpu_s: f64,
    pub host_cpu_s: f64,
    pub agent_rss_kib: u64,
    pub host_rss_kib: u64,
    pub per_conn_bytes: f64,
}

impl Idle {
    /// The agent wakes once per ping (to answer it).
    pub fn agent_budget(&self) -> u64 {
        self.pings * SWITCHES_PER_WAKE
    }

    /// The relay wakes twice per ping: to send it and to read the answer.
    pub fn host_budget(&self) -> u64 {
        2 * self.pings * SWITCHES_PER_WAKE
    }

    /// Whether the only wake-ups were the liveness pings.
    pub fn within_budget(&self) -> bool {
        self.agent_switches <= self.agent_budget() && self.host_switches <= self.host_budget()
    }
}

pub fn idle(rig: &Rig, window: Duration) -> Result<Idle> {
    let (agent, host) = (rig.agent.id(), rig.host.id());
    let listeners: Vec<TcpListener> = rig.ns.run(|| {
        (0..100)
            .map(|_| listener(SocketAddr::from(([127, 0, 0, 1], 0))))
            .collect::<std::io::Result<Vec<_>>>()
    })??;
    let want: BTreeSet<u16> = listeners.iter().map(port_of).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !want.is_subset(&rig.serving()) {
        if Instant::now() > deadline {
            bail!("100 guest listeners were not all forwarded");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (agent_rss0, host_rss0) = (rss_kib(agent)?, rss_kib(host)?);
    // 100 idle connections through the first port; the guest holds them.
    let first = listeners[0].try_clone()?;
    let held = std::thread::spawn(move || {
        (0..100).map(|_| first.accept().map(|c| c.0)).collect::<std::io::Result<Vec<_>>>()
    });
    let clients: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(("127.0.0.1", port_of(&listeners[0]))))
        .collect::<std::io::Result<_>>()?;
    let guest_side = held.join().unwrap()?;
    // Every connection is relayed end to end once the guest accepted it and a
    // byte made the round trip through the relays.
    // (Accept order need not match connect order: write all, then read all.)
    {
        use std::io::{Read, Write};
        for c in &clients {
            (&*c).write_all(b"x")?;
        }
        for g in &guest_side {
            g.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut b = [0u8; 1];
            (&*g).read_exact(&mut b).context("a byte through an idle connection")?;
        }
    }
    let (agent_rss, host_rss) = (rss_kib(agent)?, rss_kib(host)?);
    let udp = idle_udp_forwards(rig)?;
    // Steady state: each connection's handshake armed a timeout; a timer
    // that was cancelled can still end one sleep of the runtime when its
    // deadline passes. Wait those out, then count.
    std::thread::sleep(SETTLE);
    let (s_a, s_h, c_a, c_h) =
        (switches(agent)?, switches(host)?, cpu_seconds(agent)?, cpu_seconds(host)?);
    std::thread::sleep(window);
    let interval = LIVENESS_TIMEOUT / 3;
    let idle = Idle {
        window_s: window.as_secs_f64(),
        pings: window.as_millis().div_ceil(interval.as_millis()) as u64 + 1,
        agent_switches: switches(agent)? - s_a,
        host_switches: switches(host)? - s_h,
        agent_cpu_s: cpu_seconds(agent)? - c_a,
        host_cpu_s: cpu_seconds(host)? - c_h,
        agent_rss_kib: agent_rss,
        host_rss_kib: host_rss,
        per_conn_bytes: ((agent_rss + host_rss) as f64 - (agent_rss0 + host_rss0) as f64) * 1024.0
            / 100.0,
    };
    drop(clients);
    drop(guest_side);
    drop(listeners);
    drop(udp);
    Ok(idle)
}

/// UDP servers in the guest, forwarded, each echoed once through hoist,
/// whose flows have then expired: what an idle UDP forward is after its
/// clients went quiet.
fn idle_udp_forwards(rig: &Rig) -> Result<Vec<UdpEcho>> {
    // Held together, so no two are the same port.
    let picks = (0..IDLE_UDP_SERVERS)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("picking free UDP ports")?;
    let ports = picks.iter().map(|s| Ok(s.local_addr()?.port())).collect::<Result<Vec<u16>>>()?;
    drop(picks);
    let servers =
        ports.iter().map(|&p| Ok(UdpEcho::bind(rig, p)?.0)).collect::<Result<Vec<_>>>()?;
    for &p in &ports {
        rig.wait_udp_forwarded(p, "an idle UDP server")?;
        let c = std::net::UdpSocket::bind("127.0.0.1:0")?;
        c.connect(("127.0.0.1", p))?;
        c.set_read_timeout(Some(super::servers::IO_TIMEOUT))?;
        c.send(b"x")?;
        c.recv(&mut [0u8; 8]).with_context(|| format!("a datagram's echo through UDP port {p}"))?;
    }
    // Each flow's guest end is the agent's socket connected to its server;
    // it closes when the flow expires. (`hoist-host status` would count the
    // flows too, but fails on a relay with this many forwards: its client
    // reads at most 4096 bytes of answer.)
    let flows = guest_udp_flows(rig, &ports)?;
    if flows != ports.len() {
        bail!(
            "the agent should hold one flow socket per idle UDP server ({}), it holds {flows}",
            ports.len()
        );
    }
    let deadline = Instant::now() + UDP_IDLE_TIMEOUT * 3 + Duration::from_secs(10);
    loop {
        match guest_udp_flows(rig, &ports)? {
            0 => return Ok(servers),
            n if Instant::now() > deadline => bail!(
                "{n} UDP flows of the idle servers did not expire (--udp-idle-timeout {UDP_IDLE_TIMEOUT:?})"
            ),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Connected UDP sockets in the guest whose peer port is one of `ports`,
/// from the guest's /proc/net/udp.
fn guest_udp_flows(rig: &Rig, ports: &[u16]) -> Result<usize> {
    // thread-self: /proc/net would show the thread group leader's namespace.
    let text = rig.ns.run(|| std::fs::read_to_string("/proc/thread-self/net/udp"))??;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let remote = l.split_whitespace().nth(2)?;
            u16::from_str_radix(remote.rsplit(':').next()?, 16).ok()
        })
        .filter(|p| ports.contains(p))
        .count())
}
