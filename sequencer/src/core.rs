//! The sequencer's decision core, sans-IO: commands and a timestamp in, a batch of
//! event frames and replies out. The driver journals the batch, and only with the
//! journal's [`Durable`] proof can it turn the batch into a [`DurableBatch`] whose
//! events may be published and whose replies may be sent (docs/architecture.md, "Design rules" 3):
//! "journal before publish or acknowledge" is a type, not a convention.

use ledgerbus_codec::messages::{
    AccountEvent, CreateAccount, CreateAccountResult, Transfer, TransferEvent, TransferResult,
};
use ledgerbus_codec::{decode, encode, Frame, Message, ResultCode};
use ledgerbus_ledger::{Ledger, RollingHash};

use crate::journal::{Durable, JournalWriter};

/// Size of a reply frame (both result messages share it).
pub const REPLY_FRAME_SIZE: usize = TransferResult::FRAME_SIZE;
const _: () = assert!(CreateAccountResult::FRAME_SIZE == TransferResult::FRAME_SIZE);

/// A reply for one command, addressed to the connection it came from.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    /// The driver's id of the gateway connection.
    pub connection: u32,
    /// An encoded CreateAccountResult or TransferResult frame.
    pub frame: [u8; REPLY_FRAME_SIZE],
}

/// Events and replies decided together, not yet durable.
#[derive(Debug, Default)]
pub struct PendingBatch {
    /// Event frames back to back.
    events: Vec<u8>,
    /// End offset of each event frame in `events`.
    event_ends: Vec<u32>,
    replies: Vec<Reply>,
    /// One past the last event's sequence.
    next_sequence: u64,
    /// The rolling log hash after the last event.
    last_hash: u64,
}

impl PendingBatch {
    /// An empty batch with room reserved for `events` events.
    pub fn with_capacity(events: usize) -> PendingBatch {
        PendingBatch {
            events: Vec::with_capacity(events * TransferEvent::FRAME_SIZE),
            event_ends: Vec::with_capacity(events),
            replies: Vec::with_capacity(events),
            next_sequence: 0,
            last_hash: 0,
        }
    }

    /// Events decided.
    pub fn len(&self) -> usize {
        self.event_ends.len()
    }

    /// Whether nothing was decided.
    pub fn is_empty(&self) -> bool {
        self.event_ends.is_empty()
    }

    /// Appends every event to the journal (not yet committed).
    pub fn append_to(&self, journal: &mut JournalWriter) {
        for frame in frames(&self.events, &self.event_ends) {
            journal.append(frame);
        }
    }

    /// The batch once the journal has made it durable.
    ///
    /// # Panics
    /// If `proof` does not cover the batch: that would publish an event that could
    /// be lost, the one thing this type exists to prevent.
    pub fn into_durable(self, proof: &Durable) -> DurableBatch {
        assert!(
            self.is_empty() || proof.next_sequence() >= self.next_sequence,
            "batch published before it was durable"
        );
        DurableBatch { inner: self }
    }
}

/// A batch whose events are durable: they may be published and acknowledged.
#[derive(Debug)]
pub struct DurableBatch {
    inner: PendingBatch,
}

impl DurableBatch {
    /// The event frames, in sequence order.
    pub fn events(&self) -> impl Iterator<Item = &[u8]> {
        frames(&self.inner.events, &self.inner.event_ends)
    }

    /// The replies, in decision order.
    pub fn replies(&self) -> &[Reply] {
        &self.inner.replies
    }

    /// Events in the batch.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// The rolling log hash after the batch's last event.
    pub fn last_hash(&self) -> u64 {
        self.inner.last_hash
    }

    /// Sequence of the batch's last event.
    pub fn last_sequence(&self) -> Option<u64> {
        (!self.is_empty()).then(|| self.inner.next_sequence - 1)
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// An empty pending batch reusing this one's memory.
    pub fn recycle(mut self) -> PendingBatch {
        self.inner.events.clear();
        self.inner.event_ends.clear();
        self.inner.replies.clear();
        self.inner
    }
}

fn frames<'a>(events: &'a [u8], ends: &'a [u32]) -> impl Iterator<Item = &'a [u8]> {
    let starts = std::iter::once(0).chain(ends.iter().map(|&e| e as usize));
    starts.zip(ends.iter()).map(move |(start, &end)| &events[start..end as usize])
}

/// Decides commands in arrival order: stamps sequence and timestamp, applies them to
/// the ledger, and records the event and the reply.
#[derive(Debug)]
pub struct SequencerCore {
    ledger: Ledger,
    next_sequence: u64,
    last_timestamp_ns: u64,
    hash: RollingHash,
    chain_results: Vec<ResultCode>,
}

impl SequencerCore {
    /// A core continuing a log at `next_sequence` with `ledger` (rebuilt by replay).
    pub fn new(ledger: Ledger) -> SequencerCore {
        SequencerCore {
            ledger,
            next_sequence: 1,
            last_timestamp_ns: 0,
            hash: RollingHash::EMPTY,
            chain_results: Vec::with_capacity(ledgerbus_ledger::ledger::CHAIN_MAX),
        }
    }

