//! Authenticated encryption of every datagram on the bus (docs/architecture.md, "Security").
//!
//! With [`BusSecurity::Aead`] every datagram, data and control alike, is sealed with
//! AES-256-GCM (from `ring`; no hand-rolled crypto) before it leaves a node, and a node
//! opens and verifies it before it reads anything but the routing fields:
//!
//! ```text
//! | packet header (40 B, clear, authenticated) | frames (encrypted) | trailer (40 B) |
//! trailer = key id u32 | sender id u32 | instance u64 | counter u64 | GCM tag (16 B)
//! ```
//!
//! # Keys and nonces
//! The operator configures one or two 32-byte bus keys: the first seals, every key
//! opens, so a key is rotated without stopping the bus (add the new key second
//! everywhere, then make it first everywhere, then drop the old one). The key that
//! seals a datagram is derived from the bus key with HKDF-SHA256, salted with the
//! session id and bound to the sending node's id and a random 64-bit *instance*
//! chosen each time the node starts. The 96-bit nonce is the sender id and a packet
//! counter that counts every datagram the instance sends (retransmissions included),
//! so under one derived key a nonce is never used twice: a restarted node, even one
//! that keeps its session, has a new instance and therefore a new key.
//!
//! # Replays
//! A replayed data datagram is harmless (the receiver drops sequences it has), but a
//! replayed control datagram (status, NAK, heartbeat) could move a receiver's position
//! back or aim retransmissions at the replayer. [`Opener`] therefore accepts a control
//! datagram only if its counter is above the last one accepted from that sender
//! instance.
//!
//! # Cost of a forgery
//! A datagram that fails to open costs one key derivation (for an unknown instance) and
//! one tag check, changes nothing, and is answered with nothing.

use std::fmt;
use std::sync::Arc;

use ledgerbus_codec::{PacketHeader, PacketKind, PACKET_HEADER_SIZE};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hkdf;
use zerocopy::FromBytes;

mod record;
pub use record::{RecordDirection, RecordOpener, RecordSealer, ReplayKey, RECORD_OVERHEAD, RECORD_PLAIN_MAX};

/// Bytes a sealed datagram carries beyond its plaintext: the trailer.
pub const SEAL_OVERHEAD: usize = TRAILER_SIZE;
/// The sender's node id in sealed datagrams; receivers use their receiver id.
pub const SENDER_NODE_ID: u32 = 0;
/// The node id of a sender's archive, which answers old NAKs from the journal.
pub const SENDER_NODE_ID_ARCHIVE: u32 = u32::MAX;
/// Length of a bus key.
pub const BUS_KEY_LEN: usize = 32;
/// Bus keys accepted at once at most (the current one and the one being rotated out).
pub const BUS_KEYS_MAX: usize = 2;

const TRAILER_SIZE: usize = 40;
const TAG_SIZE: usize = 16;
/// The trailer before the tag: authenticated with the header as associated data.
const TRAILER_CLEAR: usize = TRAILER_SIZE - TAG_SIZE;
/// Derived session keys an [`Opener`] remembers (one per sender instance heard).
const OPENER_CACHE_MAX: usize = 128;
/// HKDF info prefix; a new wire version of the trailer changes it.
const KDF_LABEL: &[u8] = b"ledgerbus bus v1";

/// One 32-byte bus key. Never printed: `Debug` shows only its id.
#[derive(Clone)]
pub struct BusKey {
    secret: [u8; BUS_KEY_LEN],
    id: u32,
}

