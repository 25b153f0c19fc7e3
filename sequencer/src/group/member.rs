//! One member of a replicated sequencer group, sans-IO: ticks, peer messages and
//! decided batches in; messages for peers, committed events to publish and replies to
//! send out. No socket, thread or clock inside, so the simulator drives members
//! through loss, partitions and crashes deterministically, and the process's driver
//! only moves bytes.
//!
//! The rules it keeps (docs/architecture.md, "Sequencer group"):
//! - the leader decides commands into a batch (its ledger moves on at once, so the
//!   next batch is decided against it) and proposes the batch as one Raft entry; the
//!   replies and the events are released only when the entry is committed, that is
//!   durable on a majority;
//! - every member appends entries to its journal as Raft hands them over and applies
//!   committed entries to its own ledger (the consumers' [`Replica`] code), so a new
//!   leader takes over without replay;
//! - a member's ledger may run ahead of the commit point (the leader's decisions, or
//!   what recovery found in the journal). If Raft cuts that suffix off (a deposed
//!   leader's uncommitted batches), the ledger is rebuilt from the committed log:
//!   an uncommitted event is never published and never stays applied;
//! - a member that starts with an empty disk may have voted and acknowledged before
//!   it lost it, so it neither votes nor campaigns until it is safe ([`super::rejoin`]).

use std::collections::VecDeque;
use std::io;

use ledgerbus_codec::Frames;
use ledgerbus_ledger::{Replica, TransferIds};
use raft::eraftpb::{Message, MessageType};
use raft::{RawNode, StateRole};

use super::invalid;
use super::rejoin::{Notice, Quarantine};
use super::store::{Disk, Loaded, LogStore};
use crate::core::{PendingBatch, Reply, SequencerCore};

/// How a member is set up.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// This member's id (1-based, unique in the group).
    pub id: u64,
    /// Every member's id.
    pub voters: Vec<u64>,
    /// Ticks without a leader before a follower campaigns (randomised up to twice this).
    pub election_tick: usize,
    /// Ticks between the leader's heartbeats.
    pub heartbeat_tick: usize,
    /// Batches proposed and not yet committed, at most.
    pub in_flight_max: usize,
    /// Seeds the election timeouts' randomness (a simulator passes its own, so a
    /// run replays exactly; a process passes a random one).
    pub seed: u64,
}

impl MemberConfig {
    /// Defaults for member `id` of `voters`: 10 ticks to an election, heartbeats every
    /// 2 (with 10 ms ticks: 100–200 ms to detect a dead leader, 20 ms heartbeats).
    pub fn new(id: u64, voters: Vec<u64>) -> MemberConfig {
        MemberConfig { id, voters, election_tick: 10, heartbeat_tick: 2, in_flight_max: 64, seed: id }
    }
}

/// A change of leadership, for the driver to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleChange {
    /// This member leads from now on: publish committed events from `publish_from`.
    BecameLeader {
        /// The first sequence this leader publishes.
        publish_from: u64,
        /// The term it leads.
        term: u64,
    },
    /// This member no longer leads: the replies of `dropped` batches will never be
    /// sent (their commands may or may not commit; gateways re-send them with the
    /// same ids and learn which).
    SteppedDown {
        /// Batches whose outcome this member will not report.
        dropped: usize,
    },
}

/// What one [`Member::process`] produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Raft messages for peers (`to` says which).
    pub messages: Vec<Message>,
    /// Committed event frames to publish, back to back, in sequence order (leader only).
    pub publish: Vec<u8>,
    /// Replies for commands now committed (leader only), in decision order.
    pub replies: Vec<Reply>,
    /// Leadership changes, in order.
    pub role_changes: Vec<RoleChange>,
}

impl Output {
    /// Whether there is nothing in it.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.publish.is_empty()
            && self.replies.is_empty()
            && self.role_changes.is_empty()
    }

    /// Empties it, keeping its memory.
    pub fn clear(&mut self) {
        self.messages.clear();
        self.publish.clear();
        self.replies.clear();
        self.role_changes.clear();
    }
}

