//! The transfer-id index: an open-addressing hash table of 24-byte slots (id as two
//! words, and a 64-bit value) with linear probing, built for the two things the
//! ledger needs from it at millions of ids: few cache misses per lookup, and the
//! ability to prefetch the slot of an id that will be looked up soon, which a
//! general-purpose map cannot offer. Replay and batch deciding prefetch a few
//! commands ahead, so the memory latency of a random probe overlaps with work.
//!
//! Id 0 is never stored (the ledger rejects it first), so an all-zero slot is empty.
//! The hash is keyed with a per-table random seed, so client-chosen ids cannot be
//! crafted to collide; iteration order never reaches an output (snapshots sort).

use core::alloc::Layout;
use core::ptr::NonNull;

use allocator_api2::alloc::Allocator;

use crate::huge::HugePages;

/// A fixed array of zero-initialised slots from [`HugePages`]; zeroed by the kernel
/// on first touch rather than written up front.
#[derive(Debug)]
struct Slots {
    ptr: NonNull<Slot>,
    len: usize,
}

// SAFETY: Slots owns its allocation exclusively, like a Box<[Slot]>.
unsafe impl Send for Slots {}
// SAFETY: shared access is read-only through &self.
unsafe impl Sync for Slots {}

impl Slots {
    fn zeroed(len: usize) -> Slots {
        let layout = Layout::array::<Slot>(len).expect("slot array fits in memory");
        let block =
            HugePages.allocate_zeroed(layout).unwrap_or_else(|_| std::alloc::handle_alloc_error(layout));
        Slots { ptr: block.cast::<Slot>(), len }
    }

    /// Has the kernel back (and zero) every page now, on the calling thread, instead
    /// of at a first touch on the hot path. Contents do not change, so this is safe
    /// while the table is in use. Returns false where the kernel cannot do it
    /// (before Linux 5.14, or a table small enough to live in the heap).
    fn populate(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            // In 4 MiB steps: the kernel holds the process's memory-map lock for one
            // call, and a thread of the same process that maps or unmaps memory
            // meanwhile (a growing buffer) would wait for all of it.
            const STEP: usize = 4 << 20;
            let bytes = self.len * core::mem::size_of::<Slot>();
            let base = self.ptr.as_ptr().cast::<u8>();
            (0..bytes).step_by(STEP).all(|offset| {
                // SAFETY: a range inside our allocation; MADV_POPULATE_WRITE only
                // faults pages in, it never changes data.
                unsafe {
                    libc::madvise(
                        base.add(offset).cast(),
                        STEP.min(bytes - offset),
                        libc::MADV_POPULATE_WRITE,
                    ) == 0
                }
            })
        }
        #[cfg(not(target_os = "linux"))]
        false
    }

    /// [`populate`](Self::populate), or writing a zero byte per page where that is
    /// not available; needs exclusive access for the fallback.
    fn fault_in(&mut self) {
        if self.populate() {
            return;
        }
        let bytes = self.len * core::mem::size_of::<Slot>();
        let base = self.ptr.as_ptr().cast::<u8>();
        for offset in (0..bytes).step_by(4096) {
            // SAFETY: in bounds of our allocation; writing 0 over zeroed memory keeps
            // every slot empty; `&mut self` means nobody else touches it.
            unsafe { base.add(offset).write_volatile(0) };
        }
    }

    fn layout(&self) -> Layout {
        Layout::array::<Slot>(self.len).expect("layout was valid at allocation")
    }
}

