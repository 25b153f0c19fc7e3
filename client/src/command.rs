//! What a client sends: accounts to open and transfers to make, built with typed
//! fields and flags, and the [`Command`] both become.

use ledgerbus_codec::messages;
use ledgerbus_codec::{account_flags, transfer_flags};

/// Flags of a transfer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TransferFlags(u16);

impl TransferFlags {
    /// No flags.
    pub const NONE: TransferFlags = TransferFlags(0);
    /// Chained with the next transfer of the group: all of the chain applies, or none.
    pub const LINKED: TransferFlags = TransferFlags(transfer_flags::LINKED);
    /// Reserves the amount until posted, voided or expired.
    pub const PENDING: TransferFlags = TransferFlags(transfer_flags::PENDING);
    /// Posts a pending transfer (all of it, or `amount` of it).
    pub const POST_PENDING: TransferFlags = TransferFlags(transfer_flags::POST_PENDING);
    /// Releases a pending transfer.
    pub const VOID_PENDING: TransferFlags = TransferFlags(transfer_flags::VOID_PENDING);
    /// Moves at most `amount`, as much as the debit account's limit allows.
    pub const BALANCING_DEBIT: TransferFlags = TransferFlags(transfer_flags::BALANCING_DEBIT);
    /// Moves at most `amount`, as much as the credit account's limit allows.
    pub const BALANCING_CREDIT: TransferFlags = TransferFlags(transfer_flags::BALANCING_CREDIT);
    /// Closes the debit account while pending.
    pub const CLOSING_DEBIT: TransferFlags = TransferFlags(transfer_flags::CLOSING_DEBIT);
    /// Closes the credit account while pending.
    pub const CLOSING_CREDIT: TransferFlags = TransferFlags(transfer_flags::CLOSING_CREDIT);

    /// From wire bits (bits this version does not know are kept).
    pub fn from_bits(bits: u16) -> TransferFlags {
        TransferFlags(bits)
    }

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: TransferFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// The wire bits.
    pub fn bits(self) -> u16 {
        self.0
    }
}

impl std::ops::BitOr for TransferFlags {
    type Output = TransferFlags;
    fn bitor(self, other: TransferFlags) -> TransferFlags {
        TransferFlags(self.0 | other.0)
    }
}

/// Flags of an account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct AccountFlags(u16);

impl AccountFlags {
    /// No flags: the account may not go below zero.
    pub const NONE: AccountFlags = AccountFlags(0);
    /// Debits may exceed credits (settlement and funding accounts).
    pub const ALLOW_NEGATIVE: AccountFlags = AccountFlags(account_flags::ALLOW_NEGATIVE);
    /// The default rule, explicit: debits (posted + pending) never exceed credits.
    pub const DEBITS_MUST_NOT_EXCEED_CREDITS: AccountFlags =
        AccountFlags(account_flags::DEBITS_MUST_NOT_EXCEED_CREDITS);
    /// Credits (posted + pending) never exceed debits; debits are not limited.
    pub const CREDITS_MUST_NOT_EXCEED_DEBITS: AccountFlags =
        AccountFlags(account_flags::CREDITS_MUST_NOT_EXCEED_DEBITS);
    /// The read model keeps the balances after every change.
    pub const HISTORY: AccountFlags = AccountFlags(account_flags::HISTORY);
    /// Takes no new transfers (set by a closing transfer).
    pub const CLOSED: AccountFlags = AccountFlags(account_flags::CLOSED);

    /// From wire bits (bits this version does not know are kept).
    pub fn from_bits(bits: u16) -> AccountFlags {
        AccountFlags(bits)
    }

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: AccountFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// The wire bits.
    pub fn bits(self) -> u16 {
        self.0
    }
}

impl std::ops::BitOr for AccountFlags {
    type Output = AccountFlags;
    fn bitor(self, other: AccountFlags) -> AccountFlags {
        AccountFlags(self.0 | other.0)
    }
}

/// An account to open: `Account::new(id, ledger, code).allow_negative()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    /// The account's id (not 0); opening it again answers `exists`.
    pub id: u128,
    /// The ledger (currency) it keeps; transfers only move money within one ledger.
    pub ledger: u32,
    /// What kind of account it is, for you (not 0).
    pub code: u16,
    /// Its flags.
    pub flags: AccountFlags,
    /// Opaque references, e.g. the customer it belongs to.
    pub user_data_128: u128,
    /// Opaque reference.
    pub user_data_64: u64,
    /// Opaque reference.
    pub user_data_32: u32,
    /// Echoed in its [`Outcome`](crate::Outcome).
    pub correlation_id: u64,
}

