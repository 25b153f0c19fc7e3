//! The sender's retransmit ring: the last `capacity` datagrams, exactly as sent.
//!
//! Datagrams are built in place in the ring (the open datagram is the slot after the
//! newest), so publishing copies each event once and a retransmission re-sends the
//! original bytes with no re-encoding. All memory is allocated at construction.

use std::net::SocketAddr;

use crate::MonoTime;

/// Bookkeeping of one slot.
#[derive(Debug, Clone, Copy, Default)]
pub struct SlotMeta {
    /// Sequence of the first event in the datagram.
    pub first_sequence: u64,
    /// Events in the datagram.
    pub count: u32,
    /// Datagram size in bytes.
    pub size: u32,
    /// When it was last retransmitted, for linger de-duplication.
    pub retransmitted_at: Option<MonoTime>,
    /// Who asked for that retransmission (unicast mode answers each requester once).
    pub retransmitted_to: Option<SocketAddr>,
}

impl SlotMeta {
    /// One past the last sequence in the datagram.
    #[inline]
    pub fn end_sequence(&self) -> u64 {
        self.first_sequence + u64::from(self.count)
    }
}

/// A fixed-capacity ring of datagrams in sequence order.
#[derive(Debug)]
pub struct Ring {
    /// `capacity * slot_size` bytes.
    bytes: Vec<u8>,
    meta: Vec<SlotMeta>,
    slot_size: usize,
    /// Physical index of the oldest committed slot.
    head: usize,
    /// Committed slots.
    len: usize,
}

impl Ring {
    /// A ring of `capacity` slots of `slot_size` bytes.
    pub fn new(capacity: usize, slot_size: usize) -> Ring {
        assert!(capacity >= 2, "ring needs room for an open and a committed datagram");
        Ring {
            bytes: vec![0; capacity * slot_size],
            meta: vec![SlotMeta::default(); capacity],
            slot_size,
            head: 0,
            len: 0,
        }
    }

    /// Number of committed datagrams.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no datagram is committed.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slot count.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.meta.len()
    }

    #[inline]
    fn physical(&self, logical: usize) -> usize {
        debug_assert!(logical <= self.capacity());
        (self.head + logical) % self.capacity()
    }

    /// Whether the slot for the next datagram is free without evicting.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.len == self.capacity()
    }

    /// Evicts the oldest datagram. The caller makes sure it was sent first.
    pub fn evict_oldest(&mut self) {
        assert!(self.len > 0);
        self.head = (self.head + 1) % self.capacity();
        self.len -= 1;
    }

    /// The buffer of the next (open) datagram. The ring must not be full.
    #[inline]
    pub fn open_slot(&mut self) -> &mut [u8] {
        assert!(!self.is_full(), "open slot requested on a full ring");
        let index = self.physical(self.len);
        &mut self.bytes[index * self.slot_size..(index + 1) * self.slot_size]
    }

    /// Commits the open slot as a datagram of `size` bytes.
    pub fn commit(&mut self, first_sequence: u64, count: u32, size: usize) {
        assert!(!self.is_full());
        assert!(size <= self.slot_size);
        if let Some(newest) = self.get(self.len.wrapping_sub(1)) {
            assert_eq!(newest.end_sequence(), first_sequence, "datagrams must be contiguous");
        }
        let index = self.physical(self.len);
        self.meta[index] = SlotMeta {
            first_sequence,
            count,
            size: size as u32,
            retransmitted_at: None,
            retransmitted_to: None,
        };
        self.len += 1;
    }

    /// Metadata of the committed datagram at logical position `logical` (0 = oldest).
    #[inline]
    pub fn get(&self, logical: usize) -> Option<&SlotMeta> {
        (logical < self.len).then(|| &self.meta[self.physical(logical)])
    }

    /// Mutable metadata at logical position `logical`.
    #[inline]
    pub fn get_mut(&mut self, logical: usize) -> Option<&mut SlotMeta> {
        if logical < self.len {
            let index = self.physical(logical);
            Some(&mut self.meta[index])
        } else {
            None
        }
    }

    /// Bytes of the committed datagram at logical position `logical`.
    #[inline]
    pub fn datagram(&self, logical: usize) -> Option<&[u8]> {
        let meta = self.get(logical)?;
        let index = self.physical(logical);
        let start = index * self.slot_size;
        Some(&self.bytes[start..start + meta.size as usize])
    }

    /// The oldest sequence still held, or `None` when empty.
    #[inline]
    pub fn oldest_sequence(&self) -> Option<u64> {
        self.get(0).map(|m| m.first_sequence)
    }

    /// Logical position of the datagram holding `sequence`, by binary search.
    pub fn find(&self, sequence: u64) -> Option<usize> {
        let (mut low, mut high) = (0, self.len);
        while low < high {
            let mid = low + (high - low) / 2;
            let meta = &self.meta[self.physical(mid)];
            if sequence < meta.first_sequence {
                high = mid;
            } else if sequence >= meta.end_sequence() {
                low = mid + 1;
            } else {
                return Some(mid);
            }
        }
        None
    }
}
