//! `cargo xtask fuzz`: the libFuzzer targets in `fuzz/` (one per decoder of
//! peer or kernel bytes), built once with cargo-fuzz on the nightly toolchain
//! and run one after the other for a given time each. Each target starts
//! from its checked-in seeds (`fuzz/corpus/<target>`, only read) and grows a
//! corpus of its own in `fuzz/grown/<target>`; crashing inputs land in
//! `fuzz/artifacts/<target>`, full logs in `fuzz/logs/<target>.log` (all
//! three ignored by git). A crash fails the run with the input's path and a
//! one-line reason. `cargo xtask test` runs every target for [`TEST_SECS`].

use crate::build::build_ebpf;
use crate::util::{check, root, run, say, target_dir};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The cargo-fuzz release installed into the project's own tools folder.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Seconds each target runs in `cargo xtask test`.
pub const TEST_SECS: u64 = 10;

/// Every target, in the order they run; each is `fuzz/fuzz_targets/<name>.rs`.
pub const TARGETS: &[&str] =
    &["frame", "host_msg", "agent_msg", "conn", "segment", "mux_reply", "sock_diag", "ring_event"];

/// Longest a single input may take before libFuzzer calls it a hang.
const INPUT_TIMEOUT_SECS: u64 = 10;

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = 60)]
    pub time: u64,
    /// Fuzz only this target (default: all of them).
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub target: Option<String>,
}

pub fn fuzz(args: FuzzArgs) -> Result<()> {
    let targets: Vec<&str> = match &args.target {
        Some(t) => TARGETS.iter().copied().filter(|n| n == t).collect(),
        None => TARGETS.to_vec(),
    };
    let ebpf = build_ebpf()?;
    build_targets(&ebpf)?;
    for t in targets {
        run_target(t, args.time, &ebpf)?;
    }
    Ok(())
}

/// `cargo xtask test`'s part: every target for [`TEST_SECS`], each one test.
/// Returns how many passed and failed, and the first failure.
pub fn smoke(ebpf: &Path) -> (u64, u64, Result<()>) {
    say(format!("fuzzing every decoder for {TEST_SECS} s ({} targets)", TARGETS.len()));
    if let Err(e) = build_targets(ebpf) {
        return (0, TARGETS.len() as u64, Err(e));
    }
    let (mut passed, mut failed, mut first) = (0, 0, Ok(()));
    for t in TARGETS {
        match run_target(t, TEST_SECS, ebpf) {
            Ok(()) => passed += 1,
            Err(e) => {
                eprintln!("xtask: fuzz target {t} FAILED: {e:#}");
                failed += 1;
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
    }
    (passed, failed, first)
}

/// Instrumentation and checks every build and run of the targets shares;
/// `cargo fuzz run` rebuilds unless they match the build's.
const BUILD_FLAGS: &[&str] = &[
    // Release code with debug assertions and overflow checks, so arithmetic
    // overflow in a decoder is a crash.
    "--release",
    "--debug-assertions",
    // The decoders are safe Rust: a sanitizer would find little a panic
    // does not, and AddressSanitizer cuts the executions per second 2 to 9
    // times.
    "--sanitizer",
    "none",
    // cargo-fuzz's default of one unit per crate makes the build nearly
    // serial: 16 takes it from about 2.7 to 1.7 minutes on 2 cores.
    "--codegen-units",
    "16",
];

fn build_targets(ebpf: &Path) -> Result<()> {
    let tools = cargo_fuzz()?;
    say("building the fuzz targets (cargo +nightly fuzz build)");
    run(cargo_fuzz_cmd(&tools, "build", ebpf).args(BUILD_FLAGS), "cargo +nightly fuzz build")
}

/// `cargo +nightly fuzz <verb>` from the workspace root, with our cargo-fuzz
/// first on PATH and none of the host build's flags or target folder.
fn cargo_fuzz_cmd(tools: &Path, verb: &str, ebpf: &Path) -> Command {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(tools.join("bin")).chain(std::env::split_paths(&path)),
    )
    .expect("PATH entries hold no separator");
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "fuzz", verb, "--fuzz-dir"])
        .arg(fuzz_dir())
        .current_dir(root())
        .env("PATH", path)
        .env("HOIST_EBPF_OBJECT", ebpf)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR");
    cmd
}

fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

/// Fuzzes `target` for `secs`; fails on a crash (panic, hang, out of memory)
/// with the crashing input's path and the reason.
fn run_target(target: &str, secs: u64, ebpf: &Path) -> Result<()> {
    let dir = fuzz_dir();
    let seeds = dir.join("corpus").join(target);
    let grown = dir.join("grown").join(target);
    let logs = dir.join("logs");
    for d in [&grown, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    say(format!("fuzzing {target} for {secs} s (log: {})", log_path.display()));
    let started = std::time::Instant::now();
    // libFuzzer adds new inputs to its first corpus folder and only reads the
    // others: the grown one comes first, the seeds stay as checked in.
    let status = cargo_fuzz_cmd(&cargo_fuzz()?, "run", ebpf)
        .args(BUILD_FLAGS)
        .arg(target)
        .args([&grown, &seeds])
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().context("sharing the log file")?)
        .stderr(log)
        .status()
        .context("starting cargo +nightly fuzz run")?;
    let text = std::fs::read_to_string(&log_path)
        .with_context(|| format!("reading {}", log_path.display()))?;
    let report = Report::parse(&text);
    if let Some(input) = &report.crash_input {
        bail!(
            "fuzz target {target} crashed on {}: {}",
            root().join(input).display(),
            report.reason.as_deref().unwrap_or("see the log")
        );
    }
    if let Err(e) = check(status, &format!("cargo fuzz run {target}")) {
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        return Err(e.context(format!("fuzz target {target}; log: {}", log_path.display())));
    }
    say(format!(
        "fuzz {target}: {} runs in {:.0} s ({} exec/s), corpus {} inputs, no crash",
        report.runs.map_or("?".into(), |r| r.to_string()),
        started.elapsed().as_secs_f64(),
        report.exec_per_sec.map_or("?".into(), |r| r.to_string()),
        report.corpus.map_or("?".into(), |r| r.to_string()),
    ));
    Ok(())
}

