//! The host relay. Data path, in file order: `control` (the control stream
//! from the agent, reconnecting with backoff) -> `forwards` (one owned handle
//! per mirrored guest listener) -> `listener` (accepts on the host's loopback)
//! -> `data` (each accepted client carried over a data connection to the
//! agent, taken from the session's `pool`). A UDP forward is `udp`: its
//! socket, its flow table, a data connection per flow.
#![forbid(unsafe_code)]

mod admin;
mod control;
mod data;
mod discovery;
mod forwards;
pub mod install;
mod listener;
#[cfg(windows)]
mod listener_windows;
mod pool;
mod rules;
mod status;
mod udp;

use hoist_net::{Addr, Limit, Traffic};
use hoist_wire::{AgentInfo, Endpoint, Forward, Token};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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
    /// Client connections carried at once; beyond it new clients are reset
    /// and counted. A UDP flow counts as one.
    pub max_connections: usize,
    /// Where the forwarding rules come from.
    pub rules: RuleSource,
    /// The local socket `hoist-host status` and `reload` talk to (none:
    /// no such socket).
    pub admin_socket: Option<PathBuf>,
    /// A UDP flow with no datagram either way for this long ends.
    pub udp_idle_timeout: Duration,
    /// The current session's data connections.
    pool: pool::DataPool,
    /// The bound on client connections (from `max_connections`, fitted to
    /// the open-file limit when the relay starts).
    limit: Limit,
    /// For `hvsock:wsl:<port>`, the WSL VM found last.
    target: discovery::Target,
}

/// Where the forwarding rules come from: `--rule` flags, then a config
/// file. Read at start-up and again on every reload.
#[derive(Clone, Debug, Default)]
pub struct RuleSource {
    /// `--rule` flags, in order.
    pub flags: Vec<String>,
    /// The config file.
    pub file: Option<PathBuf>,
    /// Whether a missing file is an error (it is when named with
    /// `--config`; the default location may well hold nothing).
    pub file_required: bool,
    /// `--forward-any-address`.
    pub forward_any_address: bool,
}

impl RuleSource {
    /// Reads and checks the rules; a bad file is an error naming
    /// `file:line:column`.
    pub fn load(&self) -> anyhow::Result<rules::Rules> {
        let text = match &self.file {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(t) => Some((path.display().to_string(), t)),
                // The default location may hold nothing, or sit where this
                // user cannot look (another user's home).
                Err(e)
                    if !self.file_required
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                        ) =>
                {
                    None
                }
                Err(e) => anyhow::bail!("reading the config file {}: {e}", path.display()),
            },
            None => None,
        };
        let file = text.as_ref().map(|(o, t)| (o.as_str(), t.as_str()));
        Ok(rules::Rules::parse(&self.flags, file)?
            .with_forward_any_address(self.forward_any_address))
    }

    /// Where the rules come from, in words.
    pub fn describe(&self, n: usize) -> String {
        let from = match (&self.file, self.flags.is_empty()) {
            (Some(f), true) => f.display().to_string(),
            (Some(f), false) => format!("--rule flags and {}", f.display()),
            (None, false) => "--rule flags".into(),
            (None, true) => "no rules".into(),
        };
        format!("{n} rule{} ({from})", if n == 1 { "" } else { "s" })
    }
}

/// Where the rules file is looked for unless `--config` names one:
/// `/etc/hoist/host.toml` for root, `$XDG_CONFIG_HOME/hoist/host.toml` (or
/// `~/.config/hoist/host.toml`) for others, `%APPDATA%\\hoist\\host.toml` on
/// Windows.
pub fn default_config_path() -> Option<PathBuf> {
    #[cfg(unix)]
    {
        if hoist_net::effective_uid() == 0 {
            return Some(PathBuf::from("/etc/hoist/host.toml"));
        }
        let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
            Some(d) => PathBuf::from(d),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".config"),
        };
        Some(base.join("hoist").join("host.toml"))
    }
    #[cfg(windows)]
    {
        Some(PathBuf::from(std::env::var_os("APPDATA")?).join("hoist").join("host.toml"))
    }
}

/// The liveness timeout unless configured.
pub const DEFAULT_LIVENESS_TIMEOUT: Duration = Duration::from_secs(15);

/// How long forwards outlive an unreachable agent unless configured.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(30);

/// How long an idle UDP flow lives unless configured.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

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
            max_connections: hoist_net::DEFAULT_MAX_CONNECTIONS,
            rules: RuleSource::default(),
            admin_socket: None,
            udp_idle_timeout: DEFAULT_UDP_IDLE_TIMEOUT,
            pool: Default::default(),
            limit: Limit::new(hoist_net::DEFAULT_MAX_CONNECTIONS),
            target: Default::default(),
        }
    }
}

/// What the relay is doing, published for `hoist-host status`, tests and
/// embedders.
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
    /// The agent of the current (or last) session.
    pub agent: Option<AgentInfo>,
    /// Since when the relay is connected, or trying to be.
    pub since: Option<SystemTime>,
    /// Every endpoint the guest has, and what the host does with it.
    pub forwards: Vec<ForwardStatus>,
    /// Rules in force, and where they come from.
    pub rules: String,
}

/// One guest endpoint as the host handles it.
#[derive(Clone, Debug)]
pub struct ForwardStatus {
    /// The guest listener.
    pub forward: Forward,
    /// Served, in conflict, or ignored.
    pub state: ForwardState,
    /// Since when it is in this state.
    pub since: SystemTime,
    /// Its connections, while served.
    pub stats: Option<Arc<ForwardStats>>,
}

impl PartialEq for ForwardStatus {
    /// Counters move all the time; what a change is made of is the rest.
    fn eq(&self, o: &ForwardStatus) -> bool {
        (&self.forward, &self.state, self.since) == (&o.forward, &o.state, o.since)
    }
}

impl Eq for ForwardStatus {}

/// What the host does with a guest endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForwardState {
    /// Its host port answers.
    Serving {
        /// Where.
        host: SocketAddr,
        /// The rule that placed it there (`None`: the default).
        rule: Option<String>,
    },
    /// Its host port cannot be had; retried while it lasts.
    Conflict {
        /// The port it wants.
        host: SocketAddr,
        /// Why not, in words.
        why: String,
    },
    /// Not served, by a rule or by default.
    Ignored {
        /// Why.
        why: String,
    },
}

/// A served forward's connections, counted as they happen.
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Carried now.
    pub open: AtomicU64,
    /// Carried since the forward opened.
    pub total: AtomicU64,
    /// Bytes moved, client -> guest (`sent`) and back (`received`).
    pub traffic: Traffic,
}

pub use admin::{reload, show_status};
pub use control::run;
pub use rules::{Decision, Defaults, RuleError, Rules};
