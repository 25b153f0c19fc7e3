//! The sequencer group under a deterministic simulation (TigerBeetle's VOPR is the
//! model): 3 and 5 members, gateway clients and a seeded network and disk that lose,
//! delay, reorder and duplicate messages, partition the group (the leader alone, a
//! symmetric split, random cuts), crash members at any step (a crash during a sync
//! leaves a torn write), restart them, and wipe a crashed member's disk.
//!
//! Checked after every step: no two different entries are committed at one index on
//! any two members, and every member's ledger hash at a committed sequence is the one
//! every other member had there. At the end, once the whole group can talk again: it
//! makes progress, every member converges to the same log and hash, every result a
//! client was told is in that log with that result, and no transfer applied twice.
//!
//! `LEDGERBUS_SIM_SEEDS=N` runs N seeds per group size (default 100);
//! `LEDGERBUS_SIM_SEED=S` replays the one seed a failure printed.

use std::collections::{BTreeMap, BinaryHeap, HashMap};

use ledgerbus_codec::messages::{CreateAccount, Transfer};
use ledgerbus_codec::{account_flags, Decided, Frame, ResultCode};
use ledgerbus_ledger::{Ledger, Replica, TransferIds};
use ledgerbus_sequencer::core::{PendingBatch, SequencerCore};
use ledgerbus_sequencer::group::mem_disk::MemDisk;
use ledgerbus_sequencer::group::{Member, MemberConfig, Output, Proposed, RoleChange};
use raft::eraftpb::Message;
use raft::{GetEntriesContext, Storage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Simulated milliseconds per tick.
const TICK_MS: u64 = 10;
const ACCOUNTS: u128 = 6;

fn fresh_replica() -> Replica {
    Replica::new(Ledger::with_capacity(64, 4_096))
}

/// A member's ledger rebuilt from what its disk holds, as a restart does.
fn start_member(id: u64, voters: &[u64], disk: MemDisk, seed: u64) -> Member<MemDisk> {
    let mut replica = fresh_replica();
    for frame in disk.events() {
        replica.apply(frame, TransferIds::Remember).expect("the journal applies");
    }
    let loaded = disk.load();
    let mut config = MemberConfig::new(id, voters.to_vec());
    config.in_flight_max = 8;
    config.seed = seed;
    Member::new(config, disk, loaded, SequencerCore::new(replica), Box::new(fresh_replica), &slog_discard())
        .expect("member starts")
}

fn slog_discard() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// A command a client wants decided, re-sent with the same id until answered.
#[derive(Debug, Clone, Copy)]
enum Command {
    Account(u128),
    Transfer { id: u128, from: u128, to: u128, amount: u64, phase: Phase },
}

/// Which kind of transfer: plain, or a step of a two-phase transfer.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Single,
    /// Reserves, expiring after this many seconds of simulated time.
    Pending(u32),
    /// Posts this pending transfer.
    Post(u128),
    /// Voids this pending transfer.
    Void(u128),
}

impl Command {
    fn id(&self) -> u128 {
        match self {
            Command::Account(id) | Command::Transfer { id, .. } => *id,
        }
    }
}

/// A message on the simulated wire.
struct InFlight {
    due: u64,
    order: u64,
    message: Message,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // A min-heap on (due, order).
        (other.due, other.order).cmp(&(self.due, self.order))
    }
}

struct Faults {
    loss: f64,
    duplicate: f64,
    delay_max: u64,
    crash: f64,
    torn: f64,
    wipe: f64,
    partition: f64,
}

struct Sim {
    seed: u64,
    rng: ChaCha8Rng,
    voters: Vec<u64>,
    members: Vec<Option<Member<MemDisk>>>,
    /// The disk of each crashed member.
    down: Vec<Option<MemDisk>>,
    network: BinaryHeap<InFlight>,
    order: u64,
    /// `blocked[a][b]`: messages from a to b are dropped.
    blocked: Vec<Vec<bool>>,
    now: u64,
    faults: Faults,
    /// Commands not yet answered (not submitted, or their answer was lost).
    pending: Vec<Command>,
    /// Commands proposed on a member, by member index.
    submitted: Vec<Vec<Command>>,
    /// What clients were told: id → every (sequence, result) answer.
    told: HashMap<u128, Vec<(u64, ResultCode)>>,
    next_id: u128,
    /// Per Raft index: (term, data) committed there, as first seen.
    committed: Vec<(u64, Vec<u8>)>,
    /// Per member: committed indexes already compared.
    checked: Vec<u64>,
    /// Ledger hash at each committed sequence, as first seen.
    hashes: BTreeMap<u64, u64>,
    output: Output,
    crashes: u32,
    leaderships: u32,
    /// Members that started empty and have not caught up yet.
    rebuilding: Vec<bool>,
}

