//! `hoist_wire::split_frame` on arbitrary bytes, with several frame limits:
//! it never panics, never returns a body longer than the limit, and every
//! frame it takes consumes its header and body, so splitting always ends.
#![no_main]

use bytes::BytesMut;
use hoist_wire::{split_frame, HEADER_LEN, MAX_FRAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for max in [0, 1, 16, 4096, MAX_FRAME] {
        let mut buf = BytesMut::from(data);
        loop {
            let before = buf.len();
            match split_frame(&mut buf, max) {
                Ok(Some(body)) => {
                    assert!(body.len() <= max, "a body of {} bytes, limit {max}", body.len());
                    assert_eq!(buf.len(), before - HEADER_LEN - body.len());
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
});
