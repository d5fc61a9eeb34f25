//! The last phase of `cargo xtask test`: the Debian packages `dist` made,
//! installed into a fresh root with the real dpkg, then a forward through the
//! installed binaries, run the way their installed units say.
//!
//! dpkg installs both packages into an empty root under /tmp (`--root`, with
//! `--force-script-chrootless`: the maintainer scripts run here with
//! DPKG_ROOT set, and must then leave this system's systemd alone). The
//! installed files are checked, and the installed units pass `systemd-analyze
//! verify`. The installed hoist-agent runs in a fresh network namespace and
//! the installed hoist-host outside it, over a Unix socket, each as the
//! unprivileged user with exactly the AmbientCapabilities= of its installed
//! unit (setpriv; tracefs and the cgroup v2 hierarchy mounted first, as
//! systemd does at boot: `ip netns exec` remounts /sys). A Python
//! web server in the namespace, on a privileged port, must answer curl on
//! this host's loopback. Then both packages are purged and must leave
//! nothing. Bounded in time; cleans up after itself, also on failure.

use crate::dist::Dist;
use crate::setup::apt;
use crate::util::{output, run, say, Lines};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);
const PACKAGES: [&str; 2] = ["hoist-agent", "hoist-host"];

pub fn test_debs(dist: &Dist) -> Result<()> {
    let started = Instant::now();
    apt(&[
        ("curl", "curl"),
        ("python3", "python3"),
        ("setpriv", "util-linux"),
        ("systemd-analyze", "systemd"),
    ])?;
    let mut env = Env::new()?;
    let r = env.run(dist);
    env.clean();
    r?;
    say(format!("the .deb packages installed, forwarded and purged in {:.1?}", started.elapsed()));
    Ok(())
}

/// What the phase made, removed by `clean` whatever happened.
struct Env {
    root: PathBuf,
    run_dir: PathBuf,
    netns: String,
    children: Vec<Child>,
}

impl Env {
    fn new() -> Result<Env> {
        let id = std::process::id();
        let base = std::env::temp_dir();
        let env = Env {
            root: base.join(format!("hoist-debtest-root-{id}")),
            run_dir: base.join(format!("hoist-debtest-run-{id}")),
            netns: format!("hoist-deb-{id}"),
            children: Vec::new(),
        };
        for d in [&env.root, &env.run_dir] {
            let _ = std::fs::remove_dir_all(d);
        }
        Ok(env)
    }

