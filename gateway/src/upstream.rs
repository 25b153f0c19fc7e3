//! The gateway's connection to the sequencer: one authenticated TCP connection,
//! reconnected automatically, carrying submissions (groups of commands that must
//! stay together, like a linked chain) and bringing back one result per command.
//!
//! The sequencer answers a connection's commands in order, so results are matched
//! to submissions first-in first-out; no correlation table is needed. Submitting
//! writes to the socket from the caller's own task, under the lock that also queues
//! the submission for its results, so order is kept without a writer task in
//! between (see `ledgerbus_client::wire`). Results are handed over by the one task reading
//! the socket: gathered for the HTTP API, or written straight into a TCP client's
//! connection as they arrive.
//!
//! The commands waiting for results are bounded: beyond `queue_max`, callers get
//! `Busy` at once instead of buffering without limit.
//!
//! The sequencer may be a replicated group: the link is given every member's address
//! and connects to the one that leads (a member that does not lead says who does). If
//! the connection drops, submissions waiting for results are kept, with their bytes,
//! for [`RESEND_WINDOW`]: when the link is back (to the same sequencer or a new
//! leader) their unanswered commands are sent again, with the same ids, so each is
//! decided exactly once (one that was decided before answers `exists`, with the
//! original in the HTTP answer). New submissions meanwhile wait for the link too.
//! After the window they fail (`Unavailable`), and so does everything submitted
//! while the sequencer stays away.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ledgerbus_codec::messages::{Authenticate, Challenge, NotLeader, Welcome};
use ledgerbus_codec::{decode, encode, DecodeError, Message, MessageHeader, MESSAGE_HEADER_SIZE};
use ledgerbus_protocol::{Decided, REPLY_FRAME_SIZE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};

use ledgerbus_client::wire::{drain, whole_frames, Filled, Incoming, Outgoing, Stream};

use crate::write_marks::WriteMarks;

/// Why a submission got no results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Too many commands are waiting; retry later.
    #[error("gateway queue full")]
    Busy,
    /// The sequencer is unreachable, or the connection dropped before the results.
    #[error("sequencer unavailable")]
    Unavailable,
}

/// Takes results as they arrive, for a TCP client connection.
pub trait ResultSink: Send + Sync {
    /// `count` whole result frames for this sink's commands, in order.
    fn deliver(&self, results: &[u8], count: usize);
    /// Called once after the deliveries of one read from the sequencer: write them.
    fn flush(&self);
    /// The sequencer connection dropped with `unanswered` of this sink's commands
    /// without results: their outcome is unknown.
    fn lost(&self, unanswered: usize);
}

/// Where a submission's results go.
pub enum ReplyTo {
    /// Gathered and sent whole with the last one (the HTTP API).
    Gather(oneshot::Sender<Result<Vec<Option<Decided>>, SubmitError>>),
    /// Passed on as they arrive.
    Sink(Arc<dyn ResultSink>),
}

/// How long submissions wait for a lost link to come back (a group elects a new
/// leader well within it) before they fail.
pub const RESEND_WINDOW: Duration = Duration::from_secs(5);

/// When a submission's bytes go to the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// At once, from the caller's task (the TCP API: its reads already batch).
    Now,
    /// With the others queued in the same turn of the scheduler (the HTTP API).
    Coalesce,
}

/// The duty to write what coalescing submissions queued: done when dropped, so a
/// request cancelled while it yields (its client went away) still sends the others.
#[must_use = "dropping it writes the queued submissions"]
struct Flush<'a>(&'a Upstream);

impl Drop for Flush<'_> {
    fn drop(&mut self) {
        self.0.flush_queued();
    }
}

/// A submission written to the sequencer and not fully answered.
struct Waiting {
    /// Its commands' frames, back to back, to send again after a reconnection.
    frames: Vec<u8>,
    /// Commands in it not answered yet.
    remaining: usize,
    /// Bytes of `frames` whose commands are answered.
    answered_bytes: usize,
    /// What each result said (`None`: a frame that did not read as a result).
    gathered: Vec<Option<Decided>>,
    reply: ReplyTo,
}

/// The connection as submitters and the reading task share it.
#[derive(Default)]
struct LinkState {
    stream: Option<Arc<Stream>>,
    out: Outgoing,
    waiting: VecDeque<Waiting>,
    /// Since when a link that was up has been down (submissions wait meanwhile).
    down_since: Option<Instant>,
    /// A coalescing submitter holds a [`Flush`] for what `out` queued.
    flush_due: bool,
}

