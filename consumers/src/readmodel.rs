//! The in-memory read model: balances (the ledger itself), every applied transfer by
//! id, and each account's transfer history in sequence order, built by applying the
//! event stream exactly once and in order.
//!
//! Every event of the bus passes through here, so this is the end-to-end ceiling.
//! Two choices keep it fast and its pauses short: records live in fixed-size chunks
//! that never move (growing never copies what is stored, and never holds the write
//! lock for a copy of hundreds of megabytes), and the id index is the open-addressing
//! [`IdIndex`] the sequencer uses, whose slot for a transfer a few events ahead is
//! prefetched while the current one is applied (a lookup in a large index is
//! otherwise a cache miss per event).

use hashbrown::HashMap;
use ledgerbus_codec::messages::TransferEvent;
use ledgerbus_codec::{decode, transfer_flags, Frame, Frames, ResultCode};
use ledgerbus_ledger::index::{IdIndex, Probe};
use ledgerbus_ledger::{Ledger, Replica, TransferIds};

use crate::error::SinkError;

/// Records per chunk of the transfer store.
const CHUNK_BITS: u32 = 16;
const CHUNK_LEN: usize = 1 << CHUNK_BITS;
/// How many events ahead of the one being applied the id index is prefetched.
const PREFETCH_DISTANCE: usize = 8;

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
    core: Replica,
    /// Applied transfers in sequence order, `CHUNK_LEN` to a chunk; a record's
    /// position is its index everywhere below.
    chunks: Vec<Vec<TransferRecord>>,
    len: u32,
    by_id: IdIndex,
    history: HashMap<u128, Vec<u32>>,
    /// The last refusal of each transfer id never applied, so that a client can ask
    /// how an id was decided, not only whether it was applied.
    rejected: HashMap<u128, Rejection>,
    /// The event that created each account (the ledger keeps its time stamp only).
    account_sequences: HashMap<u128, u64>,
}

/// How a transfer that was never applied was last refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// Its event's sequence and time stamp.
    pub sequence: u64,
    /// When it was decided.
    pub timestamp_ns: u64,
    /// Why it was refused.
    pub result: ResultCode,
    /// The command's fields, as the event records them.
    pub debit_account_id: u128,
    /// Credit side.
    pub credit_account_id: u128,
    /// Amount asked for.
    pub amount: u64,
    /// Ledger.
    pub ledger: u32,
    /// Code.
    pub code: u16,
}

impl Default for ReadModel {
    fn default() -> Self {
        ReadModel::new()
    }
}

impl ReadModel {
    /// An empty model, before event 1.
    pub fn new() -> ReadModel {
        ReadModel::with_capacity(CHUNK_LEN)
    }

