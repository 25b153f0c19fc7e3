//! A member's [`Disk`] in its data directory: the journal segments (the events,
//! exactly as a single sequencer writes them), `raft-entries` (32 bytes per entry:
//! index, term, first sequence, event count, CRC) and `raft-state` (term, vote and
//! commit index, replaced atomically).
//!
//! A batch is written journal first, then its entry records, and both are synced
//! before the member acknowledges it. A crash between the two leaves one ahead of the
//! other; opening cuts the longer back to the shorter (what is cut was never
//! acknowledged), so the journal and the entries always describe the same log.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use ledgerbus_codec::Frames;
use ledgerbus_ledger::Replica;
use ledgerbus_log::journal::{self, Durability, JournalError, JournalReader, JournalWriter, Recovered};
use raft::eraftpb::HardState;

use super::store::{Disk, EntryMeta, Loaded};

const ENTRIES_FILE: &str = "raft-entries";
const STATE_FILE: &str = "raft-state";
const ENTRY_RECORD_SIZE: usize = 32;
const STATE_SIZE: usize = 24;

/// The journal directory of a group member.
pub struct JournalDisk {
    dir: PathBuf,
    journal: JournalWriter,
    entries: File,
    /// Entry records appended since the last sync.
    pending: Vec<u8>,
    durability: Durability,
}

fn corrupt(path: &Path, offset: u64, reason: String) -> JournalError {
    JournalError::Corrupt { path: path.to_path_buf(), offset, reason }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.to_path_buf(), source }
}

impl JournalDisk {
    /// Opens (or creates) the member's log in `dir` and applies to `replica` what the
    /// saved commit index says is committed (the rest is applied when it commits).
    /// `session` is the group's log session; a directory holding another log is refused.
    pub fn open(
        dir: &Path,
        durability: Durability,
        segment_size_max: u64,
        session: u64,
        replica: &mut Replica,
    ) -> Result<(JournalDisk, Loaded, Recovered), JournalError> {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let entries_path = dir.join(ENTRIES_FILE);
        let mut entries = read_entries(&entries_path)?;
        let end = entries.last().map_or(1, EntryMeta::end_sequence);
        // Events journaled after the last entry record were never acknowledged.
        journal::truncate_dir(dir, end)?;
        let hard_state = read_state(&dir.join(STATE_FILE))?;
        // Only what is known committed is applied: the rest may still be cut off by
        // a leader, and is applied when Raft commits it.
        let commit = (hard_state.commit as usize).min(entries.len());
        let committed_end = commit.checked_sub(1).map_or(1, |i| entries[i].end_sequence());
        let (mut writer, mut recovered) = crate::recovery::recover_until(
            dir,
            durability,
            segment_size_max,
            session,
            replica,
            committed_end,
        )?;
        if recovered.session_id != session {
            return Err(corrupt(
                dir,
                0,
                format!(
                    "this directory holds the log of session {:#018x}, not this group's ({session:#018x}); \
                     a member needs an empty directory or its own",
                    recovered.session_id
                ),
            ));
        }
        if recovered.next_sequence < committed_end {
            return Err(corrupt(
                dir,
                0,
                format!(
                    "the journal ends at sequence {}, before the committed point {committed_end}: this \
                     member lost events it acknowledged (a power loss with --durability os?); empty its \
                     directory and it rejoins from the others",
                    recovered.next_sequence
                ),
            ));
        }
        // Entry records ahead of the journal (its tail was torn) were never acknowledged
        // either; nor were the events of an entry cut in the middle.
        let kept = entries.iter().take_while(|e| e.end_sequence() <= recovered.next_sequence).count();
        entries.truncate(kept);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&entries_path)
            .map_err(io_error(&entries_path))?;
        file.set_len((kept * ENTRY_RECORD_SIZE) as u64).map_err(io_error(&entries_path))?;
        file.sync_all().map_err(io_error(&entries_path))?;
        let last_end = entries.last().map_or(1, EntryMeta::end_sequence);
        if last_end < recovered.next_sequence {
            writer.truncate(last_end)?;
            recovered.next_sequence = last_end;
        }
        let disk = JournalDisk {
            dir: dir.to_path_buf(),
            journal: writer,
            entries: file,
            pending: Vec::new(),
            durability,
        };
        Ok((disk, Loaded { hard_state, entries }, recovered))
    }
}

