//! The log (docs/architecture.md, "Sequencer" and "Consumers"): the append-only
//! journal the sequencer writes and the disk consumer keeps, the readers that walk
//! it, the bulk replay service that serves any range of it over an authenticated,
//! encrypted TCP stream and the client that follows it, and the archive that answers
//! NAKs older than the transport's ring from it.
//!
//! # Layout
//! - [`journal`]: segments of CRC-checked records, torn-tail recovery, group commit,
//!   readers.
//! - [`head`]: [`LogHead`], where the log stands, and what the replay service asks
//!   of its host.
//! - [`replay`]: the bulk replay service.
//! - [`replay_client`]: its client: the session and head, and any range.
//! - [`sealed_stream`]: the AES-256-GCM records replay travels in.
//! - [`archive`]: old NAKs answered from the journal, off the hot thread.

pub mod archive;
pub mod head;
pub mod journal;
pub mod replay;
pub mod replay_client;
pub mod sealed_stream;

pub use head::{LogHead, ReplayHost};
pub use journal::Durability;
