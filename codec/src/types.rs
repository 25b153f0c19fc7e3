//! Value types shared by several messages: 128-bit ids, result codes and flag sets.

use zerocopy::little_endian::U64;

use crate::DecodeError;

crate::sbe_block! {
    /// A 128-bit id as two little-endian u64 words, low word first (SBE has no u128).
    pub struct Id128: size 16 {
        /// Bits 0..64.
        [0] lo: U64,
        /// Bits 64..128.
        [8] hi: U64,
    }
}

impl Id128 {
    /// The id as a number.
    #[inline]
    pub fn get(&self) -> u128 {
        u128::from(self.lo.get()) | (u128::from(self.hi.get()) << 64)
    }

    /// Stores `value`.
    #[inline]
    pub fn set(&mut self, value: u128) {
        *self = Self::from(value);
    }
}

impl From<u128> for Id128 {
    #[inline]
    fn from(value: u128) -> Self {
        // Truncation is the point: split into the two words.
        Id128 { lo: U64::new(value as u64), hi: U64::new((value >> 64) as u64) }
    }
}

impl From<Id128> for u128 {
    #[inline]
    fn from(value: Id128) -> Self {
        value.get()
    }
}

/// Declares a `#[repr]` enum mirroring an SBE `<enum>`, with a checked conversion
/// from the raw wire value and a table of every variant for the drift test.
macro_rules! sbe_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident : $repr:ty {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr($repr)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )*
        }

        impl $name {
            /// Every variant with its schema name, in declaration order.
            pub const ALL: &'static [($name, &'static str)] = &[ $( ($name::$variant, stringify!($variant)), )* ];

            /// Reads a raw wire value.
            #[inline]
            pub fn from_wire(value: $repr) -> Result<Self, DecodeError> {
                match value {
                    $( $value => Ok($name::$variant), )*
                    other => Err(DecodeError::UnknownEnumValue { name: stringify!($name), value: u16::from(other) }),
                }
            }

            /// The raw wire value.
            #[inline]
            pub fn to_wire(self) -> $repr {
                self as $repr
            }

            /// The schema name of the variant, e.g. `InsufficientFunds`.
            pub fn name(self) -> &'static str {
                match self { $( $name::$variant => stringify!($variant), )* }
            }
        }
    };
}

sbe_enum! {
    /// The one outcome of every command (docs/architecture.md, "Ledger semantics").
    pub enum ResultCode: u16 {
        /// Applied.
        Ok = 0,
        /// Same id with the same fields was applied before: idempotent success.
        Exists = 1,
        /// Same id was applied before with other fields.
        ExistsWithDifferentFields = 2,
        /// Ids must be non-zero.
        IdMustNotBeZero = 3,
        /// The ledger (currency) code must be non-zero.
        LedgerMustNotBeZero = 4,
        /// The account or transfer code must be non-zero.
        CodeMustNotBeZero = 5,
        /// No account with the debit account id.
        DebitAccountNotFound = 6,
        /// No account with the credit account id.
        CreditAccountNotFound = 7,
        /// Debit and credit account are the same.
        AccountsMustBeDifferent = 8,
        /// The transfer and its accounts are on different ledgers.
        LedgerMismatch = 9,
        /// Amount is zero.
        AmountMustBePositive = 10,
        /// The debit would exceed the account's credits (no-overdraft account).
        InsufficientFunds = 11,
        /// A posted total would overflow u64.
        Overflow = 12,
        /// Another transfer in the same linked chain failed; nothing in the chain applied.
        LinkedEventFailed = 13,
        /// The last command of a batch has the linked flag: the chain never closes.
        LinkedChainOpen = 14,
        /// A flag bit that this version does not define is set.
        ReservedFlag = 15,
        /// The sequencer or gateway is at capacity; retry later with the same id.
        Busy = 16,
        /// Two flags that exclude each other are both set (account: allow_negative
        /// with a limit, or both limits; transfer: post with void, pending with
        /// post/void, balancing with post/void).
        FlagsAreMutuallyExclusive = 17,
        /// The credit would exceed the account's debits (credits_must_not_exceed_debits).
        ExceedsDebits = 18,
        /// A post or void names no pending transfer (pending_id zero).
        PendingIdMustNotBeZero = 19,
        /// Only a post or void may name a pending transfer.
        PendingIdMustBeZero = 20,
        /// A post or void names itself as its pending transfer.
        PendingIdMustBeDifferent = 21,
        /// No transfer with the pending id was applied.
        PendingTransferNotFound = 22,
        /// The transfer with the pending id is not a pending transfer.
        PendingTransferNotPending = 23,
        /// The pending transfer was posted already.
        PendingTransferAlreadyPosted = 24,
        /// The pending transfer was voided already.
        PendingTransferAlreadyVoided = 25,
        /// The pending transfer reached its timeout and was released.
        PendingTransferExpired = 26,
        /// A post for more than the pending amount (or a void for another amount).
        ExceedsPendingTransferAmount = 27,
        /// A post or void names other accounts than its pending transfer.
        PendingTransferHasDifferentAccounts = 28,
        /// A post or void names another ledger than its pending transfer.
        PendingTransferHasDifferentLedger = 29,
        /// A post or void names another code than its pending transfer.
        PendingTransferHasDifferentCode = 30,
        /// A timeout on a transfer that is not pending.
        TimeoutReservedForPendingTransfer = 31,
        /// A closing transfer (closing_debit/closing_credit) must be pending.
        ClosingTransferMustBePending = 32,
        /// The debit account is closed.
        DebitAccountClosed = 33,
        /// The credit account is closed.
        CreditAccountClosed = 34,
    }
}

