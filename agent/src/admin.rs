//! The agent's admin socket (`hoist_net::admin`) and `hoist-agent status`:
//! the table the host is told (endpoint, guest address, pid, command), the
//! hook set, ring-buffer losses, the connected hosts, data connections and
//! bytes. `status` answers once; `watch` answers, then one line per change
//! (woken by the table's and the sessions' channels, never by a timer). The
//! JSON and the table are pure functions here.

use crate::serve::Door;
use crate::session::Host;
use crate::table::Exposed;
use hoist_net::admin::{AdminConn, AdminListener};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// Where the agent listens for the host, for the status view.
#[derive(Clone, Debug)]
pub struct Identity {
    pub listen: String,
    pub netns: u32,
    pub since: SystemTime,
}

/// Serves admin connections until `shutdown`.
pub async fn serve(listener: AdminListener, door: Door, me: Identity, shutdown: CancellationToken) {
    listener
        .serve(shutdown, |conn| {
            let (door, me) = (door.clone(), me.clone());
            async move { handle(conn, &door, &me).await }
        })
        .await
}

async fn handle(mut conn: AdminConn, door: &Door, me: &Identity) -> anyhow::Result<()> {
    let Some(req) = conn.recv().await? else { return Ok(()) };
    let mut exposed = door.tracker.exposed.clone();
    let mut hosts = door.sessions.hosts();
    let snapshot = |exposed: &Exposed, hosts: &[Host]| to_json(door, me, exposed, hosts);
    match req["command"].as_str() {
        Some("status") => {
            let v = snapshot(&exposed.borrow(), &hosts.borrow());
            conn.send(&v).await?;
        }
        Some("watch") => {
            let mut last = snapshot(&exposed.borrow_and_update(), &hosts.borrow_and_update());
            let mut first = last.clone();
            first["event"] = json!("status");
            conn.send(&first).await?;
            loop {
                tokio::select! {
                    r = exposed.changed() => r?,
                    r = hosts.changed() => r?,
                }
                let now = snapshot(&exposed.borrow_and_update(), &hosts.borrow_and_update());
                for line in events(&last, &now) {
                    conn.send(&line).await?;
                }
                last = now;
            }
        }
        other => {
            let e = format!("unknown command {other:?}: status or watch");
            conn.send(&json!({"ok": false, "error": e})).await?;
        }
    }
    Ok(())
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn to_json(door: &Door, me: &Identity, exposed: &Exposed, hosts: &[Host]) -> Value {
    let info = &door.settings.info;
    json!({
        "agent": {
            "version": info.version,
            "pid": info.pid,
            "hooks": info.hooks,
            "listen": me.listen,
            "netns": me.netns,
            "since_unix_ms": ms(me.since),
            "ring_buffer_lost": door.tracker.drops.load(Ordering::Relaxed),
        },
        "hosts": hosts.iter().map(|h| json!({"peer": h.peer, "since_unix_ms": ms(h.since)})).collect::<Vec<_>>(),
        "data_connections": {
            "open": door.limit.active(),
            "max": door.limit.max(),
            "refused": door.limit.refused(),
        },
        "bytes": {
            "to_guest": door.traffic.received.load(Ordering::Relaxed),
            "from_guest": door.traffic.sent.load(Ordering::Relaxed),
        },
        "listeners": exposed.values().map(|x| {
            let f = &x.forward;
            json!({
                "proto": f.endpoint.proto.to_string(),
                "family": f.endpoint.family().to_string(),
                "endpoint": std::net::SocketAddr::new(f.endpoint.addr, f.endpoint.port).to_string(),
                "guest": std::net::SocketAddr::new(f.guest_addr, f.endpoint.port).to_string(),
                "pid": f.pid,
                "comm": f.comm,
            })
        }).collect::<Vec<_>>(),
    })
}

/// What changed between two statuses, as `--watch` lines: listeners that
/// came or went (or changed owner), hosts that connected or left.
fn events(old: &Value, new: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let by = |v: &Value, list: &str, key: &str| -> BTreeMap<String, Value> {
        v[list]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|x| (format!("{} {}", x[key], x["proto"]), x.clone()))
            .collect()
    };
    for (list, key, gone, came) in [
        ("listeners", "endpoint", "listener_closed", "listener"),
        ("hosts", "peer", "host_disconnected", "host_connected"),
    ] {
        let (a, b) = (by(old, list, key), by(new, list, key));
        for (k, v) in &a {
            if !b.contains_key(k) {
                let mut v = v.clone();
                v["event"] = json!(gone);
                out.push(v);
            }
        }
        for (k, v) in &b {
            if a.get(k) != Some(v) {
                let mut v = v.clone();
                v["event"] = json!(came);
                out.push(v);
            }
        }
    }
    out
}

