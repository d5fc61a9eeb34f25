//! Real kernel, real eBPF: the agent in a fresh network namespace, the host
//! relay outside, the test's own servers in the guest. Run as root through
//! `cargo xtask test` (one test thread).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};

fn port(l: &TcpListener) -> u16 {
    l.local_addr().unwrap().port()
}

#[test]
fn loopback_wildcard_v6_and_dual_stack_listeners_reach_the_host() {
    let lab = Lab::new();
    let v4 = lab.listen("127.0.0.1:0");
    let any4 = lab.listen("0.0.0.0:0");
    let v6 = lab.guest(|| listen_socket("[::1]:0".parse().unwrap(), Some(true)).unwrap());
    let dual = lab.guest(|| listen_socket("[::]:0".parse().unwrap(), Some(false)).unwrap());
    let v6only_any = lab.guest(|| listen_socket("[::]:0".parse().unwrap(), Some(true)).unwrap());
    let (p4, pa, p6, pd, p6a) = (port(&v4), port(&any4), port(&v6), port(&dual), port(&v6only_any));
    for l in [v4, any4, v6, dual, v6only_any] {
        serve_echo(l);
    }
    lab.wait_forwarded("ipv4", p4);
    echo_ok(&format!("127.0.0.1:{p4}"));
    lab.wait_forwarded("ipv4", pa);
    echo_ok(&format!("127.0.0.1:{pa}"));
    lab.wait_forwarded("ipv6", p6);
    echo_ok(&format!("[::1]:{p6}"));
    lab.wait_forwarded("ipv4", pd);
    lab.wait_forwarded("ipv6", pd);
    echo_ok(&format!("127.0.0.1:{pd}"));
    echo_ok(&format!("[::1]:{pd}"));
    lab.wait_forwarded("ipv6", p6a);
    echo_ok(&format!("[::1]:{p6a}"));
    let s = serving(&lab.host_logs().snapshot());
    assert!(!s.contains(&ep("ipv4", p6)), "::1 must not appear on host IPv4");
    assert!(!s.contains(&ep("ipv6", p4)), "127.0.0.1 must not appear on host IPv6");
    assert!(!s.contains(&ep("ipv4", p6a)), "a v6-only :: listener must not appear on host IPv4");
    refused(&format!("127.0.0.1:{p6a}"));
}

#[test]
fn non_loopback_guest_listener_is_not_forwarded() {
    let lab = Lab::new();
    let out = std::process::Command::new("ip")
        .args(["-n", lab.ns.name(), "addr", "add", "192.0.2.10/32", "dev", "lo"])
        .status()
        .unwrap();
    assert!(out.success());
    let public = lab.listen("192.0.2.10:0");
    let p = port(&public);
    let agent_logs = lab.agent_logs().clone();
    agent_logs.wait("the agent to see the 192.0.2.10 listener", |l| {
        l.iter().any(|v| is_event(v, "listen") && port_of(v) == Some(p)).then_some(())
    });
    let _b = lab.barrier();
    assert!(
        !serving(&lab.host_logs().snapshot()).iter().any(|(_, q)| *q == p),
        "192.0.2.10:{p} must not be forwarded"
    );
}

