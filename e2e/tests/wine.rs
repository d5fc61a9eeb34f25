//! hoist-host.exe under Wine against the real Linux agent. The agent runs in a
//! fresh network namespace (the guest) on a Unix socket; a small TCP <-> Unix
//! relay in this test stands in for the Hyper-V socket (Wine has no
//! AF_HYPERV), and the Windows relay reaches it with `--guest tcp:`. Wine's
//! sockets are this machine's, so the ports hoist-host.exe mirrors answer on
//! this machine's 127.0.0.1 and ::1. Built only with the `wine` feature:
//! `cargo xtask test` turns it on after building the .exe, and passes its path
//! in HOIST_HOST_EXE (and the Wine prefix in the environment). Waits follow
//! log events, each bounded; no sleeps.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

fn port(l: &TcpListener) -> u16 {
    l.local_addr().unwrap().port()
}

/// Relays each TCP connection on 127.0.0.1:<port> to the agent's Unix
/// socket, half-close included; a connection that finds no agent is closed.
fn bridge(sock: PathBuf) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in l.incoming() {
            let Ok(tcp) = tcp else { return };
            let Ok(unix) = UnixStream::connect(&sock) else { continue };
            let (tcp2, unix2) = (tcp.try_clone().unwrap(), unix.try_clone().unwrap());
            std::thread::spawn(move || pipe(tcp, unix2, |u| u.shutdown(Shutdown::Write)));
            std::thread::spawn(move || pipe(unix, tcp2, |t| t.shutdown(Shutdown::Write)));
        }
    });
    addr
}

/// Copies `from` to `to` until end of stream, then shuts `to`'s write side.
fn pipe<R: Read, W: Write>(mut from: R, mut to: W, fin: impl FnOnce(&W) -> std::io::Result<()>) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = fin(&to);
}

/// Asserts that the host port at `addr` refuses connections, soon. Windows
/// cannot shut a listening socket down: a forward's port closes when the
/// runtime drops its task, just after `forward_closed` is logged (under
/// Wine a moment later still), so the probe repeats, bounded.
fn refused_soon(addr: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match TcpStream::connect(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            Err(e) => panic!("{addr}: {e}"),
            Ok(_) => {
                assert!(std::time::Instant::now() < deadline, "{addr} still accepts connections")
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A lab whose host is hoist-host.exe under Wine, through the bridge.
fn wine_lab() -> Lab {
    let mut lab = Lab::empty();
    lab.start_agent(&[]);
    start_wine_host(&mut lab);
    lab
}

fn start_wine_host(lab: &mut Lab) {
    let exe = bin("HOIST_HOST_EXE");
    let to = bridge(lab.sock());
    let mut cmd = Command::new("wine");
    cmd.arg(&exe).args(["--guest", &format!("tcp:{to}"), "--log-format", "json"]);
    let p = Proc::spawn("host.exe", cmd);
    p.logs.wait("hoist-host.exe to connect", |l| {
        l.iter().any(|v| is_event(v, "connected")).then_some(())
    });
    lab.host = Some(p);
}

/// Deterministic, incompressible-ish bytes, so corruption cannot hide.
fn pattern(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha(b: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(b).to_vec()
}

const MB4: usize = 4 << 20;

#[test]
fn guest_ports_answer_on_windows_loopback_intact_and_close_with_the_server() {
    let lab = wine_lab();
    // 4 MiB each way at once; each side half-closes when done sending.
    let l = lab.listen("127.0.0.1:0");
    let p = port(&l);
    let server = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(WAIT * 3)).unwrap();
        let mut w = c.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            w.write_all(&pattern(2, MB4)).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        (sha(&got), got.len(), l)
    });
    lab.wait_forwarded("ipv4", p);
    let mut c = TcpStream::connect(("127.0.0.1", p)).unwrap();
    c.set_read_timeout(Some(WAIT * 3)).unwrap();
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&pattern(1, MB4)).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut down = Vec::new();
    c.read_to_end(&mut down).unwrap();
    writer.join().unwrap();
    let (up_sha, up_n, l) = server.join().unwrap();
    assert_eq!((up_n, down.len()), (MB4, MB4), "byte counts up/down");
    assert_eq!(up_sha, sha(&pattern(1, MB4)), "upload sha256");
    assert_eq!(sha(&down), sha(&pattern(2, MB4)), "download sha256");

    // The client half-closes first; the server answers after its EOF.
    std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        c.write_all(format!("got {} bytes", got.len()).as_bytes()).unwrap();
    });
    let mut c = TcpStream::connect(("127.0.0.1", p)).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(b"request").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "got 7 bytes");

    // IPv6: ::1 in the guest is ::1 on the host, and only there.
    let v6 = lab.guest(|| listen_socket("[::1]:0".parse().unwrap(), Some(true)).unwrap());
    let p6 = port(&v6);
    serve_echo(v6);
    lab.wait_forwarded("ipv6", p6);
    echo_ok(&format!("[::1]:{p6}"));
    assert!(!serving(&lab.host_logs().snapshot()).contains(&ep("ipv4", p6)));

    // The guest server exits: the port closes.
    let l = lab.listen("127.0.0.1:0");
    let p = port(&l);
    lab.wait_forwarded("ipv4", p);
    drop(l);
    lab.wait_unforwarded("ipv4", p);
    refused_soon(&format!("127.0.0.1:{p}"));
}

