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
    /// Echoed in its [`Outcome`](crate::Outcome).
    pub correlation_id: u64,
}

impl Account {
    /// An account with no flags.
    pub fn new(id: u128, ledger: u32, code: u16) -> Account {
        Account { id, ledger, code, flags: AccountFlags::NONE, correlation_id: 0 }
    }

    /// May go below zero.
    pub fn allow_negative(mut self) -> Account {
        self.flags = self.flags | AccountFlags::ALLOW_NEGATIVE;
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
            correlation_id: 0,
        }
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
            ..Default::default()
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
            ..Default::default()
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
        assert!(!TransferFlags::NONE.contains(TransferFlags::LINKED));
    }
}
