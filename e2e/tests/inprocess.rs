//! In-process end to end, no kernel hooks and no root: the agent's tracker
//! fed by a scripted event source and snapshot, served on a Unix socket, and
//! the host relay as a task binding 127.0.0.2 (the "guest" servers are on
//! 127.0.0.1, port 0), for TCP and UDP; a hand-driven fake agent for
//! misbehaviour. Waits follow the host's status channel (or the datagrams
//! themselves); no sleeps.

use anyhow::Result;
use hoist_agent::{Agent, EventSource, GuestListener, Settings};
use hoist_common::{ListenEvent, AF_INET, EVENT_LISTEN, EVENT_UNLISTEN, IPPROTO_TCP, IPPROTO_UDP};
use hoist_host::{Config, Status};
use hoist_net::{Acceptor, Addr};
use hoist_wire::{
    datagram_header, parse_open, AgentInfo, AgentMsg, Challenge, Conn, Endpoint, Family, Forward,
    HostMsg, Proto, SegmentHeader, SegmentKind, Token, HANDSHAKE_TIMEOUT, PROTOCOL_VERSION,
    SEGMENT_HEADER_LEN, SNAPSHOT_CHUNK,
};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);
const HOST_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A scripted event source: events from a channel, snapshots from the
/// guest's truth.
struct Script {
    rx: mpsc::UnboundedReceiver<ListenEvent>,
    drops: Arc<AtomicU64>,
    truth: Arc<Mutex<Vec<GuestListener>>>,
}

impl EventSource for Script {
    async fn next_batch(&mut self, out: &mut Vec<ListenEvent>) -> Result<()> {
        out.push(self.rx.recv().await.ok_or_else(|| anyhow::anyhow!("script ended"))?);
        while let Ok(e) = self.rx.try_recv() {
            out.push(e);
        }
        Ok(())
    }
    fn drops(&self) -> Result<u64> {
        Ok(self.drops.load(Ordering::Relaxed))
    }
    fn snapshot(&mut self, _: &dyn Fn(u64) -> bool) -> Result<Vec<GuestListener>> {
        Ok(self.truth.lock().unwrap().clone())
    }
}

/// The guest's truth for snapshots, and the event feed.
#[derive(Clone)]
struct Guest {
    truth: Arc<Mutex<Vec<GuestListener>>>,
    events: mpsc::UnboundedSender<ListenEvent>,
    drops: Arc<AtomicU64>,
}

fn event(kind: u8, cookie: u64, port: u16) -> ListenEvent {
    event_of(IPPROTO_TCP, kind, cookie, port)
}

fn event_of(proto: u8, kind: u8, cookie: u64, port: u16) -> ListenEvent {
    let mut e = ListenEvent::zeroed();
    e.kind = kind;
    e.proto = proto;
    e.family = AF_INET;
    e.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    e.port = port;
    e.cookie = cookie;
    e.pid = 42;
    e.comm[..6].copy_from_slice(b"server");
    e
}

fn listener(cookie: u64, port: u16) -> GuestListener {
    GuestListener {
        cookie,
        proto: hoist_wire::Proto::Tcp,
        addr: "127.0.0.1".parse().unwrap(),
        port,
        ipv6only: false,
        pid: 42,
        comm: "server".into(),
    }
}

impl Guest {
    fn listen(&self, cookie: u64, port: u16) {
        self.truth.lock().unwrap().push(listener(cookie, port));
        self.events.send(event(EVENT_LISTEN, cookie, port)).unwrap();
    }
    fn unlisten(&self, cookie: u64, port: u16) {
        self.truth.lock().unwrap().retain(|l| l.cookie != cookie);
        self.events.send(event(EVENT_UNLISTEN, cookie, port)).unwrap();
    }
    /// A UDP server bound to 127.0.0.1:`port` appears.
    fn serve_udp(&self, cookie: u64, port: u16) {
        let ev = event_of(IPPROTO_UDP, EVENT_LISTEN, cookie, port);
        self.truth.lock().unwrap().push(GuestListener::from_event(&ev).unwrap());
        self.events.send(ev).unwrap();
    }
    fn close_udp(&self, cookie: u64, port: u16) {
        self.truth.lock().unwrap().retain(|l| l.cookie != cookie);
        self.events.send(event_of(IPPROTO_UDP, EVENT_UNLISTEN, cookie, port)).unwrap();
    }
}