impl Sim {
    fn new(seed: u64, size: usize) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let voters: Vec<u64> = (1..=size as u64).collect();
        let faults = Faults {
            loss: rng.random_range(0.0..0.15),
            duplicate: rng.random_range(0.0..0.05),
            delay_max: rng.random_range(1..6),
            crash: rng.random_range(0.0..0.004),
            torn: rng.random_range(0.0..0.002),
            wipe: rng.random_range(0.0..0.3),
            partition: rng.random_range(0.0..0.01),
        };
        let members =
            voters.iter().map(|&id| Some(start_member(id, &voters, MemDisk::new(), rng.random()))).collect();
        let pending = (1..=ACCOUNTS).map(Command::Account).collect();
        Sim {
            seed,
            rng,
            members,
            down: vec![None; size],
            network: BinaryHeap::new(),
            order: 0,
            blocked: vec![vec![false; size]; size],
            now: 0,
            faults,
            pending,
            submitted: vec![Vec::new(); size],
            told: HashMap::new(),
            next_id: 1_000,
            committed: Vec::new(),
            checked: vec![0; size],
            hashes: BTreeMap::new(),
            voters,
            output: Output::default(),
            crashes: 0,
            rebuilding: vec![false; size],
            leaderships: 0,
        }
    }

    fn fail(&self, what: String) -> ! {
        for member in self.members.iter().flatten() {
            eprintln!(
                "{:?} core next {} pending {}",
                member.status(),
                member.core().next_sequence(),
                self.pending.len()
            );
        }
        panic!("seed {} (size {}), tick {}: {what}", self.seed, self.voters.len(), self.now);
    }

    fn step(&mut self, faults_on: bool) {
        self.now += 1;
        if faults_on {
            self.inject_faults();
        }
        if faults_on {
            self.new_commands();
        }
        self.submit();
        self.deliver();
        for member in self.members.iter_mut().flatten() {
            member.tick();
        }
        for index in 0..self.members.len() {
            self.process(index);
        }
        self.check();
        // A member is rebuilding while it is quarantined (empty, unsure whether it
        // ever held entries) or its disk is still empty (a restart would be).
        for index in 0..self.members.len() {
            self.rebuilding[index] = match (&self.members[index], &self.down[index]) {
                (Some(member), _) => {
                    member.status().role == "quarantined"
                        || (member.store().last() == 0 && member.store().hard_state().term == 0)
                }
                (None, Some(disk)) => disk.load().entries.is_empty(),
                (None, None) => false,
            };
        }
    }

    fn inject_faults(&mut self) {
        let size = self.members.len();
        let victim = self.rng.random_range(0..size);
        if self.rng.random_bool(self.faults.crash) {
            if self.members[victim].is_some() {
                self.crash(victim, 0);
            } else if let Some(mut disk) = self.down[victim].take() {
                // A disk is lost only while fewer than a minority of members are
                // still rebuilding one (more would lose a majority's copies, which
                // no protocol survives).
                let rebuilding =
                    self.rebuilding.iter().enumerate().filter(|(i, r)| **r && *i != victim).count();
                let minority = size - (size / 2 + 1);
                if rebuilding < minority && self.rng.random_bool(self.faults.wipe) {
                    disk.wipe();
                    if std::env::var_os("LEDGERBUS_SIM_VERBOSE").is_some() {
                        eprintln!("tick {}: member {} disk wiped", self.now, victim + 1);
                    }
                    self.checked[victim] = 0;
                    self.rebuilding[victim] = true;
                }
                let seed = self.rng.random();
                self.members[victim] = Some(start_member(victim as u64 + 1, &self.voters, disk, seed));
            }
        }
        if self.rng.random_bool(self.faults.torn) {
            // The member crashes inside its next sync: part of the write stays.
            if let Some(member) = self.members[victim].as_mut() {
                member.store_mut().disk_mut().fail_next_sync = true;
            }
        }
        if self.rng.random_bool(self.faults.partition) {
            self.partition();
        }
    }

    fn partition(&mut self) {
        let size = self.members.len();
        let mut side = vec![false; size];
        match self.rng.random_range(0..4) {
            // Heal.
            0 => {}
            // The leader alone.
            1 => {
                if let Some(leader) = self.leader() {
                    side[leader] = true;
                }
            }
            // A symmetric split: a minority against a majority.
            2 => {
                for (i, s) in side.iter_mut().enumerate() {
                    *s = i < size / 2;
                }
            }
            // Random sides.
            _ => {
                for s in side.iter_mut() {
                    *s = self.rng.random_bool(0.5);
                }
            }
        }
        for a in 0..size {
            for b in 0..size {
                self.blocked[a][b] = side[a] != side[b];
            }
        }
    }

    fn crash(&mut self, index: usize, torn: usize) {
        self.crashes += 1;
        if std::env::var_os("LEDGERBUS_SIM_VERBOSE").is_some() {
            eprintln!("tick {}: member {} crashed (torn {torn})", self.now, index + 1);
        }
        let member = self.members[index].take().expect("running");
        let mut disk = member.store().disk().clone();
        disk.crash(torn);
        self.down[index] = Some(disk);
        // Its clients learn nothing more: they re-send with the same ids.
        let lost = std::mem::take(&mut self.submitted[index]);
        self.pending.extend(lost);
    }

    fn leader(&self) -> Option<usize> {
        self.members.iter().position(|m| m.as_ref().is_some_and(|m| m.is_leader()))
    }

    fn new_commands(&mut self) {
        if self.pending.len() < 40 && self.rng.random_bool(0.5) {
            for _ in 0..self.rng.random_range(1..4) {
                // Now and then an id is re-used: the ledger must answer `exists`.
                let id = if self.rng.random_bool(0.05) && self.next_id > 1_000 {
                    self.rng.random_range(1_000..self.next_id)
                } else {
                    self.next_id += 1;
                    self.next_id
                };
                let from = self.rng.random_range(1..=ACCOUNTS);
                let to = self.rng.random_range(1..=ACCOUNTS);
                let amount = self.rng.random_range(1..50);
                // Two-phase transfers too: reservations that expire in 1-3 simulated
                // seconds (the run lasts 15), and posts and voids of recent ids (some
                // still pending, some expired, some never pending).
                let recent = self.rng.random_range(self.next_id.saturating_sub(40).max(1)..=self.next_id);
                let phase = match self.rng.random_range(0..10) {
                    0..=5 => Phase::Single,
                    6 | 7 => Phase::Pending(self.rng.random_range(1..4)),
                    8 => Phase::Post(recent),
                    _ => Phase::Void(recent),
                };
                self.pending.push(Command::Transfer { id, from, to, amount, phase });
            }
        }
    }

    /// Clients send what is pending to the member that leads (as a gateway that found
    /// it would); one batch per step.
    fn submit(&mut self) {
        let Some(leader) = self.leader() else { return };
        let member = self.members[leader].as_mut().expect("leader runs");
        if !member.can_decide() || self.pending.is_empty() {
            return;
        }
        let take = self.pending.len().min(self.rng.random_range(1..8));
        let commands: Vec<Command> = self.pending.drain(..take).collect();
        let mut batch: PendingBatch = member.spare_batch(16);
        let now_ns = self.now * TICK_MS * 1_000_000;
        for command in &commands {
            decide(member.core_mut(), command, now_ns, &mut batch);
        }
        match member.propose(batch).expect("in memory") {
            Proposed::Accepted => self.submitted[leader].extend(commands),
            Proposed::Refused(_) => self.pending.extend(commands),
        }
    }

    fn deliver(&mut self) {
        while self.network.peek().is_some_and(|m| m.due <= self.now) {
            let InFlight { message, .. } = self.network.pop().expect("peeked");
            let to = message.to as usize - 1;
            if let Some(member) = self.members[to].as_mut() {
                member.step(message);
            }
        }
    }

    fn send(&mut self, message: Message) {
        let (from, to) = (message.from as usize - 1, message.to as usize - 1);
        if self.blocked[from][to] || self.rng.random_bool(self.faults.loss) {
            return;
        }
        let copies = if self.rng.random_bool(self.faults.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            self.order += 1;
            let due = self.now + self.rng.random_range(1..=self.faults.delay_max);
            self.network.push(InFlight { due, order: self.order, message: message.clone() });
        }
    }

    fn process(&mut self, index: usize) {
        let Some(member) = self.members[index].as_mut() else { return };
        let mut out = std::mem::take(&mut self.output);
        out.clear();
        if member.process(&mut out).is_err() {
            // The sync failed: the crash point. Part of what was written stays.
            let unsynced = self.members[index].as_ref().expect("running").store().disk().unsynced_entries();
            let torn = self.rng.random_range(0..=unsynced);
            self.crash(index, torn);
            self.output = out;
            return;
        }
        for message in out.messages.drain(..) {
            self.send(message);
        }
        for reply in &out.replies {
            let decided = Decided::read(&reply.frame).unwrap_or_else(|| self.fail("unreadable reply".into()));
            self.told.entry(decided.id).or_default().push((decided.sequence, decided.result));
            let position = self.submitted[index].iter().position(|c| c.id() == decided.id);
            match position {
                Some(position) => {
                    self.submitted[index].remove(position);
                }
                None => self.fail(format!("a reply for {} that was not submitted here", decided.id)),
            }
        }
        for change in &out.role_changes {
            if let RoleChange::BecameLeader { .. } = change {
                self.leaderships += 1;
            }
            if let RoleChange::SteppedDown { .. } = change {
                let lost = std::mem::take(&mut self.submitted[index]);
                self.pending.extend(lost);
            }
        }
        self.output = out;
    }

    /// Committed entries agree everywhere; ledger hashes agree at committed sequences.
    fn check(&mut self) {
        for index in 0..self.members.len() {
            let Some(member) = self.members[index].as_ref() else { continue };
            let commit = member.status().commit_index;
            let from = self.checked[index] + 1;
            if from <= commit {
                let entries = member
                    .store()
                    .entries(from, commit + 1, None, GetEntriesContext::empty(false))
                    .unwrap_or_else(|e| self.fail(format!("member {} cannot read its log: {e}", index + 1)));
                for entry in entries {
                    let position = entry.index as usize - 1;
                    match self.committed.get(position) {
                        Some((term, data)) if *term != entry.term || data[..] != entry.data[..] => self.fail(
                            format!("member {} committed another entry at index {}", index + 1, entry.index),
                        ),
                        Some(_) => {}
                        None => {
                            assert_eq!(position, self.committed.len(), "committed in order");
                            self.committed.push((entry.term, entry.data.to_vec()));
                        }
                    }
                }
                self.checked[index] = commit;
            }
            let (next, hash) = member.committed();
            if let (true, Some(hash)) = (next > 1, hash) {
                match self.hashes.get(&(next - 1)) {
                    Some(seen) if *seen != hash => self.fail(format!(
                        "member {} has another ledger hash at sequence {}",
                        index + 1,
                        next - 1
                    )),
                    Some(_) => {}
                    None => {
                        self.hashes.insert(next - 1, hash);
                    }
                }
            }
        }
    }

    /// Heals everything, restarts every member, and runs until the group is live
    /// and converged; then checks what clients were told.
    fn finish(&mut self) {
        for row in self.blocked.iter_mut() {
            row.fill(false);
        }
        for index in 0..self.members.len() {
            if let Some(disk) = self.down[index].take() {
                let seed = self.rng.random();
                self.members[index] = Some(start_member(index as u64 + 1, &self.voters, disk, seed));
            }
            if let Some(member) = self.members[index].as_mut() {
                member.store_mut().disk_mut().fail_next_sync = false;
            }
        }
        self.faults.loss = 0.0;
        self.faults.duplicate = 0.0;
        let probe = Command::Transfer { id: u128::MAX - 1, from: 1, to: 2, amount: 1, phase: Phase::Single };
        self.pending.push(probe);
        let deadline = self.now + 6_000;
        while self.now < deadline {
            self.step(false);
            if self.told.contains_key(&probe.id()) && self.pending.is_empty() && self.converged() {
                break;
            }
        }
        if !self.told.contains_key(&probe.id()) {
            self.fail("no progress after the network healed".into());
        }
        if !self.converged() {
            self.fail("members did not converge".into());
        }
        self.check_told();
        // Every member holds the same ledger, pending transfers and expiries included.
        let digests: Vec<u64> =
            self.members.iter().flatten().map(|m| m.core().ledger().state_digest()).collect();
        if digests.windows(2).any(|w| w[0] != w[1]) {
            self.fail(format!("members' ledgers differ: {digests:x?}"));
        }
        if std::env::var_os("LEDGERBUS_SIM_VERBOSE").is_some() {
            let disk = self.members[0].as_ref().expect("all running").store().disk();
            let expired = disk
                .events()
                .filter(|frame| matches!(Frame::decode(frame), Ok((Frame::PendingExpired(_), _))))
                .count();
            eprintln!("seed {}: {expired} pending transfers expired", self.seed);
            eprintln!(
                "seed {} size {}: {} entries, {} events committed, {} answers, {} crashes, {} leaderships, ticks {}",
                self.seed,
                self.voters.len(),
                self.committed.len(),
                self.hashes.keys().last().copied().unwrap_or(0),
                self.told.len(),
                self.crashes,
                self.leaderships,
                self.now
            );
        }
    }

    fn converged(&self) -> bool {
        let positions: Vec<_> = self.members.iter().flatten().map(|m| m.committed()).collect();
        positions.windows(2).all(|w| w[0] == w[1])
            && self.members.iter().flatten().all(|m| m.core().next_sequence() == m.committed().0)
    }

    fn check_told(&self) {
        let disk = self.members[0].as_ref().expect("all running").store().disk();
        let mut events = HashMap::new();
        let mut applied_ok: HashMap<u128, u32> = HashMap::new();
        for frame in disk.events() {
            let Ok((Frame::TransferEvent(event), _)) = Frame::decode(frame) else { continue };
            let result = event.result().expect("known result");
            let id = event.id.get();
            events.insert(event.sequence.get(), (id, result));
            if result == ResultCode::Ok {
                *applied_ok.entry(id).or_default() += 1;
            }
        }
        for frame in disk.events() {
            if let Ok((Frame::AccountEvent(event), _)) = Frame::decode(frame) {
                events.insert(event.sequence.get(), (event.id.get(), event.result().expect("known")));
            }
        }
        for (id, answers) in &self.told {
            for (sequence, result) in answers {
                match events.get(sequence) {
                    Some((logged_id, logged)) if logged_id == id && logged == result => {}
                    other => self.fail(format!(
                        "client was told {result:?} at {sequence} for {id}; the log has {other:?}"
                    )),
                }
            }
        }
        if let Some((id, n)) = applied_ok.iter().find(|(_, n)| **n > 1) {
            self.fail(format!("transfer {id} applied {n} times"));
        }
    }
}

