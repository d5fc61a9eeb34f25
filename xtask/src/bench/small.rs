//! Connections and small messages, as one interactive client feels them:
//! each measured through hoist and, as the baseline, with the same client
//! code run directly inside the guest against the same server.

use super::servers::{output_within, Server, IO_TIMEOUT, LOOP_LIMIT};
use super::Rig;
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Instant;

/// Connect + request + first byte of the answer, one connection after the
/// other, in microseconds: what each new connection costs a client that
/// waits for it, without wrk's 32 connections queueing behind each other.
pub struct Sequential {
    pub direct_us: Vec<f64>,
    pub hoist_us: Vec<f64>,
}

pub fn sequential(rig: &Rig, nginx: &Server, warmup: usize, n: usize) -> Result<Sequential> {
    let port = nginx.port;
    let direct_us = rig.ns.run(move || first_bytes(port, warmup, n))??;
    let hoist_us = first_bytes(port, warmup, n)?;
    Ok(Sequential { direct_us, hoist_us })
}

/// `warmup` + `n` times: connect to 127.0.0.1:`port`, send an HTTP/1.0
/// request, wait for the first byte of the answer, close; the last `n` times.
pub(super) fn first_bytes(port: u16, warmup: usize, n: usize) -> Result<Vec<f64>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let mut us = Vec::with_capacity(n);
    for i in 0..warmup + n {
        if start.elapsed() > LOOP_LIMIT {
            bail!("{i} connections to {addr} took longer than {LOOP_LIMIT:?}");
        }
        let t0 = Instant::now();
        let mut c = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .with_context(|| format!("connecting to {addr}"))?;
        c.set_read_timeout(Some(IO_TIMEOUT))?;
        c.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        if c.read(&mut buf).with_context(|| format!("awaiting {addr}'s answer"))? == 0 {
            bail!("{addr} closed without answering");
        }
        if i >= warmup {
            us.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(us)
}

/// Requests per second of redis-benchmark's GET and SET tests.
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    pub get: f64,
    pub set: f64,
}

/// Request/response on persistent connections: redis-benchmark, 20 clients,
/// against redis-server in the guest; many small messages in flight at once.
pub struct Requests {
    pub n: usize,
    pub direct: Rates,
    pub hoist: Rates,
}

pub fn requests(rig: &Rig, n: usize) -> Result<Requests> {
    let redis = super::servers::redis(rig)?;
    let direct = redis_benchmark(&mut rig.ns.command("redis-benchmark"), redis.port, n)?;
    let hoist = redis_benchmark(&mut Command::new("redis-benchmark"), redis.port, n)?;
    Ok(Requests { n, direct, hoist })
}

pub(super) fn redis_benchmark(cmd: &mut Command, port: u16, n: usize) -> Result<Rates> {
    let args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-c",
        "20",
        "-n",
        &n.to_string(),
        "-t",
        "get,set",
        "-q",
    ];
    let (status, text) = output_within(cmd.args(args), LOOP_LIMIT, "redis-benchmark")?;
    // Each test ends with "GET: 81234.56 requests per second, p50=...",
    // after progress lines that end in a carriage return.
    let rate = |test: &str| {
        text.split(['\r', '\n']).filter(|l| l.contains("requests per second")).find_map(|l| {
            l.strip_prefix(test)?.strip_prefix(": ")?.split_whitespace().next()?.parse::<f64>().ok()
        })
    };
    match (rate("GET"), rate("SET")) {
        (Some(get), Some(set)) if status.success() => Ok(Rates { get, set }),
        _ => bail!("redis-benchmark to port {port} gave no GET and SET rates ({status}): {text}"),
    }
}

/// Round trips of one small message on one persistent connection.
pub struct RoundTrips {
    pub per_s: f64,
    pub us: Vec<f64>,
}

/// One client ping-pongs 64 bytes with an echo server in the guest: the
/// per-message latency a relay adds when nothing queues behind it.
pub struct PingPong {
    pub direct: RoundTrips,
    pub hoist: RoundTrips,
}

pub fn pingpong(rig: &Rig, n: usize) -> Result<PingPong> {
    let echo = super::servers::Echo::start(rig)?;
    let port = echo.port;
    let direct = rig.ns.run(move || round_trips(port, n))??;
    let hoist = round_trips(port, n)?;
    Ok(PingPong { direct, hoist })
}

/// Round trips that settle the connection in before any is counted (the
/// first one through hoist also opens the relay's way into the guest).
pub const PINGPONG_WARMUP: usize = 100;

/// Sends 64 bytes and waits for the 64 back, `n` times after the warm-up,
/// on one connection to 127.0.0.1:`port`.
fn round_trips(port: u16, n: usize) -> Result<RoundTrips> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut c = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(IO_TIMEOUT))?;
    let ping = [0x5a; 64];
    let mut pong = [0; 64];
    timed_round_trips(n, &addr, |_| {
        c.write_all(&ping)?;
        c.read_exact(&mut pong).with_context(|| format!("awaiting the echo from {addr}"))?;
        if pong != ping {
            bail!("the echo from {addr} differs from what was sent");
        }
        Ok(())
    })
}

/// Times `n` calls of `one` (round trip number i) after [`PINGPONG_WARMUP`]
/// untimed ones, within [`LOOP_LIMIT`].
pub fn timed_round_trips(
    n: usize,
    addr: &SocketAddr,
    mut one: impl FnMut(usize) -> Result<()>,
) -> Result<RoundTrips> {
    let mut us = Vec::with_capacity(n);
    let mut start = Instant::now();
    for i in 0..PINGPONG_WARMUP + n {
        if i == PINGPONG_WARMUP {
            start = Instant::now();
        }
        let t0 = Instant::now();
        one(i)?;
        if i >= PINGPONG_WARMUP {
            us.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        if start.elapsed() > LOOP_LIMIT {
            bail!("{i} round trips with {addr} took longer than {LOOP_LIMIT:?}");
        }
    }
    Ok(RoundTrips { per_s: n as f64 / start.elapsed().as_secs_f64(), us })
}
