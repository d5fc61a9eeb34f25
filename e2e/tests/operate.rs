//! The operator's side, on the real kernel: forwarding rules (ignore, map,
//! another loopback address, a command name, reload without dropping
//! connections, a bad file refused), the status views of both binaries
//! (JSON against known listeners, the table, `--watch` seeing a forward come
//! and go) and the privileged-port message. Run as root through `cargo
//! xtask test`.

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};

fn port(l: &TcpListener) -> u16 {
    l.local_addr().unwrap().port()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A guest listener opened by a thread named `comm` (the kernel reports the
/// listening thread's command name), answering every connection with
/// `reply` then closing.
fn named_server(lab: &Lab, addr: &str, comm: &str, reply: &'static [u8]) -> u16 {
    let addr: SocketAddr = addr.parse().unwrap();
    let comm = comm.to_string();
    let l = lab.guest(move || {
        std::thread::Builder::new()
            .name(comm)
            .spawn(move || listen_socket(addr, None).unwrap())
            .unwrap()
            .join()
            .unwrap()
    });
    let p = port(&l);
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let _ = c.write_all(reply);
        }
    });
    p
}

/// What a server at `addr` (on the host) answers.
fn answer(addr: &str) -> Vec<u8> {
    let mut c = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    c.set_read_timeout(Some(WAIT)).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    back
}

/// Waits until the host log says `host` (an address:port) was opened.
fn wait_opened(lab: &Lab, host: &str) {
    lab.host_logs().wait(&format!("{host} to be forwarded"), |l| {
        l.iter().any(|v| is_event(v, "forward_opened") && v["host"] == host).then_some(())
    });
}

fn host_cli(lab: &Lab, args: &[&str]) -> std::process::Output {
    Command::new(bin("HOIST_HOST_BIN"))
        .args(args)
        .arg("--admin-socket")
        .arg(lab.host_admin())
        .output()
        .unwrap()
}

