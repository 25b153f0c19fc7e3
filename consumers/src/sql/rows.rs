//! Events as rows, and rows back into the exact event bytes.
//!
//! Every event becomes one row of `account_events`, `transfers` or `expirations`
//! carrying every field of the event, and the accounts an event changes become rows
//! of `accounts`. The frame is a pure function of the row: the sequencer writes each
//! event in the oldest schema version that carries its non-zero fields
//! ([`ledgerbus_codec::encode_compact`]), so writing a row's fields the same way gives
//! back the frame byte for byte, and the rolling log hash can be recomputed from SQL
//! alone. An event for which that does not hold is refused before anything is
//! written, so a projection can never hold a row that does not say what happened.

use hashbrown::HashMap;
use ledgerbus_codec::messages::{AccountEvent, PendingExpired, TransferEvent};
use ledgerbus_codec::{encode, encode_compact, Frame, ResultCode};
use ledgerbus_ledger::{Account, Ledger, UserData};

use super::SqlError;

/// Largest frame of an event (a version 2 transfer event).
pub const EVENT_FRAME_MAX: usize = 8 + 136;

/// One event, every field of it.
#[derive(Debug, Clone, Copy)]
pub enum EventRow {
    /// A create-account command and its result.
    Account(AccountEvent),
    /// A transfer command (resolved) and its result.
    Transfer(TransferEvent),
    /// A pending transfer that timed out.
    Expired(PendingExpired),
}

impl EventRow {
    /// The event in `frame`, refused unless its row gives back exactly these bytes.
    pub fn from_frame(frame: &[u8]) -> Result<EventRow, SqlError> {
        let (decoded, _) = Frame::decode(frame).map_err(|e| SqlError::Event(format!("undecodable: {e}")))?;
        // Only the fields have columns: reserved bytes are not kept.
        let row = match decoded {
            Frame::AccountEvent(event) => EventRow::Account(AccountEvent {
                reserved: Default::default(),
                reserved2: Default::default(),
                ..*event
            }),
            Frame::TransferEvent(event) => {
                EventRow::Transfer(TransferEvent { reserved: Default::default(), ..*event })
            }
            Frame::PendingExpired(event) => {
                EventRow::Expired(PendingExpired { reserved: Default::default(), ..*event })
            }
            other => {
                return Err(SqlError::Event(format!("template {} is not an event", other.template_id())))
            }
        };
        let mut again = [0u8; EVENT_FRAME_MAX];
        let size = row.encode(&mut again);
        if again[..size] != *frame {
            return Err(SqlError::Event(format!(
                "event {} is not in the sequencer's form (reserved bytes set or an unexpected schema \
                 version); its rows could not give it back exactly",
                row.sequence()
            )));
        }
        Ok(row)
    }

    /// Writes the event's frame into `out` and returns its size.
    pub fn encode(&self, out: &mut [u8; EVENT_FRAME_MAX]) -> usize {
        let written = match self {
            EventRow::Account(event) => encode_compact(event, out),
            EventRow::Transfer(event) => encode_compact(event, out),
            EventRow::Expired(event) => encode(event, out),
        };
        written.expect("the buffer fits every event")
    }

    /// The event's sequence.
    pub fn sequence(&self) -> u64 {
        match self {
            EventRow::Account(event) => event.sequence.get(),
            EventRow::Transfer(event) => event.sequence.get(),
            EventRow::Expired(event) => event.sequence.get(),
        }
    }

    /// The accounts this event changed (none if it was rejected).
    fn changed_accounts(&self) -> ([u128; 2], usize) {
        let ok = |result: u16| result == ResultCode::Ok.to_wire();
        match self {
            EventRow::Account(event) if ok(event.result.get()) => ([event.id.get(), 0], 1),
            EventRow::Transfer(event) if ok(event.result.get()) => {
                ([event.debit_account_id.get(), event.credit_account_id.get()], 2)
            }
            EventRow::Expired(event) => ([event.debit_account_id.get(), event.credit_account_id.get()], 2),
            _ => ([0, 0], 0),
        }
    }
}

/// An account as the ledger holds it after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountRow {
    /// The account id.
    pub id: u128,
    /// Balances, ledger, code, flags, creation time.
    pub account: Account,
    /// Its references.
    pub user_data: UserData,
    /// The last event that changed it.
    pub updated_sequence: u64,
}

