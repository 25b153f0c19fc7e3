//! The in-memory read model: balances (the ledger itself), every applied transfer by
//! id, and each account's transfer history in sequence order, built by applying the
//! event stream exactly once and in order.

use hashbrown::HashMap;
use ledgerbus_codec::{transfer_flags, Frame, ResultCode};
use ledgerbus_ledger::Ledger;
use ledgerbus_sequencer::core::SequencerCore;

/// An applied transfer as the query API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferRecord {
    /// Transfer id.
    pub id: u128,
    /// Debited account.
    pub debit_account_id: u128,
    /// Credited account.
    pub credit_account_id: u128,
    /// Minor units.
    pub amount: u64,
    /// Ledger code.
    pub ledger: u32,
    /// Transfer code.
    pub code: u16,
    /// `transfer_flags` bits.
    pub flags: u16,
    /// Sequencer timestamp.
    pub timestamp_ns: u64,
    /// Event sequence.
    pub sequence: u64,
}

impl TransferRecord {
    /// Whether it was part of a linked chain (and not its last member).
    pub fn linked(&self) -> bool {
        self.flags & transfer_flags::LINKED != 0
    }
}

/// The read model.
pub struct ReadModel {
    /// Balances, idempotency and the log hash: the same code the sequencer runs.
    core: SequencerCore,
    transfers: Vec<TransferRecord>,
    by_id: HashMap<u128, u32>,
    history: HashMap<u128, Vec<u32>>,
}

impl Default for ReadModel {
    fn default() -> Self {
        ReadModel::new()
    }
}

impl ReadModel {
    /// An empty model, before event 1.
    pub fn new() -> ReadModel {
        ReadModel {
            core: SequencerCore::new(Ledger::new()),
            transfers: Vec::new(),
            by_id: HashMap::new(),
            history: HashMap::new(),
        }
    }

    /// The sequence the next event must have.
    pub fn next_sequence(&self) -> u64 {
        self.core.next_sequence()
    }

    /// The rolling log hash, equal to the sequencer's at the same sequence.
    pub fn state_hash(&self) -> u64 {
        self.core.log_hash()
    }

    /// Balances and account data.
    pub fn ledger(&self) -> &Ledger {
        self.core.ledger()
    }

    /// An applied transfer by id.
    pub fn transfer(&self, id: u128) -> Option<&TransferRecord> {
        self.by_id.get(&id).map(|&index| &self.transfers[index as usize])
    }

    /// Up to `limit` transfers of `account` with a sequence above `after`, in order.
    pub fn history(&self, account: u128, after: u64, limit: usize) -> Vec<TransferRecord> {
        let Some(indexes) = self.history.get(&account) else { return Vec::new() };
        let start = indexes.partition_point(|&i| self.transfers[i as usize].sequence <= after);
        indexes[start..].iter().take(limit).map(|&i| self.transfers[i as usize]).collect()
    }

    /// Applies the next event. Out of order, undecodable or inconsistent events are
    /// errors and change nothing in the query indexes.
    pub fn apply(&mut self, frame: &[u8]) -> Result<(), String> {
        self.core.follow(frame)?;
        if let Ok((Frame::TransferEvent(event), _)) = Frame::decode(frame) {
            if event.result() == Ok(ResultCode::Ok) {
                let record = TransferRecord {
                    id: event.id.get(),
                    debit_account_id: event.debit_account_id.get(),
                    credit_account_id: event.credit_account_id.get(),
                    amount: event.amount.get(),
                    ledger: event.ledger.get(),
                    code: event.code.get(),
                    flags: event.flags.get(),
                    timestamp_ns: event.timestamp_ns.get(),
                    sequence: event.sequence.get(),
                };
                let index = self.transfers.len() as u32;
                self.transfers.push(record);
                self.by_id.insert(record.id, index);
                self.history.entry(record.debit_account_id).or_default().push(index);
                self.history.entry(record.credit_account_id).or_default().push(index);
            }
        }
        Ok(())
    }
}
