//! `hoist-agent`: command line, namespace entry and signal handling.
#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use hoist_agent::{check_listen, Config, HookMode};
use hoist_net::{AcceptorOptions, Addr, LogFormat, CID_HOST};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// Guest agent of hoist: watches TCP listeners with eBPF and serves them to the host relay.
///
/// Without a subcommand it runs the agent (as `hoist-agent run`).
#[derive(Parser, Debug)]
#[command(version = env!("HOIST_VERSION"), args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the agent (what `hoist-agent` without a subcommand does).
    Run(RunArgs),
    /// Show what the running agent sees: its listeners (pid, command), hook set, ring-buffer
    /// losses, the connected host, data connections.
    Status(StatusArgs),
    /// Hidden: `completions <shell>` and `man [--dir DIR]` (cargo xtask dist).
    #[command(flatten)]
    Docs(hoist_net::docs::DocsCmd),
    /// Tell whether this kernel and this process can run the agent: one line per need (ok,
    /// missing or refused, and what to do); exit status 0 only when the agent can run.
    Check(CheckArgs),
}

/// What `check` vouches for: the run these options would make.
#[derive(clap::Args, Debug)]
struct CheckArgs {
    /// Where the agent would listen (a vsock address needs a vsock transport).
    #[arg(long, default_value = hoist_agent::DEFAULT_LISTEN)]
    listen: Addr,
    /// The network namespace the agent would watch (a file such as /run/netns/NAME).
    #[arg(long)]
    netns: Option<PathBuf>,
    /// The hook sets the agent may use.
    #[arg(long, value_enum, default_value = "auto")]
    hooks: HookMode,
    /// Print one JSON object instead of lines.
    #[arg(long)]
    json: bool,
}

/// How to show the status.
#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// The agent's admin socket; default: /run/hoist/hoist-agent.sock for root.
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Stream changes as they happen, one JSON object per line (the first is the whole status).
    #[arg(long)]
    watch: bool,
}

/// How to run the agent.
#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Where the host connects: vsock:<cid|any>:<port> (in a VM), unix:<path> (tests, demo),
    /// or tcp:<ip>:<port> (only with --token-file).
    #[arg(long, default_value = hoist_agent::DEFAULT_LISTEN)]
    listen: Addr,
    /// Listen on a vsock port above 1023. Any guest user may bind such a port (only ports up to
    /// 1023 need privilege), and whoever holds the agent's port can pose as the agent to the host:
    /// use this only where every guest user is trusted, or together with --token-file.
    #[arg(long)]
    allow_unprivileged_port: bool,
    /// A file holding a shared secret (16 bytes or more, mode 600) that the host must prove it
    /// holds and this agent proves it holds; the host must be given the same file.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Permission bits of a unix: socket, in octal.
    #[arg(long, default_value = "600", value_parser = parse_mode)]
    socket_mode: u32,
    /// Also accept unix: connections from this user id (root and the agent's own user always may).
    #[arg(long = "allow-uid")]
    allow_uid: Vec<u32>,
    /// Network namespace to watch and dial in (a file such as /run/netns/NAME); default: the agent's own.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Kernel hooks: trampoline (fexit/fentry), tracepoint (tp_btf), or auto (the best the kernel allows).
    #[arg(long, value_enum, default_value = "auto")]
    hooks: HookMode,
    /// Accept vsock connections only from this CID ("any" to accept every peer).
    #[arg(long, default_value = "2", value_parser = parse_cid)]
    accept_cid: CidFilter,
    /// Where `hoist-agent status` reaches this agent; default: /run/hoist/hoist-agent.sock for
    /// root ($XDG_RUNTIME_DIR/hoist/ for others).
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// Client connections carried at once; beyond it new ones are refused (reset) and counted.
    /// Lowered at start-up if the open-file limit cannot cover it.
    #[arg(long, default_value_t = hoist_net::DEFAULT_MAX_CONNECTIONS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
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

fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("bad mode {s:?}: octal permission bits such as 600 or 660")),
    }
}

fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        None => run(cli.run),
        Some(Cmd::Run(args)) => run(args),
        Some(Cmd::Check(args)) => check(args),
        Some(Cmd::Status(args)) => status(args),
        Some(Cmd::Docs(d)) => hoist_net::docs::run_and_exit(&d, Cli::command()),
    }
}

fn status(args: StatusArgs) -> ! {
    let path = args.admin_socket.unwrap_or_else(|| hoist_net::admin::default_path("hoist-agent"));
    hoist_net::admin::run_client(
        "hoist-agent",
        hoist_agent::show_status(&path, args.json, args.watch),
    )
}

fn check(args: CheckArgs) -> ! {
    use hoist_agent::check;
    let config = check::Config { listen: args.listen, netns: args.netns, hooks: args.hooks };
    // Before any thread exists: the probes unshare the mount namespace.
    let items = check::run(&config);
    if args.json {
        println!("{}", check::json(&items, args.hooks));
    } else {
        print!("{}", check::text(&items, args.hooks));
    }
    std::process::exit(if check::verdict(&items, args.hooks).runs { 0 } else { 1 })
}

fn run(args: RunArgs) -> ! {
    hoist_net::run_main("hoist-agent", args.log_format, || real_main(args))
}

fn real_main(args: RunArgs) -> Result<()> {
    let token = args.token_file.as_deref().map(hoist_net::read_token_file).transpose()?;
    check_listen(&args.listen, args.allow_unprivileged_port, token.is_some())?;
    // Enter the namespace before the runtime exists: threads it spawns then
    // inherit it, so every socket the agent makes lives there.
    if let Some(path) = &args.netns {
        let f = std::fs::File::open(path)
            .with_context(|| format!("opening network namespace {}", path.display()))?;
        hoist_agent::enter_netns(&f)
            .with_context(|| format!("entering network namespace {}", path.display()))?;
    }
    let watch = hoist_agent::Watch::current()?;
    let config = Config {
        listen: args.listen,
        acceptor: AcceptorOptions { unix_mode: args.socket_mode },
        hooks: args.hooks,
        accept_cid: args.accept_cid.0,
        allowed_uids: args.allow_uid,
        watch,
        token,
        max_connections: args.max_connections as usize,
        admin_socket: Some(
            args.admin_socket.unwrap_or_else(|| hoist_net::admin::default_path("hoist-agent")),
        ),
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

#[cfg(test)]
mod cli_tests;
