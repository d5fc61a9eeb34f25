//! The optional shared-token handshake of a control stream: both sides prove
//! they hold the same secret without sending it, each over both sides' fresh
//! nonces, so a proof cannot be replayed and an impostor agent learns nothing
//! it could use against the real one.
//!
//! ```text
//! host  -> agent: Hello { nonce_h }
//! agent -> host:  Welcome { challenge: { nonce_a, proof_a = HMAC(token, "hoist-agent" | nonce_h | nonce_a) } }
//! host  -> agent: Auth { proof_h = HMAC(token, "hoist-host" | nonce_a | nonce_h) }
//! ```

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The shortest token accepted, in bytes.
pub const MIN_TOKEN: usize = 16;

/// A shared secret, read from a token file.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A token from a file's contents: surrounding whitespace is ignored (an
    /// editor's final newline), at least [`MIN_TOKEN`] bytes must remain.
    pub fn from_file_contents(bytes: &[u8]) -> Result<Token, String> {
        let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
        let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
        let t = &bytes[start..end];
        if t.len() < MIN_TOKEN {
            return Err(format!(
                "the token is {} bytes; use at least {MIN_TOKEN} random bytes (e.g. `head -c 32 /dev/urandom | base64`)",
                t.len()
            ));
        }
        Ok(Token(t.to_vec()))
    }

    fn mac(&self, role: &[u8], first: &[u8; 16], second: &[u8; 16]) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(role);
        mac.update(first);
        mac.update(second);
        mac
    }

    /// The agent's proof over the host's and its own nonce.
    pub fn agent_proof(&self, host_nonce: &[u8; 16], agent_nonce: &[u8; 16]) -> [u8; 32] {
        self.mac(b"hoist-agent", host_nonce, agent_nonce).finalize().into_bytes().into()
    }

    /// The host's proof over the agent's and its own nonce.
    pub fn host_proof(&self, agent_nonce: &[u8; 16], host_nonce: &[u8; 16]) -> [u8; 32] {
        self.mac(b"hoist-host", agent_nonce, host_nonce).finalize().into_bytes().into()
    }

    /// Checks an agent's proof, in constant time.
    pub fn verify_agent(
        &self,
        host_nonce: &[u8; 16],
        agent_nonce: &[u8; 16],
        proof: &[u8; 32],
    ) -> bool {
        self.mac(b"hoist-agent", host_nonce, agent_nonce).verify_slice(proof).is_ok()
    }

    /// Checks a host's proof, in constant time.
    pub fn verify_host(
        &self,
        agent_nonce: &[u8; 16],
        host_nonce: &[u8; 16],
        proof: &[u8; 32],
    ) -> bool {
        self.mac(b"hoist-host", agent_nonce, host_nonce).verify_slice(proof).is_ok()
    }
}

/// Fresh random bytes (nonces, tickets) from the operating system.
pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the operating system's random source failed");
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_token_and_nonces() {
        let t = Token::from_file_contents(b"  correct horse battery staple\n").unwrap();
        let other = Token::from_file_contents(b"another secret of some length").unwrap();
        let (nh, na) = ([1u8; 16], [2u8; 16]);
        let pa = t.agent_proof(&nh, &na);
        assert!(t.verify_agent(&nh, &na, &pa));
        assert!(!other.verify_agent(&nh, &na, &pa), "another token");
        assert!(!t.verify_agent(&na, &nh, &pa), "nonces swapped");
        assert!(!t.verify_host(&nh, &na, &pa), "an agent proof is no host proof");
        let ph = t.host_proof(&na, &nh);
        assert!(t.verify_host(&na, &nh, &ph));
        assert_ne!(pa, ph);
    }

    /// The proofs are HMAC-SHA256 over the role and both nonces, pinned
    /// against values computed independently (Python's hmac module).
    #[test]
    fn proofs_are_pinned() {
        let t = Token::from_file_contents(&[0x0b; 20]).unwrap();
        let hex = |b: [u8; 32]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            hex(t.agent_proof(&[0; 16], &[0xff; 16])),
            "04cdffd4775e73b23ea9ca9a7735fed29dae90b2c861fb22d3bb038ac07788df"
        );
        assert_eq!(
            hex(t.host_proof(&[0xff; 16], &[0; 16])),
            "aea12c22029f44bc90aaf13ef752706299bc8737547e3151810cfaa026f1e611"
        );
    }

    #[test]
    fn short_tokens_are_refused() {
        assert!(Token::from_file_contents(b"short\n").unwrap_err().contains("at least 16"));
        assert!(Token::from_file_contents(b"").is_err());
        assert_ne!(random::<16>(), random::<16>());
    }
}
