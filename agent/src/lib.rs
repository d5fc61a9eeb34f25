//! The guest agent. Data path, in file order: `source` (kernel events from
//! the ring buffer, `sock_diag` snapshots) -> `tracker` (drives the pure
//! listener `table`) -> `serve` (the door for the host) -> `control` (the
//! stream of changes to the host) and `data` (data connections from the host,
//! dialled to the guest's local port; `udp` carries a UDP flow's datagrams).
//! `sys` holds the system calls.
//!
//! [`Agent::new`] assembles an agent from any [`EventSource`]; the binary
//! uses [`run`], which loads the kernel source.

mod admin;
pub mod check;
mod control;
mod data;
mod privileges;
mod serve;
mod session;
mod source;
mod sys;
mod table;
mod tracker;
mod udp;

pub use admin::show_status;
pub use source::{
    classify_udp, ephemeral_ports, listening_tcp, parse_diag_replies, snapshot, unconnected_udp,
    DiagSocket, EventSource, HookMode, Hooks, KernelSource, Offsets, PidNs, UdpVerdict, Watch,
};
pub use sys::enter_netns;
pub use table::GuestListener;

use anyhow::{Context, Result};
use hoist_net::admin::AdminListener;
use hoist_net::{Acceptor, AcceptorOptions, Addr, Limit};
use hoist_wire::{AgentInfo, Token};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracker::{Tracker, TrackerHandle};

/// How the agent treats its peers and listeners.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Only vsock peers with this CID may connect (`None`: any).
    pub accept_cid: Option<u32>,
    /// Unix peers with these uids may connect, besides root and the agent's
    /// own user.
    pub allowed_uids: Vec<u32>,
    /// Who this agent is, for the host's log.
    pub info: AgentInfo,
    /// A shared token the host must prove it holds (and this agent proves
    /// it holds to the host).
    pub token: Option<Token>,
    /// Client connections carried at once; beyond it (plus the host's idle
    /// data connections) new data connections are refused.
    pub max_connections: usize,
}

/// An agent: a source of listener events, the table it feeds, and the door
/// the host connects through.
pub struct Agent<S> {
    tracker: Tracker<S>,
    handle: TrackerHandle,
    acceptor: Acceptor,
    settings: Arc<Settings>,
    admin: Option<(AdminListener, admin::Identity)>,
}

impl<S: EventSource> Agent<S> {
    /// Assembles the agent and takes the first snapshot, so listeners that
    /// existed before it started are served from the start.
    pub fn new(source: S, acceptor: Acceptor, settings: Settings) -> Result<Agent<S>> {
        let (tracker, handle) = Tracker::new(source)?;
        Ok(Agent { tracker, handle, acceptor, settings: Arc::new(settings), admin: None })
    }

    /// Also answers `hoist-agent status` on `listener`.
    pub fn with_admin(mut self, listener: AdminListener, listen: &Addr, netns: u32) -> Agent<S> {
        let me = admin::Identity { listen: listen.to_string(), netns, since: SystemTime::now() };
        self.admin = Some((listener, me));
        self
    }

    /// Serves the host until `shutdown`; an error means the event source
    /// failed.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        // Each data connection holds two descriptors (it and the guest dial).
        let max = self.settings.max_connections + hoist_wire::MAX_IDLE_DATA;
        let limit = Limit::new(Limit::fitting(max, hoist_net::open_file_limit(), 2, 256));
        if limit.max() < max {
            warn!(event = "connection_limit_lowered", max = limit.max(), "the open-file limit allows only {} data connections at once (wanted {max}): raise it (ulimit -n, LimitNOFILE=)", limit.max());
        }
        let door = serve::Door {
            limit,
            traffic: Default::default(),
            tracker: self.handle,
            settings: self.settings,
            sessions: Default::default(),
            pending: Default::default(),
            shutdown: shutdown.clone(),
        };
        if let Some((listener, me)) = self.admin {
            tokio::spawn(admin::serve(listener, door.clone(), me, shutdown.clone()));
        }
        let serving = tokio::spawn(serve::serve(self.acceptor, door));
        let result = self.tracker.run(shutdown.clone()).await;
        shutdown.cancel();
        let _ = serving.await;
        result
    }
}

