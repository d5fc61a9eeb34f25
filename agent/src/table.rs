//! The listener table: every TCP listener and UDP server of the guest's
//! namespace, keyed by socket cookie, and what the host must expose for it.
//! Pure: kernel events and `sock_diag` snapshots go in, the set of endpoints
//! comes out (every one but link-local ones: which are served is the host's
//! call), and [`changes`] turns two such sets into the messages for the host.
//! Keyed by cookie, two `SO_REUSEPORT` sockets on one port are two entries,
//! and the port stays exposed until the last of them closes; a TCP listener
//! and a UDP server on one port are two endpoints. The address rules are the
//! same for both protocols. `tracker` drives it.

use hoist_common::{ListenEvent, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};
use hoist_wire::{AgentMsg, Endpoint, Forward, Proto};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One listening socket of the guest: a TCP listener or a UDP server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestListener {
    /// The kernel's socket cookie: stable for the socket's life.
    pub cookie: u64,
    pub proto: Proto,
    pub addr: IpAddr,
    /// 0 while an autobind listen waits for its port, or a UDP server on the
    /// IPv6 wildcard for its v6-only flag (both resolved by snapshot).
    pub port: u16,
    pub ipv6only: bool,
    /// Process that listened (0 when unknown).
    pub pid: u32,
    pub comm: String,
}

impl GuestListener {
    /// The listener a kernel event describes; `None` for a family or a
    /// protocol the table does not handle.
    pub fn from_event(ev: &ListenEvent) -> Option<GuestListener> {
        let proto = match ev.proto {
            IPPROTO_TCP => Proto::Tcp,
            IPPROTO_UDP => Proto::Udp,
            _ => return None,
        };
        let addr = match ev.family {
            AF_INET => IpAddr::V4(Ipv4Addr::new(ev.addr[0], ev.addr[1], ev.addr[2], ev.addr[3])),
            AF_INET6 => IpAddr::V6(Ipv6Addr::from(ev.addr)),
            _ => return None,
        };
        let end = ev.comm.iter().position(|&b| b == 0).unwrap_or(ev.comm.len());
        Some(GuestListener {
            cookie: ev.cookie,
            proto,
            addr,
            port: ev.port,
            ipv6only: ev.ipv6only != 0,
            pid: ev.pid,
            comm: String::from_utf8_lossy(&ev.comm[..end]).into_owned(),
        })
    }
}

/// A host endpoint and where in the guest its connections go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exposure {
    pub forward: Forward,
    /// The guest address the agent dials for this endpoint.
    pub dial: SocketAddr,
}

/// Everything the host should serve, ordered for stable output.
pub type Exposed = BTreeMap<Endpoint, Exposure>;

/// What the table changed, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Listen(GuestListener),
    Unlisten(GuestListener),
}

#[derive(Debug, Default)]
pub struct Table {
    listeners: HashMap<u64, GuestListener>,
}

impl Table {
    pub fn new() -> Table {
        Table::default()
    }

    pub fn len(&self) -> usize {
        self.listeners.len()
    }

    pub fn get(&self, cookie: u64) -> Option<&GuestListener> {
        self.listeners.get(&cookie)
    }

    /// A socket started listening. A cookie already present is updated (a
    /// snapshot may have seen the socket before its event arrived).
    pub fn listen(&mut self, l: GuestListener) -> Option<Change> {
        match self.listeners.get_mut(&l.cookie) {
            Some(old) if *old == l => None,
            Some(old) => {
                *old = l.clone();
                Some(Change::Listen(l))
            }
            None => {
                self.listeners.insert(l.cookie, l.clone());
                Some(Change::Listen(l))
            }
        }
    }

    /// A socket stopped listening. Unknown cookies change nothing.
    pub fn unlisten(&mut self, cookie: u64) -> Option<Change> {
        self.listeners.remove(&cookie).map(Change::Unlisten)
    }

