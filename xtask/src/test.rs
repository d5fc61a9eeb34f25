//! `cargo xtask test`: every test. Builds the eBPF object and both binaries,
//! runs the workspace's tests (pure, in-process, and the real-kernel ones,
//! which spawn the binaries in network namespaces) on one thread, since the
//! kernel tests share kernel state, then the VM lab. Needs root; nothing is
//! skipped.

use crate::build::build;
use crate::util::{require_root, root, say};
use anyhow::{bail, Context, Result};
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
    let (passed, failed) = run_counting(&mut cmd)?;
    say("running the VM lab (real vsock, a second kernel)");
    crate::vmtest::vm_test()?;
    say("running the benchmark's quick mode (each measurement must produce numbers)");
    crate::bench::bench(crate::bench::BenchArgs { quick: true, write: false, only: None })?;
    // The VM lab and the bench's smoke mode count as one test each.
    println!("summary: {} passed, {failed} failed", passed + 2);
    Ok(())
}

/// Runs `cargo test`, passing its output through, and adds up its
/// "test result" lines. A failing run is an error.
fn run_counting(cmd: &mut Command) -> Result<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().context("starting cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok) {
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                rest.split(';').find_map(|p| p.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(word)?.trim().parse().ok()).unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!("cargo test failed ({status}): {passed} passed, {failed} failed");
    }
    Ok((passed, failed))
}
