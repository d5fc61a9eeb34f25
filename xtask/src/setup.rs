//! Installs what building and testing need, only when missing, saying what
//! it does: the nightly's rust-src (for -Z build-std), bpf-linker built
//! against the nightly's own LLVM (Debian's LLVM is too old for it), and the
//! Debian packages the demo and the tests use.

use crate::util::{have, output, root, run, say};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn setup() -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    apt(&[("ip", "iproute2"), ("python3", "python3"), ("curl", "curl")])?;
    Ok(())
}

fn rust_src() -> Result<()> {
    let installed = output(
        Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]),
        "rustup component list",
    )?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    say("installing the nightly toolchain's rust-src (needed for -Z build-std=core)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]), "rustup component add rust-src")
}

/// The nightly's LLVM: (major version, path of its shared library).
fn nightly_llvm() -> Result<(String, PathBuf)> {
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]), "rustc +nightly -vV")?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc +nightly -vV names no LLVM version")?;
    let major = version.split('.').next().unwrap().to_string();
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]), "rustc +nightly --print sysroot")?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let so = std::fs::read_dir(&lib)
        .with_context(|| format!("listing {}", lib.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so.")))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    Ok((major, so))
}

/// Where bpf-linker is installed: the project's own cache, so that a
/// bpf-linker built for another LLVM elsewhere on the machine does not count.
pub fn bpf_linker_root() -> PathBuf {
    root().join("target/xtask/bpf-linker")
}

/// LD_LIBRARY_PATH that lets bpf-linker find the nightly's libLLVM.
pub fn llvm_lib_dir() -> Result<PathBuf> {
    Ok(nightly_llvm()?.1.parent().unwrap().to_path_buf())
}

fn bpf_linker_works(bin: &Path) -> bool {
    let lib = match llvm_lib_dir() {
        Ok(l) => l,
        Err(_) => return false,
    };
    Command::new(bin)
        .arg("--version")
        .env("LD_LIBRARY_PATH", lib)
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false)
}

fn bpf_linker() -> Result<()> {
    let install_root = bpf_linker_root();
    let bin = install_root.join("bin/bpf-linker");
    let (major, so) = nightly_llvm()?;
    let stamp = install_root.join("llvm");
    let built_for = std::fs::read_to_string(&stamp).unwrap_or_default();
    if bin.exists() && built_for == so.display().to_string() && bpf_linker_works(&bin) {
        return Ok(());
    }
    say(format!("installing bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} (about a minute)"));
    // bpf-linker links LLVM by the name libLLVM.so: point it at the nightly's.
    let prefix = root().join("target/xtask/llvm-prefix");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).context("creating the LLVM prefix")?;
    for name in ["libLLVM.so".to_string(), so.file_name().unwrap().to_string_lossy().into_owned()] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&so, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    run(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--locked", "--force", "--version", BPF_LINKER_VERSION, "--no-default-features"])
            .args(["--features", &format!("llvm-{major}")])
            .arg("--root")
            .arg(&install_root)
            .env("LLVM_PREFIX", &prefix)
            .env("LD_LIBRARY_PATH", &lib),
        "cargo install bpf-linker",
    )?;
    if !bpf_linker_works(&bin) {
        bail!("bpf-linker was built but does not run ({} --version)", bin.display());
    }
    std::fs::write(&stamp, so.display().to_string()).context("writing the bpf-linker stamp")?;
    Ok(())
}

/// Installs the Debian packages whose commands are missing.
pub fn apt(needs: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = needs.iter().filter(|(cmd, _)| !have(cmd)).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    say(format!("installing Debian packages: {}", missing.join(" ")));
    run(Command::new("apt-get").args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive"), "apt-get update")?;
    run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )
}
