//! What lookups answer: an account, a transfer id's decision, a page of history.

use ledgerbus_codec::messages::TransferRecord;
use ledgerbus_codec::{decode, ResultCode};

use crate::Error;

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
    /// Sum of debits, minor units.
    pub debits_posted: u64,
    /// Sum of credits, minor units.
    pub credits_posted: u64,
    /// When it was created.
    pub timestamp_ns: u64,
    /// The event that created it.
    pub sequence: u64,
}

impl AccountInfo {
    /// Credits minus debits.
    pub fn balance(&self) -> i128 {
        i128::from(self.credits_posted) - i128::from(self.debits_posted)
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
    /// When it was decided.
    pub timestamp_ns: u64,
    /// The event that decided it.
    pub sequence: u64,
    /// Ok when applied; otherwise why it was (last) refused.
    pub result: ResultCode,
}