impl core::ops::Deref for Slots {
    type Target = [Slot];
    fn deref(&self) -> &[Slot] {
        // SAFETY: `len` zero-initialised slots (all-zero is a valid Slot) live at `ptr`.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl core::ops::DerefMut for Slots {
    fn deref_mut(&mut self) -> &mut [Slot] {
        // SAFETY: as in deref, and `&mut self` guarantees exclusive access.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Clone for Slots {
    fn clone(&self) -> Slots {
        let mut copy = Slots::zeroed(self.len);
        copy.copy_from_slice(self);
        copy
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // SAFETY: allocated by HugePages with this layout in `zeroed`.
        unsafe { HugePages.deallocate(self.ptr.cast::<u8>(), self.layout()) };
    }
}

/// One slot: the id's two words and its value. Empty when both words are zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
struct Slot {
    lo: u64,
    hi: u64,
    value: u64,
}

const _: () = assert!(core::mem::size_of::<Slot>() == 24);

/// Grow when more than 7/8 of the slots are used.
const LOAD_NUMERATOR: usize = 7;
const LOAD_DENOMINATOR: usize = 8;
const MIN_SLOTS: usize = 16;

/// Where `find` stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The id is at this slot.
    Found(usize),
    /// The id is absent; this empty slot is where it would go.
    Vacant(usize),
}

/// An id → u64 map; see the module docs.
#[derive(Debug)]
pub struct IdIndex {
    slots: Slots,
    /// Ids in `slots` (not counting those still in `old`).
    used: usize,
    mask: usize,
    seed: u64,
    /// While growing: the previous table, moved over a few slots per insert.
    old: Option<Old>,
    /// The next, twice larger table, being faulted in on a helper thread.
    next: Option<Prepared>,
    /// Growing to this many slots or more moves ids gradually ([`GRADUAL_MIN_SLOTS`];
    /// tests lower it).
    gradual_from: usize,
}

impl Clone for IdIndex {
    fn clone(&self) -> IdIndex {
        // A table being prepared is not part of the contents.
        IdIndex {
            slots: self.slots.clone(),
            used: self.used,
            mask: self.mask,
            seed: self.seed,
            old: self.old.clone(),
            next: None,
            gradual_from: self.gradual_from,
        }
    }
}

/// A table faulted in ahead of need. Even with the move spread over inserts, the
/// new table's pages are touched at random and so nearly all at once, and a VM can
/// take most of a second to back and zero a few hundred megabytes: that is done on
/// a helper thread while the current table fills from half to 7/8.
#[derive(Debug)]
struct Prepared(std::thread::JoinHandle<Slots>);

/// Tables growing to at least this many slots move gradually; smaller ones at once.
const GRADUAL_MIN_SLOTS: usize = 1 << 19;

/// Tables at least this large are prepared ahead; smaller ones fault in quickly.
const PREPARE_MIN_SLOTS: usize = 1 << 20;

/// The table being emptied into a larger one. Growing all at once would stop the
/// caller for as long as it takes to rehash every id and to have the kernel zero
/// the new table's pages (seconds at tens of millions of ids in a VM), so the move
/// is spread over the inserts that follow: [`IdIndex::reserve_one`] moves
/// [`MIGRATE_STEP`] old slots each time, which empties the old table long before
/// the new one can fill up.
///
/// The old table is never reordered: slots below `migrated` have been copied (a
/// lookup ignores them, the copy is authoritative), slots from `migrated` on are
/// still live unless their id is in `removed`.
#[derive(Debug, Clone)]
struct Old {
    slots: Slots,
    mask: usize,
    migrated: usize,
    /// Live ids of the old table's unmoved part.
    live: usize,
    /// Ids removed while still in the unmoved part. Removals only undo a linked
    /// chain decided while the table grew, so this holds at most one chain's ids.
    removed: Vec<u128>,
}

/// Old slots moved per insert while growing. The new table has twice the slots, so
/// it grows again only after 7/8 × old-size more inserts; moving 4 per insert
/// finishes after 1/4 × old-size inserts.
const MIGRATE_STEP: usize = 4;

/// Removals from the unmoved part tolerated before the move is finished at once (the
/// ledger removes at most one chain's ids, `CHAIN_MAX`, in that window).
const REMOVED_MAX: usize = 1024;

/// Where a `Found` index points when the id is still in the old table: past the end
/// of the new one.
#[inline]
fn old_index(new_len: usize, index: usize) -> usize {
    new_len + index
}

#[inline]
fn mix(a: u64, b: u64) -> u64 {
    let product = u128::from(a).wrapping_mul(u128::from(b));
    (product as u64) ^ ((product >> 64) as u64)
}

#[inline]
fn split(id: u128) -> (u64, u64) {
    (id as u64, (id >> 64) as u64)
}

#[inline]
fn join(slot: &Slot) -> u128 {
    u128::from(slot.lo) | (u128::from(slot.hi) << 64)
}

#[inline]
fn is_empty_slot(slot: &Slot) -> bool {
    slot.lo == 0 && slot.hi == 0
}

#[inline]
fn home(seed: u64, mask: usize, lo: u64, hi: u64) -> usize {
    (mix(lo ^ seed, hi ^ 0xA076_1D64_78BD_642F) as usize) & mask
}

/// Linear probe of one table.
#[inline]
fn probe(slots: &[Slot], mask: usize, seed: u64, lo: u64, hi: u64) -> Probe {
    let mut index = home(seed, mask, lo, hi);
    loop {
        let slot = &slots[index];
        if slot.lo == lo && slot.hi == hi {
            return Probe::Found(index);
        }
        if is_empty_slot(slot) {
            return Probe::Vacant(index);
        }
        index = (index + 1) & mask;
    }
}

#[inline]
fn prefetch_slot(slot: *const Slot) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint; callers pass a pointer into a live slot array.
    unsafe {
        core::arch::x86_64::_mm_prefetch(slot.cast::<i8>(), core::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = slot;
}

impl IdIndex {
    /// An index with room for `capacity` ids before it grows.
    pub fn with_capacity(capacity: usize) -> IdIndex {
        let wanted = capacity.saturating_mul(LOAD_DENOMINATOR) / LOAD_NUMERATOR + 1;
        let slots_len = wanted.next_power_of_two().max(MIN_SLOTS);
        let slots = Slots::zeroed(slots_len);
        // A per-table random seed (std's per-process hash keys, no clock): it only
        // spreads ids over slots, and nothing the ledger outputs depends on it.
        let seed = {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(slots_len) | 1
        };
        IdIndex {
            slots,
            used: 0,
            mask: slots_len - 1,
            seed,
            old: None,
            next: None,
            gradual_from: GRADUAL_MIN_SLOTS,
        }
    }

    /// Has the kernel back the whole table now, so that inserts up to the capacity
    /// never wait for a page to be zeroed (best effort; a no-op where unsupported).
    pub fn populate(&self) {
        self.slots.populate();
    }

    /// Ids the table holds before it grows.
    pub fn capacity(&self) -> usize {
        self.slots.len() * LOAD_NUMERATOR / LOAD_DENOMINATOR
    }

    /// Ids stored.
    #[inline]
    pub fn len(&self) -> usize {
        self.used + self.old.as_ref().map_or(0, |old| old.live)
    }

    /// Whether empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes allocated.
    pub fn memory_bytes(&self) -> usize {
        let old = self.old.as_ref().map_or(0, |old| old.slots.len());
        (self.slots.len() + old) * core::mem::size_of::<Slot>()
    }

    /// Hints the CPU to fetch the slot `id` hashes to; a later `find` then hits cache.
    #[inline]
    pub fn prefetch(&self, id: u128) {
        let (lo, hi) = split(id);
        prefetch_slot(&self.slots[home(self.seed, self.mask, lo, hi)]);
        if let Some(old) = &self.old {
            prefetch_slot(&old.slots[home(self.seed, old.mask, lo, hi)]);
        }
    }

    /// Looks `id` up (id must not be 0).
    #[inline(always)]
    pub fn find(&self, id: u128) -> Probe {
        debug_assert!(id != 0);
        let (lo, hi) = split(id);
        match probe(&self.slots, self.mask, self.seed, lo, hi) {
            Probe::Vacant(vacant) if self.old.is_some() => self.find_in_old(id, vacant),
            probe => probe,
        }
    }

    /// The rest of `find` while growing: an id not in the new table may still be
    /// in the old one's unmoved part.
    #[cold]
    #[inline(never)]
    fn find_in_old(&self, id: u128, vacant: usize) -> Probe {
        let old = self.old.as_ref().expect("growing");
        let (lo, hi) = split(id);
        if let Probe::Found(index) = probe(&old.slots, old.mask, self.seed, lo, hi) {
            // Below `migrated` the copy in the new table decides (and it is absent).
            if index >= old.migrated && !old.removed.contains(&id) {
                return Probe::Found(old_index(self.slots.len(), index));
            }
        }
        Probe::Vacant(vacant)
    }

    /// The value stored for `id`.
    #[inline]
    pub fn get(&self, id: u128) -> Option<u64> {
        match self.find(id) {
            Probe::Found(index) => Some(self.value_at(index)),
            Probe::Vacant(_) => None,
        }
    }

    /// The value at a slot `find` returned as `Found`.
    #[inline]
    pub fn value_at(&self, index: usize) -> u64 {
        match index.checked_sub(self.slots.len()) {
            None => self.slots[index].value,
            Some(old) => self.old.as_ref().expect("an old-table index while growing").slots[old].value,
        }
    }

    /// Makes room for one more id; call before `find` when you may insert after it,
    /// since this moves slots.
    #[inline(always)]
    pub fn reserve_one(&mut self) {
        // One comparison on the common path: past half of the load limit, the
        // rarer work (moving, preparing, growing) is checked out of line.
        if (self.used + 1) * 2 * LOAD_DENOMINATOR > self.slots.len() * LOAD_NUMERATOR || self.old.is_some() {
            self.reserve_one_slow();
        }
    }

    #[inline(never)]
    fn reserve_one_slow(&mut self) {
        if self.old.is_some() {
            self.migrate(MIGRATE_STEP);
        }
        if (self.used + 1) * LOAD_DENOMINATOR > self.slots.len() * LOAD_NUMERATOR {
            self.grow();
        } else if self.next.is_none()
            && self.slots.len() >= PREPARE_MIN_SLOTS
            && self.used * 2 * LOAD_DENOMINATOR > self.slots.len() * LOAD_NUMERATOR
        {
            self.prepare_next();
        }
    }

    /// Starts faulting in the next table on a helper thread.
    #[cold]
    fn prepare_next(&mut self) {
        let len = self.slots.len() * 2;
        let spawned = std::thread::Builder::new().name("index-prepare".into()).spawn(move || {
            let mut slots = Slots::zeroed(len);
            slots.fault_in();
            slots
        });
        // Without a thread the table is made when needed, as small ones are.
        self.next = spawned.ok().map(Prepared);
    }

    /// Stores `id` at the slot `find` returned as `Vacant` (no insert in between).
    #[inline]
    pub fn insert_at(&mut self, index: usize, id: u128, value: u64) {
        assert!(id != 0, "id 0 marks empty slots");
        let slot = &mut self.slots[index];
        assert!(is_empty_slot(slot), "insert_at needs a vacant slot");
        let (lo, hi) = split(id);
        *slot = Slot { lo, hi, value };
        self.used += 1;
        assert!(self.used < self.slots.len());
    }

    /// Stores or replaces `id`.
    pub fn insert(&mut self, id: u128, value: u64) {
        self.reserve_one();
        match self.find(id) {
            Probe::Found(index) => match index.checked_sub(self.slots.len()) {
                None => self.slots[index].value = value,
                Some(old) => self.old.as_mut().expect("growing").slots[old].value = value,
            },
            Probe::Vacant(index) => self.insert_at(index, id, value),
        }
    }

    /// Removes `id`, shifting later entries of its probe run back so that lookups
    /// never stop early at the hole (backward-shift deletion).
    pub fn remove(&mut self, id: u128) -> Option<u64> {
        let Probe::Found(mut hole) = self.find(id) else { return None };
        if let Some(old_slot) = hole.checked_sub(self.slots.len()) {
            let old = self.old.as_mut().expect("growing");
            old.removed.push(id);
            old.live -= 1;
            let value = old.slots[old_slot].value;
            if old.removed.len() > REMOVED_MAX {
                // Lookups scan `removed`; keep it short by finishing the move.
                self.migrate(usize::MAX);
            }
            return Some(value);
        }
        let value = self.slots[hole].value;
        let mut next = (hole + 1) & self.mask;
        loop {
            let slot = self.slots[next];
            if is_empty_slot(&slot) {
                break;
            }
            let home = home(self.seed, self.mask, slot.lo, slot.hi);
            // Move `next` into the hole unless its home lies cyclically in (hole, next].
            let distance_to_next = next.wrapping_sub(home) & self.mask;
            let distance_to_hole = hole.wrapping_sub(home) & self.mask;
            if distance_to_hole < distance_to_next {
                self.slots[hole] = slot;
                hole = next;
            }
            next = (next + 1) & self.mask;
        }
        self.slots[hole] = Slot::default();
        self.used -= 1;
        Some(value)
    }

    /// Starts moving into a table twice the size (finishing any earlier move first,
    /// which the step rate makes unnecessary in practice).
    fn grow(&mut self) {
        if let Some(old) = &self.old {
            self.migrate(old.slots.len());
        }
        let len = self.slots.len() * 2;
        // A table still being prepared is left to finish (and be freed) on its own:
        // waiting for it would be the pause this avoids.
        let bigger = match self.next.take() {
            Some(prepared) if prepared.0.is_finished() => match prepared.0.join() {
                Ok(slots) if slots.len == len => slots,
                _ => Slots::zeroed(len),
            },
            _ => Slots::zeroed(len),
        };
        let mask = bigger.len() - 1;
        let slots = std::mem::replace(&mut self.slots, bigger);
        let old_mask = std::mem::replace(&mut self.mask, mask);
        let live = std::mem::replace(&mut self.used, 0);
        self.old = Some(Old { slots, mask: old_mask, migrated: 0, live, removed: Vec::new() });
        if len < self.gradual_from {
            // Small enough to move at once (a few milliseconds at most), which spares
            // every lookup until then a second probe in the old table.
            self.migrate(usize::MAX);
        }
    }

    /// Moves up to `count` old slots into the new table.
    fn migrate(&mut self, count: usize) {
        let Some(mut old) = self.old.take() else { return };
        let end = old.migrated.saturating_add(count).min(old.slots.len());
        for index in old.migrated..end {
            let slot = old.slots[index];
            if is_empty_slot(&slot) || (!old.removed.is_empty() && old.removed.contains(&join(&slot))) {
                continue;
            }
            // Never in the new table too: an id found in the old one is updated there.
            match probe(&self.slots, self.mask, self.seed, slot.lo, slot.hi) {
                Probe::Vacant(at) => self.slots[at] = slot,
                Probe::Found(_) => unreachable!("an id lives in one table"),
            }
            self.used += 1;
            old.live -= 1;
        }
        old.migrated = end;
        if end < old.slots.len() {
            self.old = Some(old);
        } else {
            debug_assert_eq!(old.live, 0, "every live old id moved");
        }
    }

    /// Inserts ids that must be new, prefetching a few ahead (recovery). Returns the
    /// first id that was already present, which a well-formed log never has.
    pub fn insert_new_batch(&mut self, entries: &[(u128, u64)]) -> Result<(), u128> {
        const AHEAD: usize = 8;
        for (index, &(id, value)) in entries.iter().enumerate() {
            if let Some(&(ahead, _)) = entries.get(index + AHEAD) {
                self.prefetch(ahead);
            }
            self.reserve_one();
            match self.find(id) {
                Probe::Vacant(slot) => self.insert_at(slot, id, value),
                Probe::Found(_) => return Err(id),
            }
        }
        Ok(())
    }

    /// Every (id, value), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u128, u64)> + '_ {
        let old = self.old.iter().flat_map(|old| {
            old.slots[old.migrated..]
                .iter()
                .filter(|s| !is_empty_slot(s) && !old.removed.contains(&join(s)))
                .map(|s| (join(s), s.value))
        });
        self.slots.iter().filter(|s| !is_empty_slot(s)).map(|s| (join(s), s.value)).chain(old)
    }
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
