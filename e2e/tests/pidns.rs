//! PID namespaces: WSL runs each distro of its VM in a PID namespace of its
//! own, all sharing the VM's network namespace. The agent names a listener's
//! owner by the pid its own namespace shows; a process of another namespace
//! by its command, pid 0. Real kernel, real binaries: the agent runs inside
//! a fresh PID namespace (`unshare --pid --fork --mount-proc`) within the
//! test's network namespace. Root only; through `cargo xtask test`.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A Python server that listens on 127.0.0.1 and prints its pid as its own
/// PID namespace sees it, then its port, then sleeps.
const SERVER: &str = "import os,socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen()\nprint(os.getpid(),s.getsockname()[1],flush=True)\ntime.sleep(600)";

/// Starts `cmd` (a [`SERVER`]) and reads what it printed: (pid it sees, port).
fn start_server(mut cmd: Command) -> (Child, u32, u16) {
    let mut child = cmd.stdout(Stdio::piped()).stdin(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let mut words = line.split_whitespace().map(|w| w.parse::<u32>().unwrap());
    let (pid, port) = (words.next().unwrap(), words.next().unwrap());
    (child, pid, port as u16)
}

/// The pids of `pid`'s children, in the root PID namespace.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// The agent inside a PID namespace of its own: a server in that namespace
/// is named by the pid it sees itself (not the root namespace's), a server
/// outside it by its command with pid 0, on the event path and in the
/// snapshot of a host that connects later alike.
#[test]
fn listeners_are_named_by_the_pid_the_agents_namespace_shows() {
    let mut lab = Lab::empty();
    // `ip netns exec` execs unshare, which forks the agent as pid 1 of a new
    // PID namespace with its own /proc; the agent dies with unshare.
    let mut cmd = lab.ns.command("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(bin("HOIST_AGENT_BIN"))
        .args(["--listen", &format!("unix:{}", lab.sock().display()), "--log-format", "json"]);
    let agent = Proc::spawn("agent", cmd);
    agent.logs.wait("the agent to be ready", |l| {
        l.iter().any(|v| is_event(v, "agent_ready")).then_some(())
    });
    let unshare = agent.pid();
    lab.agent = Some(agent);
    let agent_pid = *children(unshare).first().expect("unshare's child, the agent");
    lab.start_host(&[]);
    let hello = lab.host_logs().wait("the host's connected line", |l| {
        l.iter().find(|v| is_event(v, "connected")).cloned()
    });
    assert_eq!(hello["agent_pid"], 1, "the agent names itself by its namespace's pid: {hello}");

    // A server in the agent's PID namespace (and its mounts and network).
    let mut inside = Command::new("nsenter");
    inside
        .args(["--target", &agent_pid.to_string(), "--pid", "--mount", "--net", "python3", "-c"])
        .arg(SERVER);
    let (mut srv, seen_pid, port) = start_server(inside);
    let root_pid = *children(srv.id()).first().expect("nsenter's child, the server");
    assert_ne!(seen_pid, root_pid, "the namespaces must differ for this test to mean anything");
    lab.wait_forwarded("ipv4", port);
    let opened = lab.host_logs().wait("the forward's log line", |l| {
        l.iter().find(|v| is_event(v, "forward_opened") && port_of(v) == Some(port)).cloned()
    });
    assert_eq!(
        opened["pid"], seen_pid,
        "the pid the agent's namespace shows (root namespace: {root_pid}): {opened}"
    );
    assert_eq!(opened["comm"], "python3", "{opened}");

    // A server in the network namespace but the root PID namespace.
    let mut outside = lab.ns.command("python3");
    outside.args(["-c", SERVER]);
    let (mut out_srv, out_pid, out_port) = start_server(outside);
    lab.wait_forwarded("ipv4", out_port);
    let opened = lab.host_logs().wait("the forward's log line", |l| {
        l.iter().find(|v| is_event(v, "forward_opened") && port_of(v) == Some(out_port)).cloned()
    });
    assert_eq!(opened["pid"], 0, "a process the agent cannot see (pid {out_pid}): {opened}");
    assert_eq!(opened["comm"], "python3", "its command stays: {opened}");

    // A host that connects now gets the table from the agent's snapshot and
    // its events alike.
    lab.host.take().unwrap().stop();
    lab.start_host(&[]);
    lab.wait_forwarded("ipv4", port);
    lab.wait_forwarded("ipv4", out_port);
    let lines = lab.host_logs().snapshot();
    let pid_of = |p: u16| {
        lines
            .iter()
            .find(|v| is_event(v, "forward_opened") && port_of(v) == Some(p))
            .map(|v| v["pid"].clone())
    };
    assert_eq!(pid_of(port), Some(seen_pid.into()));
    assert_eq!(pid_of(out_port), Some(0.into()));

    // nsenter waits for its child: the server itself is killed.
    let server = rustix::process::Pid::from_raw(root_pid as i32).unwrap();
    rustix::process::kill_process(server, rustix::process::Signal::KILL).unwrap();
    for c in [&mut srv, &mut out_srv] {
        let _ = c.kill();
        c.wait().unwrap();
    }
    lab.wait_unforwarded("ipv4", port);
    lab.wait_unforwarded("ipv4", out_port);
}
