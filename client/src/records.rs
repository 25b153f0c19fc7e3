//! What lookups answer: an account, a transfer id's decision, a page of history.

use ledgerbus_codec::messages::TransferRecord;
use ledgerbus_codec::{decode, ResultCode};

use crate::command::{AccountFlags, TransferFlags};
use crate::Error;

/// Where a pending transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingState {
    /// Reserved, waiting for a post, a void or its timeout.
    Pending,
    /// Posted (all or part of it).
    Posted,
    /// Voided.
    Voided,
    /// Released by its timeout.
    Expired,
}

impl PendingState {
    /// From `TransferRecord.pendingState`; `None` for 0 (not a pending transfer) or
    /// a value this version does not know.
    pub fn from_wire(value: u16) -> Option<PendingState> {
        match value {
            1 => Some(PendingState::Pending),
            2 => Some(PendingState::Posted),
            3 => Some(PendingState::Voided),
            4 => Some(PendingState::Expired),
            _ => None,
        }
    }
}

/// A TransferRecord frame, read.
pub(crate) fn transfer_info(frame: &[u8]) -> Result<TransferInfo, Error> {
    let (record, _) = decode::<TransferRecord>(frame).map_err(|e| Error::Protocol(e.to_string()))?;
    Ok(TransferInfo {
        id: record.id.get(),
        debit_account_id: record.debit_account_id.get(),
        credit_account_id: record.credit_account_id.get(),
        amount: record.amount.get(),
        ledger: record.ledger.get(),
        code: record.code.get(),
        linked: record.flags.get() & ledgerbus_codec::transfer_flags::LINKED != 0,
        flags: TransferFlags::from_bits(record.flags.get()),
        pending_id: record.pending_id.get(),
        user_data_128: record.user_data_128.get(),
        user_data_64: record.user_data_64.get(),
        user_data_32: record.user_data_32.get(),
        timeout: record.timeout.get(),
        pending_state: PendingState::from_wire(record.pending_state.get()),
        timestamp_ns: record.timestamp_ns.get(),
        sequence: record.sequence.get(),
        result: record.result().map_err(|e| Error::Protocol(e.to_string()))?,
    })
}

/// A page of an account's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// Applied transfers debiting or crediting the account, in sequence order.
    pub transfers: Vec<TransferInfo>,
    /// `after` of the next page; `None` when this page was the last.
    pub next_after: Option<u64>,
}

/// An account, as a lookup answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountInfo {
    /// Its id.
    pub id: u128,
    /// Ledger (currency) code.
    pub ledger: u32,
    /// Account kind.
    pub code: u16,
    /// Whether debits may exceed credits.
    pub allow_negative: bool,
    /// Every flag (limits, history, closed).
    pub flags: AccountFlags,
    /// Sum of posted debits, minor units.
    pub debits_posted: u64,
    /// Sum of posted credits, minor units.
    pub credits_posted: u64,
    /// Debits reserved by pending transfers.
    pub debits_pending: u64,
    /// Credits reserved by pending transfers.
    pub credits_pending: u64,
    /// Opaque reference.
    pub user_data_128: u128,
    /// Opaque reference.
    pub user_data_64: u64,
    /// Opaque reference.
    pub user_data_32: u32,
    /// When it was created.
    pub timestamp_ns: u64,
    /// The event that created it.
    pub sequence: u64,
}

impl AccountInfo {
    /// Posted credits minus posted debits.
    pub fn balance(&self) -> i128 {
        i128::from(self.credits_posted) - i128::from(self.debits_posted)
    }

    /// What can still be spent: posted credits minus posted and pending debits.
    pub fn available(&self) -> i128 {
        self.balance() - i128::from(self.debits_pending)
    }
}

/// A transfer id's decision, as a lookup answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferInfo {
    /// Its id.
    pub id: u128,
    /// Debited account.
    pub debit_account_id: u128,
    /// Credited account.
    pub credit_account_id: u128,
    /// Minor units.
    pub amount: u64,
    /// Ledger code.
    pub ledger: u32,
    /// Transfer kind.
    pub code: u16,
    /// Whether it was chained with the next.
    pub linked: bool,
    /// Every flag (pending, post, void, balancing, closing, linked).
    pub flags: TransferFlags,
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
    /// Where a pending transfer stands; `None` for any other.
    pub pending_state: Option<PendingState>,
    /// When it was decided.
    pub timestamp_ns: u64,
    /// The event that decided it.
    pub sequence: u64,
    /// Ok when applied; otherwise why it was (last) refused.
    pub result: ResultCode,
}
