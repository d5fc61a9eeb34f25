//! The guest agent. Data path, in file order: `source` (kernel events from the
//! ring buffer, `sock_diag` snapshots) -> `tracker` (owns the listener
//! `table`) -> `serve` (the door for the host) -> `control` (the stream of
//! changes to the host) and `dial` (data connections from the host, dialled to
//! the guest's local port).

pub mod control;
pub mod dial;
pub mod serve;
pub mod source;
pub mod table;
pub mod tracker;

use anyhow::{Context, Result};
use hoist_proto::transport::{Addr, Listener};
use source::{HookMode, KernelSource};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// What `hoist-agent` is asked to do.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: Addr,
    pub hooks: HookMode,
    /// Only vsock peers with this CID may connect (`None`: any).
    pub accept_cid: Option<u32>,
    pub forward_any_address: bool,
    /// Inode of the network namespace whose listeners are tracked.
    pub netns_inum: u32,
}

/// Runs the agent in the calling thread's network namespace until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let source = KernelSource::load(config.hooks, config.netns_inum).context("loading the eBPF programs")?;
    let hooks = source.hooks();
    let _ = control::AGENT_DESCRIPTION.set(format!("hoist-agent {} ({hooks} hooks)", env!("CARGO_PKG_VERSION")));
    let (tracker, handle) = tracker::Tracker::new(source, Box::new(tracker::diag_snapshot), config.forward_any_address)?;
    let listener = Listener::bind(&config.listen).await?;
    info!(event = "agent_ready", listen = %config.listen, hooks = %hooks, netns = config.netns_inum, "agent ready");
    let serving = tokio::spawn(serve::serve(listener, handle, config.accept_cid, shutdown.clone()));
    let result = tracker.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = serving.await;
    result
}
