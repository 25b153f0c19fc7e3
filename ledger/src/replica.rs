//! The follower side of the ledger: a [`Ledger`] plus where it stands in the log
//! (the next sequence, the last time stamp, the rolling hash of every event so far).
//! Events are applied as events, in order; anything out of place or that no longer
//! applies is refused before it changes a thing. The sequencer's decider, recovery,
//! the consumers and the replay tool all keep their state in one of these, so the
//! rule for "what an event does" lives here once.

use ledgerbus_codec::{DecodeError, Frame, ResultCode};

use crate::hash::RollingHash;
use crate::ledger::{fingerprint, Ledger};

/// Why an event was refused. The replica is unchanged after any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The bytes are not a frame of this schema.
    #[error("undecodable event: {0}")]
    Undecodable(DecodeError),
    /// A frame of another kind (a command, a result) where an event belongs.
    #[error("template {0} is not an event")]
    NotAnEvent(u16),
    /// The event's sequence is not the next one.
    #[error("event {sequence} where {expected} belongs")]
    OutOfPlace {
        /// The event's sequence.
        sequence: u64,
        /// The sequence the replica expected.
        expected: u64,
    },
    /// The event carries a result code this version does not know.
    #[error("event {0} has an unknown result code")]
    UnknownResult(u64),
    /// The event says it applied, but it does not apply to this state: corruption
    /// or a bug, never something to skip.
    #[error("event {sequence} no longer applies: {code:?}")]
    NoLongerApplies {
        /// The event's sequence.
        sequence: u64,
        /// What deciding it again says.
        code: ResultCode,
    },
}

/// Whether applying a transfer also remembers its id for idempotency. Only a
/// decider needs that (the sequencer, and its recovery); followers skip the
/// costliest part of deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferIds {
    /// Remember applied transfer ids (deciders).
    Remember,
    /// Post balances only (consumers, tools).
    Skip,
}

/// The words a snapshot stores beside the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SnapshotHeader {
    next_sequence: u64,
    last_timestamp_ns: u64,
    log_hash: u64,
}

impl SnapshotHeader {
    fn to_words(self) -> [u64; 4] {
        [self.next_sequence, self.last_timestamp_ns, self.log_hash, 0]
    }

    fn from_words(words: [u64; 4]) -> SnapshotHeader {
        SnapshotHeader { next_sequence: words[0], last_timestamp_ns: words[1], log_hash: words[2] }
    }
}

/// A ledger and its position in the log.
#[derive(Debug, Clone)]
pub struct Replica {
    ledger: Ledger,
    next_sequence: u64,
    last_timestamp_ns: u64,
    hash: RollingHash,
}

impl Replica {
    /// `ledger` before the log's first event.
    pub fn new(ledger: Ledger) -> Replica {
        Replica { ledger, next_sequence: 1, last_timestamp_ns: 0, hash: RollingHash::EMPTY }
    }

    /// The sequence the next event must carry.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// The rolling hash over every event so far (equal on every replica at the same
    /// position).
    pub fn log_hash(&self) -> u64 {
        self.hash.value()
    }

    /// The newest time stamp applied.
    pub fn last_timestamp_ns(&self) -> u64 {
        self.last_timestamp_ns
    }

    /// The ledger state.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The ledger state, mutable: for the decider, which changes it while deciding
    /// and then records the event with [`Replica::append_decided`].
    pub fn ledger_mut(&mut self) -> &mut Ledger {
        &mut self.ledger
    }

    /// The time stamp for the next event: strictly increasing, even if the wall
    /// clock (`now_ns`) steps back.
    pub fn stamp(&mut self, now_ns: u64) -> u64 {
        self.last_timestamp_ns = now_ns.max(self.last_timestamp_ns + 1);
        self.last_timestamp_ns
    }

    /// Records an event the caller has just decided (its effect is already in the
    /// ledger): the hash covers it and the position moves past it.
    pub fn append_decided(&mut self, frame: &[u8]) {
        self.hash.update(frame);
        self.next_sequence += 1;
    }

    /// Applies the next event.
    pub fn apply(&mut self, frame: &[u8], ids: TransferIds) -> Result<(), ApplyError> {
        let (decoded, _) = Frame::decode(frame).map_err(ApplyError::Undecodable)?;
        self.apply_decoded(&decoded, frame, ids)
    }

