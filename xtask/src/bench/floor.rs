//! The two-hop floor: hoist against bare-chain (a relay chain of hoist's
//! shape with nothing but the bytes: io_uring, one thread per hop, no
//! framing, no pool) and direct, on the same servers, in interleaved runs.
//! What the bare chain cannot beat, no relay of this shape reaches on this
//! machine; where it beats hoist, the gap is what hoist's design costs.

use super::measure::{cpu_seconds, free_port, wrk, Cpu};
use super::servers::{nginx, redis, IO_TIMEOUT};
use super::small::{first_bytes, redis_benchmark, Rates};
use super::Rig;
use crate::util::{root, run, say, target_dir};
use anyhow::{bail, Context, Result};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One route's numbers: relay CPU is in µs per connection or request (zero
/// for direct, which has no relay).
#[derive(Default)]
pub struct Numbers {
    pub conn_per_s: Vec<f64>,
    pub cpu_per_conn_us: Vec<f64>,
    pub requests: Vec<Rates>,
    pub cpu_per_request_us: Vec<f64>,
    /// Connect + request + first byte, one connection at a time.
    pub sequential_us: Vec<f64>,
}

#[derive(Default)]
pub struct Floor {
    pub direct: Numbers,
    pub hoist: Numbers,
    pub bare: Numbers,
}

/// The two hops of a bare chain in front of one guest server; killed on
/// drop.
struct BareChain {
    hops: [Child; 2],
    port: u16,
}

impl BareChain {
    fn start(rig: &Rig, bin: &Path, guest_port: u16) -> Result<BareChain> {
        let sock = rig.dir.join(format!("bare-{guest_port}.sock"));
        let guest = rig
            .ns
            .command(bin.to_str().context("a non-UTF-8 path")?)
            .args(["--listen", &format!("unix:{}", sock.display())])
            .args(["--dial", &format!("tcp:127.0.0.1:{guest_port}")])
            .stdin(Stdio::null())
            .spawn()
            .context("starting bare-chain in the guest")?;
        let port = free_port()?;
        let host = Command::new(bin)
            .args(["--listen", &format!("tcp:127.0.0.1:{port}")])
            .args(["--dial", &format!("unix:{}", sock.display())])
            .stdin(Stdio::null())
            .spawn();
        let mut chain =
            BareChain { hops: [guest, host.context("starting bare-chain on the host")?], port };
        // Up once a client gets an answer through both hops.
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            if let Some(s) = chain.hops.iter_mut().find_map(|h| h.try_wait().ok().flatten()) {
                bail!("bare-chain exited at start ({s})");
            }
            if sock.exists() && TcpStream::connect_timeout(&addr, IO_TIMEOUT).is_ok() {
                return Ok(chain);
            }
            if Instant::now() > deadline {
                bail!("bare-chain did not come up on {addr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn cpu_s(&self) -> Result<f64> {
        Ok(cpu_seconds(self.hops[0].id())? + cpu_seconds(self.hops[1].id())?)
    }
}

impl Drop for BareChain {
    fn drop(&mut self) {
        for h in &mut self.hops {
            let _ = h.kill();
            let _ = h.wait();
        }
    }
}

/// bare-chain, built for release.
fn build() -> Result<PathBuf> {
    say("building target/release/bare-chain (the bench's two-hop yardstick)");
    let mut cmd = Command::new("cargo");
    cmd.args(["build", "--locked", "--release", "-p", "hoist-bare-chain"]).current_dir(root());
    run(&mut cmd, "running cargo build for bare-chain")?;
    Ok(target_dir().join("release/bare-chain"))
}

/// One way to the guest's servers: the client runs in the guest (direct)
/// or on the host, against these ports, through relays whose CPU so far
/// `cpu_s` reads (none for direct).
struct Route<'a> {
    in_guest: bool,
    web_port: u16,
    db_port: u16,
    cpu_s: &'a dyn Fn() -> Result<f64>,
}

impl Route<'_> {
    fn command(&self, rig: &Rig, program: &str) -> Command {
        if self.in_guest {
            rig.ns.command(program)
        } else {
            Command::new(program)
        }
    }

    /// Runs `f`, and the relays' CPU it cost, in µs per `n` of its result.
    fn measure<T>(&self, f: impl FnOnce() -> Result<T>, n: impl Fn(&T) -> f64) -> Result<(T, f64)> {
        let c0 = (self.cpu_s)()?;
        let t = f()?;
        let used = (self.cpu_s)()? - c0;
        let per = 1e6 * used / n(&t);
        Ok((t, per))
    }
}

pub fn floor(rig: &Rig, quick: bool) -> Result<Floor> {
    let bin = build()?;
    let web = nginx(rig)?;
    let db = redis(rig)?;
    let (bare_web, bare_db) =
        (BareChain::start(rig, &bin, web.port)?, BareChain::start(rig, &bin, db.port)?);
    let (reps, requests, (warmup, n)) =
        if quick { (1, 5_000, (20, 200)) } else { (3, 200_000, (200, 5000)) };
    // Each relay's CPU is read whole: a chain or hoist process that carries
    // nothing meanwhile adds nothing.
    let no_relay = || Ok(0.0);
    let hoist_cpu = || Ok(Cpu::now(rig)?.total_s());
    let bare_cpu = || Ok(bare_web.cpu_s()? + bare_db.cpu_s()?);
    let (direct, hoist, bare) = (
        Route { in_guest: true, web_port: web.port, db_port: db.port, cpu_s: &no_relay },
        Route { in_guest: false, web_port: web.port, db_port: db.port, cpu_s: &hoist_cpu },
        Route { in_guest: false, web_port: bare_web.port, db_port: bare_db.port, cpu_s: &bare_cpu },
    );
    let mut out = Floor::default();
    for rep in 0..reps {
        for (route, numbers) in
            [(&direct, &mut out.direct), (&hoist, &mut out.hoist), (&bare, &mut out.bare)]
        {
            let (w, per) = route.measure(
                || wrk(&mut route.command(rig, "wrk"), quick, route.web_port),
                |w| w.requests as f64,
            )?;
            numbers.conn_per_s.push(w.rps);
            numbers.cpu_per_conn_us.push(per);
            let (r, per) = route.measure(
                || {
                    redis_benchmark(
                        &mut route.command(rig, "redis-benchmark"),
                        route.db_port,
                        requests,
                    )
                },
                |_| 2.0 * requests as f64,
            )?;
            numbers.requests.push(r);
            numbers.cpu_per_request_us.push(per);
            if rep == 0 {
                let port = route.web_port;
                numbers.sequential_us = if route.in_guest {
                    rig.ns.run(move || first_bytes(port, warmup, n))??
                } else {
                    first_bytes(port, warmup, n)?
                };
            }
        }
    }
    Ok(out)
}
