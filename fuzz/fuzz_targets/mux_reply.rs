//! `hoist_net::parse_mux_reply`, the hybrid-vsock multiplexer's answer to
//! `CONNECT`, on arbitrary bytes: it never panics, and accepts only lines
//! that start with `OK `.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if hoist_net::parse_mux_reply(data).is_ok() {
        assert!(data.starts_with(b"OK "));
    }
});
