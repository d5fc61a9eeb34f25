//! `cargo xtask test`: every test. Builds the eBPF object and both binaries,
//! runs the workspace's tests (pure, in-process, and the real-kernel ones,
//! which spawn the binaries in network namespaces) on one thread, since the
//! kernel tests share kernel state, then the VM lab. Needs root; nothing is
//! skipped.

use crate::build::build;
use crate::util::{require_root, root, run, say};
use anyhow::Result;
use std::process::Command;

#[derive(clap::Args)]
pub struct TestArgs {
    /// Extra arguments for `cargo test` (e.g. a test name filter).
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
}

pub fn test(args: TestArgs) -> Result<()> {
    require_root("cargo xtask test")?;
    let built = build()?;
    say("running the workspace's tests (one test thread: kernel tests share the kernel)");
    let mut cmd = Command::new("cargo");
    cmd.args(["test", "--locked", "--release", "--workspace"])
        .args(&args.cargo_args)
        .args(["--", "--test-threads=1"])
        .current_dir(root())
        .env("HOIST_EBPF_OBJECT", &built.ebpf)
        .env("HOIST_AGENT_BIN", &built.agent)
        .env("HOIST_HOST_BIN", &built.host);
    run(&mut cmd, "cargo test")?;
    say("running the VM lab (real vsock, a second kernel)");
    crate::vmtest::vm_test()?;
    say("running the benchmark's quick mode (each measurement must produce numbers)");
    crate::bench::bench(crate::bench::BenchArgs { quick: true, write: false, only: None })
}
