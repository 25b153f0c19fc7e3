//! The sequencer process: recovery, then one hot thread (`hot_loop`) that
//! reads gateway commands, decides them, journals them (group commit), and only then
//! publishes the events and answers the gateways; plus a replay service, the archive
//! and a metrics endpoint on their own threads. [`start`] is those three steps:
//! [`recover`], [`bind`], [`spawn`].

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use ledgerbus_ledger::{Ledger, Replica};
use ledgerbus_log::archive::{Archive, ArchiveConfig};
use ledgerbus_log::journal::{Durability, JournalWriter, Recovered};
use ledgerbus_log::{replay, LogHead};
use ledgerbus_protocol::auth;
use ledgerbus_transport::driver::{Publisher, Targets};
use ledgerbus_transport::SenderConfig;

use crate::config::{io_err, GroupConfig, SequencerConfig, SequencerError};
use crate::core::SequencerCore;
use crate::gateways::GatewayPort;
use crate::group::driver::GroupLoop;
use crate::group::journal_disk::JournalDisk;
use crate::group::peers::{PeerConfig, PeerNet};
use crate::group::{raft_logger, Member, MemberConfig};
use crate::hot_loop::HotLoop;
use crate::metrics::{self, SequencerMetrics};
use crate::pipeline::CommitPipeline;

/// A started sequencer: its addresses, and the handle to stop it.
pub struct RunningSequencer {
    /// Where gateways connect.
    pub gateway_addr: SocketAddr,
    /// Where consumers send NAKs and status messages.
    pub control_addr: SocketAddr,
    /// Bulk replay service.
    pub replay_addr: SocketAddr,
    /// Prometheus endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// The log's session.
    pub session_id: u64,
    /// Events recovered from the journal at start.
    pub recovered_events: u64,
    /// Counters.
    pub metrics: Arc<SequencerMetrics>,
    shutdown: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), SequencerError>>>,
}

impl RunningSequencer {
    /// The flag that stops the sequencer when set (e.g. from a signal handler).
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.shutdown)
    }

    /// Whether the hot thread is still running (it stops on shutdown or on a fatal error).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|thread| !thread.is_finished())
    }

    /// Stops intake, flushes and publishes what was decided, and waits for the end.
    pub fn stop(mut self) -> Result<(), SequencerError> {
        self.shutdown.store(true, Ordering::Release);
        self.join_inner()
    }

    /// Waits until the sequencer stops (after its shutdown flag is set or an error).
    pub fn join(mut self) -> Result<(), SequencerError> {
        self.join_inner()
    }

    fn join_inner(&mut self) -> Result<(), SequencerError> {
        match self.thread.take() {
            Some(thread) => {
                thread.join().unwrap_or_else(|_| Err(SequencerError::Config("hot thread panicked".into())))
            }
            None => Ok(()),
        }
    }
}

impl Drop for RunningSequencer {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Release);
        let _ = self.join_inner();
    }
}

/// Recovers from the journal, binds every socket and starts the threads.
pub fn start(config: SequencerConfig) -> Result<RunningSequencer, SequencerError> {
    if config.secret.len() < 16 {
        return Err(SequencerError::Config("the gateway secret must be at least 16 bytes".into()));
    }
    if let Some(group) = config.group.clone() {
        return start_group(config, group);
    }
    let recovered = recover(&config)?;
    let sockets = bind(&config, &recovered.log)?;
    spawn(config, recovered, sockets)
}

/// The state recovered from the journal, and the journal open for appending.
pub struct RecoveredState {
    core: SequencerCore,
    journal: JournalWriter,
    log: Recovered,
}

/// Sizes the ledger for what the journal holds and replays it.
pub fn recover(config: &SequencerConfig) -> Result<RecoveredState, SequencerError> {
    let started = Instant::now();
    // Size the ledger for what the journal holds (about 100 bytes per event), so
    // that replay never rehashes.
    let journal_bytes: u64 = ledgerbus_log::journal::list_segments(&config.data_dir)?
        .iter()
        .filter_map(|(_, path)| std::fs::metadata(path).ok())
        .map(|meta| meta.len())
        .sum();
    let expected_events = (journal_bytes / 100) as usize;
    let transfers = config.transfer_capacity.max(expected_events + expected_events / 4 + 1_024);
    let ledger = Ledger::with_capacity(1_024, transfers);
    // Back the index now: faulting its pages in later would stall deciding (a VM
    // can take most of a second per few hundred megabytes).
    ledger.populate_transfer_index();
    tracing::info!(
        transfer_capacity = ledger.transfer_capacity(),
        mib = ledger.memory_bytes() >> 20,
        ms = started.elapsed().as_millis() as u64,
        "transfer index allocated"
    );
    let mut replica = Replica::new(ledger);
    let new_session = auth::random_u64().map_err(io_err("random session id"))?;
    let (journal, log) = crate::recovery::recover(
        &config.data_dir,
        config.durability,
        config.segment_size_max,
        new_session,
        &mut replica,
    )?;
    let core = SequencerCore::new(replica);
    let elapsed = started.elapsed().as_secs_f64();
    tracing::info!(
        session = format_args!("{:#018x}", log.session_id),
        events = log.events,
        next_sequence = log.next_sequence,
        seconds = elapsed,
        events_per_sec = (log.events as f64 / elapsed.max(1e-9)) as u64,
        accounts = core.ledger().account_count(),
        "journal recovered"
    );
    assert_eq!(core.next_sequence(), log.next_sequence, "recovery ends where the journal ends");
    Ok(RecoveredState { core, journal, log })
}

