//! Forwarding rules: which guest listeners the host serves, and where. The
//! host applies them (it owns its ports: what it may bind, and which
//! addresses it has, are known only here), once per change of the guest's
//! table or of the rules, never per connection. Pure: a config text in, a
//! [`Decision`] per [`Forward`] out.
//!
//! A rule matches on the guest port (or a range), family, protocol, the
//! guest listener's address (an IP or a CIDR block) and its command name (a
//! `*` glob); the first rule that matches decides: `ignore`, or forward,
//! optionally to another host port (or by an offset, for a range) and at
//! another host address (`"guest"`: the guest listener's own loopback
//! address, so 127.0.0.2:8080 in the guest is 127.0.0.2:8080 here). Without
//! a matching rule, loopback and wildcard listeners are forwarded (a
//! listener on 127.0.0.1 or a wildcard at the configured bind address, one
//! on another loopback address such as 127.0.0.2 at that same address) and
//! others are not, unless `forward_any_address` is set.
//!
//! Rules come from a TOML file (`[[rule]]` tables) and from `--rule` flags
//! (`key=value,...`, the same keys), flags first. A bad file is refused with
//! `file:line:column` and the reason.

use hoist_wire::{Endpoint, Family, Forward, Proto};
use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;

/// Every rule in force, in order, and the defaults behind them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rules {
    rules: Vec<Rule>,
    /// Forward listeners on non-loopback guest addresses when no rule says
    /// otherwise (at the host's loopback).
    pub forward_any_address: bool,
}

/// One rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Where it was written: `host.toml:12` or `--rule 2`.
    pub origin: String,
    ports: Option<RangeInclusive<u16>>,
    family: Option<Family>,
    proto: Option<Proto>,
    guest_address: Option<Cidr>,
    comm: Option<String>,
    action: Action,
}

#[derive(Clone, Debug, PartialEq)]
enum Action {
    Ignore,
    Forward { port: Option<PortMap>, address: Option<HostAddress> },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum PortMap {
    To(u16),
    Offset(i32),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum HostAddress {
    At(IpAddr),
    /// The guest listener's own loopback address.
    Guest,
}

/// What the host does with one guest listener's endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Serve it at `host`.
    Serve {
        host: SocketAddr,
        /// The rule that said so (`None`: the default).
        rule: Option<String>,
    },
    /// Leave it alone, and why.
    Ignore { why: String },
}

/// Where forwards go unless a rule says otherwise: the configured bind
/// addresses (loopback by default).
#[derive(Clone, Copy, Debug)]
pub struct Defaults {
    pub bind_v4: Ipv4Addr,
    pub bind_v6: Ipv6Addr,
}

impl Rules {
    /// The rules of a config file's text (`origin` names it in errors) after
    /// those of `--rule` flags.
    pub fn parse(flags: &[String], file: Option<(&str, &str)>) -> Result<Rules, RuleError> {
        let mut rules = Vec::new();
        let mut forward_any_address = false;
        for (i, flag) in flags.iter().enumerate() {
            let origin = format!("--rule {}", i + 1);
            let text = flag_to_toml(flag).map_err(|why| RuleError::at(&origin, None, why))?;
            let file: RawFile = toml::from_str(&text)
                .map_err(|e| RuleError::at(&origin, None, e.message().to_string()))?;
            for raw in file.rule {
                rules.push(
                    raw.into_inner()
                        .check(origin.clone())
                        .map_err(|why| RuleError::at(&origin, None, why))?,
                );
            }
        }
        if let Some((origin, text)) = file {
            let parsed: RawFile = toml::from_str(text).map_err(|e| {
                let at = e.span().map(|s| line_col(text, s.start));
                RuleError::at(origin, at, e.message().trim_end().to_string())
            })?;
            forward_any_address = parsed.forward_any_address;
            for raw in parsed.rule {
                let at = line_col(text, raw.span().start);
                let here = format!("{origin}:{}", at.0);
                rules.push(
                    raw.into_inner()
                        .check(here)
                        .map_err(|why| RuleError::at(origin, Some(at), why))?,
                );
            }
        }
        Ok(Rules { rules, forward_any_address })
    }

