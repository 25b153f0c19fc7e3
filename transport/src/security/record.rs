//! The encrypted record stream of bulk replay: after the challenge-response, the
//! request and the events travel as AES-256-GCM records keyed from the replay key and
//! the challenge.

use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hkdf;

use super::{nonce, OpenError, TAG_SIZE};

/// The credential of the bulk replay service, derived from a bus key.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplayKey(pub [u8; 32]);

impl ReplayKey {
    /// The AEAD key of one replay connection: the challenge's fresh nonce salts it,
    /// so no two connections share a key and record counters can start at zero.
    fn connection_key(&self, challenge: &[u8; 32]) -> LessSafeKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, challenge).extract(&self.0);
        let okm = prk
            .expand(&[b"ledgerbus replay stream v1"], &AES_256_GCM)
            .expect("AES-256 key length is a valid HKDF length");
        LessSafeKey::new(UnboundKey::from(okm))
    }

    /// The sealing half of a replay connection, for bytes going `direction`.
    pub fn record_sealer(&self, challenge: &[u8; 32], direction: RecordDirection) -> RecordSealer {
        RecordSealer { key: self.connection_key(challenge), direction, counter: 0 }
    }

    /// The opening half of a replay connection, for bytes coming `direction`.
    pub fn record_opener(&self, challenge: &[u8; 32], direction: RecordDirection) -> RecordOpener {
        RecordOpener { key: self.connection_key(challenge), direction, counter: 0 }
    }
}

/// Which way a replay record travels; part of its nonce, so the two directions of a
/// connection never share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordDirection {
    /// Server to client (the events).
    ToClient = 0,
    /// Client to server (the request).
    ToServer = 1,
}

/// Largest plaintext of one replay record.
pub const RECORD_PLAIN_MAX: usize = 64 << 10;
/// Bytes a record adds to its plaintext: a u32 length and the tag.
pub const RECORD_OVERHEAD: usize = 4 + TAG_SIZE;

fn record_nonce(direction: RecordDirection, counter: u64) -> Nonce {
    nonce(direction as u32, counter)
}

/// Seals the records of one direction of a replay connection:
/// `length (u32 LE, of what follows) | ciphertext | tag`, the length authenticated.
/// Records are numbered from 0; a dropped, repeated or reordered record fails to open.
pub struct RecordSealer {
    key: LessSafeKey,
    direction: RecordDirection,
    counter: u64,
}

impl fmt::Debug for RecordSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordSealer")
            .field("direction", &self.direction)
            .field("counter", &self.counter)
            .finish()
    }
}

impl RecordSealer {
    /// Appends the record of `plain` (at most [`RECORD_PLAIN_MAX`] bytes) to `out`.
    ///
    /// # Panics
    /// If `plain` is longer than [`RECORD_PLAIN_MAX`] (the caller's buffering bug).
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        assert!(plain.len() <= RECORD_PLAIN_MAX, "record over its maximum");
        let length = ((plain.len() + TAG_SIZE) as u32).to_le_bytes();
        out.extend_from_slice(&length);
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                record_nonce(self.direction, self.counter),
                Aad::from(length),
                &mut out[start..],
            )
            .expect("a record is far below the AES-GCM length limit");
        out.extend_from_slice(tag.as_ref());
        self.counter += 1;
    }
}

/// Opens the records of one direction of a replay connection, in order.
pub struct RecordOpener {
    key: LessSafeKey,
    direction: RecordDirection,
    counter: u64,
}

impl fmt::Debug for RecordOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordOpener")
            .field("direction", &self.direction)
            .field("counter", &self.counter)
            .finish()
    }
}

impl RecordOpener {
    /// The length of the record body that follows a record's 4-byte length field, or
    /// an error if no honest sealer could have written it.
    pub fn body_length(&self, length: [u8; 4]) -> Result<usize, OpenError> {
        let length = u32::from_le_bytes(length) as usize;
        if !(TAG_SIZE..=RECORD_PLAIN_MAX + TAG_SIZE).contains(&length) {
            return Err(OpenError::Truncated);
        }
        Ok(length)
    }

    /// Opens a record body (ciphertext and tag, as long as `body_length` said) in
    /// place; returns its plaintext.
    pub fn open<'a>(&mut self, length: [u8; 4], body: &'a mut [u8]) -> Result<&'a [u8], OpenError> {
        if self.body_length(length)? != body.len() {
            return Err(OpenError::Truncated);
        }
        let plain = self
            .key
            .open_in_place(record_nonce(self.direction, self.counter), Aad::from(length), body)
            .map_err(|_| OpenError::BadTag)?;
        self.counter += 1;
        Ok(plain)
    }
}

impl fmt::Debug for ReplayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReplayKey(redacted)")
    }
}
