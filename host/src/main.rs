//! `hoist-host`: command line and signal handling.

use anyhow::{bail, Result};
use clap::{CommandFactory, Parser, Subcommand};
use hoist_host::{Config, Status};
use hoist_net::{Addr, LogFormat};
use std::net::IpAddr;
use tokio_util::sync::CancellationToken;

/// Host relay of hoist: mirrors every TCP listener of the guest on this host's loopback.
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
    Run(RunArgs),
    /// Hidden: `completions <shell>` and `man [--dir DIR]` (cargo xtask dist).
    #[command(flatten)]
    Docs(hoist_net::docs::DocsCmd),
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
    /// at start-up if the open-file limit cannot cover it.
    #[arg(long, default_value_t = hoist_net::DEFAULT_MAX_CONNECTIONS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Log lines as text or as one JSON object per line; filter with RUST_LOG.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn main() {
    let cli = Cli::parse();
    match (cli.cmd, cli.run) {
        (Some(Cmd::Run(args)), _) | (None, Some(args)) => run(args),
        (Some(Cmd::Docs(d)), _) => hoist_net::docs::run_and_exit(&d, Cli::command()),
        // clap requires --guest when there is no subcommand.
        (None, None) => unreachable!("clap requires the run arguments without a subcommand"),
    }
}

fn run(args: RunArgs) -> ! {
    hoist_net::run_main("hoist-host", args.log_format, || real_main(args))
}

fn config(args: &RunArgs) -> Result<Config> {
    let mut c = Config::new(args.guest.clone());
    c.token = args.token_file.as_deref().map(hoist_net::read_token_file).transpose()?;
    c.liveness_timeout = std::time::Duration::from_secs(args.liveness_timeout);
    c.stale_after = std::time::Duration::from_secs(args.stale_after);
    c.max_connections = args.max_connections as usize;
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
