//! The kernel event source against the real kernel: what the eBPF programs
//! report for listeners in a fresh network namespace. Root only; run through
//! `cargo xtask test`.

use hoist_agent::source::{diag, HookMode, Hooks, KernelSource};
use hoist_common::{ListenEvent, AF_INET, AF_INET6, EVENT_LISTEN, EVENT_UNLISTEN};
use hoist_testsupport::{require_root, Netns};
use socket2::{Domain, Socket, Type};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// Collects events until one matches `pred`, failing after a bound.
async fn expect(src: &mut KernelSource, seen: &mut Vec<ListenEvent>, what: &str, pred: impl Fn(&ListenEvent) -> bool) -> ListenEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(e) = seen.iter().find(|e| pred(e)) {
            return *e;
        }
        let mut batch = Vec::new();
        tokio::time::timeout_at(deadline, src.next_batch(&mut batch))
            .await
            .unwrap_or_else(|_| panic!("no event for {what}; saw {seen:?}"))
            .unwrap();
        seen.extend(batch);
    }
}

fn listen(addr: &str, v6only: Option<bool>) -> TcpListener {
    let addr: SocketAddr = addr.parse().unwrap();
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
    if let Some(v) = v6only {
        s.set_only_v6(v).unwrap();
    }
    s.bind(&addr.into()).unwrap();
    s.listen(8).unwrap();
    s.into()
}

#[tokio::test]
async fn tracepoint_hooks_report_listens_and_unlistens_in_one_namespace_only() {
    require_root();
    let ns = Netns::new().unwrap();
    let other = Netns::new().unwrap();
    let mut src = KernelSource::load(HookMode::Tracepoint, ns.inode().unwrap() as u32).unwrap();
    assert_eq!(src.hooks(), Hooks::Tracepoint);
    let mut seen = Vec::new();

    // Another namespace's listener must never be reported: it is opened
    // first, so the events that follow prove it was filtered, not late.
    let foreign = other.run(|| listen("127.0.0.1:0", None)).unwrap();
    let v4 = ns.run(|| listen("127.0.0.1:0", None)).unwrap();
    let p4 = v4.local_addr().unwrap().port();
    let e = expect(&mut src, &mut seen, "the v4 listen", |e| e.kind == EVENT_LISTEN && e.family == AF_INET).await;
    assert_eq!((e.port, &e.addr[..4], e.netns as u64), (p4, &[127, 0, 0, 1][..], ns.inode().unwrap()));
    assert_eq!(e.pid, std::process::id());
    assert_ne!(e.cookie, 0);
    let fport = foreign.local_addr().unwrap().port();
    assert!(fport == p4 || seen.iter().all(|e| e.port != fport), "a foreign namespace's listener leaked: {seen:?}");

    // The cookie is the one sock_diag reports for the same socket.
    let snap = ns.run(diag::listeners).unwrap().unwrap();
    let d = snap.iter().find(|d| d.port == p4).expect("sock_diag sees the listener").clone();
    assert_eq!(d.cookie, e.cookie);
    let inode = d.inode;
    let owners = ns.run(move || diag::owners(&[inode])).unwrap();
    assert_eq!(owners.get(&d.inode).map(|o| o.0), Some(std::process::id()));

    let mut keep = Vec::new();
    for (addr, v6only, want) in [("[::1]:0", Some(true), 1u8), ("[::]:0", Some(false), 0), ("[::]:0", Some(true), 1)] {
        let l = ns.run(move || listen(addr, v6only)).unwrap();
        let p = l.local_addr().unwrap().port();
        let e = expect(&mut src, &mut seen, addr, |e| e.kind == EVENT_LISTEN && e.port == p).await;
        assert_eq!((e.family, e.ipv6only), (AF_INET6, want), "{addr} v6only={v6only:?}");
        keep.push(l);
    }

    // A listen() that fails with EADDRINUSE passes through LISTEN in the
    // kernel but must produce nothing.
    let (good, err) = ns.run(hoist_testsupport::listen_then_fail_on_the_same_port).unwrap().unwrap();
    assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE));
    let p = good.local_addr().unwrap().port();
    expect(&mut src, &mut seen, "the good listen", |e| e.kind == EVENT_LISTEN && e.port == p).await;
    drop(v4);
    let e = expect(&mut src, &mut seen, "the v4 unlisten", |e| e.kind == EVENT_UNLISTEN && e.port == p4).await;
    assert_eq!(e.cookie, d.cookie, "the unlisten names the same socket");
    let for_p: Vec<_> = seen.iter().filter(|e| e.port == p).map(|e| e.kind).collect();
    assert_eq!(for_p, vec![EVENT_LISTEN], "the failed listen() left a trace: {seen:?}");
    assert_eq!(src.drops().unwrap(), 0);
    drop(good);
}

/// This machine's kernel refuses trampoline programs (fentry/fexit): forcing
/// them fails clearly and auto falls back to tracepoints. On a kernel that
/// allows trampolines (the VM lab's), auto picks them instead.
#[tokio::test]
async fn auto_picks_the_best_hook_set_this_kernel_allows() {
    require_root();
    let forced = KernelSource::load(HookMode::Trampoline, 0);
    let auto = KernelSource::load(HookMode::Auto, 0).unwrap();
    match forced {
        Err(e) => {
            assert!(format!("{e:#}").contains("fexit/inet_csk_listen_start"), "{e:#}");
            assert_eq!(auto.hooks(), Hooks::Tracepoint);
        }
        Ok(t) => {
            assert_eq!(t.hooks(), Hooks::Trampoline);
            assert_eq!(auto.hooks(), Hooks::Trampoline);
        }
    }
}
