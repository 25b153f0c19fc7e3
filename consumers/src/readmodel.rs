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
use ledgerbus_codec::{transfer_flags, Frame, Frames, Message, ResultCode, MESSAGE_HEADER_SIZE};
use ledgerbus_ledger::index::{IdIndex, Probe};
use ledgerbus_ledger::{Ledger, Replica, TransferIds};

use crate::error::SinkError;

/// Records per chunk of the transfer store.
const CHUNK_BITS: u32 = 16;
const CHUNK_LEN: usize = 1 << CHUNK_BITS;
/// How many events ahead of the one being applied the id index is prefetched.
const PREFETCH_DISTANCE: usize = 8;

/// The empty index list (a filter value nobody has).
static EMPTY: Vec<u32> = Vec::new();

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
    /// The pending transfer it posted or voided; 0 otherwise.
    pub pending_id: u128,
    /// Opaque reference.
    pub user_data_128: u128,
    /// Opaque reference.
    pub user_data_64: u64,
    /// Opaque reference.
    pub user_data_32: u32,
    /// A pending transfer's timeout, seconds.
    pub timeout: u32,
}

/// What the store keeps of every applied transfer: the fields every transfer has,
/// 80 bytes. The version 2 fields live in [`Extras`], for the transfers that have any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stored {
    id: u128,
    debit_account_id: u128,
    credit_account_id: u128,
    amount: u64,
    timestamp_ns: u64,
    sequence: u64,
    ledger: u32,
    code: u16,
    flags: u16,
}

const _: () = assert!(core::mem::size_of::<Stored>() == 80);

/// A transfer's version 2 fields (pending id, references, timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Extras {
    pending_id: u128,
    user_data_128: u128,
    user_data_64: u64,
    user_data_32: u32,
    timeout: u32,
}

/// An account's balances after one event that changed them (accounts created with
/// the `history` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalanceEntry {
    /// The event.
    pub sequence: u64,
    /// Its time stamp.
    pub timestamp_ns: u64,
    /// Debits reserved after it.
    pub debits_pending: u64,
    /// Debits posted after it.
    pub debits_posted: u64,
    /// Credits reserved after it.
    pub credits_pending: u64,
    /// Credits posted after it.
    pub credits_posted: u64,
}

/// Which side of an account's transfers a history query wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Both.
    Any,
    /// Transfers that debit the account.
    Debits,
    /// Transfers that credit the account.
    Credits,
}

/// What `GET /accounts/{id}/transfers` asks for: a page of at most `limit`
/// transfers with `since <= timestamp <= until`, after (or, in reverse, before) the
/// cursor's sequence, optionally of one code and one direction.
#[derive(Debug, Clone, Copy)]
pub struct HistoryFilter {
    /// Exclusive bound from the previous page's cursor: forward, sequences above it;
    /// in reverse, below it. 0: from the start (or the end, in reverse).
    pub cursor: u64,
    /// Earliest time stamp, inclusive.
    pub since: u64,
    /// Latest time stamp, inclusive.
    pub until: u64,
    /// Only this transfer code.
    pub code: Option<u16>,
    /// Debits, credits or both.
    pub direction: Direction,
    /// Newest first.
    pub reverse: bool,
    /// Page size.
    pub limit: usize,
}

impl HistoryFilter {
    /// Everything, oldest first, `limit` at a time after `cursor`.
    pub fn after(cursor: u64, limit: usize) -> HistoryFilter {
        HistoryFilter {
            cursor,
            since: 0,
            until: u64::MAX,
            code: None,
            direction: Direction::Any,
            reverse: false,
            limit,
        }
    }
}

