//! The decider: applies commands to accounts and transfers, one result code each.
//!
//! Deterministic (docs/architecture.md, "Ledger semantics"): no clock (the timestamp
//! is an argument), no I/O, and no output ever depends on the random hash seeds of its
//! tables or on their iteration order. Given the same commands in the same order, two ledgers reach the
//! same state, which [`Ledger::state_digest`] and the rolling log hash confirm.
//!
//! Rejections change nothing. Only successful transfers are remembered by id (as
//! TigerBeetle does): a retry of a rejected transfer is decided afresh, a retry of
//! an applied one answers `Exists` (same fields) or `ExistsWithDifferentFields`.

use hashbrown::DefaultHashBuilder;

use crate::huge::HugePages;
use crate::index::{IdIndex, Probe};

/// A 128-bit id as the table key: two u64 words, so a (key, value) slot is aligned
/// to 8 bytes, not 16 as a `u128` would force (24-byte transfer slots, not 32).
type Key = [u64; 2];

#[inline]
fn key(id: u128) -> Key {
    [id as u64, (id >> 64) as u64]
}

#[inline]
fn id_of(key: &Key) -> u128 {
    u128::from(key[0]) | (u128::from(key[1]) << 64)
}

/// The ledger's hash maps: default (seeded) hasher, huge-page backed when large.
/// Iteration order is never allowed to reach an output, so the seeded hasher is safe.
type HashMap<K, V> = hashbrown::HashMap<K, V, DefaultHashBuilder, HugePages>;
use std::collections::BTreeSet;

use ledgerbus_codec::messages::{CreateAccount, Transfer};
use ledgerbus_codec::{account_flags, transfer_flags, ResultCode};

use crate::account::{Account, PendingState, PendingTransfer, UserData};

/// The ledger state: accounts by id, the ids (with a field fingerprint) of every
/// applied transfer, and every pending transfer with where it stands.
#[derive(Debug, Clone)]
pub struct Ledger {
    accounts: HashMap<Key, Account>,
    /// Transfer id → fingerprint of its fields, for idempotent retries. 24 bytes of
    /// payload per id; the full transfer lives in the journal and the read model.
    /// A table of our own so that replay can prefetch ids ahead (see `index`).
    transfers: IdIndex,
    /// Every transfer applied with the pending flag, kept after it is resolved (so a
    /// second post or void is refused precisely).
    pendings: HashMap<Key, StoredPending>,
    /// User data of the pending transfers that have any (inherited by their post or
    /// void), kept aside so a pending transfer's slot stays 64 bytes.
    pending_user_data: HashMap<Key, UserData>,
    /// User data of the accounts that have any.
    account_user_data: HashMap<Key, UserData>,
    /// (deadline, id) of every pending transfer with a timeout that is still
    /// pending: the sequencer expires them in this order.
    expiries: BTreeSet<(u64, u128)>,
    /// Undo records of the chain being decided; reused so chains do not allocate.
    undo: Vec<Undo>,
    /// Whether changes are being recorded in `undo` (inside a linked chain).
    recording: bool,
}

/// Longest linked chain the sequencer accepts; longer ones are `LinkedChainOpen`.
pub use ledgerbus_codec::CHAIN_MAX;

/// One change made inside a linked chain, with what it replaced.
#[derive(Debug, Clone, Copy)]
enum Undo {
    Account(u128, Account),
    Pending(u128, Option<StoredPending>),
    ExpiryAdded(u64, u128),
    ExpiryRemoved(u64, u128),
    TransferId(u128),
}

/// A pending transfer as its table holds it: [`PendingTransfer`] without the user
/// data, ids as word pairs (8-byte alignment), 64 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StoredPending {
    debit: Key,
    credit: Key,
    amount: u64,
    expires_at_ns: u64,
    ledger: u32,
    code: u16,
    flags: u16,
    state: PendingState,
}

const _: () = assert!(core::mem::size_of::<StoredPending>() == 64);

impl StoredPending {
    fn of(pending: &PendingTransfer) -> StoredPending {
        StoredPending {
            debit: key(pending.debit),
            credit: key(pending.credit),
            amount: pending.amount,
            expires_at_ns: pending.expires_at_ns,
            ledger: pending.ledger,
            code: pending.code,
            flags: pending.flags,
            state: pending.state,
        }
    }

    fn with(&self, user_data: UserData) -> PendingTransfer {
        PendingTransfer {
            debit: id_of(&self.debit),
            credit: id_of(&self.credit),
            amount: self.amount,
            expires_at_ns: self.expires_at_ns,
            ledger: self.ledger,
            code: self.code,
            flags: self.flags,
            state: self.state,
            user_data_128: user_data.user_data_128,
            user_data_64: user_data.user_data_64,
            user_data_32: user_data.user_data_32,
        }
    }
}

/// What a transfer does, from its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Posts at once.
    Single,
    /// Reserves.
    Pending,
    /// Posts a reservation.
    Post,
    /// Releases a reservation.
    Void,
}

