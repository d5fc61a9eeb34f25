//! The agent's minimal privileges, as packaging/systemd/hoist-agent.service
//! grants them: the capabilities are read from the unit itself, and the agent
//! runs as an ordinary user (nobody) holding exactly those as ambient
//! capabilities (what systemd's AmbientCapabilities= does), through
//! `setpriv`, in a fresh network namespace, with tracefs and the cgroup v2
//! hierarchy mounted as systemd mounts them at boot. It must forward a listener end to end and know who
//! owns another user's listener; and without any one of the capabilities it
//! must stop at once with its one-line error.

mod common;

use common::{bin, echo_ok, is_event, port_of, serve_echo, Lab, Proc};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The unit's capabilities; the bounding set and the ambient set agree.
fn unit_capabilities() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/systemd/hoist-agent.service");
    let unit = std::fs::read_to_string(&path).unwrap();
    let line = |key: &str| -> Vec<String> {
        let v = unit.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("{key}"));
        v.split_whitespace().map(str::to_string).collect()
    };
    let ambient = line("AmbientCapabilities=");
    assert_eq!(ambient, line("CapabilityBoundingSet="), "the unit's two capability lines");
    ambient
}

/// `CAP_SYS_PTRACE` -> `sys_ptrace`, as setpriv names it.
fn setpriv_name(cap: &str) -> String {
    cap.strip_prefix("CAP_").unwrap().to_ascii_lowercase()
}

/// `ip netns exec NS sh -c '[mount tracefs;] exec setpriv ... hoist-agent ...'`:
/// the agent as nobody with only `caps`, pid unchanged by the execs.
fn agent_command(lab: &Lab, caps: &[String], mount_tracefs: bool, extra: &[&str]) -> Command {
    let list: String = caps.iter().map(|c| format!(",+{}", setpriv_name(c))).collect();
    // `ip netns exec` remounts /sys: tracefs and the cgroup v2 hierarchy go
    // back where systemd mounts them at boot (the cgroup always: only the
    // tracefs case tests a missing mount).
    let tracefs =
        if mount_tracefs { "mount -t tracefs tracefs /sys/kernel/tracing && " } else { "" };
    let mount = format!("mount -t cgroup2 cgroup2 /sys/fs/cgroup && {tracefs}");
    let script = format!(
        "{mount}exec setpriv --reuid=65534 --regid=65534 --clear-groups \
         --inh-caps=-all{list} --ambient-caps=-all{list} --bounding-set=-all{list} \
         \"$0\" --listen unix:{} \"$@\"",
        lab.sock().display()
    );
    let mut cmd = lab.ns.command("sh");
    cmd.args(["-c", &script]).arg(bin("HOIST_AGENT_BIN")).args(extra);
    cmd
}

/// The agent's socket lives in the lab's folder, which nobody must be able
/// to write.
fn open_lab() -> Lab {
    let lab = Lab::empty();
    std::fs::set_permissions(&lab.dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .unwrap();
    lab
}

fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix(key)).unwrap().trim().to_string()
}