impl Waiting {
    /// The frames of the commands not answered yet.
    fn unanswered(&self) -> &[u8] {
        &self.frames[self.answered_bytes..]
    }

    /// The next results answer the commands after `answered_bytes`: records what each
    /// wrote at its sequence, and moves past them. Returns their highest sequence.
    fn mark_answered(&mut self, results: &[u8], marks: &WriteMarks) -> Option<u64> {
        let mut highest = None;
        let mut commands = ledgerbus_codec::Frames::new(&self.frames[self.answered_bytes..]);
        for result in results.chunks_exact(REPLY_FRAME_SIZE) {
            let command = match commands.next() {
                Some(Ok(command)) => command,
                // Our own frames, checked when they were split into commands.
                _ => &[][..],
            };
            if let Some(decided) = Decided::read(result) {
                marks.record(command, decided.sequence);
                highest = highest.max(Some(decided.sequence));
            }
            self.answered_bytes += command.len();
        }
        highest
    }
}

struct Link {
    state: Mutex<LinkState>,
    /// Bytes were left queued: the connection task must drain them.
    backlog: Notify,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, LinkState> {
        // A panic while holding the lock is a bug; the state is still consistent
        // enough to fail waiting submissions, so keep going.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Handle to the link; cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    link: Arc<Link>,
    /// Commands submitted and not yet answered.
    outstanding: Arc<AtomicUsize>,
    queue_max: usize,
    /// Highest sequence of any result seen (for read-your-writes on queries that
    /// are not about one id).
    pub highest_sequence: Arc<AtomicU64>,
    /// Per id, the last acknowledged write (read-your-writes on queries of one
    /// account or transfer).
    pub write_marks: Arc<WriteMarks>,
    /// Whether the link is currently connected.
    pub connected: Arc<AtomicBool>,
    /// The sequencer's session, once connected.
    session: Arc<AtomicU64>,
    /// What both APIs count (`/metrics`).
    pub metrics: Arc<crate::metrics::GatewayMetrics>,
}

impl Upstream {
    /// Starts the link task on the current runtime; it runs as long as the runtime.
    /// `sequencers`: the sequencer's gateway port, or every group member's in
    /// replica-id order.
    pub fn start(
        sequencers: Vec<SocketAddr>,
        secret: Vec<u8>,
        gateway_id: u32,
        queue_max: usize,
    ) -> Upstream {
        assert!(!sequencers.is_empty(), "at least one sequencer address");
        let upstream = Upstream {
            link: Arc::new(Link { state: Mutex::new(LinkState::default()), backlog: Notify::new() }),
            outstanding: Arc::new(AtomicUsize::new(0)),
            queue_max,
            highest_sequence: Arc::new(AtomicU64::new(0)),
            write_marks: Arc::default(),
            connected: Arc::new(AtomicBool::new(false)),
            session: Arc::new(AtomicU64::new(0)),
            metrics: Arc::default(),
        };
        tokio::spawn(run_link(sequencers, secret, gateway_id, upstream.clone()));
        upstream
    }

    /// Commands sent and not answered yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }

    /// Outstanding commands beyond which submissions are refused.
    pub fn queue_max(&self) -> usize {
        self.queue_max
    }

    /// Commands that may be submitted now before the queue is full.
    pub fn room(&self) -> usize {
        self.queue_max.saturating_sub(self.outstanding.load(Ordering::Acquire))
    }

    /// The sequencer's session (0 before the first connection).
    pub fn session(&self) -> u64 {
        self.session.load(Ordering::Acquire)
    }

    /// Sends `count` encoded commands as one group and waits for their results.
    ///
    /// Groups submitted while the runtime is busy leave together: the first one queues
    /// its bytes and yields to the runtime once; the requests that run meanwhile (other
    /// HTTP connections' POSTs) queue theirs behind it; then one write carries them all,
    /// and the sequencer reads, decides, journals and answers them as one batch. Under
    /// load that is one system call here and one batch there for many requests instead
    /// of one each; alone, a request waits for one turn of the scheduler.
    pub async fn submit(&self, frames: Vec<u8>, count: usize) -> Result<Vec<Option<Decided>>, SubmitError> {
        let (reply, results) = oneshot::channel();
        if let Some(flush) = self.enqueue(&frames, count, ReplyTo::Gather(reply), Write::Coalesce)? {
            tokio::task::yield_now().await;
            drop(flush);
        }
        results.await.unwrap_or(Err(SubmitError::Unavailable))
    }

