//! `cargo xtask vm-test`: the VM lab. Boots Debian's 6.1 kernel under QEMU
//! (TCG) with a busybox initramfs holding the real, static hoist-agent, links
//! it to this machine through vhost-device-vsock (guest side real
//! virtio-vsock, host side Unix sockets only: no AF_VSOCK socket is ever
//! opened here), runs hoist-host here against it over the hybrid-vsock
//! socket, and checks the scenarios (TCP and UDP) with both hook sets. First
//! it runs the agent's kernel tests that need trampolines, which this
//! machine's kernel refuses, on the guest's kernel. A failure prints the
//! guest console and both logs.

use crate::build::build;
use crate::setup::apt;
use crate::util::{listening_ports, output, require_root, root, run, say, serving_ports, Lines};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const VHOST_DEVICE_VSOCK: &str = "0.3.0";
/// The agent's kernel tests (agent/tests/kernel_source.rs): those this
/// machine's kernel cannot run (trampolines) run in the guest.
const KERNEL_TESTS: &str = "kernel_source";
/// The tests of it that need trampolines, by name filter.
const TRAMPOLINE_TESTS: &str = "trampoline_hooks_";
/// Guest vsock port of the lab's command channel.
const CMD_PORT: u32 = 2000;
/// Guest vsock port the agent listens on.
const AGENT_PORT: u32 = 1023;
const GUEST_CID: u32 = 3;
/// Clients carried one after another after the agent's restart.
const POOLED_CLIENTS: usize = 20;

/// Guest TCP ports the scenarios use, mirrored on this machine's loopback:
/// below 32768, outside Linux's ephemeral port range (32768-60999), so no
/// client connection of another test on this machine can hold one of them
/// (one held 47012, when they were 470xx, and that forward stayed in conflict).
const ECHO: u16 = 27001;
const EARLY: u16 = 27002;
const LATER: u16 = 27003;
const LAST: u16 = 27004;
/// An SCTP and a DCCP listener, and a TCP barrier after them.
const SCTP: u16 = 27020;
const DCCP: u16 = 27021;
const BARRIER: u16 = 27022;
/// A server that resets its connections mid-response.
const ABORT: u16 = 27023;
/// A listener held in a PID namespace of its own.
const NSHELD: u16 = 27024;
/// A UDP echo server, and a second one as a barrier behind the UDP clients.
const UDP_ECHO: u16 = 27030;
const UDP_BARRIER: u16 = 27031;
/// Datagram sizes sent through the UDP forward: the smallest, one that fits
/// an Ethernet MTU, the largest an IPv4 UDP datagram can be.
const UDP_SIZES: [usize; 3] = [1, 1400, 65507];
/// Guest ports 27010..27018 open and close while hoist-host restarts.
const CHURN: u16 = 27010;
const CHURN_COUNT: u16 = 8;
/// The guest session's hard limit (it takes about 30 s): past it the
/// watchdog kills QEMU and the daemon, so every wait fails fast and the logs
/// are printed instead of CI hanging. HOIST_VMLAB_WATCHDOG_SECS overrides it.
fn watchdog() -> Duration {
    let secs =
        std::env::var("HOIST_VMLAB_WATCHDOG_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    Duration::from_secs(secs)
}
const MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci",
    "net/vmw_vsock/vsock",
    "net/vmw_vsock/vmw_vsock_virtio_transport_common",
    "net/vmw_vsock/vmw_vsock_virtio_transport",
    "net/ipv4/inet_diag",
    "net/ipv4/tcp_diag",
    "net/ipv4/udp_diag",
    "crypto/crc32c_generic",
    "lib/libcrc32c",
    "net/ipv4/udp_tunnel",
    "net/ipv6/ip6_udp_tunnel",
    "net/sctp/sctp",
    "net/dccp/dccp",
    "net/dccp/dccp_ipv4",
];

fn lab_dir() -> PathBuf {
    root().join("target/vmlab")
}

pub fn vm_test() -> Result<()> {
    require_root("cargo xtask vm-test")?;
    apt(&[
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("busybox", "busybox-static"),
        ("cpio", "cpio"),
    ])?;
    let built = build()?;
    let _lock = lock()?;
    let statics = build_static(&built.ebpf)?;
    let daemon = vhost_device_vsock()?;
    let kernel = kernel()?;
    let run_dir = lab_dir().join("run");
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir)?;
    let initrd = initramfs(&kernel, &statics, &run_dir)?;
    let mut vm = Vm::boot(&daemon, &kernel.vmlinuz, &initrd, &run_dir)?;
    let started = Instant::now();
    let result = (|| -> Result<()> {
        vm.wait_for_guest()?;
        check_in_guest(&vm)?;
        kernel_tests_in_guest(&vm)?;
        for (flag, want) in [(None, "trampoline"), (Some("tracepoint"), "tracepoint")] {
            scenarios(&mut vm, &built.host, flag, want)
                .with_context(|| format!("scenarios with the {want} hooks"))?;
        }
        Ok(())
    })();
    if let Err(e) = &result {
        eprintln!("xtask: vm-test failed: {e:#}");
        if vm.watchdog_fired() {
            eprintln!("xtask: the {:?} watchdog killed QEMU and vhost-device-vsock (the guest session hung)", watchdog());
        }
        vm.dump_logs();
    }
    vm.shutdown();
    result?;
    say(format!("vm-test passed: both hook sets, all scenarios, in {:.0?}", started.elapsed()));
    Ok(())
}