/// UDP through hoist-host.exe: a guest UDP server answers on Windows'
/// 127.0.0.1, datagrams from 1 byte to the IPv4 maximum cross whole; a
/// server that restarts on its port (closes it, binds it again at once) is
/// forwarded again with no conflict (on Windows the old forward's socket
/// holds the port until the runtime drops its task); the server's close
/// closes the forward (its port refuses).
#[test]
fn guest_udp_servers_answer_on_windows_loopback_and_close_with_the_server() {
    let lab = wine_lab();
    let port = free_udp_port(&lab);
    let addr = format!("127.0.0.1:{port}");
    let server = guest_udp(&lab, &addr);
    wait_udp(&lab, "the UDP forward", |s| s.contains(&ep("ipv4", port)));
    let c = udp_client(&addr);
    // The guest server answers in step with the client: one datagram there
    // and back at a time.
    let echo = |server: &std::net::UdpSocket, d: &[u8]| {
        c.send(d).unwrap();
        let mut buf = vec![0u8; 65_536];
        server.set_read_timeout(Some(WAIT)).unwrap();
        let (n, from) = server
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("the server got no {}-byte datagram: {e}", d.len()));
        server.send_to(&buf[..n], from).unwrap();
        let n = c.recv(&mut buf).unwrap_or_else(|e| panic!("{} bytes: {e}", d.len()));
        assert!(n == d.len() && buf[..n] == d[..], "{} bytes came back as {n}", d.len());
    };
    for (seed, len) in [(1, 1), (2, 1400), (3, 65_507)] {
        echo(&server, &pattern(seed, len));
    }
    drop(server);
    let server = guest_udp(&lab, &addr);
    // Whether the agent passes the restart on or (close and bind in one
    // batch) keeps the forward, a barrier seen after it proves it handled;
    // the new forward may still be waiting a few milliseconds for Wine to
    // free the port its predecessor's socket held.
    let _barrier = lab.barrier();
    wait_udp(&lab, "the restarted server's forward", |s| s.contains(&ep("ipv4", port)));
    let logs = lab.host_logs().snapshot();
    let conflict =
        logs.iter().find(|v| is_event(v, "host_port_conflict") && port_of(v) == Some(port));
    assert!(conflict.is_none(), "the restarted server met its own old forward: {conflict:?}");
    echo(&server, b"again");
    drop(server);
    wait_udp(&lab, "the UDP forward to close", |s| !s.contains(&ep("ipv4", port)));
    // On Windows the port closes when the runtime drops the forward's task,
    // just after the log line (no deafening there): probe until refused,
    // bounded.
    c.set_read_timeout(Some(std::time::Duration::from_millis(100))).unwrap();
    let mut buf = [0u8; 64];
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        c.send(b"anyone?").unwrap();
        match c.recv(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            other => panic!("a closed UDP forward answered: {other:?}"),
        }
        assert!(std::time::Instant::now() < deadline, "the UDP port still takes datagrams");
    }
}

