//! What the released binaries print about themselves: the version line with
//! the git commit, log colours only on a terminal (and never with NO_COLOR),
//! and the hidden `completions` and `man` subcommands that `cargo xtask dist`
//! calls. The real binaries, run as a user would (a pseudo-terminal from
//! util-linux's `script` where a terminal is needed).

mod common;

use common::bin;
use std::process::{Command, Stdio};

fn binaries() -> [(&'static str, std::path::PathBuf); 2] {
    [("hoist-agent", bin("HOIST_AGENT_BIN")), ("hoist-host", bin("HOIST_HOST_BIN"))]
}

fn stdout(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn both_binaries_print_their_version_and_commit() {
    for (name, path) in binaries() {
        let v = stdout(Command::new(&path).arg("--version"));
        let rest = v.trim().strip_prefix(&format!("{name} {} (git ", env!("CARGO_PKG_VERSION")));
        let commit = rest.and_then(|r| r.strip_suffix(')')).unwrap_or_else(|| panic!("{v}"));
        assert!(
            commit == "unknown" || commit.chars().all(|c| c.is_ascii_hexdigit()),
            "{name}: {v}"
        );
    }
}

#[test]
fn completions_and_man_pages_come_from_the_binaries() {
    for (name, path) in binaries() {
        for shell in ["bash", "zsh", "fish"] {
            let text = stdout(Command::new(&path).args(["completions", shell]));
            assert!(text.contains(name) && text.contains("log-format"), "{name} {shell}");
        }
        let page = stdout(Command::new(&path).arg("man"));
        assert!(page.contains(&format!(".TH {name} 1")), "{name}: {page}");
        assert!(page.contains("log\\-format"), "{name}");
        let dir = std::env::temp_dir().join(format!("hoist-e2e-man-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        stdout(Command::new(&path).args(["man", "--dir"]).arg(&dir));
        for page in [format!("{name}.1"), format!("{name}-run.1")] {
            assert!(dir.join(&page).is_file(), "{page} in {}", dir.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
        // Hidden: they are for packagers, not in --help.
        let help = stdout(Command::new(&path).arg("--help"));
        assert!(!help.contains("completions") && !help.contains("\n  man"), "{help}");
    }
}

/// A configuration error makes the agent log one ERROR line and exit: the
/// line is coloured only when stderr is a terminal and NO_COLOR is unset.
#[test]
fn log_colours_only_on_a_terminal_and_never_with_no_color() {
    let agent = bin("HOIST_AGENT_BIN");
    let fails = format!("{} --listen vsock:any:5000", agent.display());
    let esc = "\x1b[";
    // A pipe: no colour.
    let out = Command::new(&agent)
        .args(["--listen", "vsock:any:5000"])
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let piped = String::from_utf8_lossy(&out.stderr);
    assert!(piped.contains("ERROR") && !piped.contains(esc), "{piped:?}");
    // A terminal (script's pseudo-terminal carries stderr to its stdout).
    let on_tty = |no_color: Option<&str>| {
        let mut cmd = Command::new("script");
        cmd.args(["-qefc", &fails, "/dev/null"]).env_remove("NO_COLOR");
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        let out = cmd.stdin(Stdio::null()).output().expect("util-linux's script");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let tty = on_tty(None);
    assert!(tty.contains("ERROR") && tty.contains(esc), "{tty:?}");
    let tty = on_tty(Some("1"));
    assert!(tty.contains("ERROR") && !tty.contains(esc), "{tty:?}");
}
