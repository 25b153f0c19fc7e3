//! The Raft log of a group member, kept where the events already are.
//!
//! A Raft entry is one group commit: its data is the batch's event frames, back to
//! back. The journal holds those frames (it stays the single source of truth); beside
//! it a [`Disk`] keeps only each entry's metadata ([`EntryMeta`]: term, first sequence,
//! event count) and the Raft hard state (term, vote, commit). [`LogStore`] implements
//! raft-rs's `Storage` over that, with a bounded cache of recent entries so that
//! replicating to followers that keep up never reads the disk.
//!
//! Entries are never compacted: the journal is kept whole (consumers replay from it),
//! so a member that fell behind, or lost its disk, catches up from the log itself and
//! no Raft snapshot is ever needed.

use std::collections::VecDeque;
use std::io;

use ledgerbus_codec::Frames;

use super::invalid;
use ledgerbus_log::journal::event_sequence;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

/// What the member keeps of one entry besides its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    /// The Raft term that created the entry.
    pub term: u64,
    /// Sequence of its first event (for an empty entry, of the next event).
    pub first_sequence: u64,
    /// Events in it (0 for the empty entry a new leader appends).
    pub count: u32,
}

impl EntryMeta {
    /// One past the entry's last event.
    pub fn end_sequence(&self) -> u64 {
        self.first_sequence + u64::from(self.count)
    }
}

/// A member's durable state: the journal, the entries' metadata and the hard state.
/// The simulator's is in memory and can lose what was not synced; the process's is
/// the journal directory.
pub trait Disk {
    /// Appends one entry: its event frames (`frames`, possibly none) and metadata.
    /// Durable only after [`Disk::sync`].
    fn append(&mut self, index: u64, meta: &EntryMeta, frames: &[u8]) -> io::Result<()>;
    /// Makes every append durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Removes entries from `index` on and events from `next_sequence` on, durably.
    fn truncate(&mut self, index: u64, next_sequence: u64) -> io::Result<()>;
    /// Stores the hard state durably.
    fn save_hard_state(&mut self, state: &HardState) -> io::Result<()>;
    /// Passes the frames of events `from..from + count` to `each`, in order, in one
    /// pass over the disk (a long range costs one read, not one per event).
    fn read_events(
        &self,
        from: u64,
        count: u64,
        each: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()>;
}

/// What a [`Disk`] held when it was opened.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The last saved hard state (all zero on a new disk).
    pub hard_state: HardState,
    /// Entry metadata from index 1, in order.
    pub entries: Vec<EntryMeta>,
}

/// Commits learnt between two saves of the hard state when only the commit index
/// moved: it is not needed for safety (a restarted member learns it again from the
/// leader), only to bound what a restart re-reads.
const COMMIT_SAVE_INTERVAL: u64 = 1_024;

/// The largest event frame, for estimating what a range of entries weighs.
const EVENT_FRAME_MAX: usize =
    <ledgerbus_codec::messages::TransferEvent as ledgerbus_codec::Message>::FRAME_SIZE;

/// Bytes of recent entries kept in memory for replication.
const CACHE_BYTES_MAX: usize = 64 << 20;

/// The Raft log over a [`Disk`].
pub struct LogStore<D> {
    disk: D,
    hard_state: HardState,
    saved_commit: u64,
    conf_state: ConfState,
    /// `entries[i]` is entry `i + 1`.
    entries: Vec<EntryMeta>,
    /// The most recent entries with their data, contiguous up to the last one.
    cache: VecDeque<Entry>,
    cache_bytes: usize,
}

impl<D: Disk> LogStore<D> {
    /// The log `disk` holds, in a group whose voters are `voters`.
    pub fn new(disk: D, loaded: Loaded, voters: &[u64]) -> LogStore<D> {
        let mut hard_state = loaded.hard_state;
        // A commit index saved ahead of the entries that reached the disk (it is
        // learnt before the entries are synced) is only knowledge lost: lower it.
        let last = loaded.entries.len() as u64;
        if hard_state.commit > last {
            hard_state.commit = last;
        }
        let conf_state = ConfState { voters: voters.to_vec(), ..Default::default() };
        LogStore {
            disk,
            saved_commit: hard_state.commit,
            hard_state,
            conf_state,
            entries: loaded.entries,
            cache: VecDeque::new(),
            cache_bytes: 0,
        }
    }

    /// The disk.
    pub fn disk(&self) -> &D {
        &self.disk
    }

    /// The disk, mutable.
    pub fn disk_mut(&mut self) -> &mut D {
        &mut self.disk
    }

