//! The status view, pure: the relay's [`Status`] as JSON (what
//! `hoist-host status --json` prints, and what travels over the admin
//! socket), the events `--watch` streams between two statuses, and the
//! table `hoist-host status` prints from the JSON.

use crate::{ForwardState, ForwardStatus, Status};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Who answers: the relay's own details.
#[derive(Clone, Debug)]
pub struct Relay {
    pub version: String,
    pub pid: u32,
    pub guest: String,
    /// Clients reset at the connection limit so far.
    pub refused: u64,
}

fn ms(t: Option<SystemTime>) -> Value {
    match t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
        Some(d) => json!(d.as_millis() as u64),
        None => Value::Null,
    }
}

/// The whole status as one JSON object.
pub fn to_json(s: &Status, relay: &Relay) -> Value {
    json!({
        "relay": relay_json(s, relay),
        "forwards": s.forwards.iter().map(forward_json).collect::<Vec<_>>(),
    })
}

fn relay_json(s: &Status, relay: &Relay) -> Value {
    json!({
        "version": relay.version,
        "pid": relay.pid,
        "guest": relay.guest,
        "connected": s.connected,
        "since_unix_ms": ms(s.since),
        "sessions": s.sessions,
        "last_error": s.last_error,
        "agent": s.agent.as_ref().map(|a| json!({"version": a.version, "hooks": a.hooks, "pid": a.pid})),
        "rules": s.rules,
        "connections_refused": relay.refused,
    })
}

/// One forward as JSON.
pub fn forward_json(f: &ForwardStatus) -> Value {
    let e = f.forward.endpoint;
    let (state, host, rule, reason) = match &f.state {
        ForwardState::Serving { host, rule } => {
            ("serving", Some(host.to_string()), rule.clone(), None)
        }
        ForwardState::Conflict { host, why } => {
            ("conflict", Some(host.to_string()), None, Some(why.clone()))
        }
        ForwardState::Ignored { why } => ("ignored", None, None, Some(why.clone())),
    };
    let stat = |get: fn(&crate::ForwardStats) -> u64| f.stats.as_ref().map(|s| get(s)).unwrap_or(0);
    json!({
        "proto": e.proto.to_string(),
        "family": e.family().to_string(),
        "endpoint": std::net::SocketAddr::new(e.addr, e.port).to_string(),
        "guest": std::net::SocketAddr::new(f.forward.guest_addr, e.port).to_string(),
        "pid": f.forward.pid,
        "comm": f.forward.comm,
        "state": state,
        "host": host,
        "rule": rule,
        "reason": reason,
        "connections": {
            "open": stat(|s| s.open.load(Ordering::Relaxed)),
            "total": stat(|s| s.total.load(Ordering::Relaxed)),
        },
        "bytes": {
            "to_guest": stat(|s| s.traffic.sent.load(Ordering::Relaxed)),
            "from_guest": stat(|s| s.traffic.received.load(Ordering::Relaxed)),
        },
        "since_unix_ms": ms(Some(f.since)),
    })
}

/// What changed from `old` to `new`, as `--watch` lines: the session's
/// state, each forward opened, moved or changed state, each one gone, and
/// the rules.
pub fn events(old: &Status, new: &Status, relay: &Relay) -> Vec<Value> {
    let mut out = Vec::new();
    if (old.connected, &old.agent, old.sessions) != (new.connected, &new.agent, new.sessions) {
        let mut v = relay_json(new, relay);
        v["event"] = json!(if new.connected { "connected" } else { "disconnected" });
        out.push(v);
    } else if !new.connected && old.last_error != new.last_error {
        let mut v = relay_json(new, relay);
        v["event"] = json!("disconnected");
        out.push(v);
    }
    if old.rules != new.rules {
        out.push(json!({"event": "rules", "rules": new.rules}));
    }
    let before: BTreeMap<_, _> = old.forwards.iter().map(|f| (f.forward.endpoint, f)).collect();
    let after: BTreeMap<_, _> = new.forwards.iter().map(|f| (f.forward.endpoint, f)).collect();
    for (e, f) in &before {
        if !after.contains_key(e) {
            let mut v = forward_json(f);
            v["event"] = json!("forward_closed");
            out.push(v);
        }
    }
    for (e, f) in &after {
        if before.get(e).is_none_or(|o| o != f) {
            let mut v = forward_json(f);
            v["event"] = json!("forward");
            out.push(v);
        }
    }
    out
}

