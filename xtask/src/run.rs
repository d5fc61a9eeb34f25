//! `cargo xtask run`: the local demo with no VM. A network namespace plays the
//! guest; hoist-agent runs inside it and hoist-host outside, over a Unix
//! socket. Both logs stream to the terminal; Ctrl-C tears everything down.

use crate::build::build;
use crate::setup::apt;
use crate::util::{require_root, run as run_cmd, say};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const NS: &str = "hoist-demo";
const DIR: &str = "/run/hoist-demo";

#[derive(clap::Args)]
pub struct RunArgs {
    /// Extra arguments for both binaries (e.g. -- --log-format json).
    #[arg(last = true)]
    pub extra: Vec<String>,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn run(args: RunArgs) -> Result<()> {
    require_root("cargo xtask run")?;
    let built = build()?;
    apt(&[("ip", "iproute2")])?;
    let _ = Command::new("ip").args(["netns", "del", NS]).stderr(Stdio::null()).status();
    run_cmd(Command::new("ip").args(["netns", "add", NS]), "ip netns add")?;
    let _cleanup = Cleanup;
    run_cmd(Command::new("ip").args(["-n", NS, "link", "set", "lo", "up"]), "bringing lo up in the demo namespace")?;
    std::fs::create_dir_all(DIR).with_context(|| format!("creating {DIR}"))?;
    let sock = Path::new(DIR).join("agent.sock");
    let _ = std::fs::remove_file(&sock);

    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let mut agent = spawn(
        "agent",
        Command::new("ip")
            .args(["netns", "exec", NS])
            .arg(&built.agent)
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .args(&args.extra),
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        if let Some(status) = agent.try_wait()? {
            bail!("hoist-agent exited during start-up ({status})");
        }
        if Instant::now() > deadline {
            let _ = agent.kill();
            bail!("hoist-agent did not create {} within 20 s", sock.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut host = spawn("host ", Command::new(&built.host).arg("--guest").arg(format!("unix:{}", sock.display())).args(&args.extra))?;
    eprintln!();
    eprintln!("  hoist is running. The guest is the network namespace '{NS}'. Try, in another terminal:");
    eprintln!("    sudo ip netns exec {NS} python3 -m http.server 8000");
    eprintln!("    curl http://127.0.0.1:8000/");
    eprintln!("  Stop the server and port 8000 closes on the host at once. Ctrl-C here ends the demo.");
    eprintln!();
    let result = loop {
        if STOP.load(Ordering::SeqCst) {
            break Ok(());
        }
        if let Some(s) = agent.try_wait()? {
            break Err(anyhow::anyhow!("hoist-agent exited ({s})"));
        }
        if let Some(s) = host.try_wait()? {
            break Err(anyhow::anyhow!("hoist-host exited ({s})"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    say("stopping");
    for c in [&mut host, &mut agent] {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let _ = c.wait();
    }
    result
}

/// Removes the namespace and socket directory however the demo ends.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", NS]).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(DIR);
    }
}

/// Starts a process whose log lines are printed with a prefix.
fn spawn(name: &'static str, cmd: &mut Command) -> Result<Child> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    for pipe in [child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>), child.stderr.take().map(|p| Box::new(p) as _)]
        .into_iter()
        .flatten()
    {
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("{name} | {line}");
            }
        });
    }
    Ok(child)
}