/// The outcome of [`Member::propose`].
#[derive(Debug)]
pub enum Proposed {
    /// The batch is in the log; its replies come with its commit.
    Accepted,
    /// This member is no longer the leader: the batch's decisions were undone and
    /// its replies will never be sent.
    Refused(PendingBatch),
}

/// A member's view, for `/status` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// This member's id.
    pub id: u64,
    /// `leader`, `follower`, `candidate` or `quarantined`.
    pub role: &'static str,
    /// The current term.
    pub term: u64,
    /// The leader this member knows of (0: none).
    pub leader: u64,
    /// Raft index of the last committed entry.
    pub commit_index: u64,
    /// Raft index of the last entry in the log.
    pub last_index: u64,
    /// One past the last committed event.
    pub committed_next_sequence: u64,
    /// On the leader: each follower's id and how many entries it lacks.
    pub follower_lag: Vec<(u64, u64)>,
}

/// A group member (see the module docs).
pub struct Member<D: Disk> {
    config: MemberConfig,
    node: RawNode<LogStore<D>>,
    core: SequencerCore,
    /// A ledger to rebuild into, empty.
    fresh_replica: Box<dyn FnMut() -> Replica + Send>,
    /// Batches proposed and not yet committed, with their Raft index.
    in_flight: VecDeque<(u64, PendingBatch)>,
    spares: Vec<PendingBatch>,
    /// One past the last event known committed.
    committed_next: u64,
    /// The log hash at `committed_next - 1`, when known.
    committed_hash: Option<u64>,
    leader: bool,
    /// While the member started empty and may not vote yet.
    quarantine: Option<Quarantine>,
    /// Ticks since start, to pace probes.
    ticks: u64,
    /// Messages of [`super::rejoin`] waiting to be sent.
    notices: Vec<Message>,
    /// Election timeouts are drawn here rather than by raft-rs (whose draws come from
    /// the thread's own generator), so that a seed replays a run exactly.
    timeouts: Timeouts,
}

/// Deterministic election timeouts: a new draw whenever Raft reset its election
/// clock, which it does exactly when the term, the role or the known leader changes.
struct Timeouts {
    state: u64,
    seen: (u64, StateRole, u64),
}

impl Timeouts {
    /// splitmix64: small, and good enough to spread timeouts.
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl<D: Disk> Member<D> {
    /// A member over `disk` (holding `loaded`), whose ledger `core` already applied
    /// the events of the entries up to the saved commit index (or more: all of them).
    pub fn new(
        config: MemberConfig,
        disk: D,
        loaded: Loaded,
        core: SequencerCore,
        fresh_replica: Box<dyn FnMut() -> Replica + Send>,
        logger: &slog::Logger,
    ) -> raft::Result<Member<D>> {
        let empty = loaded.entries.is_empty() && loaded.hard_state.term == 0;
        let store = LogStore::new(disk, loaded, &config.voters);
        let commit = store.hard_state().commit;
        let committed_next = store.meta(commit).map_or(1, |m| m.end_sequence());
        assert!(
            core.next_sequence() >= committed_next && core.next_sequence() <= store.next_sequence(),
            "the ledger holds at least the committed log at start"
        );
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_tick,
            heartbeat_tick: config.heartbeat_tick,
            applied: commit,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..raft::Config::default()
        };
        raft_config.validate()?;
        let node = RawNode::new(&raft_config, store, logger)?;
        let committed_hash = (core.next_sequence() == committed_next).then(|| core.log_hash());
        Ok(Member {
            quarantine: empty.then(Quarantine::default),
            ticks: 0,
            config,
            node,
            core,
            fresh_replica,
            in_flight: VecDeque::new(),
            spares: Vec::new(),
            committed_next,
            committed_hash,
            leader: false,
            notices: Vec::new(),
            timeouts: Timeouts { state: 0, seen: (u64::MAX, StateRole::Follower, 0) },
        }
        .with_seed())
    }

    fn with_seed(mut self) -> Member<D> {
        self.timeouts.state = self.config.seed;
        self.redraw_timeout();
        self
    }