#[test]
fn closed_shut_down_and_killed_listeners_stop_answering() {
    let lab = Lab::new();
    // close()
    let l = lab.listen("127.0.0.1:0");
    let p = port(&l);
    lab.wait_forwarded("ipv4", p);
    drop(l);
    lab.wait_unforwarded("ipv4", p);
    refused(&format!("127.0.0.1:{p}"));
    // shutdown() on the listening socket
    let l = lab.listen("127.0.0.1:0");
    let p = port(&l);
    lab.wait_forwarded("ipv4", p);
    socket2::SockRef::from(&l).shutdown(Shutdown::Read).unwrap();
    lab.wait_unforwarded("ipv4", p);
    refused(&format!("127.0.0.1:{p}"));
    drop(l);
    // SIGKILL of the owning process
    let mut child = lab
        .ns
        .command("python3")
        .args([
            "-c",
            "import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen()\nprint(s.getsockname()[1],flush=True)\ntime.sleep(600)",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let p: u16 = line.trim().parse().unwrap();
    lab.wait_forwarded("ipv4", p);
    let opened = lab.host_logs().wait("the forward's log line", |l| {
        l.iter().find(|v| is_event(v, "forward_opened") && port_of(v) == Some(p)).cloned()
    });
    assert_eq!(opened["comm"], "python3", "the log names the guest process: {opened}");
    assert_eq!(opened["pid"], child.id(), "the log names the guest pid: {opened}");
    child.kill().unwrap();
    child.wait().unwrap();
    lab.wait_unforwarded("ipv4", p);
    refused(&format!("127.0.0.1:{p}"));
}

#[test]
fn reuseport_listeners_unlisten_with_the_last() {
    let lab = Lab::new();
    let mk = |addr: SocketAddr| {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&addr.into()).unwrap();
        s.listen(16).unwrap();
        TcpListener::from(s)
    };
    let a = lab.guest(move || mk("127.0.0.1:0".parse().unwrap()));
    let p = port(&a);
    let b = lab.guest(move || mk(SocketAddr::from(([127, 0, 0, 1], p))));
    lab.wait_forwarded("ipv4", p);
    drop(a);
    let _barrier = lab.barrier();
    assert!(
        serving(&lab.host_logs().snapshot()).contains(&ep("ipv4", p)),
        "one listener left: still forwarded"
    );
    // Echo one connection by hand: a cloned listener would keep the socket
    // open after `b` is dropped.
    let client = std::thread::spawn(move || echo_ok(&format!("127.0.0.1:{p}")));
    let (mut c, _) = b.accept().unwrap();
    let mut r = c.try_clone().unwrap();
    std::io::copy(&mut r, &mut c).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    client.join().unwrap();
    drop(b);
    lab.wait_unforwarded("ipv4", p);
}

#[test]
fn autobind_is_forwarded_under_its_real_port_and_a_failed_listen_produces_nothing() {
    let lab = Lab::new();
    // listen() without bind(): the kernel picks the port inside listen().
    let auto = lab.guest(|| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.listen(16).unwrap();
        TcpListener::from(s)
    });
    let pa = port(&auto);
    assert_ne!(pa, 0);
    lab.wait_forwarded("ipv4", pa);
    serve_echo(auto);
    echo_ok(&format!("127.0.0.1:{pa}"));

    // Two sockets bound to one port with SO_REUSEADDR: the second listen()
    // fails with EADDRINUSE after the kernel already entered LISTEN.
    let (first, err) = lab.guest(hoist_testsupport::listen_then_fail_on_the_same_port).unwrap();
    assert_eq!(err.raw_os_error(), Some(rustix::io::Errno::ADDRINUSE.raw_os_error()));
    let pf = port(&first);
    lab.wait_forwarded("ipv4", pf);
    let _b = lab.barrier();
    let agent = lab.agent_logs().snapshot();
    let listens = agent.iter().filter(|v| is_event(v, "listen") && port_of(v) == Some(pf)).count();
    let unlistens =
        agent.iter().filter(|v| is_event(v, "unlisten") && port_of(v) == Some(pf)).count();
    assert_eq!((listens, unlistens), (1, 0), "the failed listen must produce no event");
    let host = lab.host_logs().snapshot();
    assert_eq!(
        host.iter().filter(|v| port_of(v) == Some(pf)).count(),
        1,
        "one forward_opened, nothing else"
    );
}

#[test]
fn listener_from_before_the_agent_is_forwarded() {
    let mut lab = Lab::empty();
    let early = lab.listen("127.0.0.1:0");
    let p = port(&early);
    serve_echo(early);
    lab.start_agent(&[]);
    lab.start_host(&[]);
    lab.wait_forwarded("ipv4", p);
    echo_ok(&format!("127.0.0.1:{p}"));
}