impl Account {
    /// An account with no flags.
    pub fn new(id: u128, ledger: u32, code: u16) -> Account {
        Account {
            id,
            ledger,
            code,
            flags: AccountFlags::NONE,
            user_data_128: 0,
            user_data_64: 0,
            user_data_32: 0,
            correlation_id: 0,
        }
    }

    /// May go below zero.
    pub fn allow_negative(mut self) -> Account {
        self.flags = self.flags | AccountFlags::ALLOW_NEGATIVE;
        self
    }

    /// Adds flags.
    pub fn flags(mut self, flags: AccountFlags) -> Account {
        self.flags = self.flags | flags;
        self
    }

    /// Credits may not exceed debits (and debits are not limited).
    pub fn credits_must_not_exceed_debits(self) -> Account {
        self.flags(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS)
    }

    /// The read model keeps its balance history.
    pub fn history(self) -> Account {
        self.flags(AccountFlags::HISTORY)
    }

    /// Opaque references (any may be 0).
    pub fn user_data(mut self, user_data_128: u128, user_data_64: u64, user_data_32: u32) -> Account {
        (self.user_data_128, self.user_data_64, self.user_data_32) =
            (user_data_128, user_data_64, user_data_32);
        self
    }

    /// Echoed in the outcome.
    pub fn correlation_id(mut self, correlation_id: u64) -> Account {
        self.correlation_id = correlation_id;
        self
    }
}

/// A transfer: `Transfer::new(id, debit, credit, amount).ledger(840).code(1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// The transfer's id (not 0): sending it again is safe, it answers `exists`.
    pub id: u128,
    /// The account whose debits grow.
    pub debit_account_id: u128,
    /// The account whose credits grow.
    pub credit_account_id: u128,
    /// Integer minor units (cents), more than 0.
    pub amount: u64,
    /// The ledger of both accounts (a transfer with ledger 0 is refused).
    pub ledger: u32,
    /// What kind of transfer it is, for you (not 0).
    pub code: u16,
    /// Its flags.
    pub flags: TransferFlags,
    /// The pending transfer a post or void resolves.
    pub pending_id: u128,
    /// Seconds a pending transfer may wait before it expires (0: never).
    pub timeout: u32,
    /// Opaque references, e.g. an invoice or a card authorisation.
    pub user_data_128: u128,
    /// Opaque reference.
    pub user_data_64: u64,
    /// Opaque reference.
    pub user_data_32: u32,
    /// Echoed in its [`Outcome`](crate::Outcome).
    pub correlation_id: u64,
}

impl Transfer {
    /// A transfer of `amount` from `debit` to `credit`; set its ledger and code.
    pub fn new(id: u128, debit: u128, credit: u128, amount: u64) -> Transfer {
        Transfer {
            id,
            debit_account_id: debit,
            credit_account_id: credit,
            amount,
            ledger: 0,
            code: 0,
            flags: TransferFlags::NONE,
            pending_id: 0,
            timeout: 0,
            user_data_128: 0,
            user_data_64: 0,
            user_data_32: 0,
            correlation_id: 0,
        }
    }

    /// Posts pending transfer `pending_id`: all of it (amount 0, accounts, ledger
    /// and code taken from it), or `.amount(n)` of it; the rest is released.
    pub fn post(id: u128, pending_id: u128) -> Transfer {
        let mut transfer = Transfer::new(id, 0, 0, 0);
        transfer.flags = TransferFlags::POST_PENDING;
        transfer.pending_id = pending_id;
        transfer
    }

    /// Releases pending transfer `pending_id`.
    pub fn void(id: u128, pending_id: u128) -> Transfer {
        let mut transfer = Transfer::new(id, 0, 0, 0);
        transfer.flags = TransferFlags::VOID_PENDING;
        transfer.pending_id = pending_id;
        transfer
    }

    /// Reserves the amount (two-phase) until posted, voided or expired.
    pub fn pending(mut self) -> Transfer {
        self.flags = self.flags | TransferFlags::PENDING;
        self
    }

    /// A pending transfer expires after `seconds` (0: never).
    pub fn timeout(mut self, seconds: u32) -> Transfer {
        self.timeout = seconds;
        self
    }

    /// The amount (for a post: how much of the pending amount).
    pub fn amount(mut self, amount: u64) -> Transfer {
        self.amount = amount;
        self
    }

    /// Moves at most the amount: as much as the debit account allows (a sweep).
    pub fn balancing_debit(mut self) -> Transfer {
        self.flags = self.flags | TransferFlags::BALANCING_DEBIT;
        self
    }

    /// Moves at most the amount: as much as the credit account allows.
    pub fn balancing_credit(mut self) -> Transfer {
        self.flags = self.flags | TransferFlags::BALANCING_CREDIT;
        self
    }