/// What `GET /accounts` and `GET /transfers` filter on: every field given must match.
#[derive(Debug, Clone, Copy, Default)]
pub struct RefFilter {
    /// Ledger (accounts only).
    pub ledger: Option<u32>,
    /// Code.
    pub code: Option<u16>,
    /// 128-bit user data.
    pub user_data_128: Option<u128>,
    /// 64-bit user data.
    pub user_data_64: Option<u64>,
    /// 32-bit user data.
    pub user_data_32: Option<u32>,
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
    chunks: Vec<Vec<Stored>>,
    /// The version 2 fields of the records that have any, by record index: a plain
    /// transfer costs the store no more than it did before they existed.
    extras: HashMap<u32, Extras>,
    len: u32,
    by_id: IdIndex,
    history: HashMap<u128, Vec<u32>>,
    /// The last refusal of each transfer id never applied, so that a client can ask
    /// how an id was decided, not only whether it was applied.
    rejected: HashMap<u128, Rejection>,
    /// The event that created each account (the ledger keeps its time stamp only).
    account_sequences: HashMap<u128, u64>,
    /// Every account id in creation order; a position here is an account's index.
    account_order: Vec<u128>,
    /// Account indexes by ledger and by each non-zero user data.
    accounts_by_ledger: HashMap<u32, Vec<u32>>,
    accounts_by_user_data_128: HashMap<u128, Vec<u32>>,
    accounts_by_user_data_64: HashMap<u64, Vec<u32>>,
    accounts_by_user_data_32: HashMap<u32, Vec<u32>>,
    /// Applied transfers (record indexes, in order) by each non-zero user data.
    transfers_by_user_data_128: HashMap<u128, Vec<u32>>,
    transfers_by_user_data_64: HashMap<u64, Vec<u32>>,
    transfers_by_user_data_32: HashMap<u32, Vec<u32>>,
    /// Balances after each change, for accounts created with the history flag.
    balances: HashMap<u128, Vec<BalanceEntry>>,
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
            extras: HashMap::new(),
            len: 0,
            by_id,
            history: HashMap::new(),
            rejected: HashMap::new(),
            account_sequences: HashMap::new(),
            account_order: Vec::new(),
            accounts_by_ledger: HashMap::new(),
            accounts_by_user_data_128: HashMap::new(),
            accounts_by_user_data_64: HashMap::new(),
            accounts_by_user_data_32: HashMap::new(),
            transfers_by_user_data_128: HashMap::new(),
            transfers_by_user_data_64: HashMap::new(),
            transfers_by_user_data_32: HashMap::new(),
            balances: HashMap::new(),
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
    pub fn transfer(&self, id: u128) -> Option<TransferRecord> {
        if id == 0 {
            return None; // never a transfer id, and the index's empty-slot marker
        }
        self.by_id.get(id).map(|index| self.full(index as u32))
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
        self.history_filtered(account, &HistoryFilter::after(after, limit))
    }

    /// A page of `account`'s transfers as `filter` asks (see [`HistoryFilter`]).
    pub fn history_filtered(&self, account: u128, filter: &HistoryFilter) -> Vec<TransferRecord> {
        let Some(indexes) = self.history.get(&account) else { return Vec::new() };
        // Sequences and time stamps grow together, so both bounds are binary searches.
        let mut start = indexes.partition_point(|&i| self.record(i).timestamp_ns < filter.since);
        let mut end = indexes.partition_point(|&i| self.record(i).timestamp_ns <= filter.until);
        if filter.cursor != 0 {
            let at = indexes.partition_point(|&i| self.record(i).sequence <= filter.cursor);
            if filter.reverse {
                end = end.min(indexes.partition_point(|&i| self.record(i).sequence < filter.cursor));
            } else {
                start = start.max(at);
            }
        }
        if start >= end {
            return Vec::new();
        }
        let wanted = |&&index: &&u32| {
            let record = self.record(index);
            filter.code.is_none_or(|code| record.code == code)
                && match filter.direction {
                    Direction::Any => true,
                    Direction::Debits => record.debit_account_id == account,
                    Direction::Credits => record.credit_account_id == account,
                }
        };
        let records = indexes[start..end].iter();
        if filter.reverse {
            records.rev().filter(wanted).take(filter.limit).map(|&i| self.full(i)).collect()
        } else {
            records.filter(wanted).take(filter.limit).map(|&i| self.full(i)).collect()
        }
    }