    /// [`apply`](Self::apply) for a caller that has decoded `frame` already.
    pub fn apply_decoded(
        &mut self,
        decoded: &Frame<'_>,
        frame: &[u8],
        ids: TransferIds,
    ) -> Result<(), ApplyError> {
        let Some(sequence) = decoded.event_sequence() else {
            return Err(ApplyError::NotAnEvent(decoded.template_id()));
        };
        if sequence != self.next_sequence {
            return Err(ApplyError::OutOfPlace { sequence, expected: self.next_sequence });
        }
        let timestamp_ns = match decoded {
            Frame::AccountEvent(event) => {
                if event.result().map_err(|_| ApplyError::UnknownResult(sequence))? == ResultCode::Ok {
                    let code = self.ledger.create_account(&event.command(), event.timestamp_ns.get());
                    if code != ResultCode::Ok {
                        return Err(ApplyError::NoLongerApplies { sequence, code });
                    }
                }
                event.timestamp_ns.get()
            }
            Frame::TransferEvent(event) => {
                if event.result().map_err(|_| ApplyError::UnknownResult(sequence))? == ResultCode::Ok {
                    let timestamp_ns = event.timestamp_ns.get();
                    let plain = event.is_plain();
                    let applied = match ids {
                        TransferIds::Remember => self.ledger.replay_transfer(&event.command(), timestamp_ns),
                        // A follower's common case, straight from the event's fields.
                        TransferIds::Skip if plain => self.ledger.post_plain_transfer(
                            event.id.get(),
                            event.debit_account_id.get(),
                            event.credit_account_id.get(),
                            event.ledger.get(),
                            event.code.get(),
                            event.amount.get(),
                        ),
                        TransferIds::Skip => self.ledger.post_transfer(&event.command(), timestamp_ns),
                    };
                    applied.map_err(|code| ApplyError::NoLongerApplies { sequence, code })?;
                }
                event.timestamp_ns.get()
            }
            Frame::PendingExpired(event) => {
                let id = event.pending_id.get();
                let same = self.ledger.pending(id).is_some_and(|pending| {
                    pending.debit == event.debit_account_id.get()
                        && pending.credit == event.credit_account_id.get()
                        && pending.amount == event.amount.get()
                        && pending.ledger == event.ledger.get()
                });
                if !same {
                    let code = ResultCode::PendingTransferNotFound;
                    return Err(ApplyError::NoLongerApplies { sequence, code });
                }
                self.ledger
                    .expire(id, event.timestamp_ns.get())
                    .map_err(|code| ApplyError::NoLongerApplies { sequence, code })?;
                event.timestamp_ns.get()
            }
            _ => return Err(ApplyError::NotAnEvent(decoded.template_id())),
        };
        self.hash.update(frame);
        self.next_sequence += 1;
        self.last_timestamp_ns = self.last_timestamp_ns.max(timestamp_ns);
        Ok(())
    }

    /// Recovery's fast path: applies a batch of journaled events without the id
    /// index (like a follower) and appends the (id, fingerprint) of every applied
    /// transfer to `ids`, for the index being rebuilt on another thread.
    pub fn recover_batch(&mut self, frames: &[u8], ids: &mut Vec<(u128, u64)>) -> Result<(), ApplyError> {
        for frame in ledgerbus_codec::Frames::new(frames) {
            let frame = frame.map_err(ApplyError::Undecodable)?;
            let (decoded, _) = Frame::decode(frame).map_err(ApplyError::Undecodable)?;
            if let Frame::TransferEvent(event) = &decoded {
                if event.result() == Ok(ResultCode::Ok) {
                    ids.push((event.id.get(), fingerprint(&event.command())));
                }
            }
            self.apply_decoded(&decoded, frame, TransferIds::Skip)?;
        }
        Ok(())
    }

    /// Writes the state (ledger, position, log hash) as a snapshot.
    pub fn write_snapshot(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let header = SnapshotHeader {
            next_sequence: self.next_sequence,
            last_timestamp_ns: self.last_timestamp_ns,
            log_hash: self.hash.value(),
        };
        crate::snapshot::write(&self.ledger, &header.to_words(), out)
    }