    /// Writes a group of `count` commands to the sequencer now (or queues it behind
    /// bytes the socket has not taken yet); its results go to `reply`. One caller's
    /// groups reach the sequencer in the order submitted. Nothing is sent on error.
    pub fn submit_to(&self, frames: &[u8], count: usize, reply: ReplyTo) -> Result<(), SubmitError> {
        self.enqueue(frames, count, reply, Write::Now).map(|_| ())
    }

    /// Queues a group for its results and its bytes for the socket. With
    /// [`Write::Coalesce`], returns the [`Flush`] the caller must drop (after letting
    /// others queue) when no other caller is already about to write.
    fn enqueue(
        &self,
        frames: &[u8],
        count: usize,
        reply: ReplyTo,
        write: Write,
    ) -> Result<Option<Flush<'_>>, SubmitError> {
        assert!(count > 0, "a submission holds at least one command");
        let before = self.outstanding.fetch_add(count, Ordering::AcqRel);
        if before + count > self.queue_max {
            self.outstanding.fetch_sub(count, Ordering::AcqRel);
            return Err(SubmitError::Busy);
        }
        let mut state = self.link.lock();
        let reconnecting = state.down_since.is_some_and(|since| since.elapsed() < RESEND_WINDOW);
        let stream = match state.stream.clone() {
            Some(stream) => Some(stream),
            // Held until the link is back (sent then, in order).
            None if reconnecting => None,
            None => {
                drop(state);
                self.outstanding.fetch_sub(count, Ordering::AcqRel);
                return Err(SubmitError::Unavailable);
            }
        };
        let gathered = match reply {
            ReplyTo::Gather(_) => Vec::with_capacity(count),
            ReplyTo::Sink(_) => Vec::new(),
        };
        state.waiting.push_back(Waiting {
            frames: frames.to_vec(),
            remaining: count,
            answered_bytes: 0,
            gathered,
            reply,
        });
        // A write error is noticed by the connection task when it drains, which ends
        // the connection; the submission is sent again on the next one.
        let Some(stream) = stream else { return Ok(None) };
        match write {
            Write::Now => {
                if !matches!(state.out.send(&stream, frames), Ok(false)) {
                    self.link.backlog.notify_one();
                }
                Ok(None)
            }
            Write::Coalesce => {
                state.out.queue(frames);
                let first = !std::mem::replace(&mut state.flush_due, true);
                // Lazily: a `Flush` made and dropped here would lock the state held right now.
                Ok(first.then(|| Flush(self)))
            }
        }
    }

    /// Writes what [`Write::Coalesce`] submissions queued.
    fn flush_queued(&self) {
        let mut state = self.link.lock();
        state.flush_due = false;
        if let Some(stream) = state.stream.clone() {
            if !matches!(state.out.flush(&stream), Ok(true)) {
                self.link.backlog.notify_one();
            }
        }
    }

    /// Hands `bytes` (whole result frames) to the waiting submissions in order.
    fn deliver(&self, bytes: &[u8], touched: &mut Vec<Arc<dyn ResultSink>>) -> Result<(), LinkError> {
        if bytes.len() % REPLY_FRAME_SIZE != 0 {
            return Err(LinkError::UnexpectedSize);
        }
        let mut state = self.link.lock();
        let mut rest = bytes;
        while !rest.is_empty() {
            let Some(front) = state.waiting.front_mut() else {
                return Err(LinkError::Unsolicited);
            };
            let count = front.remaining.min(rest.len() / REPLY_FRAME_SIZE);
            let (results, after) = rest.split_at(count * REPLY_FRAME_SIZE);
            // Before anyone hears of them: a read after the answer must wait for them.
            if let Some(highest) = front.mark_answered(results, &self.write_marks) {
                self.highest_sequence.fetch_max(highest, Ordering::AcqRel);
            }
            match &front.reply {
                ReplyTo::Gather(_) => {
                    // The HTTP API gets what each result says rather than the frame.
                    front.gathered.extend(results.chunks_exact(REPLY_FRAME_SIZE).map(Decided::read));
                }
                ReplyTo::Sink(sink) => {
                    sink.deliver(results, count);
                    if !touched.last().is_some_and(|last| Arc::ptr_eq(last, sink)) {
                        touched.push(Arc::clone(sink));
                    }
                }
            }
            front.remaining -= count;
            self.outstanding.fetch_sub(count, Ordering::AcqRel);
            if front.remaining == 0 {
                let done = state.waiting.pop_front().expect("front exists");
                if let ReplyTo::Gather(reply) = done.reply {
                    let _ = reply.send(Ok(done.gathered));
                }
            }
            rest = after;
        }
        drop(state);
        Ok(())
    }