sbe_enum! {
    /// What a datagram carries (`PacketKind` in the schema).
    pub enum PacketKind: u8 {
        /// `message_count` sequenced events.
        Data = 1,
        /// Exactly one control message (heartbeat, NAK, status, NAK-unavailable).
        Control = 2,
    }
}

impl ResultCode {
    /// The name in the JSON APIs and tools: `InsufficientFunds` → `insufficient_funds`.
    /// Derived once from the variant names, so the two can never disagree.
    pub fn snake_name(self) -> &'static str {
        snake_names().iter().find(|(code, _)| *code == self).map_or("unknown", |(_, name)| name.as_str())
    }

    /// The code whose [`snake_name`](Self::snake_name) is `name`.
    pub fn from_snake_name(name: &str) -> Option<ResultCode> {
        snake_names().iter().find(|(_, snake)| snake == name).map(|(code, _)| *code)
    }

    /// Whether the command took effect or had already taken effect identically.
    #[inline]
    pub fn is_success(self) -> bool {
        matches!(self, ResultCode::Ok | ResultCode::Exists)
    }
}

/// Every result code with its snake_case name, built on first use.
fn snake_names() -> &'static [(ResultCode, String)] {
    static TABLE: std::sync::OnceLock<Vec<(ResultCode, String)>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        ResultCode::ALL
            .iter()
            .map(|(code, name)| {
                let mut snake = String::new();
                for (index, ch) in name.chars().enumerate() {
                    if ch.is_ascii_uppercase() {
                        if index > 0 {
                            snake.push('_');
                        }
                        snake.push(ch.to_ascii_lowercase());
                    } else {
                        snake.push(ch);
                    }
                }
                (*code, snake)
            })
            .collect()
    })
}

