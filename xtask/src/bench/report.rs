//! Turns the measurements into the markdown table (stdout and BENCHMARKS.md)
//! and two hand-drawn SVG charts; checks that every measurement produced
//! numbers.

use super::floor::{Floor, Numbers};
use super::measure::{Conn, Cpu, Idle, Latency, Storm, Tput};
use super::small::{PingPong, Rates, Requests, Sequential};
use super::udp::{UdpRun, UdpTput};
use crate::util::root;
use anyhow::{bail, Result};
use std::fmt::Write as _;

#[derive(Default)]
pub struct Results {
    pub latency: Option<Latency>,
    pub throughput: Vec<Tput>,
    pub conn: Option<Conn>,
    pub sequential: Option<Sequential>,
    pub requests: Option<Requests>,
    pub pingpong: Option<PingPong>,
    pub storm: Option<Storm>,
    pub idle: Option<Idle>,
    pub udp_latency: Option<Latency>,
    pub udp_pingpong: Option<PingPong>,
    pub udp_throughput: Vec<UdpTput>,
    pub floor: Option<Floor>,
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s
}

/// The q-quantile (nearest rank).
fn q(v: &[f64], q: f64) -> f64 {
    let s = sorted(v);
    if s.is_empty() {
        return f64::NAN;
    }
    s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1]
}