    /// The sequence of the next event.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// The rolling hash over every event so far.
    pub fn log_hash(&self) -> u64 {
        self.hash.value()
    }

    /// The ledger state.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Prefetches what deciding transfer `id` will touch first (see `Ledger`).
    #[inline]
    pub fn prefetch_transfer(&self, id: u128) {
        self.ledger.prefetch_transfer(id);
    }

    /// The ledger state, mutable (recovery swaps the transfer index in and out).
    pub fn ledger_mut(&mut self) -> &mut Ledger {
        &mut self.ledger
    }

    /// Strictly increasing timestamps, even if the wall clock steps back.
    fn stamp(&mut self, now_ns: u64) -> u64 {
        self.last_timestamp_ns = now_ns.max(self.last_timestamp_ns + 1);
        self.last_timestamp_ns
    }

    /// Decides a CreateAccount from `connection`.
    pub fn decide_account(
        &mut self,
        connection: u32,
        command: &CreateAccount,
        now_ns: u64,
        batch: &mut PendingBatch,
    ) {
        let timestamp_ns = self.stamp(now_ns);
        let result = self.ledger.create_account(command, timestamp_ns);
        let sequence = self.next_sequence;
        let event = AccountEvent {
            sequence: sequence.into(),
            timestamp_ns: timestamp_ns.into(),
            id: command.id,
            ledger: command.ledger,
            code: command.code,
            flags: command.flags,
            result: result.to_wire().into(),
            reserved: [0; 6],
        };
        let reply = CreateAccountResult::answering(command, sequence, timestamp_ns, result);
        self.record(&event, connection, &reply, batch);
    }

    /// Decides a chain of transfers from `connection`: one transfer, or linked ones
    /// ending with an unlinked transfer (all-or-nothing).
    pub fn decide_transfers(
        &mut self,
        connection: u32,
        chain: &[Transfer],
        now_ns: u64,
        batch: &mut PendingBatch,
    ) {
        let mut results = std::mem::take(&mut self.chain_results);
        results.clear();
        results.resize(chain.len(), ResultCode::Ok);
        if chain.len() == 1 {
            results[0] = self.ledger.transfer(&chain[0]);
        } else {
            self.ledger.transfer_chain(chain, &mut results);
        }
        for (command, result) in chain.iter().zip(&results) {
            let timestamp_ns = self.stamp(now_ns);
            let sequence = self.next_sequence;
            let event = TransferEvent {
                sequence: sequence.into(),
                timestamp_ns: timestamp_ns.into(),
                id: command.id,
                debit_account_id: command.debit_account_id,
                credit_account_id: command.credit_account_id,
                amount: command.amount,
                ledger: command.ledger,
                code: command.code,
                flags: command.flags,
                result: result.to_wire().into(),
                reserved: [0; 6],
            };
            let reply = TransferResult::answering(command, sequence, timestamp_ns, *result);
            self.record(&event, connection, &reply, batch);
        }
        self.chain_results = results;
    }

    fn record<E: Message, R: Message>(
        &mut self,
        event: &E,
        connection: u32,
        reply: &R,
        batch: &mut PendingBatch,
    ) {
        let start = batch.events.len();
        batch.events.resize(start + E::FRAME_SIZE, 0);
        encode(event, &mut batch.events[start..]).expect("sized above");
        self.hash.update(&batch.events[start..]);
        batch.event_ends.push(batch.events.len() as u32);
        let mut frame = [0u8; REPLY_FRAME_SIZE];
        encode(reply, &mut frame).expect("reply frames share one size");
        batch.replies.push(Reply { connection, frame });
        self.next_sequence += 1;
        batch.next_sequence = self.next_sequence;
        batch.last_hash = self.hash.value();
    }

    /// Re-applies one journaled event at start-up. Events must come in order and apply
    /// exactly as they were decided; anything else is reported as corruption.
    pub fn replay(&mut self, frame: &[u8]) -> Result<(), String> {
        self.apply_event(frame, true)
    }