    /// Also forward non-loopback listeners by default (`--forward-any-address`).
    pub fn with_forward_any_address(mut self, on: bool) -> Rules {
        self.forward_any_address |= on;
        self
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are none (the defaults decide everything).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// What to do with `f`.
    pub fn decide(&self, f: &Forward, defaults: Defaults) -> Decision {
        let e = f.endpoint;
        match self.rules.iter().find(|r| r.matches(f)) {
            Some(r) => match r.action {
                Action::Ignore => Decision::Ignore { why: format!("ignored by the rule at {}", r.origin) },
                Action::Forward { port, address } => {
                    let port = match port {
                        None => Some(e.port),
                        Some(PortMap::To(p)) => Some(p),
                        Some(PortMap::Offset(d)) => u16::try_from(i32::from(e.port) + d).ok().filter(|p| *p != 0),
                    };
                    let Some(port) = port else {
                        return Decision::Ignore {
                            why: format!("the rule at {} moves port {} out of range", r.origin, e.port),
                        };
                    };
                    let ip = match address {
                        Some(HostAddress::At(ip)) => ip,
                        Some(HostAddress::Guest) => e.addr,
                        None => default_ip(e, defaults),
                    };
                    Decision::Serve { host: SocketAddr::new(ip, port), rule: Some(r.origin.clone()) }
                }
            },
            None if is_local(f.guest_addr) || self.forward_any_address => {
                Decision::Serve { host: SocketAddr::new(default_ip(e, defaults), e.port), rule: None }
            }
            None => Decision::Ignore {
                why: format!(
                    "listens on {} only, not on loopback or a wildcard address (forward it with a rule or --forward-any-address)",
                    f.guest_addr
                ),
            },
        }
    }
}

/// The host address of an endpoint without a rule: the bind address for a
/// loopback or wildcard listener, the same loopback address for a listener
/// on another one (127.0.0.2), the bind address for anything else.
fn default_ip(e: Endpoint, d: Defaults) -> IpAddr {
    if !e.is_primary() && e.addr.is_loopback() {
        return e.addr;
    }
    match e.family() {
        Family::V4 => IpAddr::V4(d.bind_v4),
        Family::V6 => IpAddr::V6(d.bind_v6),
    }
}

/// Loopback or wildcard, also as a v4-mapped IPv6 address.
fn is_local(a: IpAddr) -> bool {
    let a = match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(a),
        a => a,
    };
    a.is_loopback() || a.is_unspecified()
}

impl Rule {
    fn matches(&self, f: &Forward) -> bool {
        let e = f.endpoint;
        self.ports.as_ref().is_none_or(|r| r.contains(&e.port))
            && self.family.is_none_or(|x| x == e.family())
            && self.proto.is_none_or(|x| x == e.proto)
            && self.guest_address.is_none_or(|c| c.contains(f.guest_addr))
            && self.comm.as_deref().is_none_or(|g| glob(g, &f.comm))
    }
}

/// A rule file or flag that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError {
    /// `host.toml:3:7` or `--rule 2`.
    pub at: String,
    pub why: String,
}

impl RuleError {
    fn at(origin: &str, line_col: Option<(usize, usize)>, why: String) -> RuleError {
        let at = match line_col {
            Some((l, c)) => format!("{origin}:{l}:{c}"),
            None => origin.to_string(),
        };
        RuleError { at, why }
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.why.replace('\n', " "))
    }
}

impl std::error::Error for RuleError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    forward_any_address: bool,
    #[serde(default)]
    rule: Vec<toml::Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    port: Option<toml::Value>,
    family: Option<String>,
    proto: Option<String>,
    guest_address: Option<String>,
    comm: Option<String>,
    action: Option<String>,
    host_port: Option<u16>,
    host_port_offset: Option<i32>,
    host_address: Option<String>,
}