#[test]
fn restarted_host_or_agent_ends_with_exactly_the_guests_table() {
    let mut lab = Lab::new();
    let a = lab.listen("127.0.0.1:0");
    let b = lab.listen("127.0.0.1:0");
    lab.wait_forwarded("ipv4", port(&b));
    lab.wait_forwarded("ipv4", port(&a));

    // The host goes away while the guest changes its ports.
    lab.host.take().unwrap().stop();
    let pa = port(&a);
    drop(a);
    let c = lab.listen("127.0.0.1:0");
    let d = lab.guest(|| listen_socket("[::1]:0".parse().unwrap(), Some(true)).unwrap());
    lab.start_host(&[]);
    let want =
        [ep("ipv4", port(&b)), ep("ipv4", port(&c)), ep("ipv6", port(&d))].into_iter().collect();
    let got = lab.wait_serving("the host to hold the guest's table", |s| *s == want);
    assert_eq!(got, want);
    refused(&format!("127.0.0.1:{pa}"));

    // The agent goes away (the host keeps its forwards and reconnects).
    lab.agent.take().unwrap().stop();
    let pb = port(&b);
    drop(b);
    let e = lab.listen("0.0.0.0:0");
    lab.start_agent(&[]);
    let want =
        [ep("ipv4", port(&c)), ep("ipv6", port(&d)), ep("ipv4", port(&e))].into_iter().collect();
    lab.host_logs().wait("the host to reconnect", |l| {
        (l.iter().filter(|v| is_event(v, "connected")).count() == 2).then_some(())
    });
    let got = serving(&lab.host_logs().snapshot());
    assert_eq!(got, want, "the host resynced to the guest's table after the agent restart");
    refused(&format!("127.0.0.1:{pb}"));
}

/// Deterministic, incompressible-ish bytes, so corruption cannot hide.
fn pattern(seed: u64, n: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut x = seed | 1;
    let chunk = 64 * 1024;
    (0..n.div_ceil(chunk)).map(move |i| {
        let len = chunk.min(n - i * chunk);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    })
}

fn sha(seed: u64, n: usize) -> Vec<u8> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    pattern(seed, n).for_each(|c| h.update(&c));
    h.finalize().to_vec()
}

/// Reads to end of stream, returning (sha256, bytes).
fn drain(r: &mut impl Read) -> (Vec<u8>, usize) {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    loop {
        match r.read(&mut buf).unwrap() {
            0 => return (h.finalize().to_vec(), n),
            k => {
                h.update(&buf[..k]);
                n += k;
            }
        }
    }
}

const MB100: usize = 100 * 1024 * 1024;

/// A guest server: reads the client's stream to its end and, at the same
/// time, sends `down` pattern bytes; reports the sha256 of what it read.
fn sink_source_server(l: TcpListener, down: usize) -> std::sync::mpsc::Receiver<(Vec<u8>, usize)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut w = c.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            for chunk in pattern(2, down) {
                w.write_all(&chunk).unwrap();
            }
            w.shutdown(Shutdown::Write).unwrap();
        });
        tx.send(drain(&mut c)).unwrap();
        writer.join().unwrap();
    });
    rx
}

#[test]
fn hundred_megabytes_each_way_and_both_at_once_arrive_intact() {
    let lab = Lab::new();
    for (up, down) in [(MB100, 0), (0, MB100), (MB100, MB100)] {
        let l = lab.listen("127.0.0.1:0");
        let p = port(&l);
        let got = sink_source_server(l, down);
        lab.wait_forwarded("ipv4", p);
        let mut c = TcpStream::connect(("127.0.0.1", p)).unwrap();
        let mut w = c.try_clone().unwrap();
        // Both directions at once: a relay that serialises them deadlocks
        // here, since neither side reads until it has written everything.
        let writer = std::thread::spawn(move || {
            for chunk in pattern(1, up) {
                w.write_all(&chunk).unwrap();
            }
            w.shutdown(Shutdown::Write).unwrap();
        });
        let (down_sha, down_n) = drain(&mut c);
        writer.join().unwrap();
        let (up_sha, up_n) = got.recv_timeout(WAIT * 6).expect("server finished");
        assert_eq!((up_n, down_n), (up, down), "byte counts up/down");
        assert_eq!(up_sha, sha(1, up), "upload sha256");
        assert_eq!(down_sha, sha(2, down), "download sha256");
    }
}

#[test]
fn half_close_passes_through_in_both_directions() {
    let lab = Lab::new();
    // Client half-closes first; the server replies after seeing EOF.
    let l = lab.listen("127.0.0.1:0");
    let p = port(&l);
    std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        c.write_all(format!("got {} bytes", got.len()).as_bytes()).unwrap();
    });
    lab.wait_forwarded("ipv4", p);
    let mut c = TcpStream::connect(("127.0.0.1", p)).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(b"request").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "got 7 bytes");

    // Server half-closes first; the client sends after seeing EOF.
    let l = lab.listen("127.0.0.1:0");
    let p = port(&l);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.write_all(b"banner").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        tx.send(got).unwrap();
    });
    lab.wait_forwarded("ipv4", p);
    let mut c = TcpStream::connect(("127.0.0.1", p)).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    let mut banner = String::new();
    c.read_to_string(&mut banner).unwrap();
    assert_eq!(banner, "banner");
    c.write_all(b"after your FIN").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "after your FIN");
}