/// Where the agent listens by default: a privileged vsock port (only root or
/// CAP_NET_BIND_SERVICE may bind ports up to 1023), so no guest user can take
/// it first and pose as the agent.
pub const DEFAULT_LISTEN: &str = "vsock:any:1023";

/// Refuses a listening address an unprivileged guest user could take over:
/// a vsock port above 1023 (unless allowed explicitly), a TCP port without a
/// shared token (anyone who reaches it could pose as the host).
pub fn check_listen(listen: &Addr, allow_unprivileged_port: bool, token: bool) -> Result<()> {
    match listen {
        Addr::Vsock { port, .. } if *port > 1023 && !allow_unprivileged_port => anyhow::bail!(
            "vsock port {port} can be bound by any guest user, who could then pose as the agent: use a port up to 1023 (the default is {DEFAULT_LISTEN}) or pass --allow-unprivileged-port"
        ),
        Addr::Tcp(a) if !token => anyhow::bail!(
            "listening on tcp:{a} needs --token-file: anyone who can reach that port could pose as the host"
        ),
        _ => Ok(()),
    }
}

/// What `hoist-agent` is asked to do.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the host connects.
    pub listen: Addr,
    /// How that socket is set up (a Unix socket's mode).
    pub acceptor: AcceptorOptions,
    /// Which kernel hooks to use.
    pub hooks: HookMode,
    /// Only vsock peers with this CID may connect (`None`: any).
    pub accept_cid: Option<u32>,
    /// Unix peers with these uids may connect, besides root and the agent's
    /// own user.
    pub allowed_uids: Vec<u32>,
    /// The network namespace whose listeners are tracked.
    pub watch: Watch,
    /// The shared token, if any.
    pub token: Option<Token>,
    /// Client connections carried at once.
    pub max_connections: usize,
    /// Where `hoist-agent status` reaches it (none: nowhere).
    pub admin_socket: Option<PathBuf>,
}

/// Runs the agent on the kernel's events, in the calling thread's network
/// namespace, until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    // The door first: a listening address that cannot be had is said before
    // any program is loaded into the kernel.
    let acceptor = Acceptor::bind(&config.listen, config.acceptor).await?;
    let source =
        KernelSource::load(config.hooks, config.watch).context("loading the eBPF programs")?;
    privileges::check_owner_access()?;
    let hooks = source.hooks();
    let settings = Settings {
        accept_cid: config.accept_cid,
        allowed_uids: config.allowed_uids,
        info: AgentInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            hooks: hooks.to_string(),
            pid: std::process::id(),
        },
        token: config.token,
        max_connections: config.max_connections,
    };
    let mut agent = Agent::new(source, acceptor, settings)?;
    // Serving the host matters more than the status view: an admin socket
    // that cannot be had is said, not fatal.
    if let Some(path) = &config.admin_socket {
        match AdminListener::bind(path).await {
            Ok(l) => agent = agent.with_admin(l, &config.listen, config.watch.inum),
            Err(e) => {
                warn!(event = "admin_socket_unavailable", path = %path.display(), "{e:#}; `hoist-agent status` will not reach this agent")
            }
        }
    }
    info!(event = "agent_ready", listen = %config.listen, hooks = %hooks, netns = config.watch.inum, "agent ready");
    agent.run(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_addresses_an_unprivileged_user_could_take_are_refused() {
        let cases: &[(&str, bool, bool, Option<&str>)] = &[
            (DEFAULT_LISTEN, false, false, None),
            ("vsock:any:1023", false, false, None),
            ("vsock:any:1024", false, false, Some("can be bound by any guest user")),
            ("vsock:any:1024", true, false, None),
            ("unix:/run/hoist.sock", false, false, None),
            ("tcp:127.0.0.1:7000", false, false, Some("needs --token-file")),
            ("tcp:127.0.0.1:7000", false, true, None),
        ];
        for (addr, allow, token, want) in cases {
            let r = check_listen(&addr.parse().unwrap(), *allow, *token);
            match (r, want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{addr}: {e}"),
                (r, w) => panic!("{addr}: got {r:?}, want {w:?}"),
            }
        }
        let port = match DEFAULT_LISTEN.parse::<Addr>().unwrap() {
            Addr::Vsock { port, .. } => port,
            other => panic!("{other:?}"),
        };
        assert!(port <= 1023, "the default port is a privileged one");
    }
}
