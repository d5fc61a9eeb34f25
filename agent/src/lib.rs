//! The guest agent. Data path, in file order: `source` (kernel events from
//! the ring buffer, `sock_diag` snapshots) -> `tracker` (drives the pure
//! listener `table`) -> `serve` (the door for the host) -> `control` (the
//! stream of changes to the host) and `data` (data connections from the host,
//! dialled to the guest's local port). `sys` holds the system calls.
//!
//! [`Agent::new`] assembles an agent from any [`EventSource`]; the binary
//! uses [`run`], which loads the kernel source.

mod control;
mod data;
mod serve;
mod source;
mod sys;
mod table;
mod tracker;

pub use source::{
    listening_tcp, parse_diag_replies, snapshot, DiagSocket, EventSource, HookMode, Hooks,
    KernelSource, Offsets,
};
pub use sys::enter_netns;
pub use table::GuestListener;

use anyhow::{Context, Result};
use hoist_net::{Acceptor, Addr};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::info;
use tracker::{Tracker, TrackerHandle};

/// How the agent treats its peers and listeners.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Only vsock peers with this CID may connect (`None`: any).
    pub accept_cid: Option<u32>,
    /// Also expose listeners bound to non-loopback addresses.
    pub forward_any_address: bool,
    /// Describes this agent to the host (version, hook set).
    pub description: String,
}

/// An agent: a source of listener events, the table it feeds, and the door
/// the host connects through.
pub struct Agent<S> {
    tracker: Tracker<S>,
    handle: TrackerHandle,
    acceptor: Acceptor,
    settings: Arc<Settings>,
}

impl<S: EventSource> Agent<S> {
    /// Assembles the agent and takes the first snapshot, so listeners that
    /// existed before it started are served from the start.
    pub fn new(source: S, acceptor: Acceptor, settings: Settings) -> Result<Agent<S>> {
        let (tracker, handle) = Tracker::new(source, settings.forward_any_address)?;
        Ok(Agent { tracker, handle, acceptor, settings: Arc::new(settings) })
    }

    /// Serves the host until `shutdown`; an error means the event source
    /// failed.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let serving =
            tokio::spawn(serve::serve(self.acceptor, self.handle, self.settings, shutdown.clone()));
        let result = self.tracker.run(shutdown.clone()).await;
        shutdown.cancel();
        let _ = serving.await;
        result
    }
}

/// What `hoist-agent` is asked to do.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the host connects.
    pub listen: Addr,
    /// Which kernel hooks to use.
    pub hooks: HookMode,
    /// Only vsock peers with this CID may connect (`None`: any).
    pub accept_cid: Option<u32>,
    /// Also expose listeners bound to non-loopback addresses.
    pub forward_any_address: bool,
    /// Inode of the network namespace whose listeners are tracked.
    pub netns_inum: u32,
}

/// Runs the agent on the kernel's events, in the calling thread's network
/// namespace, until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let source =
        KernelSource::load(config.hooks, config.netns_inum).context("loading the eBPF programs")?;
    let hooks = source.hooks();
    let settings = Settings {
        accept_cid: config.accept_cid,
        forward_any_address: config.forward_any_address,
        description: format!("hoist-agent {} ({hooks} hooks)", env!("CARGO_PKG_VERSION")),
    };
    let acceptor = Acceptor::bind(&config.listen).await?;
    let agent = Agent::new(source, acceptor, settings)?;
    info!(event = "agent_ready", listen = %config.listen, hooks = %hooks, netns = config.netns_inum, "agent ready");
    agent.run(shutdown).await
}