/// The table `hoist-host status` prints, from the JSON (`now`: for "since").
pub fn table(v: &Value, now: SystemTime) -> String {
    let r = &v["relay"];
    let age = |x: &Value| match x.as_u64() {
        Some(ms) => {
            let then = UNIX_EPOCH + Duration::from_millis(ms);
            human_duration(now.duration_since(then).unwrap_or_default())
        }
        None => "-".into(),
    };
    let s = |x: &Value| x.as_str().unwrap_or("-").to_string();
    let mut out = String::new();
    let head = if r["connected"].as_bool() == Some(true) {
        let a = &r["agent"];
        format!(
            "connected to {} for {} (agent {} pid {}, {} hooks)",
            s(&r["guest"]),
            age(&r["since_unix_ms"]),
            s(&a["version"]),
            a["pid"],
            s(&a["hooks"])
        )
    } else {
        format!(
            "not connected to {} for {}: {}",
            s(&r["guest"]),
            age(&r["since_unix_ms"]),
            r["last_error"].as_str().unwrap_or("connecting")
        )
    };
    out.push_str(&format!("hoist-host {} (pid {}): {head}\n", s(&r["version"]), r["pid"]));
    out.push_str(&format!(
        "{}; {} clients reset at the connection limit\n",
        s(&r["rules"]),
        r["connections_refused"]
    ));
    let rows: Vec<[String; 10]> = v["forwards"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|f| {
            let state = match (f["state"].as_str(), f["reason"].as_str(), f["rule"].as_str()) {
                (Some(st), Some(why), _) => format!("{st}: {why}"),
                (Some(st), None, Some(rule)) => format!("{st} (rule {rule})"),
                (Some(st), None, None) => st.to_string(),
                _ => "-".into(),
            };
            [
                s(&f["proto"]),
                f["host"].as_str().unwrap_or("-").to_string(),
                s(&f["family"]),
                s(&f["guest"]),
                f["pid"].to_string(),
                s(&f["comm"]),
                format!("{}/{}", f["connections"]["open"], f["connections"]["total"]),
                bytes(f["bytes"]["to_guest"].as_u64().unwrap_or(0)),
                bytes(f["bytes"]["from_guest"].as_u64().unwrap_or(0)),
                format!("{} {state}", age(&f["since_unix_ms"])),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("no guest listeners\n");
        return out;
    }
    let header =
        ["PROTO", "HOST", "FAMILY", "GUEST", "PID", "COMMAND", "CONNS", "IN", "OUT", "SINCE STATE"];
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 10]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    out.push_str(&line(header));
    for r in &rows {
        out.push_str(&line(r.each_ref().map(String::as_str)));
    }
    out
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ForwardStats;
    use hoist_wire::{AgentInfo, Endpoint, Family, Forward};
    use std::sync::Arc;

    fn relay() -> Relay {
        Relay { version: "0.1.0".into(), pid: 42, guest: "unix:/run/a.sock".into(), refused: 3 }
    }

    fn row(port: u16, state: ForwardState, since: u64) -> ForwardStatus {
        let stats = Arc::new(ForwardStats::default());
        stats.open.store(1, Ordering::Relaxed);
        stats.total.store(7, Ordering::Relaxed);
        stats.traffic.sent.store(1536, Ordering::Relaxed);
        stats.traffic.received.store(3 << 20, Ordering::Relaxed);
        ForwardStatus {
            forward: Forward {
                endpoint: Endpoint::tcp(Family::V4, port),
                guest_addr: "0.0.0.0".parse().unwrap(),
                pid: 1234,
                comm: "python3".into(),
            },
            stats: matches!(state, ForwardState::Serving { .. }).then_some(stats),
            state,
            since: UNIX_EPOCH + Duration::from_secs(since),
        }
    }

    fn status() -> Status {
        Status {
            connected: true,
            sessions: 1,
            agent: Some(AgentInfo { version: "0.1.0".into(), hooks: "tracepoint".into(), pid: 9 }),
            since: Some(UNIX_EPOCH + Duration::from_secs(1000)),
            rules: "1 rule (/etc/hoist/host.toml)".into(),
            forwards: vec![
                row(
                    8080,
                    ForwardState::Serving { host: "127.0.0.1:8080".parse().unwrap(), rule: None },
                    1000,
                ),
                row(
                    22,
                    ForwardState::Ignored {
                        why: "ignored by the rule at /etc/hoist/host.toml:1".into(),
                    },
                    1000,
                ),
            ],
            ..Status::default()
        }
    }

    /// The JSON's fields and values for a known set of forwards.
    #[test]
    fn the_json_says_everything_the_table_shows() {
        let v = to_json(&status(), &relay());
        assert_eq!(v["relay"]["connected"], json!(true));
        assert_eq!(v["relay"]["agent"]["hooks"], json!("tracepoint"));
        assert_eq!(v["relay"]["connections_refused"], json!(3));
        assert_eq!(v["relay"]["since_unix_ms"], json!(1_000_000));
        let f = &v["forwards"][0];
        let want = json!({
            "proto": "tcp", "family": "ipv4", "endpoint": "127.0.0.1:8080", "guest": "0.0.0.0:8080",
            "pid": 1234, "comm": "python3", "state": "serving", "host": "127.0.0.1:8080",
            "rule": null, "reason": null, "connections": {"open": 1, "total": 7},
            "bytes": {"to_guest": 1536, "from_guest": 3145728}, "since_unix_ms": 1_000_000,
        });
        assert_eq!(f, &want);
        let ignored = &v["forwards"][1];
        assert_eq!((ignored["state"].as_str(), ignored["host"].is_null()), (Some("ignored"), true));
        assert_eq!(ignored["connections"], json!({"open": 0, "total": 0}));
    }

    #[test]
    fn the_table_lines_up() {
        let now = UNIX_EPOCH + Duration::from_secs(1000 + 192);
        let t = table(&to_json(&status(), &relay()), now);
        let want = "\
hoist-host 0.1.0 (pid 42): connected to unix:/run/a.sock for 3m12s (agent 0.1.0 pid 9, tracepoint hooks)
1 rule (/etc/hoist/host.toml); 3 clients reset at the connection limit
PROTO  HOST            FAMILY  GUEST         PID   COMMAND  CONNS  IN      OUT     SINCE STATE
tcp    127.0.0.1:8080  ipv4    0.0.0.0:8080  1234  python3  1/7    1.5KiB  3.0MiB  3m12s serving
tcp    -               ipv4    0.0.0.0:22    1234  python3  0/0    0B      0B      3m12s ignored: ignored by the rule at /etc/hoist/host.toml:1
";
        assert_eq!(t, want);
        let mut down = status();
        down.connected = false;
        down.forwards.clear();
        down.last_error = Some("waiting: no socket at /run/a.sock".into());
        let t = table(&to_json(&down, &relay()), now);
        assert!(
            t.contains("not connected to unix:/run/a.sock for 3m12s: waiting: no socket"),
            "{t}"
        );
        assert!(t.ends_with("no guest listeners\n"), "{t}");
    }

    /// Watch lines: one per change, none without one.
    #[test]
    fn watch_events_are_the_changes() {
        let a = status();
        assert!(events(&a, &a, &relay()).is_empty(), "no change, no line");
        let mut b = a.clone();
        b.forwards.remove(1);
        b.forwards.push(row(
            9000,
            ForwardState::Conflict {
                host: "127.0.0.1:9000".parse().unwrap(),
                why: "is already in use on the host".into(),
            },
            1001,
        ));
        let ev = events(&a, &b, &relay());
        let summary: Vec<String> = ev
            .iter()
            .map(|v| {
                format!(
                    "{} {} {}",
                    v["event"].as_str().unwrap(),
                    v["endpoint"].as_str().unwrap_or("-"),
                    v["state"].as_str().unwrap_or("-")
                )
            })
            .collect();
        assert_eq!(
            summary,
            ["forward_closed 127.0.0.1:22 ignored", "forward 127.0.0.1:9000 conflict"]
        );
        let mut c = b.clone();
        c.connected = false;
        c.last_error = Some("the agent closed the control stream".into());
        c.rules = "0 rules (no rules)".into();
        let ev = events(&b, &c, &relay());
        assert_eq!(ev[0]["event"], json!("disconnected"));
        assert_eq!(ev[0]["last_error"], json!("the agent closed the control stream"));
        assert_eq!(ev[1], json!({"event": "rules", "rules": "0 rules (no rules)"}));
    }
}