/// The fields that make two transfers "the same" for idempotency, hashed. The
/// fields are the resolved ones (a post's inherited accounts; a balancing transfer's
/// amount is left out, since what it moves depends on the balance when it ran). A
/// transfer without any version 2 field hashes exactly as version 1 did.
pub fn fingerprint(transfer: &Transfer) -> u64 {
    let flags = transfer.flags.get();
    let amount = if flags & BALANCING != 0 { 0 } else { transfer.amount.get() };
    let mut bytes = [0u8; 96];
    bytes[0..16].copy_from_slice(&transfer.debit_account_id.get().to_le_bytes());
    bytes[16..32].copy_from_slice(&transfer.credit_account_id.get().to_le_bytes());
    bytes[32..40].copy_from_slice(&amount.to_le_bytes());
    bytes[40..44].copy_from_slice(&transfer.ledger.get().to_le_bytes());
    bytes[44..46].copy_from_slice(&transfer.code.get().to_le_bytes());
    bytes[46..48].copy_from_slice(&flags.to_le_bytes());
    let version_1 = transfer.pending_id.get() == 0
        && transfer.user_data_128.get() == 0
        && transfer.user_data_64.get() == 0
        && transfer.user_data_32.get() == 0
        && transfer.timeout.get() == 0;
    if version_1 {
        // No field of version 2: hashed exactly as version 1 hashed every transfer.
        return xxhash_rust::xxh3::xxh3_64(&bytes[..48]);
    }
    bytes[48..64].copy_from_slice(&transfer.pending_id.get().to_le_bytes());
    bytes[64..80].copy_from_slice(&transfer.user_data_128.get().to_le_bytes());
    bytes[80..88].copy_from_slice(&transfer.user_data_64.get().to_le_bytes());
    bytes[88..92].copy_from_slice(&transfer.user_data_32.get().to_le_bytes());
    bytes[92..96].copy_from_slice(&transfer.timeout.get().to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::new()
    }
}

/// Either balancing flag.
const BALANCING: u16 = transfer_flags::BALANCING_DEBIT | transfer_flags::BALANCING_CREDIT;

/// The field rules of a transfer that names its own accounts (single-phase or
/// pending), in the order deciding checks them.
#[inline]
fn check_fields(
    debit_id: u128,
    credit_id: u128,
    amount: u64,
    ledger: u32,
    code: u16,
) -> Result<(), ResultCode> {
    if debit_id == credit_id {
        return Err(ResultCode::AccountsMustBeDifferent);
    }
    if amount == 0 {
        return Err(ResultCode::AmountMustBePositive);
    }
    if ledger == 0 {
        return Err(ResultCode::LedgerMustNotBeZero);
    }
    if code == 0 {
        return Err(ResultCode::CodeMustNotBeZero);
    }
    Ok(())
}

