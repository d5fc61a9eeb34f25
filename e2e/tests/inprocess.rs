//! In-process end to end, no kernel hooks and no root: the agent's tracker
//! fed by a scripted event source and snapshot, served on a Unix socket, and
//! the host relay as a task binding 127.0.0.2 (the "guest" servers are on
//! 127.0.0.1, port 0). Waits follow the host's status channel; no sleeps.

use anyhow::Result;
use hoist_agent::{Agent, EventSource, GuestListener, Settings};
use hoist_common::{ListenEvent, AF_INET, EVENT_LISTEN, EVENT_UNLISTEN};
use hoist_host::{Config, Status};
use hoist_net::{Acceptor, Addr};
use hoist_wire::{Endpoint, Family};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
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
    let mut e = ListenEvent::zeroed();
    e.kind = kind;
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
    let (tx, rx) = mpsc::unbounded_channel();
    let drops = Arc::new(AtomicU64::new(0));
    let source = Script { rx, drops: drops.clone(), truth: truth.clone() };
    let acceptor =
        Acceptor::bind(&Addr::Unix(sock.to_path_buf()), Default::default()).await.unwrap();
    let settings = Settings {
        accept_cid: None,
        forward_any_address: false,
        allowed_uids: vec![],
        info: hoist_wire::AgentInfo {
            version: "test".into(),
            hooks: "scripted".into(),
            pid: std::process::id(),
        },
        token: None,
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
        let mut config = Config::new(Addr::Unix(sock.to_path_buf()));
        config.bind_v4 = HOST_IP;
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
