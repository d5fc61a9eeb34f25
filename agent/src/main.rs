//! `hoist-agent`: command line, namespace entry and signal handling.
#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use clap::Parser;
use hoist_agent::{Config, HookMode};
use hoist_net::{Addr, LogFormat, CID_HOST};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// Guest agent of hoist: watches TCP listeners with eBPF and serves them to the host relay.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Where the host connects: vsock:<cid|any>:<port> (in a VM) or unix:<path> (tests, demo).
    #[arg(long, default_value = "vsock:any:1024")]
    listen: Addr,
    /// Network namespace to watch and dial in (a file such as /run/netns/NAME); default: the agent's own.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Kernel hooks: trampoline (fexit/fentry), tracepoint (tp_btf), or auto (the best the kernel allows).
    #[arg(long, value_enum, default_value = "auto")]
    hooks: HookMode,
    /// Accept vsock connections only from this CID ("any" to accept every peer).
    #[arg(long, default_value = "2", value_parser = parse_cid)]
    accept_cid: CidFilter,
    /// Also forward listeners bound to non-loopback addresses.
    #[arg(long)]
    forward_any_address: bool,
    /// Log lines as text or as one JSON object per line; filter with RUST_LOG.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug)]
struct CidFilter(Option<u32>);

fn parse_cid(s: &str) -> Result<CidFilter, String> {
    match s {
        "any" => Ok(CidFilter(None)),
        "host" => Ok(CidFilter(Some(CID_HOST))),
        n => n
            .parse()
            .map(|c| CidFilter(Some(c)))
            .map_err(|_| format!("bad CID {n:?}: a number, host or any")),
    }
}

fn main() {
    let args = Args::parse();
    hoist_net::run_main("hoist-agent", args.log_format, || real_main(args))
}

fn real_main(args: Args) -> Result<()> {
    // Enter the namespace before the runtime exists: threads it spawns then
    // inherit it, so every socket the agent makes lives there.
    if let Some(path) = &args.netns {
        let f = std::fs::File::open(path)
            .with_context(|| format!("opening network namespace {}", path.display()))?;
        hoist_agent::enter_netns(&f)
            .with_context(|| format!("entering network namespace {}", path.display()))?;
    }
    let netns_inum = std::fs::metadata("/proc/thread-self/ns/net")
        .context("reading own network namespace")?
        .ino() as u32;
    let config = Config {
        listen: args.listen,
        hooks: args.hooks,
        accept_cid: args.accept_cid.0,
        forward_any_address: args.forward_any_address,
        netns_inum,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(hoist_net::stop_on_signal(shutdown.clone()));
        hoist_agent::run(config, shutdown).await
    })
}
