//! The TCP binary API: SBE frames, pipelined. A client sends ClientHello with its
//! API key, gets Welcome, then streams CreateAccount/Transfer frames with its own
//! correlation ids; results come back in the same order with those ids. Commands
//! are forwarded in groups that never split a linked chain. A full gateway queue or
//! an unreachable sequencer answers each command with a `busy` result (retry with
//! the same ids is safe). If the sequencer link drops while commands of a client are
//! in flight, that client's connection is closed: their outcome is unknown, and the
//! client re-sends them with the same ids, which never applies anything twice.
//!
//! LookupAccount and LookupTransfer frames may come between commands: each is answered
//! in its place by an AccountRecord or TransferRecord from the read model, asked only
//! once every command before it is answered, so a lookup sees the connection's own
//! writes. A lookup cannot split a linked chain.
//!
//! One task per connection reads commands and writes them to the sequencer itself;
//! results are written into the client's socket by the task that reads them from the
//! sequencer. No other task sits on the path (see `ledgerbus_client::wire`).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ledgerbus_codec::messages::{ClientHello, CreateAccountResult, TransferResult, Welcome};
use ledgerbus_codec::CHAIN_MAX;
use ledgerbus_codec::{decode, encode, next_group, DecodeError, Frame, Group, Message, ResultCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

mod outbox;
use outbox::{Outbox, OutboxState, Slot};

use crate::query::QueryLink;
use crate::upstream::{ReplyTo, ResultSink, Upstream};
use ledgerbus_client::wire::{drain, Filled, Incoming, Outgoing, Stream};

/// Submissions (one per read of a client's bytes) in flight per client connection
/// before we stop reading from it.
const IN_FLIGHT_MAX: usize = 4096;
/// Unwritten result bytes per client before we stop reading from it.
const UNWRITTEN_MAX: usize = 4 << 20;
/// Read buffer per client: a linked chain must fit in it.
const BUFFER_SIZE: usize = 1 << 20;

/// Limits of the TCP API, and its TLS.
#[derive(Clone)]
pub struct TcpLimits {
    /// A client that stops in the middle of a frame (or of its hello) for this long
    /// is disconnected; between frames it may stay idle.
    pub frame_timeout: Duration,
    /// Open client connections at most; more are closed at once (before the hello).
    pub connections_max: usize,
    /// TLS for every client connection, when the gateway has a certificate.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for TcpLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpLimits")
            .field("frame_timeout", &self.frame_timeout)
            .field("connections_max", &self.connections_max)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits { frame_timeout: Duration::from_secs(10), connections_max: 1_024, tls: None }
    }
}

