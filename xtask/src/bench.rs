//! `cargo xtask bench`: hoist against its baselines, measured side by side in
//! one run. A network namespace is the guest (agent inside, host relay
//! outside, Unix-socket transport), real tools are the load (iperf3, wrk,
//! nginx), and every figure is reported with the baseline measured in the same
//! run. TCP and UDP forwards are measured alike (`udp` holds the UDP ones). `--quick` runs each measurement briefly and only checks that it
//! produced numbers (CI); `--write` also writes BENCHMARKS.md and SVG charts.

mod floor;
mod measure;
mod report;
mod servers;
mod small;
mod udp;

use crate::build::build;
use crate::setup::apt;
use crate::util::{require_root, say, serving_ports, Lines};
use anyhow::{bail, Context, Result};
use hoist_testsupport::Netns;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A few seconds per measurement; checks only that each produced numbers.
    #[arg(long)]
    pub quick: bool,
    /// Also write BENCHMARKS.md and docs/bench/*.svg.
    #[arg(long)]
    pub write: bool,
    /// Run one measurement only.
    #[arg(long, value_enum, conflicts_with = "write")]
    pub only: Option<Only>,
}

/// The measurements, by the name `--only` takes.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// listen() -> host port accepts, close() -> host port refuses.
    Latency,
    /// iperf3: direct, hoist, socat chain.
    Throughput,
    /// hoist's CPU per GB, during the 1-stream throughput runs.
    CpuPerGb,
    /// wrk with Connection: close against nginx.
    Connections,
    /// hoist's CPU per connection, during the connections runs.
    CpuPerConnection,
    /// Connect + request + first byte, one connection at a time.
    Sequential,
    /// redis-benchmark GET and SET on persistent connections.
    Requests,
    /// 64-byte round trips on one connection.
    Pingpong,
    /// 10000 listen/close cycles; agent CPU per event.
    Storm,
    /// Wake-ups, CPU and memory with nothing to do.
    Idle,
    /// UDP bind() -> host port echoes a probe, close() -> host port refuses one.
    UdpLatency,
    /// 64-byte datagram round trips, one client, one datagram in flight.
    UdpPingpong,
    /// iperf3 -u at fixed offered rates: received rate and loss, direct and hoist.
    UdpThroughput,
    /// Connections, requests and sequential latency: hoist against a bare
    /// io_uring relay chain of the same shape, and direct.
    Floor,
}

impl Only {
    /// The measurement whose runs this one is taken during.
    fn during(self) -> Option<Only> {
        match self {
            Only::CpuPerConnection => Some(Only::Connections),
            Only::CpuPerGb => Some(Only::Throughput),
            _ => None,
        }
    }
}

/// The bench's guest and the two hoist processes around it.
pub struct Rig {
    pub ns: Netns,
    pub dir: PathBuf,
    pub agent: Child,
    pub host: Child,
    pub host_log: Lines,
}