    /// Adds flags.
    pub fn flags(mut self, flags: TransferFlags) -> Transfer {
        self.flags = self.flags | flags;
        self
    }

    /// Opaque references (any may be 0).
    pub fn user_data(mut self, user_data_128: u128, user_data_64: u64, user_data_32: u32) -> Transfer {
        (self.user_data_128, self.user_data_64, self.user_data_32) =
            (user_data_128, user_data_64, user_data_32);
        self
    }

    /// The ledger (currency) both accounts keep.
    pub fn ledger(mut self, ledger: u32) -> Transfer {
        self.ledger = ledger;
        self
    }

    /// What kind of transfer it is.
    pub fn code(mut self, code: u16) -> Transfer {
        self.code = code;
        self
    }

    /// Chained with the next transfer in the same group (all or nothing).
    pub fn linked(mut self) -> Transfer {
        self.flags = self.flags | TransferFlags::LINKED;
        self
    }

    /// Echoed in the outcome.
    pub fn correlation_id(mut self, correlation_id: u64) -> Transfer {
        self.correlation_id = correlation_id;
        self
    }
}

/// A command on the wire: an account to open or a transfer to make. Build them from
/// [`Account`] and [`Transfer`] (`.into()`), or from the wire messages directly
/// (load generators).
#[derive(Debug, Clone, Copy)]
pub enum Command {
    /// Open an account.
    CreateAccount(messages::CreateAccount),
    /// Move money.
    Transfer(messages::Transfer),
}

impl From<Account> for Command {
    fn from(account: Account) -> Command {
        Command::CreateAccount(messages::CreateAccount {
            correlation_id: account.correlation_id.into(),
            id: account.id.into(),
            ledger: account.ledger.into(),
            code: account.code.into(),
            flags: account.flags.bits().into(),
            user_data_128: account.user_data_128.into(),
            user_data_64: account.user_data_64.into(),
            user_data_32: account.user_data_32.into(),
            reserved: [0; 4],
        })
    }
}

impl From<Transfer> for Command {
    fn from(transfer: Transfer) -> Command {
        Command::Transfer(messages::Transfer {
            correlation_id: transfer.correlation_id.into(),
            id: transfer.id.into(),
            debit_account_id: transfer.debit_account_id.into(),
            credit_account_id: transfer.credit_account_id.into(),
            amount: transfer.amount.into(),
            ledger: transfer.ledger.into(),
            code: transfer.code.into(),
            flags: transfer.flags.bits().into(),
            pending_id: transfer.pending_id.into(),
            user_data_128: transfer.user_data_128.into(),
            user_data_64: transfer.user_data_64.into(),
            user_data_32: transfer.user_data_32.into(),
            timeout: transfer.timeout.into(),
        })
    }
}

impl From<messages::Transfer> for Command {
    fn from(transfer: messages::Transfer) -> Command {
        Command::Transfer(transfer)
    }
}

impl From<messages::CreateAccount> for Command {
    fn from(account: messages::CreateAccount) -> Command {
        Command::CreateAccount(account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_set_every_field_and_flags_combine() {
        let Command::Transfer(wire) =
            Transfer::new(7, 1, 2, 250).ledger(840).code(3).linked().correlation_id(9).into()
        else {
            panic!("a transfer")
        };
        assert_eq!(
            (wire.id.get(), wire.debit_account_id.get(), wire.credit_account_id.get(), wire.amount.get()),
            (7, 1, 2, 250)
        );
        assert_eq!((wire.ledger.get(), wire.code.get(), wire.correlation_id.get()), (840, 3, 9));
        assert!(wire.is_linked());
        let Command::CreateAccount(account) = Account::new(1, 840, 1).allow_negative().into() else {
            panic!("an account")
        };
        assert_eq!(account.flags.get(), account_flags::ALLOW_NEGATIVE);
        assert!((TransferFlags::NONE | TransferFlags::LINKED).contains(TransferFlags::LINKED));
        let Command::Transfer(post) = Transfer::post(8, 7).amount(100).user_data(5, 6, 7).into() else {
            panic!("a transfer")
        };
        assert_eq!((post.pending_id.get(), post.amount.get()), (7, 100));
        assert_eq!(post.flags.get(), transfer_flags::POST_PENDING);
        assert_eq!((post.user_data_128.get(), post.user_data_64.get(), post.user_data_32.get()), (5, 6, 7));
        let Command::Transfer(hold) =
            Transfer::new(7, 1, 2, 250).ledger(840).code(1).pending().timeout(30).into()
        else {
            panic!("a transfer")
        };
        assert_eq!((hold.flags.get(), hold.timeout.get()), (transfer_flags::PENDING, 30));
        assert!(!TransferFlags::NONE.contains(TransferFlags::LINKED));
    }
}