#[test]
fn two_hundred_concurrent_connections_all_complete() {
    let lab = Lab::new();
    let l = lab.listen("127.0.0.1:0");
    let p = port(&l);
    serve_echo(l);
    lab.wait_forwarded("ipv4", p);
    // Open all 200 before any finishes, so they are truly concurrent.
    let conns: Vec<TcpStream> =
        (0..200).map(|_| TcpStream::connect(("127.0.0.1", p)).unwrap()).collect();
    let threads: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            std::thread::spawn(move || {
                c.set_read_timeout(Some(WAIT * 3)).unwrap();
                let msg = format!("connection {i} says hello").repeat(100);
                c.write_all(msg.as_bytes()).unwrap();
                c.shutdown(Shutdown::Write).unwrap();
                let mut back = String::new();
                c.read_to_string(&mut back).unwrap();
                assert_eq!(back, msg);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Reads until an error or the end: the error's kind, or None for a clean
/// end of stream.
fn read_until_end(c: &mut TcpStream) -> Option<std::io::ErrorKind> {
    c.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => return Some(e.kind()),
        }
    }
}

fn abort(c: TcpStream) {
    socket2::SockRef::from(&c).set_linger(Some(std::time::Duration::ZERO)).unwrap();
    drop(c);
}

/// A guest server that aborts mid-response is an abort for the client (not
/// a clean end that looks like a complete response), and a client that
/// aborts is one for the guest server.
#[test]
fn a_reset_is_passed_on() {
    let lab = Lab::new();
    let l = lab.listen("127.0.0.1:0");
    let p = port(&l);
    lab.wait_forwarded("ipv4", p);
    // The guest server aborts.
    let server = std::thread::spawn({
        let l = l.try_clone().unwrap();
        move || {
            let (mut c, _) = l.accept().unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).unwrap();
            c.write_all(b"HTTP/1.0 200 OK\r\n\r\npartial").unwrap();
            abort(c);
        }
    });
    let mut c = TcpStream::connect(("127.0.0.1", p)).unwrap();
    c.write_all(b"ping").unwrap();
    assert_eq!(
        read_until_end(&mut c),
        Some(std::io::ErrorKind::ConnectionReset),
        "the client sees the reset"
    );
    server.join().unwrap();
    // The client aborts.
    let c = TcpStream::connect(("127.0.0.1", p)).unwrap();
    let (mut guest_side, _) = l.accept().unwrap();
    (&c).write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    guest_side.read_exact(&mut b).unwrap();
    abort(c);
    assert_eq!(
        read_until_end(&mut guest_side),
        Some(std::io::ErrorKind::ConnectionReset),
        "the server sees the reset"
    );
}

