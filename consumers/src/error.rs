//! Why a consumer refused an event or could not keep it: every failure a sink can
//! report, named, so that callers can tell corruption from I/O.

use ledgerbus_ledger::ApplyError;
use ledgerbus_log::journal::JournalError;

/// Why a sink refused an event or could not keep it.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The ledger refused the event (out of place, undecodable, no longer applies).
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// An event applies a transfer id that was applied before: a corrupt log.
    #[error("event {sequence} applies transfer {id} a second time")]
    DuplicateTransfer {
        /// The event.
        sequence: u64,
        /// The transfer id.
        id: u128,
    },
    /// An event applies a transfer with id 0, which the ledger never accepts.
    #[error("event {sequence} applies a transfer with id 0")]
    ZeroTransferId {
        /// The event.
        sequence: u64,
    },
    /// An event arrived where another sequence belongs.
    #[error("event {sequence} delivered where {expected} belongs")]
    OutOfOrder {
        /// The event's sequence.
        sequence: u64,
        /// The sequence expected.
        expected: u64,
    },
    /// The read model's transfer store is full (2^32 transfers).
    #[error("the read model holds 2^32 transfers; it is full")]
    StoreFull,
    /// The read model's lock was poisoned by a panic elsewhere.
    #[error("the read model's lock is poisoned")]
    Poisoned,
    /// The disk consumer's journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A snapshot is further than the journal beside it: the data directory was
    /// tampered with or mixed.
    #[error("snapshot at {snapshot} is ahead of the journal, which ends before {journal_end}")]
    SnapshotAhead {
        /// The snapshot's next sequence.
        snapshot: u64,
        /// The journal's next sequence.
        journal_end: u64,
    },
    /// The SQL projection's database failed or holds something it cannot continue.
    #[error(transparent)]
    Sql(#[from] crate::sql::SqlError),
    /// A file or directory could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: std::path::PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
}
