//! UDP forwarding in process, no kernel hooks and no root: the agent's
//! tracker fed by a scripted event source, served on a Unix socket, and the
//! host relay as a task binding 127.0.0.2 (the "guest" servers are on
//! 127.0.0.1). A hand-driven fake agent plays a data connection that stops
//! reading. Waits follow the host's status channel or the datagrams
//! themselves, each bounded; no sleeps.

use anyhow::Result;
use hoist_agent::{Agent, EventSource, GuestListener, Settings};
use hoist_common::{ListenEvent, AF_INET, EVENT_LISTEN, EVENT_UNLISTEN, IPPROTO_UDP};
use hoist_host::{Config, Status};
use hoist_net::{Acceptor, Addr};
use hoist_wire::{
    datagram_header, parse_open, AgentInfo, AgentMsg, Challenge, Conn, Endpoint, Family, Forward,
    HostMsg, Proto, SegmentHeader, SegmentKind, HANDSHAKE_TIMEOUT, PROTOCOL_VERSION,
    SEGMENT_HEADER_LEN,
};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UdpSocket, UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);
const HOST_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Events from a channel, snapshots from the guest's truth.
struct Script {
    rx: mpsc::UnboundedReceiver<ListenEvent>,
    truth: Arc<Mutex<Vec<GuestListener>>>,
}

impl EventSource for Script {
    async fn next_batch(&mut self, out: &mut Vec<ListenEvent>) -> Result<()> {
        out.push(self.rx.recv().await.ok_or_else(|| anyhow::anyhow!("script ended"))?);
        Ok(())
    }
    fn drops(&self) -> Result<u64> {
        Ok(0)
    }
    fn snapshot(&mut self, _: &dyn Fn(u64) -> bool) -> Result<Vec<GuestListener>> {
        Ok(self.truth.lock().unwrap().clone())
    }
}

struct Guest {
    truth: Arc<Mutex<Vec<GuestListener>>>,
    events: mpsc::UnboundedSender<ListenEvent>,
}

fn event(kind: u8, cookie: u64, port: u16) -> ListenEvent {
    let mut e = ListenEvent::zeroed();
    e.kind = kind;
    e.proto = IPPROTO_UDP;
    e.family = AF_INET;
    e.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    e.port = port;
    e.cookie = cookie;
    e
}

impl Guest {
    fn serve(&self, cookie: u64, port: u16) {
        let l = GuestListener::from_event(&event(EVENT_LISTEN, cookie, port)).unwrap();
        self.truth.lock().unwrap().push(l);
        self.events.send(event(EVENT_LISTEN, cookie, port)).unwrap();
    }
    fn close(&self, cookie: u64, port: u16) {
        self.truth.lock().unwrap().retain(|l| l.cookie != cookie);
        self.events.send(event(EVENT_UNLISTEN, cookie, port)).unwrap();
    }
}

fn sock_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("hoist-udp-inproc-{}-{name}.sock", std::process::id()))
}

async fn start_agent(sock: &Path) -> (CancellationToken, tokio::task::JoinHandle<()>, Guest) {
    let (tx, rx) = mpsc::unbounded_channel();
    let truth: Arc<Mutex<Vec<GuestListener>>> = Default::default();
    let source = Script { rx, truth: truth.clone() };
    let acceptor =
        Acceptor::bind(&Addr::Unix(sock.to_path_buf()), Default::default()).await.unwrap();
    let settings = Settings {
        accept_cid: None,
        allowed_uids: vec![],
        info: AgentInfo { version: "test".into(), hooks: "scripted".into(), pid: 1 },
        token: None,
        max_connections: hoist_net::DEFAULT_MAX_CONNECTIONS,
    };
    let agent = Agent::new(source, acceptor, settings).unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move { agent.run(s).await.unwrap() });
    (stop, task, Guest { truth, events: tx })
}

struct Host {
    status: watch::Receiver<Status>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Host {
    fn start(sock: &Path) -> Host {
        let mut config = Config::new(Addr::Unix(sock.to_path_buf()));
        config.bind_v4 = HOST_IP;
        let (tx, status) = watch::channel(Status::default());
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move { hoist_host::run(config, tx, s).await.unwrap() });
        Host { status, stop, task }
    }

