//! Connections and small messages, as one interactive client feels them:
//! each measured through hoist and, as the baseline, with the same client
//! code run directly inside the guest against the same server.

use super::servers::{Server, IO_TIMEOUT, LOOP_LIMIT};
use super::Rig;
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
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
fn first_bytes(port: u16, warmup: usize, n: usize) -> Result<Vec<f64>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let mut us = Vec::with_capacity(n);
    for i in 0..warmup + n {
        if start.elapsed() > LOOP_LIMIT {
            bail!("{i} connections to {addr} took longer than {LOOP_LIMIT:?}");
        }
        let t0 = Instant::now();
        let mut c = TcpStream::connect_timeout(&addr, IO_TIMEOUT).with_context(|| format!("connecting to {addr}"))?;
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
