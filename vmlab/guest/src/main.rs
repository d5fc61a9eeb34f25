//! Runs inside the VM lab's guest (static, no dependencies but libc).
//! `serve <vsock port>`: the lab's command channel. Each vsock connection
//! carries one command line and gets one answer, then closes:
//!   `run <shell>`          -> `<exit code>\n<stdout and stderr>`
//!   `spawn <name> <shell>` -> `<pid>`; output goes to /tmp/<name>.log
//!   `kill <name>` / `term <name>` -> SIGKILL / SIGTERM, then reaps it
//! `echo <port>`: a TCP echo server on 0.0.0.0 that half-closes after EOF.
//! `hold <port>`: a TCP listener on 127.0.0.1 that accepts nothing, held
//! until the process is killed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener};
use std::os::fd::FromRawFd;
use std::process::{Child, Command, Stdio};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port = |i: usize| -> u32 { args.get(i).and_then(|p| p.parse().ok()).unwrap_or_else(|| usage()) };
    match args.get(1).map(String::as_str) {
        Some("serve") => serve(port(2)),
        Some("echo") => echo(port(2) as u16),
        Some("hold") => {
            let _l = TcpListener::bind(("127.0.0.1", port(2) as u16)).expect("bind");
            loop {
                std::thread::park();
            }
        }
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: hoist-vmlab-guest serve <vsock-port> | echo <port> | hold <port>");
    std::process::exit(2)
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

fn serve(port: u32) {
    // SAFETY: plain socket calls on a fresh descriptor we own.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "vsock socket: {}", std::io::Error::last_os_error());
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as u16;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as u32;
    // SAFETY: addr is a valid sockaddr_vm of that length.
    unsafe {
        assert!(libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len) == 0, "vsock bind: {}", std::io::Error::last_os_error());
        assert!(libc::listen(fd, 16) == 0, "vsock listen");
    }
    eprintln!("vmlab-guest: serving commands on vsock port {port}");
    let mut children: HashMap<String, Child> = HashMap::new();
    loop {
        // SAFETY: accept on our listening descriptor.
        let c = unsafe { libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
        if c < 0 {
            continue;
        }
        // SAFETY: c is a fresh connected descriptor we now own.
        let mut conn = unsafe { File::from_raw_fd(c) };
        let mut line = String::new();
        if BufReader::new(&mut conn).read_line(&mut line).is_err() {
            continue;
        }
        let answer = handle(line.trim_end(), &mut children);
        let _ = conn.write_all(answer.as_bytes());
    }
}

fn handle(line: &str, children: &mut HashMap<String, Child>) -> String {
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    match verb {
        "run" => match Command::new("/bin/sh").args(["-c", &format!("{rest} 2>&1")]).output() {
            Ok(o) => format!("{}\n{}", o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout)),
            Err(e) => format!("-1\n{e}"),
        },
        "spawn" => {
            let (name, cmd) = rest.split_once(' ').unwrap_or((rest, ""));
            let log = match File::create(format!("/tmp/{name}.log")) {
                Ok(f) => f,
                Err(e) => return format!("error {e}"),
            };
            let err = log.try_clone().unwrap();
            match Command::new("/bin/sh").args(["-c", &format!("exec {cmd}")]).stdin(Stdio::null()).stdout(log).stderr(err).spawn() {
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
                let sig = if verb == "kill" { libc::SIGKILL } else { libc::SIGTERM };
                // SAFETY: signalling our own child.
                unsafe { libc::kill(child.id() as i32, sig) };
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                format!("ok {status}")
            }
            None => format!("error no process named {rest}"),
        },
        _ => format!("error unknown command {verb:?}"),
    }
}
