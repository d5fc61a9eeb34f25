//! `cargo xtask run`: the local demo with no VM. A network namespace plays the
//! guest; hoist-agent runs inside it and hoist-host outside, over a Unix
//! socket. Both logs stream to the terminal with a prefix. Ctrl-C (or
//! SIGTERM) stops both and removes the namespace and the socket folder; if
//! either process exits on its own, the demo is torn down the same way and
//! xtask exits with that process's status.

use crate::build::build;
use crate::sys::Signal;
use crate::util::{exit_code, have, require_root, run as run_cmd, say, Exit};
use anyhow::{Context, Result};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const NS: &str = "hoist-demo";
const DIR: &str = "/run/hoist-demo";
const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(clap::Args)]
pub struct RunArgs {
    /// Extra arguments for both binaries (e.g. -- --log-format json).
    #[arg(last = true)]
    pub extra: Vec<String>,
}

/// Set by SIGINT or SIGTERM.
static STOP: std::sync::LazyLock<Arc<AtomicBool>> = std::sync::LazyLock::new(Default::default);

pub fn run(args: RunArgs) -> Result<()> {
    require_root("cargo xtask run")?;
    let built = build()?;
    crate::sys::flag_on_stop_signals(STOP.clone()).context("installing the signal handlers")?;
    let mut demo = Demo::default();
    let outcome =
        demo.start(&built.agent, &built.host, &args.extra).and_then(|started| match started {
            true => demo.supervise(),
            false => Ok(()),
        });
    say("stopping hoist-host and hoist-agent, removing the namespace and the socket folder");
    drop(demo);
    outcome
}

/// The demo's processes and kernel state; dropping it tears everything down,
/// however the demo ends.
#[derive(Default)]
struct Demo {
    /// In start order; stopped in reverse, so the host does not see its
    /// guest vanish first.
    children: Vec<(&'static str, Child)>,
    logs: Vec<JoinHandle<()>>,
    ns_created: bool,
}

impl Demo {
    /// Returns false when a signal arrived before both were up.
    fn start(&mut self, agent: &Path, host: &Path, extra: &[String]) -> Result<bool> {
        // A demo killed without its clean-up leaves these behind.
        let _ = Command::new("ip").args(["netns", "del", NS]).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(DIR);
        say(format!("creating the network namespace {NS} (the guest) with lo up"));
        run_cmd(Command::new("ip").args(["netns", "add", NS]), &format!("ip netns add {NS}"))?;
        self.ns_created = true;
        run_cmd(
            Command::new("ip").args(["-n", NS, "link", "set", "lo", "up"]),
            "bringing lo up in the demo namespace",
        )?;
        std::fs::create_dir_all(DIR).with_context(|| format!("creating {DIR}"))?;
        let sock = PathBuf::from(DIR).join("agent.sock");
        let listen = format!("unix:{}", sock.display());

        say(format!("starting hoist-agent in {NS}, listening on {listen}"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", NS]).arg(agent).arg("--listen").arg(&listen).args(extra);
        self.spawn("agent", "hoist-agent", &mut cmd)?;
        let deadline = Instant::now() + START_TIMEOUT;
        while !sock.exists() {
            if STOP.load(Ordering::SeqCst) {
                return Ok(false);
            }
            self.check_children()?;
            anyhow::ensure!(
                Instant::now() < deadline,
                "hoist-agent did not create {} within {START_TIMEOUT:?}",
                sock.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }

        say(format!("starting hoist-host, connecting to {listen}"));
        let mut cmd = Command::new(host);
        cmd.arg("--guest").arg(&listen).args(extra);
        self.spawn("host ", "hoist-host", &mut cmd)?;

        let sudo = if have("sudo") { "sudo " } else { "" };
        eprintln!();
        eprintln!("  hoist is running; the guest is the network namespace '{NS}'. Try, in another terminal:");
        eprintln!("    {sudo}ip netns exec {NS} python3 -m http.server 8000");
        eprintln!("    curl http://127.0.0.1:8000/");
        eprintln!("  Stop the server and port 8000 closes on the host at once. Ctrl-C here ends the demo.");
        eprintln!();
        Ok(true)
    }

    /// Until a signal (Ok) or a process's own exit (its status).
    fn supervise(&mut self) -> Result<()> {
        loop {
            if STOP.load(Ordering::SeqCst) {
                return Ok(());
            }
            self.check_children()?;
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Any exit is unexpected while the demo runs, even a successful one.
    fn check_children(&mut self) -> Result<()> {
        for (name, child) in self.children.iter_mut() {
            if let Some(status) = child.try_wait().context("checking on the demo's processes")? {
                return Err(Exit {
                    what: format!("{name} exited ({status})"),
                    code: exit_code(status),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Starts a process in a process group of its own, so that Ctrl-C reaches
    /// only xtask, which then stops the processes in order; its output is
    /// printed with `prefix`.
    fn spawn(&mut self, prefix: &'static str, name: &'static str, cmd: &mut Command) -> Result<()> {
        // If xtask is killed outright, the demo does not outlive it.
        crate::sys::die_with_parent(cmd);
        let mut child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        self.children.push((name, child));
        for pipe in [out, err] {
            self.logs.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    eprintln!("{prefix} | {line}");
                }
            }));
        }
        Ok(())
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        while let Some((_, mut child)) = self.children.pop() {
            stop(&mut child);
        }
        // Let the last log lines through, but never hang on a pipe that some
        // descendant still holds.
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.logs.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.ns_created {
            let _ = Command::new("ip").args(["netns", "del", NS]).stderr(Stdio::null()).status();
        }
        let _ = std::fs::remove_dir_all(DIR);
    }
}

/// SIGTERM to the process's group, SIGKILL if it is still there after
/// STOP_TIMEOUT.
fn stop(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    crate::sys::signal_group(child, Signal::TERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    say(format!("process {} ignored SIGTERM for {STOP_TIMEOUT:?}; killing it", child.id()));
    crate::sys::signal_group(child, Signal::KILL);
    let _ = child.wait();
}
