//! `cargo xtask setup`: installs what building and testing need, only when it
//! is missing, one line per action: the nightly toolchain's rust-src (for
//! -Z build-std), bpf-linker built against the nightly's own LLVM (Debian's
//! LLVM is too old for it), and the Debian packages the demo and the tests
//! run. Everything present costs a few rustup/rustc queries.

use crate::util::{have, output, run, say, target_dir};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// Commands the demo and the tests run, and the Debian package of each.
/// dnsmasq-base and bind9-dnsutils are the UDP tests' DNS server and client
/// (dnsmasq-base: the binary alone, no service that would take port 53 on
/// this machine).
const DEBIAN: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("python3", "python3"),
    ("curl", "curl"),
    ("dnsmasq", "dnsmasq-base"),
    ("dig", "bind9-dnsutils"),
];

/// Returns whether it installed anything. `test` builds several times in one
/// run (tests, VM lab, bench): the checks run once.
pub fn setup() -> Result<bool> {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.load(Ordering::Relaxed) {
        return Ok(false);
    }
    let mut acted = nightly()?;
    acted |= components()?;
    acted |= bpf_linker()?;
    acted |= apt(DEBIAN)?;
    DONE.store(true, Ordering::Relaxed);
    Ok(acted)
}

/// `setup` as a subcommand: also says so when there was nothing to do.
pub fn setup_command() -> Result<()> {
    if !setup()? {
        let llvm = nightly_llvm()?;
        say(format!(
            "nothing to install: nightly rust-src, clippy and rustfmt, bpf-linker {BPF_LINKER_VERSION} for the nightly's LLVM {}, {} are present",
            llvm.version,
            DEBIAN.iter().map(|(cmd, _)| *cmd).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(())
}

/// The machines come with a nightly; this is for one that lost it.
fn nightly() -> Result<bool> {
    let list =
        output(Command::new("rustup").args(["toolchain", "list"]), "listing rustup toolchains")?;
    // `nightly-<host>` is what `+nightly` means; a dated nightly is another toolchain.
    let present = list.lines().filter_map(|l| l.split_whitespace().next()).any(|t| {
        t.strip_prefix("nightly-")
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    });
    if present {
        return Ok(false);
    }
    say("installing the nightly toolchain with rust-src (the eBPF crate needs nightly's -Z build-std)");
    run(
        Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]),
        "rustup toolchain install nightly",
    )?;
    Ok(true)
}

/// Components each toolchain needs: the nightly builds core for the BPF
/// target from source and lints the eBPF crate; stable formats and lints the
/// workspace.
const COMPONENTS: &[(&str, &[&str])] =
    &[("nightly", &["rust-src", "clippy", "rustfmt"]), ("stable", &["clippy", "rustfmt"])];

fn components() -> Result<bool> {
    let mut acted = false;
    for (toolchain, wanted) in COMPONENTS {
        let installed = output(
            Command::new("rustup").args([
                "component",
                "list",
                "--toolchain",
                toolchain,
                "--installed",
            ]),
            &format!(
                "listing the {toolchain} toolchain's installed components (rustup component list)"
            ),
        )?;
        // Listed as `<name>` or `<name>-<target triple>`.
        let has = |c: &str| {
            installed.lines().map(str::trim).any(|l| l == c || l.starts_with(&format!("{c}-")))
        };
        let missing: Vec<&str> = wanted.iter().copied().filter(|c| !has(c)).collect();
        if missing.is_empty() {
            continue;
        }
        say(format!("installing the {toolchain} toolchain's {}", missing.join(", ")));
        run(
            Command::new("rustup")
                .args(["component", "add", "--toolchain", toolchain])
                .args(&missing),
            &format!("rustup component add --toolchain {toolchain} {}", missing.join(" ")),
        )?;
        acted = true;
    }
    Ok(acted)
}

/// The LLVM that the nightly's rustc carries.
pub struct Llvm {
    /// As `rustc -vV` prints it, e.g. 22.1.4.
    pub version: String,
    pub major: String,
    /// The shared library itself (not the linker script beside it).
    pub so: PathBuf,
}

pub fn nightly_llvm() -> Result<&'static Llvm> {
    static LLVM: OnceLock<Llvm> = OnceLock::new();
    if let Some(l) = LLVM.get() {
        return Ok(l);
    }
    let vv = output(
        Command::new("rustc").args(["+nightly", "-vV"]),
        "asking the nightly rustc its LLVM version (rustc +nightly -vV)",
    )?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc +nightly -vV names no LLVM version")?
        .trim()
        .to_string();
    let major = version.split('.').next().unwrap_or_default().to_string();
    let sysroot = output(
        Command::new("rustc").args(["+nightly", "--print", "sysroot"]),
        "rustc +nightly --print sysroot",
    )?;
    let lib = Path::new(sysroot.trim()).join("lib");
    // Toolchains ship libLLVM.so.<ver>-rust-<release> and, in older ones,
    // libLLVM-<major>-rust-<release>.so; one of them may be a linker script,
    // so take the one that is an ELF file.
    let is_elf = |p: &Path| {
        use std::io::Read;
        let mut magic = [0u8; 4];
        std::fs::File::open(p).and_then(|mut f| f.read_exact(&mut magic)).is_ok()
            && &magic == b"\x7fELF"
    };
    let so = std::fs::read_dir(&lib)
        .with_context(|| format!("listing the nightly's {}", lib.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM") && n.contains(".so"))
        })
        .find(|p| is_elf(p))
        .with_context(|| format!("no libLLVM shared library in {}", lib.display()))?;
    Ok(LLVM.get_or_init(|| Llvm { version, major, so }))
}