    /// Makes the table equal to `snapshot`, the truth. Entries keep the pid and
    /// command they learned from events when the snapshot does not know them.
    pub fn reconcile(&mut self, snapshot: Vec<GuestListener>) -> Vec<Change> {
        let mut changes = Vec::new();
        let fresh: HashMap<u64, GuestListener> =
            snapshot.into_iter().map(|l| (l.cookie, l)).collect();
        let mut gone: Vec<u64> =
            self.listeners.keys().filter(|c| !fresh.contains_key(c)).copied().collect();
        gone.sort_unstable();
        for cookie in gone {
            changes.extend(self.unlisten(cookie));
        }
        let mut fresh: Vec<GuestListener> = fresh.into_values().collect();
        fresh.sort_unstable_by_key(|l| l.cookie);
        for mut l in fresh {
            if let Some(old) = self.listeners.get(&l.cookie) {
                if l.pid == 0 {
                    l.pid = old.pid;
                    l.comm = old.comm.clone();
                }
            }
            changes.extend(self.listen(l));
        }
        changes
    }

    /// Cookies of listeners still waiting for their port.
    pub fn has_unresolved(&self) -> bool {
        self.listeners.values().any(|l| l.port == 0)
    }

    /// The host endpoints for the current listeners.
    pub fn exposed(&self) -> Exposed {
        let mut best: BTreeMap<Endpoint, (u64, Exposure)> = BTreeMap::new();
        for l in self.listeners.values() {
            for at in endpoint_addrs(l) {
                let endpoint = Endpoint { proto: l.proto, addr: at, port: l.port };
                let exposure = Exposure {
                    forward: Forward {
                        endpoint,
                        guest_addr: l.addr,
                        pid: l.pid,
                        comm: l.comm.clone(),
                    },
                    dial: SocketAddr::new(at, l.port),
                };
                // Several guest listeners can back one endpoint (a reuseport
                // group); which one names it must not depend on hash order.
                match best.get(&endpoint) {
                    Some((c, _)) if *c <= l.cookie => {}
                    _ => {
                        best.insert(endpoint, (l.cookie, exposure));
                    }
                }
            }
        }
        best.into_iter().map(|(e, (_, x))| (e, x)).collect()
    }
}

/// The endpoint addresses a listener appears at, which are also the
/// addresses the agent dials for it: a wildcard or loopback listener at its
/// family's loopback (a dual-stack `::` at both), any other address as
/// itself (the host's rules decide whether such a one is served), a
/// link-local one never (the host cannot name its scope).
fn endpoint_addrs(l: &GuestListener) -> Vec<IpAddr> {
    if l.port == 0 {
        return vec![];
    }
    const V4_LOOP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const V6_LOOP: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
    match l.addr {
        IpAddr::V4(a) => vec![v4_addr(a)],
        IpAddr::V6(a) if a.is_unspecified() => {
            let mut at = vec![V6_LOOP];
            if !l.ipv6only {
                at.push(V4_LOOP);
            }
            at
        }
        // A v6 socket bound to a v4-mapped address accepts only that IPv4
        // address: it is an IPv4 listener in all but family.
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => vec![v4_addr(v4)],
            None if is_link_local(a) => vec![],
            None => vec![IpAddr::V6(a)],
        },
    }
}

fn v4_addr(a: Ipv4Addr) -> IpAddr {
    if a.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V4(a)
    }
}

fn is_link_local(a: Ipv6Addr) -> bool {
    (a.segments()[0] & 0xffc0) == 0xfe80
}

