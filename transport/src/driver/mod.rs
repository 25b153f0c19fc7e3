//! Socket drivers around the protocol core: they move bytes and read the clock,
//! nothing else (docs/architecture.md, "Design rules" 1). Threads with blocking waits, not a runtime: the
//! sequencer's hot thread owns its [`Publisher`] and each consumer its
//! [`Subscriber`], and neither spins while idle (docs/architecture.md, "Performance").

pub mod mmsg;
pub mod publisher;
pub mod socket;
pub mod subscriber;

pub use publisher::{Publisher, PublisherStats, Targets};
pub use socket::{GrantedBuffers, MulticastOptions, SocketOptions};
pub use subscriber::{Subscriber, SubscriberStats};