    /// Up to `limit` applied transfers matching `filter`'s user data (at least one
    /// must be given), in sequence order, with a sequence above `after`.
    pub fn transfers_by_reference(
        &self,
        filter: &RefFilter,
        after: u64,
        limit: usize,
    ) -> Vec<TransferRecord> {
        let indexes = if let Some(value) = filter.user_data_128 {
            self.transfers_by_user_data_128.get(&value)
        } else if let Some(value) = filter.user_data_64 {
            self.transfers_by_user_data_64.get(&value)
        } else if let Some(value) = filter.user_data_32 {
            self.transfers_by_user_data_32.get(&value)
        } else {
            None
        };
        let Some(indexes) = indexes else { return Vec::new() };
        let start = indexes.partition_point(|&i| self.record(i).sequence <= after);
        indexes[start..]
            .iter()
            .map(|&i| self.full(i))
            .filter(|r| {
                filter.user_data_128.is_none_or(|v| r.user_data_128 == v)
                    && filter.user_data_64.is_none_or(|v| r.user_data_64 == v)
                    && filter.user_data_32.is_none_or(|v| r.user_data_32 == v)
                    && filter.code.is_none_or(|v| r.code == v)
            })
            .take(limit)
            .collect()
    }

    /// Up to `limit` account ids matching `filter`, in creation order, created after
    /// the account at position `after` (0: from the first). Returns each id with its
    /// position, the cursor of the next page.
    pub fn accounts_matching(&self, filter: &RefFilter, after: u32, limit: usize) -> Vec<(u128, u32)> {
        let indexes: Option<&Vec<u32>> = if let Some(value) = filter.user_data_128 {
            Some(self.accounts_by_user_data_128.get(&value).unwrap_or(&EMPTY))
        } else if let Some(value) = filter.user_data_64 {
            Some(self.accounts_by_user_data_64.get(&value).unwrap_or(&EMPTY))
        } else if let Some(value) = filter.user_data_32 {
            Some(self.accounts_by_user_data_32.get(&value).unwrap_or(&EMPTY))
        } else if let Some(value) = filter.ledger {
            Some(self.accounts_by_ledger.get(&value).unwrap_or(&EMPTY))
        } else {
            None
        };
        let ledger = self.ledger();
        let matches = |&(id, _): &(u128, u32)| {
            let Some(account) = ledger.account(id) else { return false };
            let user_data = ledger.account_user_data(id);
            filter.ledger.is_none_or(|v| account.ledger == v)
                && filter.code.is_none_or(|v| account.code == v)
                && filter.user_data_128.is_none_or(|v| user_data.user_data_128 == v)
                && filter.user_data_64.is_none_or(|v| user_data.user_data_64 == v)
                && filter.user_data_32.is_none_or(|v| user_data.user_data_32 == v)
        };
        // Positions are 1-based in cursors, so that 0 means "from the start".
        match indexes {
            Some(indexes) => {
                let start = indexes.partition_point(|&i| i < after);
                indexes[start..]
                    .iter()
                    .map(|&i| (self.account_order[i as usize], i + 1))
                    .filter(matches)
                    .take(limit)
                    .collect()
            }
            None => (after as usize..self.account_order.len())
                .map(|i| (self.account_order[i], i as u32 + 1))
                .filter(matches)
                .take(limit)
                .collect(),
        }
    }

    /// Balances of a `history` account after each change with `since <= timestamp
    /// <= until` and a sequence above `after`, at most `limit`; `None` when the
    /// account keeps no history.
    pub fn balances(
        &self,
        account: u128,
        since: u64,
        until: u64,
        after: u64,
        limit: usize,
    ) -> Option<Vec<BalanceEntry>> {
        let entries = self.balances.get(&account)?;
        let start = entries.partition_point(|e| e.timestamp_ns < since || e.sequence <= after);
        let end = entries.partition_point(|e| e.timestamp_ns <= until);
        Some(entries[start..end.max(start)].iter().take(limit).copied().collect())
    }

    /// Appends the balances of `id` after event `sequence`, if it keeps history.
    fn record_balances(&mut self, id: u128, sequence: u64, timestamp_ns: u64) {
        let Some(entries) = self.balances.get_mut(&id) else { return };
        let Some(account) = self.core.ledger().account(id) else { return };
        entries.push(BalanceEntry {
            sequence,
            timestamp_ns,
            debits_pending: account.debits_pending,
            debits_posted: account.debits_posted,
            credits_pending: account.credits_pending,
            credits_posted: account.credits_posted,
        });
    }