/// The project's own bpf-linker, so that one built elsewhere on the machine
/// for another LLVM does not count.
pub fn bpf_linker_root() -> PathBuf {
    target_dir().join("xtask/bpf-linker")
}

/// Runs `bin --version` the way rustc will, with no LD_LIBRARY_PATH help:
/// its rpath must find the nightly's libLLVM. A nightly update that removed
/// that library makes this fail, and `setup` rebuilds.
fn bpf_linker_runs(bin: &Path) -> bool {
    Command::new(bin).arg("--version").env_remove("LD_LIBRARY_PATH").output().is_ok_and(|o| {
        o.status.success()
            && String::from_utf8_lossy(&o.stdout)
                .contains(&format!("bpf-linker {BPF_LINKER_VERSION}"))
    })
}

fn bpf_linker() -> Result<bool> {
    let llvm = nightly_llvm()?;
    let install_root = bpf_linker_root();
    let bin = install_root.join("bin/bpf-linker");
    // Which libLLVM it was built against; a new nightly with another LLVM
    // means another library path.
    let stamp = install_root.join("llvm");
    let built_for = std::fs::read_to_string(&stamp).unwrap_or_default();
    if built_for == llvm.so.display().to_string() && bpf_linker_runs(&bin) {
        return Ok(false);
    }
    say(format!(
        "installing bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {} (about a minute)",
        llvm.major
    ));
    // bpf-linker links `-lLLVM` from $LLVM_PREFIX/lib and sets its rpath
    // there; the soname-named link is what the loader looks for at run time.
    let prefix = target_dir().join("xtask/llvm-prefix");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)
        .with_context(|| format!("creating the LLVM prefix {}", lib.display()))?;
    let soname = llvm.so.file_name().unwrap().to_string_lossy().into_owned();
    for name in ["libLLVM.so".to_string(), soname] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm.so, &link)
            .with_context(|| format!("linking {} to the nightly's libLLVM", link.display()))?;
    }
    let _ = std::fs::remove_file(&stamp);
    run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{}", llvm.major)])
            .arg("--root")
            .arg(&install_root)
            .env("LLVM_PREFIX", &prefix)
            .env("LD_LIBRARY_PATH", &lib)
            // Flags meant for the project's own build are not bpf-linker's.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR"),
        &format!("cargo install bpf-linker {BPF_LINKER_VERSION} (features llvm-{})", llvm.major),
    )?;
    if !bpf_linker_runs(&bin) {
        bail!("bpf-linker was built but does not run: {} --version", bin.display());
    }
    std::fs::write(&stamp, llvm.so.display().to_string())
        .with_context(|| format!("writing {}", stamp.display()))?;
    Ok(true)
}

/// `apt-get update` once per xtask run, before the first install or look-up.
pub fn apt_update() -> Result<()> {
    static UPDATED: AtomicBool = AtomicBool::new(false);
    if UPDATED.load(Ordering::Relaxed) {
        return Ok(());
    }
    say("updating the Debian package lists (apt-get update)");
    run(
        Command::new("apt-get").args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get update",
    )?;
    UPDATED.store(true, Ordering::Relaxed);
    Ok(())
}

/// Installs the Debian packages whose commands are missing; returns whether
/// it installed any.
pub fn apt(needs: &[(&str, &str)]) -> Result<bool> {
    let mut missing: Vec<&str> =
        needs.iter().filter(|(cmd, _)| !have(cmd)).map(|(_, pkg)| *pkg).collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(false);
    }
    say(format!("installing Debian packages: {}", missing.join(" ")));
    apt_update()?;
    run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(std::process::Stdio::null()),
        &format!("apt-get install {}", missing.join(" ")),
    )?;
    Ok(true)
}