/// The table `hoist-agent status` prints.
pub fn table(v: &Value) -> String {
    let a = &v["agent"];
    let s = |x: &Value| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string());
    let mut out = format!(
        "hoist-agent {} (pid {}): {} hooks, listening on {}, network namespace {}; ring buffer lost {} events\n",
        s(&a["version"]),
        a["pid"],
        s(&a["hooks"]),
        s(&a["listen"]),
        a["netns"],
        a["ring_buffer_lost"]
    );
    let hosts = v["hosts"].as_array().map(|h| h.as_slice()).unwrap_or_default();
    match hosts {
        [] => out.push_str("no host connected\n"),
        hs => {
            for h in hs {
                out.push_str(&format!("host connected: {}\n", s(&h["peer"])));
            }
        }
    }
    let d = &v["data_connections"];
    out.push_str(&format!(
        "data connections: {} open (at most {}), {} refused; bytes to the guest {}, from it {}\n",
        d["open"], d["max"], d["refused"], v["bytes"]["to_guest"], v["bytes"]["from_guest"]
    ));
    let rows: Vec<[String; 6]> = v["listeners"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|l| {
            [
                s(&l["proto"]),
                s(&l["endpoint"]),
                s(&l["family"]),
                s(&l["guest"]),
                s(&l["pid"]),
                s(&l["comm"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("no listeners\n");
        return out;
    }
    let header = ["PROTO", "ENDPOINT", "FAMILY", "GUEST", "PID", "COMMAND"];
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: [&str; 6]| {
        let l: Vec<String> = cells.iter().zip(width).map(|(c, w)| format!("{c:<w$}")).collect();
        l.join("  ").trim_end().to_string() + "\n"
    };
    out.push_str(&line(header));
    for r in &rows {
        out.push_str(&line(r.each_ref().map(String::as_str)));
    }
    out
}

/// How to start an agent, for the "nothing running" line.
const START: &str = "hoist-agent (as root, or with the capabilities in its systemd unit)";

/// `hoist-agent status`: the table, the JSON, or every change as JSON lines.
pub async fn show_status(path: &std::path::Path, as_json: bool, watch: bool) -> anyhow::Result<()> {
    hoist_net::admin::print_status(path, "hoist-agent", START, as_json, watch, table).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_events_are_the_changes_and_the_table_lines_up() {
        let base = json!({
            "agent": {"version": "0.1.0", "pid": 5, "hooks": "tracepoint", "listen": "vsock:any:1023", "netns": 4026531840u32, "since_unix_ms": 0, "ring_buffer_lost": 0},
            "hosts": [],
            "data_connections": {"open": 4, "max": 4160, "refused": 0},
            "bytes": {"to_guest": 10, "from_guest": 20},
            "listeners": [{"proto": "tcp", "endpoint": "127.0.0.1:8000", "family": "ipv4", "guest": "0.0.0.0:8000", "pid": 77, "comm": "python3"}],
        });
        assert!(events(&base, &base).is_empty());
        let mut next = base.clone();
        next["listeners"] = json!([{"proto": "tcp", "endpoint": "[::1]:22", "family": "ipv6", "guest": "[::]:22", "pid": 1, "comm": "sshd"}]);
        next["hosts"] = json!([{"peer": "vsock cid 2 port 50000", "since_unix_ms": 1}]);
        let ev: Vec<String> = events(&base, &next)
            .iter()
            .map(|v| {
                format!(
                    "{} {}",
                    v["event"].as_str().unwrap(),
                    v["endpoint"].as_str().or(v["peer"].as_str()).unwrap()
                )
            })
            .collect();
        assert_eq!(
            ev,
            [
                "listener_closed 127.0.0.1:8000",
                "listener [::1]:22",
                "host_connected vsock cid 2 port 50000"
            ]
        );
        let t = table(&next);
        let want = "\
hoist-agent 0.1.0 (pid 5): tracepoint hooks, listening on vsock:any:1023, network namespace 4026531840; ring buffer lost 0 events
host connected: vsock cid 2 port 50000
data connections: 4 open (at most 4160), 0 refused; bytes to the guest 10, from it 20
PROTO  ENDPOINT  FAMILY  GUEST    PID  COMMAND
tcp    [::1]:22  ipv6    [::]:22  1    sshd
";
        assert_eq!(t, want);
    }
}