    /// Draws a new election timeout if Raft reset its election clock since the last look.
    fn redraw_timeout(&mut self) {
        let raft = &mut self.node.raft;
        let now = (raft.term, raft.state, raft.leader_id);
        if now == self.timeouts.seen {
            return;
        }
        self.timeouts.seen = now;
        let (low, high) = (raft.election_timeout(), 2 * raft.election_timeout());
        let timeout = low + (self.timeouts.next() % (high - low) as u64) as usize;
        raft.set_randomized_election_timeout(timeout);
    }

    /// One tick of the election and heartbeat clocks.
    pub fn tick(&mut self) {
        self.ticks += 1;
        if self.quarantine.is_none() {
            self.node.tick();
            self.redraw_timeout();
            return;
        }
        // Quarantined: no election clock (no campaign); ask the peers now and then.
        if self.ticks % self.config.heartbeat_tick as u64 == 1 {
            for &peer in self.config.voters.iter().filter(|&&p| p != self.config.id) {
                self.notices.push(Notice::Probe.message(self.config.id, peer));
            }
        }
    }

    /// A message from a peer.
    pub fn step(&mut self, message: Message) {
        if message.to != self.config.id || !self.config.voters.contains(&message.from) {
            return;
        }
        if let Some(notice) = Notice::of(&message) {
            self.on_notice(message.from, notice);
            return;
        }
        let last = self.node.raft.raft_log.last_index();
        let mut message = message;
        if message.msg_type == MessageType::MsgHeartbeat && message.commit > last {
            // The leader counts this member as holding entries it does not: its disk
            // was lost. Say where the log ends, and take only what it holds as committed.
            tracing::warn!(
                leader = message.from,
                commit = message.commit,
                last,
                "log lost; asking the leader to resend it"
            );
            self.notices.push(Notice::LogLost { last }.message(self.config.id, message.from));
            message.commit = last;
        }
        if self.quarantine.is_some()
            && matches!(message.msg_type, MessageType::MsgRequestVote | MessageType::MsgRequestPreVote)
        {
            return;
        }
        if let Err(error) = self.node.step(message) {
            tracing::debug!(%error, "raft message not taken");
        }
        self.redraw_timeout();
        self.maybe_leave_quarantine();
    }

    fn on_notice(&mut self, from: u64, notice: Notice) {
        match notice {
            Notice::Probe => {
                let raft_log = &self.node.raft.raft_log;
                let answer = Notice::ProbeAnswer { last: raft_log.last_index(), commit: raft_log.committed };
                self.notices.push(answer.message(self.config.id, from));
            }
            Notice::ProbeAnswer { last, commit } => {
                if let Some(quarantine) = &mut self.quarantine {
                    quarantine.answered(from, last, commit);
                }
                self.maybe_leave_quarantine();
            }
            Notice::LogLost { last } => self.restart_follower(from, last),
        }
    }

    fn maybe_leave_quarantine(&mut self) {
        let commit = self.node.raft.raft_log.committed;
        if self.quarantine.as_ref().is_some_and(|q| q.may_leave(self.config.voters.len(), commit)) {
            tracing::info!(id = self.config.id, commit, "empty member may vote again");
            self.quarantine = None;
        }
    }

    /// On the leader: `follower` lost its log beyond `last`; replicate to it from there.
    fn restart_follower(&mut self, follower: u64, last: u64) {
        if !self.leader {
            return;
        }
        if let Some(progress) = self.node.raft.mut_prs().get_mut(follower) {
            if progress.matched > last {
                tracing::warn!(
                    follower,
                    had = progress.matched,
                    last,
                    "a follower lost its log; resending it"
                );
                progress.matched = last;
                progress.become_probe();
            }
        }
    }

    /// Whether the driver may decide commands now: this member leads, its ledger
    /// holds its whole log, and the in-flight bound has room.
    pub fn can_decide(&self) -> bool {
        // `leader` follows Raft's role as of the last `process`; a message stepped in
        // since may already have made this member a follower.
        self.leader
            && self.node.raft.state == StateRole::Leader
            && self.quarantine.is_none()
            && self.core.next_sequence() == self.node.store().next_sequence()
            && self.in_flight.len() < self.config.in_flight_max
    }

    /// The decision core, to decide into a batch while [`Member::can_decide`].
    pub fn core_mut(&mut self) -> &mut SequencerCore {
        &mut self.core
    }

