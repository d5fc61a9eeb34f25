//! `hoist-agent check` on the real kernel: it passes here on the tracepoint
//! hooks and explains why the trampoline hooks are refused (this machine's
//! kernel refuses fentry/fexit with EPERM and an empty verifier log, to root
//! too: on a kernel that allows trampolines these tests fail by design), and
//! it fails with a clear line for a process without privileges. Root only;
//! through `cargo xtask test`.

mod common;

use common::*;
use std::process::{Command, Output, Stdio};

fn check(cmd: &mut Command) -> (Output, String) {
    let out = cmd.stdin(Stdio::null()).output().expect("running hoist-agent check");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    (out, text)
}

fn line<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(key))
        .unwrap_or_else(|| panic!("no {key} line in:\n{text}"))
}

#[test]
fn check_passes_here_on_the_tracepoint_hooks_and_explains_the_refused_trampolines() {
    hoist_testsupport::require_root();
    let (out, text) = check(Command::new(bin("HOIST_AGENT_BIN")).arg("check"));
    assert!(out.status.success(), "exit status {}", out.status);
    // Every item but the trampoline set, which this kernel refuses.
    for key in hoist_agent::check::ITEMS.iter().filter(|k| **k != "hooks.trampoline") {
        assert!(line(&text, key).starts_with("ok "), "{key}: {}", line(&text, key));
    }
    let tramp = line(&text, "hooks.trampoline");
    assert!(tramp.starts_with("refused "), "{tramp}");
    assert!(
        tramp.contains("fexit/inet_csk_listen_start: EPERM with an empty verifier log: this kernel refuses trampoline programs to every process"),
        "{tramp}"
    );
    assert!(tramp.ends_with("(not needed: the agent uses the tracepoint hooks)"), "{tramp}");
    assert_eq!(
        text.lines().last(),
        Some("verdict: hoist-agent can run here, on the tracepoint hooks")
    );

    // The same as JSON.
    let (out, json) = check(Command::new(bin("HOIST_AGENT_BIN")).args(["check", "--json"]));
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!((v["runs"].clone(), v["hooks"].clone()), (true.into(), "tracepoint".into()));
    let items = v["items"].as_array().unwrap();
    let keys: Vec<&str> = items.iter().map(|i| i["item"].as_str().unwrap()).collect();
    assert_eq!(keys, hoist_agent::check::ITEMS, "the report's items in order");
    assert!(items
        .iter()
        .all(|i| ["ok", "missing", "refused"].contains(&i["state"].as_str().unwrap())));

    // Forcing the refused set: the agent could not run.
    let (out, text) =
        check(Command::new(bin("HOIST_AGENT_BIN")).args(["check", "--hooks", "trampoline"]));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text.lines().last(),
        Some("verdict: hoist-agent cannot run here: fix hooks.trampoline")
    );
}

/// In a fresh network namespace through `ip netns exec` (which remounts
/// /sys, so tracefs is not mounted there): tracefs is mountable, the watched
/// namespace is that one, and `--netns` names it from outside alike.
#[test]
fn check_reports_the_namespace_watched_and_a_mountable_tracefs() {
    let lab = Lab::empty();
    let ino = lab.ns.inode().unwrap();
    let (out, text) = check(lab.ns.command(bin("HOIST_AGENT_BIN").to_str().unwrap()).arg("check"));
    assert!(out.status.success(), "exit status {}", out.status);
    let tracefs = line(&text, "tracefs");
    assert!(
        tracefs.starts_with("ok ") && tracefs.contains("not mounted; the agent mounts it"),
        "{tracefs}"
    );
    assert!(line(&text, "netns").contains(&format!("net:[{ino}] (this process's own)")), "{text}");
    let path = lab.ns.path();
    let (out, text) =
        check(Command::new(bin("HOIST_AGENT_BIN")).arg("check").arg("--netns").arg(&path));
    assert!(out.status.success());
    assert!(
        line(&text, "netns").contains(&format!("net:[{ino}] (from {})", path.display())),
        "{text}"
    );
}

/// As nobody with no capabilities: exit status 1, and the privileges line
/// says which capabilities are missing.
#[test]
fn check_fails_with_a_clear_line_without_privileges() {
    hoist_testsupport::require_root();
    let (out, text) = check(as_nobody(&bin("HOIST_AGENT_BIN")).arg("check"));
    assert_eq!(out.status.code(), Some(1), "exit status {}", out.status);
    let privileges = line(&text, "privileges");
    assert!(
        privileges.starts_with(
            "missing  privileges        this process lacks CAP_BPF (maps and programs), CAP_PERFMON (tracing programs)"
        ),
        "{privileges}"
    );
    assert!(privileges.contains("CAP_SYS_PTRACE"), "{privileges}");
    assert!(
        privileges.ends_with(
            "-> run hoist-agent as root, or give it these capabilities (packaging/systemd/hoist-agent.service grants them)"
        ),
        "{privileges}"
    );
    assert!(line(&text, "bpf").starts_with("refused "), "{text}");
    assert!(
        text.lines()
            .last()
            .unwrap()
            .starts_with("verdict: hoist-agent cannot run here: fix privileges, bpf"),
        "{text}"
    );
}