fn status_json(lab: &Lab) -> Value {
    let out = host_cli(lab, &["status", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn row(status: &Value, guest_port: u16) -> &Value {
    status["forwards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["guest"].as_str().is_some_and(|g| g.ends_with(&format!(":{guest_port}"))))
        .unwrap_or_else(|| panic!("no forward for guest port {guest_port}: {status:#}"))
}

fn write_config(lab: &Lab, text: &str) -> std::path::PathBuf {
    let path = lab.dir.join("host.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Rules in a file: one listener ignored, one mapped to another host port,
/// one chosen by its command name; two guest services on one port of two
/// loopback addresses appear on the same two addresses of the host.
#[test]
fn rules_ignore_map_and_match_commands_and_loopback_addresses_do_not_collide() {
    let mut lab = Lab::empty();
    lab.start_agent(&[]);
    let (mapped_to, comm_to) = (free_port(), free_port());
    let ignored = named_server(&lab, "127.0.0.1:0", "svc-ignored", b"ignored");
    let mapped = named_server(&lab, "127.0.0.1:0", "svc-mapped", b"mapped");
    let by_comm = named_server(&lab, "127.0.0.1:0", "pgsql-main", b"by comm");
    let config = write_config(
        &lab,
        &format!(
            "[[rule]]\nport = {ignored}\naction = \"ignore\"\n\n\
             [[rule]]\nport = {mapped}\nhost_port = {mapped_to}\n\n\
             [[rule]]\ncomm = \"pgsql-*\"\nport = {by_comm}\nhost_port = {comm_to}\n"
        ),
    );
    lab.start_host(&["--config", config.to_str().unwrap()]);
    let two = free_port();
    let a = named_server(&lab, &format!("127.0.0.2:{two}"), "svc-a", b"service a");
    let b = named_server(&lab, &format!("127.0.0.3:{two}"), "svc-b", b"service b");
    assert_eq!((a, b), (two, two));

    wait_opened(&lab, &format!("127.0.0.1:{mapped_to}"));
    assert_eq!(answer(&format!("127.0.0.1:{mapped_to}")), b"mapped");
    refused(&format!("127.0.0.1:{mapped}"));
    wait_opened(&lab, &format!("127.0.0.1:{comm_to}"));
    assert_eq!(answer(&format!("127.0.0.1:{comm_to}")), b"by comm");
    wait_opened(&lab, &format!("127.0.0.2:{two}"));
    wait_opened(&lab, &format!("127.0.0.3:{two}"));
    assert_eq!(answer(&format!("127.0.0.2:{two}")), b"service a");
    assert_eq!(answer(&format!("127.0.0.3:{two}")), b"service b");
    refused(&format!("127.0.0.1:{ignored}"));
    let s = status_json(&lab);
    let r = row(&s, ignored);
    assert_eq!(r["state"], "ignored", "{r:#}");
    assert!(r["reason"].as_str().unwrap().contains("host.toml:1"), "{r:#}");
    assert_eq!(row(&s, by_comm)["comm"], "pgsql-main");
    assert_eq!(row(&s, by_comm)["host"], format!("127.0.0.1:{comm_to}"));
}

/// `hoist-host reload` (and SIGHUP) put new rules in force without dropping
/// a connection carried meanwhile; a bad file is refused with where and
/// why, and the rules in force stay.
#[test]
fn reload_moves_forwards_keeps_connections_and_refuses_a_bad_file() {
    let mut lab = Lab::empty();
    lab.start_agent(&[]);
    let l = lab.listen("127.0.0.1:0");
    let p = port(&l);
    serve_echo(l);
    let (first, second, third) = (free_port(), free_port(), free_port());
    let rule = |to: u16| format!("[[rule]]\nport = {p}\nhost_port = {to}\n");
    let config = write_config(&lab, &rule(first));
    lab.start_host(&["--config", config.to_str().unwrap()]);
    wait_opened(&lab, &format!("127.0.0.1:{first}"));
    let mut held = TcpStream::connect(("127.0.0.1", first)).unwrap();
    held.set_read_timeout(Some(WAIT)).unwrap();
    held.write_all(b"one").unwrap();
    let mut got = [0u8; 3];
    held.read_exact(&mut got).unwrap();

    std::fs::write(&config, rule(second)).unwrap();
    let out = host_cli(&lab, &["reload"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 rule"), "{out:?}");
    wait_opened(&lab, &format!("127.0.0.1:{second}"));
    echo_ok(&format!("127.0.0.1:{second}"));
    refused(&format!("127.0.0.1:{first}"));
    // The connection carried before the reload lives on.
    held.write_all(b"two").unwrap();
    held.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"two");

    std::fs::write(&config, format!("[[rule]]\nport = {p}\nhost_prot = 1\n")).unwrap();
    let out = host_cli(&lab, &["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3:1: unknown field `host_prot`", config.display())), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    echo_ok(&format!("127.0.0.1:{second}"));

    std::fs::write(&config, rule(third)).unwrap();
    let pid = rustix::process::Pid::from_raw(lab.host.as_ref().unwrap().pid() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    wait_opened(&lab, &format!("127.0.0.1:{third}"));
    echo_ok(&format!("127.0.0.1:{third}"));
    held.write_all(b"end").unwrap();
    held.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"end");
}

/// Both status views against a known set: a served forward with its
/// connection and bytes, an ignored one, a port in conflict; the agent's
/// table, hooks and host; the table form; and nothing running said in one
/// line.
#[test]
fn status_shows_what_is_forwarded_on_both_sides() {
    let lab = Lab::new();
    let served = lab.listen("127.0.0.1:0");
    let sp = port(&served);
    serve_echo(served);
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let tp = port(&taken);
    let conflicting = lab.guest(move || listen_socket(([127, 0, 0, 1], tp).into(), None).unwrap());
    let other = lab.guest(|| listen_socket("10.11.12.13:0".parse().unwrap(), None));
    lab.wait_forwarded("ipv4", sp);
    lab.host_logs().wait("the conflict", |l| {
        l.iter().any(|v| is_event(v, "host_port_conflict") && port_of(v) == Some(tp)).then_some(())
    });
    let mut c = TcpStream::connect(("127.0.0.1", sp)).unwrap();
    c.write_all(b"12345").unwrap();
    let mut back = [0u8; 5];
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.read_exact(&mut back).unwrap();

    let s = status_json(&lab);
    assert_eq!(s["relay"]["connected"], true, "{s:#}");
    assert_eq!(s["relay"]["agent"]["pid"], lab.agent.as_ref().unwrap().pid());
    let r = row(&s, sp);
    assert_eq!(r["state"], "serving");
    assert_eq!(r["host"], format!("127.0.0.1:{sp}"));
    assert_eq!(r["guest"], format!("127.0.0.1:{sp}"));
    assert_eq!(r["family"], "ipv4");
    assert_eq!(r["proto"], "tcp");
    assert_eq!(r["pid"], std::process::id(), "the listener is this test's");
    assert_eq!(r["connections"]["open"], 1);
    assert_eq!(r["bytes"]["to_guest"], 5);
    assert_eq!(r["bytes"]["from_guest"], 5);
    let r = row(&s, tp);
    assert_eq!(r["state"], "conflict");
    assert!(r["reason"].as_str().unwrap().contains("already in use"), "{r:#}");
    if let Ok(other) = &other {
        // Only where the namespace has that address (it usually has not).
        let r = row(&s, port(other));
        assert_eq!(r["state"], "ignored");
    }
    let table = host_cli(&lab, &["status"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(&format!("127.0.0.1:{sp}")) && table.contains("serving"), "{table}");
    assert!(table.lines().any(|l| l.contains("conflict: is already in use")), "{table}");

    let out = Command::new(bin("HOIST_AGENT_BIN"))
        .args(["status", "--json", "--admin-socket"])
        .arg(lab.agent_admin())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let a: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(a["agent"]["hooks"], "tracepoint", "this kernel's hook set: {a:#}");
    assert_eq!(a["hosts"].as_array().unwrap().len(), 1, "{a:#}");
    let listeners: Vec<&str> = a["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["endpoint"].as_str().unwrap())
        .collect();
    assert!(listeners.contains(&format!("127.0.0.1:{sp}").as_str()), "{a:#}");
    assert!(a["data_connections"]["open"].as_u64().unwrap() >= 1, "{a:#}");
    drop((c, conflicting, taken));

    let nobody = lab.dir.join("nobody.sock");
    let out = Command::new(bin("HOIST_HOST_BIN"))
        .args(["status", "--admin-socket", nobody.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no hoist-host is running for this user") && err.contains("start it with"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// `--watch` streams the status, then each change as it happens: a guest
/// listener's forward opening and closing.
#[test]
fn watch_sees_a_forward_come_and_go() {
    let lab = Lab::new();
    let mut watch = Command::new(bin("HOIST_HOST_BIN"))
        .args(["status", "--watch", "--admin-socket"])
        .arg(lab.host_admin())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                return;
            }
        }
    });
    let next = |want: &dyn Fn(&Value) -> bool| loop {
        let v = rx.recv_timeout(WAIT).expect("a watch line");
        if want(&v) {
            return v;
        }
    };
    let first = next(&|_| true);
    assert_eq!(first["event"], "status", "{first:#}");
    let l = lab.listen("127.0.0.1:0");
    let p = port(&l);
    let opened = next(&|v| v["event"] == "forward" && v["guest"] == format!("127.0.0.1:{p}"));
    assert_eq!(opened["state"], "serving");
    drop(l);
    next(&|v| v["event"] == "forward_closed" && v["guest"] == format!("127.0.0.1:{p}"));
    let _ = watch.kill();
    let _ = watch.wait();
}

/// A guest port below 1024 that the host's user cannot bind is reported
/// with both fixes; mapped to a high port by a rule, it is served.
#[test]
fn a_privileged_port_names_both_fixes() {
    let mut lab = Lab::empty();
    lab.start_agent(&["--socket-mode", "666", "--allow-uid", "65534"]);
    let low = 1000 + (std::process::id() % 23) as u16;
    let l = lab.listen(&format!("127.0.0.1:{low}"));
    serve_echo(l);
    let high = free_port();
    let as_nobody = |extra: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--inh-caps=-all"])
            .arg(bin("HOIST_HOST_BIN"))
            .args(["--guest", &format!("unix:{}", lab.sock().display()), "--log-format", "json"])
            .arg("--admin-socket")
            .arg(lab.dir.join(format!("nobody-{}.sock", extra.len())))
            .args(extra);
        Proc::spawn("host", cmd)
    };
    let plain = as_nobody(&[]);
    let line = plain.logs.wait("the privileged port's message", |l| {
        l.iter().find(|v| is_event(v, "host_port_conflict") && port_of(v) == Some(low)).cloned()
    });
    let text = format!("{line}");
    assert!(text.contains("needs privilege (ports below 1024)"), "{text}");
    assert!(text.contains("host_port=") && text.contains("cap_net_bind_service"), "{text}");
    drop(plain);
    let rule = format!("port={low},host_port={high}");
    let mapped = as_nobody(&["--rule", &rule]);
    mapped.logs.wait("the mapped forward", |l| {
        l.iter()
            .any(|v| is_event(v, "forward_opened") && v["host"] == format!("127.0.0.1:{high}"))
            .then_some(())
    });
    echo_ok(&format!("127.0.0.1:{high}"));
}
