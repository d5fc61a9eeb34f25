//! The Windows build and its tests on this Linux machine: hoist-host.exe for
//! x86_64-pc-windows-gnu, linked by Debian's mingw-w64, run under Wine.
//!
//! `setup` installs what is missing, one line per action: the Rust target,
//! the Debian packages `gcc-mingw-w64-x86-64` and `wine64`, a Wine prefix of
//! the project's own (target/wine/prefix), and a TEST-ONLY
//! `bcryptprimitives.dll` (xtask/wine/bcryptprimitives.c) that gives Wine 8.0
//! the `ProcessPrng` Rust's standard library imports. That DLL is never
//! shipped: real Windows has it.
//!
//! The linker (and, for tests, the runner) are passed to cargo as
//! `CARGO_TARGET_X86_64_PC_WINDOWS_GNU_*` variables rather than written to
//! .cargo/config.toml: on a Windows machine the gnu target links with its
//! own self-contained mingw, which a checked-in `linker =` would override,
//! and Wine is only ever the runner here.

use crate::build::Built;
use crate::setup::apt;
use crate::test::run_counting;
use crate::util::{check, output, root, run, say, target_dir};
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const TARGET: &str = "x86_64-pc-windows-gnu";
const LINKER: &str = "x86_64-w64-mingw32-gcc";
/// The crates that build for Windows; the agent and its eBPF side are Linux only.
pub const CRATES: &[&str] = &["hoist-wire", "hoist-net", "hoist-host"];

/// Where the Wine pieces live.
pub struct Wine {
    /// WINEPREFIX.
    pub prefix: PathBuf,
    /// The folder holding the shim DLL, on WINEPATH.
    pub dlls: PathBuf,
}

/// `rustup target add` when the target's standard library is missing.
pub fn rust_target() -> Result<bool> {
    let installed = output(
        Command::new("rustup").args(["target", "list", "--installed"]),
        "listing rustup's installed targets",
    )?;
    if installed.lines().any(|l| l.trim() == TARGET) {
        return Ok(false);
    }
    say(format!("installing the Rust standard library for {TARGET} (rustup target add)"));
    run(Command::new("rustup").args(["target", "add", TARGET]), "rustup target add")?;
    Ok(true)
}

/// Everything the Windows build and the Wine tests need; checked once per run.
pub fn setup() -> Result<&'static Wine> {
    static WINE: OnceLock<Wine> = OnceLock::new();
    if let Some(w) = WINE.get() {
        return Ok(w);
    }
    rust_target()?;
    // The `wine` command comes from the `wine` package, a launcher for the
    // loader in `wine64` (which puts nothing on PATH itself).
    apt(&[(LINKER, "gcc-mingw-w64-x86-64"), ("wine", "wine64"), ("wine", "wine")])?;
    let base = target_dir().join("wine");
    let wine = Wine { prefix: base.join("prefix"), dlls: base.join("dll") };
    shim(&wine.dlls)?;
    prefix(&wine)?;
    Ok(WINE.get_or_init(|| wine))
}

/// Builds the shim DLL when it is missing or older than its source.
fn shim(dir: &Path) -> Result<()> {
    let src = root().join("xtask/wine/bcryptprimitives.c");
    let dll = dir.join("bcryptprimitives.dll");
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if matches!((mtime(&src), mtime(&dll)), (Some(s), Some(d)) if d >= s) {
        return Ok(());
    }
    say(format!(
        "building the test-only Wine shim {} (ProcessPrng over SystemFunction036)",
        dll.display()
    ));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    run(
        Command::new(LINKER)
            .args(["-shared", "-O2", "-o"])
            .arg(&dll)
            .arg(&src)
            .args(["-ladvapi32", "-Wl,--kill-at"]),
        "building bcryptprimitives.dll with x86_64-w64-mingw32-gcc",
    )
}