    /// Indexes a newly created account.
    fn index_account(&mut self, event: &ledgerbus_codec::messages::AccountEvent) {
        let id = event.id.get();
        let position = self.account_order.len() as u32;
        self.account_order.push(id);
        self.account_sequences.insert(id, event.sequence.get());
        self.accounts_by_ledger.entry(event.ledger.get()).or_default().push(position);
        if event.user_data_128.get() != 0 {
            self.accounts_by_user_data_128.entry(event.user_data_128.get()).or_default().push(position);
        }
        if event.user_data_64.get() != 0 {
            self.accounts_by_user_data_64.entry(event.user_data_64.get()).or_default().push(position);
        }
        if event.user_data_32.get() != 0 {
            self.accounts_by_user_data_32.entry(event.user_data_32.get()).or_default().push(position);
        }
        if event.flags.get() & ledgerbus_codec::account_flags::HISTORY != 0 {
            self.balances.insert(id, Vec::new());
        }
    }

    /// The whole record at `index`: the stored fields and its extras.
    fn full(&self, index: u32) -> TransferRecord {
        let stored = self.record(index);
        let extras = if self.extras.is_empty() {
            Extras::default()
        } else {
            self.extras.get(&index).copied().unwrap_or_default()
        };
        TransferRecord {
            id: stored.id,
            debit_account_id: stored.debit_account_id,
            credit_account_id: stored.credit_account_id,
            amount: stored.amount,
            ledger: stored.ledger,
            code: stored.code,
            flags: stored.flags,
            timestamp_ns: stored.timestamp_ns,
            sequence: stored.sequence,
            pending_id: extras.pending_id,
            user_data_128: extras.user_data_128,
            user_data_64: extras.user_data_64,
            user_data_32: extras.user_data_32,
            timeout: extras.timeout,
        }
    }

    fn record(&self, index: u32) -> &Stored {
        &self.chunks[(index >> CHUNK_BITS) as usize][index as usize & (CHUNK_LEN - 1)]
    }

    /// Stores a record and returns its index, or an error when the store is full
    /// (2^32 transfers, far beyond any memory this runs in).
    fn push(&mut self, record: Stored) -> Result<u32, SinkError> {
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

    /// Prefetches the id-index slot of the transfer in `frame`, if it is one: read
    /// straight from the bytes (a hint, so no full decode).
    fn prefetch(&self, frame: &[u8]) {
        const ID: usize = MESSAGE_HEADER_SIZE + 16;
        let template = frame.get(2..4).map(|t| u16::from_le_bytes([t[0], t[1]]));
        if template != Some(TransferEvent::TEMPLATE_ID) {
            return;
        }
        if let Some(id) = frame.get(ID..ID + 16) {
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(id);
            self.by_id.prefetch(u128::from_le_bytes(bytes));
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
            let record = Stored {
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
            let extras = Extras {
                pending_id: event.pending_id.get(),
                user_data_128: event.user_data_128.get(),
                user_data_64: event.user_data_64.get(),
                user_data_32: event.user_data_32.get(),
                timeout: event.timeout.get(),
            };
            let index = self.push(record)?;
            self.by_id.insert_at(slot, record.id, u64::from(index));
            self.history.entry(record.debit_account_id).or_default().push(index);
            self.history.entry(record.credit_account_id).or_default().push(index);
            if extras != Extras::default() {
                self.extras.insert(index, extras);
                if extras.user_data_128 != 0 {
                    self.transfers_by_user_data_128.entry(extras.user_data_128).or_default().push(index);
                }
                if extras.user_data_64 != 0 {
                    self.transfers_by_user_data_64.entry(extras.user_data_64).or_default().push(index);
                }
                if extras.user_data_32 != 0 {
                    self.transfers_by_user_data_32.entry(extras.user_data_32).or_default().push(index);
                }
            }
            self.rejected.remove(&record.id);
            if !self.balances.is_empty() {
                self.record_balances(record.debit_account_id, record.sequence, record.timestamp_ns);
                self.record_balances(record.credit_account_id, record.sequence, record.timestamp_ns);
            }
        } else if let Frame::PendingExpired(event) = &decoded {
            if !self.balances.is_empty() {
                let (sequence, timestamp_ns) = (event.sequence.get(), event.timestamp_ns.get());
                self.record_balances(event.debit_account_id.get(), sequence, timestamp_ns);
                self.record_balances(event.credit_account_id.get(), sequence, timestamp_ns);
            }
        } else if let Frame::AccountEvent(event) = &decoded {
            if event.result() == Ok(ResultCode::Ok) {
                self.index_account(event);
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
