//! The host relay. Data path, in file order: `control` (the control stream
//! from the agent, reconnecting with backoff) -> `forwards` (one owned handle
//! per mirrored guest listener) -> `listener` (accepts on the host's loopback)
//! -> `data` (one data connection to the agent per accepted client, relayed).
#![forbid(unsafe_code)]

mod control;
mod data;
mod discovery;
mod forwards;
pub mod install;
mod listener;
#[cfg(windows)]
mod listener_windows;

use hoist_net::Addr;
use hoist_wire::{Endpoint, Ticket, Token};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// What `hoist-host` is asked to do.
#[derive(Clone, Debug)]
pub struct Config {
    /// How to reach the agent.
    pub guest: Addr,
    /// Where IPv4 forwards listen on the host.
    pub bind_v4: Ipv4Addr,
    /// Where IPv6 forwards listen on the host.
    pub bind_v6: Ipv6Addr,
    /// A shared token the agent must prove it holds.
    pub token: Option<Token>,
    /// An agent silent this long is declared dead (pinged every third of it);
    /// zero turns liveness off.
    pub liveness_timeout: Duration,
    /// Forwards are closed once the agent has been unreachable this long.
    pub stale_after: Duration,
    /// What data connections need from the current session.
    link: Link,
    /// For `hvsock:wsl:<port>`, the WSL VM found last.
    target: discovery::Target,
}

/// The liveness timeout unless configured.
pub const DEFAULT_LIVENESS_TIMEOUT: Duration = Duration::from_secs(15);

/// How long forwards outlive an unreachable agent unless configured.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(30);

impl Config {
    /// Reaches the agent at `guest`; forwards listen on loopback.
    pub fn new(guest: Addr) -> Config {
        Config {
            guest,
            bind_v4: Ipv4Addr::LOCALHOST,
            bind_v6: Ipv6Addr::LOCALHOST,
            token: None,
            liveness_timeout: DEFAULT_LIVENESS_TIMEOUT,
            stale_after: DEFAULT_STALE_AFTER,
            link: Link::default(),
            target: Default::default(),
        }
    }
}

/// The agent's address and the current session's ticket, for data
/// connections; empty while no session is up.
#[derive(Clone, Debug, Default)]
struct Link(Arc<RwLock<Option<(Addr, Ticket)>>>);

impl Link {
    fn set(&self, addr: Addr, ticket: Ticket) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some((addr, ticket));
    }
    fn clear(&self) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = None;
    }
    fn get(&self) -> Option<(Addr, Ticket)> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What the relay is doing, published for tests and embedders.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// A control stream to the agent is up and its snapshot applied.
    pub connected: bool,
    /// Control sessions established so far.
    pub sessions: u64,
    /// Endpoints listening on the host.
    pub serving: BTreeSet<Endpoint>,
    /// Endpoints the guest has but the host could not bind (port taken).
    pub conflicts: BTreeSet<Endpoint>,
    /// Why the last session ended or could not start, while not connected.
    pub last_error: Option<String>,
}

pub use control::run;
