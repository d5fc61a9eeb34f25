//! Finding the WSL VM for `hvsock:wsl:<port>`. WSL's utility VM gets a new id
//! at every start, and the APIs that list VMs need admin. Without admin and
//! without starting WSL, the running compute systems are the subkeys of
//! `HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion\HostComputeService\VolatileStore\ComputeSystem`
//! (GUID names); each candidate is asked with the agent's own handshake
//! (`HostMsg::Control`, answered by `AgentMsg::Welcome`), within a bound, and
//! the one that answers is the VM. The VM found last is tried first.
//!
//! The control loop resolves the address right before each connect: while
//! no WSL VM runs, the connect fails and the loop waits quietly (one log line
//! per outage); after the VM goes away, the next resolution finds the new
//! id and says so. An explicit `hvsock:<guid>:<port>`, and every other
//! address, is used as given. The registry and the probe are traits, so the
//! choice is tested on every OS.

use anyhow::{anyhow, bail, Context, Result};
use hoist_net::{connect, Addr, Guid, HvVm};
use hoist_wire::{AgentMsg, Conn, HostMsg, PROTOCOL_VERSION};
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::info;

/// Where the running compute systems are listed, under HKEY_LOCAL_MACHINE.
#[cfg(windows)]
pub const COMPUTE_SYSTEMS: &str =
    r"SOFTWARE\Microsoft\Windows NT\CurrentVersion\HostComputeService\VolatileStore\ComputeSystem";

/// How long one candidate may take to connect and welcome us.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Lists the ids of the running compute systems.
pub trait Lister {
    /// Subkey names; not all need be GUIDs.
    fn list(&self) -> io::Result<Vec<String>>;
}

/// Asks whether the agent answers at an address.
pub trait Prober {
    /// Ok when the agent welcomed us there.
    fn probe(&self, addr: &Addr) -> impl Future<Output = Result<()>> + Send;
}

/// The candidates in the order to try them: the VM found last first, then
/// the others as listed; names that are not GUIDs are skipped. Pure.
pub fn candidates(names: &[String], last: Option<Guid>) -> Vec<Guid> {
    let mut ids: Vec<Guid> = Vec::new();
    for id in names.iter().filter_map(|n| n.parse::<Guid>().ok()) {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if let Some(i) = last.and_then(|l| ids.iter().position(|g| *g == l)) {
        let l = ids.remove(i);
        ids.insert(0, l);
    }
    ids
}

/// The VM whose agent answers on vsock `port`, trying `last` first.
pub async fn find(
    lister: &impl Lister,
    prober: &impl Prober,
    port: u32,
    last: Option<Guid>,
) -> Result<Guid> {
    let names = match lister.list() {
        Ok(n) => n,
        // The key exists only while some compute system runs.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).context("listing the running compute systems in the registry"),
    };
    let ids = candidates(&names, last);
    for &vm in &ids {
        let addr = Addr::Hvsock { vm: HvVm::Id(vm), port };
        if let Ok(Ok(())) = tokio::time::timeout(PROBE_TIMEOUT, prober.probe(&addr)).await {
            return Ok(vm);
        }
    }
    bail!(
        "no running WSL VM answers on vsock port {port} ({} compute systems asked): waiting for WSL to start with hoist-agent --listen vsock:any:{port} in it",
        ids.len()
    )
}

/// What a resolution found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// The address needs no discovery.
    Fixed,
    /// The same WSL VM as last time.
    Same(Guid),
    /// A WSL VM other than last time's (or the first one).
    New {
        /// Its id.
        vm: Guid,
        /// The one found before, if any.
        previous: Option<Guid>,
    },
}

/// Where connections to the agent go: the configured address, or for
/// `hvsock:wsl:<port>` the WSL VM found last. The control loop resolves it
/// before each connect; data connections read it.
#[derive(Clone, Debug, Default)]
pub struct Target {
    vm: Arc<Mutex<Option<Guid>>>,
}

