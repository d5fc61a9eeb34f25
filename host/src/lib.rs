//! The host relay. Data path, in file order: `control` (the control stream
//! from the agent, reconnecting with backoff) -> `forwards` (one owned handle
//! per mirrored guest listener) -> `listener` (accepts on the host's loopback)
//! -> `data` (one data connection to the agent per accepted client, relayed).
#![forbid(unsafe_code)]

mod control;
mod data;
mod discovery;
mod forwards;
mod listener;
#[cfg(windows)]
mod listener_windows;

use hoist_net::Addr;
use hoist_wire::Endpoint;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

/// What `hoist-host` is asked to do.
#[derive(Clone, Debug)]
pub struct Config {
    /// How to reach the agent.
    pub guest: Addr,
    /// Where IPv4 forwards listen on the host.
    pub bind_v4: Ipv4Addr,
    /// Where IPv6 forwards listen on the host.
    pub bind_v6: Ipv6Addr,
    /// For `hvsock:wsl:<port>`, the WSL VM found last.
    target: discovery::Target,
}

impl Config {
    /// Reaches the agent at `guest`; forwards listen on loopback.
    pub fn new(guest: Addr) -> Config {
        Config {
            guest,
            bind_v4: Ipv4Addr::LOCALHOST,
            bind_v6: Ipv6Addr::LOCALHOST,
            target: Default::default(),
        }
    }

    /// Where data connections go now: `guest`, or the WSL VM found last.
    fn agent_addr(&self) -> Addr {
        self.target.current(&self.guest)
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
}

pub use control::run;
