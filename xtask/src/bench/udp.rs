//! UDP through hoist: how soon a guest UDP server answers on the host and
//! refuses after it closed (the TCP detection's method, with datagrams as
//! probes), one client's request/response round trips against an echo
//! server in the guest, and iperf3 -u at fixed offered rates, both
//! directions. Each but detection runs the same client directly inside the
//! guest as its baseline.

use super::measure::{with_server, Latency};
use super::servers::{free_udp_port, output_within, UdpEcho, IO_TIMEOUT};
use super::small::{timed_round_trips, PingPong, RoundTrips};
use super::Rig;
use anyhow::{bail, Context, Result};
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a probe that was not refused may wait for its echo before
/// another is sent: the first datagrams of a new forward also open its
/// flow's way into the guest, and must not be buried under more probes.
const PROBE_ECHO_WAIT: Duration = Duration::from_millis(5);

/// The pause between probes that found the port in the state it is leaving,
/// as the TCP detection's: a tighter spin would take the CPU from the agent
/// and relay it measures (2 cores here).
const PROBE_PAUSE: Duration = Duration::from_micros(20);

/// What one probe of a UDP port found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// A probe came back from the echo server.
    Answered,
    /// ICMP port unreachable, reported on the connected socket.
    Refused,
    /// Neither yet.
    Silent,
}

fn observe(r: std::io::Result<usize>) -> Result<Probe> {
    match r {
        Ok(_) => Ok(Probe::Answered),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(Probe::Refused),
        // A read timeout, or nothing there on a non-blocking socket.
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Ok(Probe::Silent)
        }
        Err(e) => Err(e).context("probing a UDP port"),
    }
}

/// A fresh probe socket connected to 127.0.0.1:`port`, and the time limit
/// of the wait it is made for.
fn probe_socket(port: u16) -> Result<(UdpSocket, Instant)> {
    let probe = UdpSocket::bind("127.0.0.1:0").context("binding a probe socket")?;
    probe.connect(("127.0.0.1", port)).context("connecting the probe socket")?;
    Ok((probe, Instant::now() + Duration::from_secs(5)))
}

/// Probes 127.0.0.1:`port` until a probe is echoed; returns when the echo
/// arrived. A probe that is not refused is waited for, in a blocking read
/// that returns as the echo (or a late refusal) arrives.
fn until_answers(port: u16) -> Result<Instant> {
    let (probe, deadline) = probe_socket(port)?;
    probe.set_read_timeout(Some(PROBE_ECHO_WAIT))?;
    let mut buf = [0u8; 64];
    loop {
        // A refusal of an earlier probe can surface here, as the send's error.
        let refused = observe(probe.send(b"probe"))? == Probe::Refused
            || match observe(probe.recv(&mut buf))? {
                Probe::Answered => return Ok(Instant::now()),
                Probe::Refused => true,
                // No echo within PROBE_ECHO_WAIT: the next probe goes at once.
                Probe::Silent => false,
            };
        if Instant::now() > deadline {
            bail!("UDP 127.0.0.1:{port} did not answer within 5 s");
        }
        if refused {
            std::thread::sleep(PROBE_PAUSE);
        }
    }
}

/// Probes 127.0.0.1:`port` until a probe is refused; returns when the
/// refusal was seen. Only a new probe can meet the closed port, so they go
/// out every [`PROBE_PAUSE`], as the TCP detection's connects do.
fn until_refuses(port: u16) -> Result<Instant> {
    let (probe, deadline) = probe_socket(port)?;
    probe.set_nonblocking(true)?;
    let mut buf = [0u8; 64];
    loop {
        if observe(probe.send(b"probe"))? == Probe::Refused {
            return Ok(Instant::now());
        }
        std::thread::sleep(PROBE_PAUSE);
        let now = Instant::now();
        // Echoes of probes the server answered before it closed are skipped.
        if observe(probe.recv(&mut buf))? == Probe::Refused {
            return Ok(now);
        }
        if now > deadline {
            bail!("UDP 127.0.0.1:{port} did not refuse within 5 s");
        }
    }
}

