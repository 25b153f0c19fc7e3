//! The hot thread of a group member: the sans-IO [`Member`] between the gateway port,
//! the replication links, the bus and a tick clock. The leader decides commands into
//! a batch, proposes it, and answers and publishes what Raft commits; a follower
//! tells gateways who leads and only keeps its log and ledger current.
//!
//! Like the single sequencer's loop it waits as its idle strategy says: in `ppoll` on
//! the gateway sockets, the bus socket and the links' wake-up descriptor, at most
//! until the next tick (`block`), after polling again for a while (`backoff`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledgerbus_codec::Frames;
use ledgerbus_log::archive::Archive;
use ledgerbus_log::LogHead;
use ledgerbus_protocol::auth;
use ledgerbus_transport::driver::Publisher;
use ledgerbus_transport::idle::{IdleStrategy, Idler};

use super::journal_disk::JournalDisk;
use super::member::{Member, Output, Proposed, RoleChange};
use super::peers::PeerNet;
use crate::config::{io_err, SequencerError};
use crate::core::PendingBatch;
use crate::gateways::{wait, GatewayPort, Intent};
use crate::hot_loop::{answer, publish, serve_archive, wall_clock_ns, EXPIRIES_PER_TURN};
use crate::intake::Leadership;
use crate::metrics::SequencerMetrics;

pub(crate) struct GroupLoop {
    pub(crate) member: Member<JournalDisk>,
    pub(crate) gateways: GatewayPort,
    pub(crate) publisher: Publisher,
    pub(crate) archive: Archive,
    pub(crate) peers: PeerNet,
    pub(crate) metrics: Arc<SequencerMetrics>,
    pub(crate) shutdown: Arc<AtomicBool>,
    pub(crate) session_id: u64,
    pub(crate) tick: Duration,
    pub(crate) batch_events_max: usize,
    pub(crate) idle: IdleStrategy,
}

impl GroupLoop {
    pub(crate) fn run(mut self) -> Result<(), SequencerError> {
        let mut out = Output::default();
        let mut batch = self.member.spare_batch(self.batch_events_max.min(4_096));
        let mut next_tick = Instant::now() + self.tick;
        let mut last_status = Instant::now() - Duration::from_secs(1);
        let mut leading = false;
        let mut idler = Idler::new(self.idle);
        let mut head = LogHead { session: self.session_id, ..LogHead::default() };
        loop {
            if self.shutdown.load(Ordering::Acquire) {
                tracing::info!(id = self.member.id(), "group member stopped");
                return Ok(());
            }
            let now = Instant::now();
            while now >= next_tick {
                self.member.tick();
                next_tick += self.tick;
            }
            self.peers.clear_wake();
            while let Some(message) = self.peers.try_recv() {
                self.member.step(message);
            }
            self.gateways.accept();
            let decided = self.read_and_decide(leading, &mut batch);
            if !batch.is_empty() {
                let proposed = std::mem::replace(&mut batch, self.member.spare_batch(4_096));
                if let Proposed::Refused(_) = self.member.propose(proposed).map_err(io_err("group log"))? {
                    // Its decisions were undone; the gateways re-send elsewhere.
                    self.gateways.close_all();
                }
            }
            self.member.process(&mut out).map_err(io_err("group log"))?;
            for message in out.messages.drain(..) {
                self.peers.send(message);
            }
            for change in out.role_changes.drain(..) {
                match change {
                    RoleChange::BecameLeader { publish_from, .. } => {
                        let instance = auth::random_u64().map_err(io_err("random instance"))?;
                        self.publisher.restart(publish_from, instance).map_err(io_err("bus socket"))?;
                        leading = true;
                    }
                    RoleChange::SteppedDown { .. } => {
                        self.gateways.close_all();
                        leading = false;
                    }
                }
            }
            self.release(&out, &mut head)?;
            if leading {
                self.publisher.service().map_err(io_err("bus socket"))?;
                serve_archive(&mut self.publisher, &self.archive);
            }
            self.gateways.flush();
            if last_status.elapsed() >= Duration::from_millis(100) {
                last_status = Instant::now();
                if let Ok(mut status) = self.metrics.group.lock() {
                    *status = Some(self.member.status());
                }
            }
            let busy = decided > 0 || !out.is_empty();
            out.clear();
            if busy {
                idler.reset();
            } else if !self.member.has_work() {
                idler.idle_on(|most| self.idle_wait(leading, next_tick, most))?;
            }
        }
    }

    /// Reads the gateways; decides only while the member may.
    fn read_and_decide(&mut self, leading: bool, batch: &mut PendingBatch) -> usize {
        let status_term = self.member.term();
        let leads = if leading {
            Leadership::Here
        } else {
            Leadership::Elsewhere { leader: self.member.leader_id() as u32, term: status_term }
        };
        let window = if leading {
            self.publisher.window_remaining().min(self.batch_events_max as u64) as usize
        } else {
            0
        };
        let next_sequence = self.member.core().next_sequence();
        let can_decide = leading && self.member.can_decide();
        let intent = Intent {
            core: if can_decide { Some(self.member.core_mut()) } else { None },
            session: self.session_id,
            next_sequence,
            leads,
            window,
            now_ns: wall_clock_ns(),
        };
        let decided = self.gateways.read_and_decide(intent, batch);
        if !can_decide {
            return decided;
        }
        // Pending transfers whose timeout passed expire even when no command comes.
        let room = window.saturating_sub(batch.len()).min(EXPIRIES_PER_TURN);
        decided + self.member.core_mut().expire_due(wall_clock_ns(), room, batch)
    }

    /// Answers and publishes what was committed; moves the head.
    fn release(&mut self, out: &Output, head: &mut LogHead) -> Result<(), SequencerError> {
        let rejected = answer(&mut self.gateways, &out.replies);
        if !out.publish.is_empty() {
            publish(&mut self.publisher, Frames::new(&out.publish).map_while(Result::ok))?;
        }
        self.metrics.events.inc_by(out.replies.len() as u64);
        self.metrics.rejected.inc_by(rejected);
        let (next, hash) = self.member.committed();
        if next - 1 != head.last_sequence {
            head.last_sequence = next - 1;
            if let Some(hash) = hash {
                head.state_hash = hash;
            }
            self.metrics.set_head(*head);
        }
        Ok(())
    }

    /// Sleeps until input, the next tick or timer, or at most `most` (a park).
    fn idle_wait(
        &mut self,
        leading: bool,
        next_tick: Instant,
        most: Option<Duration>,
    ) -> Result<(), SequencerError> {
        let mut fds = Vec::with_capacity(16);
        fds.push(libc::pollfd { fd: self.peers.wake_fd(), events: libc::POLLIN, revents: 0 });
        let mut timeout = next_tick.saturating_duration_since(Instant::now());
        if leading {
            fds.push(libc::pollfd { fd: self.publisher.fd(), events: libc::POLLIN, revents: 0 });
            let until_timer = self.publisher.core().poll_timeout().nanos_since(self.publisher.now());
            timeout = timeout.min(Duration::from_nanos(until_timer));
        }
        timeout = timeout.min(most.unwrap_or(Duration::MAX));
        let window_open = leading && self.publisher.window_remaining() > 0 && self.member.can_decide();
        self.gateways.poll_fds(&mut fds, window_open);
        wait(&mut fds, timeout).map_err(|source| SequencerError::Io { what: "ppoll".into(), source })
    }
}
