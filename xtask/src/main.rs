//! `cargo xtask`: the project's entry points, one module per subcommand.
//! `setup` installs what the build needs, `build` compiles the eBPF object and
//! both binaries, `lint` is the style gate, `run` is the local demo, `test`
//! runs the lint and every test, `vm-test` the VM lab, `bench` the benchmarks, `fuzz` the decoders' fuzz targets, `dist` the release artifacts. A failure ends xtask with the failing
//! command's own exit code where there is one.

mod bench;
mod build;
mod debtest;
mod dist;
mod fuzz;
mod lint;
mod run;
mod setup;
mod sys;
mod test;
mod util;
mod vmtest;
mod windows;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "hoist's build, demo and test tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build needs (nightly rust-src, bpf-linker, Debian packages).
    Setup,
    /// Build the eBPF object and target/release/hoist-agent, hoist-host (or, with
    /// --windows, target/x86_64-pc-windows-gnu/release/hoist-host.exe).
    Build(build::BuildArgs),
    /// Local demo: a network namespace as the guest, agent inside, host outside.
    Run(run::RunArgs),
    /// Check formatting and lint everything (clippy, -D warnings).
    Lint,
    /// Run every test, after the lint (needs root).
    Test(test::TestArgs),
    /// The VM lab: a QEMU guest on real vsock with another kernel (needs root).
    VmTest,
    /// Benchmarks against the alternatives (needs root; not part of `test` but its --quick mode).
    Bench(bench::BenchArgs),
    /// Fuzz the decoders of peer and kernel bytes (cargo-fuzz, nightly), each target for --time s.
    Fuzz(fuzz::FuzzArgs),
    /// Release artifacts into target/dist/: static Linux binaries, hoist-host.exe, .deb
    /// packages, units, completions, man pages, SHA256SUMS.
    Dist(DistArgs),
}

#[derive(clap::Args)]
struct DistArgs {
    /// Then install the .deb packages into a fresh root and forward a port
    /// through the installed binaries (needs root; the last phase of `test`).
    #[arg(long)]
    test: bool,
}

fn main() {
    let cli = Cli::parse();
    let r: Result<()> = match cli.cmd {
        Cmd::Setup => setup::setup_command(),
        Cmd::Build(a) if a.windows => {
            windows::build_host().map(|exe| util::say(format!("built {}", exe.display())))
        }
        Cmd::Build(a) => build::build_profile(a.debug).map(|b| {
            util::say(format!(
                "built {} and {} (eBPF object {})",
                b.agent.display(),
                b.host.display(),
                b.ebpf.display()
            ))
        }),
        Cmd::Lint => lint::lint(),
        Cmd::Run(a) => run::run(a),
        Cmd::Test(a) => test::test(a),
        Cmd::VmTest => vmtest::vm_test(),
        Cmd::Bench(a) => bench::bench(a),
        Cmd::Fuzz(a) => fuzz::fuzz(a),
        Cmd::Dist(a) => dist::dist().and_then(|d| {
            if a.test {
                util::require_root("cargo xtask dist --test")?;
                debtest::test_debs(&d)?;
            }
            Ok(())
        }),
    };
    if let Err(e) = r {
        eprintln!("xtask: error: {e:#}");
        let code = e.chain().find_map(|c| c.downcast_ref::<util::Exit>()).map_or(1, |x| x.code);
        std::process::exit(code);
    }
}
