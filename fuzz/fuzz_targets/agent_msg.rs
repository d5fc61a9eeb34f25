//! `AgentMsg::decode_body` on arbitrary bytes: it never panics, and a body it
//! accepts is canonical: encoding the message gives back the same bytes, which
//! decode to the same message.
#![no_main]

use hoist_wire::{AgentMsg, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = AgentMsg::decode_body(data) {
        let mut body = Vec::new();
        msg.encode_body(&mut body);
        assert_eq!(AgentMsg::decode_body(&body).as_ref(), Ok(&msg));
        assert_eq!(body, data, "{msg:?} re-encodes differently");
    }
});
