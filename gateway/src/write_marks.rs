//! How far the read model must be before a read may be answered (read-your-writes),
//! per id rather than for everything: for each account or transfer id, the sequence
//! of the last command this gateway acknowledged that wrote it.
//!
//! Waiting for everything acknowledged (the simple rule) makes every read during a
//! write burst wait for the read model to catch up with the burst, even a read of an
//! account nobody touched. Here ids share a fixed table of slots by hash, and a slot
//! holds the highest sequence of its ids' writes, so a read waits *at least* until
//! its id's last acknowledged write is applied (never less: read-your-writes stays
//! exact), and for an id nobody wrote lately, not at all. A command whose accounts
//! the gateway cannot see (a post or void that leaves them to the pending transfer, a
//! command it cannot read) raises a floor that every id waits for.
//!
//! Fixed memory (a slot per 8 bytes), lock-free, one hash per id on the write path.

use std::sync::atomic::{AtomicU64, Ordering};

use ledgerbus_codec::messages::{CreateAccount, Transfer};
use ledgerbus_codec::{decode, transfer_flags, Message};

/// Slots in the table: 65,536 (512 KiB). With more ids than that written between a
/// write and its read, reads wait a little longer than they must, never shorter.
pub const SLOTS_LOG2: u32 = 16;

/// The last acknowledged write per id, by hash slot.
pub struct WriteMarks {
    slots: Box<[AtomicU64]>,
    /// Sequence every read waits for: writes whose ids are not known.
    floor: AtomicU64,
}

impl Default for WriteMarks {
    fn default() -> Self {
        WriteMarks::new()
    }
}

impl WriteMarks {
    /// An empty table: no read waits.
    pub fn new() -> WriteMarks {
        WriteMarks {
            slots: (0..1usize << SLOTS_LOG2).map(|_| AtomicU64::new(0)).collect(),
            floor: AtomicU64::new(0),
        }
    }