/// What a libFuzzer log says about a run.
#[derive(Debug, Default, PartialEq)]
struct Report {
    /// `Done <runs> runs in <s> second(s)`.
    runs: Option<u64>,
    /// From the last status line (`... exec/s: <n> ...`).
    exec_per_sec: Option<u64>,
    /// Inputs in the corpus (`corp: <n>/<size>`).
    corpus: Option<u64>,
    /// `Test unit written to <path>`: the crashing (or hanging) input.
    crash_input: Option<String>,
    /// A panic's message and place, or libFuzzer's or a sanitizer's error.
    reason: Option<String>,
}

impl Report {
    fn parse(log: &str) -> Report {
        let mut r = Report::default();
        let mut lines = log.lines().peekable();
        while let Some(line) = lines.next() {
            let field = |name: &str| -> Option<&str> {
                line.split_once(name).map(|(_, rest)| rest.split_whitespace().next().unwrap_or(""))
            };
            if let Some(rest) = line.strip_prefix("Done ") {
                r.runs = rest.split_whitespace().next().and_then(|n| n.parse().ok());
            }
            if line.starts_with('#') {
                if let Some(n) = field("exec/s: ").and_then(|n| n.parse().ok()) {
                    r.exec_per_sec = Some(n);
                }
                if let Some(n) = field("corp: ").and_then(|c| c.split('/').next()?.parse().ok()) {
                    r.corpus = Some(n);
                }
            }
            if let Some((_, path)) = line.split_once("Test unit written to ") {
                r.crash_input = Some(path.trim().to_string());
            }
            // `thread '<unnamed>' (123) panicked at src/x.rs:1:2:` then the message.
            let panic = line.split_once(" panicked at ").filter(|_| line.starts_with("thread "));
            if let Some((_, place)) = panic {
                let msg = lines.peek().copied().unwrap_or("").trim();
                r.reason.get_or_insert_with(|| format!("panicked at {place} {msg}"));
            } else if let Some((_, e)) = line.split_once("ERROR: ") {
                r.reason.get_or_insert_with(|| e.trim().to_string());
            }
        }
        r
    }
}

/// The project's own cargo-fuzz, installed when missing (like bpf-linker in
/// `setup`, so a fresh machine gets the same one); returns its install root.
fn cargo_fuzz() -> Result<PathBuf> {
    let tools = target_dir().join("xtask/cargo-fuzz");
    let bin = tools.join("bin/cargo-fuzz");
    let runs = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION));
    if runs {
        return Ok(tools);
    }
    say(format!("installing cargo-fuzz {CARGO_FUZZ_VERSION} (about a minute)"));
    run(
        Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked", "--force", "--version", CARGO_FUZZ_VERSION])
            .arg("--root")
            .arg(&tools)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR"),
        &format!("cargo install cargo-fuzz {CARGO_FUZZ_VERSION}"),
    )?;
    Ok(tools)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libfuzzer_logs_are_read() {
        let clean = "INFO: Seed: 1\n#2\tINITED cov: 10 ft: 11 corp: 3/30b exec/s: 0 rss: 30Mb\n\
                     #9000\tDONE   cov: 40 ft: 80 corp: 12/300b lim: 4 exec/s: 900 rss: 40Mb\n\
                     Done 9000 runs in 11 second(s)\n";
        let panic = "#5\tNEW    cov: 3 ft: 3 corp: 2/4b exec/s: 0 rss: 30Mb\n\
                     thread '<unnamed>' (77) panicked at wire/src/msg.rs:10:5:\n\
                     attempt to negate with overflow\n\
                     ==77== ERROR: libFuzzer: deadly signal\n\
                     artifact_prefix='/w/fuzz/artifacts/frame/'; Test unit written to /w/fuzz/artifacts/frame/crash-ab\n";
        let hang = "==9== ERROR: libFuzzer: timeout after 10 seconds\n\
                    artifact_prefix='a/'; Test unit written to a/timeout-cd\n";
        let cases: &[(&str, &str, Report)] = &[
            (
                "clean",
                clean,
                Report {
                    runs: Some(9000),
                    exec_per_sec: Some(900),
                    corpus: Some(12),
                    ..Report::default()
                },
            ),
            (
                "panic",
                panic,
                Report {
                    corpus: Some(2),
                    exec_per_sec: Some(0),
                    crash_input: Some("/w/fuzz/artifacts/frame/crash-ab".into()),
                    reason: Some(
                        "panicked at wire/src/msg.rs:10:5: attempt to negate with overflow".into(),
                    ),
                    ..Report::default()
                },
            ),
            (
                "hang",
                hang,
                Report {
                    crash_input: Some("a/timeout-cd".into()),
                    reason: Some("libFuzzer: timeout after 10 seconds".into()),
                    ..Report::default()
                },
            ),
        ];
        for (name, log, want) in cases {
            assert_eq!(&Report::parse(log), want, "{name}");
        }
    }
}