fn median(v: &[f64]) -> f64 {
    q(v, 0.5)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Every value finite and positive, and at least one.
fn positive(v: &[f64]) -> bool {
    !v.is_empty() && v.iter().all(|x| x.is_finite() && *x > 0.0)
}

/// "median (min–max)" of repetitions.
fn spread(v: &[f64], unit: &str) -> String {
    let s = sorted(v);
    if s.len() < 2 {
        return format!("{:.2} {unit}", median(v));
    }
    format!("{:.2} {unit} ({:.2}–{:.2})", median(v), s[0], s[s.len() - 1])
}

/// "median (min–max)" of repetitions, whole numbers.
fn spread0(v: &[f64], unit: &str) -> String {
    let s = sorted(v);
    if s.len() < 2 {
        return format!("{:.0} {unit}", median(v));
    }
    format!("{:.0} {unit} ({:.0}–{:.0})", median(v), s[0], s[s.len() - 1])
}

/// Received rate, loss and what the sender managed, over repetitions.
fn udp_cell(v: &[UdpRun]) -> String {
    let f = |g: fn(&UdpRun) -> f64| v.iter().map(g).collect::<Vec<_>>();
    format!(
        "received {}, loss {:.1}% ({:.1}–{:.1}); sent {:.0} Mbit/s",
        spread0(&f(|r| r.received_mbps), "Mbit/s"),
        median(&f(|r| r.lost_percent)),
        sorted(&f(|r| r.lost_percent)).first().copied().unwrap_or(f64::NAN),
        sorted(&f(|r| r.lost_percent)).last().copied().unwrap_or(f64::NAN),
        median(&f(|r| r.sent_mbps))
    )
}

/// A detection row's cells after its name: the latencies, the 1 s poll
/// baseline, the ratio and the target.
fn detection_cells(v: &[f64], baseline: &str) -> String {
    let (p50, p99, max) = (q(v, 0.5), q(v, 0.99), q(v, 1.0));
    format!(
        "p50 {p50:.0} µs, p99 {p99:.0} µs, max {max:.0} µs | {baseline} | {:.0}x faster than a 1 s poll (p50) | p99 < 1 ms: {} |",
        500_000.0 / p50,
        mark(p99 < 1000.0)
    )
}

fn pingpong_cells(p: &PingPong) -> String {
    let (h, d) = (&p.hoist, &p.direct);
    format!(
        "{:.0} round trips/s, p50 {:.0} µs, p99 {:.0} µs | direct {:.0} round trips/s, p50 {:.0} µs, p99 {:.0} µs | {:.0}% of direct, {:+.0} µs at p50",
        h.per_s,
        q(&h.us, 0.5),
        q(&h.us, 0.99),
        d.per_s,
        q(&d.us, 0.5),
        q(&d.us, 0.99),
        100.0 * h.per_s / d.per_s,
        q(&h.us, 0.5) - q(&d.us, 0.5)
    )
}

fn totals(v: &[Cpu]) -> Vec<f64> {
    v.iter().map(|c| c.total_s()).collect()
}

/// Per-unit CPU of repetitions: the total's spread, then the medians of the
/// agent's and the relay's parts.
fn cpu_cell(v: &[Cpu], unit: &str) -> String {
    let part = |f: fn(&Cpu) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    format!(
        "{}; agent {:.2} {unit}, relay {:.2} {unit}",
        spread(&totals(v), unit),
        part(|c| c.agent_s),
        part(|c| c.relay_s)
    )
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

pub fn markdown(r: &Results) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "| measurement | hoist | baseline | ratio | target |");
    let _ = writeln!(t, "|---|---|---|---|---|");
    if let Some(l) = &r.latency {
        for (what, v) in [
            ("listen() -> host port accepts", &l.listen_us),
            ("close() -> host port refuses", &l.close_us),
        ] {
            let _ = writeln!(
                t,
                "| detection: {what} ({} cycles) | {}",
                v.len(),
                detection_cells(v, "1 s poll (WSL NAT): median 500 ms; 3 s poll (Lima): 1.5 s")
            );
        }
    }
    for x in &r.throughput {
        let dir = if x.reverse { "guest -> host" } else { "host -> guest" };
        let (h, d, s) = (median(&x.hoist), median(&x.direct), median(&x.socat));
        let target = if x.streams == 1 {
            format!(
                ">= 1.5x socat: {}; >= 60% of direct: {}",
                mark(h >= 1.5 * s),
                mark(h >= 0.6 * d)
            )
        } else {
            "reported".to_string()
        };
        let _ = writeln!(
            t,
            "| throughput, {} stream{}, {dir} | {} | direct {}; socat chain {} | {:.2}x socat, {:.0}% of direct | {target} |",
            x.streams,
            if x.streams == 1 { "" } else { "s" },
            spread(&x.hoist, "Gbit/s"),
            spread(&x.direct, "Gbit/s"),
            spread(&x.socat, "Gbit/s"),
            h / s,
            100.0 * h / d
        );
    }
    for x in r.throughput.iter().filter(|x| x.streams == 1) {
        let _ = writeln!(
            t,
            "| CPU per GB moved, 1 stream, {} (during the iperf3 runs) | {} | direct runs: agent + relay {:.2} CPU s/GB (noise floor) | | reported |",
            if x.reverse { "guest -> host" } else { "host -> guest" },
            cpu_cell(&x.hoist_cpu, "CPU s/GB"),
            median(&totals(&x.direct_cpu))
        );
    }
    if let Some(c) = &r.conn {
        let rps = |v: &[super::measure::Wrk]| v.iter().map(|w| w.rps).collect::<Vec<_>>();
        let (h, d) = (median(&rps(&c.hoist)), median(&rps(&c.direct)));
        let p = |v: &[super::measure::Wrk], f: fn(&super::measure::Wrk) -> f64| {
            median(&v.iter().map(f).collect::<Vec<_>>())
        };
        let _ = writeln!(
            t,
            "| new connections per second (wrk, Connection: close) | {} | direct {} | {:.0}% of direct | >= 50%: {} |",
            spread(&rps(&c.hoist), "conn/s"),
            spread(&rps(&c.direct), "conn/s"),
            100.0 * h / d,
            mark(h >= 0.5 * d)
        );
        let _ = writeln!(
            t,
            "| connect + first byte latency | p50 {:.0} µs, p99 {:.0} µs | direct p50 {:.0} µs, p99 {:.0} µs | +{:.0} µs at p50 | reported |",
            p(&c.hoist, |w| w.p50_us),
            p(&c.hoist, |w| w.p99_us),
            p(&c.direct, |w| w.p50_us),
            p(&c.direct, |w| w.p99_us),
            p(&c.hoist, |w| w.p50_us) - p(&c.direct, |w| w.p50_us)
        );
        // µs of CPU per request (per connection: Connection: close).
        let per = |v: &[super::measure::Wrk]| {
            v.iter().map(|w| w.cpu.per(w.requests as f64 / 1e6)).collect::<Vec<_>>()
        };
        let (h, d) = (per(&c.hoist), per(&c.direct));
        let _ = writeln!(
            t,
            "| CPU per forwarded connection (during the wrk runs) | {} | direct runs: agent + relay {:.2} µs (noise floor) | | <= 65 µs (half of ~130 µs): {} |",
            cpu_cell(&h, "µs"),
            median(&totals(&d)),
            mark(median(&totals(&h)) <= 65.0)
        );
    }
    if let Some(s) = &r.sequential {
        let (h, d) = (&s.hoist_us, &s.direct_us);
        let _ = writeln!(
            t,
            "| connect + request + first byte, one client, sequential ({} connections) | p50 {:.0} µs, p99 {:.0} µs, mean {:.0} µs | direct p50 {:.0} µs, p99 {:.0} µs, mean {:.0} µs | {:+.0} µs at p50 / {:+.0} µs at p99 | p50 <= direct + 75 µs: {}; p99 <= direct + 250 µs: {} |",
            h.len(),
            q(h, 0.5),
            q(h, 0.99),
            mean(h),
            q(d, 0.5),
            q(d, 0.99),
            mean(d),
            q(h, 0.5) - q(d, 0.5),
            q(h, 0.99) - q(d, 0.99),
            mark(q(h, 0.5) <= q(d, 0.5) + 75.0),
            mark(q(h, 0.99) <= q(d, 0.99) + 250.0)
        );
    }
    if let Some(x) = &r.requests {
        for (test, h, d) in [("GET", x.hoist.get, x.direct.get), ("SET", x.hoist.set, x.direct.set)]
        {
            let _ = writeln!(
                t,
                "| request/response on persistent connections (redis-benchmark -c 20, {} {test}) | {h:.0} requests/s | direct {d:.0} requests/s | {:.0}% of direct | >= 60% of direct: {}; goal 75%: {} |",
                x.n,
                100.0 * h / d,
                mark(h >= 0.6 * d),
                mark(h >= 0.75 * d)
            );
        }
    }
    if let Some(p) = &r.pingpong {
        let _ = writeln!(
            t,
            "| ping-pong, 64 bytes, one persistent connection ({} round trips) | {} | reported |",
            p.hoist.us.len(),
            pingpong_cells(p)
        );
    }
    if let Some(l) = &r.udp_latency {
        for (what, v) in [
            ("bind() -> host port echoes a probe", &l.listen_us),
            ("close() -> host port refuses a probe", &l.close_us),
        ] {
            let _ = writeln!(
                t,
                "| UDP detection: {what} ({} cycles) | {}",
                v.len(),
                detection_cells(v, "a 1 s poll: median 500 ms")
            );
        }
    }
    if let Some(p) = &r.udp_pingpong {
        let _ = writeln!(
            t,
            "| UDP request/response, 64-byte datagrams, one client, one in flight ({} round trips) | {} | >= 50% of direct: {} |",
            p.hoist.us.len(),
            pingpong_cells(p),
            mark(p.hoist.per_s >= 0.5 * p.direct.per_s)
        );
    }
    for x in &r.udp_throughput {
        let rate = |v: &[UdpRun]| median(&v.iter().map(|r| r.received_mbps).collect::<Vec<_>>());
        let _ = writeln!(
            t,
            "| UDP throughput (iperf3 -u, {}-byte datagrams), offered {} Mbit/s, {} | {} | direct {} | {:.0}% of direct's received rate | reported |",
            super::udp::DATAGRAM,
            x.offered_mbps,
            if x.reverse { "guest -> host" } else { "host -> guest" },
            udp_cell(&x.hoist),
            udp_cell(&x.direct),
            100.0 * rate(&x.hoist) / rate(&x.direct)
        );
    }
    if let Some(s) = &r.storm {
        let _ = writeln!(
            t,
            "| listen storm: {} listen/close cycles | host table equal to the guest's: {}; agent CPU {:.1} µs per event ({} events in {:.2} s) | Lima: 0.7 core at ~90 binds/s | | table equal: {} |",
            s.cycles,
            if s.table_equal { "yes" } else { "NO" },
            s.agent_cpu_s * 1e6 / s.events as f64,
            s.events,
            s.elapsed_s,
            mark(s.table_equal)
        );
        let _ = writeln!(
            t,
            "| agent CPU at {:.0} listen/close per second | {:.2}% of one core | Lima: ~70% of a core at ~90/s | {:.0}x less | < 5%: {} |",
            s.paced_rate,
            100.0 * s.paced_cpu_share,
            0.7 / s.paced_cpu_share.max(1e-6),
            mark(s.paced_cpu_share < 0.05)
        );
    }
    if let Some(i) = &r.idle {
        let _ = writeln!(
            t,
            "| idle: wake-ups over {:.0} s (100 ports, 100 open connections, {} UDP forwards whose flows expired) | agent {} context switches, relay {} | a 1 s poller: {:.0} wake-ups | | only the liveness ping ({} in the window at most; agent <= {}, relay <= {}): {} |",
            i.window_s,
            super::measure::IDLE_UDP_SERVERS,
            i.agent_switches,
            i.host_switches,
            i.window_s,
            i.pings,
            i.agent_budget(),
            i.host_budget(),
            mark(i.within_budget())
        );
        let _ = writeln!(
            t,
            "| idle CPU | agent {:.3} s, relay {:.3} s | | | reported |",
            i.agent_cpu_s, i.host_cpu_s
        );
        let _ = writeln!(
            t,
            "| memory | agent RSS {} KiB, relay RSS {} KiB; {:.1} KiB per open connection (both) | | | < 64 KiB per connection: {} |",
            i.agent_rss_kib,
            i.host_rss_kib,
            i.per_conn_bytes / 1024.0,
            mark(i.per_conn_bytes < 64.0 * 1024.0)
        );
    }
    if let Some(f) = &r.floor {
        floor_rows(&mut t, f);
    }
    t
}