impl BusKey {
    /// A key from its bytes.
    pub fn from_bytes(secret: [u8; BUS_KEY_LEN]) -> BusKey {
        // The key id lets a receiver pick the right key without trying each: a public
        // 32-bit value derived one-way from the key.
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"ledgerbus key id").extract(&secret);
        let mut id = [0u8; 4];
        prk.expand(&[KDF_LABEL], Len(4))
            .and_then(|okm| okm.fill(&mut id))
            .expect("4 bytes is a valid HKDF length");
        BusKey { secret, id: u32::from_le_bytes(id) }
    }

    /// A key from 64 hexadecimal digits.
    pub fn from_hex(hex: &str) -> Result<BusKey, BusKeyError> {
        let hex = hex.trim();
        if hex.len() != BUS_KEY_LEN * 2 {
            return Err(BusKeyError::Length { found: hex.len() });
        }
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BusKeyError::NotHex);
        }
        let mut secret = [0u8; BUS_KEY_LEN];
        for (byte, pair) in secret.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let digits = std::str::from_utf8(pair).map_err(|_| BusKeyError::NotHex)?;
            *byte = u8::from_str_radix(digits, 16).map_err(|_| BusKeyError::NotHex)?;
        }
        Ok(BusKey::from_bytes(secret))
    }

    /// The public id written in every datagram sealed with this key.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The secret that authenticates bulk replay clients (an HMAC challenge-response,
    /// like the gateway handshake): whoever may read the bus may read its history.
    /// Derived one-way, so it is never the bus key itself.
    pub fn replay_key(&self) -> ReplayKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"ledgerbus replay").extract(&self.secret);
        let mut key = [0u8; 32];
        prk.expand(&[KDF_LABEL], Len(32))
            .and_then(|okm| okm.fill(&mut key))
            .expect("32 bytes is a valid HKDF length");
        ReplayKey(key)
    }

    /// The key of a sequencer group's replication links (challenge-response and
    /// AES-256-GCM records, like bulk replay), derived apart from the replay key so
    /// that a replay credential does not let anyone speak Raft to a member.
    pub fn group_key(&self) -> ReplayKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"ledgerbus group").extract(&self.secret);
        let mut key = [0u8; 32];
        prk.expand(&[KDF_LABEL], Len(32))
            .and_then(|okm| okm.fill(&mut key))
            .expect("32 bytes is a valid HKDF length");
        ReplayKey(key)
    }
}

impl fmt::Debug for BusKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BusKey(id {:08x}, secret redacted)", self.id)
    }
}

/// Why a configured bus key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusKeyError {
    #[error("a bus key is 64 hexadecimal digits (32 bytes), found {found} characters")]
    Length { found: usize },
    #[error("a bus key is 64 hexadecimal digits; found a character that is not one")]
    NotHex,
    #[error("no bus key given")]
    Empty,
    #[error("at most {BUS_KEYS_MAX} bus keys may be configured at once (current, previous)")]
    TooMany,
}

/// The configured bus keys: the first seals, all open.
#[derive(Debug, Clone)]
pub struct BusKeys {
    keys: Vec<BusKey>,
}

impl BusKeys {
    /// Keys in order of preference; the first one seals.
    pub fn new(keys: Vec<BusKey>) -> Result<BusKeys, BusKeyError> {
        match keys.len() {
            0 => Err(BusKeyError::Empty),
            1..=BUS_KEYS_MAX => Ok(BusKeys { keys }),
            _ => Err(BusKeyError::TooMany),
        }
    }

    /// Comma-separated hexadecimal keys, the sealing key first.
    pub fn parse(list: &str) -> Result<BusKeys, BusKeyError> {
        let keys = list.split(',').filter(|k| !k.trim().is_empty()).map(BusKey::from_hex);
        BusKeys::new(keys.collect::<Result<_, _>>()?)
    }

    /// The key that seals.
    pub fn sealing(&self) -> &BusKey {
        &self.keys[0]
    }

    /// Every key that opens.
    pub fn all(&self) -> &[BusKey] {
        &self.keys
    }

    /// The replay credential a client presents (from the sealing key).
    pub fn replay_key(&self) -> ReplayKey {
        self.sealing().replay_key()
    }

    /// Every replay credential a server accepts (one per key, for rotation).
    pub fn replay_keys(&self) -> Vec<ReplayKey> {
        self.keys.iter().map(BusKey::replay_key).collect()
    }

