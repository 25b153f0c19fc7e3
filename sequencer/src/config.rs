//! What the sequencer is given ([`SequencerConfig`]) and how it fails
//! ([`SequencerError`]).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ledgerbus_log::journal::{Durability, JournalError};
use ledgerbus_protocol::auth;
use ledgerbus_transport::driver::{SocketOptions, Targets};
use ledgerbus_transport::idle::IdleStrategy;
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
    /// The replicated group this sequencer is a member of; `None`: a single sequencer.
    pub group: Option<GroupConfig>,
    /// How the hot thread and the journal thread wait for work.
    pub idle: IdleStrategy,
}

/// A member of a replicated sequencer group (docs/architecture.md, "Sequencer group").
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// This member's replica id, 1-based: its position in `members`.
    pub replica_id: u64,
    /// Every member's replication address, in replica-id order: the same list, in
    /// the same order, on every member (3 or 5 of them).
    pub members: Vec<SocketAddr>,
    /// One Raft tick. Elections start after 15–30 ticks without a leader; the leader
    /// sends heartbeats every 3.
    pub tick: std::time::Duration,
}

impl GroupConfig {
    /// Checks the shape of the group.
    pub fn validate(&self) -> Result<(), SequencerError> {
        let size = self.members.len();
        if size != 3 && size != 5 {
            return Err(SequencerError::Config(format!(
                "a group has 3 or 5 members, not {size} (one sequencer needs no --replicas)"
            )));
        }
        if self.replica_id == 0 || self.replica_id as usize > size {
            return Err(SequencerError::Config(format!(
                "--replica-id {} is not a position in the {size} --replicas (1 to {size})",
                self.replica_id
            )));
        }
        let mut distinct = self.members.clone();
        distinct.sort();
        distinct.dedup();
        if distinct.len() != size {
            return Err(SequencerError::Config("--replicas lists an address twice".into()));
        }
        if self.tick.is_zero() {
            return Err(SequencerError::Config("the Raft tick must be positive".into()));
        }
        Ok(())
    }
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
            group: None,
            idle: IdleStrategy::Block,
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