    fn dpkg(&self) -> Command {
        let mut cmd = Command::new("dpkg");
        cmd.arg(format!("--root={}", self.root.display()))
            .args(["--force-script-chrootless", "--force-not-root"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&mut self, dist: &Dist) -> Result<()> {
        // An empty dpkg database is all a fresh root needs.
        for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log"] {
            std::fs::create_dir_all(self.root.join(d))?;
        }
        for f in ["var/lib/dpkg/status", "var/lib/dpkg/available"] {
            std::fs::write(self.root.join(f), "")?;
        }
        say(format!(
            "installing {} and {} into {}",
            name(&dist.agent_deb),
            name(&dist.host_deb),
            self.root.display()
        ));
        run(
            self.dpkg().arg("-i").arg(&dist.agent_deb).arg(&dist.host_deb),
            "dpkg -i (fresh root)",
        )?;
        for pkg in PACKAGES {
            let status = output(self.dpkg().args(["-s", pkg]), &format!("dpkg -s {pkg}"))?;
            ensure!(status.contains("Status: install ok installed"), "{pkg}: {status}");
            self.check_files(pkg)?;
        }
        self.forward()?;
        self.stop_children();
        say("purging both packages");
        run(self.dpkg().args(["--purge", "hoist-agent", "hoist-host"]), "dpkg --purge")?;
        let left = output(self.dpkg().arg("-L").arg("hoist-agent"), "dpkg -L").unwrap_or_default();
        ensure!(left.trim().is_empty() || !left.contains("/usr/bin"), "still listed: {left}");
        for pkg in PACKAGES {
            for f in [format!("usr/bin/{pkg}"), format!("etc/default/{pkg}")] {
                ensure!(!self.root.join(&f).exists(), "{f} is left after the purge");
            }
        }
        Ok(())
    }

    /// The binary, its unit, conffile, man pages and completions, where
    /// Debian looks for them; the unit verified by systemd itself (`systemd-analyze
    /// verify`, which also checks that ExecStart's binary is in the root).
    fn check_files(&self, pkg: &str) -> Result<()> {
        let files = [
            format!("usr/bin/{pkg}"),
            format!("usr/lib/systemd/system/{pkg}.service"),
            format!("etc/default/{pkg}"),
            format!("usr/share/man/man1/{pkg}.1.gz"),
            format!("usr/share/man/man1/{pkg}-run.1.gz"),
            format!("usr/share/bash-completion/completions/{pkg}"),
            format!("usr/share/zsh/vendor-completions/_{pkg}"),
            format!("usr/share/fish/vendor_completions.d/{pkg}.fish"),
            format!("usr/share/doc/{pkg}/copyright"),
        ];
        for f in &files {
            ensure!(self.root.join(f).is_file(), "{pkg} installed no {f}");
        }
        let bin = self.root.join(format!("usr/bin/{pkg}"));
        let version = output(Command::new(&bin).arg("--version"), &format!("{pkg} --version"))?;
        ensure!(
            version.starts_with(&format!("{pkg} {} (git ", env!("CARGO_PKG_VERSION"))),
            "{version}"
        );
        crate::dist::check_static(&bin)?;
        {
            let unit = self.root.join(format!("usr/lib/systemd/system/{pkg}.service"));
            // The units ours are ordered against, from this system's systemd:
            // a bare root has none. Removed again after the check.
            let units = self.root.join("usr/lib/systemd/system");
            let mut borrowed = Vec::new();
            for e in std::fs::read_dir("/usr/lib/systemd/system")?.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                let to = units.join(&n);
                if (n.ends_with(".target") || n == "sys-kernel-tracing.mount") && !to.exists() {
                    std::fs::copy(e.path(), &to)?;
                    borrowed.push(to);
                }
            }
            let out = Command::new("systemd-analyze")
                .arg(format!("--root={}", self.root.display()))
                .args(["verify", "--man=no"])
                .arg(&unit)
                .output()
                .context("starting systemd-analyze verify")?;
            for b in borrowed {
                std::fs::remove_file(b)?;
            }
            let said = String::from_utf8_lossy(&out.stderr);
            ensure!(
                out.status.success() && said.trim().is_empty(),
                "systemd-analyze verify {pkg}.service: {}",
                said.trim()
            );
        }
        Ok(())
    }

    /// The installed unit's ExecStart binary (in the root) and capabilities.
    fn unit(&self, pkg: &str) -> Result<(PathBuf, Vec<String>)> {
        let path = self.root.join(format!("usr/lib/systemd/system/{pkg}.service"));
        let unit = std::fs::read_to_string(&path)?;
        let value = |key: &str| unit.lines().find_map(|l| l.strip_prefix(key)).map(str::trim);
        let exec = value("ExecStart=").context("no ExecStart=")?;
        let bin = exec.split_whitespace().next().unwrap_or_default();
        let caps = value("AmbientCapabilities=").context("no AmbientCapabilities=")?;
        ensure!(value("DynamicUser=") == Some("yes"), "{pkg}.service runs as a dynamic user");
        let caps = caps
            .split_whitespace()
            .map(|c| c.strip_prefix("CAP_").unwrap_or(c).to_ascii_lowercase())
            .collect();
        Ok((self.root.join(bin.trim_start_matches('/')), caps))
    }