/// bind() of a UDP echo server in the guest -> the host port echoes a
/// probe; close() -> the host port refuses one. `cycles` times, one port.
pub fn detection(rig: &Rig, cycles: usize) -> Result<Latency> {
    let port = free_udp_port()?;
    let mut lat =
        Latency { listen_us: Vec::with_capacity(cycles), close_us: Vec::with_capacity(cycles) };
    for _ in 0..cycles {
        let (server, t0) = UdpEcho::bind(rig, port)?;
        let t1 = until_answers(port)?;
        let t2 = server.close();
        let t3 = until_refuses(port)?;
        lat.listen_us.push((t1 - t0).as_secs_f64() * 1e6);
        lat.close_us.push((t3 - t2).as_secs_f64() * 1e6);
    }
    Ok(lat)
}

/// One client sends a 64-byte datagram to a UDP echo server in the guest
/// and waits for it back, from inside the guest (direct) and through hoist.
pub fn pingpong(rig: &Rig, n: usize) -> Result<PingPong> {
    let echo = UdpEcho::start(rig)?;
    let port = echo.port;
    let direct = rig.ns.run(move || round_trips(port, n))??;
    let hoist = round_trips(port, n)?;
    Ok(PingPong { direct, hoist })
}

/// Sends 64 bytes and waits for the 64 back, `n` times after the warm-up,
/// from one socket to 127.0.0.1:`port`. One datagram is in flight at a
/// time, so a lost one is a failure (loopback loses none), not a number.
fn round_trips(port: u16, n: usize) -> Result<RoundTrips> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let c = UdpSocket::bind("127.0.0.1:0").context("binding the UDP client")?;
    c.connect(addr).with_context(|| format!("connecting the UDP client to {addr}"))?;
    c.set_read_timeout(Some(IO_TIMEOUT))?;
    let ping = [0x5a; 64];
    let mut pong = [0; 128];
    timed_round_trips(n, &addr, |i| {
        c.send(&ping).with_context(|| format!("sending a datagram to {addr}"))?;
        let got = c.recv(&mut pong).with_context(|| {
            format!("awaiting the echo of datagram {i} from {addr} (lost, or refused)")
        })?;
        if pong[..got] != ping {
            bail!("the echo from {addr} differs from what was sent ({got} bytes)");
        }
        Ok(())
    })
}

/// The datagram size of the iperf3 -u runs: what fits an Ethernet MTU, the
/// size real UDP protocols (QUIC, games, media) keep to.
pub const DATAGRAM: usize = 1400;

/// Offered rates of the iperf3 -u runs, Mbit/s: one every path carries, one
/// near what a receiver keeps up with on 2 cores, and one beyond what the
/// sender reaches at all with these datagrams, which shows each path's
/// ceiling.
pub const RATES_MBPS: [u64; 3] = [100, 500, 2000];

/// One iperf3 -u run: what the sender managed to send and the receiver
/// got, Mbit/s, and the share of datagrams lost.
#[derive(Clone, Copy, Debug)]
pub struct UdpRun {
    pub sent_mbps: f64,
    pub received_mbps: f64,
    pub lost_percent: f64,
}

/// The runs at one offered rate in one direction, one per repetition.
pub struct UdpTput {
    pub offered_mbps: u64,
    /// true: guest to host (iperf3 -R).
    pub reverse: bool,
    pub direct: Vec<UdpRun>,
    pub hoist: Vec<UdpRun>,
}

