//! The reliable, sequenced UDP bus (docs/architecture.md, "Transport").
//!
//! The protocol is two plain state machines, [`Sender`] and [`Receiver`], with no
//! sockets and no clock inside: bytes and `now` go in, datagrams and the next timer
//! deadline come out (the quinn-proto shape, docs/architecture.md, "Design rules" 1). Loss, reordering and
//! duplication are therefore tested deterministically by [`sim`], and the socket
//! drivers in [`driver`] only move bytes.
//!
//! # Layout
//! - [`time`]: [`MonoTime`], the only notion of time in the core.
//! - [`config`]: every timing and size, with defaults and validation.
//! - [`ring`]: the sender's retransmit ring of datagrams.
//! - [`sender`]: packing, heartbeats, NAK answers, flow control from status messages.
//! - [`reorder`]: the receiver's bounded buffer of out-of-order datagrams.
//! - [`receiver`]: gap detection, NAK scheduling, in-order exactly-once delivery.
//! - [`security`]: AES-256-GCM sealing of every datagram, keys, replay guard.
//! - [`stats`]: counters for metrics.
//! - [`sim`]: a seeded network simulator with loss, bursts, reordering, duplication.
//! - [`driver`]: the thin socket drivers, `Publisher` and `Subscriber`
//!   (`sendmmsg`/`recvmmsg`, unicast fan-out or multicast).

pub mod config;
pub mod driver;
pub mod idle;
pub mod receiver;
pub mod reorder;
pub mod ring;
pub mod security;
pub mod sender;
pub mod sim;
pub mod stats;
pub mod time;

pub use config::{ConfigError, DeliveryMode, ReceiverConfig, SenderConfig};
pub use receiver::{Receiver, ReceiverEvent};
pub use security::{BusKey, BusKeys, BusSecurity, RecordDirection, ReplayKey};
pub use sender::{ArchiveRequest, Destination, PublishError, ReceiverPosition, Sender, Transmit};
pub use stats::{ReceiverStats, SenderStats};
pub use time::{monotonic_now, MonoTime};