/// hoist against the bare io_uring chain (the least a relay of its shape
/// costs here) and direct, from the same interleaved runs.
fn floor_rows(t: &mut String, f: &Floor) {
    let (h, b, d) = (&f.hoist, &f.bare, &f.direct);
    let conn = |p: &Numbers| median(&p.conn_per_s);
    let _ = writeln!(
        t,
        "| floor: new connections per second (wrk, Connection: close) | {} | bare io_uring chain {}; direct {} | hoist {:.0}%, bare chain {:.0}% of direct | reported |",
        spread0(&h.conn_per_s, "conn/s"),
        spread0(&b.conn_per_s, "conn/s"),
        spread0(&d.conn_per_s, "conn/s"),
        100.0 * conn(h) / conn(d),
        100.0 * conn(b) / conn(d)
    );
    let _ = writeln!(
        t,
        "| floor: relay CPU per connection (both hops) | {} | bare io_uring chain {} | {:.2}x the bare chain's | reported |",
        spread(&h.cpu_per_conn_us, "µs"),
        spread(&b.cpu_per_conn_us, "µs"),
        median(&h.cpu_per_conn_us) / median(&b.cpu_per_conn_us)
    );
    for (test, rate) in
        [("GET", (|r: &Rates| r.get) as fn(&Rates) -> f64), ("SET", |r: &Rates| r.set)]
    {
        let v = |p: &Numbers| p.requests.iter().map(rate).collect::<Vec<_>>();
        let _ = writeln!(
            t,
            "| floor: redis-benchmark -c 20 {test} | {} | bare io_uring chain {}; direct {} | hoist {:.0}%, bare chain {:.0}% of direct | reported |",
            spread0(&v(h), "requests/s"),
            spread0(&v(b), "requests/s"),
            spread0(&v(d), "requests/s"),
            100.0 * median(&v(h)) / median(&v(d)),
            100.0 * median(&v(b)) / median(&v(d))
        );
    }
    let _ = writeln!(
        t,
        "| floor: relay CPU per request (both hops, redis-benchmark) | {} | bare io_uring chain {} | {:.2}x the bare chain's | reported |",
        spread(&h.cpu_per_request_us, "µs"),
        spread(&b.cpu_per_request_us, "µs"),
        median(&h.cpu_per_request_us) / median(&b.cpu_per_request_us)
    );
    let over = |p: &Numbers, at: f64| q(&p.sequential_us, at) - q(&d.sequential_us, at);
    let _ = writeln!(
        t,
        "| floor: connect + request + first byte, sequential ({} connections) | p50 {:.0} µs, p99 {:.0} µs | bare io_uring chain p50 {:.0} µs, p99 {:.0} µs; direct p50 {:.0} µs, p99 {:.0} µs | hoist {:+.0} / {:+.0} µs, bare chain {:+.0} / {:+.0} µs over direct (p50 / p99) | reported |",
        h.sequential_us.len(),
        q(&h.sequential_us, 0.5),
        q(&h.sequential_us, 0.99),
        q(&b.sequential_us, 0.5),
        q(&b.sequential_us, 0.99),
        q(&d.sequential_us, 0.5),
        q(&d.sequential_us, 0.99),
        over(h, 0.5),
        over(h, 0.99),
        over(b, 0.5),
        over(b, 0.99)
    );
}