    async fn wait(&mut self, what: &str, pred: impl Fn(&Status) -> bool) {
        let got = tokio::time::timeout(WAIT, self.status.wait_for(|s| pred(s))).await.is_ok();
        assert!(got, "timed out waiting for {what}: {:?}", *self.status.borrow());
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

fn udp(port: u16) -> Endpoint {
    Endpoint::udp(Family::V4, port)
}

/// A UDP echo server on 127.0.0.1 with a buffer for bursts.
async fn echo_server() -> u16 {
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
async fn client(port: u16) -> UdpSocket {
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
    let (stop, agent, guest) = start_agent(&sock).await;
    let mut host = Host::start(&sock);
    host.wait("connected", |s| s.connected).await;
    let port = echo_server().await;
    guest.serve(1, port);
    host.wait("the UDP forward", |s| s.serving.contains(&udp(port))).await;
    let (a, b) = (client(port).await, client(port).await);
    for (i, len) in [0usize, 1, 2, 1400, 9000, 65_507].into_iter().enumerate() {
        for (who, c) in [(1u8, &a), (2, &b)] {
            let d: Vec<u8> = (0..len).map(|j| (j as u8) ^ who ^ (i as u8)).collect();
            assert_eq!(round_trip(c, &d).await.unwrap(), d, "client {who}, {len} bytes");
        }
    }
    guest.close(1, port);
    host.wait("the forward to close", |s| !s.serving.contains(&udp(port))).await;
    let err = round_trip(&a, b"anyone?").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    host.stop().await;
    stop.cancel();
    agent.await.unwrap();
}

/// An agent under the test's control: a control stream with one UDP
/// forward, and data connections it either echoes or stops reading.
struct FakeAgent {
    listener: UnixListener,
}

impl FakeAgent {
    fn bind(sock: &Path) -> FakeAgent {
        let _ = std::fs::remove_file(sock);
        FakeAgent { listener: UnixListener::bind(sock).unwrap() }
    }

    /// Welcomes the host's control stream with a snapshot of `forward`; every
    /// data connection is served by `serve_data`.
    async fn run(self, forward: Forward) {
        loop {
            let (s, _) = self.listener.accept().await.unwrap();
            let forward = forward.clone();
            tokio::spawn(async move {
                let mut conn = Conn::new(s);
                match conn.recv_within::<HostMsg>(HANDSHAKE_TIMEOUT).await {
                    Ok(HostMsg::Control { .. }) => {
                        let _ = conn.recv_within::<HostMsg>(HANDSHAKE_TIMEOUT).await;
                        let agent =
                            AgentInfo { version: "fake".into(), hooks: "none".into(), pid: 1 };
                        let welcome = AgentMsg::Welcome {
                            version: PROTOCOL_VERSION,
                            agent,
                            ticket: [1; 16],
                            challenge: None::<Challenge>,
                        };
                        conn.send(&welcome).await.unwrap();
                        let snap = AgentMsg::Snapshot { forwards: vec![forward], last: true };
                        conn.send(&snap).await.unwrap();
                        // Holds the session: answers nothing (no pings here).
                        std::future::pending::<()>().await
                    }
                    Ok(HostMsg::Data { .. }) => serve_data(conn).await,
                    other => panic!("unexpected first frame {other:?}"),
                }
            });
        }
    }
}

/// A data connection: `Opened` to each `Open`, then the flow's datagrams
/// echoed, unless the first one says "stall": then it reads nothing more.
async fn serve_data(conn: Conn<UnixStream>) {
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
    tokio::spawn(fake.run(forward));
    let mut host = Host::start(&sock);
    host.wait("the UDP forward", |s| s.serving.contains(&udp(port))).await;
    let stalled = client(port).await;
    stalled.send(b"stall").await.unwrap();
    // Far more than the queue and the data connection's buffers take.
    let big = vec![0x33u8; 60_000];
    for _ in 0..200 {
        stalled.send(&big).await.unwrap();
    }
    let other = client(port).await;
    for i in 0..50u32 {
        let d = i.to_be_bytes();
        assert_eq!(round_trip(&other, &d).await.unwrap(), d);
    }
    host.stop().await;
}