#[test]
fn a_port_held_by_another_program_is_reported_and_left_alone() {
    let lab = wine_lab();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let pt = port(&taken);
    let guest =
        lab.guest(move || listen_socket(SocketAddr::from(([127, 0, 0, 1], pt)), None).unwrap());
    let conflict = lab.host_logs().wait("the conflict report", |l| {
        l.iter().find(|v| is_event(v, "host_port_conflict") && port_of(v) == Some(pt)).cloned()
    });
    assert_eq!(conflict["pid"], std::process::id(), "names the guest pid: {conflict}");
    // Others keep working.
    let other = lab.listen("127.0.0.1:0");
    let po = port(&other);
    serve_echo(other);
    lab.wait_forwarded("ipv4", po);
    echo_ok(&format!("127.0.0.1:{po}"));
    // The host program still owns its port: hoist did not share it.
    assert_owns(&taken);
    drop(guest);
}

#[test]
fn a_restarted_agent_resyncs_and_ctrl_c_stops_the_host() {
    let mut lab = wine_lab();
    let a = lab.listen("127.0.0.1:0");
    let b = lab.listen("127.0.0.1:0");
    lab.wait_forwarded("ipv4", port(&a));
    lab.wait_forwarded("ipv4", port(&b));

    // The agent goes away while the guest changes its ports.
    lab.agent.take().unwrap().stop();
    let pa = port(&a);
    drop(a);
    let c = lab.listen("127.0.0.1:0");
    lab.start_agent(&[]);
    lab.host_logs().wait("hoist-host.exe to reconnect", |l| {
        (l.iter().filter(|v| is_event(v, "connected")).count() == 2).then_some(())
    });
    let want = [ep("ipv4", port(&b)), ep("ipv4", port(&c))].into_iter().collect();
    assert_eq!(serving(&lab.host_logs().snapshot()), want, "resynced to the guest's table");
    refused_soon(&format!("127.0.0.1:{pa}"));

    // Wine turns SIGINT into the console's Ctrl-C.
    let host = lab.host.take().unwrap();
    let pid = rustix::process::Pid::from_raw(host.pid() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    host.logs
        .wait("the shutdown line", |l| l.iter().any(|v| is_event(v, "shutdown")).then_some(()));
    assert_eq!(exit_code(pid), Some(0), "exit status after Ctrl-C");
    refused_soon(&format!("127.0.0.1:{}", port(&b)));
}

/// Waits (bounded) for a child to exit, leaving it for its owner to reap;
/// its exit code.
fn exit_code(pid: rustix::process::Pid) -> Option<i32> {
    use rustix::process::{waitid, WaitId, WaitIdOptions};
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let st = waitid(WaitId::Pid(pid), WaitIdOptions::EXITED | WaitIdOptions::NOWAIT);
        let _ = tx.send(st.ok().flatten().and_then(|s| s.exit_status()));
    });
    rx.recv_timeout(WAIT).expect("the process to exit")
}

/// Fails early with a clear message when the environment is not Wine's.
#[test]
fn the_exe_is_a_windows_binary() {
    let exe = bin("HOIST_HOST_EXE");
    let mut head = [0u8; 2];
    std::fs::File::open(Path::new(&exe)).unwrap().read_exact(&mut head).unwrap();
    assert_eq!(&head, b"MZ", "{} is no Windows executable", exe.display());
}