impl Rig {
    fn start(agent: &Path, host: &Path) -> Result<Rig> {
        let ns = Netns::new().context("creating the bench namespace")?;
        let dir = std::env::temp_dir().join(format!("hoist-bench-{}", ns.name()));
        std::fs::create_dir_all(&dir)?;
        let sock = dir.join("agent.sock");
        let agent = ns
            .command(agent.to_str().unwrap())
            .args(["--listen", &format!("unix:{}", sock.display())])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting hoist-agent")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            if Instant::now() > deadline {
                bail!("hoist-agent did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut host = Command::new(host)
            .args(["--guest", &format!("unix:{}", sock.display()), "--log-format", "json"])
            .args(["--liveness-timeout", &measure::LIVENESS_TIMEOUT.as_secs().to_string()])
            .args(["--udp-idle-timeout", &measure::UDP_IDLE_TIMEOUT.as_secs().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting hoist-host")?;
        // Only what the bench reads: the forward events.
        let host_log = Lines::follow(host.stderr.take().unwrap(), |l| {
            l.contains("forward_") || l.contains("\"connected\"")
        });
        let rig = Rig { ns, dir, agent, host, host_log };
        rig.wait_host("the host to connect", Duration::from_secs(20), |l| {
            l.iter().any(|x| x.contains("\"connected\""))
        })?;
        Ok(rig)
    }

    pub fn wait_host(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[String]) -> bool,
    ) -> Result<()> {
        self.host_log.wait(what, timeout, pred)
    }

    /// Waits until the host forwards TCP `port` (for `what`, in the error).
    pub fn wait_forwarded(&self, port: u16, what: &str) -> Result<()> {
        self.wait_host(
            &format!("{what}'s port {port} to be forwarded"),
            Duration::from_secs(10),
            |l| serving_ports(l, "tcp").contains(&port),
        )
    }

    /// Waits until the host forwards UDP `port` (for `what`, in the error).
    pub fn wait_udp_forwarded(&self, port: u16, what: &str) -> Result<()> {
        self.wait_host(
            &format!("{what}'s UDP port {port} to be forwarded"),
            Duration::from_secs(10),
            |l| serving_ports(l, "udp").contains(&port),
        )
    }

    /// Host TCP ports currently forwarded, from the host's log.
    pub fn serving(&self) -> std::collections::BTreeSet<u16> {
        self.host_log.with(|l| serving_ports(l, "tcp"))
    }

    /// Host UDP ports currently forwarded, from the host's log.
    pub fn udp_serving(&self) -> std::collections::BTreeSet<u16> {
        self.host_log.with(|l| serving_ports(l, "udp"))
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for c in [&mut self.host, &mut self.agent] {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn bench(args: BenchArgs) -> Result<()> {
    require_root("cargo xtask bench")?;
    apt(&[
        ("iperf3", "iperf3"),
        ("wrk", "wrk"),
        ("socat", "socat"),
        ("nginx", "nginx-light"),
        ("redis-server", "redis-server"),
        ("redis-benchmark", "redis-tools"),
        ("ip", "iproute2"),
    ])?;
    let built = build()?;
    let rig = Rig::start(&built.agent, &built.host)?;
    let q = args.quick;
    let mut results = report::Results::default();
    let want = |m: Only| args.only.is_none_or(|o| o == m || o.during() == Some(m));
    if want(Only::Latency) {
        say("measuring detection latency (listen -> host accepts, close -> host refuses)");
        results.latency = Some(measure::detection(&rig, if q { 50 } else { 1000 })?);
    }
    if want(Only::Throughput) {
        // CPU per GB alone needs only the 1-stream runs it reports.
        let streams: &[u32] = if args.only == Some(Only::CpuPerGb) { &[1] } else { &[1, 8] };
        say(format!("measuring throughput and hoist's CPU per GB (iperf3: direct, hoist, socat chain; {streams:?} streams; both directions)"));
        results.throughput = measure::throughput(&rig, q, streams)?;
    }
    if want(Only::Connections) || want(Only::Sequential) {
        let nginx = servers::nginx(&rig)?;
        if want(Only::Connections) {
            say("measuring connection cost (wrk, Connection: close, nginx in the guest) and hoist's CPU per connection");
            results.conn = Some(measure::connections(&rig, &nginx, q)?);
        }
        if want(Only::Sequential) {
            say("measuring connect + request + first byte, one connection at a time");
            let (warmup, n) = if q { (20, 200) } else { (200, 5000) };
            results.sequential = Some(small::sequential(&rig, &nginx, warmup, n)?);
        }
    }
    if want(Only::Requests) {
        say("measuring request/response on persistent connections (redis-benchmark, redis-server in the guest)");
        results.requests = Some(small::requests(&rig, if q { 5_000 } else { 200_000 })?);
    }
    if want(Only::Pingpong) {
        say("measuring ping-pong of 64-byte messages on one connection (echo server in the guest)");
        results.pingpong = Some(small::pingpong(&rig, if q { 500 } else { 20_000 })?);
    }
    if want(Only::Storm) {
        say("measuring a listen storm and the agent's CPU per event");
        results.storm =
            Some(measure::storm(&rig, if q { 500 } else { 10_000 }, if q { 1 } else { 3 })?);
    }
    if want(Only::UdpLatency) {
        say("measuring UDP detection latency (bind -> host port echoes, close -> host port refuses)");
        results.udp_latency = Some(udp::detection(&rig, if q { 50 } else { 1000 })?);
    }
    if want(Only::UdpPingpong) {
        say("measuring UDP request/response: 64-byte datagrams, one in flight (echo server in the guest)");
        results.udp_pingpong = Some(udp::pingpong(&rig, if q { 500 } else { 20_000 })?);
    }
    if want(Only::UdpThroughput) {
        say(format!(
            "measuring UDP throughput (iperf3 -u, {}-byte datagrams, offered {:?} Mbit/s, direct and hoist, both directions)",
            udp::DATAGRAM,
            udp::RATES_MBPS
        ));
        results.udp_throughput = udp::throughput(&rig, q)?;
    }
    if want(Only::Floor) {
        say("measuring the two-hop floor (wrk, redis-benchmark, sequential: direct, hoist, a bare io_uring chain)");
        results.floor = Some(floor::floor(&rig, q)?);
    }
    if want(Only::Idle) {
        say(format!(
            "measuring idle cost (100 forwarded ports, 100 open connections, {} UDP forwards whose flows expired)",
            measure::IDLE_UDP_SERVERS
        ));
        results.idle = Some(measure::idle(
            &rig,
            if q { Duration::from_secs(1) } else { Duration::from_secs(10) },
        )?);
    }
    drop(rig);
    let table = report::markdown(&results);
    println!("{table}");
    if args.only.is_none() {
        results.check_complete()?;
    }
    if args.write {
        report::write(&results, &table)?;
        say("wrote BENCHMARKS.md and docs/bench/*.svg");
    }
    Ok(())
}