fn decide(core: &mut SequencerCore, command: &Command, now_ns: u64, batch: &mut PendingBatch) {
    match *command {
        Command::Account(id) => {
            let create = CreateAccount {
                correlation_id: 0.into(),
                id: id.into(),
                ledger: 1.into(),
                code: 1.into(),
                flags: if id % 2 == 0 { account_flags::ALLOW_NEGATIVE } else { 0 }.into(),
                ..Default::default()
            };
            core.decide_account(0, &create, now_ns, batch);
        }
        Command::Transfer { id, from, to, amount, phase } => {
            let mut transfer = Transfer {
                correlation_id: 0.into(),
                id: id.into(),
                debit_account_id: from.into(),
                credit_account_id: to.into(),
                amount: amount.into(),
                ledger: 1.into(),
                code: 1.into(),
                flags: 0.into(),
                ..Default::default()
            };
            match phase {
                Phase::Single => {}
                Phase::Pending(seconds) => {
                    transfer.flags = ledgerbus_codec::transfer_flags::PENDING.into();
                    transfer.timeout = seconds.into();
                }
                Phase::Post(pending) | Phase::Void(pending) => {
                    let flag = if matches!(phase, Phase::Post(_)) {
                        ledgerbus_codec::transfer_flags::POST_PENDING
                    } else {
                        ledgerbus_codec::transfer_flags::VOID_PENDING
                    };
                    transfer = Transfer {
                        id: id.into(),
                        flags: flag.into(),
                        pending_id: pending.into(),
                        ..Default::default()
                    };
                }
            }
            core.decide_transfers(0, &[transfer], now_ns, batch);
        }
    }
}

fn run_seed(seed: u64, size: usize) {
    let mut sim = Sim::new(seed, size);
    for _ in 0..1_500 {
        sim.step(true);
    }
    sim.finish();
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("LEDGERBUS_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let count = std::env::var("LEDGERBUS_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
    (0..count).collect()
}

#[test]
fn three_members_keep_every_committed_entry_through_faults() {
    for seed in seeds() {
        run_seed(seed, 3);
    }
}

#[test]
fn five_members_keep_every_committed_entry_through_faults() {
    for seed in seeds() {
        run_seed(seed.wrapping_add(1 << 32), 5);
    }
}