    /// Every group link key a member accepts (one per key, for rotation); the first
    /// is the one it dials with.
    pub fn group_keys(&self) -> Vec<ReplayKey> {
        self.keys.iter().map(BusKey::group_key).collect()
    }
}

/// Whether the bus is sealed.
#[derive(Debug, Clone, Default)]
pub enum BusSecurity {
    /// Plain datagrams with a CRC: only for benchmarks on a trusted host.
    #[default]
    None,
    /// Every datagram sealed with AES-256-GCM under keys derived from these.
    Aead(Arc<BusKeys>),
}

impl BusSecurity {
    /// Bytes each datagram grows by.
    pub fn overhead(&self) -> usize {
        match self {
            BusSecurity::None => 0,
            BusSecurity::Aead(_) => SEAL_OVERHEAD,
        }
    }

    /// "none" or "aes-256-gcm", for logs and reports.
    pub fn name(&self) -> &'static str {
        match self {
            BusSecurity::None => "none",
            BusSecurity::Aead(_) => "aes-256-gcm",
        }
    }
}

/// Who sealed a datagram, as proven by its tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The sending node's id (0 for the sequencer, the receiver id for a receiver).
    pub sender_id: u32,
    /// The sending node's random instance (new at every start).
    pub instance: u64,
    /// The datagram's counter.
    pub counter: u64,
}

/// Why a datagram was not opened. Nothing was changed by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("datagram too short to be sealed")]
    Truncated,
    #[error("sealed with a key this node does not have")]
    UnknownKey,
    #[error("authentication tag does not verify")]
    BadTag,
    #[error("control datagram replayed (counter not above the last accepted)")]
    Replayed,
}

/// `ring`'s HKDF output length for a raw byte count.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// The AEAD key of one (bus key, session, sender, instance).
fn derive(key: &BusKey, session_id: u64, sender_id: u32, instance: u64) -> LessSafeKey {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &session_id.to_le_bytes()).extract(&key.secret);
    let sender = sender_id.to_le_bytes();
    let instance = instance.to_le_bytes();
    let info = [KDF_LABEL, &sender[..], &instance[..]];
    let okm = prk.expand(&info, &AES_256_GCM).expect("AES-256 key length is a valid HKDF length");
    LessSafeKey::new(UnboundKey::from(okm))
}

