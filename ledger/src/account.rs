//! An account's state as the ledger keeps it, and a pending transfer's.

use ledgerbus_codec::account_flags;

/// Everything the ledger needs to decide about an account, except its id (the map
/// key) and its user data (kept aside, see [`UserData`]). 48 bytes, so an account
/// costs about 64 bytes with its hash-table slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Account {
    /// Sum of amounts debited, in minor units.
    pub debits_posted: u64,
    /// Sum of amounts credited, in minor units.
    pub credits_posted: u64,
    /// Sum of debits reserved by pending transfers.
    pub debits_pending: u64,
    /// Sum of credits reserved by pending transfers.
    pub credits_pending: u64,
    /// Sequencer timestamp of the creation.
    pub timestamp_ns: u64,
    /// Ledger (currency) code.
    pub ledger: u32,
    /// Account kind.
    pub code: u16,
    /// `account_flags` bits.
    pub flags: u16,
}

const _: () = assert!(core::mem::size_of::<Account>() == 48);

impl Account {
    /// Whether debits may exceed credits (settlement accounts).
    #[inline]
    pub fn allows_negative(&self) -> bool {
        self.flags & account_flags::ALLOW_NEGATIVE != 0
    }

    /// Whether debits (posted + pending) are held to posted credits: the default,
    /// unless the account allows negative balances or holds credits to debits instead.
    #[inline]
    pub fn limits_debits(&self) -> bool {
        self.flags & account_flags::DEBITS_MUST_NOT_EXCEED_CREDITS != 0
            || self.flags & (account_flags::ALLOW_NEGATIVE | account_flags::CREDITS_MUST_NOT_EXCEED_DEBITS)
                == 0
    }

    /// Whether credits (posted + pending) are held to posted debits.
    #[inline]
    pub fn limits_credits(&self) -> bool {
        self.flags & account_flags::CREDITS_MUST_NOT_EXCEED_DEBITS != 0
    }

    /// Whether the account takes no new transfers.
    #[inline]
    pub fn is_closed(&self) -> bool {
        self.flags & account_flags::CLOSED != 0
    }

    /// Credits minus debits, posted only, signed.
    #[inline]
    pub fn balance(&self) -> i128 {
        i128::from(self.credits_posted) - i128::from(self.debits_posted)
    }

    /// What can still be spent: posted credits minus posted and pending debits.
    #[inline]
    pub fn available(&self) -> i128 {
        i128::from(self.credits_posted) - i128::from(self.debits_posted) - i128::from(self.debits_pending)
    }

    /// Whether any field added in schema version 2 is set (the state digest covers
    /// them only then, so a version 1 log digests as it always did).
    #[inline]
    pub(crate) fn has_v2_fields(&self) -> bool {
        self.debits_pending != 0 || self.credits_pending != 0
    }
}

/// An account's opaque references (schema version 2). The decider needs them only
/// to tell a retried CreateAccount from a different one, so they live in a map of
/// their own, holding only accounts that have any: accounts without user data
/// cost nothing for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserData {
    /// 128-bit reference.
    pub user_data_128: u128,
    /// 64-bit reference.
    pub user_data_64: u64,
    /// 32-bit reference.
    pub user_data_32: u32,
}

impl UserData {
    /// Whether every field is zero.
    pub fn is_empty(&self) -> bool {
        *self == UserData::default()
    }
}

/// Where a pending transfer stands. Kept after it is resolved, so that a second
/// post or void gets the precise refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PendingState {
    /// Reserved, waiting for a post, a void or its timeout.
    Pending = 1,
    /// Posted (all or part of it).
    Posted = 2,
    /// Voided.
    Voided = 3,
    /// Released by its timeout.
    Expired = 4,
}

impl PendingState {
    /// The wire value (`TransferRecord.pendingState`).
    pub fn to_wire(self) -> u16 {
        self as u16
    }

    /// From the wire value.
    pub fn from_wire(value: u16) -> Option<PendingState> {
        match value {
            1 => Some(PendingState::Pending),
            2 => Some(PendingState::Posted),
            3 => Some(PendingState::Voided),
            4 => Some(PendingState::Expired),
            _ => None,
        }
    }

    /// Lower-case name for the JSON API.
    pub fn name(self) -> &'static str {
        match self {
            PendingState::Pending => "pending",
            PendingState::Posted => "posted",
            PendingState::Voided => "voided",
            PendingState::Expired => "expired",
        }
    }
}

/// A transfer applied with the `pending` flag: what it reserved and where it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingTransfer {
    /// Debit account id.
    pub debit: u128,
    /// Credit account id.
    pub credit: u128,
    /// The amount reserved.
    pub amount: u64,
    /// When it expires (sequencer time stamp, ns); 0: never.
    pub expires_at_ns: u64,
    /// Ledger.
    pub ledger: u32,
    /// Code.
    pub code: u16,
    /// Its `transfer_flags` (closing flags matter when it is voided).
    pub flags: u16,
    /// Where it stands.
    pub state: PendingState,
    /// Its user data, inherited by a post or void that gives none.
    pub user_data_128: u128,
    /// Its user data.
    pub user_data_64: u64,
    /// Its user data.
    pub user_data_32: u32,
}

impl PendingTransfer {
    /// Its user data as the side map keeps it.
    pub fn user_data(&self) -> UserData {
        UserData {
            user_data_128: self.user_data_128,
            user_data_64: self.user_data_64,
            user_data_32: self.user_data_32,
        }
    }
}
