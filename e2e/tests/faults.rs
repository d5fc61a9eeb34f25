//! The fault matrix: with connections carrying data, the agent, the host or
//! both are killed (SIGKILL) at moments a seeded generator picks, twenty
//! rounds over. After every round the host must hold exactly the guest's
//! table, new connections must work, nothing may have panicked, and the
//! processes that survived must not have grown in descriptors or memory.
//! Run as root through `cargo xtask test` (one test thread).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A fixed xorshift sequence: the same "random" moments on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `n` clients, each echoing small messages through the host until told to
/// stop or until its connection fails (as it will when a side is killed).
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, n: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|i| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else { return };
                    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                    let msg = format!("client {i} ").repeat(20);
                    let mut back = vec![0u8; msg.len()];
                    while !stop.load(Ordering::Relaxed) {
                        if c.write_all(msg.as_bytes()).is_err() || c.read_exact(&mut back).is_err()
                        {
                            return;
                        }
                        assert_eq!(back, msg.as_bytes(), "a byte changed on its way through hoist");
                    }
                })
            })
            .collect();
        Load { stop, threads }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a load thread panicked (corrupted data)");
        }
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn no_panics(logs: &Logs, who: &str) {
    let lines = logs.snapshot();
    let panicked = lines.iter().filter(|v| v.to_string().contains("panicked")).count();
    assert_eq!(panicked, 0, "{who} panicked: {lines:?}");
}

#[derive(Clone, Copy, Debug)]
enum Victim {
    Agent,
    Host,
    Both,
}

#[test]
fn killing_the_agent_the_host_or_both_never_leaves_them_out_of_step() {
    let mut lab = Lab::new();
    let echo = lab.listen("127.0.0.1:0");
    let pe = echo.local_addr().unwrap().port();
    serve_echo(echo);
    let kept: Vec<TcpListener> = (0..3).map(|_| lab.listen("127.0.0.1:0")).collect();
    let want: std::collections::BTreeSet<Ep> = std::iter::once(pe)
        .chain(kept.iter().map(|l| l.local_addr().unwrap().port()))
        .map(|p| ep("ipv4", p))
        .collect();
    lab.wait_serving("the first table", |s| *s == want);
    let mut rng = Rng(0x5eed_f417);
    // Per process, the descriptors and memory it settled at first: a
    // survivor must come back to about that after every round.
    let mut agent_base: Option<(u32, usize, u64)> = None;
    let mut host_base: Option<(u32, usize, u64)> = None;
    for round in 0..20 {
        let load = Load::start(pe, 200);
        // A moment within the first 300 ms of the load.
        std::thread::sleep(Duration::from_millis(rng.next() % 300));
        let victim = match rng.next() % 3 {
            0 => Victim::Agent,
            1 => Victim::Host,
            _ => Victim::Both,
        };
        let connected_before =
            lab.host_logs().snapshot().iter().filter(|v| is_event(v, "connected")).count();
        if matches!(victim, Victim::Agent | Victim::Both) {
            no_panics(lab.agent_logs(), "the agent");
            lab.agent.take().unwrap().kill();
        }
        if matches!(victim, Victim::Host | Victim::Both) {
            no_panics(lab.host_logs(), "the host");
            lab.host.take().unwrap().kill();
        }
        load.stop();
        if lab.agent.is_none() {
            lab.start_agent(&[]);
        }
        match lab.host {
            None => lab.start_host(&[]),
            // A surviving host reconnects to the new agent by itself.
            Some(_) => {
                lab.host_logs().wait("the host to reconnect", |l| {
                    (l.iter().filter(|v| is_event(v, "connected")).count() > connected_before)
                        .then_some(())
                });
            }
        }
        let got = lab
            .wait_serving(&format!("round {round} ({victim:?}): the guest's table"), |s| {
                *s == want
            });
        assert_eq!(got, want);
        echo_ok(&format!("127.0.0.1:{pe}"));
        // Settled: every connection of the round is closed on both sides.
        let agent = lab.agent.as_ref().unwrap().pid();
        let host = lab.host.as_ref().unwrap().pid();
        for (base, pid, who) in [(&mut agent_base, agent, "agent"), (&mut host_base, host, "host")]
        {
            let now = (pid, settled_fds(pid), rss_kib(pid));
            match base {
                Some((p, fds, rss)) if *p == pid => {
                    assert!(
                        now.1 <= *fds + 4,
                        "round {round}: the {who}'s descriptors grew from {fds} to {}",
                        now.1
                    );
                    assert!(
                        now.2 <= *rss + 8 * 1024,
                        "round {round}: the {who}'s memory grew from {rss} KiB to {} KiB",
                        now.2
                    );
                }
                _ => *base = Some(now),
            }
        }
    }
    no_panics(lab.agent_logs(), "the agent");
    no_panics(lab.host_logs(), "the host");
}

/// The descriptors of a process once the connections it relayed have closed
/// (their last frames may still be in flight for a moment).
fn settled_fds(pid: u32) -> usize {
    let deadline = std::time::Instant::now() + WAIT;
    let mut last = open_fds(pid);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = open_fds(pid);
        if now == last || std::time::Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}