fn nonce(sender_id: u32, counter: u64) -> Nonce {
    let mut bytes = [0u8; aead::NONCE_LEN];
    bytes[..4].copy_from_slice(&sender_id.to_le_bytes());
    bytes[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// Seals the datagrams one node sends. One per node instance; see the module docs.
pub struct Sealer {
    keys: Arc<BusKeys>,
    sender_id: u32,
    instance: u64,
    /// Counter of the next datagram; never reused under one derived key.
    counter: u64,
    /// The derived key of the session last sealed for.
    current: Option<(u64, LessSafeKey)>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("key_id", &self.keys.sealing().id())
            .field("sender_id", &self.sender_id)
            .field("instance", &self.instance)
            .field("counter", &self.counter)
            .finish()
    }
}

impl Sealer {
    /// A sealer for node `sender_id`; `instance` must be random and new at every start.
    pub fn new(keys: Arc<BusKeys>, sender_id: u32, instance: u64) -> Sealer {
        Sealer { keys, sender_id, instance, counter: 0, current: None }
    }

    /// Encrypts the frames of the datagram `buf[..size]` in place and appends the
    /// trailer; returns the sealed size. `buf` must have [`SEAL_OVERHEAD`] bytes spare.
    ///
    /// # Panics
    /// If `size` is shorter than a packet header or `buf` has no room for the trailer
    /// (bugs in the caller, which builds the datagram).
    pub fn seal(&mut self, buf: &mut [u8], size: usize) -> usize {
        assert!(size >= PACKET_HEADER_SIZE && buf.len() >= size + SEAL_OVERHEAD, "no room to seal");
        let session_id =
            PacketHeader::ref_from_prefix(&buf[..size]).expect("checked length").0.session_id.get();
        if self.current.as_ref().is_none_or(|(session, _)| *session != session_id) {
            let key = derive(self.keys.sealing(), session_id, self.sender_id, self.instance);
            self.current = Some((session_id, key));
        }
        let counter = self.counter;
        self.counter += 1;
        let (datagram, rest) = buf.split_at_mut(size);
        let trailer = &mut rest[..TRAILER_SIZE];
        trailer[0..4].copy_from_slice(&self.keys.sealing().id().to_le_bytes());
        trailer[4..8].copy_from_slice(&self.sender_id.to_le_bytes());
        trailer[8..16].copy_from_slice(&self.instance.to_le_bytes());
        trailer[16..24].copy_from_slice(&counter.to_le_bytes());
        let (header, payload) = datagram.split_at_mut(PACKET_HEADER_SIZE);
        let mut aad = [0u8; PACKET_HEADER_SIZE + TRAILER_CLEAR];
        aad[..PACKET_HEADER_SIZE].copy_from_slice(header);
        aad[PACKET_HEADER_SIZE..].copy_from_slice(&trailer[..TRAILER_CLEAR]);
        let (_, key) = self.current.as_ref().expect("derived above");
        let tag = key
            .seal_in_place_separate_tag(nonce(self.sender_id, counter), Aad::from(&aad[..]), payload)
            .expect("a datagram is far below the AES-GCM length limit");
        trailer[TRAILER_CLEAR..].copy_from_slice(tag.as_ref());
        size + SEAL_OVERHEAD
    }
}

/// One node's sealing: its [`Sealer`] for what it sends, its [`Opener`] for what it
/// receives, and the buffer datagrams are opened into. `None` on a bus without security.
#[derive(Debug)]
pub struct NodeSeal {
    sealer: Sealer,
    opener: Opener,
    /// Where an incoming datagram is opened (as large as the largest datagram).
    scratch: Vec<u8>,
}

impl NodeSeal {
    /// Sealing for node `node_id` (random `instance`, new at every start), or `None`
    /// when `security` is off; datagrams are at most `datagram_size_max` bytes.
    pub fn new(
        security: &BusSecurity,
        node_id: u32,
        instance: u64,
        datagram_size_max: usize,
    ) -> Option<NodeSeal> {
        match security {
            BusSecurity::None => None,
            BusSecurity::Aead(keys) => Some(NodeSeal {
                sealer: Sealer::new(keys.clone(), node_id, instance),
                opener: Opener::new(keys.clone()),
                scratch: vec![0; datagram_size_max],
            }),
        }
    }

    /// [`Sealer::seal`].
    pub fn seal(&mut self, buf: &mut [u8], size: usize) -> usize {
        self.sealer.seal(buf, size)
    }

    /// Verifies and decrypts `bytes`; returns the plaintext datagram.
    pub fn open(&mut self, bytes: &[u8]) -> Result<&[u8], OpenError> {
        let (size, _origin) = self.opener.open(bytes, &mut self.scratch)?;
        Ok(&self.scratch[..size])
    }
}

/// One derived key an [`Opener`] knows, with the replay guard of its sender.
struct KnownSender {
    key_id: u32,
    session_id: u64,
    sender_id: u32,
    instance: u64,
    key: LessSafeKey,
    /// Highest counter of an accepted control datagram, if any.
    last_control: Option<u64>,
    /// For least-recently-used replacement.
    used_at: u64,
}

/// Opens and verifies the datagrams one node receives. See the module docs.
pub struct Opener {
    keys: Arc<BusKeys>,
    known: Vec<KnownSender>,
    uses: u64,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener").field("keys", &self.keys).field("known_senders", &self.known.len()).finish()
    }
}

impl Opener {
    /// An opener accepting every key of `keys`.
    pub fn new(keys: Arc<BusKeys>) -> Opener {
        Opener { keys, known: Vec::with_capacity(OPENER_CACHE_MAX), uses: 0 }
    }

