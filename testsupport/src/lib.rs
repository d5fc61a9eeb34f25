//! Test helpers shared by the privileged tests: a throw-away network namespace
//! that stands in for the guest, and the root check those tests start with.
//! A namespace is removed when its [`Netns`] is dropped. `unsafe` lives in
//! `sys` only.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod sys;

pub use sys::listen_via_io_uring;

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Fails the calling test with a clear message unless it runs as root with BPF
/// available: these tests are never skipped silently.
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (network namespaces, BPF programs); run it through `cargo xtask test` as root"
    );
    assert!(
        std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
        "this test needs a kernel with BTF (/sys/kernel/btf/vmlinux is missing)"
    );
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace made with `ip netns add`, loopback up; deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `hoist-t<pid>-<n>` with `lo` up.
    pub fn new() -> Result<Netns> {
        let name =
            format!("hoist-t{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, for `setns` or `--netns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread that has entered this namespace, so sockets `f`
    /// creates belong to it (a socket keeps its namespace for life).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let file =
            File::open(self.path()).with_context(|| format!("open {}", self.path().display()))?;
        std::thread::spawn(move || {
            use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
            move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
                .context("setns into test namespace")?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
    }

    /// A command that runs inside this namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// The namespace's inode, as the kernel reports it in events.
    pub fn inode(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::metadata(self.path())?.ino())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ =
            Command::new("ip").args(["netns", "del", &self.name]).stderr(Stdio::null()).status();
    }
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A listen() that fails the way real servers trip over each other: two
/// sockets bound to one 127.0.0.1 port with SO_REUSEADDR, the first listens,
/// the second's listen() fails with EADDRINUSE after the kernel has already
/// moved it through LISTEN. Returns the listening one and the second's error.
/// Call it inside the namespace under test.
pub fn listen_then_fail_on_the_same_port(
) -> std::io::Result<(std::net::TcpListener, std::io::Error)> {
    use socket2::{Domain, Socket, Type};
    use std::net::SocketAddr;
    let a = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    a.set_reuse_address(true)?;
    a.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    let port = a.local_addr()?.as_socket().map(|s| s.port()).unwrap_or(0);
    let b = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    b.set_reuse_address(true)?;
    b.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    a.listen(16)?;
    let err = match b.listen(16) {
        Ok(()) => return Err(std::io::Error::other("the second listen() on one port succeeded")),
        Err(e) => e,
    };
    Ok((a.into(), err))
}
