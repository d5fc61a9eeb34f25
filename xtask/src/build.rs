//! `cargo xtask build`: the eBPF object (agent-ebpf, nightly, BPF target,
//! with the bpf-linker from `setup`) and the two binaries with the object
//! embedded (agent/build.rs reads HOIST_EBPF_OBJECT).

use crate::setup::{bpf_linker_root, setup};
use crate::util::{root, run, say, target_dir};
use anyhow::Result;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Build hoist-agent and hoist-host unoptimised, into target/debug (the
    /// eBPF object is always built with optimisations: the verifier needs them).
    #[arg(long)]
    pub debug: bool,
    /// Build only hoist-host.exe for Windows (x86_64-pc-windows-gnu, mingw-w64),
    /// into target/x86_64-pc-windows-gnu/release.
    #[arg(long, conflicts_with = "debug")]
    pub windows: bool,
}

/// What a build leaves behind; absolute paths.
#[derive(Clone)]
pub struct Built {
    pub ebpf: PathBuf,
    pub agent: PathBuf,
    pub host: PathBuf,
}

pub fn ebpf_object() -> PathBuf {
    root().join("agent-ebpf/target/bpfel-unknown-none/release/hoist-agent-ebpf")
}

/// `cargo +nightly <verb>` for agent-ebpf: the BPF target, core built from
/// source, our bpf-linker first on PATH, and none of the host build's
/// settings.
pub fn ebpf_cargo(verb: &str) -> Command {
    // rustc finds the linker by name on PATH: ours first.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(bpf_linker_root().join("bin")).chain(std::env::split_paths(&path)),
    )
    .expect("PATH entries hold no separator");
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", verb, "--locked", "--release", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core"])
        .current_dir(root().join("agent-ebpf"))
        .env("PATH", path)
        // What is meant for the host build must not reach the BPF one: its
        // flags, a stable rustc, a shared target folder (agent/build.rs
        // expects the object inside agent-ebpf/target).
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC")
        .env_remove("CARGO_TARGET_DIR");
    cmd
}

/// Compiles agent-ebpf; returns the object's path.
pub fn build_ebpf() -> Result<PathBuf> {
    setup()?;
    say("building the eBPF object (agent-ebpf: nightly, bpfel-unknown-none, -Z build-std=core)");
    run(&mut ebpf_cargo("build"), "running cargo +nightly build for agent-ebpf")?;
    let object = ebpf_object();
    anyhow::ensure!(
        object.is_file(),
        "the eBPF build succeeded but left no object at {}",
        object.display()
    );
    Ok(object)
}

/// The eBPF object and the release binaries; built once per xtask run, since
/// `test` needs them for the tests, the VM lab and the bench.
pub fn build() -> Result<Built> {
    static BUILT: OnceLock<Built> = OnceLock::new();
    if let Some(b) = BUILT.get() {
        return Ok(b.clone());
    }
    let b = build_profile(false)?;
    Ok(BUILT.get_or_init(|| b).clone())
}

pub fn build_profile(debug: bool) -> Result<Built> {
    let ebpf = build_ebpf()?;
    let profile = if debug { "debug" } else { "release" };
    say(format!("building target/{profile}/hoist-agent and hoist-host"));
    let mut cmd = Command::new("cargo");
    cmd.args(["build", "--locked", "-p", "hoist-agent", "-p", "hoist-host"]);
    if !debug {
        cmd.arg("--release");
    }
    run(
        cmd.current_dir(root()).env("HOIST_EBPF_OBJECT", &ebpf),
        &format!("running cargo build ({profile}) for hoist-agent and hoist-host"),
    )?;
    let dir = target_dir().join(profile);
    Ok(Built { ebpf, agent: dir.join("hoist-agent"), host: dir.join("hoist-host") })
}
