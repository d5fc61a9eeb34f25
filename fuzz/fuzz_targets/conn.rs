//! A `hoist_wire::Conn` receiving `AgentMsg`s from a peer that sends
//! arbitrary bytes, as the host's end of a control stream does: it never
//! panics or hangs, and ends with an error or the end of the stream. The
//! first input byte sets the in-memory pipe's capacity (1 to 256 bytes), so
//! frames arrive cut at every possible place.
#![no_main]

use hoist_wire::{AgentMsg, Conn};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tokio::io::AsyncWriteExt;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().build().expect("a current-thread runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&cap, stream)) = data.split_first() else { return };
    let (mut peer, ours) = tokio::io::duplex(cap as usize + 1);
    runtime().block_on(async {
        let send = async move {
            // The reader may stop early (a bad frame) and drop its end.
            let _ = peer.write_all(stream).await;
        };
        // Owns our end, so the peer's write fails once the reader is done.
        let receive = async move {
            let mut conn = Conn::new(ours);
            let mut received = 0;
            while let Ok(Some(_)) = conn.recv::<AgentMsg>().await {
                received += 1;
            }
            received
        };
        let ((), received) = tokio::join!(send, receive);
        // Every message takes at least a header and a tag byte.
        assert!(received <= stream.len() / 5);
    });
});
