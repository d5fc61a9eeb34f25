//! Writes the checked-in seed corpus, `corpus/<target>/<name>`: a handful of
//! valid inputs per fuzz target, made with the real encoders where there are
//! some, so the fuzzer starts from the formats' interesting paths. Run once,
//! after a format change, and commit the result:
//!
//! ```text
//! cargo test --manifest-path fuzz/Cargo.toml --test seeds -- --ignored
//! ```

use hoist_common::{ListenEvent, AF_INET, AF_INET6, EVENT_LISTEN, EVENT_UNLISTEN};
use hoist_wire::{
    open_segment, refused_segment, AgentInfo, AgentMsg, Challenge, Endpoint, Family, Forward,
    HostMsg, Message, Proto, Refusal, SegmentHeader, SegmentKind, PROTOCOL_VERSION,
};
use std::path::Path;

fn body<M: Message>(m: &M) -> Vec<u8> {
    let mut out = Vec::new();
    m.encode_body(&mut out);
    out
}

fn frames<M: Message>(ms: &[M]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in ms {
        m.encode_frame(&mut out);
    }
    out
}

fn forward(family: Family, port: u16, addr: &str, comm: &str) -> Forward {
    Forward {
        endpoint: Endpoint::tcp(family, port),
        guest_addr: addr.parse().unwrap(),
        pid: 4242,
        comm: comm.into(),
    }
}

fn agent_msgs() -> Vec<(&'static str, AgentMsg)> {
    let v4 = forward(Family::V4, 8080, "127.0.0.1", "python3");
    let v6 = forward(Family::V6, 443, "::", "nginx");
    vec![
        ("welcome", welcome(None)),
        ("welcome-challenge", welcome(Some(Challenge { nonce: [3; 16], proof: [4; 32] }))),
        ("snapshot-empty", AgentMsg::Snapshot { forwards: vec![], last: true }),
        (
            "snapshot-two",
            AgentMsg::Snapshot { forwards: vec![v4.clone(), v6.clone()], last: false },
        ),
        ("added-v4", AgentMsg::Added(v4)),
        ("added-v6", AgentMsg::Added(v6)),
        (
            "removed",
            AgentMsg::Removed(Endpoint {
                proto: Proto::Udp,
                addr: "::1".parse().unwrap(),
                port: 22,
            }),
        ),
        ("pong", AgentMsg::Pong { seq: 7 }),
        ("refused", AgentMsg::Refused { reason: "protocol version 1 not supported".into() }),
    ]
}

fn welcome(challenge: Option<Challenge>) -> AgentMsg {
    let agent = AgentInfo { version: "0.2.0".into(), hooks: "tracepoint".into(), pid: 42 };
    AgentMsg::Welcome { version: PROTOCOL_VERSION, agent, ticket: [9; 16], challenge }
}

fn host_msgs() -> Vec<(&'static str, HostMsg)> {
    vec![
        ("control", HostMsg::Control { version: PROTOCOL_VERSION }),
        ("control-v1", HostMsg::Control { version: 1 }),
        ("data", HostMsg::Data { version: PROTOCOL_VERSION, ticket: [5; 16] }),
        ("hello", HostMsg::Hello { nonce: [1; 16], ping_interval_ms: 5000 }),
        ("auth", HostMsg::Auth { proof: [2; 32] }),
        ("ping", HostMsg::Ping { seq: 1 }),
    ]
}

/// Segments as a data connection carries them.
fn segment_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let h = |kind, len| SegmentHeader::new(kind, len).encode().to_vec();
    vec![
        ("open", open_segment(&Endpoint::tcp(Family::V4, 8080))),
        (
            "open-v6-other",
            open_segment(&Endpoint { proto: Proto::Tcp, addr: "::2".parse().unwrap(), port: 443 }),
        ),
        ("opened", h(SegmentKind::Opened, 0)),
        ("refused", refused_segment(Refusal::DialFailed, "connection refused")),
        ("bytes", [h(SegmentKind::Bytes, 4), b"ping".to_vec()].concat()),
        ("fin", h(SegmentKind::Fin, 0)),
        ("reset", h(SegmentKind::Reset, 0)),
        ("open-udp", open_segment(&Endpoint::udp(Family::V6, 53))),
        ("datagram", [h(SegmentKind::Datagram, 5), b"query".to_vec()].concat()),
        ("datagram-empty", h(SegmentKind::Datagram, 0)),
    ]
}