/// Every socket the sequencer serves, bound.
pub struct Sockets {
    publisher: Publisher,
    gateways: TcpListener,
    replay: TcpListener,
    metrics: Option<TcpListener>,
}

/// Binds the bus socket, the gateway and replay listeners and the metrics endpoint.
pub fn bind(config: &SequencerConfig, log: &Recovered) -> Result<Sockets, SequencerError> {
    // Configured subscribers may NAK before their first status message; anyone else
    // must have reported from that address first (no reflection at third parties).
    let allowed_requesters = match &config.targets {
        Targets::Unicast(list) => list.iter().map(|a| SocketAddr::V4(*a)).collect(),
        Targets::Multicast { .. } => Vec::new(),
    };
    let sender = SenderConfig {
        session_id: log.session_id,
        restrict_naks: true,
        allowed_requesters,
        // NAKs older than the ring are served from the journal.
        archive_fallback: true,
        ..config.sender.clone()
    };
    let publisher = Publisher::new(
        sender,
        log.next_sequence,
        config.control_listen,
        config.targets.clone(),
        config.socket,
    )
    .map_err(io_err(format!("bus socket {}", config.control_listen)))?;
    let gateways = TcpListener::bind(config.gateway_listen)
        .map_err(io_err(format!("gateway listener {}", config.gateway_listen)))?;
    gateways.set_nonblocking(true).map_err(io_err("gateway listener"))?;
    let replay = TcpListener::bind(config.replay_listen)
        .map_err(io_err(format!("replay listener {}", config.replay_listen)))?;
    let metrics = config
        .metrics_listen
        .map(|address| TcpListener::bind(address).map_err(io_err(format!("metrics listener {address}"))))
        .transpose()?;
    Ok(Sockets { publisher, gateways, replay, metrics })
}

/// The services every sequencer runs beside its hot thread, started.
struct Services {
    running: RunningSequencer,
    metrics: Arc<SequencerMetrics>,
    archive: Archive,
    publisher: Publisher,
    gateways: TcpListener,
}

/// Starts the metrics endpoint, the replay service and the archive.
fn spawn_services(
    config: &SequencerConfig,
    log: &Recovered,
    state_hash: u64,
    sockets: Sockets,
) -> Result<Services, SequencerError> {
    let Sockets { publisher, gateways, replay, metrics: metrics_listener } = sockets;
    let metrics = Arc::new(SequencerMetrics::default());
    metrics.set_head(LogHead { last_sequence: log.next_sequence - 1, state_hash, session: log.session_id });
    let metrics_addr = match metrics_listener {
        Some(listener) => {
            let local = listener.local_addr().map_err(io_err("metrics listener"))?;
            metrics::serve_sequencer(listener, Arc::clone(&metrics)).map_err(io_err("metrics thread"))?;
            Some(local)
        }
        None => None,
    };
    let running = RunningSequencer {
        gateway_addr: gateways.local_addr().map_err(io_err("gateway listener"))?,
        control_addr: publisher.local_addr().map_err(io_err("bus socket"))?,
        replay_addr: replay.local_addr().map_err(io_err("replay listener"))?,
        metrics_addr,
        session_id: log.session_id,
        recovered_events: log.events,
        metrics: Arc::clone(&metrics),
        shutdown: Arc::new(AtomicBool::new(false)),
        thread: None,
    };
    replay::serve(
        replay,
        config.data_dir.clone(),
        config.bus_keys.replay_keys(),
        Arc::clone(&metrics) as Arc<dyn ledgerbus_log::ReplayHost>,
        Arc::clone(&running.shutdown),
    )
    .map_err(io_err("replay thread"))?;
    let archive = Archive::start(ArchiveConfig {
        dir: config.data_dir.clone(),
        stream_id: config.sender.stream_id,
        session_id: log.session_id,
        datagram_size_max: config.sender.datagram_size_max,
        bind: config.control_listen,
        security: config.sender.security.clone(),
    })
    .map_err(io_err("archive thread"))?;
    Ok(Services { running, metrics, archive, publisher, gateways })
}

