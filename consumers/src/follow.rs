//! Following the bus: catch up through the sequencer's bulk replay, then apply the
//! live stream, and go back to bulk replay whenever the receiver says its gap has
//! left the sender's ring. Every event reaches the sink once, in order.
//!
//! A new session (the sequencer started a new log) is never a reason to stop: the
//! receiver reports authenticated datagrams of another session, the follower asks the
//! replay service (authenticated too) which session is current, and if it really
//! changed, the sink starts over from the new log's first event.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ledgerbus_transport::driver::{MulticastOptions, SocketOptions, Subscriber};
use ledgerbus_transport::idle::{IdleStrategy, Idler};
use ledgerbus_transport::{ReceiverConfig, ReceiverEvent, ReplayKey};

use crate::error::SinkError;
pub use crate::progress::Progress;

/// Where events go.
pub trait Sink {
    /// The sequence the next event must carry.
    fn next_sequence(&self) -> u64;
    /// The session the sink's data belongs to, if it knows one.
    fn session(&self) -> Option<u64>;
    /// From now on the sink's events belong to `session`. A sink holding events of
    /// another session forgets them first (keeping its old data aside where it has
    /// any on disk) and expects the new log's first event next.
    fn start_session(&mut self, session: u64) -> Result<(), SinkError>;
    /// Applies a batch of event frames (concatenated, in order).
    fn apply_batch(&mut self, frames: &[u8]) -> Result<(), SinkError>;
    /// Called after each batch (persist, publish progress).
    fn commit(&mut self) -> Result<(), SinkError>;
    /// The last sequence whose effects are kept (what `/status` reports). A sink
    /// that gathers several batches into one write is behind its
    /// [`next_sequence`](Sink::next_sequence) until it writes them.
    fn kept_through(&self) -> u64 {
        self.next_sequence() - 1
    }
    /// Called on every turn of the live loop, events or not (a sink that gathers
    /// batches writes the ones that waited long enough).
    fn tick(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// Keeps everything applied so far now (the end of a catch-up, stopping).
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// How to reach the sequencer and receive the stream.
#[derive(Debug, Clone)]
pub struct FollowConfig {
    /// Where the stream arrives (our UDP address or the group port).
    pub listen: SocketAddr,
    /// Multicast group to join, if any.
    pub multicast: Option<MulticastOptions>,
    /// The sequencer's control address (NAKs, status).
    pub sequencer_control: SocketAddr,
    /// The sequencer's replay service, or each group member's.
    pub sequencer_replay: ReplayServices,
    /// The credential the replay service asks for (derived from the bus key).
    pub replay_key: ReplayKey,
    /// Receiver settings.
    pub receiver: ReceiverConfig,
    /// Socket buffers.
    pub socket: SocketOptions,
    /// How the receive thread waits for datagrams.
    pub idle: IdleStrategy,
}

/// The replay service of a sequencer, or those of a group's members (each serves
/// what its member has committed), tried in turn when one cannot be reached.
#[derive(Debug, Clone)]
pub struct ReplayServices {
    addresses: Vec<SocketAddr>,
    current: Arc<std::sync::atomic::AtomicUsize>,
}

impl ReplayServices {
    /// The services at `addresses` (at least one).
    pub fn new(addresses: Vec<SocketAddr>) -> ReplayServices {
        assert!(!addresses.is_empty(), "at least one replay service");
        ReplayServices { addresses, current: Arc::default() }
    }

    /// A single sequencer's service.
    pub fn one(address: SocketAddr) -> ReplayServices {
        ReplayServices::new(vec![address])
    }

    /// The service to ask now.
    pub fn address(&self) -> SocketAddr {
        self.addresses[self.current.load(Ordering::Relaxed) % self.addresses.len()]
    }

    /// Moves on to the next service (the current one failed).
    pub fn rotate(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }
}

impl std::fmt::Display for ReplayServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addresses.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(","))
    }
}

/// Why following stopped.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// A socket or the replay service failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The sink refused an event (corruption or a bug) or could not keep it.
    #[error("applying events: {0}")]
    Apply(#[from] SinkError),
}

/// Frames gathered between two applies; one lock or one journal commit per batch.
struct Batch {
    frames: Vec<u8>,
    next: u64,
    error: Option<SinkError>,
}

impl Batch {
    fn push(&mut self, sequence: u64, frame: &[u8]) {
        if self.error.is_none() && sequence != self.next {
            self.error = Some(SinkError::OutOfOrder { sequence, expected: self.next });
        }
        self.frames.extend_from_slice(frame);
        self.next = sequence + 1;
    }
}

/// Replays `from..` (to the head) from the replay service into the sink; if the
/// service serves another session than the sink's, the sink starts that session over
/// and replays it from its start. Returns the session served.
fn catch_up(sink: &mut impl Sink, config: &FollowConfig, progress: &Progress) -> Result<u64, FollowError> {
    let session = catch_up_once(sink, config, progress)?;
    if session != 0 && sink.session().is_some_and(|held| held != session) {
        tracing::warn!(
            held = format_args!("{:#018x}", sink.session().unwrap_or(0)),
            new = format_args!("{session:#018x}"),
            "the sequencer started a new log; starting over from its first event"
        );
        sink.start_session(session).map_err(FollowError::Apply)?;
        progress.applied_through(0);
        return catch_up_once(sink, config, progress);
    }
    if session != 0 {
        sink.start_session(session).map_err(FollowError::Apply)?;
    }
    Ok(session)
}