impl Target {
    /// The address to connect to now (the last VM found, for `hvsock:wsl:`).
    #[cfg(test)]
    pub fn current(&self, guest: &Addr) -> Addr {
        match (guest, *self.vm.lock().unwrap()) {
            (Addr::Hvsock { vm: HvVm::Wsl, port }, Some(vm)) => {
                Addr::Hvsock { vm: HvVm::Id(vm), port: *port }
            }
            _ => guest.clone(),
        }
    }

    /// Resolves `guest` with the given registry and probe.
    pub async fn resolve_with(
        &self,
        guest: &Addr,
        lister: &impl Lister,
        prober: &impl Prober,
    ) -> Result<(Addr, Found)> {
        let Addr::Hvsock { vm: HvVm::Wsl, port } = guest else {
            return Ok((guest.clone(), Found::Fixed));
        };
        let last = *self.vm.lock().unwrap();
        let vm = find(lister, prober, *port, last).await?;
        *self.vm.lock().unwrap() = Some(vm);
        let found = match last {
            Some(l) if l == vm => Found::Same(vm),
            previous => Found::New { vm, previous },
        };
        Ok((Addr::Hvsock { vm: HvVm::Id(vm), port: *port }, found))
    }

    /// Resolves `guest` with this machine's registry and the agent's
    /// handshake, and logs a VM it had not seen.
    pub async fn resolve(&self, guest: &Addr) -> Result<Addr> {
        let (addr, found) = self.resolve_with(guest, &platform_lister(), &Handshake).await?;
        match found {
            Found::New { vm, previous: None } => {
                info!(event = "wsl_vm_found", vm = %vm, "found the WSL VM {vm}")
            }
            Found::New { vm, previous: Some(p) } => {
                info!(event = "wsl_vm_found", vm = %vm, previous = %p, "the WSL VM restarted: new VM id {vm} (was {p})")
            }
            Found::Fixed | Found::Same(_) => {}
        }
        Ok(addr)
    }
}

/// The probe: connect and trade the control handshake's first messages.
pub struct Handshake;

impl Prober for Handshake {
    async fn probe(&self, addr: &Addr) -> Result<()> {
        let mut conn = Conn::new(connect(addr).await?);
        let hello = HostMsg::Hello { nonce: hoist_wire::random(), ping_interval_ms: 0 };
        conn.send_all([&HostMsg::Control { version: PROTOCOL_VERSION }, &hello]).await?;
        match conn.recv_within::<AgentMsg>(PROBE_TIMEOUT).await? {
            // An agent of another version refuses in words: it is still the
            // VM with the agent, and the session will say why it fails.
            AgentMsg::Welcome { .. } | AgentMsg::Refused { .. } => Ok(()),
            other => Err(anyhow!("{addr} answered {other:?}, not a welcome")),
        }
    }
}

/// The running compute systems, from a registry key's subkeys.
#[cfg(windows)]
pub struct Registry {
    /// The root key (HKEY_LOCAL_MACHINE for the real list).
    pub root: hoist_net::RegistryRoot,
    /// The key whose subkeys are listed.
    pub path: String,
}

#[cfg(windows)]
impl Lister for Registry {
    fn list(&self) -> io::Result<Vec<String>> {
        hoist_net::registry_subkeys(self.root, &self.path)
    }
}

#[cfg(windows)]
fn platform_lister() -> Registry {
    Registry { root: hoist_net::RegistryRoot::LocalMachine, path: COMPUTE_SYSTEMS.into() }
}

/// Elsewhere there is no registry and no WSL VM to find.
#[cfg(not(windows))]
struct NoRegistry;

#[cfg(not(windows))]
impl Lister for NoRegistry {
    fn list(&self) -> io::Result<Vec<String>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "hvsock:wsl: finds the WSL VM in the Windows registry: it works only on Windows",
        ))
    }
}

