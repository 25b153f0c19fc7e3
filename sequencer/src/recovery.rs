//! Restart recovery: the journal is read, checked and applied on this thread while
//! the transfer-id index (random writes into a large table, the costliest part) is
//! rebuilt on a second thread from the ids this one hands over in batches. The two
//! halves of replay overlap instead of adding up.
//!
//! The journal was decided by this sequencer and every record is CRC-checked and in
//! sequence, so balances are posted without re-deciding; an id that turns up twice
//! is still detected (by the index builder) and refuses the start-up.

use std::path::Path;
use std::sync::mpsc::sync_channel;

use ledgerbus_ledger::Replica;

use ledgerbus_log::journal::{Durability, JournalError, JournalWriter, Recovered};

/// Frames applied per batch; ids are handed to the builder in batches of this size too.
const BATCH_EVENTS: usize = 1_024;

/// Opens the journal in `dir` and brings `replica` to its end.
pub fn recover(
    dir: &Path,
    durability: Durability,
    segment_size_max: u64,
    new_session: u64,
    replica: &mut Replica,
) -> Result<(JournalWriter, Recovered), JournalError> {
    recover_until(dir, durability, segment_size_max, new_session, replica, u64::MAX)
}

/// Opens the journal in `dir` (checking all of it) and applies its events before
/// sequence `apply_until` to `replica`: a group member applies only what it knows
/// is committed, so that a suffix the leader cuts off was never applied.
pub fn recover_until(
    dir: &Path,
    durability: Durability,
    segment_size_max: u64,
    new_session: u64,
    replica: &mut Replica,
    apply_until: u64,
) -> Result<(JournalWriter, Recovered), JournalError> {
    let mut index = replica.ledger_mut().take_transfer_index();
    let (ids_tx, ids_rx) = sync_channel::<Vec<(u128, u64)>>(16);
    let builder = std::thread::Builder::new()
        .name("recover-index".into())
        .spawn(move || {
            let mut duplicate = None;
            while let Ok(batch) = ids_rx.recv() {
                if duplicate.is_none() {
                    duplicate = index.insert_new_batch(&batch).err();
                }
            }
            (index, duplicate)
        })
        .map_err(|e| JournalError::Io { path: dir.to_path_buf(), source: e })?;

    let mut pending = Vec::with_capacity(BATCH_EVENTS * 96);
    let mut pending_count = 0;
    let mut ids = Vec::with_capacity(BATCH_EVENTS);
    // The journal hands frames over in sequence order (it checks that), so only the
    // first one's sequence is read; the others are counted.
    let mut next_sequence = None;
    let opened = JournalWriter::open(dir, durability, segment_size_max, new_session, |frame| {
        let sequence =
            *next_sequence.get_or_insert_with(|| ledgerbus_log::journal::event_sequence(frame).unwrap_or(1));
        next_sequence = Some(sequence + 1);
        if sequence >= apply_until {
            return Ok(());
        }
        pending.extend_from_slice(frame);
        pending_count += 1;
        if pending_count < BATCH_EVENTS {
            return Ok(());
        }
        pending_count = 0;
        let applied = replica.recover_batch(&pending, &mut ids).map_err(|e| e.to_string());
        pending.clear();
        if ids.len() >= BATCH_EVENTS {
            let full = std::mem::replace(&mut ids, Vec::with_capacity(BATCH_EVENTS));
            ids_tx.send(full).map_err(|_| "transfer index builder stopped".to_string())?;
        }
        applied
    });
    let tail = replica.recover_batch(&pending, &mut ids).map_err(|e| e.to_string());
    let _ = ids_tx.send(ids);
    drop(ids_tx);
    let (index, duplicate) = builder.join().map_err(|_| JournalError::Corrupt {
        path: dir.to_path_buf(),
        offset: 0,
        reason: "the transfer index builder panicked".into(),
    })?;
    replica.ledger_mut().put_transfer_index(index);
    let opened = opened?;
    tail.map_err(|reason| JournalError::Corrupt { path: dir.to_path_buf(), offset: 0, reason })?;
    if let Some(id) = duplicate {
        return Err(JournalError::Corrupt {
            path: dir.to_path_buf(),
            offset: 0,
            reason: format!("transfer {id} was applied twice in the journal"),
        });
    }
    Ok(opened)
}
