//! What the sequencer is given ([`SequencerConfig`]) and how it fails
//! ([`SequencerError`]).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ledgerbus_log::journal::{Durability, JournalError};
use ledgerbus_protocol::auth;
use ledgerbus_transport::driver::{SocketOptions, Targets};
use ledgerbus_transport::{BusKey, BusKeys, BusSecurity, SenderConfig};

/// Everything the sequencer needs to run.
#[derive(Debug, Clone)]
pub struct SequencerConfig {
    /// Journal directory.
    pub data_dir: PathBuf,
    /// Where gateways connect.
    pub gateway_listen: SocketAddr,
    /// Where NAKs and status messages arrive (and data is sent from).
    pub control_listen: SocketAddr,
    /// Bulk replay service.
    pub replay_listen: SocketAddr,
    /// Prometheus endpoint, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Subscribers or multicast group.
    pub targets: Targets,
    /// When an event counts as durable.
    pub durability: Durability,
    /// Transport settings (the session id is the journal's).
    pub sender: SenderConfig,
    /// Socket buffer sizes.
    pub socket: SocketOptions,
    /// Shared secret gateways must prove they know.
    pub secret: Vec<u8>,
    /// Bus keys: the bulk replay service accepts a credential derived from any of
    /// them (the transport's sealing uses `sender.security`).
    pub bus_keys: Arc<BusKeys>,
    /// Journal segment size before rolling.
    pub segment_size_max: u64,
    /// Most events decided per group commit.
    pub batch_events_max: usize,
    /// Transfer ids the idempotency index holds before it grows; its memory is
    /// allocated and faulted in at start.
    pub transfer_capacity: usize,
}

/// Default [`SequencerConfig::transfer_capacity`]: about 48 MiB.
pub const TRANSFER_CAPACITY_DEFAULT: usize = 1 << 20;

impl SequencerConfig {
    /// A configuration with every default for `data_dir`, listening on ephemeral
    /// 127.0.0.1 ports (tests) and publishing to `subscribers`.
    pub fn local(
        data_dir: PathBuf,
        subscribers: Vec<std::net::SocketAddrV4>,
        secret: &[u8],
    ) -> SequencerConfig {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let bus_keys = Arc::new(
            BusKeys::new(vec![BusKey::from_bytes(auth::nonce().expect("randomness"))]).expect("one key"),
        );
        SequencerConfig {
            bus_keys: bus_keys.clone(),
            data_dir,
            gateway_listen: any,
            control_listen: any,
            replay_listen: any,
            metrics_listen: None,
            targets: Targets::Unicast(subscribers),
            durability: Durability::Fsync,
            sender: SenderConfig {
                security: BusSecurity::Aead(bus_keys),
                instance: auth::random_u64().expect("randomness"),
                ..SenderConfig::default()
            },
            socket: SocketOptions::default(),
            secret: secret.to_vec(),
            segment_size_max: 256 << 20,
            batch_events_max: 65_536,
            transfer_capacity: TRANSFER_CAPACITY_DEFAULT,
        }
    }
}

/// Why the sequencer could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum SequencerError {
    /// The journal is unreadable or unwritable.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A socket could not be opened or used.
    #[error("{what}: {source}")]
    Io {
        /// Which socket or operation.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SequencerError {
    let what = what.into();
    move |source| SequencerError::Io { what, source }
}