fn iperf_udp(
    cmd: &mut Command,
    secs: u64,
    offered_mbps: u64,
    reverse: bool,
    port: u16,
) -> Result<UdpRun> {
    cmd.args(["-c", "127.0.0.1", "-p", &port.to_string(), "-u", "-J"])
        .args(["-b", &format!("{offered_mbps}M"), "-l", &DATAGRAM.to_string()])
        .args(["-t", &secs.to_string()]);
    if reverse {
        cmd.arg("-R");
    }
    let (status, out) =
        output_within(cmd.stderr(Stdio::inherit()), Duration::from_secs(60), "iperf3 -u")?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing iperf3 -u -J output")?;
    let (sent, received) = (&v["end"]["sum_sent"], &v["end"]["sum_received"]);
    match (
        sent["bits_per_second"].as_f64(),
        received["bits_per_second"].as_f64(),
        received["lost_percent"].as_f64(),
        received["packets"].as_f64(),
    ) {
        (Some(s), Some(r), Some(lost), Some(packets)) if status.success() && packets > 0.0 => {
            Ok(UdpRun { sent_mbps: s / 1e6, received_mbps: r / 1e6, lost_percent: lost })
        }
        _ => bail!(
            "iperf3 -u -b {offered_mbps}M{} to port {port} failed: {}",
            if reverse { " -R" } else { "" },
            v["error"]
        ),
    }
}

/// iperf3 -u inside the guest (direct) and through hoist, alternately, at
/// each offered rate, both directions. The guest's iperf3 server listens
/// on TCP (its control connection) and, once a test starts, binds UDP to
/// the same port: both are forwarded.
pub fn throughput(rig: &Rig, quick: bool) -> Result<Vec<UdpTput>> {
    const PORT: u16 = 15203;
    let (secs, reps) = if quick { (1, 1) } else { (5, 3) };
    let run = |cmd: &mut Command, offered_mbps: u64, reverse: bool| {
        let held = hold_udp_port(rig, PORT)?;
        with_server(rig, PORT, move || {
            rig.wait_udp_forwarded(PORT, "the UDP socket held for iperf3")?;
            let r = iperf_udp(cmd, secs, offered_mbps, reverse, PORT);
            // Closed with the server, so that both forwards end before the next run.
            drop(held);
            r
        })
    };
    let mut all = Vec::new();
    for offered_mbps in RATES_MBPS {
        for reverse in [false, true] {
            let mut t = UdpTput { offered_mbps, reverse, direct: vec![], hoist: vec![] };
            for _ in 0..reps {
                t.direct.push(run(&mut rig.ns.command("iperf3"), offered_mbps, reverse)?);
                t.hoist.push(run(&mut Command::new("iperf3"), offered_mbps, reverse)?);
            }
            all.push(t);
        }
    }
    Ok(all)
}

/// A UDP socket on the iperf3 server's port in the guest, bound as iperf3
/// binds its own (the dual-stack wildcard, SO_REUSEADDR), held from before
/// the server starts until after it exits.
///
/// Why: iperf3's server binds its UDP socket only as a test starts, and
/// tells its client to go over the TCP control connection; through hoist
/// that message (one relayed TCP write) arrives before the new UDP forward
/// is up (a few hundred µs: the UDP detection rows), so the client's first
/// datagram meets no host socket and is refused, and the test ends
/// ("unable to read from stream socket: Connection refused"; 10 tries of 10
/// without this socket). A server that
/// is up before its clients, which this socket stands for, has its forward
/// ready. It receives nothing: iperf3's socket, bound later to the same
/// address, is the one the kernel delivers to, and once iperf3 connects it
/// to its client that client's datagrams reach it alone.
fn hold_udp_port(rig: &Rig, port: u16) -> Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    rig.ns
        .run(move || -> std::io::Result<UdpSocket> {
            let s = Socket::new(Domain::IPV6, Type::DGRAM, None)?;
            s.set_only_v6(false)?;
            s.set_reuse_address(true)?;
            s.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
            Ok(s.into())
        })?
        .with_context(|| format!("holding UDP port {port} in the guest for iperf3"))
}