/// A control stream as the host receives it.
fn control_stream() -> Vec<u8> {
    let msgs: Vec<AgentMsg> = agent_msgs().into_iter().map(|(_, m)| m).skip(1).take(6).collect();
    frames(&msgs)
}

/// One netlink message: `nlmsghdr` (native order) and the body, padded to 4.
fn netlink(kind: u16, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(&[0x02, 0, 1, 0, 0, 0, 0, 0, 0, 0]); // NLM_F_MULTI, seq 1, pid 0
    b.extend_from_slice(body);
    b.resize((b.len() + 3) & !3, 0);
    b
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_SKV6ONLY: u16 = 11;

/// A `struct inet_diag_msg` of a listening socket, then its attributes.
fn inet_diag_msg(
    family: u16,
    port: u16,
    src: [u8; 16],
    cookie: u64,
    attrs: &[(u16, &[u8])],
) -> Vec<u8> {
    let mut b = vec![0u8; 72];
    b[0] = family as u8;
    b[1] = 10; // TCP_LISTEN
    b[4..6].copy_from_slice(&port.to_be_bytes());
    b[8..24].copy_from_slice(&src);
    b[44..48].copy_from_slice(&(cookie as u32).to_ne_bytes());
    b[48..52].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
    b[64..68].copy_from_slice(&1000u32.to_ne_bytes()); // uid
    b[68..72].copy_from_slice(&77u32.to_ne_bytes()); // inode
    for (t, v) in attrs {
        b.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&t.to_ne_bytes());
        b.extend_from_slice(v);
        b.resize((b.len() + 3) & !3, 0);
    }
    b
}

fn sock_diag_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut lo4 = [0u8; 16];
    lo4[..4].copy_from_slice(&[127, 0, 0, 1]);
    let v4 = netlink(SOCK_DIAG_BY_FAMILY, &inet_diag_msg(AF_INET, 8080, lo4, 0x1_0000_0002, &[]));
    let v6 = netlink(
        SOCK_DIAG_BY_FAMILY,
        &inet_diag_msg(AF_INET6, 443, [0; 16], 5, &[(INET_DIAG_SKV6ONLY, &[1])]),
    );
    let done = netlink(NLMSG_DONE, &[0; 4]);
    let mut error = (-1i32).to_ne_bytes().to_vec(); // -EPERM, then the request's header
    error.extend_from_slice(&[0; 16]);
    let ack = [0u8; 20];
    vec![
        ("v4", v4.clone()),
        ("v6-only", v6.clone()),
        ("two-then-done", [v4, v6, done.clone()].concat()),
        ("done", done),
        ("error", netlink(NLMSG_ERROR, &error)),
        ("ack", netlink(NLMSG_ERROR, &ack)),
    ]
}

/// The seeds are what they claim: the parser takes the valid dumps whole.
#[test]
fn sock_diag_seeds_parse() {
    let want = [("v4", 1), ("v6-only", 1), ("two-then-done", 2), ("done", 0), ("ack", 0)];
    let seeds = sock_diag_seeds();
    for (name, n) in want {
        let (_, bytes) = seeds.iter().find(|(s, _)| *s == name).unwrap();
        let mut out = Vec::new();
        hoist_agent::parse_diag_replies(bytes, &mut out).unwrap();
        assert_eq!(out.len(), n, "{name}");
    }
    let (_, error) = seeds.iter().find(|(s, _)| *s == "error").unwrap();
    assert!(hoist_agent::parse_diag_replies(error, &mut Vec::new()).is_err());
}

