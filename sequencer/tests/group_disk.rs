//! A group member's directory after crashes: the journal, the entry records and the
//! Raft hard state are read back; a torn entry record or a journal torn mid-entry is
//! cut back to the last whole entry (neither was ever acknowledged), only the
//! committed log is applied to the ledger, and a journal that lost committed events
//! refuses to start.

use std::fs::OpenOptions;
use std::path::Path;

use ledgerbus_codec::account_flags;
use ledgerbus_codec::messages::{CreateAccount, Transfer};
use ledgerbus_ledger::{Ledger, Replica};
use ledgerbus_sequencer::core::{PendingBatch, SequencerCore};
use ledgerbus_sequencer::group::journal_disk::JournalDisk;
use ledgerbus_sequencer::group::{Disk, EntryMeta, Loaded};
use ledgerbus_sequencer::Durability;
use raft::eraftpb::HardState;

const SESSION: u64 = 0x5e55;

fn replica() -> Replica {
    Replica::new(Ledger::with_capacity(16, 1_024))
}

fn open(dir: &Path) -> Result<(JournalDisk, Loaded, u64, Replica), String> {
    let mut replica = replica();
    let (disk, loaded, recovered) = JournalDisk::open(dir, Durability::Fsync, 1 << 20, SESSION, &mut replica)
        .map_err(|e| e.to_string())?;
    Ok((disk, loaded, recovered.next_sequence, replica))
}

/// Three batches decided as a leader would: two accounts, then five transfers, twice.
fn batches() -> Vec<Vec<u8>> {
    let mut core = SequencerCore::new(replica());
    let mut out = Vec::new();
    let mut batch = PendingBatch::with_capacity(8);
    for id in [1u128, 2] {
        let account = CreateAccount {
            correlation_id: 0.into(),
            id: id.into(),
            ledger: 1.into(),
            code: 1.into(),
            flags: account_flags::ALLOW_NEGATIVE.into(),
            ..Default::default()
        };
        core.decide_account(0, &account, 1, &mut batch);
    }
    out.push(batch.event_bytes().to_vec());
    for round in 0..2u128 {
        let mut batch = PendingBatch::with_capacity(8);
        for i in 0..5u128 {
            let transfer = Transfer {
                correlation_id: 0.into(),
                id: (100 + round * 10 + i).into(),
                debit_account_id: 1u128.into(),
                credit_account_id: 2u128.into(),
                amount: 3.into(),
                ledger: 1.into(),
                code: 1.into(),
                flags: 0.into(),
                ..Default::default()
            };
            core.decide_transfers(0, &[transfer], 2, &mut batch);
        }
        out.push(batch.event_bytes().to_vec());
    }
    out
}

/// Writes the batches as entries 1..=3 of term 1, entry 2 known committed.
fn write_log(dir: &Path) {
    let (mut disk, loaded, next, _) = open(dir).unwrap();
    assert!(loaded.entries.is_empty());
    assert_eq!(next, 1);
    let metas = [(1, 2), (3, 5), (8, 5)];
    for (index, (frames, (first, count))) in batches().iter().zip(metas).enumerate() {
        let meta = EntryMeta { term: 1, first_sequence: first, count };
        disk.append(index as u64 + 1, &meta, frames).unwrap();
        disk.sync().unwrap();
    }
    disk.save_hard_state(&HardState { term: 1, vote: 1, commit: 2, ..Default::default() }).unwrap();
}

#[test]
fn a_member_reopens_its_log_and_applies_only_what_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path());
    let (_, loaded, next, replica) = open(dir.path()).unwrap();
    assert_eq!(loaded.entries.len(), 3);
    assert_eq!((loaded.hard_state.term, loaded.hard_state.vote, loaded.hard_state.commit), (1, 1, 2));
    assert_eq!(next, 13, "the whole journal is kept");
    assert_eq!(replica.next_sequence(), 8, "only entries 1 and 2 (committed) are applied");
}

#[test]
fn a_torn_entry_record_cuts_the_journal_back_to_the_last_whole_entry() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path());
    let records = OpenOptions::new().write(true).open(dir.path().join("raft-entries")).unwrap();
    records.set_len(32 * 2 + 20).unwrap();
    let (_, loaded, next, _) = open(dir.path()).unwrap();
    assert_eq!(loaded.entries.len(), 2);
    assert_eq!(next, 8, "entry 3's events go with its record");
    // And it stays that way.
    let (_, loaded, next, _) = open(dir.path()).unwrap();
    assert_eq!((loaded.entries.len(), next), (2, 8));
}

#[test]
fn a_journal_torn_inside_an_uncommitted_entry_drops_that_entry() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path());
    ledgerbus_log::journal::truncate_dir(dir.path(), 11).unwrap();
    let (_, loaded, next, replica) = open(dir.path()).unwrap();
    assert_eq!(loaded.entries.len(), 2, "entry 3 lost events: it goes");
    assert_eq!(next, 8, "and so do its remaining events");
    assert_eq!(replica.next_sequence(), 8);
}

#[test]
fn a_journal_that_lost_committed_events_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path());
    ledgerbus_log::journal::truncate_dir(dir.path(), 5).unwrap();
    let error = open(dir.path()).err().expect("refused");
    assert!(error.contains("before the committed point"), "{error}");
}

#[test]
fn another_logs_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path());
    let mut replica = replica();
    let error = JournalDisk::open(dir.path(), Durability::Fsync, 1 << 20, SESSION + 1, &mut replica)
        .err()
        .expect("refused");
    assert!(error.to_string().contains("not this group's"), "{error}");
}
