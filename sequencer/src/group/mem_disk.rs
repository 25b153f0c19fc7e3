//! An in-memory [`Disk`] for the deterministic simulator: what was synced survives a
//! simulated crash, what was only appended is lost (or torn: a prefix of it stays,
//! as a crash in the middle of a write leaves it), and the whole disk can be wiped.

use std::io;

use ledgerbus_codec::Frames;
use raft::eraftpb::HardState;

use super::store::{Disk, EntryMeta, Loaded};

/// One member's simulated disk.
#[derive(Debug, Clone, Default)]
pub struct MemDisk {
    synced: Contents,
    /// What a crash now would lose (or tear).
    unsynced: Contents,
    /// When set, the next sync fails (a disk error, or the crash point a simulator
    /// chose): nothing of it becomes durable.
    pub fail_next_sync: bool,
}

#[derive(Debug, Clone, Default)]
struct Contents {
    hard_state: HardState,
    entries: Vec<(EntryMeta, Vec<u8>)>,
}

impl MemDisk {
    /// An empty disk.
    pub fn new() -> MemDisk {
        MemDisk::default()
    }

    /// What the member finds when it starts.
    pub fn load(&self) -> Loaded {
        Loaded {
            hard_state: self.synced.hard_state.clone(),
            entries: self.synced.entries.iter().map(|(meta, _)| *meta).collect(),
        }
    }

    /// A crash: appends not synced are lost, except the first `torn_entries` of them
    /// (a torn write that happened to reach the platter).
    pub fn crash(&mut self, torn_entries: usize) {
        let durable = self.synced.entries.len().min(self.unsynced.entries.len());
        let kept: Vec<_> = self.unsynced.entries[durable..].iter().take(torn_entries).cloned().collect();
        self.synced.entries.extend(kept);
        self.unsynced = self.synced.clone();
        self.fail_next_sync = false;
    }

    /// The disk is replaced by an empty one.
    pub fn wipe(&mut self) {
        *self = MemDisk::default();
    }

    /// Entries appended and not yet synced.
    pub fn unsynced_entries(&self) -> usize {
        self.unsynced.entries.len().saturating_sub(self.synced.entries.len())
    }

    /// Every durable event frame, in order.
    pub fn events(&self) -> impl Iterator<Item = &[u8]> {
        self.synced.entries.iter().flat_map(|(_, data)| Frames::new(data).map_while(Result::ok))
    }
}

impl Disk for MemDisk {
    fn append(&mut self, index: u64, meta: &EntryMeta, frames: &[u8]) -> io::Result<()> {
        assert_eq!(index, self.unsynced.entries.len() as u64 + 1, "appends are in order");
        self.unsynced.entries.push((*meta, frames.to_vec()));
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.fail_next_sync) {
            return Err(io::Error::other("simulated disk failure at sync"));
        }
        self.synced = self.unsynced.clone();
        Ok(())
    }

    fn truncate(&mut self, index: u64, _next_sequence: u64) -> io::Result<()> {
        self.unsynced.entries.truncate(index as usize - 1);
        self.synced.entries.truncate(index as usize - 1);
        Ok(())
    }

    fn save_hard_state(&mut self, state: &HardState) -> io::Result<()> {
        self.unsynced.hard_state = state.clone();
        self.synced.hard_state = state.clone();
        Ok(())
    }

    fn read_events(
        &self,
        from: u64,
        count: u64,
        each: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut taken = 0;
        for (meta, data) in &self.unsynced.entries {
            if meta.end_sequence() <= from || taken == count {
                continue;
            }
            for frame in Frames::new(data).map_while(Result::ok) {
                let sequence = ledgerbus_log::journal::event_sequence(frame).unwrap_or(0);
                if sequence >= from && taken < count {
                    each(frame)?;
                    taken += 1;
                }
            }
        }
        if taken < count {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "events not on the disk"));
        }
        Ok(())
    }
}