/// One VM lab at a time on a machine: the run directory and the host ports
/// are fixed. A second vm-test waits (at most 15 minutes) instead of
/// clobbering the first one's guest.
fn lock() -> Result<std::fs::File> {
    std::fs::create_dir_all(lab_dir())?;
    let path = lab_dir().join("lock");
    let f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut said = false;
    // Released when the file closes.
    while !crate::sys::try_lock(&f) {
        if !said {
            say(format!(
                "another vm-test holds {}; waiting for it (at most 15 min)",
                path.display()
            ));
            said = true;
        }
        if Instant::now() > deadline {
            bail!("another vm-test held {} for 15 minutes", path.display());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(f)
}

/// Static builds of the agent, the guest tool and the agent's kernel tests
/// for the initramfs.
struct Statics {
    agent: PathBuf,
    guest: PathBuf,
    kernel_tests: PathBuf,
}

fn build_static(ebpf: &Path) -> Result<Statics> {
    say("building static hoist-agent and hoist-vmlab-guest for the guest");
    let target_dir = lab_dir().join("static");
    run(
        Command::new("cargo")
            .args([
                "build",
                "--locked",
                "--release",
                "--target",
                "x86_64-unknown-linux-gnu",
                "-p",
                "hoist-agent",
                "-p",
                "hoist-vmlab-guest",
            ])
            .arg("--target-dir")
            .arg(&target_dir)
            .current_dir(root())
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env("HOIST_EBPF_OBJECT", ebpf),
        "cargo build (static, for the guest)",
    )?;
    let dir = target_dir.join("x86_64-unknown-linux-gnu/release");
    say("building the agent's kernel tests (static) for the guest");
    let out = output(
        Command::new("cargo")
            .args(["test", "--locked", "--release", "--no-run", "--message-format=json"])
            .args(["--target", "x86_64-unknown-linux-gnu", "-p", "hoist-agent"])
            .args(["--test", KERNEL_TESTS])
            .arg("--target-dir")
            .arg(&target_dir)
            .current_dir(root())
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env("HOIST_EBPF_OBJECT", ebpf),
        "cargo test --no-run (static kernel tests, for the guest)",
    )?;
    // Test binaries are named by hash: cargo's artifact message names it.
    let kernel_tests = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == KERNEL_TESTS)
        .and_then(|v| v["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo test --no-run named no {KERNEL_TESTS} executable"))?;
    Ok(Statics {
        agent: dir.join("hoist-agent"),
        guest: dir.join("hoist-vmlab-guest"),
        kernel_tests,
    })
}

fn vhost_device_vsock() -> Result<PathBuf> {
    let tools = lab_dir().join("tools");
    let bin = tools.join("bin/vhost-device-vsock");
    if bin.exists() {
        return Ok(bin);
    }
    say(format!("installing vhost-device-vsock {VHOST_DEVICE_VSOCK} (the guest's vsock device, Unix sockets on this side)"));
    run(
        Command::new("cargo")
            .args([
                "install",
                "--locked",
                "vhost-device-vsock",
                "--version",
                VHOST_DEVICE_VSOCK,
                "--root",
            ])
            .arg(&tools),
        "cargo install vhost-device-vsock",
    )?;
    Ok(bin)
}

struct Kernel {
    vmlinuz: PathBuf,
    modules: PathBuf,
}

/// Debian bookworm's 6.1 kernel, downloaded and unpacked (never installed).
fn kernel() -> Result<Kernel> {
    let dir = lab_dir().join("kernel");
    let find = |dir: &Path| -> Option<Kernel> {
        let boot = std::fs::read_dir(dir.join("x/boot")).ok()?;
        let vmlinuz = boot.flatten().map(|e| e.path()).find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-"))
        })?;
        let release = vmlinuz.file_name()?.to_str()?.strip_prefix("vmlinuz-")?.to_string();
        Some(Kernel { modules: dir.join("x/lib/modules").join(release).join("kernel"), vmlinuz })
    };
    if let Some(k) = find(&dir) {
        return Ok(k);
    }
    // Fresh lists: an old list can name a kernel build the mirror has dropped.
    crate::setup::apt_update()?;
    let found = output(
        Command::new("apt-cache").args([
            "search",
            "--names-only",
            r"^linux-image-6\.1\.0-[0-9]+-amd64$",
        ]),
        "apt-cache search",
    )?;
    let package = found
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .max_by_key(|p| p.trim_start_matches("linux-image-6.1.0-").trim_end_matches("-amd64").parse::<u32>().unwrap_or(0))
        .context("no linux-image-6.1.0-*-amd64 package in the apt lists (a Debian bookworm source is needed)")?
        .to_string();
    say(format!("downloading {package} for the guest (unpacked, not installed)"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    run(
        Command::new("apt-get").args(["download", &package]).current_dir(&dir),
        "apt-get download",
    )?;
    let deb = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir.join("x")), "dpkg-deb -x")?;
    let _ = std::fs::remove_file(&deb);
    find(&dir).context("the kernel package holds no vmlinuz")
}