impl Results {
    /// Every measurement ran and produced finite numbers.
    pub fn check_complete(&self) -> Result<()> {
        let Some(l) = &self.latency else { bail!("no detection latency") };
        if l.listen_us.is_empty()
            || l.close_us.is_empty()
            || l.listen_us.iter().chain(&l.close_us).any(|v| !v.is_finite() || *v <= 0.0)
        {
            bail!("detection latency produced no numbers");
        }
        if self.throughput.len() != 4
            || self.throughput.iter().any(|x| {
                x.hoist.iter().chain(&x.direct).chain(&x.socat).any(|v| !v.is_finite() || *v <= 0.0)
                    || x.hoist.is_empty()
                    || x.hoist_cpu
                        .iter()
                        .chain(&x.direct_cpu)
                        .any(|c| !c.total_s().is_finite() || c.total_s() < 0.0)
            })
        {
            bail!("throughput produced no numbers");
        }
        let Some(c) = &self.conn else { bail!("no connection cost") };
        if c.hoist.iter().chain(&c.direct).any(|w| {
            w.rps <= 0.0 || w.p50_us <= 0.0 || w.requests == 0 || !w.cpu.total_s().is_finite()
        }) || c.hoist.is_empty()
        {
            bail!("connection cost produced no numbers");
        }
        let Some(s) = &self.sequential else { bail!("no sequential connection latency") };
        if !positive(&s.direct_us) || !positive(&s.hoist_us) {
            bail!("sequential connection latency produced no numbers");
        }
        let Some(r) = &self.requests else { bail!("no request/response rates") };
        if !positive(&[r.direct.get, r.direct.set, r.hoist.get, r.hoist.set]) {
            bail!("request/response produced no numbers");
        }
        let Some(p) = &self.pingpong else { bail!("no ping-pong") };
        if !positive(&[p.direct.per_s, p.hoist.per_s])
            || !positive(&p.direct.us)
            || !positive(&p.hoist.us)
        {
            bail!("ping-pong produced no numbers");
        }
        let Some(s) = &self.storm else { bail!("no listen storm") };
        if !s.table_equal {
            bail!("after the listen storm the host table differs from the guest's");
        }
        if s.events == 0 || !s.agent_cpu_s.is_finite() || s.paced_rate <= 0.0 {
            bail!("listen storm produced no numbers");
        }
        let Some(l) = &self.udp_latency else { bail!("no UDP detection latency") };
        if !positive(&l.listen_us) || !positive(&l.close_us) {
            bail!("UDP detection latency produced no numbers");
        }
        let Some(p) = &self.udp_pingpong else { bail!("no UDP request/response") };
        if !positive(&[p.direct.per_s, p.hoist.per_s])
            || !positive(&p.direct.us)
            || !positive(&p.hoist.us)
        {
            bail!("UDP request/response produced no numbers");
        }
        if self.udp_throughput.len() != 2 * super::udp::RATES_MBPS.len()
            || self.udp_throughput.iter().any(|x| {
                x.hoist.is_empty()
                    || x.direct.is_empty()
                    || x.hoist.iter().chain(&x.direct).any(|r| {
                        !positive(&[r.sent_mbps, r.received_mbps])
                            || !(0.0..=100.0).contains(&r.lost_percent)
                    })
            })
        {
            bail!("UDP throughput produced no numbers");
        }
        let Some(f) = &self.floor else { bail!("no two-hop floor") };
        for (name, p, relayed) in
            [("direct", &f.direct, false), ("hoist", &f.hoist, true), ("bare chain", &f.bare, true)]
        {
            let rates: Vec<f64> = p.requests.iter().flat_map(|r| [r.get, r.set]).collect();
            if !positive(&p.conn_per_s)
                || !positive(&rates)
                || !positive(&p.sequential_us)
                || (relayed && !(positive(&p.cpu_per_conn_us) && positive(&p.cpu_per_request_us)))
            {
                bail!("the two-hop floor produced no numbers for {name}");
            }
        }
        let Some(i) = &self.idle else { bail!("no idle cost") };
        if i.agent_rss_kib == 0 || i.host_rss_kib == 0 || !i.per_conn_bytes.is_finite() {
            bail!("idle cost produced no numbers");
        }
        if !i.within_budget() {
            bail!(
                "idle: the agent made {} context switches and the relay {} in {:.0} s: more than the liveness ping allows ({} pings: agent <= {}, relay <= {})",
                i.agent_switches,
                i.host_switches,
                i.window_s,
                i.pings,
                i.agent_budget(),
                i.host_budget()
            );
        }
        Ok(())
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

pub fn write(r: &Results, table: &str) -> Result<()> {
    let dir = root().join("docs/bench");
    std::fs::create_dir_all(&dir)?;
    if let Some(l) = &r.latency {
        std::fs::write(dir.join("latency.svg"), latency_svg(l))?;
    }
    std::fs::write(dir.join("throughput.svg"), throughput_svg(&r.throughput))?;
    let date =
        crate::util::output(std::process::Command::new("date").arg("-u").arg("+%Y-%m-%d"), "date")?;
    let doc = format!(
        "# Benchmarks\n\nMeasured by `cargo xtask bench --write` on {} ({}), guest = a network namespace, \
         agent inside, relay outside, Unix-socket transport. Every baseline is measured in the same run; \
         figures with repetitions show the median and (min–max).\n\n{table}\n\
         ![detection latency](docs/bench/latency.svg)\n\n![throughput](docs/bench/throughput.svg)\n",
        date.trim(),
        machine()
    );
    std::fs::write(root().join("BENCHMARKS.md"), doc)?;
    Ok(())
}

/// Cumulative distributions of both detection latencies.
fn latency_svg(l: &Latency) -> String {
    let (w, h, pad) = (640.0, 360.0, 50.0);
    let max = q(&l.listen_us, 0.999).max(q(&l.close_us, 0.999)).max(1.0);
    let mut s = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n");
    let _ = writeln!(s, "<text x='{pad}' y='20'>hoist detection latency (CDF, µs; x axis to the 99.9th percentile)</text>");
    let _ = writeln!(
        s,
        "<line x1='{pad}' y1='{}' x2='{}' y2='{}' stroke='black'/>",
        h - pad,
        w - 20.0,
        h - pad
    );
    let _ = writeln!(s, "<line x1='{pad}' y1='30' x2='{pad}' y2='{}' stroke='black'/>", h - pad);
    for i in 0..=4 {
        let x = pad + (w - 20.0 - pad) * i as f64 / 4.0;
        let _ = writeln!(
            s,
            "<text x='{x}' y='{}' text-anchor='middle'>{:.0}</text>",
            h - pad + 16.0,
            max * i as f64 / 4.0
        );
        let y = h - pad - (h - pad - 30.0) * i as f64 / 4.0;
        let _ = writeln!(s, "<text x='{}' y='{y}' text-anchor='end'>{}%</text>", pad - 4.0, 25 * i);
    }
    for (v, color, name, ly) in [
        (&l.listen_us, "#1f77b4", "listen -> accepts", 40.0),
        (&l.close_us, "#d62728", "close -> refuses", 56.0),
    ] {
        let sv = sorted(v);
        let pts: Vec<String> = sv
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let px = pad + (w - 20.0 - pad) * (x / max).min(1.0);
                let py = h - pad - (h - pad - 30.0) * (i + 1) as f64 / sv.len() as f64;
                format!("{px:.1},{py:.1}")
            })
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>",
            pts.join(" ")
        );
        let _ = writeln!(
            s,
            "<text x='{}' y='{ly}' fill='{color}'>{name}: p50 {:.0} µs, p99 {:.0} µs</text>",
            w - 300.0,
            q(v, 0.5),
            q(v, 0.99)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Grouped bars: direct, hoist and the socat chain for each case.
fn throughput_svg(t: &[Tput]) -> String {
    let (w, h, pad) = (640.0, 360.0, 50.0);
    let max = t
        .iter()
        .flat_map(|x| [median(&x.direct), median(&x.hoist), median(&x.socat)])
        .fold(1.0, f64::max);
    let mut s = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n");
    let _ = writeln!(s, "<text x='{pad}' y='20'>throughput, Gbit/s (median of repetitions)</text>");
    let _ = writeln!(
        s,
        "<line x1='{pad}' y1='{}' x2='{}' y2='{}' stroke='black'/>",
        h - pad,
        w - 20.0,
        h - pad
    );
    let group = (w - 20.0 - pad) / t.len().max(1) as f64;
    for (gi, x) in t.iter().enumerate() {
        let gx = pad + group * gi as f64;
        for (bi, (v, color)) in [
            (median(&x.direct), "#7f7f7f"),
            (median(&x.hoist), "#1f77b4"),
            (median(&x.socat), "#ff7f0e"),
        ]
        .iter()
        .enumerate()
        {
            let bh = (h - pad - 40.0) * v / max;
            let bx = gx + 10.0 + bi as f64 * (group - 20.0) / 3.0;
            let _ = writeln!(
                s,
                "<rect x='{bx:.1}' y='{:.1}' width='{:.1}' height='{bh:.1}' fill='{color}'/>",
                h - pad - bh,
                (group - 20.0) / 3.0 - 4.0
            );
            let _ = writeln!(
                s,
                "<text x='{:.1}' y='{:.1}' font-size='10' text-anchor='middle'>{v:.1}</text>",
                bx + (group - 20.0) / 6.0,
                h - pad - bh - 3.0
            );
        }
        let label = format!(
            "{} stream{}, {}",
            x.streams,
            if x.streams == 1 { "" } else { "s" },
            if x.reverse { "guest->host" } else { "host->guest" }
        );
        let _ = writeln!(
            s,
            "<text x='{:.1}' y='{}' text-anchor='middle' font-size='11'>{label}</text>",
            gx + group / 2.0,
            h - pad + 16.0
        );
    }
    for (i, (name, color)) in [
        ("direct loopback in the guest", "#7f7f7f"),
        ("hoist", "#1f77b4"),
        ("socat chain over a Unix socket", "#ff7f0e"),
    ]
    .iter()
    .enumerate()
    {
        let y = 36.0 + 14.0 * i as f64;
        let _ = writeln!(s, "<rect x='{}' y='{}' width='10' height='10' fill='{color}'/><text x='{}' y='{}'>{name}</text>", w - 260.0, y - 9.0, w - 245.0, y);
    }
    s.push_str("</svg>\n");
    s
}
