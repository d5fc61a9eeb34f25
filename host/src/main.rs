//! `hoist-host`: command line and signal handling.

use anyhow::{bail, Result};
use clap::{CommandFactory, Parser, Subcommand};
use hoist_host::{Config, RuleSource, Status};
use hoist_net::{Addr, LogFormat};
use std::net::IpAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// Host relay of hoist: mirrors every TCP listener and UDP server of the guest on this host's
/// loopback.
///
/// Without a subcommand it runs the relay (as `hoist-host run`).
#[derive(Parser, Debug)]
#[command(version = env!("HOIST_VERSION"), args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: Option<RunArgs>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the relay (what `hoist-host --guest ...` without a subcommand does).
    Run(Box<RunArgs>),
    /// Show what the running relay forwards: host address, guest listener, process, state,
    /// connections, bytes.
    Status(StatusArgs),
    /// Make the running relay read its rules again (as SIGHUP does); a bad file is refused with
    /// file:line:column and the old rules stay in force.
    Reload(AdminArgs),
    /// Hidden: `completions <shell>` and `man [--dir DIR]` (cargo xtask dist).
    #[command(flatten)]
    Docs(hoist_net::docs::DocsCmd),
    /// Start the relay at each logon of the current user, no admin needed (the HKCU Run key):
    /// `run --guest hvsock:wsl:1023 --log-file %LOCALAPPDATA%\hoist\hoist-host.log`.
    #[cfg(windows)]
    Install(InstallArgs),
    /// Remove the logon entry `install` wrote.
    #[cfg(windows)]
    Uninstall,
}

/// What `install` puts in the logon entry.
#[cfg(windows)]
#[derive(clap::Args, Debug)]
struct InstallArgs {
    /// How the relay reaches the agent.
    #[arg(long, default_value = hoist_host::install::DEFAULT_GUEST)]
    guest: String,
    /// Where the relay logs (default: %LOCALAPPDATA%\hoist\hoist-host.log).
    #[arg(long)]
    log_file: Option<std::path::PathBuf>,
    /// More options for `hoist-host run`, after `--` (e.g. `-- --token-file C:\hoist\token`).
    #[arg(last = true)]
    run_args: Vec<String>,
}

/// Which relay to ask.
#[derive(clap::Args, Debug)]
struct AdminArgs {
    /// The relay's admin socket (a named pipe on Windows); default: this user's.
    #[arg(long)]
    admin_socket: Option<PathBuf>,
}

/// How to show the status.
#[derive(clap::Args, Debug)]
struct StatusArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Stream changes as they happen, one JSON object per line (the first is the whole status).
    #[arg(long)]
    watch: bool,
}

/// How to run the relay.
#[derive(clap::Args, Debug)]
struct RunArgs {
    /// How to reach the agent: vsock:<cid>:<port>, vsock-mux:<path>:<port> (Firecracker,
    /// Cloud Hypervisor, vhost-device-vsock), unix:<path>, tcp:<ip>:<port>, or on Windows
    /// hvsock:<vm-guid|wsl>:<port> (wsl: the running WSL2 VM, found at each connect).
    #[arg(long)]
    guest: Addr,
    /// Host address for forwards instead of loopback: one IPv4 and/or one IPv6 address.
    #[arg(long = "bind-address")]
    bind_address: Vec<IpAddr>,
    /// A file holding the shared secret the agent was given (--token-file there): the agent must
    /// prove it holds it before its table is believed.
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
    /// Seconds of silence after which the agent is declared dead and the host reconnects (it is
    /// pinged every third of this); 0 turns liveness off.
    #[arg(long, default_value_t = hoist_host::DEFAULT_LIVENESS_TIMEOUT.as_secs())]
    liveness_timeout: u64,
    /// Seconds the forwards stay up while the agent is unreachable; then they close until it is
    /// back.
    #[arg(long, default_value_t = hoist_host::DEFAULT_STALE_AFTER.as_secs())]
    stale_after: u64,
    /// Client connections carried at once; beyond it new clients are reset and counted. Lowered
    /// at start-up if the open-file limit cannot cover it. A UDP flow counts as one.
    #[arg(long, default_value_t = hoist_net::DEFAULT_MAX_CONNECTIONS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Forwarding rules (TOML, [[rule]] tables); default: /etc/hoist/host.toml for root,
    /// ~/.config/hoist/host.toml for others (%APPDATA%\hoist\host.toml on Windows), if it exists.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A forwarding rule as key=value pairs, e.g. port=22,action=ignore or
    /// port=8000-8100,host_port_offset=1000 (the config file's keys); before the file's rules.
    #[arg(long = "rule")]
    rules: Vec<String>,
    /// Also forward guest listeners bound to non-loopback addresses (at the host's loopback).
    #[arg(long)]
    forward_any_address: bool,
    /// Where `hoist-host status` and `reload` reach this relay; default: this user's.
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// Seconds a UDP flow (one client address of a UDP forward) may be idle, no datagram either
    /// way, before it ends and its sockets close on both sides.
    #[arg(long, default_value_t = hoist_host::DEFAULT_UDP_IDLE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    udp_idle_timeout: u64,
    /// Log lines as text or as one JSON object per line; filter with RUST_LOG.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Append the log to this file instead of stderr (on Windows, a relay started on its own
    /// then lets go of its console window).
    #[arg(long)]
    log_file: Option<std::path::PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    match (cli.cmd, cli.run) {
        (Some(Cmd::Run(args)), _) => run(*args),
        (None, Some(args)) => run(args),
        (Some(Cmd::Status(args)), _) => {
            let path = admin_path(&args.admin);
            hoist_net::admin::run_client("hoist-host", async move {
                hoist_host::show_status(&path, args.json, args.watch).await
            })
        }
        (Some(Cmd::Reload(args)), _) => {
            let path = admin_path(&args);
            hoist_net::admin::run_client(
                "hoist-host",
                async move { hoist_host::reload(&path).await },
            )
        }
        (Some(Cmd::Docs(d)), _) => hoist_net::docs::run_and_exit(&d, Cli::command()),
        #[cfg(windows)]
        (Some(Cmd::Install(args)), _) => done(install(args)),
        #[cfg(windows)]
        (Some(Cmd::Uninstall), _) => done(hoist_host::install::uninstall()),
        // clap requires --guest when there is no subcommand.
        (None, None) => unreachable!("clap requires the run arguments without a subcommand"),
    }
}

