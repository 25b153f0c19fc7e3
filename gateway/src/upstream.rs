//! The gateway's connection to the sequencer: one authenticated TCP connection,
//! reconnected automatically, carrying submissions (groups of commands that must
//! stay together, like a linked chain) and bringing back one result per command.
//!
//! The sequencer answers a connection's commands in order, so results are matched
//! to submissions first-in first-out; no correlation table is needed. The queue of
//! commands waiting for results is bounded: beyond it, callers get `Busy` at once
//! instead of buffering without limit. If the connection drops, every waiting
//! submission fails with `Unavailable` (its outcome is unknown; clients retry with
//! the same ids, which is safe) and the link reconnects with back-off.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ledgerbus_codec::messages::{Authenticate, Challenge, Welcome};
use ledgerbus_codec::{decode, encode, DecodeError, Message, MessageHeader, MESSAGE_HEADER_SIZE};
use ledgerbus_sequencer::core::REPLY_FRAME_SIZE;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};

/// One result frame (CreateAccountResult or TransferResult).
pub type ReplyFrame = [u8; REPLY_FRAME_SIZE];

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

/// A group of encoded commands and where their results go.
struct Submission {
    frames: Vec<u8>,
    count: usize,
    reply: oneshot::Sender<Result<Vec<ReplyFrame>, SubmitError>>,
}

/// Results being gathered for a submission already written.
struct Waiting {
    remaining: usize,
    results: Vec<ReplyFrame>,
    reply: oneshot::Sender<Result<Vec<ReplyFrame>, SubmitError>>,
}

/// Handle to the link; cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    submissions: mpsc::Sender<Submission>,
    /// Commands submitted and not yet answered.
    outstanding: Arc<AtomicUsize>,
    queue_max: usize,
    /// Highest sequence of any result seen (for read-your-writes on queries).
    pub highest_sequence: Arc<AtomicU64>,
    /// Whether the link is currently connected.
    pub connected: Arc<AtomicBool>,
    /// The sequencer's session, once connected.
    session: Arc<AtomicU64>,
}

impl Upstream {
    /// Starts the link task on the current runtime.
    pub fn start(sequencer: SocketAddr, secret: Vec<u8>, gateway_id: u32, queue_max: usize) -> Upstream {
        let (submissions, receiver) = mpsc::channel(1024);
        let upstream = Upstream {
            submissions,
            outstanding: Arc::new(AtomicUsize::new(0)),
            queue_max,
            highest_sequence: Arc::new(AtomicU64::new(0)),
            connected: Arc::new(AtomicBool::new(false)),
            session: Arc::new(AtomicU64::new(0)),
        };
        let link = upstream.clone();
        tokio::spawn(run_link(sequencer, secret, gateway_id, receiver, link));
        upstream
    }

    /// The sequencer's session (0 before the first connection).
    pub fn session(&self) -> u64 {
        self.session.load(Ordering::Acquire)
    }

    /// Sends `count` encoded commands as one group and waits for their results.
    pub async fn submit(&self, frames: Vec<u8>, count: usize) -> Result<Vec<ReplyFrame>, SubmitError> {
        self.enqueue(frames, count).await?.results().await
    }

    /// Queues a group in order behind earlier ones and returns a ticket for its
    /// results; one caller's groups reach the sequencer in the order enqueued.
    pub async fn enqueue(&self, frames: Vec<u8>, count: usize) -> Result<Ticket, SubmitError> {
        assert!(count > 0);
        let before = self.outstanding.fetch_add(count, Ordering::AcqRel);
        let ticket_guard = Outstanding { counter: Arc::clone(&self.outstanding), count };
        if before + count > self.queue_max {
            return Err(SubmitError::Busy);
        }
        if !self.connected.load(Ordering::Acquire) {
            return Err(SubmitError::Unavailable);
        }
        let (reply, result) = oneshot::channel();
        self.submissions
            .send(Submission { frames, count, reply })
            .await
            .map_err(|_| SubmitError::Unavailable)?;
        Ok(Ticket {
            result,
            _outstanding: ticket_guard,
            highest_sequence: Arc::clone(&self.highest_sequence),
        })
    }
}

/// Gives back queue room when a submission is answered or abandoned.
struct Outstanding {
    counter: Arc<AtomicUsize>,
    count: usize,
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.count, Ordering::AcqRel);
    }
}

/// The results of one enqueued group, to be awaited.
pub struct Ticket {
    result: oneshot::Receiver<Result<Vec<ReplyFrame>, SubmitError>>,
    _outstanding: Outstanding,
    highest_sequence: Arc<AtomicU64>,
}

impl Ticket {
    /// Waits for the group's results.
    pub async fn results(self) -> Result<Vec<ReplyFrame>, SubmitError> {
        let outcome = self.result.await.unwrap_or(Err(SubmitError::Unavailable));
        if let Ok(results) = &outcome {
            let highest =
                results.iter().filter_map(|r| ledgerbus_sequencer::core::read_reply(r)).map(|r| r.1).max();
            if let Some(highest) = highest {
                self.highest_sequence.fetch_max(highest, Ordering::AcqRel);
            }
        }
        outcome
    }
}

