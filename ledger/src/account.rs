//! An account's state as the ledger keeps it.

use ledgerbus_codec::account_flags;

/// Everything the ledger knows about an account except its id (the map key).
/// 32 bytes, so an account costs about 56 bytes with its hash-table slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Account {
    /// Sum of amounts debited, in minor units.
    pub debits_posted: u64,
    /// Sum of amounts credited, in minor units.
    pub credits_posted: u64,
    /// Sequencer timestamp of the creation.
    pub timestamp_ns: u64,
    /// Ledger (currency) code.
    pub ledger: u32,
    /// Account kind.
    pub code: u16,
    /// `account_flags` bits.
    pub flags: u16,
}

const _: () = assert!(core::mem::size_of::<Account>() == 32);

impl Account {
    /// Whether debits may exceed credits (settlement accounts).
    #[inline]
    pub fn allows_negative(&self) -> bool {
        self.flags & account_flags::ALLOW_NEGATIVE != 0
    }

    /// Credits minus debits, signed.
    #[inline]
    pub fn balance(&self) -> i128 {
        i128::from(self.credits_posted) - i128::from(self.debits_posted)
    }
}