/// Nanoseconds per second of a transfer's `timeout`.
const NS_PER_SECOND: u64 = 1_000_000_000;

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Ledger {
        Ledger::with_capacity(0, 0)
    }

    /// An empty ledger with room for `accounts` and `transfers` without rehashing
    /// (allocate at start-up, docs/architecture.md, "Design rules" 5).
    pub fn with_capacity(accounts: usize, transfers: usize) -> Ledger {
        Ledger {
            accounts: HashMap::with_capacity_and_hasher_in(
                accounts,
                DefaultHashBuilder::default(),
                HugePages,
            ),
            transfers: IdIndex::with_capacity(transfers),
            pendings: HashMap::with_hasher_in(DefaultHashBuilder::default(), HugePages),
            pending_user_data: HashMap::with_hasher_in(DefaultHashBuilder::default(), HugePages),
            account_user_data: HashMap::with_hasher_in(DefaultHashBuilder::default(), HugePages),
            expiries: BTreeSet::new(),
            undo: Vec::with_capacity(4 * CHAIN_MAX),
            recording: false,
        }
    }

    /// Has the kernel back the transfer-id index's memory now (see
    /// [`IdIndex::populate`]); call at start, before deciding.
    pub fn populate_transfer_index(&self) {
        self.transfers.populate();
    }

    /// Transfer ids the index holds before it grows.
    pub fn transfer_capacity(&self) -> usize {
        self.transfers.capacity()
    }

    /// The account with `id`.
    pub fn account(&self, id: u128) -> Option<&Account> {
        self.accounts.get(&key(id))
    }

    /// The user data of account `id` (all zero when it has none).
    pub fn account_user_data(&self, id: u128) -> UserData {
        self.account_user_data.get(&key(id)).copied().unwrap_or_default()
    }

    /// The pending transfer with `id` (pending or resolved).
    pub fn pending(&self, id: u128) -> Option<PendingTransfer> {
        let stored = self.pendings.get(&key(id))?;
        let user_data = if self.pending_user_data.is_empty() {
            UserData::default()
        } else {
            self.pending_user_data.get(&key(id)).copied().unwrap_or_default()
        };
        Some(stored.with(user_data))
    }

    /// Number of accounts.
    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// Number of applied transfers remembered.
    pub fn transfer_count(&self) -> usize {
        self.transfers.len()
    }

    /// Number of pending transfers ever applied (pending or resolved).
    pub fn pending_count(&self) -> usize {
        self.pendings.len()
    }

    /// Whether a transfer with `id` was applied.
    pub fn has_transfer(&self, id: u128) -> bool {
        self.transfers.get(id).is_some()
    }

    /// Bytes the tables have allocated.
    pub fn memory_bytes(&self) -> usize {
        self.accounts.allocation_size()
            + self.transfers.memory_bytes()
            + self.pendings.allocation_size()
            + self.pending_user_data.allocation_size()
            + self.account_user_data.allocation_size()
    }

    /// Decides a CreateAccount. Rejections change nothing.
    pub fn create_account(&mut self, command: &CreateAccount, timestamp_ns: u64) -> ResultCode {
        let flags = command.flags.get();
        if flags & !account_flags::ALL != 0 {
            return ResultCode::ReservedFlag;
        }
        let id = command.id.get();
        if id == 0 {
            return ResultCode::IdMustNotBeZero;
        }
        let limits =
            account_flags::DEBITS_MUST_NOT_EXCEED_CREDITS | account_flags::CREDITS_MUST_NOT_EXCEED_DEBITS;
        if flags & limits == limits
            || (flags & account_flags::ALLOW_NEGATIVE != 0
                && flags & account_flags::DEBITS_MUST_NOT_EXCEED_CREDITS != 0)
        {
            return ResultCode::FlagsAreMutuallyExclusive;
        }
        if command.ledger.get() == 0 {
            return ResultCode::LedgerMustNotBeZero;
        }
        if command.code.get() == 0 {
            return ResultCode::CodeMustNotBeZero;
        }
        let user_data = UserData {
            user_data_128: command.user_data_128.get(),
            user_data_64: command.user_data_64.get(),
            user_data_32: command.user_data_32.get(),
        };
        if let Some(existing) = self.accounts.get(&key(id)) {
            let same = existing.ledger == command.ledger.get()
                && existing.code == command.code.get()
                && existing.flags & !account_flags::CLOSED == flags & !account_flags::CLOSED
                && self.account_user_data(id) == user_data;
            return if same { ResultCode::Exists } else { ResultCode::ExistsWithDifferentFields };
        }
        let account = Account {
            timestamp_ns,
            ledger: command.ledger.get(),
            code: command.code.get(),
            flags,
            ..Account::default()
        };
        self.accounts.insert(key(id), account);
        if !user_data.is_empty() {
            self.account_user_data.insert(key(id), user_data);
        }
        ResultCode::Ok
    }

    /// Decides one transfer on its own (not part of a linked chain), at the
    /// sequencer time stamp `timestamp_ns` its event will carry. On success
    /// `command` holds the fields as resolved (what the event records): a post or
    /// void its pending transfer's accounts, ledger, code and amount; a balancing
    /// transfer the amount it moved.
    pub fn transfer(&mut self, command: &mut Transfer, timestamp_ns: u64) -> ResultCode {
        match self.try_transfer(command, timestamp_ns, true) {
            Ok(true) => ResultCode::Ok,
            Ok(false) => ResultCode::Exists,
            Err(code) => code,
        }
    }

    /// Decides a linked chain all-or-nothing: either every transfer applies (`Ok`,
    /// or `Exists` for ones applied before), or none does, the first failure gets its
    /// own code and every other member `LinkedEventFailed`. `results` receives one
    /// code per transfer; `timestamps` holds each member's time stamp. The chain's
    /// last transfer must not carry the linked flag; if it does, the chain never
    /// closed and every member gets `LinkedChainOpen`. Applied members are resolved
    /// in place as [`transfer`](Self::transfer) does; after a failure every member
    /// keeps its fields as sent.
    pub fn transfer_chain(&mut self, chain: &mut [Transfer], timestamps: &[u64], results: &mut [ResultCode]) {
        assert_eq!(chain.len(), results.len());
        assert_eq!(chain.len(), timestamps.len());
        assert!(!chain.is_empty());
        let open = chain.last().is_some_and(Transfer::is_linked);
        let inner_unlinked = chain[..chain.len() - 1].iter().any(|t| !t.is_linked());
        if open || inner_unlinked || chain.len() > CHAIN_MAX {
            results.fill(ResultCode::LinkedChainOpen);
            return;
        }
        debug_assert!(self.undo.is_empty());
        self.recording = true;
        let mut failed = None;
        for index in 0..chain.len() {
            let sent = chain[index];
            match self.try_transfer(&mut chain[index], timestamps[index], true) {
                Ok(true) => results[index] = ResultCode::Ok,
                Ok(false) => results[index] = ResultCode::Exists,
                Err(code) => {
                    chain[index] = sent;
                    failed = Some((index, code));
                    break;
                }
            }
        }
        self.recording = false;
        if let Some((index, code)) = failed {
            self.roll_back();
            results.fill(ResultCode::LinkedEventFailed);
            results[index] = code;
        }
        self.undo.clear();
    }

    /// Undoes every change recorded in `undo`, newest first.
    fn roll_back(&mut self) {
        while let Some(change) = self.undo.pop() {
            match change {
                Undo::Account(id, before) => {
                    *self.accounts.get_mut(&key(id)).expect("an account changed in this chain") = before;
                }
                Undo::Pending(id, Some(before)) => {
                    self.pendings.insert(key(id), before);
                }
                Undo::Pending(id, None) => {
                    assert!(self.pendings.remove(&key(id)).is_some());
                    self.pending_user_data.remove(&key(id));
                }
                Undo::ExpiryAdded(deadline, id) => assert!(self.expiries.remove(&(deadline, id))),
                Undo::ExpiryRemoved(deadline, id) => assert!(self.expiries.insert((deadline, id))),
                Undo::TransferId(id) => assert!(self.transfers.remove(id).is_some()),
            }
        }
    }

    /// Whether a transfer with these flags is a single-phase transfer, a pending
    /// one, a post or a void; or the code refusing its flags.
    fn kind(flags: u16) -> Result<Kind, ResultCode> {
        use transfer_flags::*;
        if flags & !ALL != 0 {
            return Err(ResultCode::ReservedFlag);
        }
        let post = flags & POST_PENDING != 0;
        let void = flags & VOID_PENDING != 0;
        let pending = flags & PENDING != 0;
        let balancing = flags & (BALANCING_DEBIT | BALANCING_CREDIT) != 0;
        let closing = flags & (CLOSING_DEBIT | CLOSING_CREDIT) != 0;
        if (post && void) || (pending && (post || void)) || (balancing && (post || void)) {
            return Err(ResultCode::FlagsAreMutuallyExclusive);
        }
        if closing && !pending {
            return Err(ResultCode::ClosingTransferMustBePending);
        }
        Ok(match (pending, post, void) {
            (true, _, _) => Kind::Pending,
            (_, true, _) => Kind::Post,
            (_, _, true) => Kind::Void,
            _ => Kind::Single,
        })
    }

    /// Applies a transfer or says why not, resolving `command` in place on success.
    /// `Ok(false)` means it already exists with the same fields (idempotent success,
    /// nothing changed). `remember` keeps the id for idempotency (deciders only).
    fn try_transfer(
        &mut self,
        command: &mut Transfer,
        timestamp_ns: u64,
        remember: bool,
    ) -> Result<bool, ResultCode> {
        let kind = Self::kind(command.flags.get())?;
        let id = command.id.get();
        if id == 0 {
            return Err(ResultCode::IdMustNotBeZero);
        }
        let pending_id = command.pending_id.get();
        match kind {
            Kind::Post | Kind::Void if pending_id == 0 => return Err(ResultCode::PendingIdMustNotBeZero),
            Kind::Post | Kind::Void if pending_id == id => return Err(ResultCode::PendingIdMustBeDifferent),
            Kind::Single | Kind::Pending if pending_id != 0 => return Err(ResultCode::PendingIdMustBeZero),
            _ => {}
        }
        if kind != Kind::Pending && command.timeout.get() != 0 {
            return Err(ResultCode::TimeoutReservedForPendingTransfer);
        }
        // A post or void takes what it leaves zero from its pending transfer.
        let resolved = matches!(kind, Kind::Post | Kind::Void).then(|| self.resolve(command, pending_id));
        if kind == Kind::Single || kind == Kind::Pending {
            check_fields(
                command.debit_account_id.get(),
                command.credit_account_id.get(),
                command.amount.get(),
                command.ledger.get(),
                command.code.get(),
            )?;
        }
        // The fingerprint of the resolved fields; applying cannot change it (a
        // balancing transfer's amount, the one field applying sets, is not in it).
        let print = if remember { fingerprint(command) } else { 0 };
        // One probe of the (large, cache-cold) transfer table serves both the
        // idempotency check and the insert.
        let vacant = if remember {
            self.transfers.reserve_one();
            match self.transfers.find(id) {
                Probe::Found(slot) => {
                    let existing = self.transfers.value_at(slot);
                    return if existing == print {
                        Ok(false)
                    } else {
                        Err(ResultCode::ExistsWithDifferentFields)
                    };
                }
                Probe::Vacant(slot) => Some(slot),
            }
        } else {
            None
        };
        match kind {
            Kind::Single if command.flags.get() & BALANCING == 0 => self.post_plain(
                command.debit_account_id.get(),
                command.credit_account_id.get(),
                command.ledger.get(),
                command.amount.get(),
            )?,
            Kind::Single | Kind::Pending => self.post(command, kind, timestamp_ns)?,
            Kind::Post | Kind::Void => {
                let pending = resolved.expect("a post or void resolves its pending transfer")?;
                self.resolve_pending(command, kind, pending, timestamp_ns)?;
            }
        }
        if let Some(vacant) = vacant {
            debug_assert_eq!(print, fingerprint(command), "applying changed the fingerprint");
            self.transfers.insert_at(vacant, id, print);
            if self.recording {
                self.undo.push(Undo::TransferId(id));
            }
        }
        Ok(true)
    }

    /// Fills the fields a post or void left zero from its pending transfer, and
    /// checks the ones it gave. Says nothing yet of the pending transfer's state.
    fn resolve(&self, command: &mut Transfer, pending_id: u128) -> Result<PendingTransfer, ResultCode> {
        let Some(pending) = self.pending(pending_id) else {
            return Err(if self.transfers.get(pending_id).is_some() {
                ResultCode::PendingTransferNotPending
            } else {
                ResultCode::PendingTransferNotFound
            });
        };
        let debit = command.debit_account_id.get();
        let credit = command.credit_account_id.get();
        if (debit != 0 && debit != pending.debit) || (credit != 0 && credit != pending.credit) {
            return Err(ResultCode::PendingTransferHasDifferentAccounts);
        }
        if command.ledger.get() != 0 && command.ledger.get() != pending.ledger {
            return Err(ResultCode::PendingTransferHasDifferentLedger);
        }
        if command.code.get() != 0 && command.code.get() != pending.code {
            return Err(ResultCode::PendingTransferHasDifferentCode);
        }
        let amount = command.amount.get();
        if amount > pending.amount {
            return Err(ResultCode::ExceedsPendingTransferAmount);
        }
        let posting = command.flags.get() & transfer_flags::POST_PENDING != 0;
        command.debit_account_id = pending.debit.into();
        command.credit_account_id = pending.credit.into();
        command.ledger = pending.ledger.into();
        command.code = pending.code.into();
        // A post takes all of it unless it says how much; a void releases all of it.
        if amount == 0 || !posting {
            command.amount = pending.amount.into();
        }
        if command.user_data_128.get() == 0
            && command.user_data_64.get() == 0
            && command.user_data_32.get() == 0
        {
            command.user_data_128 = pending.user_data_128.into();
            command.user_data_64 = pending.user_data_64.into();
            command.user_data_32 = pending.user_data_32.into();
        }
        Ok(pending)
    }

    /// Posts or voids `pending` (already resolved into `command`).
    fn resolve_pending(
        &mut self,
        command: &Transfer,
        kind: Kind,
        pending: PendingTransfer,
        timestamp_ns: u64,
    ) -> Result<(), ResultCode> {
        match pending.state {
            PendingState::Pending => {}
            PendingState::Posted => return Err(ResultCode::PendingTransferAlreadyPosted),
            PendingState::Voided => return Err(ResultCode::PendingTransferAlreadyVoided),
            PendingState::Expired => return Err(ResultCode::PendingTransferExpired),
        }
        if pending.expires_at_ns != 0 && timestamp_ns >= pending.expires_at_ns {
            return Err(ResultCode::PendingTransferExpired);
        }
        let posted = if kind == Kind::Post { command.amount.get() } else { 0 };
        let state = if kind == Kind::Post { PendingState::Posted } else { PendingState::Voided };
        self.settle(command.pending_id.get(), pending, posted, state)
    }

    /// Ends a pending transfer: releases its reservation, posts `posted` of it, and
    /// records `state`. Reopens accounts it closed unless it is posted.
    fn settle(
        &mut self,
        pending_id: u128,
        pending: PendingTransfer,
        posted: u64,
        state: PendingState,
    ) -> Result<(), ResultCode> {
        debug_assert!(posted <= pending.amount);
        let [debit, credit] = self.accounts.get_disjoint_mut([&key(pending.debit), &key(pending.credit)]);
        let (Some(debit), Some(credit)) = (debit, credit) else {
            unreachable!("a pending transfer's accounts exist");
        };
        let (Some(debits_posted), Some(credits_posted)) =
            (debit.debits_posted.checked_add(posted), credit.credits_posted.checked_add(posted))
        else {
            return Err(ResultCode::Overflow);
        };
        if self.recording {
            self.undo.push(Undo::Account(pending.debit, *debit));
            self.undo.push(Undo::Account(pending.credit, *credit));
            self.undo.push(Undo::Pending(pending_id, Some(StoredPending::of(&pending))));
        }
        // A reservation is released exactly once: it is still held in full.
        debit.debits_pending = debit.debits_pending.checked_sub(pending.amount).expect("reservation held");
        credit.credits_pending =
            credit.credits_pending.checked_sub(pending.amount).expect("reservation held");
        debit.debits_posted = debits_posted;
        credit.credits_posted = credits_posted;
        if state != PendingState::Posted {
            if pending.flags & transfer_flags::CLOSING_DEBIT != 0 {
                debit.flags &= !account_flags::CLOSED;
            }
            if pending.flags & transfer_flags::CLOSING_CREDIT != 0 {
                credit.flags &= !account_flags::CLOSED;
            }
        }
        self.pendings.get_mut(&key(pending_id)).expect("a pending transfer being settled").state = state;
        if pending.expires_at_ns != 0 {
            assert!(self.expiries.remove(&(pending.expires_at_ns, pending_id)));
            if self.recording {
                self.undo.push(Undo::ExpiryRemoved(pending.expires_at_ns, pending_id));
            }
        }
        Ok(())
    }

    /// [`post`](Self::post) for the common case, a single-phase transfer that is not
    /// balancing: the same rules in the same order (the hot path of deciding and
    /// following), without the pending and balancing branches.
    #[inline]
    fn post_plain(
        &mut self,
        debit_id: u128,
        credit_id: u128,
        ledger: u32,
        amount: u64,
    ) -> Result<(), ResultCode> {
        debug_assert_ne!(debit_id, credit_id);
        let [debit, credit] = self.accounts.get_disjoint_mut([&key(debit_id), &key(credit_id)]);
        let Some(debit) = debit else { return Err(ResultCode::DebitAccountNotFound) };
        let Some(credit) = credit else { return Err(ResultCode::CreditAccountNotFound) };
        if debit.ledger != ledger || credit.ledger != ledger {
            return Err(ResultCode::LedgerMismatch);
        }
        if debit.is_closed() {
            return Err(ResultCode::DebitAccountClosed);
        }
        if credit.is_closed() {
            return Err(ResultCode::CreditAccountClosed);
        }
        let (Some(debits), Some(credits)) =
            (debit.debits_posted.checked_add(amount), credit.credits_posted.checked_add(amount))
        else {
            return Err(ResultCode::Overflow);
        };
        let (Some(debits_held), Some(credits_held)) =
            (debits.checked_add(debit.debits_pending), credits.checked_add(credit.credits_pending))
        else {
            return Err(ResultCode::Overflow);
        };
        if debit.limits_debits() && debits_held > debit.credits_posted {
            return Err(ResultCode::InsufficientFunds);
        }
        if credit.limits_credits() && credits_held > credit.debits_posted {
            return Err(ResultCode::ExceedsDebits);
        }
        if self.recording {
            self.undo.push(Undo::Account(debit_id, *debit));
            self.undo.push(Undo::Account(credit_id, *credit));
        }
        debit.debits_posted = debits;
        credit.credits_posted = credits;
        Ok(())
    }

    /// The balance rules of a single-phase or pending transfer between two distinct
    /// accounts, and the posting (or reservation) if they hold: both exist, are open
    /// and share the ledger, no total overflows, no limited account breaks its limit
    /// counting pending amounts. A balancing transfer's amount is cut to what the
    /// limit leaves first. Nothing changes on error.
    fn post(&mut self, command: &mut Transfer, kind: Kind, timestamp_ns: u64) -> Result<(), ResultCode> {
        let (debit_id, credit_id) = (command.debit_account_id.get(), command.credit_account_id.get());
        debug_assert_ne!(debit_id, credit_id);
        let ledger = command.ledger.get();
        let flags = command.flags.get();
        // Distinct ids, so both can be borrowed mutably at once.
        let [debit, credit] = self.accounts.get_disjoint_mut([&key(debit_id), &key(credit_id)]);
        let Some(debit) = debit else { return Err(ResultCode::DebitAccountNotFound) };
        let Some(credit) = credit else { return Err(ResultCode::CreditAccountNotFound) };
        if debit.ledger != ledger || credit.ledger != ledger {
            return Err(ResultCode::LedgerMismatch);
        }
        if debit.is_closed() {
            return Err(ResultCode::DebitAccountClosed);
        }
        if credit.is_closed() {
            return Err(ResultCode::CreditAccountClosed);
        }
        let mut amount = command.amount.get();
        if flags & transfer_flags::BALANCING_DEBIT != 0 {
            let held = u128::from(debit.debits_posted) + u128::from(debit.debits_pending);
            let room = u128::from(debit.credits_posted).saturating_sub(held);
            amount = amount.min(u64::try_from(room).unwrap_or(u64::MAX));
            if amount == 0 {
                return Err(ResultCode::InsufficientFunds);
            }
        }
        if flags & transfer_flags::BALANCING_CREDIT != 0 {
            let held = u128::from(credit.credits_posted) + u128::from(credit.credits_pending);
            let room = u128::from(credit.debits_posted).saturating_sub(held);
            amount = amount.min(u64::try_from(room).unwrap_or(u64::MAX));
            if amount == 0 {
                return Err(ResultCode::ExceedsDebits);
            }
        }
        let pending = kind == Kind::Pending;
        let (debits, credits) = if pending {
            (debit.debits_pending.checked_add(amount), credit.credits_pending.checked_add(amount))
        } else {
            (debit.debits_posted.checked_add(amount), credit.credits_posted.checked_add(amount))
        };
        let (Some(debits), Some(credits)) = (debits, credits) else { return Err(ResultCode::Overflow) };
        // The held totals (posted + pending) must fit too, so a later post cannot overflow.
        let (debits_held, credits_held) = if pending {
            (debit.debits_posted.checked_add(debits), credit.credits_posted.checked_add(credits))
        } else {
            (debits.checked_add(debit.debits_pending), credits.checked_add(credit.credits_pending))
        };
        let (Some(debits_held), Some(credits_held)) = (debits_held, credits_held) else {
            return Err(ResultCode::Overflow);
        };
        if debit.limits_debits() && debits_held > debit.credits_posted {
            return Err(ResultCode::InsufficientFunds);
        }
        if credit.limits_credits() && credits_held > credit.debits_posted {
            return Err(ResultCode::ExceedsDebits);
        }
        let expires_at_ns = match command.timeout.get() {
            0 => 0,
            seconds => {
                timestamp_ns.checked_add(u64::from(seconds) * NS_PER_SECOND).ok_or(ResultCode::Overflow)?
            }
        };
        if self.recording {
            self.undo.push(Undo::Account(debit_id, *debit));
            self.undo.push(Undo::Account(credit_id, *credit));
        }
        if pending {
            debit.debits_pending = debits;
            credit.credits_pending = credits;
            if flags & transfer_flags::CLOSING_DEBIT != 0 {
                debit.flags |= account_flags::CLOSED;
            }
            if flags & transfer_flags::CLOSING_CREDIT != 0 {
                credit.flags |= account_flags::CLOSED;
            }
        } else {
            debit.debits_posted = debits;
            credit.credits_posted = credits;
        }
        command.amount = amount.into();
        if pending {
            let id = command.id.get();
            let record = PendingTransfer {
                debit: debit_id,
                credit: credit_id,
                amount,
                expires_at_ns,
                ledger,
                code: command.code.get(),
                flags,
                state: PendingState::Pending,
                user_data_128: command.user_data_128.get(),
                user_data_64: command.user_data_64.get(),
                user_data_32: command.user_data_32.get(),
            };
            let user_data = record.user_data();
            if !user_data.is_empty() {
                self.pending_user_data.insert(key(id), user_data);
            }
            let before = self.pendings.insert(key(id), StoredPending::of(&record));
            if self.recording {
                self.undo.push(Undo::Pending(id, before));
            }
            if expires_at_ns != 0 {
                self.expiries.insert((expires_at_ns, id));
                if self.recording {
                    self.undo.push(Undo::ExpiryAdded(expires_at_ns, id));
                }
            }
        }
        Ok(())
    }

    /// [`post_transfer`](Self::post_transfer) of a single-phase transfer without
    /// balancing, pending id or timeout, from its fields (a follower applying an
    /// event builds no command): the checks deciding it would make, in that order.
    pub fn post_plain_transfer(
        &mut self,
        id: u128,
        debit_id: u128,
        credit_id: u128,
        ledger: u32,
        code: u16,
        amount: u64,
    ) -> Result<(), ResultCode> {
        if id == 0 {
            return Err(ResultCode::IdMustNotBeZero);
        }
        check_fields(debit_id, credit_id, amount, ledger, code)?;
        self.post_plain(debit_id, credit_id, ledger, amount)
    }

    /// The earliest deadline of a pending transfer still pending, with its id.
    pub fn next_expiry(&self) -> Option<(u64, u128)> {
        self.expiries.first().copied()
    }

    /// Releases the pending transfer `id` because its timeout passed at
    /// `timestamp_ns` (the sequencer decides this; followers apply its event).
    /// Refused, changing nothing, unless it is pending and due.
    pub fn expire(&mut self, id: u128, timestamp_ns: u64) -> Result<PendingTransfer, ResultCode> {
        let Some(pending) = self.pending(id) else {
            return Err(ResultCode::PendingTransferNotFound);
        };
        match pending.state {
            PendingState::Pending => {}
            PendingState::Posted => return Err(ResultCode::PendingTransferAlreadyPosted),
            PendingState::Voided => return Err(ResultCode::PendingTransferAlreadyVoided),
            PendingState::Expired => return Err(ResultCode::PendingTransferExpired),
        }
        if pending.expires_at_ns == 0 || timestamp_ns < pending.expires_at_ns {
            return Err(ResultCode::PendingTransferNotPending);
        }
        self.settle(id, pending, 0, PendingState::Expired)?;
        Ok(pending)
    }

    /// Applies a transfer the log says was applied, without remembering its id: for
    /// consumers, which follow a sequenced, CRC-checked log and never decide, so the
    /// idempotency index (the costliest part of deciding) is not theirs to keep. The
    /// balance rules are still checked: a log that breaks them is refused.
    pub fn post_transfer(&mut self, command: &Transfer, timestamp_ns: u64) -> Result<(), ResultCode> {
        if command.is_plain() {
            return self.post_plain_transfer(
                command.id.get(),
                command.debit_account_id.get(),
                command.credit_account_id.get(),
                command.ledger.get(),
                command.code.get(),
                command.amount.get(),
            );
        }
        let mut command = *command;
        let expected = command.amount.get();
        self.try_transfer(&mut command, timestamp_ns, false)?;
        // The event carries the resolved transfer: applying it resolves to itself.
        debug_assert_eq!(command.amount.get(), expected);
        Ok(())
    }

    /// Replays an applied transfer from the log (recovery, consumers): the same
    /// checks as deciding, because a log that does not apply is a bug or corruption.
    pub fn replay_transfer(&mut self, command: &Transfer, timestamp_ns: u64) -> Result<(), ResultCode> {
        let mut command = *command;
        match self.try_transfer(&mut command, timestamp_ns, true) {
            Ok(true) => Ok(()),
            Ok(false) => Err(ResultCode::Exists),
            Err(code) => Err(code),
        }
    }

    /// A digest of the whole state, independent of insertion history and of hash-map
    /// order: accounts and transfer ids sorted by id. O(n log n); for comparisons and
    /// tests, not the hot path.
    pub fn state_digest(&self) -> u64 {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut ids: Vec<u128> = self.accounts.keys().map(id_of).collect();
        ids.sort_unstable();
        for id in ids {
            let account = &self.accounts[&key(id)];
            hasher.update(&id.to_le_bytes());
            hasher.update(&account.debits_posted.to_le_bytes());
            hasher.update(&account.credits_posted.to_le_bytes());
            hasher.update(&account.timestamp_ns.to_le_bytes());
            hasher.update(&account.ledger.to_le_bytes());
            hasher.update(&account.code.to_le_bytes());
            hasher.update(&account.flags.to_le_bytes());
            // Version 2 fields only when set: a version 1 state digests as before.
            let user_data = self.account_user_data(id);
            if account.has_v2_fields() || !user_data.is_empty() {
                hasher.update(&account.debits_pending.to_le_bytes());
                hasher.update(&account.credits_pending.to_le_bytes());
                hasher.update(&user_data.user_data_128.to_le_bytes());
                hasher.update(&user_data.user_data_64.to_le_bytes());
                hasher.update(&user_data.user_data_32.to_le_bytes());
            }
        }
        let mut transfers: Vec<(u128, u64)> = self.transfers.iter().collect();
        transfers.sort_unstable();
        for (id, print) in transfers {
            hasher.update(&id.to_le_bytes());
            hasher.update(&print.to_le_bytes());
        }
        for (id, pending) in self.pendings_sorted() {
            hasher.update(&id.to_le_bytes());
            hasher.update(&pending.debit.to_le_bytes());
            hasher.update(&pending.credit.to_le_bytes());
            hasher.update(&pending.amount.to_le_bytes());
            hasher.update(&pending.expires_at_ns.to_le_bytes());
            hasher.update(&pending.ledger.to_le_bytes());
            hasher.update(&pending.code.to_le_bytes());
            hasher.update(&pending.flags.to_le_bytes());
            hasher.update(&[pending.state as u8]);
            hasher.update(&pending.user_data_128.to_le_bytes());
            hasher.update(&pending.user_data_64.to_le_bytes());
            hasher.update(&pending.user_data_32.to_le_bytes());
        }
        hasher.digest()
    }

    /// Per ledger code: (total debits, total credits) over all accounts, sorted by
    /// ledger. Double entry means the two are equal for every ledger.
    pub fn totals_by_ledger(&self) -> Vec<(u32, u128, u128)> {
        let mut totals: std::collections::BTreeMap<u32, (u128, u128)> = Default::default();
        for account in self.accounts.values() {
            let entry = totals.entry(account.ledger).or_default();
            entry.0 += u128::from(account.debits_posted);
            entry.1 += u128::from(account.credits_posted);
        }
        totals.into_iter().map(|(ledger, (debits, credits))| (ledger, debits, credits)).collect()
    }

    /// Every remembered transfer id with its fingerprint, sorted by id (snapshots).
    pub fn transfer_fingerprints_sorted(&self) -> Vec<(u128, u64)> {
        let mut transfers: Vec<(u128, u64)> = self.transfers.iter().collect();
        transfers.sort_unstable();
        transfers
    }

    /// Every pending transfer (pending or resolved), sorted by id (snapshots, digest).
    pub fn pendings_sorted(&self) -> Vec<(u128, PendingTransfer)> {
        let mut pendings: Vec<(u128, PendingTransfer)> =
            self.pendings.keys().filter_map(|k| Some((id_of(k), self.pending(id_of(k))?))).collect();
        pendings.sort_unstable_by_key(|(id, _)| *id);
        pendings
    }

    /// Puts a pending transfer back as a snapshot recorded it.
    pub fn restore_pending(&mut self, id: u128, pending: PendingTransfer) {
        if pending.state == PendingState::Pending && pending.expires_at_ns != 0 {
            self.expiries.insert((pending.expires_at_ns, id));
        }
        let user_data = pending.user_data();
        if !user_data.is_empty() {
            self.pending_user_data.insert(key(id), user_data);
        }
        self.pendings.insert(key(id), StoredPending::of(&pending));
    }

    /// Puts an account's user data back as a snapshot recorded it.
    pub fn restore_account_user_data(&mut self, id: u128, user_data: UserData) {
        if !user_data.is_empty() {
            self.account_user_data.insert(key(id), user_data);
        }
    }

    /// Puts an account back as a snapshot recorded it.
    pub fn restore_account(&mut self, id: u128, account: Account) {
        self.accounts.insert(key(id), account);
    }

    /// Puts a transfer id back as a snapshot recorded it.
    pub fn restore_transfer(&mut self, id: u128, fingerprint: u64) {
        self.transfers.insert(id, fingerprint);
    }

    /// Takes the transfer-id index out (leaving an empty one), so that recovery can
    /// rebuild it on another thread while balances are replayed on this one.
    pub fn take_transfer_index(&mut self) -> IdIndex {
        std::mem::replace(&mut self.transfers, IdIndex::with_capacity(0))
    }

    /// Asks the CPU to fetch the transfer-index slot of `id`, so that deciding it a
    /// few commands later finds it in cache (batch callers prefetch ahead).
    #[inline]
    pub fn prefetch_transfer(&self, id: u128) {
        self.transfers.prefetch(id);
    }

    /// Puts a rebuilt transfer-id index back.
    pub fn put_transfer_index(&mut self, index: IdIndex) {
        self.transfers = index;
    }

    /// Every account, sorted by id (for tools and tests).
    pub fn accounts_sorted(&self) -> Vec<(u128, Account)> {
        let mut accounts: Vec<(u128, Account)> = self.accounts.iter().map(|(k, a)| (id_of(k), *a)).collect();
        accounts.sort_unstable_by_key(|(id, _)| *id);
        accounts
    }
}