    /// The last entry's index (0 when empty).
    pub fn last(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Metadata of entry `index`.
    pub fn meta(&self, index: u64) -> Option<&EntryMeta> {
        index.checked_sub(1).and_then(|i| self.entries.get(i as usize))
    }

    /// The sequence the next event appended to the log gets.
    pub fn next_sequence(&self) -> u64 {
        self.entries.last().map_or(1, EntryMeta::end_sequence)
    }

    /// The hard state as last set.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Appends (or overwrites from their first index on) `entries`, durably. Returns the
    /// first sequence removed when a conflicting suffix was cut off.
    pub fn append(&mut self, entries: &[Entry]) -> io::Result<Option<u64>> {
        let Some(first) = entries.first() else { return Ok(None) };
        let start = first.index;
        assert!(start >= 1 && start <= self.last() + 1, "entries appended with a gap");
        let mut truncated = None;
        if start <= self.last() {
            let from = self.entries[start as usize - 1].first_sequence;
            self.disk.truncate(start, from)?;
            self.entries.truncate(start as usize - 1);
            while self.cache.back().is_some_and(|e| e.index >= start) {
                let dropped = self.cache.pop_back().expect("checked");
                self.cache_bytes -= dropped.data.len();
            }
            truncated = Some(from);
        }
        for entry in entries {
            let meta = self.check(entry)?;
            self.disk.append(entry.index, &meta, &entry.data)?;
            self.entries.push(meta);
            self.cache_bytes += entry.data.len();
            self.cache.push_back(entry.clone());
        }
        self.disk.sync()?;
        while self.cache_bytes > CACHE_BYTES_MAX && self.cache.len() > 1 {
            let dropped = self.cache.pop_front().expect("not empty");
            self.cache_bytes -= dropped.data.len();
        }
        Ok(truncated)
    }

    /// An entry's metadata, after checking that its data is whole event frames
    /// continuing the log's sequence (a peer is authenticated, but a bug there must
    /// not become corruption here).
    fn check(&self, entry: &Entry) -> io::Result<EntryMeta> {
        assert_eq!(entry.index, self.last() + 1, "entries appended in order");
        let first_sequence = self.next_sequence();
        let mut count = 0u32;
        for frame in Frames::new(&entry.data) {
            let frame = frame.map_err(|e| invalid(format!("entry {}: {e}", entry.index)))?;
            if event_sequence(frame) != Some(first_sequence + u64::from(count)) {
                return Err(invalid(format!(
                    "entry {} holds event {:?} where {} belongs",
                    entry.index,
                    event_sequence(frame),
                    first_sequence + u64::from(count)
                )));
            }
            count += 1;
        }
        Ok(EntryMeta { term: entry.term, first_sequence, count })
    }

    /// Records the hard state: durably at once when the term or vote changed (Raft's
    /// safety rests on them), the commit index only now and then.
    pub fn set_hard_state(&mut self, state: &HardState) -> io::Result<()> {
        let vote_changed = state.term != self.hard_state.term || state.vote != self.hard_state.vote;
        self.hard_state = state.clone();
        if vote_changed || state.commit >= self.saved_commit + COMMIT_SAVE_INTERVAL {
            self.disk.save_hard_state(&self.hard_state)?;
            self.saved_commit = state.commit;
        }
        Ok(())
    }

    /// Records a new commit index (from a light ready).
    pub fn set_commit(&mut self, commit: u64) -> io::Result<()> {
        let mut state = self.hard_state.clone();
        state.commit = commit;
        self.set_hard_state(&state)
    }

    /// Entries `low..high` that are older than the cache, read from the disk in one
    /// pass, into `out`.
    fn read_entries(&self, low: u64, high: u64, out: &mut Vec<Entry>) -> raft::Result<()> {
        let metas = &self.entries[low as usize - 1..high as usize - 1];
        let Some(first) = metas.first() else { return Ok(()) };
        let count: u64 = metas.iter().map(|m| u64::from(m.count)).sum();
        let mut frames = Vec::new();
        let mut ends = Vec::with_capacity(count as usize);
        self.disk
            .read_events(first.first_sequence, count, &mut |frame| {
                frames.extend_from_slice(frame);
                ends.push(frames.len());
                Ok(())
            })
            .map_err(|e| raft::Error::Store(StorageError::Other(Box::new(e))))?;
        let mut start = 0;
        let mut taken = 0;
        for (index, meta) in (low..high).zip(metas) {
            taken += meta.count as usize;
            let end = taken.checked_sub(1).map_or(0, |last| ends[last]);
            let data = frames[start..end].to_vec();
            start = end;
            out.push(Entry { index, term: meta.term, data: data.into(), ..Default::default() });
        }
        Ok(())
    }
}

impl<D: Disk> raft::Storage for LogStore<D> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState { hard_state: self.hard_state.clone(), conf_state: self.conf_state.clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < 1 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into();
        // Older entries than the cache holds come from the disk, in one read of no
        // more than `max_size` allows (estimated from the event counts, generously).
        let cached_from = self.cache.front().map_or(high, |front| front.index).clamp(low, high);
        let mut disk_high = low;
        let mut estimate = 0u64;
        while disk_high < cached_from && max_size.is_none_or(|max| estimate <= max) {
            estimate += u64::from(self.entries[disk_high as usize - 1].count) * EVENT_FRAME_MAX as u64 + 16;
            disk_high += 1;
        }
        let mut entries = Vec::with_capacity((high - low) as usize);
        self.read_entries(low, disk_high, &mut entries)?;
        if let (Some(front), true) = (self.cache.front(), disk_high == cached_from && cached_from < high) {
            let skip = (cached_from - front.index) as usize;
            entries.extend(self.cache.iter().skip(skip).take((high - cached_from) as usize).cloned());
        }
        // At least one entry, then no more than `max_size` bytes.
        let mut size = 0u64;
        let keep = entries
            .iter()
            .position(|entry| {
                size += entry.data.len() as u64 + 16;
                max_size.is_some_and(|max| size > max)
            })
            .map_or(entries.len(), |over| over + 1);
        entries.truncate(keep);
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == 0 {
            return Ok(0);
        }
        self.meta(index).map(|m| m.term).ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Never compacted, so never asked for; say "not now" rather than invent one.
        Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
    }
}