impl AccountRow {
    /// The row of account `id` in `ledger`, if it exists.
    pub fn of(ledger: &Ledger, id: u128, updated_sequence: u64) -> Option<AccountRow> {
        let account = *ledger.account(id)?;
        Some(AccountRow { id, account, user_data: ledger.account_user_data(id), updated_sequence })
    }
}

/// The rows one database transaction writes.
#[derive(Debug, Default)]
pub struct RowBatch {
    /// Create-account events, in order.
    pub account_events: Vec<AccountEvent>,
    /// Transfer events, in order.
    pub transfers: Vec<TransferEvent>,
    /// Expiries, in order.
    pub expirations: Vec<PendingExpired>,
    /// Accounts changed by the events above, as they stand after the last of them
    /// (filled by [`RowBatch::finish`]).
    pub accounts: Vec<AccountRow>,
    /// Account id → the last event in the batch that changed it.
    changed: HashMap<u128, u64>,
    /// Events in the batch.
    pub events: u64,
}

impl RowBatch {
    /// Adds an event (already applied to the ledger).
    pub fn push(&mut self, row: EventRow) {
        let sequence = row.sequence();
        let (accounts, count) = row.changed_accounts();
        for id in &accounts[..count] {
            self.changed.insert(*id, sequence);
        }
        match row {
            EventRow::Account(event) => self.account_events.push(event),
            EventRow::Transfer(event) => self.transfers.push(event),
            EventRow::Expired(event) => self.expirations.push(event),
        }
        self.events += 1;
    }

    /// Reads the changed accounts from `ledger` (which has applied every event of
    /// the batch), sorted by id so that concurrent writers would lock in one order.
    pub fn finish(&mut self, ledger: &Ledger) {
        self.accounts.clear();
        self.accounts
            .extend(self.changed.iter().filter_map(|(&id, &sequence)| AccountRow::of(ledger, id, sequence)));
        debug_assert_eq!(self.accounts.len(), self.changed.len(), "a changed account exists");
        self.accounts.sort_unstable_by_key(|row| row.id);
    }

    /// Whether the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// Empties the batch, keeping its memory.
    pub fn clear(&mut self) {
        self.account_events.clear();
        self.transfers.clear();
        self.expirations.clear();
        self.accounts.clear();
        self.changed.clear();
        self.events = 0;
    }

    /// Rows the batch writes (events plus account rows).
    pub fn rows(&self) -> u64 {
        self.events + self.accounts.len() as u64
    }
}

/// Formats `value` in decimal into `buffer` without allocating.
pub fn decimal(value: u128, buffer: &mut [u8; 40]) -> &str {
    let mut at = buffer.len();
    let mut rest = value;
    loop {
        at -= 1;
        buffer[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    std::str::from_utf8(&buffer[at..]).expect("ASCII digits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_is_exact_at_the_edges() {
        let mut buffer = [0u8; 40];
        for value in [0, 7, 10, 1_000_000, u64::MAX as u128, u128::MAX] {
            assert_eq!(decimal(value, &mut buffer), value.to_string());
        }
    }

    #[test]
    fn an_event_comes_back_byte_for_byte_and_others_are_refused() {
        let mut event =
            TransferEvent { sequence: 9.into(), id: 5.into(), amount: 100.into(), ..Default::default() };
        let mut frame = [0u8; EVENT_FRAME_MAX];
        let size = encode_compact(&event, &mut frame).unwrap();
        let row = EventRow::from_frame(&frame[..size]).unwrap();
        assert_eq!(row.sequence(), 9);
        // The same event written as a full version 2 block is not the sequencer's form.
        let size = encode(&event, &mut frame).unwrap();
        assert!(EventRow::from_frame(&frame[..size]).is_err());
        // Nor is one with reserved bytes set.
        event.reserved = [1, 0, 0, 0, 0, 0];
        let size = encode_compact(&event, &mut frame).unwrap();
        assert!(EventRow::from_frame(&frame[..size]).is_err());
        // Nor a command.
        let command = ledgerbus_codec::messages::Transfer::default();
        let size = encode(&command, &mut frame).unwrap();
        assert!(EventRow::from_frame(&frame[..size]).is_err());
    }
}