impl RawRule {
    fn check(self, origin: String) -> Result<Rule, String> {
        let ports = match self.port {
            None => None,
            Some(toml::Value::Integer(0)) => return Err("port 0 is never a listener's port".into()),
            Some(toml::Value::Integer(p)) => {
                let p = u16::try_from(p)
                    .map_err(|_| format!("port {p}: expected a port from 1 to 65535"))?;
                Some(p..=p)
            }
            Some(toml::Value::String(r)) => Some(parse_range(&r)?),
            Some(other) => {
                return Err(format!(
                    "port {other}: expected a port (8080) or a range (\"8000-8100\")"
                ))
            }
        };
        let family = match self.family.as_deref() {
            None => None,
            Some("ipv4") => Some(Family::V4),
            Some("ipv6") => Some(Family::V6),
            Some(x) => return Err(format!("family {x:?}: expected \"ipv4\" or \"ipv6\"")),
        };
        let proto = match self.proto.as_deref() {
            None => None,
            Some("tcp") => Some(Proto::Tcp),
            Some("udp") => Some(Proto::Udp),
            Some(x) => return Err(format!("proto {x:?}: expected \"tcp\" or \"udp\"")),
        };
        let guest_address = self.guest_address.as_deref().map(Cidr::parse).transpose()?;
        if let Some(c) = &self.comm {
            if c.is_empty() || c.len() > hoist_wire::MAX_COMM {
                return Err(format!(
                    "comm {c:?}: a command name is 1 to {} bytes (the kernel's limit)",
                    hoist_wire::MAX_COMM
                ));
            }
        }
        let forwarding = [
            ("host_port", self.host_port.is_some()),
            ("host_port_offset", self.host_port_offset.is_some()),
            ("host_address", self.host_address.is_some()),
        ];
        let action = match self.action.as_deref().unwrap_or("forward") {
            "ignore" => {
                if let Some((key, _)) = forwarding.iter().find(|(_, set)| *set) {
                    return Err(format!("{key} makes no sense with action = \"ignore\""));
                }
                Action::Ignore
            }
            "forward" => {
                let port = match (self.host_port, self.host_port_offset) {
                    (Some(_), Some(_)) => {
                        return Err("give host_port or host_port_offset, not both".into())
                    }
                    (Some(0), None) => return Err("host_port 0 is not a port".into()),
                    (Some(p), None) => {
                        if ports.as_ref().is_none_or(|r| r.start() != r.end()) {
                            return Err(format!("host_port = {p} needs a single guest port (port = N); for a range use host_port_offset"));
                        }
                        Some(PortMap::To(p))
                    }
                    (None, Some(d)) => Some(PortMap::Offset(d)),
                    (None, None) => None,
                };
                let address = match self.host_address.as_deref() {
                    None => None,
                    Some("guest") => Some(HostAddress::Guest),
                    Some(a) => Some(HostAddress::At(a.parse().map_err(|_| {
                        format!("host_address {a:?}: expected an IP address or \"guest\"")
                    })?)),
                };
                if let (Some(HostAddress::At(ip)), Some(f)) = (address, family) {
                    if Family::of(ip) != f {
                        return Err(format!("host_address {ip} is not an {f} address"));
                    }
                }
                Action::Forward { port, address }
            }
            x => return Err(format!("action {x:?}: expected \"forward\" or \"ignore\"")),
        };
        Ok(Rule { origin, ports, family, proto, guest_address, comm: self.comm, action })
    }
}

fn parse_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let bad = || format!("port {s:?}: expected a port (8080) or a range (\"8000-8100\")");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) =
        (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
    if a == 0 || a > b {
        return Err(format!("port range {s:?} is empty or starts at 0"));
    }
    Ok(a..=b)
}

/// An IP address block.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || {
            format!("guest_address {s:?}: expected an IP address or a block such as 127.0.0.0/8")
        };
        let (ip, bits) = match s.split_once('/') {
            Some((ip, bits)) => (ip, Some(bits)),
            None => (s, None),
        };
        let net: IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b.parse::<u8>().ok().filter(|b| *b <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { net, bits })
    }

    fn contains(&self, a: IpAddr) -> bool {
        let prefix = |x: u128, bits: u8, width: u8| if bits == 0 { 0 } else { x >> (width - bits) };
        match (self.net, a) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                prefix(u32::from(n) as u128, self.bits, 32)
                    == prefix(u32::from(a) as u128, self.bits, 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                prefix(u128::from(n), self.bits, 128) == prefix(u128::from(a), self.bits, 128)
            }
            _ => false,
        }
    }
}

/// `*` matches any run of characters; everything else itself.
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, rest)) => {
            let Some(tail) = s.strip_prefix(head) else { return false };
            (0..=tail.len()).filter(|i| tail.is_char_boundary(*i)).any(|i| glob(rest, &tail[i..]))
        }
    }
}