    /// Recovery fast path: applies a batch of journaled events like [`Self::follow`]
    /// (balances, hash, position) and appends the (id, fingerprint) of every applied
    /// transfer to `ids`, for the transfer index being rebuilt on another thread.
    pub fn recover_batch(&mut self, frames: &[u8], ids: &mut Vec<(u128, u64)>) -> Result<(), String> {
        for frame in ledgerbus_codec::Frames::new(frames) {
            let frame = frame.map_err(|e| format!("undecodable event: {e}"))?;
            let (decoded, _) = Frame::decode(frame).map_err(|e| format!("undecodable event: {e}"))?;
            if let Frame::TransferEvent(event) = &decoded {
                if event.result() == Ok(ResultCode::Ok) {
                    ids.push((event.id.get(), ledgerbus_ledger::ledger::fingerprint(&command_of(event))));
                }
            }
            self.apply_decoded(&decoded, frame, false)?;
        }
        Ok(())
    }

    /// Applies one event as a consumer does: balances and the log hash, without the
    /// transfer-id index that only a decider needs (see `Ledger::post_transfer`).
    pub fn follow(&mut self, frame: &[u8]) -> Result<(), String> {
        self.apply_event(frame, false)
    }

    /// [`follow`](Self::follow) for a caller that has decoded `frame` already.
    pub fn follow_decoded(&mut self, decoded: &Frame<'_>, frame: &[u8]) -> Result<(), String> {
        self.apply_decoded(decoded, frame, false)
    }

    fn apply_event(&mut self, frame: &[u8], remember_ids: bool) -> Result<(), String> {
        let (decoded, _) = Frame::decode(frame).map_err(|e| format!("undecodable event: {e}"))?;
        self.apply_decoded(&decoded, frame, remember_ids)
    }

    /// Applies an event already decoded from `frame`. The position is checked before
    /// anything changes, so an event out of place leaves the state as it was.
    fn apply_decoded(&mut self, decoded: &Frame<'_>, frame: &[u8], remember_ids: bool) -> Result<(), String> {
        let Some(sequence) = decoded.event_sequence() else {
            return Err(format!("template {} is not an event", decoded.template_id()));
        };
        if sequence != self.next_sequence {
            return Err(format!("event {sequence} where {} belongs", self.next_sequence));
        }
        let timestamp_ns = match decoded {
            Frame::AccountEvent(event) => {
                if event.result().map_err(|e| e.to_string())? == ResultCode::Ok {
                    let command = CreateAccount {
                        correlation_id: 0.into(),
                        id: event.id,
                        ledger: event.ledger,
                        code: event.code,
                        flags: event.flags,
                    };
                    let again = self.ledger.create_account(&command, event.timestamp_ns.get());
                    if again != ResultCode::Ok {
                        return Err(format!("account event {sequence} no longer applies: {again:?}"));
                    }
                }
                event.timestamp_ns.get()
            }
            Frame::TransferEvent(event) => {
                if event.result().map_err(|e| e.to_string())? == ResultCode::Ok {
                    let command = command_of(event);
                    let applied = if remember_ids {
                        self.ledger.replay_transfer(&command)
                    } else {
                        self.ledger.post_transfer(&command)
                    };
                    applied
                        .map_err(|code| format!("transfer event {sequence} no longer applies: {code:?}"))?;
                }
                event.timestamp_ns.get()
            }
            _ => unreachable!("event_sequence is Some only for events"),
        };
        self.hash.update(frame);
        self.next_sequence += 1;
        self.last_timestamp_ns = self.last_timestamp_ns.max(timestamp_ns);
        Ok(())
    }
}

impl SequencerCore {
    /// Writes the state (ledger, position, log hash) as a snapshot.
    pub fn write_snapshot(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let header = [self.next_sequence, self.last_timestamp_ns, self.hash.value(), 0];
        ledgerbus_ledger::snapshot::write(&self.ledger, &header, out)
    }

    /// A core restored from a snapshot.
    pub fn read_snapshot(input: &mut impl std::io::Read) -> std::io::Result<SequencerCore> {
        let (ledger, header) = ledgerbus_ledger::snapshot::read(input)?;
        let mut core = SequencerCore::new(ledger);
        core.next_sequence = header[0];
        core.last_timestamp_ns = header[1];
        core.hash = RollingHash::from_value(header[2]);
        Ok(core)
    }
}

/// The command a transfer event decided (the correlation id is not journaled).
fn command_of(event: &TransferEvent) -> Transfer {
    Transfer {
        correlation_id: 0.into(),
        id: event.id,
        debit_account_id: event.debit_account_id,
        credit_account_id: event.credit_account_id,
        amount: event.amount,
        ledger: event.ledger,
        code: event.code,
        flags: event.flags,
    }
}

/// Reads the result code and sequence of a reply frame (for tests and clients).
pub fn read_reply(frame: &[u8]) -> Option<(u64, u64, ResultCode)> {
    if let Ok((view, _)) = decode::<TransferResult>(frame) {
        return Some((view.correlation_id.get(), view.sequence.get(), view.result().ok()?));
    }
    let (view, _) = decode::<CreateAccountResult>(frame).ok()?;
    Some((view.correlation_id.get(), view.sequence.get(), view.result().ok()?))
}