/// One replay of `from..` for the sink's session: nothing is applied if the service
/// serves another session (it stops at the first event of another session).
fn catch_up_once(
    sink: &mut impl Sink,
    config: &FollowConfig,
    progress: &Progress,
) -> Result<u64, FollowError> {
    let from = sink.next_sequence();
    let session = sink.session().unwrap_or(0);
    let mut batch = Batch { frames: Vec::with_capacity(1 << 20), next: from, error: None };
    let mut applied_error = None;
    let (next, replay_session) = ledgerbus_log::replay_client::replay(
        config.sequencer_replay.address(),
        &config.replay_key,
        session,
        from,
        0,
        |sequence, frame| {
            batch.push(sequence, frame);
            if batch.frames.len() >= 1 << 20 {
                if let Err(error) = sink.apply_batch(&batch.frames).and_then(|_| sink.commit()) {
                    applied_error = Some(error);
                    return Err(io::Error::other("apply failed"));
                }
                batch.frames.clear();
                debug_assert!(sink.kept_through() <= sequence);
                progress.applied_through(sink.kept_through());
            }
            Ok(())
        },
    )
    .map_err(|e| match applied_error.take() {
        Some(error) => FollowError::Apply(error),
        None => FollowError::Io(e),
    })?;
    if session != 0 && replay_session != 0 && replay_session != session {
        debug_assert!(batch.frames.is_empty(), "the service stops before another session's events");
        return Ok(replay_session);
    }
    if let Some(error) = batch.error {
        return Err(FollowError::Apply(error));
    }
    sink.apply_batch(&batch.frames)
        .and_then(|_| sink.commit())
        .and_then(|_| sink.flush())
        .map_err(FollowError::Apply)?;
    progress.applied_through(sink.kept_through());
    progress.bulk_replays.inc();
    if replay_session != 0 {
        progress.session.store(replay_session, Ordering::Relaxed);
    }
    tracing::info!(from, to = next.saturating_sub(1), "caught up through bulk replay");
    Ok(replay_session)
}

/// [`catch_up`], retried with back-off while the replay service cannot be reached or
/// drops the connection (a sequencer restarting): those are not the consumer's
/// failures, and what was applied stays applied. Other errors end following.
fn catch_up_retrying(
    sink: &mut impl Sink,
    config: &FollowConfig,
    progress: &Progress,
    stop: &AtomicBool,
) -> Result<u64, FollowError> {
    let next = sink.next_sequence();
    with_replay_service(&config.sequencer_replay, stop, next, || catch_up(sink, config, progress))
}