#[cfg(not(windows))]
fn platform_lister() -> NoRegistry {
    NoRegistry
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const A: Guid = Guid(0xaaaaaaaa_0000_4000_8000_000000000001);
    const B: Guid = Guid(0xbbbbbbbb_0000_4000_8000_000000000002);
    const OTHER: Guid = Guid(0xcccccccc_0000_4000_8000_000000000003);

    /// A registry whose listing the test changes between resolutions.
    #[derive(Default)]
    struct FakeRegistry(Mutex<Vec<String>>);

    impl FakeRegistry {
        fn set(&self, ids: &[Guid]) {
            *self.0.lock().unwrap() = ids.iter().map(|g| g.to_string()).collect();
        }
    }

    impl Lister for FakeRegistry {
        fn list(&self) -> io::Result<Vec<String>> {
            Ok(self.0.lock().unwrap().clone())
        }
    }

    /// VMs where an agent answers; `silent` ones accept and never answer.
    #[derive(Default)]
    struct FakeVms {
        agents: Mutex<BTreeSet<Guid>>,
        silent: BTreeSet<Guid>,
        asked: Mutex<Vec<Guid>>,
    }

    impl Prober for FakeVms {
        async fn probe(&self, addr: &Addr) -> Result<()> {
            let Addr::Hvsock { vm: HvVm::Id(vm), port: 1024 } = addr else {
                bail!("unexpected probe address {addr}");
            };
            self.asked.lock().unwrap().push(*vm);
            if self.silent.contains(vm) {
                std::future::pending::<()>().await;
            }
            let answers = self.agents.lock().unwrap().contains(vm);
            answers.then_some(()).ok_or_else(|| anyhow!("refused"))
        }
    }

    fn wsl() -> Addr {
        "hvsock:wsl:1024".parse().unwrap()
    }

    fn at(vm: Guid) -> Addr {
        Addr::Hvsock { vm: HvVm::Id(vm), port: 1024 }
    }

    #[tokio::test(start_paused = true)]
    async fn no_vm_then_one_then_a_restart_with_a_new_id() {
        let (reg, vms, t) = (FakeRegistry::default(), FakeVms::default(), Target::default());
        // No compute system runs: no VM, and data connections keep the spec.
        let e = t.resolve_with(&wsl(), &reg, &vms).await.unwrap_err();
        assert!(format!("{e:#}").contains("no running WSL VM answers on vsock port 1024"), "{e:#}");
        assert_eq!(t.current(&wsl()), wsl());
        // WSL starts.
        reg.set(&[A]);
        vms.agents.lock().unwrap().insert(A);
        let r = t.resolve_with(&wsl(), &reg, &vms).await.unwrap();
        assert_eq!(r, (at(A), Found::New { vm: A, previous: None }));
        assert_eq!(t.current(&wsl()), at(A));
        // The agent restarted in the same VM.
        let r = t.resolve_with(&wsl(), &reg, &vms).await.unwrap();
        assert_eq!(r, (at(A), Found::Same(A)));
        // The VM restarted: a new id, the old one gone.
        reg.set(&[B]);
        vms.agents.lock().unwrap().insert(B);
        let r = t.resolve_with(&wsl(), &reg, &vms).await.unwrap();
        assert_eq!(r, (at(B), Found::New { vm: B, previous: Some(A) }));
        assert_eq!(t.current(&wsl()), at(B));
    }

    #[tokio::test(start_paused = true)]
    async fn other_vms_that_refuse_or_never_answer_are_passed_over_in_bounded_time() {
        let reg = FakeRegistry::default();
        // Not a GUID, a VM without the agent, one that hangs, then WSL.
        *reg.0.lock().unwrap() =
            vec!["not-a-guid".into(), OTHER.to_string(), B.to_string(), A.to_string()];
        let vms = FakeVms { silent: [B].into(), ..Default::default() };
        vms.agents.lock().unwrap().insert(A);
        let t = Target::default();
        let started = tokio::time::Instant::now();
        let (addr, _) = t.resolve_with(&wsl(), &reg, &vms).await.unwrap();
        assert_eq!(addr, at(A));
        assert_eq!(*vms.asked.lock().unwrap(), [OTHER, B, A]);
        assert!(started.elapsed() <= PROBE_TIMEOUT * 2, "{:?}", started.elapsed());
        // Next time the VM found last is asked first.
        vms.asked.lock().unwrap().clear();
        t.resolve_with(&wsl(), &reg, &vms).await.unwrap();
        assert_eq!(*vms.asked.lock().unwrap(), [A]);
        // Only candidates that do not answer: a bounded failure.
        vms.agents.lock().unwrap().clear();
        let e = t.resolve_with(&wsl(), &reg, &vms).await.unwrap_err();
        assert!(format!("{e:#}").contains("3 compute systems asked"), "{e:#}");
    }

    #[tokio::test]
    async fn an_explicit_vm_id_or_another_transport_skips_discovery() {
        struct Unused;
        impl Lister for Unused {
            fn list(&self) -> io::Result<Vec<String>> {
                panic!("listed the registry for a fixed address")
            }
        }
        let t = Target::default();
        for spec in [at(A), "tcp:127.0.0.1:9".parse().unwrap()] {
            let r = t.resolve_with(&spec, &Unused, &FakeVms::default()).await.unwrap();
            assert_eq!(r, (spec.clone(), Found::Fixed));
            assert_eq!(t.current(&spec), spec);
        }
    }

    #[test]
    fn candidates_come_last_found_first_without_duplicates_or_non_guids() {
        let s = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (a, b) = (A.to_string(), B.to_string());
        let lower = a.to_lowercase();
        let cases: Vec<(Vec<String>, Option<Guid>, Vec<Guid>)> = vec![
            (s(&[]), None, vec![]),
            (s(&[&a, &b]), None, vec![A, B]),
            (s(&[&a, &b]), Some(B), vec![B, A]),
            (s(&[&a, &b]), Some(OTHER), vec![A, B]),
            (s(&["{x}", &lower, &a, &b]), None, vec![A, B]),
        ];
        for (names, last, want) in cases {
            assert_eq!(candidates(&names, last), want, "{names:?} {last:?}");
        }
    }

    #[cfg(not(windows))]
    #[tokio::test]
    async fn hvsock_wsl_says_it_needs_windows_elsewhere() {
        let e = Target::default().resolve(&wsl()).await.unwrap_err();
        assert!(format!("{e:#}").contains("works only on Windows"), "{e:#}");
    }

    /// The registry lister on a key the test makes in Wine's (or Windows')
    /// HKEY_CURRENT_USER with reg.exe, with two GUID subkeys and one other.
    #[cfg(windows)]
    #[test]
    fn the_registry_lister_lists_subkeys() {
        use hoist_net::RegistryRoot;
        use std::process::Command;
        let base = format!(r"Software\hoist-test-{}", std::process::id());
        let path = format!(r"{base}\ComputeSystem");
        let reg = |args: &[&str]| {
            let st = Command::new("reg").args(args).output().expect("running reg.exe");
            assert!(st.status.success(), "reg {args:?}: {st:?}");
        };
        let lister = Registry { root: RegistryRoot::CurrentUser, path: path.clone() };
        let missing = lister.list().unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound, "{missing}");
        for name in [A.to_string(), B.to_string(), "not-a-vm".into()] {
            reg(&["add", &format!(r"HKCU\{path}\{name}"), "/f"]);
        }
        let mut names = lister.list().unwrap();
        names.sort();
        assert_eq!(names, [A.to_string(), B.to_string(), "not-a-vm".to_string()]);
        assert_eq!(candidates(&names, Some(B)), [B, A]);
        reg(&["delete", &format!(r"HKCU\{base}"), "/f"]);
    }
}