    /// The connection is gone: keep what waits for the next one.
    fn disconnect(&self) {
        let mut state = self.link.lock();
        state.stream = None;
        state.out.clear();
        state.down_since.get_or_insert_with(Instant::now);
    }

    /// The link has been down longer than [`RESEND_WINDOW`]: fail what waits.
    fn expire(&self) {
        let mut state = self.link.lock();
        if state.down_since.is_none_or(|since| since.elapsed() < RESEND_WINDOW) {
            return;
        }
        for waiting in state.waiting.drain(..) {
            self.outstanding.fetch_sub(waiting.remaining, Ordering::AcqRel);
            match waiting.reply {
                ReplyTo::Gather(reply) => {
                    let _ = reply.send(Err(SubmitError::Unavailable));
                }
                ReplyTo::Sink(sink) => sink.lost(waiting.remaining),
            }
        }
    }

    /// A new connection: sends again, in order, every command still unanswered.
    /// Returns how many.
    fn reconnected(&self, stream: &Arc<Stream>) -> usize {
        let mut state = self.link.lock();
        state.stream = Some(Arc::clone(stream));
        state.down_since = None;
        let mut resent = 0;
        let mut bytes = Vec::new();
        for waiting in &state.waiting {
            bytes.extend_from_slice(waiting.unanswered());
            resent += waiting.remaining;
        }
        if !bytes.is_empty() && !matches!(state.out.send(stream, &bytes), Ok(false)) {
            self.link.backlog.notify_one();
        }
        resent
    }
}

async fn run_link(sequencers: Vec<SocketAddr>, secret: Vec<u8>, gateway_id: u32, link: Upstream) {
    let mut backoff = Duration::from_millis(20);
    let mut next = 0usize;
    let mut failures_in_round = 0;
    loop {
        link.expire();
        let sequencer = sequencers[next];
        // One member cut off must not hold up finding the others for long.
        let patience = if sequencers.len() > 1 { Duration::from_secs(1) } else { Duration::from_secs(3) };
        // The handshake too: a sequencer that accepts and then says nothing is skipped.
        let attempt = tokio::time::timeout(patience * 3, connect(sequencer, &secret, gateway_id, patience));
        let outcome = attempt.await.unwrap_or_else(|_| {
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no handshake from the sequencer"))
        });
        match outcome {
            Ok((stream, welcome)) => {
                tracing::info!(%sequencer, session = format_args!("{:#018x}", welcome.session_id.get()),
                    next_sequence = welcome.next_sequence.get(), "connected to the sequencer");
                backoff = Duration::from_millis(20);
                failures_in_round = 0;
                let stream = Arc::new(Stream::Tcp(stream));
                let previous = link.session.swap(welcome.session_id.get(), Ordering::AcqRel);
                if previous != 0 && previous != welcome.session_id.get() {
                    // A new log: sequences start over, and reads must not wait for
                    // a position of the old one.
                    tracing::warn!(
                        previous = format_args!("{previous:#018x}"),
                        "the sequencer started a new log"
                    );
                    let last = welcome.next_sequence.get().saturating_sub(1);
                    link.highest_sequence.store(last, Ordering::Release);
                    link.write_marks.start_over(last);
                }
                let resent = link.reconnected(&stream);
                if resent > 0 {
                    tracing::warn!(%sequencer, commands = resent, "sent again the commands whose outcome was lost with the link");
                }
                link.connected.store(true, Ordering::Release);
                let reason = serve(&link, &stream).await;
                link.connected.store(false, Ordering::Release);
                link.disconnect();
                tracing::warn!(%sequencer, %reason, "lost the sequencer; reconnecting");
                // A group's leader that went away is the member least likely to lead
                // next: ask the others first.
                next = (next + 1) % sequencers.len();
                continue;
            }
            Err(error) => match ledgerbus_protocol::blocking::leader_hint(&error) {
                Some(leader) if leader >= 1 && leader as usize <= sequencers.len() => {
                    tracing::debug!(%sequencer, leader, "not the leader; following its hint");
                    next = leader as usize - 1;
                }
                // A member answered: the group is up and electing a leader. Ask the
                // next one soon, without backing off.
                Some(_) => next = (next + 1) % sequencers.len(),
                None => {
                    tracing::warn!(%sequencer, %error, retry_ms = backoff.as_millis() as u64, "waiting for the sequencer (gateway port)");
                    next = (next + 1) % sequencers.len();
                    failures_in_round += 1;
                }
            },
        }
        // Back off once every member was unreachable; a hint or the next member is tried soon.
        if failures_in_round >= sequencers.len() {
            failures_in_round = 0;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Why the link to the sequencer ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The sequencer closed the connection (it stopped or restarted).
    #[error("connection closed by the sequencer")]
    Closed,
    /// Bytes that are not result frames.
    #[error("malformed result: {0}")]
    Malformed(DecodeError),
    /// Result frames of a size no result has.
    #[error("a result frame of an unexpected size")]
    UnexpectedSize,
    /// A result with no command waiting for it.
    #[error("a result nobody asked for")]
    Unsolicited,
}

/// Reads results and drains queued bytes until the connection fails.
async fn serve(link: &Upstream, stream: &Stream) -> LinkError {
    let reading = async {
        let mut incoming = Incoming::with_capacity(1 << 20);
        let mut touched: Vec<Arc<dyn ResultSink>> = Vec::new();
        loop {
            stream.readable().await?;
            match incoming.fill(stream)? {
                Filled::Closed => return Err(LinkError::Closed),
                Filled::Nothing => continue,
                Filled::Bytes => {}
            }
            let (length, _) = whole_frames(incoming.bytes()).map_err(LinkError::Malformed)?;
            link.deliver(&incoming.bytes()[..length], &mut touched)?;
            incoming.consume(length);
            for sink in touched.drain(..) {
                sink.flush();
            }
        }
    };
    let draining = async {
        loop {
            link.link.backlog.notified().await;
            drain(stream, || link.link.lock().out.flush(stream)).await?;
        }
    };
    let outcome: Result<std::convert::Infallible, LinkError> = tokio::select! {
        outcome = reading => outcome,
        outcome = draining => outcome,
    };
    match outcome {
        Err(error) => error,
        Ok(never) => match never {},
    }
}

async fn read_frame(reader: &mut (impl AsyncReadExt + Unpin), buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.resize(MESSAGE_HEADER_SIZE, 0);
    reader.read_exact(buf).await?;
    let size = match MessageHeader::frame_size(buf) {
        Ok(size) => size,
        Err(DecodeError::Truncated { needed, .. }) => needed,
        Err(error) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, error.to_string())),
    };
    buf.resize(size, 0);
    reader.read_exact(&mut buf[MESSAGE_HEADER_SIZE..]).await?;
    Ok(())
}

