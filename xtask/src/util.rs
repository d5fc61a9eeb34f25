//! Small helpers shared by the subcommands: the workspace root and target
//! folder, running commands loudly, exit statuses that carry through to
//! xtask's own, root checks.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::{Command, ExitStatus};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The workspace's target folder; honours CARGO_TARGET_DIR as cargo does, so
/// the binary paths handed to tests are the ones cargo actually wrote.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => root().join(d),
        _ => root().join("target"),
    }
}

pub fn say(msg: impl AsRef<str>) {
    eprintln!("xtask: {}", msg.as_ref());
}

/// An error that ends xtask with a given exit code (a failing child's own),
/// so `cargo xtask test` exits as `cargo test` did.
#[derive(Debug)]
pub struct Exit {
    pub what: String,
    pub code: i32,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (exit code {})", self.what, self.code)
    }
}

impl std::error::Error for Exit {}

/// The shell's convention: the exit code, or 128 + the signal that ended it.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) | (None, None) => 1,
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
    }
}

/// Fails with `what` and the child's exit code when `status` is a failure.
pub fn check(status: ExitStatus, what: &str) -> Result<()> {
    if status.success() {
        return Ok(());
    }
    Err(Exit { what: format!("{what} failed ({status})"), code: exit_code(status) }.into())
}

/// Runs `cmd`, failing with its description (and its exit code) when it fails.
pub fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    check(status, what)
}

/// Runs `cmd` and returns its stdout.
pub fn output(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `program` is on PATH.
pub fn have(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(dir.join(program))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

pub fn require_root(what: &str) -> Result<()> {
    if !crate::sys::is_root() {
        // sudo resets PATH, which would lose rustup's cargo: keep the caller's.
        bail!("{what} needs root (network namespaces, BPF programs): run it as root, e.g. sudo -E env \"PATH=$PATH\" {what}");
    }
    Ok(())
}

/// Lines a child process prints, kept for waiting on and for dumps.
#[derive(Clone, Default)]
pub struct Lines(std::sync::Arc<(std::sync::Mutex<Vec<String>>, std::sync::Condvar)>);

impl Lines {
    /// Collects the lines of `r` that `keep` accepts, on a thread of its own.
    pub fn follow(r: impl std::io::Read + Send + 'static, keep: fn(&str) -> bool) -> Lines {
        use std::io::BufRead;
        let lines = Lines::default();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(r).lines().map_while(Result::ok) {
                if keep(&line) {
                    l.push(line);
                }
            }
        });
        lines
    }

    pub fn push(&self, line: String) {
        self.0 .0.lock().unwrap().push(line);
        self.0 .1.notify_all();
    }

    /// Waits until `pred` holds over the lines so far.
    pub fn wait(
        &self,
        what: &str,
        timeout: std::time::Duration,
        pred: impl Fn(&[String]) -> bool,
    ) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        let mut lines = self.0 .0.lock().unwrap();
        loop {
            if pred(&lines) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            lines = self.0 .1.wait_timeout(lines, left).unwrap().0;
        }
    }

    pub fn with<R>(&self, f: impl FnOnce(&[String]) -> R) -> R {
        f(&self.0 .0.lock().unwrap())
    }

    pub fn text(&self) -> String {
        self.with(|l| l.join("\n"))
    }
}

/// The ports hoist-host serves for `proto` ("tcp" or "udp") according to
/// its JSON log lines. One port can carry a forward of each protocol (an
/// iperf3 server's TCP control port and UDP data port): each protocol's
/// opens and closes count only for its own set.
pub fn serving_ports(lines: &[String], proto: &str) -> std::collections::BTreeSet<u16> {
    let mut s = std::collections::BTreeSet::new();
    let want = format!("\"proto\":\"{proto}\"");
    for line in lines.iter().filter(|l| l.contains(&want)) {
        let port = line
            .split("\"port\":")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok());
        match port {
            Some(p) if line.contains("\"event\":\"forward_opened\"") => {
                s.insert(p);
            }
            Some(p) if line.contains("\"event\":\"forward_closed\"") => {
                s.remove(&p);
            }
            _ => {}
        }
    }
    s
}

/// Ports in LISTEN state in the text of /proc/net/tcp and /proc/net/tcp6.
pub fn listening_ports(proc_net_tcp: &str) -> std::collections::BTreeSet<u16> {
    proc_net_tcp
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 3 && f[3] == "0A")
                .then(|| u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok())?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP and a UDP forward on one port are two forwards: closing one
    /// leaves the other served.
    #[test]
    fn serving_ports_keeps_each_protocol_apart() {
        let line = |event: &str, proto: &str, port: u16| {
            format!("{{\"event\":\"{event}\",\"proto\":\"{proto}\",\"port\":{port},\"family\":\"ipv4\"}}")
        };
        let lines = vec![
            line("forward_opened", "tcp", 5201),
            line("forward_opened", "udp", 5201),
            line("forward_opened", "udp", 5353),
            line("forward_closed", "udp", 5201),
            line("forward_opened", "tcp", 8080),
            line("forward_closed", "tcp", 8080),
        ];
        assert_eq!(serving_ports(&lines, "tcp").into_iter().collect::<Vec<_>>(), [5201]);
        assert_eq!(serving_ports(&lines, "udp").into_iter().collect::<Vec<_>>(), [5353]);
    }
}