    /// An empty model whose id index holds `transfers` ids before it grows; its
    /// memory is faulted in now, so that applying never waits for it.
    pub fn with_capacity(transfers: usize) -> ReadModel {
        let by_id = IdIndex::with_capacity(transfers);
        by_id.populate();
        ReadModel {
            core: Replica::new(Ledger::new()),
            chunks: Vec::new(),
            len: 0,
            by_id,
            history: HashMap::new(),
            rejected: HashMap::new(),
            account_sequences: HashMap::new(),
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
        if id == 0 {
            return None; // never a transfer id, and the index's empty-slot marker
        }
        self.by_id.get(id).map(|index| self.record(index as u32))
    }

    /// The sequence of the event that created account `id`.
    pub fn account_sequence(&self, id: u128) -> Option<u64> {
        self.account_sequences.get(&id).copied()
    }

    /// How a transfer id that was never applied was last refused.
    pub fn rejection(&self, id: u128) -> Option<&Rejection> {
        self.rejected.get(&id)
    }

    /// Up to `limit` transfers of `account` with a sequence above `after`, in order.
    pub fn history(&self, account: u128, after: u64, limit: usize) -> Vec<TransferRecord> {
        let Some(indexes) = self.history.get(&account) else { return Vec::new() };
        let start = indexes.partition_point(|&i| self.record(i).sequence <= after);
        indexes[start..].iter().take(limit).map(|&i| *self.record(i)).collect()
    }

    fn record(&self, index: u32) -> &TransferRecord {
        &self.chunks[(index >> CHUNK_BITS) as usize][index as usize & (CHUNK_LEN - 1)]
    }

    /// Stores a record and returns its index, or an error when the store is full
    /// (2^32 transfers, far beyond any memory this runs in).
    fn push(&mut self, record: TransferRecord) -> Result<u32, SinkError> {
        let index = self.len;
        let next = index.checked_add(1).ok_or(SinkError::StoreFull)?;
        if index as usize & (CHUNK_LEN - 1) == 0 {
            self.chunks.push(Vec::with_capacity(CHUNK_LEN));
        }
        let chunk = self.chunks.last_mut().expect("a chunk with room");
        debug_assert!(chunk.len() < CHUNK_LEN);
        chunk.push(record);
        self.len = next;
        Ok(index)
    }

    /// Applies concatenated event frames in order, stopping at the first error
    /// (events before it stay applied, as if applied one by one).
    pub fn apply_batch(&mut self, frames: &[u8]) -> Result<(), SinkError> {
        let mut ahead = Frames::new(frames).map_while(Result::ok);
        for frame in ahead.by_ref().take(PREFETCH_DISTANCE) {
            self.prefetch(frame);
        }
        for frame in Frames::new(frames) {
            let frame = frame.map_err(ledgerbus_ledger::ApplyError::Undecodable)?;
            if let Some(next) = ahead.next() {
                self.prefetch(next);
            }
            self.apply(frame)?;
        }
        Ok(())
    }

    fn prefetch(&self, frame: &[u8]) {
        if let Ok((event, _)) = decode::<TransferEvent>(frame) {
            self.by_id.prefetch(event.id.get());
        }
    }

    /// Applies the next event. Out of order, undecodable or inconsistent events are
    /// errors and change nothing in the query indexes.
    pub fn apply(&mut self, frame: &[u8]) -> Result<(), SinkError> {
        let (decoded, _) = Frame::decode(frame).map_err(ledgerbus_ledger::ApplyError::Undecodable)?;
        // Where the id goes, found before anything changes: an applied transfer's id
        // is never 0 and never applied twice in a well-formed log.
        let slot = match &decoded {
            Frame::TransferEvent(event) if event.result() == Ok(ResultCode::Ok) => {
                let id = event.id.get();
                if id == 0 {
                    return Err(SinkError::ZeroTransferId { sequence: event.sequence.get() });
                }
                self.by_id.reserve_one();
                match self.by_id.find(id) {
                    Probe::Found(_) => {
                        return Err(SinkError::DuplicateTransfer { sequence: event.sequence.get(), id })
                    }
                    Probe::Vacant(slot) => Some(slot),
                }
            }
            _ => None,
        };
        self.core.apply_decoded(&decoded, frame, TransferIds::Skip)?;
        if let (Some(slot), Frame::TransferEvent(event)) = (slot, &decoded) {
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
            let index = self.push(record)?;
            self.by_id.insert_at(slot, record.id, u64::from(index));
            self.history.entry(record.debit_account_id).or_default().push(index);
            self.history.entry(record.credit_account_id).or_default().push(index);
            self.rejected.remove(&record.id);
        } else if let Frame::AccountEvent(event) = &decoded {
            if event.result() == Ok(ResultCode::Ok) {
                self.account_sequences.insert(event.id.get(), event.sequence.get());
            }
        } else if let Frame::TransferEvent(event) = &decoded {
            // A refusal (not a retry of an applied id): remember the latest one.
            let id = event.id.get();
            let refused = event.result().ok().filter(|code| *code != ResultCode::Ok);
            if let (Some(result), None) = (refused, self.by_id.get(id)) {
                let rejection = Rejection {
                    sequence: event.sequence.get(),
                    timestamp_ns: event.timestamp_ns.get(),
                    result,
                    debit_account_id: event.debit_account_id.get(),
                    credit_account_id: event.credit_account_id.get(),
                    amount: event.amount.get(),
                    ledger: event.ledger.get(),
                    code: event.code.get(),
                };
                self.rejected.insert(id, rejection);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledgerbus_codec::messages::AccountEvent;
    use ledgerbus_codec::{account_flags, encode, Message};

    fn account(sequence: u64, id: u128) -> Vec<u8> {
        let event = AccountEvent {
            sequence: sequence.into(),
            timestamp_ns: sequence.into(),
            id: id.into(),
            ledger: 1.into(),
            code: 1.into(),
            flags: account_flags::ALLOW_NEGATIVE.into(),
            result: ResultCode::Ok.to_wire().into(),
            reserved: [0; 6],
            ..Default::default()
        };
        let mut bytes = vec![0; AccountEvent::FRAME_SIZE];
        encode(&event, &mut bytes).expect("sized");
        bytes
    }

    fn transfer(sequence: u64, id: u128, debit: u128, credit: u128, result: ResultCode) -> Vec<u8> {
        let event = TransferEvent {
            sequence: sequence.into(),
            timestamp_ns: sequence.into(),
            id: id.into(),
            debit_account_id: debit.into(),
            credit_account_id: credit.into(),
            amount: 5.into(),
            ledger: 1.into(),
            code: 1.into(),
            flags: 0.into(),
            result: result.to_wire().into(),
            reserved: [0; 6],
            ..Default::default()
        };
        let mut bytes = vec![0; TransferEvent::FRAME_SIZE];
        encode(&event, &mut bytes).expect("sized");
        bytes
    }

    /// Two accounts and `transfers` applied transfers alternating direction.
    fn model_with(transfers: u64) -> ReadModel {
        let mut log = [account(1, 1), account(2, 2)].concat();
        for n in 0..transfers {
            let (debit, credit) = if n % 2 == 0 { (1, 2) } else { (2, 1) };
            log.extend(transfer(3 + n, 100 + u128::from(n), debit, credit, ResultCode::Ok));
        }
        let mut model = ReadModel::new();
        model.apply_batch(&log).expect("a well-formed log applies");
        model
    }

    #[test]
    fn history_pages_in_order_across_chunks() {
        let total = CHUNK_LEN as u64 + 1_000;
        let model = model_with(total);
        assert_eq!(model.next_sequence(), 3 + total);
        let mut after = 0;
        let mut seen = 0u64;
        loop {
            let page = model.history(1, after, 7_000);
            if page.is_empty() {
                break;
            }
            for record in &page {
                assert_eq!(record.id, 100 + u128::from(seen), "every transfer once, in order");
                assert!(record.sequence > after);
                seen += 1;
                after = record.sequence;
            }
        }
        assert_eq!(seen, total);
        let last = model.transfer(100 + u128::from(total - 1)).expect("the last transfer by id");
        assert_eq!(last.sequence, 2 + total);
        assert!(model.transfer(99).is_none() && model.transfer(0).is_none());
    }

    #[test]
    fn rejected_transfers_are_not_indexed_but_say_how_they_were_decided() {
        let log =
            [account(1, 1), account(2, 2), transfer(3, 7, 1, 2, ResultCode::InsufficientFunds)].concat();
        let mut model = ReadModel::new();
        model.apply_batch(&log).expect("applies");
        assert!(model.transfer(7).is_none());
        assert!(model.history(1, 0, 10).is_empty());
        assert_eq!(model.next_sequence(), 4);
        let refused = model.rejection(7).expect("the refusal is remembered");
        assert_eq!((refused.sequence, refused.result), (3, ResultCode::InsufficientFunds));
        assert!(model.rejection(8).is_none());
    }

    #[test]
    fn a_repeated_id_or_a_misplaced_event_changes_nothing() {
        let mut model = model_with(3);
        let (hash, next) = (model.state_hash(), model.next_sequence());
        let repeated = transfer(next, 100, 1, 2, ResultCode::Ok);
        assert!(matches!(model.apply(&repeated), Err(SinkError::DuplicateTransfer { id: 100, .. })));
        let misplaced = transfer(next + 1, 500, 1, 2, ResultCode::Ok);
        assert!(matches!(
            model.apply(&misplaced),
            Err(SinkError::Apply(ledgerbus_ledger::ApplyError::OutOfPlace { .. }))
        ));
        assert!(model.apply(&repeated[..20]).is_err(), "a truncated frame is refused");
        assert_eq!((model.state_hash(), model.next_sequence()), (hash, next));
        assert!(model.transfer(500).is_none());
        assert_eq!(model.history(1, 0, 100).len(), 3);
        assert_eq!(model.ledger().account(1).map(|a| a.debits_posted), Some(10));
    }
}
