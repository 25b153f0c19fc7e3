//! A client connection's answers in the order of its commands: results from the
//! sequencer (held while a lookup before them is unanswered), answers decided at the
//! edge (busy), and lookups, each written once everything before it is.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use ledgerbus_client::wire::{Outgoing, Stream};
use tokio::sync::Notify;

use super::{IN_FLIGHT_MAX, UNWRITTEN_MAX};
use crate::upstream::ResultSink;

/// A client connection's answers, in the order of its commands.
pub(super) struct Outbox {
    pub(super) stream: Arc<Stream>,
    /// Where the time each submission took is recorded.
    pub(super) metrics: Arc<crate::metrics::GatewayMetrics>,
    pub(super) state: Mutex<OutboxState>,
    /// Bytes were left queued, the sequencer link dropped, or reading may resume.
    pub(super) wake: Notify,
    /// The first unanswered slot changed (a waiting lookup may be next).
    pub(super) front_changed: Notify,
}

pub(super) struct OutboxState {
    pub(super) out: Outgoing,
    /// Answers not written yet, in command order.
    pub(super) slots: VecDeque<Slot>,
    /// Commands of ours were unanswered when the sequencer link dropped.
    pub(super) lost: Option<usize>,
    /// The connection task stopped reading and waits for room.
    pub(super) paused: bool,
}

pub(super) enum Slot {
    /// This many commands are at the sequencer, sent at `since`; their results come
    /// through the link. Results that arrive while a lookup before them is still
    /// unanswered are `held` until it is.
    AtSequencer { remaining: usize, since: std::time::Instant, held: Vec<u8> },
    /// Answers decided here (busy), to be written once everything before is.
    Ready(Vec<u8>),
    /// A lookup (its token), asked of the read model once it is first in line.
    Lookup(u64),
}

impl Outbox {
    pub(super) fn lock(&self) -> MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn has_room(state: &OutboxState) -> bool {
        state.slots.len() < IN_FLIGHT_MAX && state.out.queued() < UNWRITTEN_MAX
    }

    /// Queues whatever is now first in line and complete: answers decided here,
    /// submissions fully answered; a partly answered submission's results so far.
    /// Stops at a lookup or a submission still waiting.
    pub(super) fn pop_ready(state: &mut OutboxState) {
        loop {
            match state.slots.front_mut() {
                Some(Slot::Ready(answers)) => {
                    state.out.queue(answers);
                    state.slots.pop_front();
                }
                Some(Slot::AtSequencer { remaining, held, .. }) => {
                    state.out.queue(held);
                    held.clear();
                    if *remaining > 0 {
                        return;
                    }
                    state.slots.pop_front();
                }
                Some(Slot::Lookup(_)) | None => return,
            }
        }
    }

    /// Waits until lookup `token` is first in line (everything before it answered).
    /// False if it is gone (the connection is closing).
    pub(super) async fn first_in_line(&self, token: u64) -> bool {
        loop {
            let notified = self.front_changed.notified();
            {
                let state = self.lock();
                match state.slots.front() {
                    Some(Slot::Lookup(front)) if *front == token => return true,
                    _ if !state.slots.iter().any(|slot| matches!(slot, Slot::Lookup(t) if *t == token)) => {
                        return false
                    }
                    _ => {}
                }
            }
            notified.await;
        }
    }

    /// Writes lookup `token`'s record (it is first in line) and whatever is ready
    /// behind it.
    pub(super) fn answer_lookup(&self, token: u64, record: &[u8]) {
        let mut state = self.lock();
        let state = &mut *state;
        if !matches!(state.slots.front(), Some(Slot::Lookup(front)) if *front == token) {
            debug_assert!(false, "a lookup answered out of its place");
            return;
        }
        state.slots.pop_front();
        state.out.queue(record);
        Outbox::pop_ready(state);
        if !matches!(state.out.flush(&self.stream), Ok(true)) {
            self.wake.notify_one();
        }
        self.front_changed.notify_waiters();
    }

    /// Writes `answers` in their place: now if nothing is pending before them.
    pub(super) fn answer_here(&self, answers: Vec<u8>) {
        let mut state = self.lock();
        if state.slots.is_empty() {
            if !matches!(state.out.send(&self.stream, &answers), Ok(false)) {
                self.wake.notify_one();
            }
        } else {
            state.slots.push_back(Slot::Ready(answers));
        }
    }
}

impl ResultSink for Outbox {
    fn deliver(&self, results: &[u8], count: usize) {
        let mut state = self.lock();
        let state = &mut *state;
        // Results come in submission order: they are the first waiting submission's.
        let waiting = state
            .slots
            .iter()
            .position(|slot| matches!(slot, Slot::AtSequencer { remaining, .. } if *remaining > 0));
        match waiting.map(|index| (index, &mut state.slots[index])) {
            Some((index, Slot::AtSequencer { remaining, since, held })) if *remaining >= count => {
                if index == 0 {
                    state.out.queue(results);
                } else {
                    held.extend_from_slice(results);
                }
                *remaining -= count;
                if *remaining == 0 {
                    self.metrics.record_tcp_submission(since.elapsed());
                }
            }
            _ => {
                // The link hands each submission exactly its own results; anything
                // else is a bug. Close the connection rather than answer wrongly.
                debug_assert!(false, "results for a client that expects none");
                state.lost = Some(count);
            }
        }
        Outbox::pop_ready(state);
        self.front_changed.notify_waiters();
    }

    fn flush(&self) {
        let mut state = self.lock();
        let drained = state.out.flush(&self.stream);
        if !matches!(drained, Ok(true)) || (state.paused && Outbox::has_room(&state)) || state.lost.is_some()
        {
            self.wake.notify_one();
        }
    }

    fn lost(&self, unanswered: usize) {
        self.lock().lost = Some(unanswered);
        self.wake.notify_one();
    }
}
