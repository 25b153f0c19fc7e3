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
pub mod account_flags {
    /// Debits may exceed credits (settlement accounts). Default: no overdraft.
    pub const ALLOW_NEGATIVE: u16 = 1 << 0;
    /// Every bit this version defines; any other bit is `ReservedFlag`.
    pub const ALL: u16 = ALLOW_NEGATIVE;
}

/// Bits of `TransferFlags` (schema `<set>`).
pub mod transfer_flags {
    /// This transfer succeeds or fails together with the next one.
    pub const LINKED: u16 = 1 << 0;
    /// Every bit this version defines; any other bit is `ReservedFlag`.
    pub const ALL: u16 = LINKED;
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