/// `key=value,key=value` as a one-rule TOML document: numbers stay numbers,
/// everything else becomes a string.
fn flag_to_toml(flag: &str) -> Result<String, String> {
    let mut out = String::from("[[rule]]\n");
    for part in flag.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected key=value (e.g. port=22,action=ignore)"))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            return Err(format!("{k:?} is not a rule key"));
        }
        if v.parse::<i64>().is_ok() || v == "true" || v == "false" {
            out.push_str(&format!("{k} = {v}\n"));
        } else {
            out.push_str(&format!("{k} = {}\n", toml_string(v)));
        }
    }
    Ok(out)
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Defaults = Defaults { bind_v4: Ipv4Addr::LOCALHOST, bind_v6: Ipv6Addr::LOCALHOST };

    fn fwd(proto: Proto, endpoint_addr: &str, port: u16, guest_addr: &str, comm: &str) -> Forward {
        Forward {
            endpoint: Endpoint { proto, addr: endpoint_addr.parse().unwrap(), port },
            guest_addr: guest_addr.parse().unwrap(),
            pid: 7,
            comm: comm.into(),
        }
    }

    fn serve(host: &str) -> String {
        format!("serve {host}")
    }

    fn show(d: Decision) -> String {
        match d {
            Decision::Serve { host, .. } => serve(&host.to_string()),
            Decision::Ignore { why } => format!("ignore: {why}"),
        }
    }

    /// The first matching rule decides; without one, loopback and wildcard
    /// listeners are served where they always were.
    #[test]
    fn the_first_matching_rule_decides() {
        let file = r#"
[[rule]]
port = 22
action = "ignore"

[[rule]]
comm = "postgres*"
host_port = 15432
port = 5432

[[rule]]
port = "8000-8099"
host_port_offset = 1000
proto = "tcp"

[[rule]]
guest_address = "127.0.0.0/8"
family = "ipv4"
port = 9000
host_address = "127.0.0.9"

[[rule]]
guest_address = "10.0.0.0/8"

[[rule]]
port = 53
proto = "udp"
host_port = 5353
"#;
        let rules =
            Rules::parse(&["port=6000,action=ignore".into()], Some(("host.toml", file))).unwrap();
        use Proto::*;
        let cases: Vec<(&str, Forward, String)> = vec![
            ("default", fwd(Tcp, "127.0.0.1", 80, "0.0.0.0", "nginx"), serve("127.0.0.1:80")),
            ("default v6", fwd(Tcp, "::1", 80, "::", "nginx"), serve("[::1]:80")),
            (
                "default other loopback: same address",
                fwd(Tcp, "127.0.0.2", 80, "127.0.0.2", "a"),
                serve("127.0.0.2:80"),
            ),
            (
                "default non-loopback",
                fwd(Tcp, "192.168.1.5", 80, "192.168.1.5", "a"),
                "ignore: listens on 192.168.1.5 only, not on loopback or a wildcard address (forward it with a rule or --forward-any-address)".into(),
            ),
            ("flag first", fwd(Tcp, "127.0.0.1", 6000, "127.0.0.1", "x"), "ignore: ignored by the rule at --rule 1".into()),
            ("ignore 22", fwd(Tcp, "127.0.0.1", 22, "0.0.0.0", "sshd"), "ignore: ignored by the rule at host.toml:2".into()),
            ("comm glob maps", fwd(Tcp, "127.0.0.1", 5432, "127.0.0.1", "postgres"), serve("127.0.0.1:15432")),
            ("comm glob no match", fwd(Tcp, "127.0.0.1", 5432, "127.0.0.1", "pg"), serve("127.0.0.1:5432")),
            ("range offset", fwd(Tcp, "127.0.0.1", 8080, "127.0.0.1", "x"), serve("127.0.0.1:9080")),
            ("range offset v6", fwd(Tcp, "::1", 8099, "::1", "x"), serve("[::1]:9099")),
            ("range is tcp only", fwd(Udp, "127.0.0.1", 8080, "127.0.0.1", "x"), serve("127.0.0.1:8080")),
            ("host address", fwd(Tcp, "127.0.0.1", 9000, "127.0.0.1", "x"), serve("127.0.0.9:9000")),
            ("family filters", fwd(Tcp, "::1", 9000, "::1", "x"), serve("[::1]:9000")),
            ("cidr forwards non-loopback", fwd(Tcp, "10.1.2.3", 80, "10.1.2.3", "x"), serve("127.0.0.1:80")),
            ("udp map", fwd(Udp, "127.0.0.1", 53, "0.0.0.0", "dnsmasq"), serve("127.0.0.1:5353")),
        ];
        for (name, f, want) in cases {
            assert_eq!(show(rules.decide(&f, D)), want, "{name}");
        }
        let any = Rules::default().with_forward_any_address(true);
        assert_eq!(
            show(any.decide(&fwd(Tcp, "192.168.1.5", 80, "192.168.1.5", "a"), D)),
            serve("127.0.0.1:80")
        );
        let mirrored = Rules::parse(&["host_address=guest".into()], None).unwrap();
        assert_eq!(
            show(mirrored.decide(&fwd(Tcp, "127.0.0.3", 80, "127.0.0.3", "a"), D)),
            serve("127.0.0.3:80")
        );
        let bound =
            Defaults { bind_v4: "127.0.0.5".parse().unwrap(), bind_v6: Ipv6Addr::LOCALHOST };
        assert_eq!(
            show(Rules::default().decide(&fwd(Tcp, "127.0.0.1", 80, "0.0.0.0", "a"), bound)),
            serve("127.0.0.5:80")
        );
        let off = Rules::parse(&["port=100-200,host_port_offset=-150".into()], None).unwrap();
        assert_eq!(
            show(off.decide(&fwd(Tcp, "127.0.0.1", 120, "0.0.0.0", "a"), D)),
            "ignore: the rule at --rule 1 moves port 120 out of range"
        );
    }

    /// A bad file or flag is refused with where and why, on one line.
    #[test]
    fn bad_rules_say_where_and_why() {
        let cases: &[(&str, &str)] = &[
            ("[[rule]]\nport = 22\nprot = \"tcp\"\n", "host.toml:3:1: unknown field `prot`"),
            ("[[rule]]\nport = 0\n", "host.toml:1:1: port 0 is never a listener's port"),
            ("\n[[rule]]\nport = \"80-\"\n", "host.toml:2:1: port \"80-\": expected a port"),
            ("[[rule]]\nport = \"90-80\"\n", "host.toml:1:1: port range \"90-80\" is empty"),
            (
                "[[rule]]\nport = \"8000-8100\"\nhost_port = 1\n",
                "host.toml:1:1: host_port = 1 needs a single guest port",
            ),
            (
                "[[rule]]\naction = \"drop\"\n",
                "action \"drop\": expected \"forward\" or \"ignore\"",
            ),
            (
                "[[rule]]\naction = \"ignore\"\nhost_port = 8\n",
                "host_port makes no sense with action = \"ignore\"",
            ),
            ("[[rule]]\nfamily = \"ipv5\"\n", "family \"ipv5\": expected \"ipv4\" or \"ipv6\""),
            (
                "[[rule]]\nguest_address = \"10.0.0.0/33\"\n",
                "guest_address \"10.0.0.0/33\": expected an IP address or a block",
            ),
            (
                "[[rule]]\nhost_address = \"::1\"\nfamily = \"ipv4\"\n",
                "host_address ::1 is not an ipv4 address",
            ),
            ("[[rule]]\ncomm = \"a-very-long-command-name\"\n", "a command name is 1 to 15 bytes"),
            ("[[rule]\nport = 1\n", "host.toml:1:"),
            (
                "[[rule]]\nport = 70000\n",
                "host.toml:1:1: port 70000: expected a port from 1 to 65535",
            ),
        ];
        for (text, want) in cases {
            let err = Rules::parse(&[], Some(("host.toml", text))).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
        let flags: &[(&str, &str)] = &[
            ("port", "--rule 1: \"port\": expected key=value"),
            ("port=22,colour=red", "--rule 1: unknown field `colour`"),
            ("port=22,host_port=70000", "--rule 1:"),
        ];
        for (flag, want) in flags {
            let err = Rules::parse(&[flag.to_string()], None).unwrap_err().to_string();
            assert!(err.contains(want), "{flag}: {err}");
        }
    }

    #[test]
    fn globs_and_blocks() {
        let globs = [
            ("*", "x", true),
            ("py*", "python3", true),
            ("*d", "sshd", true),
            ("a*b*c", "aXbYc", true),
            ("a*b", "ab", true),
            ("a*b", "ba", false),
            ("nginx", "nginx", true),
            ("nginx", "nginx:", false),
        ];
        for (p, s, want) in globs {
            assert_eq!(glob(p, s), want, "{p} {s}");
        }
        let blocks = [
            ("127.0.0.0/8", "127.1.2.3", true),
            ("127.0.0.0/8", "128.0.0.1", false),
            ("0.0.0.0/0", "10.0.0.1", true),
            ("0.0.0.0/0", "::1", false),
            ("::1", "::1", true),
            ("fd00::/8", "fd12::1", true),
            ("10.0.0.5", "10.0.0.6", false),
        ];
        for (c, a, want) in blocks {
            assert_eq!(Cidr::parse(c).unwrap().contains(a.parse().unwrap()), want, "{c} {a}");
        }
    }
}