/// Reads the entry records, cutting a torn tail.
fn read_entries(path: &Path) -> Result<Vec<EntryMeta>, JournalError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut file) => {
            file.read_to_end(&mut bytes).map_err(io_error(path))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(path)(e)),
    }
    let mut entries = Vec::with_capacity(bytes.len() / ENTRY_RECORD_SIZE);
    for (position, record) in bytes.chunks(ENTRY_RECORD_SIZE).enumerate() {
        let offset = (position * ENTRY_RECORD_SIZE) as u64;
        if record.len() < ENTRY_RECORD_SIZE
            || crc32fast::hash(&record[..28]) != u32::from_le_bytes(record[28..32].try_into().expect("4"))
        {
            tracing::warn!(file = %path.display(), offset, "raft entry records have a torn tail; cutting it");
            break;
        }
        let word = |range: std::ops::Range<usize>| u64::from_le_bytes(record[range].try_into().expect("8"));
        let index = word(0..8);
        let meta = EntryMeta {
            term: word(8..16),
            first_sequence: word(16..24),
            count: u32::from_le_bytes(record[24..28].try_into().expect("4")),
        };
        let expected = entries.last().map_or(1, EntryMeta::end_sequence);
        if index != position as u64 + 1 || meta.first_sequence != expected {
            return Err(corrupt(
                path,
                offset,
                format!("entry {index} at sequence {} out of order", meta.first_sequence),
            ));
        }
        entries.push(meta);
    }
    Ok(entries)
}

fn read_state(path: &Path) -> Result<HardState, JournalError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HardState::default()),
        Err(e) => return Err(io_error(path)(e)),
    };
    if bytes.len() != STATE_SIZE + 4
        || crc32fast::hash(&bytes[..STATE_SIZE])
            != u32::from_le_bytes(bytes[STATE_SIZE..].try_into().expect("4"))
    {
        return Err(corrupt(path, 0, "raft state does not check out".into()));
    }
    let word = |range: std::ops::Range<usize>| u64::from_le_bytes(bytes[range].try_into().expect("8"));
    Ok(HardState { term: word(0..8), vote: word(8..16), commit: word(16..24), ..Default::default() })
}

impl Disk for JournalDisk {
    fn append(&mut self, index: u64, meta: &EntryMeta, frames: &[u8]) -> io::Result<()> {
        for frame in Frames::new(frames) {
            self.journal
                .append(frame.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?);
        }
        let mut record = [0u8; ENTRY_RECORD_SIZE];
        record[0..8].copy_from_slice(&index.to_le_bytes());
        record[8..16].copy_from_slice(&meta.term.to_le_bytes());
        record[16..24].copy_from_slice(&meta.first_sequence.to_le_bytes());
        record[24..28].copy_from_slice(&meta.count.to_le_bytes());
        let crc = crc32fast::hash(&record[..28]);
        record[28..32].copy_from_slice(&crc.to_le_bytes());
        self.pending.extend_from_slice(&record);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let _durable = self.journal.commit().map_err(io::Error::other)?;
        if !self.pending.is_empty() {
            self.entries.write_all(&self.pending)?;
            self.pending.clear();
            if self.durability == Durability::Fsync {
                self.entries.sync_data()?;
            }
        }
        Ok(())
    }

    fn truncate(&mut self, index: u64, next_sequence: u64) -> io::Result<()> {
        assert!(self.pending.is_empty(), "truncate between syncs");
        self.journal.truncate(next_sequence).map_err(io::Error::other)?;
        self.entries.set_len((index - 1) * ENTRY_RECORD_SIZE as u64)?;
        self.entries.sync_all()
    }

    fn save_hard_state(&mut self, state: &HardState) -> io::Result<()> {
        let mut bytes = [0u8; STATE_SIZE + 4];
        bytes[0..8].copy_from_slice(&state.term.to_le_bytes());
        bytes[8..16].copy_from_slice(&state.vote.to_le_bytes());
        bytes[16..24].copy_from_slice(&state.commit.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..STATE_SIZE]);
        bytes[STATE_SIZE..].copy_from_slice(&crc.to_le_bytes());
        let temporary = self.dir.join(format!("{STATE_FILE}.tmp"));
        let mut file = File::create(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, self.dir.join(STATE_FILE))?;
        File::open(&self.dir)?.sync_all()
    }

    fn read_events(
        &self,
        from: u64,
        count: u64,
        each: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut reader = JournalReader::open(&self.dir, from).map_err(io::Error::other)?;
        let mut frame = Vec::with_capacity(128);
        for _ in 0..count {
            match reader.next_frame(&mut frame).map_err(io::Error::other)? {
                Some(_) => each(&frame)?,
                None => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "events not in the journal"))
                }
            }
        }
        Ok(())
    }
}
