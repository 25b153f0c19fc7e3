//! The sequencer's decision core, sans-IO: commands and a timestamp in, a batch of
//! event frames and replies out. The driver journals the batch, and only with the
//! journal's [`Durable`] proof can it turn the batch into a [`DurableBatch`] whose
//! events may be published and whose replies may be sent (docs/architecture.md, "Design rules" 3):
//! "journal before publish or acknowledge" is a type, not a convention.

use ledgerbus_codec::messages::{
    AccountEvent, CreateAccount, CreateAccountResult, PendingExpired, Transfer, TransferEvent, TransferResult,
};
use ledgerbus_codec::{encode, encode_compact, Message, ResultCode};
use ledgerbus_ledger::{ApplyError, Ledger, Replica, TransferIds};
use ledgerbus_protocol::REPLY_FRAME_SIZE;

use ledgerbus_log::journal::{Durable, JournalWriter};

/// A reply for one command, addressed to the connection it came from.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    /// The driver's id of the gateway connection.
    pub connection: u32,
    /// An encoded CreateAccountResult or TransferResult frame.
    pub frame: [u8; REPLY_FRAME_SIZE],
    /// The decision the frame carries, so that nobody decodes it again.
    pub result: ResultCode,
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

    /// The replies decided so far, in order (not to be sent before the batch is
    /// durable: that is [`DurableBatch::replies`]).
    pub fn replies(&self) -> &[Reply] {
        &self.replies
    }

    /// The event frames, back to back (a group member's Raft entry data).
    pub fn event_bytes(&self) -> &[u8] {
        &self.events
    }

    /// The rolling log hash after the batch's last event.
    pub fn last_hash(&self) -> u64 {
        self.last_hash
    }

    /// One past the batch's last event.
    pub fn end_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Forgets the batch's contents, keeping its memory.
    pub fn clear(&mut self) {
        self.events.clear();
        self.event_ends.clear();
        self.replies.clear();
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
/// the ledger, and records the event and the reply. Its state is a
/// [`Replica`]: what an event does is decided here and applied there, the same rule
/// as every follower's.
#[derive(Debug)]
pub struct SequencerCore {
    replica: Replica,
    chain_results: Vec<ResultCode>,
    /// The chain being decided, resolved in place (reused, bounded by CHAIN_MAX).
    chain: Vec<Transfer>,
    /// Each chain member's time stamp (reused).
    stamps: Vec<u64>,
}

/// Most pending transfers expired ahead of one command: the rest expire ahead of
/// the next ones or when the driver calls [`SequencerCore::expire_due`] between
/// turns, so a mass expiry never makes one huge batch nor delays one command much.
pub const EXPIRIES_PER_DECISION: usize = 16;

impl SequencerCore {
    /// A core continuing the log where `replica` stands.
    pub fn new(replica: Replica) -> SequencerCore {
        let chain_max = ledgerbus_ledger::ledger::CHAIN_MAX;
        SequencerCore {
            replica,
            chain_results: Vec::with_capacity(chain_max),
            chain: Vec::with_capacity(chain_max),
            stamps: Vec::with_capacity(chain_max),
        }
    }

    /// The state and position.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The state and position, mutable (recovery applies the journal to it).
    pub fn replica_mut(&mut self) -> &mut Replica {
        &mut self.replica
    }

    /// The sequence of the next event.
    pub fn next_sequence(&self) -> u64 {
        self.replica.next_sequence()
    }

    /// The rolling hash over every event so far.
    pub fn log_hash(&self) -> u64 {
        self.replica.log_hash()
    }

    /// The ledger state.
    pub fn ledger(&self) -> &Ledger {
        self.replica.ledger()
    }

    /// Prefetches what deciding transfer `id` will touch first (see `Ledger`).
    #[inline]
    pub fn prefetch_transfer(&self, id: u128) {
        self.replica.ledger().prefetch_transfer(id);
    }

    /// Decides a CreateAccount from `connection`.
    pub fn decide_account(
        &mut self,
        connection: u32,
        command: &CreateAccount,
        now_ns: u64,
        batch: &mut PendingBatch,
    ) {
        self.expire_due(now_ns, EXPIRIES_PER_DECISION, batch);
        let timestamp_ns = self.replica.stamp(now_ns);
        let result = self.replica.ledger_mut().create_account(command, timestamp_ns);
        let sequence = self.replica.next_sequence();
        let event = AccountEvent::deciding(command, sequence, timestamp_ns, result);
        let reply = CreateAccountResult::answering(command, sequence, timestamp_ns, result);
        self.record(&event, Some((connection, &reply, result)), batch);
    }

    /// Expires pending transfers whose deadline is at or before `now_ns` (at most
    /// `max`), each as a `PendingExpired` event in `batch`: before every decision,
    /// and by the driver on every turn (so they expire when no command comes).
    /// Returns how many.
    pub fn expire_due(&mut self, now_ns: u64, max: usize, batch: &mut PendingBatch) -> usize {
        let mut expired = 0;
        while expired < max {
            let Some((deadline, id)) = self.replica.ledger().next_expiry() else { break };
            if deadline > now_ns {
                break;
            }
            let timestamp_ns = self.replica.stamp(now_ns);
            let pending =
                self.replica.ledger_mut().expire(id, timestamp_ns).expect("a due pending transfer expires");
            let event = PendingExpired {
                sequence: self.replica.next_sequence().into(),
                timestamp_ns: timestamp_ns.into(),
                pending_id: id.into(),
                debit_account_id: pending.debit.into(),
                credit_account_id: pending.credit.into(),
                amount: pending.amount.into(),
                ledger: pending.ledger.into(),
                code: pending.code.into(),
                flags: pending.flags.into(),
                reserved: [0; 8],
            };
            self.record::<_, TransferResult>(&event, None, batch);
            expired += 1;
        }
        expired
    }

    /// The deadline of the next pending transfer to expire, if any.
    pub fn next_expiry_ns(&self) -> Option<u64> {
        self.replica.ledger().next_expiry().map(|(deadline, _)| deadline)
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
        self.expire_due(now_ns, EXPIRIES_PER_DECISION, batch);
        if let [single] = chain {
            // The common case, without the chain's buffers.
            let timestamp_ns = self.replica.stamp(now_ns);
            let mut command = *single;
            let result = self.replica.ledger_mut().transfer(&mut command, timestamp_ns);
            self.record_transfer(connection, &command, timestamp_ns, result, batch);
            return;
        }
        let mut results = std::mem::take(&mut self.chain_results);
        let mut resolved = std::mem::take(&mut self.chain);
        let mut stamps = std::mem::take(&mut self.stamps);
        results.clear();
        results.resize(chain.len(), ResultCode::Ok);
        resolved.clear();
        resolved.extend_from_slice(chain);
        stamps.clear();
        stamps.extend(chain.iter().map(|_| self.replica.stamp(now_ns)));
        self.replica.ledger_mut().transfer_chain(&mut resolved, &stamps, &mut results);
        for ((command, result), timestamp_ns) in resolved.iter().zip(&results).zip(&stamps) {
            self.record_transfer(connection, command, *timestamp_ns, *result, batch);
        }
        self.chain_results = results;
        self.chain = resolved;
        self.stamps = stamps;
    }

    /// Records a decided transfer: its event (the transfer as resolved, what it did)
    /// and its reply (same correlation id and transfer id as the command sent).
    fn record_transfer(
        &mut self,
        connection: u32,
        resolved: &Transfer,
        timestamp_ns: u64,
        result: ResultCode,
        batch: &mut PendingBatch,
    ) {
        let sequence = self.replica.next_sequence();
        let event = TransferEvent::deciding(resolved, sequence, timestamp_ns, result);
        let reply = TransferResult::answering(resolved, sequence, timestamp_ns, result);
        self.record(&event, Some((connection, &reply, result)), batch);
    }

    /// Appends `event` to the batch (in the oldest schema version that carries it,
    /// see [`encode_compact`]) and, for a command, its reply.
    fn record<E: Message, R: Message>(
        &mut self,
        event: &E,
        reply: Option<(u32, &R, ResultCode)>,
        batch: &mut PendingBatch,
    ) {
        let start = batch.events.len();
        batch.events.resize(start + E::FRAME_SIZE, 0);
        let size = encode_compact(event, &mut batch.events[start..]).expect("sized above");
        batch.events.truncate(start + size);
        self.replica.append_decided(&batch.events[start..]);
        batch.event_ends.push(batch.events.len() as u32);
        if let Some((connection, reply, result)) = reply {
            let mut frame = [0u8; REPLY_FRAME_SIZE];
            encode(reply, &mut frame).expect("reply frames share one size");
            batch.replies.push(Reply { connection, frame, result });
        }
        batch.next_sequence = self.replica.next_sequence();
        batch.last_hash = self.replica.log_hash();
    }

    /// Re-applies one journaled event at start-up (remembering transfer ids). Events
    /// must come in order and apply exactly as they were decided; anything else is
    /// corruption.
    pub fn replay(&mut self, frame: &[u8]) -> Result<(), ApplyError> {
        self.replica.apply(frame, TransferIds::Remember)
    }
}