    fn forward(&mut self) -> Result<()> {
        let (agent, agent_caps) = self.unit("hoist-agent")?;
        let (host, host_caps) = self.unit("hoist-host")?;
        run(Command::new("ip").args(["netns", "add", &self.netns]), "ip netns add")?;
        run(
            Command::new("ip").args(["-n", &self.netns, "link", "set", "lo", "up"]),
            "ip link set lo up",
        )?;
        std::fs::create_dir_all(&self.run_dir)?;
        set_mode(&self.run_dir, 0o777)?;
        let sock = self.run_dir.join("agent.sock");
        let www = self.run_dir.join("www");
        std::fs::create_dir_all(&www)?;
        let marker = format!("served in the guest namespace {}\n", self.netns);
        std::fs::write(www.join("index.html"), &marker)?;

        say("running the installed hoist-agent in a namespace and hoist-host outside, as their units would");
        let list = |caps: &[String]| caps.iter().map(|c| format!(",+{c}")).collect::<String>();
        let setpriv = |caps: &[String]| {
            let l = list(caps);
            format!(
                "setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all{l} --ambient-caps=-all{l} --bounding-set=-all{l}"
            )
        };
        let script = format!(
            "mount -t tracefs tracefs /sys/kernel/tracing && mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec {} \"$0\" --listen unix:{} --log-format json",
            setpriv(&agent_caps),
            sock.display()
        );
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "sh", "-c", &script]).arg(&agent);
        let agent_log = self.spawn(cmd)?;
        agent_log
            .wait("the installed agent to be ready", WAIT, |l| {
                l.iter().any(|l| l.contains("\"agent_ready\""))
            })
            .with_context(|| format!("agent log:\n{}", agent_log.text()))?;

        // A privileged port: the host's unit grants CAP_NET_BIND_SERVICE for it.
        let port = free_privileged_port()?;
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.netns,
            "python3",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
        ])
        .arg(port.to_string())
        .arg("--directory")
        .arg(&www);
        let _ = self.spawn(cmd)?;

        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            &format!(
                "exec {} \"$0\" --guest unix:{} --log-format json",
                setpriv(&host_caps),
                sock.display()
            ),
        ])
        .arg(&host);
        let host_log = self.spawn(cmd)?;
        host_log
            .wait(&format!("the installed host to forward port {port}"), WAIT, |l| {
                crate::util::serving_ports(l, "tcp").contains(&port)
            })
            .with_context(|| {
                format!("host log:\n{}\nagent log:\n{}", host_log.text(), agent_log.text())
            })?;
        let url = format!("http://127.0.0.1:{port}/");
        let body = output(
            Command::new("curl").args(["-sS", "--max-time", "10", &url]),
            &format!("curl {url}"),
        )?;
        ensure!(body == marker, "curl {url} answered {body:?}, not the guest's page");
        say(format!("curl {url} through the installed binaries: the guest's page"));
        Ok(())
    }

    /// Starts `cmd` (killed with xtask, and by `clean`); its stderr lines.
    fn spawn(&mut self, mut cmd: Command) -> Result<Lines> {
        crate::sys::die_with_parent(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info");
        let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        let lines = Lines::follow(child.stderr.take().unwrap(), |_| true);
        self.children.push(child);
        Ok(lines)
    }

    fn stop_children(&mut self) {
        for mut c in self.children.drain(..) {
            crate::sys::signal(&c, crate::sys::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn clean(&mut self) {
        self.stop_children();
        let _ =
            Command::new("ip").args(["netns", "del", &self.netns]).stderr(Stdio::null()).status();
        for d in [&self.root, &self.run_dir] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn name(p: &Path) -> String {
    p.file_name().unwrap_or_default().to_string_lossy().into_owned()
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", p.display()))
}

/// A port below 1024 that is free on this host's 127.0.0.1 right now.
fn free_privileged_port() -> Result<u16> {
    for port in (900..1000).rev() {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port in 900..1000 on 127.0.0.1")
}