    fn slot(&self, id: u128) -> &AtomicU64 {
        // Fibonacci hashing of the folded id: sequential ids spread over the table.
        let folded = (id as u64) ^ ((id >> 64) as u64);
        let index = folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOTS_LOG2);
        &self.slots[index as usize]
    }

    fn mark(&self, id: u128, sequence: u64) {
        self.slot(id).fetch_max(sequence, Ordering::AcqRel);
    }

    /// Records that `command` (one command frame as sent to the sequencer) was
    /// acknowledged at `sequence`. Call before the acknowledgement reaches the client.
    pub fn record(&self, command: &[u8], sequence: u64) {
        if !self.try_record(command, sequence) {
            self.floor.fetch_max(sequence, Ordering::AcqRel);
        }
    }

    /// Marks what `command` wrote; `false` if some of it is not known.
    fn try_record(&self, command: &[u8], sequence: u64) -> bool {
        // The header's template id: bytes 2..4, little-endian.
        let Some(&[low, high]) = command.get(2..4) else { return false };
        let template = u16::from_le_bytes([low, high]);
        if template == CreateAccount::TEMPLATE_ID {
            let Ok((account, _)) = decode::<CreateAccount>(command) else { return false };
            self.mark(account.id.get(), sequence);
            return true;
        }
        if template != Transfer::TEMPLATE_ID {
            return false;
        }
        let Ok((transfer, _)) = decode::<Transfer>(command) else { return false };
        self.mark(transfer.id.get(), sequence);
        if transfer.flags.get() & (transfer_flags::POST_PENDING | transfer_flags::VOID_PENDING) != 0 {
            // The pending transfer's state changes too.
            self.mark(transfer.pending_id.get(), sequence);
        }
        let (debit, credit) = (transfer.debit_account_id.get(), transfer.credit_account_id.get());
        if debit == 0 || credit == 0 {
            // The accounts come from the pending transfer, which we do not hold.
            return false;
        }
        self.mark(debit, sequence);
        self.mark(credit, sequence);
        true
    }

    /// The sequencer started a new log, whose last sequence is `last`: positions of
    /// the old one mean nothing there; until the marks fill again, every read waits
    /// for `last`.
    pub fn start_over(&self, last: u64) {
        for slot in self.slots.iter() {
            slot.store(0, Ordering::Release);
        }
        self.floor.store(last, Ordering::Release);
    }

    /// The sequence a read of `id` (an account's or a transfer's) must see applied.
    pub fn read_after(&self, id: u128) -> u64 {
        self.slot(id).load(Ordering::Acquire).max(self.floor.load(Ordering::Acquire))
    }

    /// The sequence a query at `path` must see applied: for one account (its record,
    /// history or balances, all written only by commands that name it) or one
    /// transfer, that id's; for anything else (lists), `everything`: the highest
    /// sequence acknowledged.
    pub fn read_after_path(&self, path: &str, everything: u64) -> u64 {
        let path = path.split_once('?').map_or(path, |(path, _)| path);
        let mut parts = path.trim_start_matches('/').split('/');
        let id = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("accounts"), Some(id), None | Some("transfers" | "balances"), None) => id,
            (Some("transfers"), Some(id), None, None) => id,
            _ => return everything,
        };
        match id.parse::<u128>() {
            Ok(id) => self.read_after(id),
            // The read model refuses it; nothing to wait for.
            Err(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledgerbus_codec::encode;

    fn frame<M: ledgerbus_codec::Message>(message: &M, size: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; size];
        let written = encode(message, &mut bytes).unwrap();
        bytes.truncate(written);
        bytes
    }

    fn transfer(id: u128, debit: u128, credit: u128, flags: u16, pending_id: u128) -> Vec<u8> {
        let transfer = Transfer {
            id: id.into(),
            debit_account_id: debit.into(),
            credit_account_id: credit.into(),
            flags: flags.into(),
            pending_id: pending_id.into(),
            amount: 5.into(),
            ledger: 1.into(),
            ..Default::default()
        };
        frame(&transfer, 512)
    }

    #[test]
    fn a_read_waits_for_its_ids_last_write_and_never_less() {
        let marks = WriteMarks::new();
        let account = CreateAccount { id: 7.into(), ledger: 1.into(), ..Default::default() };
        marks.record(&frame(&account, 512), 3);
        marks.record(&transfer(100, 7, 8, 0, 0), 10);
        marks.record(&transfer(101, 8, 9, 0, 0), 12);
        assert!(marks.read_after(7) >= 10, "account 7's last write");
        assert!(marks.read_after(8) >= 12);
        assert!(marks.read_after(100) >= 10, "the transfer itself");
        assert_eq!(marks.read_after(424_242), 0, "an id nobody wrote waits for nothing");
        // Shared slots only make waits longer: every id's answer is at least its own.
        for id in 0..200_000u128 {
            marks.record(&transfer(1_000_000 + id, 50 + id % 97, 51 + id % 89, 0, 0), 100 + id as u64);
        }
        assert!(marks.read_after(8) >= 12 && marks.read_after(7) >= 10);
    }

    #[test]
    fn a_path_about_one_id_waits_for_that_id_and_a_list_for_everything() {
        let marks = WriteMarks::new();
        marks.record(&transfer(100, 7, 8, 0, 0), 10);
        for path in ["/accounts/7", "/accounts/7/transfers?limit=5", "/accounts/7/balances", "/transfers/100"]
        {
            assert!(marks.read_after_path(path, 99) >= 10, "{path}");
            assert!(marks.read_after_path(path, 99) < 99, "{path} does not wait for everything");
        }
        for path in ["/accounts?ledger=1", "/transfers?user_data_64=3", "/accounts/7/other", "/"] {
            assert_eq!(marks.read_after_path(path, 99), 99, "{path}");
        }
        assert_eq!(marks.read_after_path("/accounts/x7", 99), 0, "refused by the read model anyway");
    }

    #[test]
    fn writes_whose_accounts_are_not_known_make_every_read_wait() {
        let marks = WriteMarks::new();
        // A post that leaves the accounts to the pending transfer.
        marks.record(&transfer(200, 0, 0, transfer_flags::POST_PENDING, 150), 40);
        assert!(marks.read_after(150) >= 40, "the pending transfer it posted");
        assert!(marks.read_after(31_337) >= 40, "any account could be one of its");
        marks.record(b"garbage that is no command", 41);
        assert!(marks.read_after(5) >= 41);
        marks.start_over(2);
        assert_eq!(marks.read_after(150), 2, "a new log: the old positions are gone");
    }
}