struct AgentTask {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl AgentTask {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

fn sock_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("hoist-inproc-{}-{name}.sock", std::process::id()))
}

async fn start_agent(sock: &Path, truth: Arc<Mutex<Vec<GuestListener>>>) -> (AgentTask, Guest) {
    start_agent_with(sock, truth, None).await
}

async fn start_agent_limited(sock: &Path, max_connections: usize) -> (AgentTask, Guest) {
    start_agent_full(sock, Default::default(), None, max_connections).await
}

async fn start_agent_with(
    sock: &Path,
    truth: Arc<Mutex<Vec<GuestListener>>>,
    token: Option<Token>,
) -> (AgentTask, Guest) {
    start_agent_full(sock, truth, token, hoist_net::DEFAULT_MAX_CONNECTIONS).await
}

async fn start_agent_full(
    sock: &Path,
    truth: Arc<Mutex<Vec<GuestListener>>>,
    token: Option<Token>,
    max_connections: usize,
) -> (AgentTask, Guest) {
    let (tx, rx) = mpsc::unbounded_channel();
    let drops = Arc::new(AtomicU64::new(0));
    let source = Script { rx, drops: drops.clone(), truth: truth.clone() };
    let acceptor =
        Acceptor::bind(&Addr::Unix(sock.to_path_buf()), Default::default()).await.unwrap();
    let settings = Settings {
        accept_cid: None,
        allowed_uids: vec![],
        info: hoist_wire::AgentInfo {
            version: "test".into(),
            hooks: "scripted".into(),
            pid: std::process::id(),
        },
        token,
        max_connections,
    };
    let agent = Agent::new(source, acceptor, settings).unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move { agent.run(s).await.unwrap() });
    (AgentTask { stop, task }, Guest { truth, events: tx, drops })
}

struct Host {
    status: watch::Receiver<Status>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Host {
    fn start(sock: &Path) -> Host {
        Host::start_with(sock, |_| {})
    }

    fn start_with(sock: &Path, adjust: impl FnOnce(&mut Config)) -> Host {
        let mut config = Config::new(Addr::Unix(sock.to_path_buf()));
        config.bind_v4 = HOST_IP;
        adjust(&mut config);
        let (tx, status) = watch::channel(Status::default());
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move { hoist_host::run(config, tx, s).await.unwrap() });
        Host { status, stop, task }
    }