fn initramfs(kernel: &Kernel, statics: &Statics, run_dir: &Path) -> Result<PathBuf> {
    say("building the guest's initramfs");
    let tree = run_dir.join("initramfs");
    for d in ["bin", "dev", "proc", "sys", "tmp", "lib/modules"] {
        std::fs::create_dir_all(tree.join(d))?;
    }
    let busybox =
        output(Command::new("sh").args(["-c", "command -v busybox"]), "locating busybox")?;
    std::fs::copy(busybox.trim(), tree.join("bin/busybox")).context("copying busybox")?;
    std::fs::copy(&statics.agent, tree.join("bin/hoist-agent")).context("copying hoist-agent")?;
    std::fs::copy(&statics.guest, tree.join("bin/hoist-vmlab-guest"))
        .context("copying hoist-vmlab-guest")?;
    std::fs::copy(root().join("vmlab/init"), tree.join("init")).context("copying init")?;
    std::fs::create_dir_all(tree.join("lab/bin"))?;
    std::fs::copy(&statics.kernel_tests, tree.join("bin/kernel-tests"))
        .context("copying the kernel tests")?;
    std::fs::copy(root().join("vmlab/ip"), tree.join("lab/bin/ip")).context("copying vmlab/ip")?;
    for m in MODULES {
        let src = kernel.modules.join(format!("{m}.ko"));
        let name = Path::new(m).file_name().unwrap().to_string_lossy().into_owned();
        std::fs::copy(&src, tree.join(format!("lib/modules/{name}.ko")))
            .with_context(|| format!("copying {}", src.display()))?;
    }
    run(
        Command::new("mknod").arg(tree.join("dev/console")).args(["c", "5", "1"]),
        "mknod /dev/console",
    )?;
    let out = run_dir.join("initramfs.cpio.gz");
    run(
        Command::new("sh")
            .args(["-c", "find . | cpio -o -H newc --quiet | gzip -1 > \"$0\""])
            .arg(&out)
            .current_dir(&tree),
        "cpio | gzip",
    )?;
    Ok(out)
}

/// A process whose stderr lines are collected for waiting and for dumps.
struct Logged {
    child: Child,
    lines: Lines,
}

impl Logged {
    fn spawn(cmd: &mut Command) -> Result<Logged> {
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let lines = Lines::follow(child.stderr.take().unwrap(), |_| true);
        Ok(Logged { child, lines })
    }