#[test]
fn data_connection_to_a_port_not_listening_is_refused_and_a_bad_frame_closes_only_its_connection() {
    let lab = Lab::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sock = lab.sock();
    let l = lab.listen("127.0.0.1:0");
    let p = port(&l);
    serve_echo(l);
    lab.wait_forwarded("ipv4", p);
    rt.block_on(async {
        use hoist_net::{connect, Addr};
        use hoist_wire::{
            open_segment, parse_refused, AgentMsg, Conn, Endpoint, Family, HostMsg, Message,
            Refusal, SegmentKind, HANDSHAKE_TIMEOUT, PROTOCOL_VERSION,
        };
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = Addr::Unix(sock);
        // A session of our own, for its ticket.
        let mut control = Conn::new(connect(&addr).await.unwrap());
        let hello = HostMsg::Hello { nonce: [7; 16], ping_interval_ms: 0 };
        control.send_all([&HostMsg::Control { version: PROTOCOL_VERSION }, &hello]).await.unwrap();
        let ticket = match control.recv_within::<AgentMsg>(HANDSHAKE_TIMEOUT).await.unwrap() {
            AgentMsg::Welcome { ticket, agent, .. } => {
                assert_eq!(agent.pid, lab.agent.as_ref().unwrap().pid(), "the welcome names the agent's pid");
                ticket
            }
            other => panic!("{other:?}"),
        };
        // The ticket is good once the snapshot comes (the session is up).
        let snapshot = control.recv_within::<AgentMsg>(HANDSHAKE_TIMEOUT).await.unwrap();
        assert!(matches!(snapshot, AgentMsg::Snapshot { .. }), "{snapshot:?}");
        // A port nobody listens on in the guest, and a ticket nobody issued.
        // (Bound, never listening: a listener opened and closed here could
        // still be in the agent's table when the Open arrives.)
        let closed = lab.guest(|| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
            s.local_addr().unwrap().as_socket().unwrap().port()
        });
        for (ticket, want) in [(ticket, "no guest listener"), ([0; 16], "no session with this ticket")] {
            let mut s = Conn::new(connect(&addr).await.unwrap());
            let mut first = Vec::new();
            HostMsg::Data { version: PROTOCOL_VERSION, ticket }.encode_frame(&mut first);
            first.extend_from_slice(&open_segment(&Endpoint::tcp(Family::V4, closed)));
            s.send_raw(&first).await.unwrap();
            let (h, payload) = s.recv_segment_within(HANDSHAKE_TIMEOUT).await.unwrap();
            assert_eq!(h.kind, SegmentKind::Refused);
            let (why, reason) = parse_refused(&payload).unwrap();
            assert_eq!(why, Refusal::NotListening);
            assert!(reason.contains(want), "{reason}");
        }
        // Garbage, an oversized frame, an older protocol version: each closes
        // only its own connection, the old version with words it can read.
        for wire in [vec![0, 0, 0, 3, 0xde, 0xad, 0xbe], vec![0xff, 0xff, 0xff, 0xff], {
            let mut v = Vec::new();
            HostMsg::Control { version: 1 }.encode_frame(&mut v);
            v
        }] {
            let mut s = connect(&addr).await.unwrap();
            s.write_all(&wire).await.unwrap();
            let mut rest = Vec::new();
            tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
                .await
                .expect("agent closes the connection")
                .unwrap();
            if wire[4..] == [1, 0, 1] {
                let refusal = AgentMsg::decode_body(&rest[4..]).unwrap();
                assert!(
                    matches!(&refusal, AgentMsg::Refused { reason } if reason.contains("protocol version 1 not supported")),
                    "{refusal:?}"
                );
            }
        }
    });
    // The agent and the existing control stream carry on.
    echo_ok(&format!("127.0.0.1:{p}"));
    let _b = lab.barrier();
    assert_eq!(lab.host_logs().snapshot().iter().filter(|v| is_event(v, "connected")).count(), 1);
}

#[test]
fn a_port_taken_on_the_host_is_reported_and_others_keep_working() {
    let lab = Lab::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let pt = port(&taken);
    let guest =
        lab.guest(move || listen_socket(SocketAddr::from(([127, 0, 0, 1], pt)), None).unwrap());
    let other = lab.listen("127.0.0.1:0");
    let po = port(&other);
    serve_echo(other);
    let conflict = lab.host_logs().wait("the conflict report", |l| {
        l.iter().find(|v| is_event(v, "host_port_conflict") && port_of(v) == Some(pt)).cloned()
    });
    assert_eq!(conflict["pid"], std::process::id(), "names the guest pid: {conflict}");
    assert!(
        conflict["comm"].as_str().is_some_and(|c| !c.is_empty()),
        "names the guest command: {conflict}"
    );
    lab.wait_forwarded("ipv4", po);
    echo_ok(&format!("127.0.0.1:{po}"));
    // The host program still owns its port: hoist did not share it.
    assert_owns(&taken);
    drop(guest);
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_reader_that_stops_reading_holds_memory_flat_and_a_vanished_client_hurts_nothing() {
    let lab = Lab::new();
    let l = lab.listen("127.0.0.1:0");
    let p = port(&l);
    // The guest server writes until the kernel says its socket is full: that
    // happens only if every hop in between applies backpressure instead of
    // buffering.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.set_nonblocking(true).unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0usize;
        loop {
            match c.write(&chunk) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tx.send(sent).unwrap();
                    // Keep the connection open until the client is gone.
                    c.set_nonblocking(false).unwrap();
                    let _ = c.read(&mut [0u8; 1]);
                    return;
                }
                Err(e) => panic!("guest server: {e}"),
            }
            assert!(
                sent < 1 << 30,
                "1 GiB went out to a client that reads nothing: no backpressure"
            );
        }
    });
    lab.wait_forwarded("ipv4", p);
    let (agent_pid, host_pid) =
        (lab.agent.as_ref().unwrap().pid(), lab.host.as_ref().unwrap().pid());
    let before = rss_kib(agent_pid) + rss_kib(host_pid);
    let c = TcpStream::connect(("127.0.0.1", p)).unwrap();
    let in_flight = rx.recv_timeout(WAIT).expect("the guest server's socket filled up");
    let after = rss_kib(agent_pid) + rss_kib(host_pid);
    assert!(in_flight < 64 << 20, "{in_flight} bytes in flight before backpressure");
    assert!(
        after < before + 8 * 1024,
        "relay memory grew from {before} KiB to {after} KiB while the client read nothing"
    );
    // The client vanishes with a reset while data is pending everywhere: the
    // relay (no SIGPIPE death) and the forward carry on.
    socket2::SockRef::from(&c).set_linger(Some(std::time::Duration::ZERO)).unwrap();
    drop(c);
    let e = lab.listen("127.0.0.1:0");
    let pe = port(&e);
    serve_echo(e);
    lab.wait_forwarded("ipv4", pe);
    // Through both processes: neither died of the reset.
    echo_ok(&format!("127.0.0.1:{pe}"));
}

