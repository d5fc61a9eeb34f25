//! `vsock-mux:` transport: the hybrid-vsock Unix socket of Firecracker, Cloud
//! Hypervisor and vhost-device-vsock. The host connects to the Unix socket,
//! writes `CONNECT <port>\n` and reads `OK <host port>\n`; the stream then
//! carries the guest's vsock connection.

use anyhow::{bail, Context, Result};
use std::io;
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Longest line a multiplexer may answer `CONNECT` with.
const REPLY_MAX: usize = 64;

pub(super) async fn connect(path: &Path, port: u32) -> Result<UnixStream> {
    let mut s = UnixStream::connect(path).await?;
    tokio::time::timeout(hoist_wire::HANDSHAKE_TIMEOUT, handshake(&mut s, port))
        .await
        .map_err(|_| anyhow::anyhow!("no answer to CONNECT {port}"))
        .and_then(|r| r)
        .context("hybrid-vsock handshake")?;
    Ok(s)
}

/// Reads the reply byte by byte: whatever follows the newline already belongs
/// to the guest's stream and must not be swallowed by a buffer.
async fn handshake(s: &mut UnixStream, port: u32) -> Result<()> {
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await.context("sending CONNECT")?;
    let mut line = Vec::with_capacity(16);
    loop {
        let b = match s.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                bail!("closed before answering CONNECT {port}: nothing listens on guest vsock port {port}")
            }
            Err(e) => return Err(e).context("reading the CONNECT reply"),
        };
        if b == b'\n' {
            return parse_reply(&line).map(|_| ());
        }
        line.push(b);
        if line.len() > REPLY_MAX {
            bail!("CONNECT reply longer than {REPLY_MAX} bytes");
        }
    }
}

/// Parses a reply line (without its newline): `OK <port>` gives the host-side
/// port the multiplexer assigned; anything else is an error.
pub fn parse_reply(line: &[u8]) -> Result<u32> {
    let text = String::from_utf8_lossy(line);
    match text.strip_prefix("OK ").map(|p| p.trim().parse::<u32>()) {
        Some(Ok(port)) => Ok(port),
        _ => bail!("unexpected CONNECT reply {text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    #[test]
    fn replies_parse() {
        let cases: &[(&[u8], Option<u32>)] = &[
            (b"OK 1073741824", Some(1073741824)),
            (b"OK 5", Some(5)),
            (b"OK", None),
            (b"OK x", None),
            (b"NO", None),
            (b"", None),
            (b"\xff\xfe", None),
        ];
        for (line, want) in cases {
            assert_eq!(parse_reply(line).ok(), *want, "{:?}", String::from_utf8_lossy(line));
        }
    }

    /// A stand-in multiplexer answers CONNECT like Firecracker does; bytes
    /// after the reply stay in the stream.
    #[tokio::test]
    async fn handshake_keeps_the_bytes_after_the_reply() {
        let dir = std::env::temp_dir().join(format!("hoist-mux-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mux.sock");
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            for reply in [&b"OK 1073741824\nhello"[..], b"", b"NO\n"] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut req = [0u8; 13];
                s.read_exact(&mut req).await.unwrap();
                assert_eq!(&req, b"CONNECT 5000\n");
                s.write_all(reply).await.unwrap();
            }
        });
        let mut s = connect(&path, 5000).await.unwrap();
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"hello");
        let err = connect(&path, 5000).await.unwrap_err();
        assert!(format!("{err:#}").contains("nothing listens on guest vsock port 5000"), "{err:#}");
        let err = connect(&path, 5000).await.unwrap_err();
        assert!(format!("{err:#}").contains("unexpected CONNECT reply"), "{err:#}");
        server.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
