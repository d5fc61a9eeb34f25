//! A data connection's segments: `SegmentHeader::decode` on the first five
//! bytes and, for the segments whose payload the receiver parses, the payload
//! parsers. Never panics; an accepted header re-encodes to the same bytes, an
//! accepted `Open` or `Refused` payload round-trips, and an accepted
//! `Datagram` fits one UDP datagram.
#![no_main]

use hoist_wire::{
    datagram_header, open_segment, parse_open, parse_refused, refused_segment, SegmentHeader,
    SegmentKind, MAX_DATAGRAM,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, payload)) = data.split_first_chunk::<5>() else { return };
    let Ok(h) = SegmentHeader::decode(*head) else { return };
    assert_eq!(h.encode(), *head);
    match h.kind {
        SegmentKind::Open => {
            if let Ok(e) = parse_open(payload) {
                assert_eq!(&open_segment(&e)[5..], payload);
            }
        }
        SegmentKind::Refused => {
            if let Ok((why, reason)) = parse_refused(payload) {
                assert_eq!(parse_refused(&refused_segment(why, &reason)[5..]), Ok((why, reason)));
            }
        }
        SegmentKind::Datagram => {
            assert!(h.len <= MAX_DATAGRAM);
            assert_eq!(datagram_header(h.len), *head);
        }
        _ => {}
    }
});