/// Accepts TCP clients forever.
pub async fn serve(
    listener: TcpListener,
    upstream: Upstream,
    query: QueryLink,
    api_keys: Arc<HashSet<String>>,
    limits: TcpLimits,
) {
    let slots = crate::serve::ConnectionSlots::new(limits.connections_max);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Some(slot) = slots.take() else {
                    tracing::warn!(%peer, max = limits.connections_max, "too many TCP clients; refused");
                    drop(stream);
                    continue;
                };
                let upstream = upstream.clone();
                let query = query.clone();
                let keys = Arc::clone(&api_keys);
                let limits = limits.clone();
                tokio::spawn(async move {
                    if let Err(reason) = client(stream, upstream, query, keys, limits).await {
                        tracing::info!(%peer, %reason, "TCP client closed");
                    }
                    drop(slot);
                });
            }
            Err(error) => {
                tracing::warn!(%error, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Why a TCP client's connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed or was reset.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The TLS handshake failed or timed out.
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    /// No whole ClientHello within the frame timeout.
    #[error("no ClientHello within {0:?}")]
    HelloTimeout(Duration),
    /// The first frame was not a ClientHello.
    #[error("expected ClientHello: {0}")]
    NotHello(DecodeError),
    /// The ClientHello's key is not one of ours.
    #[error("invalid API key")]
    InvalidKey,
    /// Bytes that are not a command of this schema.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A frame or chain started and not finished within the frame timeout.
    #[error("stopped in the middle of a frame for {0:?}")]
    Stalled(Duration),
    /// The sequencer link dropped with this client's commands in flight: closing
    /// makes the client re-send them with the same ids.
    #[error("the sequencer link dropped with {0} of this client's commands unanswered")]
    Unanswered(usize),
}

async fn client(
    stream: TcpStream,
    upstream: Upstream,
    query: QueryLink,
    keys: Arc<HashSet<String>>,
    limits: TcpLimits,
) -> Result<(), ClientError> {
    stream.set_nodelay(true)?;
    let stream = match &limits.tls {
        None => Stream::Tcp(stream),
        Some(acceptor) => crate::tls::accept_bridged(acceptor, stream, limits.frame_timeout)
            .await
            .map_err(ClientError::Tls)?,
    };
    let stream = Arc::new(stream);
    let outcome = serve_client(&stream, upstream, query, keys, limits).await;
    // Send FIN before the socket closes: closing with unread input would otherwise
    // reset the connection, and the client could not tell a refusal from a crash.
    stream.shutdown_write();
    outcome
}

async fn serve_client(
    stream: &Arc<Stream>,
    upstream: Upstream,
    query: QueryLink,
    keys: Arc<HashSet<String>>,
    limits: TcpLimits,
) -> Result<(), ClientError> {
    let mut hello = [0u8; ClientHello::FRAME_SIZE];
    tokio::time::timeout(limits.frame_timeout, read_exact(stream, &mut hello))
        .await
        .map_err(|_| ClientError::HelloTimeout(limits.frame_timeout))??;
    let (hello, _) = decode::<ClientHello>(&hello).map_err(ClientError::NotHello)?;
    let key_len = hello.api_key.iter().position(|&b| b == 0).unwrap_or(hello.api_key.len());
    let key = std::str::from_utf8(&hello.api_key[..key_len]).unwrap_or("");
    if !keys.contains(key) {
        return Err(ClientError::InvalidKey);
    }
    let mut welcome = [0u8; Welcome::FRAME_SIZE];
    let session = upstream.session();
    encode(&Welcome { session_id: session.into(), next_sequence: 0.into() }, &mut welcome).expect("sized");
    let mut out = Outgoing::default();
    if out.send(stream, &welcome)? {
        drain(stream, || out.flush(stream)).await?;
    }
    let _counted = upstream.metrics.tcp_client();
    let outbox = Arc::new(Outbox {
        stream: Arc::clone(stream),
        metrics: Arc::clone(&upstream.metrics),
        state: Mutex::new(OutboxState {
            out: Outgoing::default(),
            slots: VecDeque::new(),
            lost: None,
            paused: false,
        }),
        wake: Notify::new(),
        front_changed: Notify::new(),
    });
    let sink: Arc<dyn ResultSink> = outbox.clone();
    let mut lookups: u64 = 0;
    let mut incoming = Incoming::with_capacity(BUFFER_SIZE);
    // Set while a frame (or a linked chain) is incomplete: when its rest is due.
    let mut partial_since: Option<tokio::time::Instant> = None;
    loop {
        let reading = {
            let mut state = outbox.lock();
            if let Some(unanswered) = state.lost {
                // Their outcome is unknown: closing makes the client re-send them
                // with the same ids, which the ledger answers without applying twice.
                return Err(ClientError::Unanswered(unanswered));
            }
            state.paused = !Outbox::has_room(&state);
            !state.paused
        };
        let partial_deadline = partial_since.map(|since| since + limits.frame_timeout);
        tokio::select! {
            ready = stream.readable(), if reading => {
                ready?;
                match incoming.fill(stream)? {
                    Filled::Closed => return Ok(()),
                    Filled::Nothing => continue,
                    Filled::Bytes => {}
                }
                // Commands up to the next lookup go to the sequencer; each lookup
                // takes its place in line; then the commands after it, and so on.
                let mut went_through = false;
                loop {
                    let groups = split_groups(incoming.bytes(), upstream.room());
                    if groups.whole > 0 {
                        submit(&upstream, &outbox, &sink, &incoming.bytes()[..groups.whole], &groups);
                        incoming.consume(groups.whole);
                        went_through = true;
                    }
                    if let Some(error) = groups.error {
                        return Err(ClientError::Malformed(error));
                    }
                    let Some((lookup, size)) = lookup_at(incoming.bytes()) else { break };
                    lookups += 1;
                    outbox.lock().slots.push_back(Slot::Lookup(lookups));
                    tokio::spawn(answer_lookup(Arc::clone(&outbox), lookups, lookup, query.clone(), upstream.clone()));
                    incoming.consume(size);
                    went_through = true;
                }
                // The clock runs from the first byte of an incomplete frame or chain,
                // and restarts only when a whole one went through: a client dribbling
                // a byte at a time cannot hold the connection for ever.
                if incoming.bytes().is_empty() {
                    partial_since = None;
                } else if went_through || partial_since.is_none() {
                    partial_since = Some(tokio::time::Instant::now());
                }
            }
            _ = tokio::time::sleep_until(partial_deadline.unwrap_or_else(tokio::time::Instant::now)),
                if partial_deadline.is_some() && reading => {
                return Err(ClientError::Stalled(limits.frame_timeout));
            }
            _ = outbox.wake.notified() => {
                drain(stream, || outbox.lock().out.flush(stream)).await?;
            }
        }
    }
}

/// Fills `buf` from a shared stream.
async fn read_exact(stream: &Stream, buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        stream.readable().await?;
        match stream.try_read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before the handshake",
                ))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends one read's whole groups to the sequencer, as many as its queue has room
