//! `hoist_agent::parse_diag_replies`, the parser of the kernel's
//! `NETLINK_SOCK_DIAG` dump datagrams, on arbitrary bytes: it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let _ = hoist_agent::parse_diag_replies(data, &mut out);
});
