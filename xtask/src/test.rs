//! `cargo xtask test`: every test. Builds the eBPF object and both binaries,
//! runs the workspace's tests (pure, in-process, and the real-kernel ones,
//! which spawn the binaries in network namespaces) on one thread, since the
//! kernel tests share kernel state, then every fuzz target briefly, the VM
//! lab, the bench's smoke mode, the Windows phases (windows.rs: unit tests
//! and hoist-host.exe under Wine), and last `cargo xtask dist` with its
//! Debian packages installed into a fresh root and run (debtest.rs). Needs
//! root; nothing is skipped.
//! Ends with one summary line, and with `cargo test`'s own exit code when
//! that fails.

use crate::build::build;
use crate::util::{check, require_root, root, say};
use anyhow::{Context, Result};
use std::process::Command;

#[derive(clap::Args)]
pub struct TestArgs {
    /// Extra arguments for `cargo test` (e.g. a test name filter); with
    /// them, only `cargo test` runs, not the fuzz targets, the VM lab and the bench.
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
}

pub fn test(args: TestArgs) -> Result<()> {
    require_root("cargo xtask test")?;
    // The style gate first: a formatting slip fails in seconds, not after
    // the whole suite.
    crate::lint::format()?;
    crate::lint::clippy()?;
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
    let (mut passed, failed, status) = run_counting(&mut cmd)?;
    let summary = |passed: u64, failed: u64| println!("summary: {passed} passed, {failed} failed");
    if let Err(e) = check(status, "cargo test") {
        summary(passed, failed);
        return Err(e);
    }
    if !args.cargo_args.is_empty() {
        // A chosen subset of cargo's tests: fuzzing, the lab and the bench are not in it.
        summary(passed, failed);
        return Ok(());
    }
    // Each fuzz target counts as one test.
    let (fuzz_passed, fuzz_failed, fuzzed) = crate::fuzz::smoke(&built.ebpf);
    passed += fuzz_passed;
    if let Err(e) = fuzzed {
        summary(passed, failed + fuzz_failed);
        return Err(e.context("fuzzing"));
    }
    // The VM lab and the bench's smoke mode count as one test each.
    say("running the VM lab (real vsock, a second kernel)");
    if let Err(e) = crate::vmtest::vm_test() {
        summary(passed, failed + 1);
        return Err(e.context("the VM lab"));
    }
    passed += 1;
    say("running the benchmark's quick mode (each measurement must produce numbers)");
    if let Err(e) =
        crate::bench::bench(crate::bench::BenchArgs { quick: true, write: false, only: None })
    {
        summary(passed, failed + 1);
        return Err(e.context("the benchmark's quick mode"));
    }
    passed += 1;
    let mut counts = (passed, failed);
    if let Err(e) = crate::windows::test(&built, &mut counts) {
        summary(counts.0, counts.1);
        return Err(e);
    }
    // Last, one test: `cargo xtask dist` must work, and its Debian packages
    // install into a fresh root and forward through the installed binaries.
    say("building the release artifacts (cargo xtask dist) and testing the .deb packages");
    if let Err(e) = crate::dist::dist().and_then(|d| crate::debtest::test_debs(&d)) {
        summary(counts.0, counts.1 + 1);
        return Err(e.context("the release artifacts and Debian packages"));
    }
    summary(counts.0 + 1, counts.1);
    Ok(())
}

/// Runs `cargo test`, passing its output through, and adds up its
/// "test result" lines.
pub fn run_counting(cmd: &mut Command) -> Result<(u64, u64, std::process::ExitStatus)> {
    use std::io::{BufRead, BufReader};
    let mut child =
        cmd.stdout(std::process::Stdio::piped()).spawn().context("starting cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok) {
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|p| {
                        p.trim()
                            .trim_start_matches("ok. ")
                            .trim_start_matches("FAILED. ")
                            .strip_suffix(word)?
                            .trim()
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    Ok((passed, failed, status))
}