/// for, and answers the rest `busy` here (in their place, after the others).
fn submit(
    upstream: &Upstream,
    outbox: &Outbox,
    sink: &Arc<dyn ResultSink>,
    commands: &[u8],
    groups: &Groups,
) {
    let metrics = &upstream.metrics;
    let (taken, count) = (groups.fits, groups.fits_commands);
    if count > 0 {
        // The slot exists before the submission, so its results always find it.
        let slot = Slot::AtSequencer { remaining: count, since: std::time::Instant::now(), held: Vec::new() };
        outbox.lock().slots.push_back(slot);
        let sent = upstream.submit_to(&commands[..taken], count, ReplyTo::Sink(Arc::clone(sink)));
        if sent.is_ok() {
            metrics.tcp_commands.inc_by(count as u64);
        } else {
            // Nothing was sent, so no result can have taken the slot: it is still last.
            let mut state = outbox.lock();
            debug_assert!(
                matches!(state.slots.back(), Some(Slot::AtSequencer { remaining, .. }) if *remaining == count)
            );
            state.slots.pop_back();
            drop(state);
            answer_busy(outbox, metrics, &commands[..taken]);
        }
    }
    if taken < commands.len() {
        answer_busy(outbox, metrics, &commands[taken..]);
    }
}

fn answer_busy(outbox: &Outbox, metrics: &crate::metrics::GatewayMetrics, commands: &[u8]) {
    let answers = busy_answers(commands);
    metrics.tcp_busy.inc_by((answers.len() / TransferResult::FRAME_SIZE) as u64);
    outbox.answer_here(answers);
}

/// How a read's bytes divide into groups of commands (a linked chain is one group).
struct Groups {
    /// Bytes of whole groups; a chain not yet complete waits for more bytes.
    whole: usize,
    /// Bytes of the whole groups the sequencer queue has room for, and their commands.
    fits: usize,
    fits_commands: usize,
    /// Where the bytes stop being ledgerbus commands.
    error: Option<String>,
}

