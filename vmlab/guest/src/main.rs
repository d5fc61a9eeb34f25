//! Runs inside the VM lab's guest (static, no dependencies but libc).
//! `serve <vsock port>`: the lab's command channel. Each vsock connection
//! carries one command line and gets one answer, then closes:
//!   `run <shell>`          -> `<exit code>\n<stdout and stderr>`
//!   `spawn <name> <shell>` -> `<pid>`; output goes to /tmp/<name>.log and,
//!                             each line prefixed with `<name>| `, to the
//!                             console (which outlives a hung vsock link)
//!   `kill <name>` / `term <name>` -> SIGKILL / SIGTERM, then reaps it
//! `echo <port>`: a TCP echo server on 0.0.0.0 that half-closes after EOF.
//! `hold <port>`: a TCP listener on 127.0.0.1 that accepts nothing, held
//! until the process is killed.
//! `sctp <port>` / `dccp <port>`: an SCTP or DCCP listener on 127.0.0.1
//! (prints `listening`), held until killed: no TCP forward may come of it.
//! `abort <port>`: a TCP server on 0.0.0.0 that reads 4 bytes, answers half
//! a response and resets the connection.
//! `udpecho <port>`: a UDP echo server bound to 0.0.0.0 and the port it
//! names (a server by hoist's rule); prints `bound`, echoes each datagram to
//! its sender until killed.
//! `udpclients <port>`: two UDP clients of 127.0.0.1:`port`, bound by the
//! kernel as clients are: one at its first sendto(), one at connect() (which
//! then sends); prints `clients <sendto port> <connected port>` and holds
//! both until killed: no UDP forward may come of them.
//! `churn <first port> <count> <interval ms>`: opens and closes listeners on
//! 127.0.0.1, ports first..first+count, one change per interval (logged as
//! `open P` / `close P`), until /tmp/churn.stop exists; then prints
//! `settled P,P,...` (the ports left open) and holds them until killed.

mod sys;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port =
        |i: usize| -> u32 { args.get(i).and_then(|p| p.parse().ok()).unwrap_or_else(|| usage()) };
    match args.get(1).map(String::as_str) {
        Some("serve") => serve(port(2)),
        Some("echo") => echo(port(2) as u16),
        Some("churn") => churn(port(2) as u16, port(3) as u16, port(4) as u64),
        Some("hold") => {
            let _l = TcpListener::bind(("127.0.0.1", port(2) as u16)).expect("bind");
            loop {
                std::thread::park();
            }
        }
        Some(proto @ ("sctp" | "dccp")) => {
            let _l = sys::listen_other(proto, port(2) as u16)
                .unwrap_or_else(|e| panic!("{proto} listen: {e}"));
            println!("listening");
            let _ = std::io::stdout().flush();
            loop {
                std::thread::park();
            }
        }
        Some("abort") => abort(port(2) as u16),
        Some("udpecho") => udp_echo(port(2) as u16),
        Some("udpclients") => udp_clients(port(2) as u16),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: hoist-vmlab-guest serve <vsock-port> | echo <port> | hold <port> | sctp <port> | dccp <port> | abort <port> | udpecho <port> | udpclients <port> | churn <first port> <count> <interval ms>");
    std::process::exit(2)
}

fn abort(port: u16) {
    let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
    for c in l.incoming() {
        let Ok(mut c) = c else { continue };
        let mut b = [0u8; 4];
        if std::io::Read::read_exact(&mut c, &mut b).is_ok() {
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nhalf a resp");
        }
        sys::reset(c);
    }
}

fn echo(port: u16) {
    let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
    for c in l.incoming() {
        let Ok(mut c) = c else { continue };
        std::thread::spawn(move || {
            let mut r = c.try_clone().unwrap();
            let _ = std::io::copy(&mut r, &mut c);
            let _ = c.shutdown(Shutdown::Write);
        });
    }
}

fn udp_echo(port: u16) {
    let s = UdpSocket::bind(("0.0.0.0", port)).expect("bind");
    println!("bound");
    let _ = std::io::stdout().flush();
    let mut buf = vec![0u8; 65536];
    loop {
        // An unconnected socket hears of no client's ICMP error: a failure
        // concerns one datagram, and the server carries on.
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    }
}