    async fn wait(&mut self, what: &str, pred: impl Fn(&Status) -> bool) -> Status {
        let got = tokio::time::timeout(WAIT, self.status.wait_for(|s| pred(s)))
            .await
            .map(|r| r.unwrap().clone());
        got.unwrap_or_else(|_| panic!("timed out waiting for {what}: {:?}", *self.status.borrow()))
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

fn v4(port: u16) -> Endpoint {
    Endpoint::tcp(Family::V4, port)
}

/// A guest-side echo server on 127.0.0.1, port 0.
async fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut c, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = c.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    port
}

async fn echo_through_host(port: u16) -> std::io::Result<Vec<u8>> {
    let mut c = TcpStream::connect(SocketAddr::from((HOST_IP, port))).await?;
    c.write_all(b"hello").await?;
    c.shutdown().await?;
    let mut back = Vec::new();
    tokio::time::timeout(WAIT, c.read_to_end(&mut back)).await.expect("echo answered")?;
    Ok(back)
}

#[tokio::test]
async fn events_open_and_close_host_ports() {
    let sock = sock_path("events");
    let (agent, guest) = start_agent(&sock, Default::default()).await;
    let mut host = Host::start(&sock);
    host.wait("connected", |s| s.connected).await;
    let port = echo_server().await;
    guest.listen(1, port);
    host.wait("the forward", |s| s.serving.contains(&v4(port))).await;
    assert_eq!(echo_through_host(port).await.unwrap(), b"hello");
    guest.unlisten(1, port);
    host.wait("the forward to close", |s| !s.serving.contains(&v4(port))).await;
    let err = echo_through_host(port).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    host.stop().await;
    agent.stop().await;
}

#[tokio::test]
async fn lost_events_are_recovered_from_a_snapshot() {
    let sock = sock_path("drops");
    let (agent, guest) = start_agent(&sock, Default::default()).await;
    let mut host = Host::start(&sock);
    host.wait("connected", |s| s.connected).await;
    let (a, b) = (echo_server().await, echo_server().await);
    // The ring buffer "lost" the event for `a`: only the truth knows it.
    guest.truth.lock().unwrap().push(listener(1, a));
    guest.drops.fetch_add(1, Ordering::Relaxed);
    guest.listen(2, b);
    let s = host.wait("both forwards", |s| s.serving.contains(&v4(a))).await;
    assert_eq!(s.serving, [v4(a), v4(b)].into_iter().collect());
    host.stop().await;
    agent.stop().await;
}

#[tokio::test]
async fn host_and_agent_restarts_resync_to_the_guests_table() {
    let sock = sock_path("restart");
    let truth: Arc<Mutex<Vec<GuestListener>>> = Default::default();
    let (agent, guest) = start_agent(&sock, truth.clone()).await;
    let (a, b, c) = (echo_server().await, echo_server().await, echo_server().await);
    guest.listen(1, a);
    guest.listen(2, b);
    let mut host = Host::start(&sock);
    host.wait("snapshot", |s| s.serving.len() == 2).await;
    // Host away while the guest changes.
    host.stop().await;
    guest.unlisten(1, a);
    guest.listen(3, c);
    let mut host = Host::start(&sock);
    let s =
        host.wait("resync after host restart", |s| s.connected && s.serving.contains(&v4(c))).await;
    assert_eq!(s.serving, [v4(b), v4(c)].into_iter().collect());
    // Agent away while the guest changes: the host keeps its forwards, then
    // closes the one that vanished once the new agent's snapshot arrives.
    agent.stop().await;
    host.wait("disconnect", |s| !s.connected).await;
    truth.lock().unwrap().retain(|l| l.cookie != 2);
    let (agent, _guest) = start_agent(&sock, truth.clone()).await;
    let s = host.wait("resync after agent restart", |s| s.connected && s.sessions == 2).await;
    assert_eq!(s.serving, [v4(c)].into_iter().collect());
    assert_eq!(echo_through_host(c).await.unwrap(), b"hello");
    host.stop().await;
    agent.stop().await;
}

fn token(secret: &str) -> Token {
    Token::from_file_contents(secret.as_bytes()).unwrap()
}

/// Only an agent that proves the host's token is believed, and only a host
/// that proves the agent's token is served: a mismatch on either side, or a
/// token on one side only, keeps them apart with a reason that names it.
#[tokio::test]
async fn a_shared_token_must_match_on_both_sides() {
    let cases: [(&str, Option<&str>, Option<&str>, Option<&str>); 4] = [
        (
            "same token",
            Some("correct horse battery staple"),
            Some("correct horse battery staple"),
            None,
        ),
        (
            "different tokens",
            Some("correct horse battery staple"),
            Some("an entirely different secret"),
            Some("proof of the shared token is wrong"),
        ),
        ("agent only", Some("correct horse battery staple"), None, Some("requires a shared token")),
        (
            "host only (an impostor agent)",
            None,
            Some("correct horse battery staple"),
            Some("did not prove the shared token"),
        ),
    ];
    for (i, (name, agent_token, host_token, want_error)) in cases.into_iter().enumerate() {
        let sock = sock_path(&format!("token-{i}"));
        let (agent, guest) =
            start_agent_with(&sock, Default::default(), agent_token.map(token)).await;
        let port = echo_server().await;
        guest.listen(1, port);
        let mut host = Host::start_with(&sock, |c| c.token = host_token.map(token));
        match want_error {
            None => {
                host.wait(name, |s| s.connected && s.serving.contains(&v4(port))).await;
                assert_eq!(echo_through_host(port).await.unwrap(), b"hello", "{name}");
            }
            Some(want) => {
                let s = host.wait(name, |s| s.last_error.is_some()).await;
                let err = s.last_error.clone().unwrap();
                assert!(err.contains(want), "{name}: {err}");
                assert!(!s.connected && s.serving.is_empty(), "{name}: {s:?}");
            }
        }
        host.stop().await;
        agent.stop().await;
    }
}

/// An agent under the test's control, speaking the protocol by hand so that
/// it can misbehave.
struct FakeAgent {
    listener: UnixListener,
}

impl FakeAgent {
    fn bind(sock: &Path) -> FakeAgent {
        let _ = std::fs::remove_file(sock);
        FakeAgent { listener: UnixListener::bind(sock).unwrap() }
    }