#[test]
fn the_units_capabilities_are_enough_to_forward_end_to_end() {
    let caps = unit_capabilities();
    let mut lab = open_lab();
    // A listener of another user (root: this test) before the agent starts:
    // the snapshot must find it and its owner.
    let before = lab.listen("127.0.0.1:0");
    let before_port = before.local_addr().unwrap().port();
    serve_echo(before);
    let mut cmd = agent_command(&lab, &caps, true, &["--log-format", "json"]);
    cmd.env("RUST_LOG", "info");
    let agent = Proc::spawn("agent", cmd);
    let owner = agent.logs.wait("the snapshot's listener", |l| {
        l.iter().find(|v| is_event(v, "listen") && port_of(v) == Some(before_port)).cloned()
    });
    assert_eq!(owner["via"], "snapshot", "{owner}");
    assert_eq!(owner["pid"].as_u64(), Some(u64::from(std::process::id())), "owner: {owner}");
    assert!(!owner["comm"].as_str().unwrap_or_default().is_empty(), "owner: {owner}");
    agent.logs.wait("the agent to be ready", |l| {
        l.iter().any(|v| is_event(v, "agent_ready")).then_some(())
    });
    // It is nobody, holding exactly the unit's capabilities.
    assert_eq!(status_field(agent.pid(), "Uid:").split_whitespace().next(), Some("65534"));
    let eff = u64::from_str_radix(&status_field(agent.pid(), "CapEff:"), 16).unwrap();
    assert_eq!(eff.count_ones() as usize, caps.len(), "CapEff {eff:x} for {caps:?}");
    lab.agent = Some(agent);
    lab.start_host(&[]);
    lab.wait_forwarded("ipv4", before_port);
    echo_ok(&format!("127.0.0.1:{before_port}"));
    // A listener opened now reaches the host through the kernel hooks.
    let after = lab.listen("127.0.0.1:0");
    let after_port = after.local_addr().unwrap().port();
    serve_echo(after);
    lab.wait_forwarded("ipv4", after_port);
    echo_ok(&format!("127.0.0.1:{after_port}"));
}

/// Runs the agent expecting it to fail; returns its stderr (errors only).
fn failing_agent(lab: &Lab, caps: &[String], mount_tracefs: bool, extra: &[&str]) -> String {
    let mut cmd = agent_command(lab, caps, mount_tracefs, extra);
    cmd.env("RUST_LOG", "error").env("NO_COLOR", "1").stdin(Stdio::null());
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + common::WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent with {caps:?} still runs after {:?}", common::WAIT);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{caps:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn without_any_one_capability_the_agent_says_what_it_needs() {
    let caps = unit_capabilities();
    // The one line names what was missing where the agent can tell (the
    // kernel's EPERM from bpf(2) cannot say which of CAP_BPF or CAP_PERFMON).
    let expected = [
        ("CAP_BPF", "loading the eBPF object"),
        ("CAP_PERFMON", "loading tracepoint/"),
        ("CAP_DAC_READ_SEARCH", "without CAP_DAC_READ_SEARCH"),
        ("CAP_SYS_PTRACE", "without CAP_SYS_PTRACE"),
        ("CAP_NET_ADMIN", "loading cgroup/"),
    ];
    for cap in &caps {
        if cap == "CAP_NET_BIND_SERVICE" {
            // Only the vsock port needs it, and no vsock socket is opened on
            // a test machine (net's vsock.rs tests the message).
            continue;
        }
        let (_, says) = expected
            .iter()
            .find(|(c, _)| c == cap)
            .unwrap_or_else(|| panic!("{cap}: a capability this test does not know"));
        let lab = open_lab();
        let fewer: Vec<String> = caps.iter().filter(|c| *c != cap).cloned().collect();
        let err = failing_agent(&lab, &fewer, true, &[]);
        assert!(
            err.contains("hoist-agent needs root, or the capabilities CAP_BPF"),
            "{cap}: {err}"
        );
        assert!(err.contains(says), "without {cap}: {err}");
    }
}

/// CAP_SYS_ADMIN is left out because systemd mounts tracefs; where nobody
/// did, the tracepoint hooks need it to mount tracefs, and the agent says so.
#[test]
fn mounting_tracefs_is_the_only_use_of_cap_sys_admin() {
    let caps = unit_capabilities();
    let lab = open_lab();
    let err = failing_agent(&lab, &caps, false, &["--hooks", "tracepoint"]);
    assert!(err.contains("mounting it needs root or CAP_SYS_ADMIN"), "{err}");
    let mut more = caps.clone();
    more.push("CAP_SYS_ADMIN".into());
    let mut cmd =
        agent_command(&lab, &more, false, &["--hooks", "tracepoint", "--log-format", "json"]);
    cmd.env("RUST_LOG", "info");
    let agent = Proc::spawn("agent", cmd);
    agent.logs.wait("the agent to mount tracefs and be ready", |l| {
        l.iter().any(|v| is_event(v, "agent_ready")).then_some(())
    });
}