fn udp_clients(port: u16) {
    let server = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let by_sendto = sys::udp_unbound().expect("socket");
    by_sendto.send_to(b"sendto", server).expect("sendto");
    let connected = sys::udp_unbound().expect("socket");
    connected.connect(server).expect("connect");
    connected.send(b"connected").expect("send");
    let port_of = |s: &UdpSocket| s.local_addr().expect("local address").port();
    println!("clients {} {}", port_of(&by_sendto), port_of(&connected));
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}

fn churn(first: u16, count: u16, interval_ms: u64) {
    let mut open: Vec<Option<TcpListener>> = (0..count).map(|_| None).collect();
    // xorshift: a fixed, dependency-free sequence of ports to toggle.
    let mut x: u32 = 0x9e37_79b9;
    let stop = std::path::Path::new("/tmp/churn.stop");
    let mut out = std::io::stdout();
    while !stop.exists() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let i = (x % count as u32) as usize;
        let port = first + i as u16;
        if open[i].take().is_some() {
            let _ = writeln!(out, "close {port}");
        } else {
            open[i] = Some(TcpListener::bind(("127.0.0.1", port)).expect("bind"));
            let _ = writeln!(out, "open {port}");
        }
        std::thread::sleep(std::time::Duration::from_millis(interval_ms));
    }
    let left: Vec<String> = (0..count)
        .filter(|&i| open[i as usize].is_some())
        .map(|i| (first + i).to_string())
        .collect();
    let _ = writeln!(out, "settled {}", left.join(","));
    let _ = out.flush();
    loop {
        std::thread::park();
    }
}

fn serve(port: u32) {
    let listener =
        sys::vsock_listen(port).unwrap_or_else(|e| panic!("vsock listen on port {port}: {e}"));
    eprintln!("vmlab-guest: serving commands on vsock port {port}");
    let mut children: HashMap<String, Child> = HashMap::new();
    loop {
        let Ok(mut conn) = sys::accept(&listener) else { continue };
        let mut line = String::new();
        if BufReader::new(&mut conn).read_line(&mut line).is_err() {
            continue;
        }
        let answer = handle(line.trim_end(), &mut children);
        let _ = conn.write_all(answer.as_bytes());
    }
}

/// A pipe whose lines go to /tmp/<name>.log and to the console; returns its
/// write end twice (stdout, stderr).
fn tee(name: &str) -> std::io::Result<(Stdio, Stdio)> {
    let mut log = File::create(format!("/tmp/{name}.log"))?;
    let mut console = std::fs::OpenOptions::new().write(true).open("/dev/console")?;
    let (r, w) = std::io::pipe()?;
    let w2 = w.try_clone()?;
    let prefix = format!("{name}| ");
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
            let _ = writeln!(console, "{prefix}{line}");
        }
    });
    Ok((Stdio::from(w), Stdio::from(w2)))
}

fn handle(line: &str, children: &mut HashMap<String, Child>) -> String {
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    match verb {
        "run" => match Command::new("/bin/sh").args(["-c", &format!("{rest} 2>&1")]).output() {
            Ok(o) => {
                format!("{}\n{}", o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout))
            }
            Err(e) => format!("-1\n{e}"),
        },
        "spawn" => {
            let (name, cmd) = rest.split_once(' ').unwrap_or((rest, ""));
            let (out, err) = match tee(name) {
                Ok(pair) => pair,
                Err(e) => return format!("error {e}"),
            };
            match Command::new("/bin/sh")
                .args(["-c", &format!("exec {cmd}")])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
            {
                Ok(child) => {
                    let pid = child.id();
                    if let Some(mut old) = children.insert(name.to_string(), child) {
                        let _ = old.kill();
                        let _ = old.wait();
                    }
                    pid.to_string()
                }
                Err(e) => format!("error {e}"),
            }
        }
        "kill" | "term" => match children.remove(rest) {
            Some(mut child) => {
                sys::signal(&child, if verb == "kill" { libc::SIGKILL } else { libc::SIGTERM });
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                format!("ok {status}")
            }
            None => format!("error no process named {rest}"),
        },
        _ => format!("error unknown command {verb:?}"),
    }
}