    fn wait_line(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[String]) -> bool,
    ) -> Result<()> {
        self.lines.wait(what, timeout, pred)
    }

    fn text(&self) -> String {
        self.lines.text()
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 s.
    fn stop(&mut self) {
        crate::sys::signal(&self.child, crate::sys::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.lines.push("xtask: did not exit within 10 s of SIGTERM; killed".into());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Vm {
    dir: PathBuf,
    daemon: Child,
    qemu: Child,
    host: Option<Logged>,
    old_hosts: Vec<String>,
    /// True while QEMU and the daemon are unreaped children the watchdog may kill.
    armed: Arc<Mutex<bool>>,
    fired: Arc<AtomicBool>,
}

impl Vm {
    fn boot(daemon: &Path, vmlinuz: &Path, initrd: &Path, dir: &Path) -> Result<Vm> {
        say("booting the guest (QEMU, TCG, Linux 6.1, vhost-user-vsock)");
        let vhost = dir.join("vhost.sock");
        let daemon = Command::new(daemon)
            .arg("--vm")
            .arg(format!(
                "guest-cid={GUEST_CID},socket={},uds-path={}",
                vhost.display(),
                dir.join("vm.vsock").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(dir.join("vhost-device-vsock.log"))?))
            .stderr(Stdio::from(std::fs::File::create(dir.join("vhost-device-vsock.err"))?))
            .spawn()
            .context("starting vhost-device-vsock")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !vhost.exists() {
            if Instant::now() > deadline {
                bail!("vhost-device-vsock did not create {}", vhost.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let qemu = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-M", "q35", "-cpu", "max", "-smp", "1", "-m", "512M"])
            .args([
                "-object",
                "memory-backend-memfd,id=mem,size=512M,share=on",
                "-machine",
                "memory-backend=mem",
            ])
            .args(["-display", "none", "-monitor", "none", "-no-reboot", "-nodefaults"])
            .arg("-serial")
            .arg(format!("file:{}", dir.join("console.log").display()))
            .arg("-chardev")
            .arg(format!("socket,id=vsock0,path={}", vhost.display()))
            .args(["-device", "vhost-user-vsock-pci,chardev=vsock0"])
            .arg("-kernel")
            .arg(vmlinuz)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", "console=ttyS0 panic=-1 quiet"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("qemu.err"))?))
            .spawn()
            .context("starting qemu-system-x86_64")?;
        let armed = Arc::new(Mutex::new(true));
        let fired = Arc::new(AtomicBool::new(false));
        let (a, f, pids) = (armed.clone(), fired.clone(), [qemu.id(), daemon.id()]);
        std::thread::spawn(move || {
            let deadline = Instant::now() + watchdog();
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(500));
                if !*a.lock().unwrap() {
                    return;
                }
            }
            let armed = a.lock().unwrap();
            if *armed {
                f.store(true, Ordering::SeqCst);
                for pid in pids {
                    // Armed means neither child has been reaped, so the pids are still theirs.
                    crate::sys::signal_pid(pid, crate::sys::Signal::KILL);
                }
            }
        });
        Ok(Vm { dir: dir.to_path_buf(), daemon, qemu, host: None, old_hosts: vec![], armed, fired })
    }

    fn watchdog_fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    fn mux(&self) -> PathBuf {
        self.dir.join("vm.vsock")
    }

    /// One command over the command channel (hybrid vsock, Unix socket here).
    fn cmd(&self, line: &str) -> Result<String> {
        self.cmd_within(line, Duration::from_secs(60))
    }

    fn cmd_within(&self, line: &str, timeout: Duration) -> Result<String> {
        let mut s =
            UnixStream::connect(self.mux()).context("connecting to the vsock multiplexer")?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.write_all(format!("CONNECT {CMD_PORT}\n").as_bytes())?;
        let mut reply = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b)? == 1 && b[0] != b'\n' {
            reply.push(b[0]);
        }
        if !reply.starts_with(b"OK ") {
            bail!(
                "guest command channel not answering (reply {:?})",
                String::from_utf8_lossy(&reply)
            );
        }
        s.write_all(format!("{line}\n").as_bytes())?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).with_context(|| format!("reading the answer to {line:?}"))?;
        Ok(answer)
    }

    /// Runs a shell command in the guest; fails on a non-zero exit.
    fn sh(&self, command: &str) -> Result<String> {
        let answer = self.cmd(&format!("run {command}"))?;
        let (code, out) = answer.split_once('\n').unwrap_or((&answer, ""));
        if code != "0" {
            bail!("guest command {command:?} exited {code}: {out}");
        }
        Ok(out.to_string())
    }

    fn wait_for_guest(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(out) = self.sh("uname -r") {
                say(format!("guest up: Linux {}", out.trim()));
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the guest did not answer on vsock port {CMD_PORT} within 90 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// TCP listening ports in the guest, from /proc/net/tcp{,6}.
    fn guest_ports(&self) -> Result<BTreeSet<u16>> {
        Ok(listening_ports(&self.sh("cat /proc/net/tcp /proc/net/tcp6")?))
    }

    fn start_agent(&self, hooks: Option<&str>) -> Result<()> {
        let flag = hooks.map(|h| format!(" --hooks {h}")).unwrap_or_default();
        self.cmd(&format!(
            "spawn agent /bin/hoist-agent --listen vsock:any:{AGENT_PORT} --log-format json{flag}"
        ))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.sh("cat /tmp/agent.log")?.contains("agent_ready") {
            if Instant::now() > deadline {
                bail!(
                    "the agent did not become ready: {}",
                    self.sh("cat /tmp/agent.log").unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn start_host(&mut self, hoist_host: &Path) -> Result<()> {
        let host = Logged::spawn(
            Command::new(hoist_host)
                .arg("--guest")
                .arg(format!("vsock-mux:{}:{AGENT_PORT}", self.mux().display()))
                .args(["--log-format", "json"]),
        )
        .context("starting hoist-host")?;
        host.wait_line("hoist-host to connect", Duration::from_secs(30), |l| {
            l.iter().any(|x| x.contains("\"event\":\"connected\""))
        })?;
        self.host = Some(host);
        Ok(())
    }

    fn stop_host(&mut self) {
        if let Some(mut h) = self.host.take() {
            h.stop();
            self.old_hosts.push(h.text());
        }
    }

    /// The host TCP ports hoist-host serves, from its log.
    fn serving(&self) -> BTreeSet<u16> {
        self.serving_proto("tcp")
    }

    /// The host ports hoist-host serves for `proto` ("tcp", "udp"), from its log.
    fn serving_proto(&self, proto: &str) -> BTreeSet<u16> {
        self.host.as_ref().map(|h| h.lines.with(|l| serving_ports(l, proto))).unwrap_or_default()
    }

    /// Lines the guest's churn process has logged (one per port change, then `settled`).
    fn churn_steps(&self) -> Result<usize> {
        let n = self.sh("wc -l < /tmp/churn.log")?;
        n.trim().parse().with_context(|| format!("counting the churn's changes: {n:?}"))
    }

    /// Starts a guest process holding a listener on `port`, and waits until
    /// the guest kernel shows it listening.
    fn hold(&self, name: &str, port: u16) -> Result<()> {
        self.cmd(&format!("spawn {name} /bin/hoist-vmlab-guest hold {port}"))?;
        self.sh(&format!(
            "while ! grep -q ':{port:04X} 00000000:0000 0A' /proc/net/tcp; do sleep 0.05; done"
        ))?;
        Ok(())
    }

    /// Waits until the host serves exactly the guest's listening ports, which
    /// must be `expected`.
    fn wait_in_sync(&self, what: &str, expected: &[u16]) -> Result<BTreeSet<u16>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let expected: BTreeSet<u16> = expected.iter().copied().collect();
        loop {
            let truth = self.guest_ports()?;
            if truth != expected {
                bail!("{what}: the guest listens on {truth:?}, the scenario expects {expected:?}");
            }
            if self.serving() == truth {
                return Ok(truth);
            }
            if Instant::now() > deadline {
                bail!(
                    "{what}: the host serves {:?}, the guest listens on {truth:?}",
                    self.serving()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn dump_logs(&self) {
        let console = std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default();
        eprintln!("----- guest console -----\n{console}");
        // The console holds the agent's lines too ("agent| "), in case the
        // command channel no longer answers.
        if let Ok(agent) = self.cmd_within("run cat /tmp/agent.log", Duration::from_secs(5)) {
            eprintln!("----- agent log (guest, exit code first) -----\n{agent}");
        }
        for (i, h) in self.old_hosts.iter().enumerate() {
            eprintln!("----- hoist-host log (run {}) -----\n{h}", i + 1);
        }
        if let Some(h) = &self.host {
            eprintln!("----- hoist-host log (current) -----\n{}", h.text());
        }
        for f in ["qemu.err", "vhost-device-vsock.err"] {
            eprintln!(
                "----- {f} -----\n{}",
                std::fs::read_to_string(self.dir.join(f)).unwrap_or_default()
            );
        }
    }

    fn shutdown(&mut self) {
        *self.armed.lock().unwrap() = false;
        self.stop_host();
        let _ = self.cmd("run poweroff -f");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.qemu.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// Sends `n` bytes through the forward and half-closes while reading the
/// echo to its end, compares. The FIN crosses the hybrid-vsock multiplexer
/// (vhost-device-vsock 0.3.0), which cannot carry a half-close itself,
/// because hoist carries it in band.
fn echo_check(port: u16, n: usize) -> Result<()> {
    let data: Vec<u8> =
        (0..n).map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1]).collect();
    let mut c = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    c.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut w = c.try_clone()?;
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent)?;
        w.shutdown(std::net::Shutdown::Write)
    });
    let mut back = Vec::with_capacity(n);
    c.read_to_end(&mut back).context("reading the echo to its end")?;
    writer.join().unwrap().context("sending")?;
    if back != data {
        bail!(
            "echo through 127.0.0.1:{port} differs: sent {} bytes (fnv {:x}), got {} (fnv {:x})",
            n,
            fnv(&data),
            back.len(),
            fnv(&back)
        );
    }
    Ok(())
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| (h ^ x as u64).wrapping_mul(0x100000001b3))
}

/// Whether hoist-host ever logged a forward of `proto` `port` opening.
fn ever_opened(lines: &[String], proto: &str, port: u16) -> bool {
    lines.iter().any(|l| {
        l.contains("\"event\":\"forward_opened\"")
            && l.contains(&format!("\"proto\":\"{proto}\""))
            && l.contains(&format!("\"port\":{port},"))
    })
}

/// A UDP socket on this machine connected to the forward of guest UDP port
/// `port`; its reads wait at most `timeout`.
fn udp_client(port: u16, timeout: Duration) -> Result<UdpSocket> {
    let c = UdpSocket::bind("127.0.0.1:0").context("binding a UDP client")?;
    c.connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to UDP 127.0.0.1:{port}"))?;
    c.set_read_timeout(Some(timeout))?;
    Ok(c)
}

/// A guest UDP server over real vsock: forwarded, datagrams of each size
/// come back whole, clients of it are not forwarded, its close closes the
/// forward and the host port refuses.
fn udp_scenario(vm: &Vm) -> Result<()> {
    let host = vm.host.as_ref().unwrap();
    vm.cmd(&format!("spawn udpecho /bin/hoist-vmlab-guest udpecho {UDP_ECHO}"))?;
    host.wait_line("the UDP echo server's forward", Duration::from_secs(30), |l| {
        ever_opened(l, "udp", UDP_ECHO)
    })?;
    let c = udp_client(UDP_ECHO, Duration::from_secs(30))?;
    let mut back = vec![0u8; 65536];
    for n in UDP_SIZES {
        let data: Vec<u8> =
            (0..n).map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[2]).collect();
        c.send(&data).with_context(|| format!("sending a {n}-byte datagram"))?;
        let got = c
            .recv(&mut back)
            .with_context(|| format!("awaiting the echo of a {n}-byte datagram"))?;
        if back[..got] != data[..] {
            bail!(
                "the {n}-byte datagram came back as {got} bytes (fnv {:x}, sent fnv {:x})",
                fnv(&back[..got]),
                fnv(&data)
            );
        }
    }
    say(format!("  a guest UDP server is forwarded; datagrams of {UDP_SIZES:?} bytes come back whole over real vsock"));

    // Clients: the ports the kernel gave them, then a server behind them
    // as a barrier (events arrive in order): none may have been forwarded.
    vm.cmd(&format!("spawn udpclients /bin/hoist-vmlab-guest udpclients {UDP_ECHO}"))?;
    let line = vm.sh("for i in $(seq 100); do grep clients /tmp/udpclients.log && exit 0; sleep 0.05; done; cat /tmp/udpclients.log; exit 1")
        .context("the guest's UDP clients")?;
    let clients = line
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse::<u16>())
        .collect::<Result<Vec<u16>, _>>()
        .with_context(|| format!("the UDP clients' ports in {line:?}"))?;
    if clients.len() != 2 {
        bail!("the guest's UDP clients should name two ports: {line:?}");
    }
    vm.cmd(&format!("spawn udpbarrier /bin/hoist-vmlab-guest udpecho {UDP_BARRIER}"))?;
    host.wait_line("the UDP barrier's forward", Duration::from_secs(30), |l| {
        ever_opened(l, "udp", UDP_BARRIER)
    })?;
    if let Some(p) = clients.iter().find(|&&p| host.lines.with(|l| ever_opened(l, "udp", p))) {
        bail!("a guest UDP client (port {p}, of {clients:?}: autobound at sendto, autobound at connect) was forwarded");
    }
    let served = vm.serving_proto("udp");
    if served != BTreeSet::from([UDP_ECHO, UDP_BARRIER]) {
        bail!("the host should serve UDP ports {UDP_ECHO} and {UDP_BARRIER} alone, it serves {served:?}");
    }
    for name in ["udpclients", "udpbarrier"] {
        vm.cmd(&format!("kill {name}"))?;
    }
    say(format!("  UDP clients (autobound at sendto, autobound at connect: ports {clients:?}) are not forwarded"));

    vm.cmd("kill udpecho")?;
    host.wait_line("the UDP echo server's forward to close", Duration::from_secs(30), |l| {
        l.iter().any(|x| {
            x.contains("\"event\":\"forward_closed\"")
                && x.contains("\"proto\":\"udp\"")
                && x.contains(&format!("\"port\":{UDP_ECHO},"))
        })
    })?;
    let probe = udp_client(UDP_ECHO, Duration::from_secs(10))?;
    probe.send(b"anyone?").context("sending a probe")?;
    match probe.recv(&mut back) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => bail!("UDP 127.0.0.1:{UDP_ECHO} should refuse after the server exited: {other:?}"),
    }
    say("  the UDP server's exit closes its forward (forward_closed, proto udp); the host port refuses");
    Ok(())
}

/// `hoist-agent check` on the guest's kernel, which allows trampolines: it
/// passes on them, with the virtio vsock transport.
fn check_in_guest(vm: &Vm) -> Result<()> {
    let report = vm
        .sh(&format!("/bin/hoist-agent check --listen vsock:any:{AGENT_PORT}"))
        .context("hoist-agent check should pass on the guest's kernel (exit status 0)")?;
    for want in [
        "ok       hooks.trampoline",
        "ok       hooks.tracepoint",
        "ok       vsock             transport loaded: virtio",
        "verdict: hoist-agent can run here, on the trampoline hooks",
    ] {
        if !report.contains(want) {
            bail!("hoist-agent check in the guest should report {want:?}:\n{report}");
        }
    }
    say("  hoist-agent check passes in the guest, on the trampoline hooks");
    Ok(())
}

/// The agent's kernel tests that need trampolines, which this machine's
/// kernel refuses, on the guest's kernel that allows them: the TCP and the
/// UDP hooks against real sockets in network namespaces of the guest.
fn kernel_tests_in_guest(vm: &Vm) -> Result<()> {
    let answer = vm.cmd_within(
        &format!("run PATH=/lab/bin:/bin /bin/kernel-tests --ignored --test-threads=1 {TRAMPOLINE_TESTS}"),
        Duration::from_secs(600),
    )?;
    let (code, out) = answer.split_once('\n').unwrap_or((&answer, ""));
    // Both ignored tests ran and passed, and nothing else ran.
    let ran = out.lines().filter(|l| l.starts_with("test ") && l.ends_with(" ... ok")).count();
    if code != "0" || ran != 2 || !out.contains("test result: ok. 2 passed; 0 failed") {
        bail!("the agent's trampoline kernel tests should pass in the guest (exit {code}, {ran} passed):\n{out}");
    }
    for l in out.lines().filter(|l| l.starts_with("test ")) {
        say(format!("  in the guest: {l}"));
    }
    Ok(())
}

fn scenarios(vm: &mut Vm, hoist_host: &Path, hooks: Option<&str>, want: &str) -> Result<()> {
    say(format!("scenarios with the agent on {want} hooks"));
    // A listener from before the agent.
    vm.hold("early", EARLY)?;
    vm.start_agent(hooks)?;
    let ready = vm.sh("grep agent_ready /tmp/agent.log")?;
    if !ready.contains(&format!("\"hooks\":\"{want}\"")) {
        bail!("the agent should report {want} hooks on this kernel: {ready}");
    }
    say(format!("  agent uses {want} hooks on the guest's kernel"));
    vm.start_host(hoist_host)?;
    vm.wait_in_sync("the listener from before the agent", &[EARLY])?;
    say("  a listener from before the agent is forwarded");

    let echo_pid = vm.cmd(&format!("spawn echo /bin/hoist-vmlab-guest echo {ECHO}"))?;
    let host = vm.host.as_ref().unwrap();
    host.wait_line("the echo forward", Duration::from_secs(30), |l| {
        l.iter().any(|x| x.contains("forward_opened") && x.contains(&format!("\"port\":{ECHO},")))
    })?;
    // The owner is named by its pid in the agent's PID namespace (the
    // guest's root one here), which the lab's spawn answered.
    host.wait_line("the echo forward naming the server's pid", Duration::from_secs(1), |l| {
        l.iter().any(|x| {
            x.contains("forward_opened")
                && x.contains(&format!("\"port\":{ECHO},"))
                && x.contains(&format!("\"pid\":{},", echo_pid.trim()))
        })
    })?;
    echo_check(ECHO, 4 << 20)?;
    vm.cmd("kill echo")?;
    vm.wait_in_sync("the echo server's exit", &[EARLY])?;
    match TcpStream::connect(("127.0.0.1", ECHO)) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => bail!("127.0.0.1:{ECHO} should refuse after the server exited: {other:?}"),
    }
    say("  4 MiB each way intact over real vsock, half-close included; the port closes when the server exits");

    // A listener of another PID namespace (another WSL distro's, say) is
    // named by its command, pid 0.
    let unshare =
        vm.cmd(&format!("spawn nsheld unshare -p -f /bin/hoist-vmlab-guest hold {NSHELD}"))?;
    vm.host.as_ref().unwrap().wait_line(
        "the forward of another PID namespace's listener",
        Duration::from_secs(30),
        |l| {
            l.iter().any(|x| {
                x.contains("forward_opened")
                    && x.contains(&format!("\"port\":{NSHELD},"))
                    && x.contains("\"pid\":0,")
                    && x.contains("\"comm\":\"hoist-vmlab-gue\"")
            })
        },
    )?;
    // unshare waits for its child, the server: that one is killed first.
    vm.sh(&format!("kill -9 $(ps -o pid,ppid | awk '$2 == {} {{print $1}}')", unshare.trim()))?;
    vm.cmd("kill nsheld")?;
    vm.wait_in_sync("the other PID namespace's listener closing", &[EARLY])?;
    say("  owners are named by their pid in the agent's PID namespace; another namespace's by command, pid 0");

    // A guest server that resets mid-response resets the client.
    vm.cmd(&format!("spawn abort /bin/hoist-vmlab-guest abort {ABORT}"))?;
    vm.host.as_ref().unwrap().wait_line("the abort forward", Duration::from_secs(30), |l| {
        l.iter().any(|x| x.contains("forward_opened") && x.contains(&format!("\"port\":{ABORT},")))
    })?;
    let mut c = TcpStream::connect(("127.0.0.1", ABORT))?;
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    c.write_all(b"ping")?;
    let mut sink = Vec::new();
    match c.read_to_end(&mut sink) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => bail!("a guest server's reset should reach the client as a reset, got {other:?} after {} bytes", sink.len()),
    }
    vm.cmd("kill abort")?;
    say("  a guest server's reset reaches the client as a reset over real vsock");

    // SCTP and DCCP listeners are not TCP forwards.
    vm.cmd(&format!("spawn sctp /bin/hoist-vmlab-guest sctp {SCTP}"))?;
    vm.cmd(&format!("spawn dccp /bin/hoist-vmlab-guest dccp {DCCP}"))?;
    for p in ["sctp", "dccp"] {
        vm.sh(&format!("for i in $(seq 100); do grep -q listening /tmp/{p}.log && exit 0; sleep 0.05; done; cat /tmp/{p}.log; exit 1"))
            .with_context(|| format!("the guest's {p} listener"))?;
    }
    vm.hold("barrier", BARRIER)?;
    vm.wait_in_sync("SCTP and DCCP listeners beside a TCP one", &[EARLY, BARRIER])?;
    for name in ["sctp", "dccp", "barrier"] {
        vm.cmd(&format!("kill {name}"))?;
    }
    say("  SCTP and DCCP listeners are not forwarded (only the TCP one beside them is)");

    udp_scenario(vm)?;

    // The agent restarts while the guest changes its ports.
    vm.cmd("term agent")?;
    vm.cmd("kill early")?;
    vm.hold("later", LATER)?;
    vm.start_agent(hooks)?;
    let t = vm.wait_in_sync("resync after the agent restart", &[LATER])?;
    say(format!("  agent restarted: host resynced to the guest's table {t:?}"));

    // Clients after the restart ride the new session's data connections
    // (the old session's idle ones, opened ahead before it, are discarded),
    // one after another on the same few.
    vm.cmd(&format!("spawn echo /bin/hoist-vmlab-guest echo {ECHO}"))?;
    vm.sh(&format!(
        "while ! grep -q ':{ECHO:04X} 00000000:0000 0A' /proc/net/tcp; do sleep 0.05; done"
    ))?;
    vm.wait_in_sync("the echo server after the agent restart", &[LATER, ECHO])?;
    for _ in 0..POOLED_CLIENTS {
        echo_check(ECHO, 64 << 10)?;
    }
    vm.cmd("kill echo")?;
    vm.wait_in_sync("the echo server's exit", &[LATER])?;
    say(format!("  after the agent restart: {POOLED_CLIENTS} clients in a row intact over pooled data connections"));

    // The host restarts while the guest opens and closes ports: changes
    // land while it is down, while it connects and after it has resynced.
    vm.sh("rm -f /tmp/churn.stop")?;
    vm.cmd(&format!("spawn churn /bin/hoist-vmlab-guest churn {CHURN} {CHURN_COUNT} 15"))?;
    vm.stop_host();
    vm.hold("last", LAST)?;
    vm.cmd("kill later")?;
    std::thread::sleep(Duration::from_millis(500));
    let down = vm.churn_steps()?;
    vm.start_host(hoist_host)?;
    let connected = vm.churn_steps()?;
    std::thread::sleep(Duration::from_secs(1));
    vm.sh("touch /tmp/churn.stop")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let settled = loop {
        let log = vm.sh("cat /tmp/churn.log")?;
        if let Some(ports) = log.lines().find_map(|l| l.strip_prefix("settled")) {
            break ports
                .trim()
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| p.parse::<u16>())
                .collect::<Result<Vec<u16>, _>>()?;
        }
        if Instant::now() > deadline {
            bail!("the guest's churn did not settle: {log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let total = vm.churn_steps()? - 1;
    if down == 0 || total <= connected {
        bail!("the churn should change ports both while hoist-host is down and after it reconnects ({down} changes before its start, {connected} at its connection, {total} in all)");
    }
    let mut expected = settled.clone();
    expected.push(LAST);
    let t = vm.wait_in_sync("resync after the host restart during port churn", &expected)?;
    say(format!(
        "  hoist-host restarted during {total} guest port changes ({down} while it was down, {} after it connected): it holds exactly the guest's table {t:?}",
        total - connected
    ));

    vm.cmd("kill churn")?;
    vm.cmd("kill last")?;
    vm.cmd("term agent")?;
    vm.stop_host();
    Ok(())
}