    /// The decision core.
    pub fn core(&self) -> &SequencerCore {
        &self.core
    }

    /// An empty batch to decide into.
    pub fn spare_batch(&mut self, capacity: usize) -> PendingBatch {
        self.spares.pop().unwrap_or_else(|| PendingBatch::with_capacity(capacity))
    }

    /// Proposes a decided batch as one entry.
    pub fn propose(&mut self, batch: PendingBatch) -> io::Result<Proposed> {
        assert!(!batch.is_empty(), "an empty batch is not proposed");
        let before = self.node.raft.raft_log.last_index();
        // A member that has just stepped down (a message with a higher term came in
        // this turn) refuses the batch and undoes its decisions: raft-rs would
        // forward the proposal to the new leader and append nothing here.
        let proposed = if self.node.raft.state == StateRole::Leader {
            self.node.propose(Vec::new(), batch.event_bytes().to_vec())
        } else {
            Err(raft::Error::ProposalDropped)
        };
        match proposed {
            Ok(()) => {
                let index = self.node.raft.raft_log.last_index();
                assert_eq!(index, before + 1, "one batch, one entry");
                self.in_flight.push_back((index, batch));
                Ok(Proposed::Accepted)
            }
            Err(error) => {
                tracing::info!(%error, "batch not proposed; undoing its decisions");
                self.rebuild()?;
                Ok(Proposed::Refused(batch))
            }
        }
    }

    /// Hands Raft's pending work to the disk and collects what is due out.
    pub fn process(&mut self, out: &mut Output) -> io::Result<()> {
        out.messages.append(&mut self.notices);
        while self.node.has_ready() {
            let mut ready = self.node.ready();
            if let Some(soft) = ready.ss() {
                self.on_role(soft.raft_state, out);
            }
            out.messages.append(&mut ready.take_messages());
            if !ready.snapshot().is_empty() {
                return Err(invalid("a Raft snapshot arrived, but this log is never compacted".into()));
            }
            let committed = ready.take_committed_entries();
            self.apply_committed(&committed, out)?;
            if !ready.entries().is_empty() {
                if let Some(cut_from) = self.node.mut_store().append(ready.entries())? {
                    assert!(cut_from >= self.committed_next, "a committed entry was overwritten");
                    if cut_from < self.core.next_sequence() {
                        tracing::warn!(
                            from_sequence = cut_from,
                            "uncommitted events overwritten by the leader"
                        );
                        self.rebuild()?;
                    }
                }
            }
            if let Some(state) = ready.hs() {
                self.node.mut_store().set_hard_state(state)?;
            }
            out.messages.append(&mut ready.take_persisted_messages());
            let mut light = self.node.advance(ready);
            if let Some(commit) = light.commit_index() {
                self.node.mut_store().set_commit(commit)?;
            }
            out.messages.append(&mut light.take_messages());
            let committed = light.take_committed_entries();
            self.apply_committed(&committed, out)?;
            self.node.advance_apply();
        }
        self.redraw_timeout();
        self.maybe_leave_quarantine();
        Ok(())
    }

    fn on_role(&mut self, role: StateRole, out: &mut Output) {
        let leads = role == StateRole::Leader;
        if leads && !self.leader {
            self.leader = true;
            let term = self.node.raft.term;
            tracing::info!(
                id = self.config.id,
                term,
                publish_from = self.committed_next,
                "became the leader"
            );
            out.role_changes.push(RoleChange::BecameLeader { publish_from: self.committed_next, term });
        } else if !leads && self.leader {
            self.leader = false;
            let dropped = self.in_flight.len();
            for (_, mut batch) in self.in_flight.drain(..) {
                batch.clear();
                self.spares.push(batch);
            }
            tracing::info!(id = self.config.id, term = self.node.raft.term, dropped, "no longer the leader");
            out.role_changes.push(RoleChange::SteppedDown { dropped });
        }
    }

