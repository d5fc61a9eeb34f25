//! UDP forwarding on the real kernel: a real DNS server (dnsmasq) in the
//! guest answers `dig` on the host's 127.0.0.1 and ::1 and its stop closes
//! the host ports at once; 10,000 datagrams of every size from 50 clients
//! come back whole to their own client, and expired flows give their agent
//! sockets back; the server rule end to end (a failed bind, an autobound
//! client, a connected socket are never forwarded; a server that connects
//! stops being one). Run as root through `cargo xtask test`.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The largest UDP payloads IPv4 and IPv6 carry.
const MAX_V4: usize = 65_507;
const MAX_V6: usize = 65_527;

fn dig(server: &str, port: u16, name: &str, rtype: &str) -> String {
    let out = Command::new("dig")
        .args([&format!("@{server}"), "-p", &port.to_string(), name, rtype])
        .args(["+short", "+time=3", "+tries=1"])
        .stdin(Stdio::null())
        .output()
        .expect("running dig (cargo xtask setup installs bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// dnsmasq in the guest, on loopback of both families; `dig` on the host
/// gets its answers through the forwards; its stop closes them at once.
#[test]
fn a_dns_server_in_the_guest_answers_dig_on_the_hosts_loopback() {
    let lab = Lab::new();
    let port = free_udp_port(&lab);
    let mut cmd = lab.ns.command("dnsmasq");
    cmd.args(["--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts"])
        .arg("--bind-interfaces")
        .args(["--listen-address=127.0.0.1,::1", "--pid-file", "--user=root", "--log-facility=-"])
        .arg(format!("--port={port}"))
        .args(["--address=/hoist.test/10.1.2.3", "--address=/hoist.test/fd00::1234"]);
    let mut dnsmasq = Proc::spawn("dnsmasq", cmd);
    let both = BTreeSet::from([ep("ipv4", port), ep("ipv6", port)]);
    wait_udp(&lab, "dnsmasq's UDP ports to be forwarded", |s| both.is_subset(s));
    // dnsmasq serves DNS over TCP on the same port: a forward of its own.
    lab.wait_forwarded("ipv4", port);
    assert_eq!(dig("127.0.0.1", port, "hoist.test", "A"), "10.1.2.3");
    assert_eq!(dig("::1", port, "hoist.test", "AAAA"), "fd00::1234");
    let v4 = udp_client(&format!("127.0.0.1:{port}"));
    let v6 = udp_client(&format!("[::1]:{port}"));
    dnsmasq.stop();
    wait_udp(&lab, "dnsmasq's UDP ports to be closed", |s| s.is_disjoint(&both));
    refused_udp(&v4);
    refused_udp(&v6);
}

/// 10,000 datagrams, sizes from 1 byte to the IPv4 maximum, from 50
/// clients at once (one in flight each): every one comes back whole to the
/// client that sent it. Idle flows then expire and the agent's per-flow
/// sockets close.
#[test]
fn datagrams_of_every_size_from_fifty_clients_come_back_whole_to_their_sender() {
    const CLIENTS: usize = 50;
    const EACH: usize = 200;
    let mut lab = Lab::empty();
    lab.start_agent(&[]);
    lab.start_host(&["--udp-idle-timeout", "1"]);
    let port = free_udp_port(&lab);
    serve_udp_echo(guest_udp(&lab, &format!("127.0.0.1:{port}")));
    wait_udp(&lab, "the echo server to be forwarded", |s| s.contains(&ep("ipv4", port)));
    let agent_pid = lab.agent.as_ref().unwrap().pid();
    let before = udp_sockets_of(agent_pid);
    let addr = format!("127.0.0.1:{port}");
    let clients: Vec<_> = (0..CLIENTS)
        .map(|who| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let c = udp_client(&addr);
                let mut buf = vec![0u8; 65_536];
                for seq in 0..EACH {
                    let i = who * EACH + seq;
                    // Both ends of the range, and sizes spread between.
                    let len = match i {
                        0 => 1,
                        1 => MAX_V4,
                        _ => 1 + (i * 7919) % MAX_V4,
                    };
                    let d = datagram(who, seq, len);
                    c.send(&d).unwrap();
                    let n = c.recv(&mut buf).unwrap_or_else(|e| {
                        panic!("client {who}, datagram {seq} ({len} bytes): {e}")
                    });
                    assert_eq!(n, len, "client {who}, datagram {seq}: length");
                    assert!(buf[..n] == d[..], "client {who}, datagram {seq}: content");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client failed");
    }
    let during = udp_sockets_of(agent_pid);
    assert!(
        during >= before + CLIENTS,
        "the agent holds {during} UDP sockets after {CLIENTS} flows (before: {before})"
    );
    // Bounded: expiry after 1 s of silence, checked every 100 ms.
    let deadline = Instant::now() + WAIT;
    while udp_sockets_of(agent_pid) > before {
        assert!(
            Instant::now() < deadline,
            "expired flows kept {} agent UDP sockets open (before: {before})",
            udp_sockets_of(agent_pid)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A datagram that names its sender and place in its bytes.
fn datagram(who: usize, seq: usize, len: usize) -> Vec<u8> {
    let tag = ((who as u32) << 16 | seq as u32).to_be_bytes();
    (0..len).map(|j| tag[j % 4] ^ (j / 4) as u8).collect()
}

/// UDP sockets process `pid` holds open (its descriptors matched against
/// its network namespace's UDP tables).
fn udp_sockets_of(pid: u32) -> usize {
    let mut inodes = BTreeSet::new();
    for table in ["udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap();
        for line in text.lines().skip(1) {
            if let Some(inode) = line.split_whitespace().nth(9) {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| inodes.contains(target.to_str().unwrap_or_default()))
        .count()
}

/// The server rule end to end: a bind that fails, a client autobound by its
/// first sendto, a socket bound to port 0 and connected, and one bound to
/// an explicit port then connected make no forward that outlives them; a
/// server that connects stops being one. A barrier server seen after them
/// proves their events were handled.
#[test]
fn only_unconnected_sockets_bound_to_a_named_port_are_forwarded() {
    let lab = Lab::new();
    let held = free_udp_port(&lab);
    let _holder = guest_udp(&lab, &format!("127.0.0.1:{held}"));
    wait_udp(&lab, "the holder to be forwarded", |s| s.contains(&ep("ipv4", held)));
    let (autobound, connected, failed) = lab.guest(move || {
        // A second bind of a held port fails.
        let failed = UdpSocket::bind(("127.0.0.1", held)).expect_err("bound a held port");
        let autobound = UdpSocket::bind("0.0.0.0:0").unwrap();
        autobound.send_to(b"hi", ("127.0.0.1", held)).unwrap();
        let connected = UdpSocket::bind("127.0.0.1:0").unwrap();
        connected.connect(("127.0.0.1", held)).unwrap();
        (autobound, connected, failed.kind())
    });
    assert_eq!(failed, ErrorKind::AddrInUse);
    let named = free_udp_port(&lab);
    let turned = guest_udp(&lab, &format!("127.0.0.1:{named}"));
    wait_udp(&lab, "the named server to be forwarded", |s| s.contains(&ep("ipv4", named)));
    turned.connect(("127.0.0.1", held)).unwrap();
    wait_udp(&lab, "the server that connected to be closed", |s| !s.contains(&ep("ipv4", named)));
    let barrier = free_udp_port(&lab);
    serve_udp_echo(guest_udp(&lab, &format!("[::1]:{barrier}")));
    wait_udp(&lab, "the barrier", |s| s.contains(&ep("ipv6", barrier)));
    // The largest datagram IPv6 carries crosses whole.
    let v6 = udp_client(&format!("[::1]:{barrier}"));
    let d = datagram(0, 0, MAX_V6);
    v6.send(&d).unwrap();
    let mut buf = vec![0u8; 65_536];
    let n = v6.recv(&mut buf).unwrap();
    assert!(n == MAX_V6 && buf[..n] == d[..], "a {MAX_V6}-byte IPv6 datagram came back as {n}");
    let clients = [autobound.local_addr().unwrap().port(), connected.local_addr().unwrap().port()];
    let opened: Vec<u16> = lab
        .host_logs()
        .snapshot()
        .iter()
        .filter(|v| is_event(v, "forward_opened") && v["proto"] == "udp")
        .filter_map(port_of)
        .collect();
    for port in clients {
        assert!(!opened.contains(&port), "client port {port} was forwarded: {opened:?}");
    }
    assert_eq!(
        opened.iter().filter(|&&p| p == held).count(),
        1,
        "the failed bind of {held} made a second forward: {opened:?}"
    );
    assert_eq!(
        serving_proto(&lab.host_logs().snapshot(), "udp"),
        BTreeSet::from([ep("ipv4", held), ep("ipv6", barrier)]),
        "the forwards are exactly the servers"
    );
}