    /// A replica restored from a snapshot.
    pub fn read_snapshot(input: &mut impl std::io::Read) -> std::io::Result<Replica> {
        let (ledger, words) = crate::snapshot::read(input)?;
        let header = SnapshotHeader::from_words(words);
        Ok(Replica {
            ledger,
            next_sequence: header.next_sequence,
            last_timestamp_ns: header.last_timestamp_ns,
            hash: RollingHash::from_value(header.log_hash),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledgerbus_codec::messages::{AccountEvent, CreateAccount, Transfer, TransferEvent};
    use ledgerbus_codec::{encode, Message};

    fn frame<M: Message>(message: &M) -> Vec<u8> {
        let mut frame = vec![0u8; M::FRAME_SIZE];
        encode(message, &mut frame).unwrap();
        frame
    }

    fn account(sequence: u64, id: u128) -> Vec<u8> {
        let command = CreateAccount {
            correlation_id: 0.into(),
            id: id.into(),
            ledger: 1.into(),
            code: 1.into(),
            flags: ledgerbus_codec::account_flags::ALLOW_NEGATIVE.into(),
            ..Default::default()
        };
        frame(&AccountEvent::deciding(&command, sequence, sequence * 10, ResultCode::Ok))
    }

    fn transfer(sequence: u64, id: u128, amount: u64, result: ResultCode) -> Vec<u8> {
        let command = Transfer {
            correlation_id: 0.into(),
            id: id.into(),
            debit_account_id: 1u128.into(),
            credit_account_id: 2u128.into(),
            amount: amount.into(),
            ledger: 1.into(),
            code: 1.into(),
            flags: 0.into(),
            ..Default::default()
        };
        frame(&TransferEvent::deciding(&command, sequence, sequence * 10, result))
    }

    #[test]
    fn events_apply_in_order_and_anything_else_changes_nothing() {
        let mut replica = Replica::new(Ledger::new());
        replica.apply(&account(1, 1), TransferIds::Skip).unwrap();
        replica.apply(&account(2, 2), TransferIds::Skip).unwrap();
        let before = (replica.next_sequence(), replica.log_hash());
        assert_eq!(
            replica.apply(&transfer(4, 10, 5, ResultCode::Ok), TransferIds::Skip),
            Err(ApplyError::OutOfPlace { sequence: 4, expected: 3 })
        );
        assert!(matches!(replica.apply(&[1, 2, 3], TransferIds::Skip), Err(ApplyError::Undecodable(_))));
        assert_eq!((replica.next_sequence(), replica.log_hash()), before);
        replica.apply(&transfer(3, 10, 5, ResultCode::Ok), TransferIds::Remember).unwrap();
        // A rejection is an event too: it moves the position, not the balances.
        replica.apply(&transfer(4, 11, 7, ResultCode::LedgerMismatch), TransferIds::Remember).unwrap();
        assert_eq!(replica.ledger().account(2).unwrap().credits_posted, 5);
        assert_eq!((replica.next_sequence(), replica.last_timestamp_ns()), (5, 40));
        // Applying transfer 10 again is not a retry here, it is corruption.
        assert_eq!(
            replica.apply(&transfer(5, 10, 5, ResultCode::Ok), TransferIds::Remember),
            Err(ApplyError::NoLongerApplies { sequence: 5, code: ResultCode::Exists })
        );
    }

    #[test]
    fn a_snapshot_restores_position_hash_and_state() {
        let mut replica = Replica::new(Ledger::new());
        for frame in [account(1, 1), account(2, 2), transfer(3, 10, 5, ResultCode::Ok)] {
            replica.apply(&frame, TransferIds::Remember).unwrap();
        }
        let mut bytes = Vec::new();
        replica.write_snapshot(&mut bytes).unwrap();
        let restored = Replica::read_snapshot(&mut bytes.as_slice()).unwrap();
        assert_eq!(restored.next_sequence(), 4);
        assert_eq!(restored.log_hash(), replica.log_hash());
        assert_eq!(restored.last_timestamp_ns(), 30);
        assert_eq!(restored.ledger().state_digest(), replica.ledger().state_digest());
    }
}