/// Bits of `AccountFlags` (schema `<set>`).
///
/// Without flags an account may not be overdrawn: debits (posted and pending) must
/// not exceed posted credits. `ALLOW_NEGATIVE` lifts that; `CREDITS_MUST_NOT_EXCEED_DEBITS`
/// replaces it with the mirror rule.
pub mod account_flags {
    /// Debits may exceed credits (settlement accounts). Default: no overdraft.
    pub const ALLOW_NEGATIVE: u16 = 1 << 0;
    /// Debits (posted + pending) must not exceed posted credits: the default rule,
    /// stated explicitly (since version 2).
    pub const DEBITS_MUST_NOT_EXCEED_CREDITS: u16 = 1 << 1;
    /// Credits (posted + pending) must not exceed posted debits, and debits are not
    /// limited (since version 2).
    pub const CREDITS_MUST_NOT_EXCEED_DEBITS: u16 = 1 << 2;
    /// The read model keeps the balances after every posting (since version 2).
    pub const HISTORY: u16 = 1 << 3;
    /// Takes no new transfers; set by a closing transfer, cleared by voiding it
    /// (since version 2).
    pub const CLOSED: u16 = 1 << 4;
    /// Every bit this version defines; any other bit is `ReservedFlag`.
    pub const ALL: u16 =
        ALLOW_NEGATIVE | DEBITS_MUST_NOT_EXCEED_CREDITS | CREDITS_MUST_NOT_EXCEED_DEBITS | HISTORY | CLOSED;
    /// Every flag with its name in the JSON APIs and tools, in bit order.
    pub const NAMES: [(&str, u16); 5] = [
        ("allow_negative", ALLOW_NEGATIVE),
        ("debits_must_not_exceed_credits", DEBITS_MUST_NOT_EXCEED_CREDITS),
        ("credits_must_not_exceed_debits", CREDITS_MUST_NOT_EXCEED_DEBITS),
        ("history", HISTORY),
        ("closed", CLOSED),
    ];
}

/// Bits of `TransferFlags` (schema `<set>`).
pub mod transfer_flags {
    /// This transfer succeeds or fails together with the next one.
    pub const LINKED: u16 = 1 << 0;
    /// Reserves the amount (debits_pending/credits_pending) until posted, voided or
    /// expired (since version 2).
    pub const PENDING: u16 = 1 << 1;
    /// Posts the pending transfer `pending_id`: all of it, or `amount` of it (since
    /// version 2).
    pub const POST_PENDING: u16 = 1 << 2;
    /// Releases the pending transfer `pending_id` (since version 2).
    pub const VOID_PENDING: u16 = 1 << 3;
    /// Moves at most `amount`: as much as the debit account's limit allows (since
    /// version 2).
    pub const BALANCING_DEBIT: u16 = 1 << 4;
    /// Moves at most `amount`: as much as the credit account's limit allows (since
    /// version 2).
    pub const BALANCING_CREDIT: u16 = 1 << 5;
    /// Closes the debit account while pending (since version 2).
    pub const CLOSING_DEBIT: u16 = 1 << 6;
    /// Closes the credit account while pending (since version 2).
    pub const CLOSING_CREDIT: u16 = 1 << 7;
    /// Every bit this version defines; any other bit is `ReservedFlag`.
    pub const ALL: u16 = LINKED
        | PENDING
        | POST_PENDING
        | VOID_PENDING
        | BALANCING_DEBIT
        | BALANCING_CREDIT
        | CLOSING_DEBIT
        | CLOSING_CREDIT;
    /// Every flag with its name in the JSON APIs and tools, in bit order.
    pub const NAMES: [(&str, u16); 8] = [
        ("linked", LINKED),
        ("pending", PENDING),
        ("post", POST_PENDING),
        ("void", VOID_PENDING),
        ("balancing_debit", BALANCING_DEBIT),
        ("balancing_credit", BALANCING_CREDIT),
        ("closing_debit", CLOSING_DEBIT),
        ("closing_credit", CLOSING_CREDIT),
    ];
}

#[cfg(test)]
mod tests {
    use super::ResultCode;

    #[test]
    fn snake_names_round_trip() {
        assert_eq!(ResultCode::InsufficientFunds.snake_name(), "insufficient_funds");
        assert_eq!(ResultCode::Ok.snake_name(), "ok");
        for (code, _) in ResultCode::ALL {
            assert_eq!(ResultCode::from_snake_name(code.snake_name()), Some(*code));
        }
        assert_eq!(ResultCode::from_snake_name("InsufficientFunds"), None);
    }
}