/// A ring-buffer record, in the `repr(C)` layout `ListenEvent::from_bytes` reads.
fn record(kind: u8, family: u16, port: u16, addr: [u8; 16], comm: &str, cookie: u64) -> Vec<u8> {
    let mut b = vec![0u8; ListenEvent::SIZE];
    b[0] = kind;
    b[1] = (family == AF_INET6) as u8;
    b[2..4].copy_from_slice(&family.to_ne_bytes());
    b[4..6].copy_from_slice(&port.to_ne_bytes());
    b[8..12].copy_from_slice(&4026531840u32.to_ne_bytes()); // netns inode
    b[12..16].copy_from_slice(&4242u32.to_ne_bytes());
    b[20..36].copy_from_slice(&addr);
    b[36..36 + comm.len()].copy_from_slice(comm.as_bytes());
    b[56..64].copy_from_slice(&cookie.to_ne_bytes());
    b
}

fn ring_event_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut lo4 = [0u8; 16];
    lo4[..4].copy_from_slice(&[127, 0, 0, 1]);
    let mut lo6 = [0u8; 16];
    lo6[15] = 1;
    let mut longer = record(EVENT_LISTEN, AF_INET, 80, lo4, "nc", 9);
    longer.extend_from_slice(&[0xaa; 8]);
    vec![
        ("listen-v4", record(EVENT_LISTEN, AF_INET, 8080, lo4, "python3", 0x1_0000_0002)),
        ("unlisten-v6", record(EVENT_UNLISTEN, AF_INET6, 443, lo6, "nginx", 5)),
        ("autobind-full-comm", record(EVENT_LISTEN, AF_INET6, 0, [0; 16], "a-long-command-", 7)),
        ("newer-program", longer),
    ]
}

fn write(target: &str, seeds: Vec<(&str, Vec<u8>)>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
#[ignore = "writes the seed corpus; run by hand after a format change"]
fn write_seed_corpus() {
    let agent = agent_msgs();
    let host = host_msgs();
    write("host_msg", host.iter().map(|(n, m)| (*n, body(m))).collect());
    write("agent_msg", agent.iter().map(|(n, m)| (*n, body(m))).collect());
    let all_agent: Vec<AgentMsg> = agent.iter().map(|(_, m)| m.clone()).collect();
    let all_host: Vec<HostMsg> = host.iter().map(|(_, m)| m.clone()).collect();
    write(
        "frame",
        vec![
            ("agent-frames", frames(&all_agent)),
            ("host-frames", frames(&all_host)),
            ("empty-frame", vec![0, 0, 0, 0]),
            ("cut-body", vec![0, 0, 0, 5, 1, 2]),
            ("over-limit", vec![0, 0x10, 0, 1]),
        ],
    );
    // The first byte is the pipe's capacity less one.
    let stream = control_stream();
    write(
        "conn",
        vec![
            ("control-stream-1", [&[0u8][..], &stream].concat()),
            ("control-stream-7", [&[6u8][..], &stream].concat()),
            ("control-stream-256", [&[255u8][..], &stream].concat()),
            (
                "pong-then-bytes",
                [&[63u8][..], &frames(&[AgentMsg::Pong { seq: 1 }]), b"raw"].concat(),
            ),
            (
                "refused",
                [&[15u8][..], &frames(&[AgentMsg::Refused { reason: "no".into() }])].concat(),
            ),
        ],
    );
    write(
        "mux_reply",
        vec![
            ("ok", b"OK 1073741824".to_vec()),
            ("ok-small", b"OK 5".to_vec()),
            ("no", b"NO".to_vec()),
            ("ok-garbage", b"OK x".to_vec()),
        ],
    );
    write("segment", segment_seeds());
    write("sock_diag", sock_diag_seeds());
    write("ring_event", ring_event_seeds());
}
