//! `cargo xtask lint`: the style gate, and the first step of `cargo xtask
//! test`. rustfmt must have nothing to change (workspace, eBPF and fuzz
//! crates), and clippy must find nothing with every warning an error: the
//! workspace on the stable toolchain, the eBPF crate on the nightly for the
//! BPF target, and the crates that build for Windows for
//! x86_64-pc-windows-gnu.

use crate::build::{build_ebpf, ebpf_cargo};
use crate::util::{root, run, say};
use anyhow::Result;
use std::process::Command;

/// rustfmt's verdict alone: needs no build.
pub fn format() -> Result<()> {
    say("checking formatting (cargo fmt --check, workspace, agent-ebpf and fuzz)");
    run(
        Command::new("cargo").args(["fmt", "--all", "--check"]).current_dir(root()),
        "cargo fmt --check",
    )?;
    run(
        Command::new("cargo")
            .args(["fmt", "--all", "--check", "--manifest-path"])
            .arg(root().join("agent-ebpf/Cargo.toml")),
        "cargo fmt --check (agent-ebpf)",
    )?;
    run(
        Command::new("cargo")
            .args(["fmt", "--check", "--manifest-path"])
            .arg(root().join("fuzz/Cargo.toml")),
        "cargo fmt --check (fuzz)",
    )
}

/// clippy with `-D warnings` on everything; the agent embeds the eBPF
/// object, so that is built first.
pub fn clippy() -> Result<()> {
    let ebpf = build_ebpf()?;
    say("linting the eBPF crate (cargo +nightly clippy, bpfel-unknown-none, -D warnings)");
    run(ebpf_cargo("clippy").args(["--", "-D", "warnings"]), "cargo +nightly clippy (agent-ebpf)")?;
    say("linting the workspace (cargo clippy --all-targets, -D warnings)");
    run(
        Command::new("cargo")
            .args(["clippy", "--locked", "--workspace", "--all-targets"])
            // The Wine end-to-end test builds only with this feature.
            .args(["--features", "hoist-e2e/wine", "--", "-D", "warnings"])
            .current_dir(root())
            .env("HOIST_EBPF_OBJECT", ebpf),
        "cargo clippy",
    )?;
    crate::windows::clippy()
}

/// Both, formatting first.
pub fn lint() -> Result<()> {
    format()?;
    clippy()
}
