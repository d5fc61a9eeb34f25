//! The control stream from the agent: connect, say hello, check who answered
//! (and, with a shared token, that it holds the token), take the full
//! snapshot (the truth, replacing whatever the host held), then apply changes
//! as they come and ping the agent so that a silent one is noticed. When the
//! agent goes away the forwards stay up for a while and the relay reconnects
//! with backoff; the next snapshot closes whatever vanished, and an agent
//! that stays away past `stale_after` takes its forwards with it.
//!
//! Timers exist only while they have work: the ping while a session is up,
//! the conflict retry while a port is in conflict, the backoff while the
//! agent is away.

use crate::admin::Reload;
use crate::forwards::Forwards;
use crate::{Config, Status};
use anyhow::{anyhow, Context, Result};
use hoist_net::admin::AdminListener;
use hoist_net::{classify_failure, connect, ConnectFailure, Limit, Stream};
use hoist_wire::{
    random, AgentInfo, AgentMsg, Conn, Forward, HostMsg, Message, Ticket, WireError,
    HANDSHAKE_TIMEOUT, MAX_FORWARDS, PROTOCOL_VERSION,
};
use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;
use tokio::sync::mpsc;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How long a whole snapshot may take to arrive, all parts together.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the relay until `shutdown`, publishing its state on `status`. An
/// error means hoist-host cannot work as configured (no vsock in this
/// kernel, a path that is not a socket): it should exit and say why.
pub async fn run(
    config: Config,
    status: watch::Sender<Status>,
    shutdown: CancellationToken,
) -> Result<()> {
    hoist_net::check_target(&config.guest)?;
    let mut config = config;
    // Each client connection holds two descriptors (it and its data
    // connection); idle data connections and listeners need a reserve.
    let reserve = 256 + hoist_wire::MAX_IDLE_DATA;
    let max = Limit::fitting(config.max_connections, hoist_net::open_file_limit(), 2, reserve);
    if max < config.max_connections {
        warn!(event = "connection_limit_lowered", max, "the open-file limit allows only {max} client connections at once (wanted {}): raise it (ulimit -n, LimitNOFILE=)", config.max_connections);
    }
    config.limit = Limit::new(max);
    let rules = config.rules.load()?;
    let config = Arc::new(config);
    let mut forwards = Forwards::new(config.clone(), rules);
    status.send_modify(|st| {
        forwards.fill_status(st);
        st.since = Some(SystemTime::now());
    });
    // Reloads come from `hoist-host reload` (the admin socket) and SIGHUP.
    let (reload_tx, mut reloads) = mpsc::channel::<Reload>(4);
    // Forwarding matters more than the status view: an admin socket that
    // cannot be had is said, not fatal.
    if let Some(path) = &config.admin_socket {
        match AdminListener::bind(path).await {
            Ok(listener) => {
                debug!(path = %path.display(), "admin socket open");
                let subscriber = status.subscribe();
                let (c, r, s) = (config.clone(), reload_tx.clone(), shutdown.clone());
                tokio::spawn(crate::admin::serve(listener, c, subscriber, r, s));
            }
            Err(e) => {
                warn!(event = "admin_socket_unavailable", path = %path.display(), "{e:#}; `hoist-host status` and `reload` will not reach this relay (SIGHUP still reloads)")
            }
        }
    }
    #[cfg(unix)]
    tokio::spawn(reload_on_sighup(reload_tx.clone(), shutdown.clone()));
    let mut backoff = BACKOFF_MIN;
    let mut said: Option<String> = None;
    let mut away_since: Option<Instant> = None;
    loop {
        let r = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = session(&config, &mut forwards, &status, &mut reloads) => r,
        };
        config.pool.stop();
        let (e, established) = match r {
            Ok(()) => (anyhow!("the agent closed the control stream"), true),
            Err(x) => (x.error, x.established),
        };
        if established {
            backoff = BACKOFF_MIN;
            said = None;
            away_since = Some(Instant::now());
            status.send_modify(|s| s.since = Some(SystemTime::now()));
        }
        away_since.get_or_insert_with(Instant::now);
        let line = match e.downcast_ref::<Unreachable>() {
            Some(Unreachable(ConnectFailure::Fatal(why))) => {
                return Err(anyhow!("{why}"))
                    .with_context(|| format!("connecting to {}", config.guest));
            }
            Some(Unreachable(ConnectFailure::NotYet(why))) => format!("waiting: {why}"),
            _ => format!("{e:#}"),
        };
        status.send_modify(|s| {
            s.connected = false;
            s.last_error = Some(line.clone());
        });
        // One line per state, not one per retry.
        if said.as_deref() != Some(line.as_str()) {
            warn!(event = "reconnect", guest = %config.guest, reason = %line, retry_in_ms = backoff.as_millis() as u64, "agent unreachable: {line}; retrying until it answers");
            said = Some(line);
        } else {
            debug!(guest = %config.guest, "agent still unreachable");
        }
        let wake = Instant::now() + backoff;
        loop {
            let stale_at =
                away_since.map(|t| t + config.stale_after).filter(|_| !forwards.is_empty());
            tokio::select! {
                _ = shutdown.cancelled() => {
                    info!(event = "shutdown", "host relay stopping");
                    return Ok(());
                }
                _ = tokio::time::sleep_until(wake) => break,
                _ = sleep_until_some(forwards.next_retry()) => {
                    forwards.retry_conflicts();
                    status.send_modify(|st| forwards.fill_status(st));
                }
                Some(reply) = reloads.recv() => reload(&config, &mut forwards, &status, reply).await,
                _ = sleep_until_some(stale_at) => {
                    let n = forwards.len();
                    forwards.clear();
                    status.send_modify(|st| forwards.fill_status(st));
                    warn!(event = "forwards_dropped", count = n, unreachable_s = config.stale_after.as_secs(), "the agent has been unreachable for {:?}: closed its {n} forwards", config.stale_after);
                }
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    info!(event = "shutdown", "host relay stopping");
    Ok(())
}

/// Puts the rules in force anew: re-read, checked, and applied to every
/// endpoint; refused with the reason (the old rules stay) when bad.
async fn reload(
    config: &Config,
    forwards: &mut Forwards,
    status: &watch::Sender<Status>,
    reply: Reload,
) {
    let outcome = match config.rules.load() {
        Ok(rules) => {
            let what = config.rules.describe(rules.len());
            forwards.set_rules(rules);
            forwards.settle().await;
            status.send_modify(|st| forwards.fill_status(st));
            info!(event = "rules_reloaded", rules = %what, "rules reloaded: {what}");
            Ok(what)
        }
        Err(e) => {
            let e = format!("{e:#}");
            warn!(event = "rules_refused", reason = %e, "new rules refused, the old ones stay in force: {e}");
            Err(e)
        }
    };
    let _ = reply.send(outcome);
}

/// Asks for a reload on every SIGHUP.
#[cfg(unix)]
async fn reload_on_sighup(reloads: mpsc::Sender<Reload>, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            got = hup.recv() => {
                if got.is_none() {
                    return;
                }
                info!("SIGHUP: reloading the rules");
                // Nobody waits for the outcome: the log says it.
                let (tx, _) = tokio::sync::oneshot::channel();
                if reloads.send(tx).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A connect that failed, and what that means.
#[derive(Debug)]
struct Unreachable(ConnectFailure);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            ConnectFailure::Fatal(why) | ConnectFailure::NotYet(why) => f.write_str(why),
            ConnectFailure::Retry => f.write_str("unreachable"),
        }
    }
}

impl std::error::Error for Unreachable {}

/// Why a session ended, and whether it had got as far as a synced table.
struct Ended {
    error: anyhow::Error,
    established: bool,
}

fn before(error: anyhow::Error) -> Ended {
    Ended { error, established: false }
}

async fn session(
    config: &Config,
    forwards: &mut Forwards,
    status: &watch::Sender<Status>,
    reloads: &mut mpsc::Receiver<Reload>,
) -> Result<(), Ended> {
    // hvsock:wsl: finds the WSL VM anew before each connect (its id changes).
    let addr = config.target.resolve(&config.guest).await.map_err(before)?;
    let s = match connect(&addr).await {
        Ok(s) => s,
        Err(e) => {
            let kind = classify_failure(&addr, &e);
            return Err(before(match kind {
                ConnectFailure::Retry => e,
                other => Unreachable(other).into(),
            }));
        }
    };
    let mut conn = Conn::new(s);
    let (agent, ticket, table) = handshake(&mut conn, config).await.map_err(before)?;
    // The pool first: a forward's port takes clients the moment it opens,
    // and each needs the session's data connections.
    config.pool.start(addr, ticket);
    forwards.resync(table);
    forwards.settle().await;
    status.send_modify(|st| {
        st.connected = true;
        st.last_error = None;
        st.sessions += 1;
        st.agent = Some(agent.clone());
        st.since = Some(SystemTime::now());
        forwards.fill_status(st);
    });
    info!(event = "connected", guest = %config.guest, agent_version = %agent.version, hooks = %agent.hooks, agent_pid = agent.pid, "connected to hoist-agent {} (pid {}, {} hooks); table in sync", agent.version, agent.pid, agent.hooks);
    let established = |error: anyhow::Error| Ended { error, established: true };
    // Liveness: a ping every third of the timeout; any frame from the agent
    // proves it alive, and silence for the whole timeout ends the session.
    let timeout = config.liveness_timeout;
    let mut last_heard = Instant::now();
    let mut next_ping = Instant::now() + timeout / 3;
    let mut seq = 0u32;
    loop {
        let dead_at = last_heard + timeout;
        tokio::select! {
            r = conn.recv::<AgentMsg>() => {
                let msg = match r {
                    Ok(Some(m)) => m,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(established(anyhow::Error::new(e).context("reading the control stream"))),
                };
                last_heard = Instant::now();
                match msg {
                    AgentMsg::Added(f) => forwards.add(f),
                    AgentMsg::Removed(e) => forwards.remove(e),
                    AgentMsg::Pong { .. } => continue,
                    other => {
                        let e = WireError::Unexpected { wanted: "Added, Removed or Pong", got: other.name() };
                        return Err(established(e.into()));
                    }
                }
                forwards.settle().await;
                status.send_modify(|st| forwards.fill_status(st));
            }
            _ = tokio::time::sleep_until(next_ping), if !timeout.is_zero() => {
                seq = seq.wrapping_add(1);
                conn.send(&HostMsg::Ping { seq }).await.map_err(|e| established(e.into()))?;
                next_ping += timeout / 3;
            }
            _ = tokio::time::sleep_until(dead_at), if !timeout.is_zero() => {
                return Err(established(anyhow!("the agent stayed silent for {timeout:?} (no answer to liveness pings)")));
            }
            _ = sleep_until_some(forwards.next_retry()) => {
                forwards.retry_conflicts();
                status.send_modify(|st| forwards.fill_status(st));
            }
            Some(reply) = reloads.recv() => reload(config, forwards, status, reply).await,
        }
    }
}

/// Hello, welcome (checked, and answered with a proof when the agent holds a
/// token), and the full snapshot: bounded in time and in size.
async fn handshake(
    conn: &mut Conn<Stream>,
    config: &Config,
) -> Result<(AgentInfo, Ticket, Vec<Forward>)> {
    let nonce = random::<16>();
    let ping_interval_ms = (config.liveness_timeout / 3).as_millis().min(u32::MAX as u128) as u32;
    conn.send_all([
        &HostMsg::Control { version: PROTOCOL_VERSION },
        &HostMsg::Hello { nonce, ping_interval_ms },
    ])
    .await?;
    let (agent, ticket, challenge) = match conn
        .recv_within(HANDSHAKE_TIMEOUT)
        .await
        .context("waiting for the welcome")?
    {
        AgentMsg::Welcome { version, agent, ticket, challenge } if version == PROTOCOL_VERSION => {
            (agent, ticket, challenge)
        }
        AgentMsg::Welcome { version, .. } => {
            return Err(WireError::Version { ours: PROTOCOL_VERSION, theirs: version }.into())
        }
        AgentMsg::Refused { reason } => return Err(WireError::Refused(reason).into()),
        other => return Err(WireError::Unexpected { wanted: "Welcome", got: other.name() }.into()),
    };
    match (&config.token, challenge) {
        (None, None) => {}
        (Some(token), Some(c)) => {
            if !token.verify_agent(&nonce, &c.nonce, &c.proof) {
                anyhow::bail!("the agent's proof of the shared token is wrong: it is not the agent you trust, or the token files differ");
            }
            conn.send(&HostMsg::Auth { proof: token.host_proof(&c.nonce, &nonce) }).await?;
        }
        (Some(_), None) => anyhow::bail!("the agent did not prove the shared token: it runs without --token-file, or it is not the agent you trust"),
        (None, Some(_)) => anyhow::bail!("the agent requires a shared token: start hoist-host with --token-file"),
    }
    let mut table = Vec::new();
    let deadline = Instant::now() + SNAPSHOT_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let part = conn.recv_within(left.min(HANDSHAKE_TIMEOUT)).await;
        match part {
            Ok(AgentMsg::Snapshot { forwards: part, last }) => {
                table.extend(part);
                if table.len() > MAX_FORWARDS {
                    anyhow::bail!("dropping the session: its snapshot exceeds {MAX_FORWARDS} forwards (every port of both families and protocols)");
                }
                if last {
                    return Ok((agent, ticket, table));
                }
            }
            Ok(AgentMsg::Refused { reason }) => return Err(WireError::Refused(reason).into()),
            Ok(other) => {
                return Err(WireError::Unexpected { wanted: "Snapshot", got: other.name() }.into())
            }
            Err(WireError::Timeout(_)) if Instant::now() >= deadline => {
                anyhow::bail!(
                    "dropping the session: its snapshot took longer than {SNAPSHOT_TIMEOUT:?}"
                )
            }
            Err(e) => return Err(anyhow::Error::new(e).context("waiting for the snapshot")),
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use tokio::net::UnixStream;

    /// Parts that each come in time but never end are cut off once the whole
    /// snapshot has taken SNAPSHOT_TIMEOUT.
    #[tokio::test(start_paused = true)]
    async fn a_snapshot_that_takes_too_long_is_cut_off() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let agent = tokio::spawn(async move {
            let mut conn = Conn::new(theirs);
            let _ = conn.recv::<HostMsg>().await;
            let _ = conn.recv::<HostMsg>().await;
            let info = AgentInfo { version: "x".into(), hooks: "x".into(), pid: 1 };
            let welcome = AgentMsg::Welcome {
                version: PROTOCOL_VERSION,
                agent: info,
                ticket: [0; 16],
                challenge: None,
            };
            conn.send(&welcome).await.unwrap();
            loop {
                let part = AgentMsg::Snapshot { forwards: vec![], last: false };
                if conn.send(&part).await.is_err() {
                    return;
                }
                tokio::time::sleep(HANDSHAKE_TIMEOUT - Duration::from_secs(1)).await;
            }
        });
        let config = Config::new("unix:/unused".parse().unwrap());
        let started = Instant::now();
        let err = handshake(&mut Conn::new(Stream::Unix(ours)), &config).await.unwrap_err();
        assert!(format!("{err:#}").contains("took longer than"), "{err:#}");
        assert!(
            started.elapsed() >= SNAPSHOT_TIMEOUT
                && started.elapsed() < SNAPSHOT_TIMEOUT + HANDSHAKE_TIMEOUT
        );
        agent.abort();
    }
}