    /// Applies committed entries the ledger does not hold yet, and on the leader
    /// releases their events and replies.
    fn apply_committed(&mut self, entries: &[raft::eraftpb::Entry], out: &mut Output) -> io::Result<()> {
        for entry in entries {
            let meta = *self
                .node
                .store()
                .meta(entry.index)
                .ok_or_else(|| invalid(format!("committed entry {} is not in the log", entry.index)))?;
            let end = meta.end_sequence();
            let next = self.core.next_sequence();
            if meta.count > 0 && meta.first_sequence >= next {
                if meta.first_sequence != next {
                    return Err(invalid(format!(
                        "entry {} starts at {} after {next}",
                        entry.index, meta.first_sequence
                    )));
                }
                for frame in Frames::new(&entry.data) {
                    let frame = frame.map_err(|e| invalid(e.to_string()))?;
                    self.core
                        .replica_mut()
                        .apply(frame, TransferIds::Remember)
                        .map_err(|e| invalid(format!("committed event does not apply: {e}")))?;
                }
            } else {
                assert!(end <= next, "an entry is applied whole or not at all");
            }
            self.committed_next = end;
            self.committed_hash = (self.core.next_sequence() == end).then(|| self.core.log_hash());
            while let Some((index, _)) = self.in_flight.front() {
                if *index > entry.index {
                    break;
                }
                let (index, mut batch) = self.in_flight.pop_front().expect("checked");
                if index == entry.index {
                    out.replies.extend_from_slice(batch.replies());
                    self.committed_hash = Some(batch.last_hash());
                }
                batch.clear();
                self.spares.push(batch);
            }
            if self.leader {
                out.publish.extend_from_slice(&entry.data);
            }
        }
        Ok(())
    }

    /// Rebuilds the ledger from the committed log: undoes decisions that will never
    /// commit.
    fn rebuild(&mut self) -> io::Result<()> {
        let target = self.committed_next;
        let mut replica = (self.fresh_replica)();
        self.node.store().disk().read_events(1, target - 1, &mut |frame| {
            replica
                .apply(frame, TransferIds::Remember)
                .map_err(|e| invalid(format!("journal event does not apply: {e}")))
        })?;
        assert_eq!(replica.next_sequence(), target);
        tracing::info!(next_sequence = target, "ledger rebuilt from the committed log");
        self.core = SequencerCore::new(replica);
        self.committed_hash = Some(self.core.log_hash());
        Ok(())
    }

    /// Whether Raft has work for [`Member::process`] (so the driver must not sleep).
    pub fn has_work(&self) -> bool {
        self.node.has_ready() || !self.notices.is_empty()
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    /// Whether this member leads.
    pub fn is_leader(&self) -> bool {
        self.leader
    }

    /// The leader this member knows of (0: none).
    pub fn leader_id(&self) -> u64 {
        self.node.raft.leader_id
    }

    /// This member's id.
    pub fn id(&self) -> u64 {
        self.config.id
    }

    /// One past the last committed event, and the log hash there when known.
    pub fn committed(&self) -> (u64, Option<u64>) {
        (self.committed_next, self.committed_hash)
    }

    /// The Raft log.
    pub fn store(&self) -> &LogStore<D> {
        self.node.store()
    }

    /// The Raft log, mutable (the simulator reaches the disk through it).
    pub fn store_mut(&mut self) -> &mut LogStore<D> {
        self.node.mut_store()
    }

    /// Role, term, positions and lags.
    pub fn status(&self) -> MemberStatus {
        let raft = &self.node.raft;
        let last_index = raft.raft_log.last_index();
        let role = match (&self.quarantine, raft.state) {
            (Some(_), _) => "quarantined",
            (None, StateRole::Leader) => "leader",
            (None, StateRole::Candidate | StateRole::PreCandidate) => "candidate",
            (None, StateRole::Follower) => "follower",
        };
        let follower_lag = if self.leader {
            raft.prs()
                .iter()
                .filter(|(id, _)| **id != self.config.id)
                .map(|(id, progress)| (*id, last_index.saturating_sub(progress.matched)))
                .collect()
        } else {
            Vec::new()
        };
        MemberStatus {
            id: self.config.id,
            role,
            term: raft.term,
            leader: raft.leader_id,
            commit_index: raft.raft_log.committed,
            last_index,
            committed_next_sequence: self.committed_next,
            follower_lag,
        }
    }
}