    /// Accepts the host's control stream and welcomes it, closing the data
    /// connections the host opens ahead of need on the way.
    async fn welcome(&self) -> Conn<UnixStream> {
        let mut conn = loop {
            let (s, _) = tokio::time::timeout(WAIT, self.listener.accept())
                .await
                .expect("the host connects")
                .unwrap();
            let mut conn = Conn::new(s);
            match conn.recv_within::<HostMsg>(HANDSHAKE_TIMEOUT).await.unwrap() {
                HostMsg::Control { version } => {
                    assert_eq!(version, PROTOCOL_VERSION);
                    break conn;
                }
                HostMsg::Data { .. } => continue,
                other => panic!("expected Control or Data, got {other:?}"),
            }
        };
        greet(&mut conn).await;
        conn
    }

    /// Serves one UDP forward: each control stream gets a snapshot of
    /// `forward` and no more (no pings answered); each data connection is
    /// served by `serve_udp_data`.
    async fn serve_udp(self, forward: Forward) {
        loop {
            let (s, _) = self.listener.accept().await.unwrap();
            let forward = forward.clone();
            tokio::spawn(async move {
                let mut conn = Conn::new(s);
                match conn.recv_within::<HostMsg>(HANDSHAKE_TIMEOUT).await {
                    Ok(HostMsg::Control { .. }) => {
                        greet(&mut conn).await;
                        let snap = AgentMsg::Snapshot { forwards: vec![forward], last: true };
                        conn.send(&snap).await.unwrap();
                        std::future::pending::<()>().await
                    }
                    Ok(HostMsg::Data { .. }) => serve_udp_data(conn).await,
                    other => panic!("unexpected first frame {other:?}"),
                }
            });
        }
    }
}

/// The rest of a control stream's handshake, after `Control`: the host's
/// `Hello`, the fake agent's `Welcome`.
async fn greet(conn: &mut Conn<UnixStream>) {
    assert!(matches!(
        conn.recv_within::<HostMsg>(HANDSHAKE_TIMEOUT).await.unwrap(),
        HostMsg::Hello { .. }
    ));
    let agent = AgentInfo { version: "fake".into(), hooks: "none".into(), pid: 1 };
    conn.send(&AgentMsg::Welcome {
        version: PROTOCOL_VERSION,
        agent,
        ticket: [1; 16],
        challenge: None::<Challenge>,
    })
    .await
    .unwrap();
}

/// An agent that keeps its socket open and says nothing more (a frozen VM,
/// a snapshot restore) is declared dead within the liveness timeout; the
/// host reconnects and says why.
#[tokio::test]
async fn a_silent_agent_is_declared_dead_and_the_host_reconnects() {
    let sock = sock_path("silent");
    let fake = FakeAgent::bind(&sock);
    let mut host = Host::start_with(&sock, |c| c.liveness_timeout = Duration::from_millis(900));
    let mut conn = fake.welcome().await;
    conn.send(&AgentMsg::Snapshot { forwards: vec![], last: true }).await.unwrap();
    host.wait("the session", |s| s.connected).await;
    // The host pings; this agent reads and never answers.
    let ping = conn.recv_within::<HostMsg>(WAIT).await.unwrap();
    assert!(matches!(ping, HostMsg::Ping { .. }), "{ping:?}");
    let s = host.wait("the silent agent to be declared dead", |s| !s.connected).await;
    assert!(s.last_error.as_deref().is_some_and(|e| e.contains("stayed silent")), "{s:?}");
    // And it comes back for a fresh session.
    let _again = fake.welcome().await;
    host.stop().await;
    drop(conn);
}

/// Snapshot parts that never end are cut off at the bound (every port of
/// both families and protocols), not buffered without limit.
#[tokio::test]
async fn a_snapshot_that_never_ends_is_cut_off() {
    let sock = sock_path("endless");
    let fake = FakeAgent::bind(&sock);
    let mut host = Host::start(&sock);
    let mut conn = fake.welcome().await;
    let part: Vec<Forward> = (0..SNAPSHOT_CHUNK)
        .map(|i| Forward {
            endpoint: v4((i % 60000 + 1) as u16),
            guest_addr: "127.0.0.1".parse().unwrap(),
            pid: 1,
            comm: "x".into(),
        })
        .collect();
    let msg = AgentMsg::Snapshot { forwards: part, last: false };
    let mut sent = 0usize;
    while conn.send(&msg).await.is_ok() {
        sent += 1;
        assert!(sent < 200, "the host took {sent} parts of a snapshot without end");
    }
    let s = host.wait("the host to drop the session", |s| s.last_error.is_some()).await;
    assert!(s.last_error.unwrap().contains("exceeds"), "after {sent} parts");
    assert!(!s.connected);
    host.stop().await;
}

/// Sits between the host and the agent, counting the connections the host
/// opens: all of them, and the most open at once.
#[derive(Clone, Default)]
struct Tally {
    opened: Arc<AtomicU64>,
    open: Arc<AtomicU64>,
    most: Arc<AtomicU64>,
}

async fn counting_proxy(front: &Path, back: PathBuf) -> Tally {
    let _ = std::fs::remove_file(front);
    let l = UnixListener::bind(front).unwrap();
    let tally = Tally::default();
    let t = tally.clone();
    tokio::spawn(async move {
        loop {
            let (mut a, _) = l.accept().await.unwrap();
            let Ok(mut b) = UnixStream::connect(&back).await else { continue };
            t.opened.fetch_add(1, Ordering::SeqCst);
            let now = t.open.fetch_add(1, Ordering::SeqCst) + 1;
            t.most.fetch_max(now, Ordering::SeqCst);
            let t = t.clone();
            tokio::spawn(async move {
                let (mut ar, mut aw) = a.split();
                let (mut br, mut bw) = b.split();
                // Open at the agent until the agent's side ends.
                let up = async {
                    let _ = tokio::io::copy(&mut ar, &mut bw).await;
                    let _ = bw.shutdown().await;
                    std::future::pending::<()>().await
                };
                let down = async {
                    let _ = tokio::io::copy(&mut br, &mut aw).await;
                };
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
                t.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    tally
}

/// A client connection held open through the host, its echo proven.
async fn held_client(port: u16) -> std::io::Result<TcpStream> {
    let mut c = TcpStream::connect(SocketAddr::from((HOST_IP, port))).await?;
    c.write_all(b"ping").await?;
    let mut back = [0u8; 4];
    tokio::time::timeout(WAIT, c.read_exact(&mut back)).await.expect("an answer or a reset")?;
    assert_eq!(&back, b"ping");
    Ok(c)
}

/// Echoes through the host once a place is free (the place of a client that
/// just ended frees when its relay has finished on both sides).
async fn echo_once_free(port: u16) -> Vec<u8> {
    let retry = async {
        loop {
            match echo_through_host(port).await {
                Ok(b) => return b,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    tokio::task::yield_now().await
                }
                Err(e) => panic!("{e}"),
            }
        }
    };
    tokio::time::timeout(WAIT, retry).await.expect("a place frees")
}

/// Sequential clients ride the same few data connections: the host opens a
/// handful ahead of need and reuses each after a clean end, instead of
/// connecting to the agent once per client.
#[tokio::test]
async fn data_connections_are_opened_ahead_and_reused() {
    let sock = sock_path("reuse");
    let front = sock_path("reuse-front");
    let (agent, guest) = start_agent(&sock, Default::default()).await;
    let tally = counting_proxy(&front, sock.clone()).await;
    let mut host = Host::start(&front);
    let port = echo_server().await;
    guest.listen(1, port);
    host.wait("the forward", |s| s.serving.contains(&v4(port))).await;
    const CLIENTS: u64 = 100;
    for _ in 0..CLIENTS {
        assert_eq!(echo_through_host(port).await.unwrap(), b"hello");
    }
    // The control stream, the set kept ready, and a few more at most where
    // a client came before its connection was back.
    let opened = tally.opened.load(Ordering::SeqCst);
    assert!(opened <= 1 + 4 + 4, "{opened} connections to the agent for {CLIENTS} clients");
    host.stop().await;
    agent.stop().await;
}

/// Beyond the host's connection limit a new client is reset at once; the
/// clients already carried are untouched, and a freed place is taken again.
#[tokio::test]
async fn clients_beyond_the_hosts_limit_are_reset() {
    let sock = sock_path("host-limit");
    let (agent, guest) = start_agent(&sock, Default::default()).await;
    let mut host = Host::start_with(&sock, |c| c.max_connections = 2);
    let port = echo_server().await;
    guest.listen(1, port);
    host.wait("the forward", |s| s.serving.contains(&v4(port))).await;
    let first = held_client(port).await.unwrap();
    let mut second = held_client(port).await.unwrap();
    let over = held_client(port).await.unwrap_err();
    assert_eq!(over.kind(), std::io::ErrorKind::ConnectionReset, "{over}");
    drop(first);
    assert_eq!(echo_once_free(port).await, b"hello");
    second.write_all(b"still").await.unwrap();
    let mut back = [0u8; 5];
    second.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"still");
    host.stop().await;
    agent.stop().await;
}

/// The agent bounds its data connections too (its limit plus the host's
/// idle ones): a host that opens more is refused, so the client beyond is
/// reset, and never more than the bound are open at the agent.
#[tokio::test]
async fn data_connections_beyond_the_agents_limit_are_refused() {
    let sock = sock_path("agent-limit");
    let front = sock_path("agent-limit-front");
    let (agent, guest) = start_agent_limited(&sock, 1).await;
    let tally = counting_proxy(&front, sock.clone()).await;
    let mut host = Host::start(&front);
    let port = echo_server().await;
    guest.listen(1, port);
    host.wait("the forward", |s| s.serving.contains(&v4(port))).await;
    let bound = 1 + hoist_wire::MAX_IDLE_DATA;
    const MAX_PENDING: usize = 64;
    let mut held = Vec::new();
    let reset = loop {
        match held_client(port).await {
            Ok(c) => held.push(c),
            Err(e) => break e,
        }
        assert!(held.len() <= bound, "{} clients carried past the bound of {bound}", held.len());
    };
    assert_eq!(reset.kind(), std::io::ErrorKind::ConnectionReset, "{reset}");
    // The pool's ready connections count against the bound too.
    assert!(held.len() + 4 >= bound, "refused early, at {} clients", held.len());
    // Refused connections live only until their refusal is written, and
    // wait among the handshakes (at most MAX_PENDING); then only the bound
    // (and the control stream) remain.
    let most = tally.most.load(Ordering::SeqCst);
    assert!(most <= (1 + bound + MAX_PENDING) as u64, "{most} connections at the agent at once");
    let settled = async {
        while tally.open.load(Ordering::SeqCst) > 1 + bound as u64 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(WAIT, settled).await.expect("refused connections are closed");
    held.pop();
    assert_eq!(echo_once_free(port).await, b"hello");
    host.stop().await;
    agent.stop().await;
}

// ---- UDP ----

fn udp(port: u16) -> Endpoint {
    Endpoint::udp(Family::V4, port)
}

/// A UDP echo server on 127.0.0.1 with a buffer for bursts.
async fn udp_echo_server() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_nonblocking(true).unwrap();
    hoist_net::grow_recv_buffer(&socket2::SockRef::from(&s).try_clone().unwrap(), 4 << 20);
    let s = UdpSocket::from_std(s).unwrap();
    let port = s.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, from) = s.recv_from(&mut buf).await.unwrap();
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    port
}

/// A client of the host's port, connected to it.
async fn udp_client(port: u16) -> UdpSocket {
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.connect(SocketAddr::from((HOST_IP, port))).await.unwrap();
    c
}

/// Sends `d` and waits for its echo.
async fn round_trip(c: &UdpSocket, d: &[u8]) -> std::io::Result<Vec<u8>> {
    c.send(d).await?;
    let mut buf = vec![0u8; 65536];
    let n = tokio::time::timeout(WAIT, c.recv(&mut buf)).await.expect("an answer or an error")?;
    buf.truncate(n);
    Ok(buf)
}

/// Datagrams of every size up to the largest IPv4 carries cross whole, in
/// order, each back to the client that sent it; closing the guest server
/// closes the host port at once (the client sees it refused).
#[tokio::test]
async fn datagrams_cross_whole_to_their_client_and_the_port_closes_with_the_server() {
    let sock = sock_path("echo");
    let (agent, guest) = start_agent(&sock, Default::default()).await;
    let mut host = Host::start(&sock);
    host.wait("connected", |s| s.connected).await;
    let port = udp_echo_server().await;
    guest.serve_udp(1, port);
    host.wait("the UDP forward", |s| s.serving.contains(&udp(port))).await;
    let (a, b) = (udp_client(port).await, udp_client(port).await);
    // Not empty first: the first datagram of a flow travels with its Open.
    for (i, len) in [1400usize, 0, 1, 2, 9000, 65_507].into_iter().enumerate() {
        for (who, c) in [(1u8, &a), (2, &b)] {
            let d: Vec<u8> = (0..len).map(|j| (j as u8) ^ who ^ (i as u8)).collect();
            assert_eq!(round_trip(c, &d).await.unwrap(), d, "client {who}, {len} bytes");
        }
    }
    // Every byte is counted both ways, the first datagram of each flow
    // (which travels with its Open) too; the status holds the two flows.
    let each = 2 * [1400u64, 0, 1, 2, 9000, 65_507].iter().sum::<u64>();
    let st = host.status.borrow().clone();
    let f = st.forwards.iter().find(|f| f.forward.endpoint == udp(port)).expect("the forward");
    let stats = f.stats.as_ref().expect("a served forward's counters");
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(
        (stats.traffic.sent.load(Relaxed), stats.traffic.received.load(Relaxed)),
        (each, each),
        "bytes client -> guest, guest -> client"
    );
    assert_eq!(stats.total.load(Relaxed), 2, "flows");
    guest.close_udp(1, port);
    host.wait("the forward to close", |s| !s.serving.contains(&udp(port))).await;
    let err = round_trip(&a, b"anyone?").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    host.stop().await;
    agent.stop().await;
}

/// A data connection: `Opened` to each `Open`, then the flow's datagrams
/// echoed, unless the first one says "stall": then it reads nothing more.
async fn serve_udp_data(conn: Conn<UnixStream>) {
    let (mut s, mut inbox) = conn.into_parts();
    let Some((SegmentKind::Open, payload)) = read_segment(&mut s, &mut inbox).await else {
        return;
    };
    assert_eq!(parse_open(&payload).unwrap().proto, Proto::Udp);
    s.write_all(&SegmentHeader::new(SegmentKind::Opened, 0).encode()).await.unwrap();
    let mut first = true;
    while let Some((kind, payload)) = read_segment(&mut s, &mut inbox).await {
        assert_eq!(kind, SegmentKind::Datagram);
        if first && &payload[..] == b"stall" {
            // Keeps the connection open and unread, as a stuck peer would.
            std::future::pending::<()>().await
        }
        first = false;
        s.write_all(&datagram_header(payload.len())).await.unwrap();
        s.write_all(&payload).await.unwrap();
    }
}

/// The next segment on a data connection; `None` at its end.
async fn read_segment(
    s: &mut UnixStream,
    inbox: &mut bytes::BytesMut,
) -> Option<(SegmentKind, bytes::BytesMut)> {
    loop {
        if inbox.len() >= SEGMENT_HEADER_LEN {
            let h = SegmentHeader::decode(inbox[..5].try_into().unwrap()).unwrap();
            if inbox.len() >= SEGMENT_HEADER_LEN + h.len {
                let _ = inbox.split_to(SEGMENT_HEADER_LEN);
                return Some((h.kind, inbox.split_to(h.len)));
            }
        }
        if s.read_buf(inbox).await.unwrap() == 0 {
            return None;
        }
    }
}

/// A flow whose data connection stops taking datagrams fills only its own
/// bounded queue (the rest is dropped and counted, not buffered): other
/// clients of the same forward go on being answered.
#[tokio::test]
async fn a_stalled_flow_holds_up_no_other_flow() {
    let sock = sock_path("stall");
    let fake = FakeAgent::bind(&sock);
    let port = std::net::UdpSocket::bind((HOST_IP, 0)).unwrap().local_addr().unwrap().port();
    let forward = Forward {
        endpoint: udp(port),
        guest_addr: "127.0.0.1".parse().unwrap(),
        pid: 1,
        comm: "fake".into(),
    };
    tokio::spawn(fake.serve_udp(forward));
    let mut host = Host::start(&sock);
    host.wait("the UDP forward", |s| s.serving.contains(&udp(port))).await;
    let stalled = udp_client(port).await;
    stalled.send(b"stall").await.unwrap();
    // Far more than the queue and the data connection's buffers take.
    let big = vec![0x33u8; 60_000];
    for _ in 0..200 {
        stalled.send(&big).await.unwrap();
    }
    let other = udp_client(port).await;
    for i in 0..50u32 {
        let d = i.to_be_bytes();
        assert_eq!(round_trip(&other, &d).await.unwrap(), d);
    }
    host.stop().await;
}

/// A guest server that restarts on its port (closes it and binds it again
/// at once, as a dev server reloading does) is forwarded again at once, even
/// when its close and its new bind reach the host in one read: the new
/// forward waits for the old one to let go of the host port (a closed UDP
/// socket keeps its port until its task is gone) instead of meeting it as a
/// conflict and retrying later.
#[tokio::test]
async fn a_server_restarted_on_its_port_is_forwarded_again_at_once() {
    let sock = sock_path("restart");
    let fake = FakeAgent::bind(&sock);
    let mut host = Host::start(&sock);
    let mut conn = fake.welcome().await;
    let port = std::net::UdpSocket::bind((HOST_IP, 0)).unwrap().local_addr().unwrap().port();
    let server = |pid| Forward {
        endpoint: udp(port),
        guest_addr: "127.0.0.1".parse().unwrap(),
        pid,
        comm: "server".into(),
    };
    conn.send(&AgentMsg::Snapshot { forwards: vec![server(1)], last: true }).await.unwrap();
    host.wait("the UDP forward", |s| s.serving.contains(&udp(port))).await;
    conn.send_all([&AgentMsg::Removed(udp(port)), &AgentMsg::Added(server(2))]).await.unwrap();
    let st = host
        .wait("the restarted server's forward", |s| {
            s.conflicts.contains(&udp(port))
                || s.forwards
                    .iter()
                    .any(|f| f.forward == server(2) && s.serving.contains(&udp(port)))
        })
        .await;
    assert!(st.conflicts.is_empty(), "the restarted server met its own old forward: {st:?}");
    host.stop().await;
}