/// One pass over a read: its whole groups, those of them that fit in `room`
/// commands, and a framing error, if the bytes are not ledgerbus commands.
fn split_groups(bytes: &[u8], room: usize) -> Groups {
    let mut groups = Groups { whole: 0, fits: 0, fits_commands: 0, error: None };
    let mut commands = 0;
    while groups.whole < bytes.len() {
        let rest = &bytes[groups.whole..];
        // The same grouping as the sequencer's intake: a chain ends at its first
        // unlinked transfer, at another message, or at the member limit.
        let group = next_group(rest, CHAIN_MAX + 1, |_| {});
        match group {
            Group::Whole { size, commands: members } | Group::Cut { size, commands: members } => {
                if matches!(group, Group::Cut { .. }) && lookup_at(&rest[size..]).is_some() {
                    groups.error = Some("a lookup cannot split a linked chain".into());
                    break;
                }
                groups.whole += size;
                commands += members;
                if commands <= room {
                    (groups.fits, groups.fits_commands) = (groups.whole, commands);
                }
            }
            Group::Partial { .. } => break,
            // A lookup: the commands before it go first; the caller answers it.
            Group::NotACommand { .. } if lookup_at(rest).is_some() => break,
            Group::NotACommand { template } => {
                groups.error = Some(format!("template {template} is not a command"));
                break;
            }
            Group::Malformed(error) => {
                groups.error = Some(error.to_string());
                break;
            }
        }
    }
    groups
}

/// A lookup asked on the TCP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    Account { correlation_id: u64, id: u128 },
    Transfer { correlation_id: u64, id: u128 },
    History { correlation_id: u64, account: u128, after: u64, limit: u32 },
}

/// The lookup frame at the start of `bytes`, and its size.
fn lookup_at(bytes: &[u8]) -> Option<(Lookup, usize)> {
    match Frame::decode(bytes) {
        Ok((Frame::LookupAccount(l), size)) => {
            Some((Lookup::Account { correlation_id: l.correlation_id.get(), id: l.id.get() }, size))
        }
        Ok((Frame::LookupTransfer(l), size)) => {
            Some((Lookup::Transfer { correlation_id: l.correlation_id.get(), id: l.id.get() }, size))
        }
        Ok((Frame::LookupHistory(l), size)) => Some((
            Lookup::History {
                correlation_id: l.correlation_id.get(),
                account: l.account_id.get(),
                after: l.after_sequence.get(),
                limit: l.limit.get(),
            },
            size,
        )),
        _ => None,
    }
}

/// Answers one lookup in its place: once everything before it on the connection is
/// answered, asks the read model (having applied what this gateway acknowledged
/// about the id looked up) and writes the record.
async fn answer_lookup(
    outbox: Arc<Outbox>,
    token: u64,
    lookup: Lookup,
    query: QueryLink,
    upstream: Upstream,
) {
    if !outbox.first_in_line(token).await {
        return;
    }
    let started = std::time::Instant::now();
    let marks = &upstream.write_marks;
    let record = match lookup {
        Lookup::Account { correlation_id, id } => {
            let looked = query.get(&format!("/accounts/{id}"), marks.read_after(id)).await;
            crate::query::account_record(correlation_id, id, &looked)
        }
        Lookup::Transfer { correlation_id, id } => {
            let looked = query.get(&format!("/transfers/{id}"), marks.read_after(id)).await;
            crate::query::transfer_record(correlation_id, id, &looked)
        }
        Lookup::History { correlation_id, account, after, limit } => {
            let limit = limit.clamp(1, crate::query::HISTORY_LIMIT_MAX);
            let after = if after == 0 { String::new() } else { format!("&after=c{after:x}") };
            let path = format!("/accounts/{account}/transfers?limit={limit}{after}");
            let looked = query.get(&path, marks.read_after(account)).await;
            crate::query::history_page(correlation_id, &looked)
        }
    };
    outbox.metrics.record_tcp_lookup(started.elapsed());
    outbox.answer_lookup(token, &record);
}