fn admin_path(args: &AdminArgs) -> PathBuf {
    args.admin_socket.clone().unwrap_or_else(|| hoist_net::admin::default_path("hoist-host"))
}

fn run(args: RunArgs) -> ! {
    let log_file = args.log_file.clone();
    #[cfg(windows)]
    if log_file.is_some() {
        // Started at logon Windows opens a console window for this process
        // alone; its log goes to the file.
        hoist_net::release_own_console();
    }
    hoist_net::run_main_logging_to("hoist-host", args.log_format, log_file.as_deref(), || {
        real_main(args)
    })
}

/// Prints what a one-shot command says, or its error; exits.
#[cfg(windows)]
fn done(r: Result<String>) -> ! {
    match r {
        Ok(said) => {
            println!("{said}");
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("hoist-host: {e:#}");
            std::process::exit(1)
        }
    }
}

/// Checks the run options as `run` will parse them, then writes the logon
/// entry.
#[cfg(windows)]
fn install(a: InstallArgs) -> Result<String> {
    use anyhow::Context;
    use hoist_host::install;
    let log_file = match a.log_file {
        Some(f) => f,
        None => {
            let local = std::env::var_os("LOCALAPPDATA")
                .context("LOCALAPPDATA is not set: pass --log-file")?;
            install::default_log_file(std::path::Path::new(&local))
        }
    };
    let args = install::run_args(&a.guest, &log_file.display().to_string(), &a.run_args);
    let parsed = Cli::try_parse_from(std::iter::once("hoist-host".to_string()).chain(args.clone()))
        .map_err(|e| anyhow::anyhow!("these run options would not start: {e}"))?;
    if let Some(Cmd::Run(run)) = parsed.cmd {
        config(&run)?;
    }
    let exe = std::env::current_exe().context("finding this executable's path")?;
    install::install(&exe, &args, &log_file)
}

fn config(args: &RunArgs) -> Result<Config> {
    let mut c = Config::new(args.guest.clone());
    c.token = args.token_file.as_deref().map(hoist_net::read_token_file).transpose()?;
    c.liveness_timeout = std::time::Duration::from_secs(args.liveness_timeout);
    c.stale_after = std::time::Duration::from_secs(args.stale_after);
    c.max_connections = args.max_connections as usize;
    c.rules = RuleSource {
        flags: args.rules.clone(),
        file: args.config.clone().or_else(hoist_host::default_config_path),
        file_required: args.config.is_some(),
        forward_any_address: args.forward_any_address,
    };
    c.admin_socket = Some(
        args.admin_socket.clone().unwrap_or_else(|| hoist_net::admin::default_path("hoist-host")),
    );
    c.udp_idle_timeout = std::time::Duration::from_secs(args.udp_idle_timeout);
    let (mut v4, mut v6) = (0, 0);
    for a in &args.bind_address {
        match a {
            IpAddr::V4(a) => {
                c.bind_v4 = *a;
                v4 += 1;
            }
            IpAddr::V6(a) => {
                c.bind_v6 = *a;
                v6 += 1;
            }
        }
    }
    if v4 > 1 || v6 > 1 {
        bail!("--bind-address takes at most one IPv4 and one IPv6 address");
    }
    Ok(c)
}

fn real_main(args: RunArgs) -> Result<()> {
    let config = config(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(hoist_net::stop_on_signal(shutdown.clone()));
        let (status, _) = tokio::sync::watch::channel(Status::default());
        hoist_host::run(config, status, shutdown).await
    })
}

#[cfg(test)]
mod cli_tests;
