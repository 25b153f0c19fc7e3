//! The replicated sequencer group (docs/architecture.md, "Sequencer group"): 3 or 5
//! members run Raft (raft-rs, a well-tested library; no consensus is home-made here)
//! over the sequencer's journal. One Raft entry is one group commit, so replication
//! costs one round trip per batch, not per transfer; a batch is acknowledged and
//! published only once a majority holds it durably.
//!
//! - [`store`]: the Raft log kept in the journal plus per-entry metadata.
//! - [`member`]: one member, sans-IO: ticks and messages in, messages, committed
//!   events and replies out.
//! - [`rejoin`]: a member that starts with an empty disk votes only once that is safe.
//! - [`journal_disk`]: the process's disk: the journal directory.
//! - [`peers`]: authenticated, encrypted replication links.
//! - `driver`: the hot thread of a member: sockets, ticks and the member.
//! - [`mem_disk`]: the simulator's disk (crashes, torn writes, wipes).

pub(crate) mod driver;
pub mod journal_disk;
pub mod mem_disk;
pub mod member;
pub mod peers;
pub mod rejoin;
pub mod store;

pub use member::{Member, MemberConfig, MemberStatus, Output, Proposed, RoleChange};
pub use store::{Disk, EntryMeta, Loaded, LogStore};

/// The error for a log that does not check out (a bug or corruption, never input
/// from outside the group: peers are authenticated members).
fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// A `slog` logger for raft-rs that writes through `tracing` (target `raft`): its
/// warnings as warnings, everything else at debug level.
pub fn raft_logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let mut fields = KeyValues(String::new());
        let _ = slog::KV::serialize(&record.kv(), record, &mut fields);
        let _ = slog::KV::serialize(values, record, &mut fields);
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}{}", record.msg(), fields.0)
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}{}", record.msg(), fields.0),
            _ => tracing::debug!(target: "raft", "{}{}", record.msg(), fields.0),
        }
        Ok(())
    }
}

struct KeyValues(String);

impl slog::Serializer for KeyValues {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
        use std::fmt::Write;
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}