/// `hoist-host.exe install` writes the logon entry under HKCU of the Wine
/// prefix (the Run key, value hoist-host) with the relay's command line and
/// a log file under %LOCALAPPDATA%\hoist, whose folder it makes; `uninstall`
/// removes the value, and says so when there is none.
#[test]
fn install_writes_the_logon_entry_under_hkcu_and_uninstall_removes_it() {
    let exe = bin("HOIST_HOST_EXE");
    let run_key = r"HKCU\Software\Microsoft\Windows\CurrentVersion\Run";
    let query = || -> Option<String> {
        let out = Command::new("wine")
            .args(["reg", "query", run_key, "/v", "hoist-host"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().find_map(|l| l.split_once("REG_SZ").map(|(_, v)| v.trim().to_string()))
    };
    let hoist = |args: &[&str]| {
        let out = Command::new("wine").arg(&exe).args(args).output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("{said}{}", String::from_utf8_lossy(&out.stderr));
        (out.status.success(), said)
    };
    let _ = hoist(&["uninstall"]);
    assert_eq!(query(), None, "no entry before install");

    let (ok, said) = hoist(&["install", "--", "--liveness-timeout", "20"]);
    assert!(ok, "install failed: {said}");
    let value = query().expect("the Run value after install");
    let (exe_part, rest) = value.split_at(value.find(".exe\" ").expect("a quoted .exe") + 6);
    assert!(exe_part.starts_with('"') && exe_part.ends_with("hoist-host.exe\" "), "{value}");
    assert!(rest.starts_with("run --guest hvsock:wsl:1023 --log-file "), "{value}");
    assert!(rest.ends_with(r"\hoist\hoist-host.log --liveness-timeout 20"), "{value}");
    assert!(said.contains("hoist-host now starts at your logon"), "{said}");
    // The log's folder exists in the prefix.
    let log = rest
        .strip_prefix("run --guest hvsock:wsl:1023 --log-file ")
        .and_then(|r| r.strip_suffix(" --liveness-timeout 20"))
        .unwrap();
    let unix = Command::new("winepath").args(["-u", log]).output().unwrap();
    let unix = PathBuf::from(String::from_utf8_lossy(&unix.stdout).trim());
    assert!(unix.parent().unwrap().is_dir(), "{} was not made", unix.display());

    // Options `run` would refuse are refused at install, and nothing is written.
    let (ok, _) = hoist(&["uninstall"]);
    assert!(ok);
    let (ok, _) = hoist(&["install", "--", "--liveness-timeout", "soon"]);
    assert!(!ok, "install accepted a run option run refuses");
    assert_eq!(query(), None);

    let (ok, said) = hoist(&["install"]);
    assert!(ok, "{said}");
    assert!(query().is_some());
    let (ok, said) = hoist(&["uninstall"]);
    assert!(ok && said.contains("removed the logon entry"), "{said}");
    assert_eq!(query(), None, "the value is gone after uninstall");
    let (ok, said) = hoist(&["uninstall"]);
    assert!(ok && said.contains("no logon entry to remove"), "{said}");
}

/// `--log-file`: the relay logs there (appending), not to stderr.
#[test]
fn the_relay_logs_to_its_log_file() {
    let mut lab = Lab::empty();
    lab.start_agent(&[]);
    let to = bridge(lab.sock());
    let log = lab.dir.join("hoist-host.log");
    std::fs::write(&log, "an earlier line\n").unwrap();
    let windows_log = format!("Z:{}", log.display()).replace('/', "\\");
    let mut child = Command::new("wine")
        .arg(bin("HOIST_HOST_EXE"))
        .args(["run", "--guest", &format!("tcp:{to}"), "--log-format", "json", "--log-file"])
        .arg(&windows_log)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The file is polled (no log stream to follow), bounded by WAIT.
    let deadline = std::time::Instant::now() + WAIT;
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("\"event\":\"connected\"") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no connected line in {}: {text}",
            log.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(text.starts_with("an earlier line\n"), "appended, not truncated: {text}");
    let l = lab.listen("127.0.0.1:0");
    let p = port(&l);
    let deadline = std::time::Instant::now() + WAIT;
    while !std::fs::read_to_string(&log).unwrap_or_default().contains(&format!("\"port\":{p},")) {
        assert!(std::time::Instant::now() < deadline, "no forward of {p} in the log file");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("\"event\""), "log lines on stderr: {err}");
    drop(l);
}