    /// Verifies and decrypts `bytes` into `out` (which must be at least as long);
    /// returns the plaintext datagram's length (header and frames) and who sealed it.
    /// Nothing in `bytes` but the routing fields is read before the tag verifies.
    pub fn open(&mut self, bytes: &[u8], out: &mut [u8]) -> Result<(usize, Origin), OpenError> {
        let Some(size) = bytes.len().checked_sub(SEAL_OVERHEAD).filter(|&s| s >= PACKET_HEADER_SIZE) else {
            return Err(OpenError::Truncated);
        };
        if out.len() < bytes.len() {
            return Err(OpenError::Truncated);
        }
        let (datagram, trailer) = bytes.split_at(size);
        let word = |range: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b[..range.len()].copy_from_slice(&trailer[range]);
            u64::from_le_bytes(b)
        };
        let key_id = word(0..4) as u32;
        let origin = Origin { sender_id: word(4..8) as u32, instance: word(8..16), counter: word(16..24) };
        let (header, _) = PacketHeader::ref_from_prefix(datagram).map_err(|_| OpenError::Truncated)?;
        let session_id = header.session_id.get();
        let is_control = header.kind == PacketKind::Control.to_wire();

        let found = self.known.iter().position(|k| {
            k.key_id == key_id
                && k.session_id == session_id
                && k.sender_id == origin.sender_id
                && k.instance == origin.instance
        });
        if let (Some(index), true) = (found, is_control) {
            if self.known[index].last_control.is_some_and(|last| origin.counter <= last) {
                return Err(OpenError::Replayed);
            }
        }
        let mut aad = [0u8; PACKET_HEADER_SIZE + TRAILER_CLEAR];
        aad[..PACKET_HEADER_SIZE].copy_from_slice(&datagram[..PACKET_HEADER_SIZE]);
        aad[PACKET_HEADER_SIZE..].copy_from_slice(&trailer[..TRAILER_CLEAR]);
        let sealed_len = bytes.len() - PACKET_HEADER_SIZE - TRAILER_CLEAR;
        out[..PACKET_HEADER_SIZE].copy_from_slice(&datagram[..PACKET_HEADER_SIZE]);
        let body = &mut out[PACKET_HEADER_SIZE..PACKET_HEADER_SIZE + sealed_len];
        body[..size - PACKET_HEADER_SIZE].copy_from_slice(&datagram[PACKET_HEADER_SIZE..]);
        body[size - PACKET_HEADER_SIZE..].copy_from_slice(&trailer[TRAILER_CLEAR..]);
        let verify = |key: &LessSafeKey, body: &mut [u8]| {
            key.open_in_place(nonce(origin.sender_id, origin.counter), Aad::from(&aad[..]), body)
                .map(|_| ())
                .map_err(|_| OpenError::BadTag)
        };

        // Verified with the sender's known key, or with one derived for it, which is
        // remembered only once a datagram proved it.
        self.uses += 1;
        let index = match found {
            Some(index) => {
                verify(&self.known[index].key, body)?;
                index
            }
            None => {
                let bus_key =
                    self.keys.all().iter().find(|k| k.id() == key_id).ok_or(OpenError::UnknownKey)?;
                let key = derive(bus_key, session_id, origin.sender_id, origin.instance);
                verify(&key, body)?;
                self.remember(KnownSender {
                    key_id,
                    session_id,
                    sender_id: origin.sender_id,
                    instance: origin.instance,
                    key,
                    last_control: None,
                    used_at: 0,
                })
            }
        };
        let known = &mut self.known[index];
        known.used_at = self.uses;
        if is_control {
            known.last_control = Some(origin.counter);
        }
        Ok((size, origin))
    }

    fn remember(&mut self, sender: KnownSender) -> usize {
        if self.known.len() < OPENER_CACHE_MAX {
            self.known.push(sender);
            return self.known.len() - 1;
        }
        let oldest = (0..self.known.len()).min_by_key(|&i| self.known[i].used_at).expect("cache is full");
        self.known[oldest] = sender;
        oldest
    }
}

#[cfg(test)]
mod tests;