/// The messages that take a host from `old` to `new`: removals first, so a
/// host never holds more ports than either state, then additions and updates.
pub fn changes(old: &Exposed, new: &Exposed) -> Vec<AgentMsg> {
    let removed = old.keys().filter(|e| !new.contains_key(e)).map(|e| AgentMsg::Removed(*e));
    let added = new
        .iter()
        .filter(|(e, x)| old.get(e).map(|o| o.forward != x.forward).unwrap_or(true))
        .map(|(_, x)| AgentMsg::Added(x.forward.clone()));
    removed.chain(added).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoist_wire::Family;

    fn l(cookie: u64, addr: &str, port: u16, ipv6only: bool) -> GuestListener {
        GuestListener {
            cookie,
            proto: Proto::Tcp,
            addr: addr.parse().unwrap(),
            port,
            ipv6only,
            pid: 100 + cookie as u32,
            comm: format!("srv{cookie}"),
        }
    }

    fn ep(family: Family, port: u16) -> Endpoint {
        Endpoint::tcp(family, port)
    }

    fn at(addr: &str, port: u16) -> Endpoint {
        Endpoint { proto: Proto::Tcp, addr: addr.parse().unwrap(), port }
    }

    fn summary(x: &Exposed) -> Vec<(Endpoint, String)> {
        x.iter().map(|(e, x)| (*e, x.dial.to_string())).collect()
    }

    #[test]
    fn addresses_map_to_endpoints() {
        use Family::*;
        let cases: Vec<(&str, Vec<GuestListener>, Vec<(Endpoint, &str)>)> = vec![
            ("v4 loopback", vec![l(1, "127.0.0.1", 80, false)], vec![(ep(V4, 80), "127.0.0.1:80")]),
            ("v4 wildcard", vec![l(1, "0.0.0.0", 80, false)], vec![(ep(V4, 80), "127.0.0.1:80")]),
            (
                "other v4 loopback: its own endpoint",
                vec![l(1, "127.0.0.2", 80, false)],
                vec![(at("127.0.0.2", 80), "127.0.0.2:80")],
            ),
            ("v6 loopback", vec![l(1, "::1", 80, true)], vec![(ep(V6, 80), "[::1]:80")]),
            (
                "dual stack",
                vec![l(1, "::", 80, false)],
                vec![(ep(V4, 80), "127.0.0.1:80"), (ep(V6, 80), "[::1]:80")],
            ),
            ("v6 only wildcard", vec![l(1, "::", 80, true)], vec![(ep(V6, 80), "[::1]:80")]),
            (
                "v4-mapped loopback",
                vec![l(1, "::ffff:127.0.0.1", 80, false)],
                vec![(ep(V4, 80), "127.0.0.1:80")],
            ),
            (
                "non-loopback v4: reported, the host decides",
                vec![l(1, "10.0.0.5", 80, false)],
                vec![(at("10.0.0.5", 80), "10.0.0.5:80")],
            ),
            (
                "non-loopback v6",
                vec![l(1, "2001:db8::1", 80, false)],
                vec![(at("2001:db8::1", 80), "[2001:db8::1]:80")],
            ),
            ("link-local never", vec![l(1, "fe80::1", 80, false)], vec![]),
            ("unresolved port", vec![l(1, "127.0.0.1", 0, false)], vec![]),
            (
                "two loopback addresses, one port: two endpoints",
                vec![l(1, "127.0.0.2", 80, false), l(2, "127.0.0.3", 80, false)],
                vec![(at("127.0.0.2", 80), "127.0.0.2:80"), (at("127.0.0.3", 80), "127.0.0.3:80")],
            ),
            (
                "oldest of equals wins",
                vec![l(7, "127.0.0.1", 80, false), l(3, "0.0.0.0", 80, false)],
                vec![(ep(V4, 80), "127.0.0.1:80")],
            ),
        ];
        for (name, listeners, want) in cases {
            let mut t = Table::new();
            for x in listeners {
                t.listen(x);
            }
            let want: Vec<(Endpoint, String)> =
                want.into_iter().map(|(e, d)| (e, d.to_string())).collect();
            assert_eq!(summary(&t.exposed()), want, "{name}");
            if let Some(x) = t.exposed().values().next() {
                assert_eq!(x.dial.ip(), x.forward.endpoint.addr, "{name}: dialled where named");
            }
        }
    }

    #[test]
    fn reuseport_listeners_count_until_the_last_closes() {
        let mut t = Table::new();
        t.listen(l(1, "0.0.0.0", 80, false));
        t.listen(l(2, "0.0.0.0", 80, false));
        assert_eq!(t.exposed().len(), 1);
        assert!(matches!(t.unlisten(1), Some(Change::Unlisten(_))));
        assert_eq!(t.exposed().len(), 1, "one listener left: still exposed");
        assert_eq!(
            t.exposed()[&ep(Family::V4, 80)].forward.pid,
            102,
            "metadata moves to the survivor"
        );
        t.unlisten(2);
        assert!(t.exposed().is_empty());
        assert_eq!(t.unlisten(2), None, "unknown cookie changes nothing");
    }

    #[test]
    fn listen_is_idempotent_and_updates() {
        let mut t = Table::new();
        assert!(t.listen(l(1, "127.0.0.1", 0, false)).is_some());
        assert!(t.has_unresolved());
        assert_eq!(t.listen(l(1, "127.0.0.1", 0, false)), None);
        assert!(t.listen(l(1, "127.0.0.1", 4000, false)).is_some());
        assert!(!t.has_unresolved());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn reconcile_makes_the_snapshot_the_truth() {
        let mut t = Table::new();
        t.listen(l(1, "127.0.0.1", 80, false));
        t.listen(l(2, "127.0.0.1", 0, false));
        t.listen(l(3, "::1", 443, true));
        let mut resolved = l(2, "127.0.0.1", 5555, false);
        resolved.pid = 0;
        resolved.comm.clear();
        let mut unknown_owner = l(4, "0.0.0.0", 22, false);
        unknown_owner.pid = 0;
        unknown_owner.comm.clear();
        let changes = t.reconcile(vec![l(1, "127.0.0.1", 80, false), resolved, unknown_owner]);
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert!(matches!(&changes[0], Change::Unlisten(x) if x.cookie == 3));
        assert_eq!(t.get(2).unwrap().port, 5555);
        assert_eq!(t.get(2).unwrap().pid, 102, "pid learned from the event survives");
        assert_eq!(t.get(4).unwrap().pid, 0);
        let ports: Vec<u16> = t.exposed().keys().map(|e| e.port).collect();
        assert_eq!(ports, vec![22, 80, 5555]);
        let owner_found = t.reconcile(vec![
            l(1, "127.0.0.1", 80, false),
            l(2, "127.0.0.1", 5555, false),
            l(4, "0.0.0.0", 22, false),
        ]);
        assert!(
            matches!(&owner_found[..], [Change::Listen(x)] if x.cookie == 4 && x.pid == 104),
            "{owner_found:?}"
        );
        assert!(
            t.reconcile(t.listeners.values().cloned().collect()).is_empty(),
            "same truth, no change"
        );
    }

    #[test]
    fn changes_remove_first_then_add_and_update() {
        let mut a = Table::new();
        a.listen(l(1, "127.0.0.1", 80, false));
        a.listen(l(2, "::", 443, false));
        let old = a.exposed();
        let mut b = Table::new();
        b.listen(l(2, "::", 443, true));
        b.listen(l(3, "127.0.0.1", 8080, false));
        let mut moved = l(9, "127.0.0.1", 443, false);
        moved.pid = 1;
        let new = b.exposed();
        let msgs = changes(&old, &new);
        let kinds: Vec<String> = msgs
            .iter()
            .map(|m| match m {
                AgentMsg::Removed(e) => format!("-{e}"),
                AgentMsg::Added(f) => format!("+{}", f.endpoint),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, vec!["-tcp 127.0.0.1:80", "-tcp 127.0.0.1:443", "+tcp 127.0.0.1:8080"]);
        assert!(changes(&new, &new).is_empty());
        b.unlisten(2);
        b.listen(moved);
        let msgs = changes(&new, &b.exposed());
        assert!(
            matches!(&msgs[..], [AgentMsg::Removed(e), AgentMsg::Added(f)] if e.family() == Family::V6 && f.pid == 1),
            "{msgs:?}"
        );
        assert!(changes(&Exposed::new(), &Exposed::new()).is_empty());
    }
    #[test]
    fn kernel_events_convert_and_decode_from_ring_buffer_bytes() {
        let mut ev = ListenEvent::zeroed();
        ev.kind = hoist_common::EVENT_LISTEN;
        ev.proto = IPPROTO_TCP;
        ev.family = AF_INET;
        ev.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        ev.port = 8000;
        ev.pid = 7;
        ev.cookie = 99;
        ev.comm[..7].copy_from_slice(b"python3");
        let l = GuestListener::from_event(&ev).unwrap();
        assert_eq!(
            (l.addr.to_string().as_str(), l.port, l.pid, l.comm.as_str(), l.cookie),
            ("127.0.0.1", 8000, 7, "python3", 99)
        );
        ev.family = AF_INET6;
        ev.addr = Ipv6Addr::LOCALHOST.octets();
        ev.ipv6only = 1;
        ev.comm = [b'x'; 16];
        let l = GuestListener::from_event(&ev).unwrap();
        assert_eq!((l.addr.to_string().as_str(), l.ipv6only, l.comm.len()), ("::1", true, 16));
        // The ring buffer's record, byte for byte as the kernel lays it out.
        let mut rec = [0u8; ListenEvent::SIZE];
        rec[0] = ev.kind;
        rec[1] = 1;
        rec[2..4].copy_from_slice(&AF_INET6.to_ne_bytes());
        rec[4..6].copy_from_slice(&8000u16.to_ne_bytes());
        rec[6] = IPPROTO_TCP;
        rec[12..16].copy_from_slice(&7u32.to_ne_bytes());
        rec[20..36].copy_from_slice(&ev.addr);
        rec[36..52].copy_from_slice(&ev.comm);
        rec[56..64].copy_from_slice(&99u64.to_ne_bytes());
        assert_eq!(ListenEvent::from_bytes(&rec), Some(ev));
        assert_eq!(ListenEvent::from_bytes(&rec[..63]), None, "a short record is refused");
        ev.proto = IPPROTO_UDP;
        assert_eq!(GuestListener::from_event(&ev).unwrap().proto, Proto::Udp, "a UDP server");
        ev.proto = 132; // SCTP
        assert_eq!(GuestListener::from_event(&ev), None, "only TCP listeners and UDP servers");
        ev.proto = IPPROTO_TCP;
        ev.family = 1;
        assert_eq!(GuestListener::from_event(&ev), None);
    }

    fn u(cookie: u64, addr: &str, port: u16, ipv6only: bool) -> GuestListener {
        GuestListener { proto: Proto::Udp, ..l(cookie, addr, port, ipv6only) }
    }

    fn udp(family: Family, port: u16) -> Endpoint {
        Endpoint { proto: Proto::Udp, addr: family.loopback(), port }
    }

    /// UDP servers follow the TCP address rules, on endpoints of their own:
    /// a TCP listener and a UDP server on one port are two forwards, and a
    /// group of UDP sockets on one port is one until the last goes.
    #[test]
    fn udp_servers_are_endpoints_of_their_own_with_the_same_address_rules() {
        use Family::*;
        let mut t = Table::new();
        t.listen(l(1, "127.0.0.1", 53, false));
        t.listen(u(2, "127.0.0.1", 53, false));
        t.listen(u(3, "::", 5353, false));
        t.listen(u(4, "::", 5354, true));
        t.listen(u(5, "10.0.0.1", 5355, false));
        t.listen(u(6, "::", 0, false));
        let ten = Endpoint { proto: Proto::Udp, addr: "10.0.0.1".parse().unwrap(), port: 5355 };
        let mut want = vec![
            (ep(V4, 53), "127.0.0.1:53".to_string()),
            (udp(V4, 53), "127.0.0.1:53".into()),
            (udp(V4, 5353), "127.0.0.1:5353".into()),
            (udp(V6, 5353), "[::1]:5353".into()),
            (udp(V6, 5354), "[::1]:5354".into()),
            (ten, "10.0.0.1:5355".into()),
        ];
        want.sort();
        assert_eq!(summary(&t.exposed()), want, "a v6 wildcard waiting for its snapshot is not");
        assert!(t.has_unresolved());
        // SO_REUSEPORT: counted until the last.
        t.listen(u(7, "0.0.0.0", 9000, false));
        t.listen(u(8, "0.0.0.0", 9000, false));
        t.unlisten(7);
        assert!(t.exposed().contains_key(&udp(V4, 9000)));
        t.unlisten(8);
        assert!(!t.exposed().contains_key(&udp(V4, 9000)));
        let msgs = changes(&t.exposed(), &Exposed::new());
        assert!(msgs.contains(&AgentMsg::Removed(udp(V6, 5353))), "{msgs:?}");
    }
}