/// A host port that was taken is retried while the conflict lasts: once the
/// host program lets it go, the forward appears within seconds, and the
/// conflict was logged once, not once per retry.
#[test]
fn a_port_freed_on_the_host_is_forwarded_within_seconds() {
    let lab = Lab::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let pt = port(&taken);
    let guest =
        lab.guest(move || listen_socket(SocketAddr::from(([127, 0, 0, 1], pt)), None).unwrap());
    serve_echo(guest);
    lab.host_logs().wait("the conflict report", |l| {
        l.iter().any(|v| is_event(v, "host_port_conflict") && port_of(v) == Some(pt)).then_some(())
    });
    let freed = std::time::Instant::now();
    drop(taken);
    lab.wait_forwarded("ipv4", pt);
    let took = freed.elapsed();
    assert!(
        took < std::time::Duration::from_secs(5),
        "forwarded {took:?} after the port was freed"
    );
    echo_ok(&format!("127.0.0.1:{pt}"));
    let reports = lab
        .host_logs()
        .snapshot()
        .iter()
        .filter(|v| is_event(v, "host_port_conflict") && port_of(v) == Some(pt))
        .count();
    assert_eq!(reports, 1, "one report per state change, not one per retry");
}

/// What the open descriptors of a process point at.
fn fds(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A flood of peers that connect to the agent and stall mid-handshake (some
/// announcing a 1 MiB first frame) neither grows the agent's memory nor
/// keeps the real host out.
#[test]
fn stalled_handshakes_neither_grow_the_agent_nor_keep_the_host_out() {
    let mut lab = Lab::empty();
    lab.start_agent(&[]);
    let agent = lab.agent.as_ref().unwrap().pid();
    let before = rss_kib(agent);
    let mut stalled = Vec::new();
    let body = vec![0x55u8; 64 * 1024];
    for i in 0..2000 {
        let mut s = std::os::unix::net::UnixStream::connect(lab.sock()).unwrap();
        s.set_nonblocking(true).unwrap();
        // Half a length prefix; or a prefix announcing 1 MiB and then as much
        // of the body as the socket takes: an agent that believes the prefix
        // buffers it all.
        let _ = match i % 2 {
            0 => s.write(&[0, 0]),
            _ => s.write(&[0, 0x10, 0, 0]).and_then(|_| s.write(&body)),
        };
        stalled.push(s);
    }
    lab.start_host(&[]);
    let after = rss_kib(agent);
    assert!(
        after < before + 32 * 1024,
        "agent RSS grew from {before} KiB to {after} KiB under 2000 stalled handshakes"
    );
    let l = lab.listen("127.0.0.1:0");
    let p = port(&l);
    serve_echo(l);
    lab.wait_forwarded("ipv4", p);
    echo_ok(&format!("127.0.0.1:{p}"));
    drop(stalled);
}

/// However many connections carry bulk data at once, each relay holds a
/// bounded number of splice pipes: a pipe is charged to its user's quota
/// (fs.pipe-user-pages-soft) while it exists, and past the quota every new
/// pipe of that user shrinks, shells' included.
#[test]
fn bulk_connections_hold_a_bounded_number_of_pipes() {
    let lab = Lab::new();
    let l = lab.listen("127.0.0.1:0");
    let p = port(&l);
    const CONNS: usize = 100;
    // Every guest connection writes until its socket is full: the client
    // reads nothing, so every relay direction has a bulk chunk in flight.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..CONNS {
            let (mut c, _) = l.accept().unwrap();
            let tx = tx.clone();
            std::thread::spawn(move || {
                c.set_write_timeout(Some(std::time::Duration::from_millis(500))).unwrap();
                let chunk = vec![7u8; 256 * 1024];
                let mut sent = 0usize;
                while let Ok(n) = c.write(&chunk) {
                    sent += n;
                }
                tx.send(sent).unwrap();
                let _ = c.read(&mut [0u8; 1]);
            });
        }
    });
    lab.wait_forwarded("ipv4", p);
    let clients: Vec<TcpStream> =
        (0..CONNS).map(|_| TcpStream::connect(("127.0.0.1", p)).unwrap()).collect();
    for _ in 0..CONNS {
        rx.recv_timeout(WAIT * 3).expect("every guest writer filled its socket");
    }
    let pipes = |pid: u32| fds(pid).iter().filter(|t| t.starts_with("pipe:")).count();
    let (agent, host) = (lab.agent.as_ref().unwrap().pid(), lab.host.as_ref().unwrap().pid());
    let (pa, ph) = (pipes(agent), pipes(host));
    // 32 pipes of two ends each at most, and the few of the process itself.
    assert!(
        pa <= 2 * 32 + 8 && ph <= 2 * 32 + 8,
        "{CONNS} bulk connections: agent holds {pa} pipe ends, host {ph}"
    );
    drop(clients);
}

