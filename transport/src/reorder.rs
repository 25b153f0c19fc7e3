//! Datagrams that arrived ahead of a gap, held until the gap is repaired.
//!
//! Whole datagrams are kept (not events): they were already CRC-checked, and a
//! repaired gap then drains them with one copy-free pass over their frames. Ranges
//! may overlap (a retransmission served from the journal can be grouped differently
//! from the original), so draining skips whatever was already delivered. All memory
//! is allocated at construction; a full buffer drops the datagram, which the
//! receiver will NAK again later.

use std::collections::VecDeque;

use crate::MonoTime;

/// One buffered datagram.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// First sequence in the datagram.
    pub first_sequence: u64,
    /// One past its last sequence.
    pub end_sequence: u64,
    /// When it arrived: the moment the gap before it was (at the latest) noticed.
    pub arrived_at: MonoTime,
    slot: u16,
    size: u32,
}

/// What `insert` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// Held for later.
    Stored,
    /// An entry already covers the whole range.
    Duplicate,
    /// No free slot: dropped.
    Full,
}

/// A bounded, sequence-ordered buffer of datagrams.
#[derive(Debug)]
pub struct ReorderBuffer {
    bytes: Vec<u8>,
    slot_size: usize,
    free: Vec<u16>,
    /// Sorted by `first_sequence`.
    entries: VecDeque<Entry>,
}

impl ReorderBuffer {
    /// Room for `capacity` datagrams of up to `slot_size` bytes.
    pub fn new(capacity: usize, slot_size: usize) -> ReorderBuffer {
        assert!(capacity > 0 && capacity <= usize::from(u16::MAX));
        ReorderBuffer {
            bytes: vec![0; capacity * slot_size],
            slot_size,
            free: (0..capacity as u16).rev().collect(),
            entries: VecDeque::with_capacity(capacity),
        }
    }

    /// Datagrams held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Holds `datagram`, which carries sequences `first..end`.
    pub fn insert(&mut self, first: u64, end: u64, datagram: &[u8], now: MonoTime) -> Insert {
        assert!(first < end);
        assert!(datagram.len() <= self.slot_size);
        let index = self.entries.partition_point(|e| e.first_sequence < first);
        let covered = |e: &Entry| e.first_sequence <= first && end <= e.end_sequence;
        if self.entries.get(index).is_some_and(covered)
            || index.checked_sub(1).and_then(|i| self.entries.get(i)).is_some_and(covered)
        {
            return Insert::Duplicate;
        }
        let Some(slot) = self.free.pop() else { return Insert::Full };
        let start = usize::from(slot) * self.slot_size;
        self.bytes[start..start + datagram.len()].copy_from_slice(datagram);
        let entry = Entry {
            first_sequence: first,
            end_sequence: end,
            arrived_at: now,
            slot,
            size: datagram.len() as u32,
        };
        self.entries.insert(index, entry);
        self.invariants();
        Insert::Stored
    }

    /// The oldest entry if it starts at or before `next_expected`, i.e. can be used now.
    pub fn first_ready(&self, next_expected: u64) -> Option<Entry> {
        self.entries.front().filter(|e| e.first_sequence <= next_expected).copied()
    }

    /// Bytes of an entry returned by `first_ready`.
    pub fn datagram(&self, entry: &Entry) -> &[u8] {
        let start = usize::from(entry.slot) * self.slot_size;
        &self.bytes[start..start + entry.size as usize]
    }

    /// Removes the oldest entry (after `first_ready` returned it).
    pub fn pop_front(&mut self) {
        let entry = self.entries.pop_front().expect("pop_front on an empty reorder buffer");
        self.free.push(entry.slot);
        self.invariants();
    }

    /// Drops every entry.
    pub fn clear(&mut self) {
        while !self.entries.is_empty() {
            self.pop_front();
        }
    }

    /// Calls `hole(from, end)` for each missing range between `next_expected` and
    /// `known_end` (exclusive), in order, up to `holes_max` ranges.
    pub fn holes(
        &self,
        next_expected: u64,
        known_end: u64,
        holes_max: usize,
        mut hole: impl FnMut(u64, u64),
    ) {
        let mut covered_to = next_expected;
        let mut found = 0;
        for entry in &self.entries {
            if found == holes_max {
                return;
            }
            if entry.first_sequence > covered_to {
                hole(covered_to, entry.first_sequence);
                found += 1;
            }
            covered_to = covered_to.max(entry.end_sequence);
        }
        if found < holes_max && known_end > covered_to {
            hole(covered_to, known_end);
        }
    }

    fn invariants(&self) {
        assert_eq!(self.entries.len() + self.free.len(), self.bytes.len() / self.slot_size);
    }
}