/// Answers every command in `commands` with a `busy` result.
fn busy_answers(commands: &[u8]) -> Vec<u8> {
    let mut answers = Vec::with_capacity(commands.len());
    for frame in ledgerbus_codec::Frames::new(commands).map_while(Result::ok) {
        let mut reply = [0u8; TransferResult::FRAME_SIZE];
        match Frame::decode(frame) {
            Ok((Frame::Transfer(t), _)) => {
                encode(&TransferResult::answering(&t, 0, 0, ResultCode::Busy), &mut reply).expect("sized");
            }
            Ok((Frame::CreateAccount(a), _)) => {
                encode(&CreateAccountResult::answering(&a, 0, 0, ResultCode::Busy), &mut reply)
                    .expect("sized");
            }
            _ => continue,
        }
        answers.extend_from_slice(&reply);
    }
    answers
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledgerbus_codec::messages::LookupAccount;
    use ledgerbus_codec::messages::Transfer;

    fn transfer(id: u128, linked: bool) -> Vec<u8> {
        let command = Transfer {
            correlation_id: 0.into(),
            id: id.into(),
            debit_account_id: 1u128.into(),
            credit_account_id: 2u128.into(),
            amount: 1.into(),
            ledger: 1.into(),
            code: 1.into(),
            flags: if linked { ledgerbus_codec::transfer_flags::LINKED } else { 0 }.into(),
            ..Default::default()
        };
        let mut frame = vec![0u8; Transfer::FRAME_SIZE];
        encode(&command, &mut frame).unwrap();
        frame
    }

    #[test]
    fn reads_split_at_chain_ends_and_at_the_queue_room() {
        // A single, a chain of three, a single, then the start of another chain.
        let bytes = [
            transfer(1, false),
            transfer(2, true),
            transfer(3, true),
            transfer(4, false),
            transfer(5, false),
        ]
        .concat();
        let with_open_chain = [bytes.clone(), transfer(6, true)].concat();
        let size = Transfer::FRAME_SIZE;
        let groups = split_groups(&with_open_chain, usize::MAX);
        assert_eq!((groups.whole, groups.fits, groups.fits_commands), (5 * size, 5 * size, 5));
        assert!(groups.error.is_none());
        // Room for three commands: the chain does not fit after the single, so
        // only the single goes; nothing later may jump the queue.
        let groups = split_groups(&bytes, 3);
        assert_eq!((groups.whole, groups.fits, groups.fits_commands), (5 * size, size, 1));
        let groups = split_groups(&bytes, 0);
        assert_eq!((groups.fits, groups.fits_commands), (0, 0));
        // Half a frame waits; foreign bytes are an error after the good prefix.
        assert_eq!(split_groups(&bytes[..size + 10], 9).whole, size);
        let garbage = [transfer(1, false), vec![0xEE; 64]].concat();
        let groups = split_groups(&garbage, 9);
        assert_eq!(groups.whole, size);
        assert!(groups.error.is_some());
    }

    fn lookup(id: u128) -> Vec<u8> {
        let mut frame = vec![0u8; LookupAccount::FRAME_SIZE];
        encode(&LookupAccount { correlation_id: 0.into(), id: id.into() }, &mut frame).unwrap();
        frame
    }

    #[test]
    fn a_lookup_ends_the_commands_before_it_and_may_not_split_a_chain() {
        let before = [transfer(1, false), transfer(2, false)].concat();
        let bytes = [before.clone(), lookup(9), transfer(3, false)].concat();
        let groups = split_groups(&bytes, 100);
        assert_eq!((groups.whole, groups.error.as_deref()), (before.len(), None), "stops at the lookup");
        assert_eq!(
            lookup_at(&bytes[before.len()..]).map(|(l, _)| l),
            Some(Lookup::Account { correlation_id: 0, id: 9 })
        );
        let split = [transfer(4, true), lookup(9), transfer(5, false)].concat();
        assert_eq!(split_groups(&split, 100).error.as_deref(), Some("a lookup cannot split a linked chain"));
    }
}