/// Starts the metrics endpoint, the replay service, the archive, the journal thread
/// and the hot thread.
pub fn spawn(
    config: SequencerConfig,
    recovered: RecoveredState,
    sockets: Sockets,
) -> Result<RunningSequencer, SequencerError> {
    let RecoveredState { core, journal, log } = recovered;
    let Services { mut running, metrics, archive, publisher, gateways } =
        spawn_services(&config, &log, core.log_hash(), sockets)?;
    // fsync takes ~100 µs or more: overlap it with deciding on a journal thread. A
    // page-cache write takes a few: do it inline and save two thread hand-offs.
    let pipeline = match config.durability {
        Durability::Fsync => CommitPipeline::start(journal, config.idle).map_err(io_err("journal thread"))?,
        Durability::Os => CommitPipeline::inline(journal),
    };
    let hot = HotLoop::new(
        &config,
        core,
        pipeline,
        publisher,
        gateways,
        metrics,
        Arc::clone(&running.shutdown),
        log.session_id,
        archive,
    );
    let thread = std::thread::Builder::new()
        .name("sequencer-hot".into())
        .spawn(move || hot.run())
        .map_err(io_err("hot thread"))?;
    running.thread = Some(thread);
    Ok(running)
}

/// The group's tag (for its links) and log session, derived from its key and its
/// members' addresses: every member computes the same, another group does not.
fn group_identity(key: &ledgerbus_transport::ReplayKey, members: &[SocketAddr]) -> (u64, u64) {
    let list: Vec<String> = members.iter().map(SocketAddr::to_string).collect();
    let derive = |label: &str| {
        let mut material = key.0.to_vec();
        material.extend_from_slice(label.as_bytes());
        material.extend_from_slice(list.join(",").as_bytes());
        let mac = auth::answer(&material, &[0u8; 32]);
        u64::from_le_bytes(mac[..8].try_into().expect("8 bytes"))
    };
    (derive("ledgerbus group tag"), derive("ledgerbus group session") | 1)
}

/// A member of a replicated group: recover its log, bind, and start its threads.
fn start_group(config: SequencerConfig, group: GroupConfig) -> Result<RunningSequencer, SequencerError> {
    group.validate()?;
    let keys = config.bus_keys.group_keys();
    let (group_tag, session) = group_identity(&keys[0], &group.members);
    let capacity = config.transfer_capacity;
    let fresh = move || {
        let ledger = Ledger::with_capacity(1_024, capacity);
        ledger.populate_transfer_index();
        Replica::new(ledger)
    };
    let started = Instant::now();
    let mut replica = fresh();
    let (disk, loaded, log) = JournalDisk::open(
        &config.data_dir,
        config.durability,
        config.segment_size_max,
        session,
        &mut replica,
    )?;
    tracing::info!(
        replica_id = group.replica_id,
        members = group.members.len(),
        entries = loaded.entries.len(),
        next_sequence = log.next_sequence,
        seconds = started.elapsed().as_secs_f64(),
        "group member log recovered"
    );
    let state_hash = replica.log_hash();
    let voters: Vec<u64> = (1..=group.members.len() as u64).collect();
    let mut member_config = MemberConfig::new(group.replica_id, voters);
    member_config.seed = auth::random_u64().map_err(io_err("randomness"))?;
    let member = Member::new(
        member_config,
        disk,
        loaded,
        SequencerCore::new(replica),
        Box::new(fresh),
        &raft_logger(),
    )
    .map_err(|e| SequencerError::Config(format!("raft: {e}")))?;
    // What the replay service may serve, and where the bus starts: the committed log.
    let (committed_next, _) = member.committed();
    let log = Recovered { next_sequence: committed_next, ..log };
    let sockets = bind(&config, &log)?;
    let peer_address = group.members[group.replica_id as usize - 1];
    let peer_listener =
        TcpListener::bind(peer_address).map_err(io_err(format!("group listener {peer_address}")))?;
    let Services { mut running, metrics, archive, publisher, gateways } =
        spawn_services(&config, &log, state_hash, sockets)?;
    let peers = PeerNet::start(
        PeerConfig { id: group.replica_id, addresses: group.members.clone(), keys, group_tag },
        peer_listener,
        Arc::clone(&running.shutdown),
    )
    .map_err(io_err("group links"))?;
    let group_loop = GroupLoop {
        member,
        gateways: GatewayPort::new(gateways, config.secret.clone(), Arc::clone(&metrics)),
        publisher,
        archive,
        peers,
        metrics,
        shutdown: Arc::clone(&running.shutdown),
        session_id: session,
        tick: group.tick,
        batch_events_max: config.batch_events_max,
        idle: config.idle,
    };
    let thread = std::thread::Builder::new()
        .name("sequencer-hot".into())
        .spawn(move || group_loop.run())
        .map_err(io_err("hot thread"))?;
    running.thread = Some(thread);
    Ok(running)
}