/// A sequencer cut off by the network (a partition, a firewall, a dead machine)
/// sends no reset: without these, the link would wait for minutes of TCP
/// retransmissions before trying another group member. Commands not acknowledged by
/// the peer's TCP within 2 s, or 3 s of silence on an idle link (keep-alive works in
/// whole seconds), end it.
fn detect_silent_loss(stream: &TcpStream) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    socket.set_tcp_user_timeout(Some(Duration::from_secs(2)))?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(1))
        .with_interval(Duration::from_secs(1))
        .with_retries(2);
    socket.set_tcp_keepalive(&keepalive)
}

async fn connect(
    sequencer: SocketAddr,
    secret: &[u8],
    gateway_id: u32,
    patience: Duration,
) -> std::io::Result<(TcpStream, Welcome)> {
    let mut stream = tokio::time::timeout(patience, TcpStream::connect(sequencer))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    detect_silent_loss(&stream)?;
    let mut buf = Vec::new();
    read_frame(&mut stream, &mut buf).await?;
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let (challenge, _) = decode::<Challenge>(&buf).map_err(|_| invalid("expected a challenge"))?;
    let answer = Authenticate {
        gateway_id: gateway_id.into(),
        reserved: [0; 4],
        mac: ledgerbus_protocol::auth::answer(secret, &challenge.nonce),
    };
    let mut bytes = [0u8; Authenticate::FRAME_SIZE];
    encode(&answer, &mut bytes).expect("sized");
    stream.write_all(&bytes).await?;
    read_frame(&mut stream, &mut buf).await.map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::PermissionDenied, "sequencer refused the gateway secret")
    })?;
    if let Ok((refusal, _)) = decode::<NotLeader>(&buf) {
        return Err(ledgerbus_protocol::blocking::not_leader(refusal.leader_replica_id.get()));
    }
    let (welcome, _) = decode::<Welcome>(&buf).map_err(|_| invalid("expected welcome"))?;
    Ok((stream, welcome.to_block()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledgerbus_codec::messages::{Transfer, TransferResult};
    use std::future::Future;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// A sequencer stand-in: greets, then answers each transfer with `ok` at the next
    /// sequence, and reports how many commands each of its reads carried.
    async fn fake_sequencer(listener: TcpListener, reads: mpsc::UnboundedSender<usize>) {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut frame = vec![0u8; 256];
        let size = encode(&Challenge { nonce: [7; 32] }, &mut frame).unwrap();
        stream.write_all(&frame[..size]).await.unwrap();
        let mut answer = [0u8; Authenticate::FRAME_SIZE];
        stream.read_exact(&mut answer).await.unwrap();
        let size = encode(&Welcome { session_id: 1.into(), next_sequence: 1.into() }, &mut frame).unwrap();
        stream.write_all(&frame[..size]).await.unwrap();
        let (mut pending, mut sequence) = (Vec::new(), 0u64);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            let (whole, count) = whole_frames(&pending).unwrap();
            let mut replies = Vec::new();
            for command in ledgerbus_codec::Frames::new(&pending[..whole]) {
                let (transfer, _) = decode::<Transfer>(command.unwrap()).unwrap();
                sequence += 1;
                let result = TransferResult {
                    id: transfer.id,
                    sequence: sequence.into(),
                    timestamp_ns: sequence.into(),
                    ..Default::default()
                };
                let size = encode(&result, &mut frame).unwrap();
                replies.extend_from_slice(&frame[..size]);
            }
            pending.drain(..whole);
            if count > 0 {
                let _ = reads.send(count);
                stream.write_all(&replies).await.unwrap();
            }
        }
    }

    fn transfer_frame(id: u128) -> Vec<u8> {
        let mut frame = vec![0u8; Transfer::FRAME_SIZE];
        let transfer = Transfer { id: id.into(), amount: 1.into(), ..Default::default() };
        let size = encode(&transfer, &mut frame).unwrap();
        frame.truncate(size);
        frame
    }

    async fn connected_upstream() -> (Upstream, mpsc::UnboundedReceiver<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (reads, seen) = mpsc::unbounded_channel();
        tokio::spawn(fake_sequencer(listener, reads));
        let upstream = Upstream::start(vec![address], b"secret".to_vec(), 1, 1_000);
        for _ in 0..500 {
            if upstream.connected.load(Ordering::Acquire) {
                return (upstream, seen);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the upstream did not connect to the stand-in sequencer");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn submissions_made_in_one_turn_leave_in_one_write_and_each_gets_its_own_result() {
        let (upstream, mut seen) = connected_upstream().await;
        let submissions = (1..=50u128).map(|id| {
            let upstream = upstream.clone();
            tokio::spawn(async move { (id, upstream.submit(transfer_frame(id), 1).await) })
        });
        let submissions: Vec<_> = submissions.collect();
        for submission in submissions {
            let (id, results) = submission.await.unwrap();
            let results = results.expect("answered");
            assert_eq!(results.len(), 1);
            assert_eq!(results[0].expect("a result").id, id, "results matched to their submissions");
        }
        assert_eq!(
            seen.recv().await,
            Some(50),
            "fifty submissions made in one turn reach the sequencer in one read"
        );
        assert_eq!(upstream.outstanding(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_submission_dropped_while_it_waits_to_write_still_writes_the_others() {
        let (upstream, mut seen) = connected_upstream().await;
        // The first submission of the turn takes the duty to write, then its client goes
        // away (the request future is dropped at its first pending point).
        let mut first = Box::pin(upstream.submit(transfer_frame(1), 1));
        let pending =
            std::future::poll_fn(|cx| std::task::Poll::Ready(first.as_mut().poll(cx).is_pending())).await;
        assert!(pending, "the first submission waits for its turn to write");
        let second = tokio::spawn({
            let upstream = upstream.clone();
            async move { upstream.submit(transfer_frame(2), 1).await }
        });
        tokio::task::yield_now().await;
        drop(first);
        let results = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the second submission was written when the first was dropped")
            .unwrap()
            .unwrap();
        assert_eq!(results[0].expect("a result").id, 2);
        let mut commands = 0;
        while commands < 2 {
            commands += seen.recv().await.unwrap();
        }
        assert_eq!(commands, 2, "both reached the sequencer, each once");
    }
}