/// Creates the Wine prefix on first use (`wineboot --init`, a few seconds).
fn prefix(wine: &Wine) -> Result<()> {
    if wine.prefix.join("system.reg").is_file() {
        return Ok(());
    }
    say(format!("creating the Wine prefix {} (wineboot, a few seconds)", wine.prefix.display()));
    std::fs::create_dir_all(&wine.prefix)
        .with_context(|| format!("creating {}", wine.prefix.display()))?;
    let mut cmd = Command::new("wine");
    env(&mut cmd, wine);
    // wineboot complains about a missing 32-bit rundll32 on a 64-bit-only
    // Wine; the prefix is fine. Its output is noise either way.
    let out = cmd.args(["wineboot", "--init"]).output().context("starting wine wineboot")?;
    ensure!(
        wine.prefix.join("system.reg").is_file(),
        "wineboot left no prefix in {} ({}): {}",
        wine.prefix.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The Wine environment: our prefix, quiet, the shim DLL findable.
pub fn env(cmd: &mut Command, wine: &Wine) {
    cmd.env("WINEPREFIX", &wine.prefix).env("WINEDEBUG", "-all").env("WINEPATH", &wine.dlls);
}

/// `cargo <verb> --locked --target x86_64-pc-windows-gnu` with the mingw
/// linker and Wine as the runner of test binaries.
pub fn cargo(verb: &str, wine: &Wine) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args([verb, "--locked", "--target", TARGET])
        .current_dir(root())
        .env("CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER", LINKER)
        .env("CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER", "wine");
    env(&mut cmd, wine);
    cmd
}

/// `cargo xtask build --windows`: target/x86_64-pc-windows-gnu/release/hoist-host.exe.
pub fn build_host() -> Result<PathBuf> {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    if let Some(p) = BUILT.get() {
        return Ok(p.clone());
    }
    let wine = setup()?;
    say(format!("building target/{TARGET}/release/hoist-host.exe"));
    run(
        cargo("build", wine).args(["--release", "-p", "hoist-host"]),
        &format!("cargo build --target {TARGET} for hoist-host"),
    )?;
    let exe = target_dir().join(TARGET).join("release/hoist-host.exe");
    ensure!(exe.is_file(), "the Windows build succeeded but left no {}", exe.display());
    Ok(BUILT.get_or_init(|| exe).clone())
}

/// clippy for the Windows target, every warning an error (no Wine needed).
pub fn clippy() -> Result<()> {
    rust_target()?;
    say(format!("linting the Windows build (cargo clippy --target {TARGET}, -D warnings)"));
    let mut cmd = Command::new("cargo");
    cmd.args(["clippy", "--locked", "--target", TARGET, "--all-targets"])
        .args(CRATES.iter().flat_map(|c| ["-p", c]))
        .args(["--", "-D", "warnings"])
        .current_dir(root());
    run(&mut cmd, &format!("cargo clippy --target {TARGET}"))
}

/// The Windows phases of `cargo xtask test`, after the Linux ones:
/// hoist-host.exe; the unit tests of the crates that build for Windows,
/// cross-compiled and run under Wine; then the end-to-end test of the .exe
/// under Wine against the real agent (e2e/tests/wine.rs). Adds what ran to
/// `counts` (passed, failed).
pub fn test(built: &Built, counts: &mut (u64, u64)) -> Result<()> {
    let exe = build_host()?;
    let wine = setup()?;
    say(format!("running the Windows unit tests of {} under Wine", CRATES.join(", ")));
    let mut cmd = cargo("test", wine);
    cmd.arg("--release").args(CRATES.iter().flat_map(|c| ["-p", c]));
    let (p, f, status) = run_counting(&mut cmd)?;
    (counts.0, counts.1) = (counts.0 + p, counts.1 + f);
    check(status, "cargo test under Wine")?;

    say("running hoist-host.exe under Wine against the real agent (e2e/tests/wine.rs)");
    let mut cmd = Command::new("cargo");
    cmd.args(["test", "--locked", "--release", "-p", "hoist-e2e", "--features", "wine"])
        .args(["--test", "wine", "--", "--test-threads=1"])
        .current_dir(root())
        .env("HOIST_EBPF_OBJECT", &built.ebpf)
        .env("HOIST_AGENT_BIN", &built.agent)
        .env("HOIST_HOST_EXE", &exe);
    env(&mut cmd, wine);
    let (p, f, status) = run_counting(&mut cmd)?;
    (counts.0, counts.1) = (counts.0 + p, counts.1 + f);
    check(status, "the Wine end-to-end test")
}