async fn run_link(
    sequencer: SocketAddr,
    secret: Vec<u8>,
    gateway_id: u32,
    mut submissions: mpsc::Receiver<Submission>,
    link: Upstream,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match connect(sequencer, &secret, gateway_id).await {
            Ok((stream, welcome)) => {
                tracing::info!(%sequencer, session = format_args!("{:#018x}", welcome.session_id.get()),
                    next_sequence = welcome.next_sequence.get(), "connected to the sequencer");
                backoff = Duration::from_millis(50);
                link.session.store(welcome.session_id.get(), Ordering::Release);
                link.connected.store(true, Ordering::Release);
                let reason = serve(stream, &mut submissions).await;
                link.connected.store(false, Ordering::Release);
                tracing::warn!(%sequencer, %reason, "lost the sequencer; reconnecting");
            }
            Err(error) => {
                tracing::warn!(%sequencer, %error, retry_ms = backoff.as_millis() as u64, "cannot reach the sequencer");
            }
        }
        // While disconnected, fail what arrives instead of queueing it.
        let deadline = tokio::time::Instant::now() + backoff;
        while let Ok(Some(submission)) = tokio::time::timeout_at(deadline, submissions.recv()).await {
            let _ = submission.reply.send(Err(SubmitError::Unavailable));
        }
        if submissions.is_closed() {
            return;
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
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

async fn connect(
    sequencer: SocketAddr,
    secret: &[u8],
    gateway_id: u32,
) -> std::io::Result<(TcpStream, Welcome)> {
    let mut stream = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(sequencer))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let mut buf = Vec::new();
    read_frame(&mut stream, &mut buf).await?;
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let (challenge, _) = decode::<Challenge>(&buf).map_err(|_| invalid("expected a challenge"))?;
    let answer = Authenticate {
        gateway_id: gateway_id.into(),
        reserved: [0; 4],
        mac: ledgerbus_sequencer::auth::answer(secret, &challenge.nonce),
    };
    let mut bytes = [0u8; Authenticate::FRAME_SIZE];
    encode(&answer, &mut bytes).expect("sized");
    stream.write_all(&bytes).await?;
    read_frame(&mut stream, &mut buf).await.map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::PermissionDenied, "sequencer refused the gateway secret")
    })?;
    let (welcome, _) = decode::<Welcome>(&buf).map_err(|_| invalid("expected welcome"))?;
    Ok((stream, welcome.to_block()))
}

/// Moves submissions to the sequencer and results back until the connection fails.
async fn serve(stream: TcpStream, submissions: &mut mpsc::Receiver<Submission>) -> String {
    let (read_half, write_half) = stream.into_split();
    let waiting: Arc<Mutex<VecDeque<Waiting>>> = Arc::new(Mutex::new(VecDeque::new()));
    let failed = Arc::new(Notify::new());
    let reader_waiting = Arc::clone(&waiting);
    let reader_failed = Arc::clone(&failed);
    let reader = tokio::spawn(async move {
        let mut reader = BufReader::with_capacity(1 << 20, read_half);
        let mut buf = Vec::with_capacity(REPLY_FRAME_SIZE);
        let reason = loop {
            if let Err(error) = read_frame(&mut reader, &mut buf).await {
                break error.to_string();
            }
            let Ok(frame) = <ReplyFrame>::try_from(buf.as_slice()) else {
                break "unexpected reply size".into();
            };
            let mut queue = reader_waiting.lock().expect("waiting queue lock");
            let Some(front) = queue.front_mut() else { break "a result nobody asked for".into() };
            front.results.push(frame);
            front.remaining -= 1;
            if front.remaining == 0 {
                let done = queue.pop_front().expect("front exists");
                let _ = done.reply.send(Ok(done.results));
            }
        };
        reader_failed.notify_one();
        reason
    });
    let mut writer = BufWriter::with_capacity(1 << 20, write_half);
    let reason = loop {
        let submission = tokio::select! {
            submission = submissions.recv() => submission,
            _ = failed.notified() => break "connection closed by the sequencer".to_string(),
        };
        let Some(first) = submission else { break "gateway shutting down".into() };
        // Batch whatever else is ready into the same write.
        let mut batch = vec![first];
        while batch.len() < 4096 {
            match submissions.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut failed_write = None;
        for submission in batch {
            {
                let mut queue = waiting.lock().expect("waiting queue lock");
                queue.push_back(Waiting {
                    remaining: submission.count,
                    results: Vec::with_capacity(submission.count),
                    reply: submission.reply,
                });
            }
            if let Err(error) = writer.write_all(&submission.frames).await {
                failed_write = Some(error.to_string());
                break;
            }
        }
        if let Some(reason) = failed_write {
            break reason;
        }
        if let Err(error) = writer.flush().await {
            break error.to_string();
        }
    };
    reader.abort();
    let mut queue = waiting.lock().expect("waiting queue lock");
    for waiting in queue.drain(..) {
        let _ = waiting.reply.send(Err(SubmitError::Unavailable));
    }
    reason
}
