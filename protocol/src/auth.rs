//! The gateway handshake (schema: Challenge, Authenticate, Welcome): the sequencer
//! sends a fresh nonce, the gateway answers HMAC-SHA256(secret, nonce). The secret
//! never crosses the wire and an answer recorded once is useless later.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A fresh random nonce.
pub fn nonce() -> std::io::Result<[u8; 32]> {
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(nonce)
}

/// The answer a gateway sends for `nonce`.
pub fn answer(secret: &[u8], nonce: &[u8; 32]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(nonce);
    mac.finalize().into_bytes().into()
}

/// Whether `mac` answers `nonce` under `secret`, compared in constant time.
pub fn verify(secret: &[u8], nonce: &[u8; 32], mac: &[u8; 32]) -> bool {
    let mut expected = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    expected.update(nonce);
    expected.verify_slice(mac).is_ok()
}

/// A random non-zero u64 (session ids).
pub fn random_u64() -> std::io::Result<u64> {
    loop {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
        let value = u64::from_le_bytes(bytes);
        if value != 0 {
            return Ok(value);
        }
    }
}