/// Configurations that can never work end the process at once with one line
/// that says what is wrong and what to do, and touch nothing.
#[test]
fn impossible_configurations_exit_with_one_line() {
    hoist_testsupport::require_root();
    let dir = std::env::temp_dir().join(format!("hoist-e2e-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let precious = dir.join("precious");
    std::fs::write(&precious, b"keep me").unwrap();
    let unix_file = format!("unix:{}", precious.display());
    let host = bin("HOIST_HOST_BIN");
    let agent = bin("HOIST_AGENT_BIN");
    let cases: Vec<(&std::path::Path, Vec<&str>, &str)> = vec![
        (&host, vec!["--guest", "vsock:any:1023"], "vsock:any is for the agent to listen on"),
        (&host, vec!["--guest", &unix_file], "exists but is not a socket"),
        (&host, vec!["--guest", "unix:"], "the path is missing"),
        (&agent, vec!["--listen", "vsock:any:1024"], "can be bound by any guest user"),
        (&agent, vec!["--listen", &unix_file], "is not a socket; refusing to replace it"),
        (&agent, vec!["--listen", "tcp:127.0.0.1:0"], "needs --token-file"),
    ];
    for (program, args, want) in cases {
        let mut child = std::process::Command::new(program)
            .args(&args)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{args:?} still runs after {WAIT:?}: it must fail at once");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert_eq!(
        std::fs::read(&precious).unwrap(),
        b"keep me",
        "the file at the agent's path is untouched"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Run by a user who may not load BPF programs, the agent says what it
/// needs in one line instead of a bare "Operation not permitted".
#[test]
fn an_unprivileged_agent_says_what_it_needs() {
    hoist_testsupport::require_root();
    let dir = std::env::temp_dir().join(format!("hoist-e2e-unpriv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let out = as_nobody(&bin("HOIST_AGENT_BIN"))
        .args(["--listen", &format!("unix:{}", dir.join("agent.sock").display())])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("hoist-agent needs root, or the capabilities"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A listen that never passes through listen(2), io_uring's
/// IORING_OP_LISTEN, is forwarded on the tracepoint hooks too, without
/// waiting for an unrelated resync (the trampoline hooks see every listen).
#[test]
fn a_listen_through_io_uring_is_forwarded() {
    let mut lab = Lab::empty();
    lab.start_agent(&["--hooks", "tracepoint"]);
    lab.start_host(&[]);
    let l = lab.guest(|| {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        hoist_testsupport::listen_via_io_uring(&s, 16)
            .expect("io_uring listen (needs Linux 6.11+ and kernel.io_uring_disabled = 0)");
        TcpListener::from(s)
    });
    let p = port(&l);
    serve_echo(l);
    lab.wait_forwarded("ipv4", p);
    echo_ok(&format!("127.0.0.1:{p}"));
}
