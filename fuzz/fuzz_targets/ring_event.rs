//! A ring-buffer record from the eBPF program: `ListenEvent::from_bytes` on
//! arbitrary bytes never panics and returns an event exactly when the record
//! holds one (at least `ListenEvent::SIZE` bytes); `GuestListener::from_event`
//! never panics on that event.
#![no_main]

use hoist_common::ListenEvent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ev = ListenEvent::from_bytes(data);
    assert_eq!(ev.is_some(), data.len() >= ListenEvent::SIZE);
    if let Some(ev) = ev {
        assert_eq!(ev.cookie.to_ne_bytes(), data[56..64]);
        let _ = hoist_agent::GuestListener::from_event(&ev);
    }
});
