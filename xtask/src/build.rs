//! Builds the eBPF object (nightly, BPF target, bpf-linker from `setup`) and
//! the two release binaries with the object embedded.

use crate::setup::{bpf_linker_root, llvm_lib_dir, setup};
use crate::util::{root, run, say};
use anyhow::Result;
use std::path::PathBuf;
use std::process::Command;

/// What a build leaves behind.
pub struct Built {
    pub ebpf: PathBuf,
    pub agent: PathBuf,
    pub host: PathBuf,
}

pub fn ebpf_object() -> PathBuf {
    root().join("agent-ebpf/target/bpfel-unknown-none/release/hoist-agent-ebpf")
}

/// Compiles agent-ebpf; returns the object's path.
pub fn build_ebpf() -> Result<PathBuf> {
    setup()?;
    say("building the eBPF object (agent-ebpf, nightly, bpfel-unknown-none)");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bpf_linker_root().join("bin")];
    paths.extend(std::env::split_paths(&path));
    run(
        Command::new("cargo")
            .args(["+nightly", "build", "--locked", "--release", "--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .current_dir(root().join("agent-ebpf"))
            .env("PATH", std::env::join_paths(paths)?)
            .env("LD_LIBRARY_PATH", llvm_lib_dir()?)
            // Flags meant for the host build must not reach the BPF target.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS"),
        "cargo +nightly build (agent-ebpf)",
    )?;
    Ok(ebpf_object())
}

pub fn build() -> Result<Built> {
    let ebpf = build_ebpf()?;
    say("building target/release/hoist-agent and hoist-host");
    run(
        Command::new("cargo")
            .args(["build", "--locked", "--release", "-p", "hoist-agent", "-p", "hoist-host"])
            .current_dir(root())
            .env("HOIST_EBPF_OBJECT", &ebpf),
        "cargo build --release",
    )?;
    let dir = root().join("target/release");
    Ok(Built { ebpf, agent: dir.join("hoist-agent"), host: dir.join("hoist-host") })
}