/// Runs `attempt` until the replay service answers it, waiting with back-off (and
/// saying so) while it cannot be reached or drops the connection: a sequencer that is
/// starting or restarting is not the consumer's failure. A sink error ends at once.
///
/// A refused credential ends following too, but only once it is refused again: the
/// service refuses by closing the connection after our answer, which is also what a
/// sequencer killed between our answer and its welcome looks like.
pub fn with_replay_service<T>(
    replay: &ReplayServices,
    stop: &AtomicBool,
    next: u64,
    mut attempt: impl FnMut() -> Result<T, FollowError>,
) -> Result<T, FollowError> {
    let mut backoff = Duration::from_millis(50);
    let mut refusals = 0;
    loop {
        match attempt() {
            Err(FollowError::Io(error))
                if error.kind() == io::ErrorKind::PermissionDenied
                    && (refusals >= REFUSALS_MAX || stop.load(Ordering::Relaxed)) =>
            {
                return Err(FollowError::Io(io::Error::new(
                    error.kind(),
                    format!("replay service {}: {error} (check LEDGERBUS_BUS_KEY)", replay.address()),
                )));
            }
            Err(FollowError::Io(error))
                if !stop.load(Ordering::Relaxed) && error.kind() != io::ErrorKind::InvalidData =>
            {
                if error.kind() == io::ErrorKind::PermissionDenied {
                    refusals += 1;
                } else {
                    refusals = 0;
                }
                tracing::warn!(replay = %replay.address(), %error, retry_ms = backoff.as_millis() as u64, next,
                    "waiting for the sequencer's replay service");
                replay.rotate();
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            outcome => return outcome,
        }
    }
}

/// Refusals in a row after which the credential is taken to be wrong (about 1.5 s
/// of back-off: longer than a sequencer takes to come back up).
const REFUSALS_MAX: u32 = 4;

/// Follows the stream until `stop` is set or an error occurs.
pub fn follow(
    sink: &mut impl Sink,
    config: &FollowConfig,
    progress: &Progress,
    stop: &AtomicBool,
) -> Result<(), FollowError> {
    let session = catch_up_retrying(sink, config, progress, stop)?;
    let session = (session != 0).then_some(session).or(sink.session());
    let mut subscriber = Subscriber::new(
        config.receiver.clone(),
        sink.next_sequence(),
        session,
        config.listen,
        config.multicast,
        config.sequencer_control,
        config.socket,
    )?;
    tracing::info!(listen = %config.listen, next = sink.next_sequence(), "following the live stream");
    let mut batch = Batch { frames: Vec::with_capacity(1 << 20), next: sink.next_sequence(), error: None };
    let mut idler = Idler::new(config.idle);
    // Longest wait in the kernel: the stop flag is seen at least this often.
    const BLOCK_MOST: Duration = Duration::from_millis(50);
    while !stop.load(Ordering::Relaxed) {
        batch.frames.clear();
        batch.next = sink.next_sequence();
        let first_wait = if idler.strategy() == IdleStrategy::Block { BLOCK_MOST } else { Duration::ZERO };
        let mut event = subscriber.poll(first_wait, &mut |sequence, frame| batch.push(sequence, frame))?;
        if event.is_none() && batch.frames.is_empty() && first_wait.is_zero() {
            // Nothing was ready: wait as the idle strategy says; a park or a block
            // ends as soon as a datagram arrives.
            idler.idle_on(|most| {
                event = subscriber
                    .poll(most.unwrap_or(BLOCK_MOST), &mut |sequence, frame| batch.push(sequence, frame))?;
                Ok::<(), std::io::Error>(())
            })?;
        }
        if !batch.frames.is_empty() {
            idler.reset();
        }
        // Drain whatever else is ready into the same batch.
        let mut rounds = 0;
        while event.is_none() && batch.frames.len() < (1 << 20) && rounds < 16 {
            let before = batch.frames.len();
            event = subscriber.poll(Duration::ZERO, &mut |sequence, frame| batch.push(sequence, frame))?;
            if batch.frames.len() == before {
                break;
            }
            rounds += 1;
        }
        if let Some(error) = batch.error.take() {
            return Err(FollowError::Apply(error));
        }
        if !batch.frames.is_empty() {
            sink.apply_batch(&batch.frames).map_err(FollowError::Apply)?;
            sink.commit().map_err(FollowError::Apply)?;
        }
        sink.tick().map_err(FollowError::Apply)?;
        let core = subscriber.core();
        progress.applied_through(sink.kept_through());
        progress.lag.set(core.known_end().saturating_sub(sink.kept_through() + 1));
        if let Some(session) = core.session() {
            progress.session.store(session, Ordering::Relaxed);
        }
        progress.record_receiver(core.stats());
        match event {
            Some(ReceiverEvent::NeedsReplay { from_sequence, oldest_retained_sequence }) => {
                tracing::warn!(
                    from_sequence,
                    oldest_retained_sequence,
                    "gap left the sender's ring; bulk replay"
                );
                resynchronise(sink, config, progress, stop, &mut subscriber)?;
            }
            Some(ReceiverEvent::SessionChanged { current, new }) => {
                // Authenticated, but possibly an old datagram replayed: the replay
                // service says which session is current.
                tracing::warn!(
                    current = format_args!("{current:#018x}"),
                    new = format_args!("{new:#018x}"),
                    "datagrams of another session; asking the sequencer which one is current"
                );
                resynchronise(sink, config, progress, stop, &mut subscriber)?;
            }
            None => {}
        }
    }
    sink.flush().map_err(FollowError::Apply)?;
    progress.applied_through(sink.kept_through());
    Ok(())
}

/// Catches up through bulk replay, then continues live: from where the sink is in the
/// same session, or from the new log's start when the session changed.
fn resynchronise(
    sink: &mut impl Sink,
    config: &FollowConfig,
    progress: &Progress,
    stop: &AtomicBool,
    subscriber: &mut Subscriber,
) -> Result<(), FollowError> {
    let session = catch_up_retrying(sink, config, progress, stop)?;
    let now = ledgerbus_transport::monotonic_now();
    if session != 0 && subscriber.core().session() != Some(session) {
        tracing::info!(
            session = format_args!("{session:#018x}"),
            next = sink.next_sequence(),
            "following the new session"
        );
        subscriber.core_mut().reset_session(now, session, sink.next_sequence());
        return Ok(());
    }
    let mut resumed = Batch { frames: Vec::new(), next: sink.next_sequence(), error: None };
    subscriber.core_mut().resume(now, sink.next_sequence(), &mut |s, f| resumed.push(s, f));
    if let Some(error) = resumed.error {
        return Err(FollowError::Apply(error));
    }
    sink.apply_batch(&resumed.frames).and_then(|_| sink.commit()).map_err(FollowError::Apply)
}

/// Splits a buffer of concatenated frames.
pub fn split_frames(frames: &[u8]) -> impl Iterator<Item = &[u8]> {
    ledgerbus_codec::Frames::new(frames).map_while(Result::ok)
}

/// Shared state handle for the HTTP side.
pub type SharedProgress = Arc<Progress>;
