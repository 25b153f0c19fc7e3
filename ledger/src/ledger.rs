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
use ledgerbus_codec::messages::{CreateAccount, Transfer};
use ledgerbus_codec::{account_flags, transfer_flags, ResultCode};

use crate::account::Account;

/// The ledger state: accounts by id and the ids (with a field fingerprint) of every
/// applied transfer.
#[derive(Debug, Clone)]
pub struct Ledger {
    accounts: HashMap<Key, Account>,
    /// Transfer id → fingerprint of its fields, for idempotent retries. 24 bytes of
    /// payload per id; the full transfer lives in the journal and the read model.
    /// A table of our own so that replay can prefetch ids ahead (see `index`).
    transfers: IdIndex,
    /// Undo records of the chain being decided; reused so chains do not allocate.
    undo: Vec<Applied>,
}

/// Longest linked chain the sequencer accepts; longer ones are `LinkedChainOpen`.
pub use ledgerbus_codec::CHAIN_MAX;

/// Undo record of one applied transfer inside a linked chain.
#[derive(Debug, Clone, Copy)]
struct Applied {
    id: u128,
    debit: u128,
    credit: u128,
    amount: u64,
}

/// The fields that make two transfers "the same" for idempotency, hashed.
pub fn fingerprint(transfer: &Transfer) -> u64 {
    let mut bytes = [0u8; 64];
    bytes[0..16].copy_from_slice(&transfer.debit_account_id.get().to_le_bytes());
    bytes[16..32].copy_from_slice(&transfer.credit_account_id.get().to_le_bytes());
    bytes[32..40].copy_from_slice(&transfer.amount.get().to_le_bytes());
    bytes[40..44].copy_from_slice(&transfer.ledger.get().to_le_bytes());
    bytes[44..46].copy_from_slice(&transfer.code.get().to_le_bytes());
    bytes[46..48].copy_from_slice(&transfer.flags.get().to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes[..48])
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::new()
    }
}

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
            undo: Vec::with_capacity(CHAIN_MAX),
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

    /// Number of accounts.
    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// Number of applied transfers remembered.
    pub fn transfer_count(&self) -> usize {
        self.transfers.len()
    }

    /// Whether a transfer with `id` was applied.
    pub fn has_transfer(&self, id: u128) -> bool {
        self.transfers.get(id).is_some()
    }

    /// Bytes the two tables have allocated.
    pub fn memory_bytes(&self) -> usize {
        self.accounts.allocation_size() + self.transfers.memory_bytes()
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
        if command.ledger.get() == 0 {
            return ResultCode::LedgerMustNotBeZero;
        }
        if command.code.get() == 0 {
            return ResultCode::CodeMustNotBeZero;
        }
        if let Some(existing) = self.accounts.get(&key(id)) {
            let same = existing.ledger == command.ledger.get()
                && existing.code == command.code.get()
                && existing.flags == flags;
            return if same { ResultCode::Exists } else { ResultCode::ExistsWithDifferentFields };
        }
        let account = Account {
            debits_posted: 0,
            credits_posted: 0,
            timestamp_ns,
            ledger: command.ledger.get(),
            code: command.code.get(),
            flags,
        };
        self.accounts.insert(key(id), account);
        ResultCode::Ok
    }

    /// Decides one transfer on its own (not part of a linked chain).
    pub fn transfer(&mut self, command: &Transfer) -> ResultCode {
        match self.try_transfer(command) {
            Ok(Some(_)) => ResultCode::Ok,
            Ok(None) => ResultCode::Exists,
            Err(code) => code,
        }
    }

    /// Decides a linked chain all-or-nothing: either every transfer applies (`Ok`,
    /// or `Exists` for ones applied before), or none does, the first failure gets its
    /// own code and every other member `LinkedEventFailed`. `results` receives one
    /// code per transfer. The chain's last transfer must not carry the linked flag;
    /// if it does, the chain never closed and every member gets `LinkedChainOpen`.
    pub fn transfer_chain(&mut self, chain: &[Transfer], results: &mut [ResultCode]) {
        assert_eq!(chain.len(), results.len());
        assert!(!chain.is_empty());
        let open = chain.last().is_some_and(Transfer::is_linked);
        let inner_unlinked = chain[..chain.len() - 1].iter().any(|t| !t.is_linked());
        if open || inner_unlinked || chain.len() > CHAIN_MAX {
            results.fill(ResultCode::LinkedChainOpen);
            return;
        }
        let mut undo = std::mem::take(&mut self.undo);
        undo.clear();
        for (index, transfer) in chain.iter().enumerate() {
            match self.try_transfer(transfer) {
                Ok(Some(applied)) => {
                    undo.push(applied);
                    results[index] = ResultCode::Ok;
                }
                Ok(None) => results[index] = ResultCode::Exists,
                Err(code) => {
                    for applied in undo.iter().rev() {
                        self.undo(applied);
                    }
                    results.fill(ResultCode::LinkedEventFailed);
                    results[index] = code;
                    self.undo = undo;
                    return;
                }
            }
        }
        self.undo = undo;
    }

    /// Applies a transfer or says why not. `Ok(None)` means it already exists with
    /// the same fields (idempotent success, nothing changed).
    fn try_transfer(&mut self, command: &Transfer) -> Result<Option<Applied>, ResultCode> {
        let flags = command.flags.get();
        if flags & !transfer_flags::ALL != 0 {
            return Err(ResultCode::ReservedFlag);
        }
        let id = command.id.get();
        if id == 0 {
            return Err(ResultCode::IdMustNotBeZero);
        }
        let debit_id = command.debit_account_id.get();
        let credit_id = command.credit_account_id.get();
        if debit_id == credit_id {
            return Err(ResultCode::AccountsMustBeDifferent);
        }
        let amount = command.amount.get();
        if amount == 0 {
            return Err(ResultCode::AmountMustBePositive);
        }
        let ledger = command.ledger.get();
        if ledger == 0 {
            return Err(ResultCode::LedgerMustNotBeZero);
        }
        if command.code.get() == 0 {
            return Err(ResultCode::CodeMustNotBeZero);
        }
        let print = fingerprint(command);
        // One probe of the (large, cache-cold) transfer table serves both the
        // idempotency check and the insert.
        self.transfers.reserve_one();
        let vacant = match self.transfers.find(id) {
            Probe::Found(slot) => {
                let existing = self.transfers.value_at(slot);
                return if existing == print { Ok(None) } else { Err(ResultCode::ExistsWithDifferentFields) };
            }
            Probe::Vacant(slot) => slot,
        };
        self.post(debit_id, credit_id, ledger, amount)?;
        self.transfers.insert_at(vacant, id, print);
        Ok(Some(Applied { id, debit: debit_id, credit: credit_id, amount }))
    }

    /// Reverses a transfer applied earlier in the same chain.
    fn undo(&mut self, applied: &Applied) {
        let debit = self.accounts.get_mut(&key(applied.debit)).expect("undo of an applied transfer");
        debit.debits_posted -= applied.amount;
        let credit = self.accounts.get_mut(&key(applied.credit)).expect("undo of an applied transfer");
        credit.credits_posted -= applied.amount;
        let removed = self.transfers.remove(applied.id);
        assert!(removed.is_some());
    }

    /// Posts a transfer the log says was applied, without remembering its id: for
    /// consumers, which follow a sequenced, CRC-checked log and never decide, so the
    /// idempotency index (the costliest part of deciding) is not theirs to keep. The
    /// balance rules are still checked: a log that breaks them is refused.
    pub fn post_transfer(&mut self, command: &Transfer) -> Result<(), ResultCode> {
        let (debit, credit) = (command.debit_account_id.get(), command.credit_account_id.get());
        self.post_between(debit, credit, command.ledger.get(), command.amount.get())
    }

    /// [`post_transfer`](Self::post_transfer) from the fields themselves, for a
    /// follower applying an event (no command to build).
    pub fn post_between(
        &mut self,
        debit_id: u128,
        credit_id: u128,
        ledger: u32,
        amount: u64,
    ) -> Result<(), ResultCode> {
        if debit_id == credit_id {
            return Err(ResultCode::AccountsMustBeDifferent);
        }
        self.post(debit_id, credit_id, ledger, amount)
    }

    /// The balance rules of a transfer between two distinct accounts, and the posting
    /// if they hold: both exist, share the ledger, no total overflows, and a
    /// no-overdraft debit account does not go negative. Nothing changes on error.
    fn post(&mut self, debit_id: u128, credit_id: u128, ledger: u32, amount: u64) -> Result<(), ResultCode> {
        debug_assert_ne!(debit_id, credit_id);
        // Distinct ids, so both can be borrowed mutably at once.
        let [debit, credit] = self.accounts.get_disjoint_mut([&key(debit_id), &key(credit_id)]);
        let Some(debit) = debit else { return Err(ResultCode::DebitAccountNotFound) };
        let Some(credit) = credit else { return Err(ResultCode::CreditAccountNotFound) };
        if debit.ledger != ledger || credit.ledger != ledger {
            return Err(ResultCode::LedgerMismatch);
        }
        let Some(debits) = debit.debits_posted.checked_add(amount) else { return Err(ResultCode::Overflow) };
        let Some(credits) = credit.credits_posted.checked_add(amount) else {
            return Err(ResultCode::Overflow);
        };
        if !debit.allows_negative() && debits > debit.credits_posted {
            return Err(ResultCode::InsufficientFunds);
        }
        debit.debits_posted = debits;
        credit.credits_posted = credits;
        Ok(())
    }

    /// Replays an applied transfer from the log (recovery, consumers): the same
    /// checks as deciding, because a log that does not apply is a bug or corruption.
    pub fn replay_transfer(&mut self, command: &Transfer) -> Result<(), ResultCode> {
        match self.try_transfer(command) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(ResultCode::Exists),
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
        }
        let mut transfers: Vec<(u128, u64)> = self.transfers.iter().collect();
        transfers.sort_unstable();
        for (id, print) in transfers {
            hasher.update(&id.to_le_bytes());
            hasher.update(&print.to_le_bytes());
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
