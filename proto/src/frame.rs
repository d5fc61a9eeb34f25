//! Framing: every message is a big-endian `u32` length followed by that many
//! bytes, bounded by [`MAX_FRAME`] so a corrupt or hostile peer cannot make us
//! allocate without limit. Handshake reads use [`read_frame_timeout`].

use anyhow::{bail, Context, Result};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame body accepted or sent.
pub const MAX_FRAME: usize = 1024 * 1024;

/// How long a peer may take to send a handshake frame.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Prefixes `body` with its length. Fails if the body exceeds [`MAX_FRAME`].
pub fn encode_frame(body: &[u8], out: &mut Vec<u8>) -> Result<()> {
    if body.len() > MAX_FRAME {
        bail!("frame of {} bytes exceeds the {MAX_FRAME}-byte limit", body.len());
    }
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// Reads one frame. `Ok(None)` is a clean end of stream between frames; an end
/// of stream inside a frame is an error.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        let n = r.read(&mut len[got..]).await.context("reading frame length")?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            bail!("stream ended inside a frame length");
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        bail!("peer announced a frame of {len} bytes, over the {MAX_FRAME}-byte limit");
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.context("reading frame body")?;
    Ok(Some(body))
}

/// [`read_frame`] bounded by [`HANDSHAKE_TIMEOUT`]; end of stream is an error.
pub async fn read_frame_timeout<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(r)).await {
        Err(_) => bail!("no handshake frame within {HANDSHAKE_TIMEOUT:?}"),
        Ok(Ok(None)) => bail!("peer closed the connection during the handshake"),
        Ok(Ok(Some(body))) => Ok(body),
        Ok(Err(e)) => Err(e),
    }
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> Result<()> {
    let mut buf = Vec::with_capacity(body.len() + 4);
    encode_frame(body, &mut buf)?;
    w.write_all(&buf).await.context("writing frame")?;
    w.flush().await.context("flushing frame")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_bounds_hold() {
        struct Case {
            name: &'static str,
            wire: Vec<u8>,
            want: Result<Option<Vec<u8>>, &'static str>,
        }
        let mut two = Vec::new();
        encode_frame(b"hi", &mut two).unwrap();
        let cases = [
            Case { name: "empty stream", wire: vec![], want: Ok(None) },
            Case { name: "one frame", wire: two.clone(), want: Ok(Some(b"hi".to_vec())) },
            Case { name: "empty frame", wire: vec![0, 0, 0, 0], want: Ok(Some(vec![])) },
            Case { name: "cut length", wire: vec![0, 0], want: Err("inside a frame length") },
            Case { name: "cut body", wire: vec![0, 0, 0, 5, 1, 2], want: Err("frame body") },
            Case {
                name: "oversized",
                wire: ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec(),
                want: Err("over the"),
            },
        ];
        for c in cases {
            let got = read_frame(&mut c.wire.as_slice()).await;
            match (got, c.want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{}", c.name),
                (Err(e), Err(w)) => assert!(format!("{e:#}").contains(w), "{}: {e:#}", c.name),
                (g, w) => panic!("{}: got {g:?}, want {w:?}", c.name),
            }
        }
    }

    #[test]
    fn encoding_refuses_oversized_bodies() {
        let mut out = Vec::new();
        assert!(encode_frame(&vec![0; MAX_FRAME + 1], &mut out).is_err());
        assert!(out.is_empty());
        encode_frame(&vec![0; MAX_FRAME], &mut out).unwrap();
        assert_eq!(out.len(), MAX_FRAME + 4);
    }

    #[tokio::test]
    async fn handshake_read_times_out() {
        tokio::time::pause();
        let (_keep, mut b) = tokio::io::duplex(64);
        let err = read_frame_timeout(&mut b).await.unwrap_err();
        assert!(format!("{err:#}").contains("no handshake frame"), "{err:#}");
    }
}
