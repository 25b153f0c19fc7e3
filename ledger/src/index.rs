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
#[derive(Debug, Clone)]
pub struct IdIndex {
    slots: Slots,
    len: usize,
    mask: usize,
    seed: u64,
}

#[inline]
fn mix(a: u64, b: u64) -> u64 {
    let product = u128::from(a).wrapping_mul(u128::from(b));
    (product as u64) ^ ((product >> 64) as u64)
}

impl IdIndex {
    /// An index with room for `capacity` ids before it grows.
    pub fn with_capacity(capacity: usize) -> IdIndex {
        let wanted = capacity.saturating_mul(LOAD_DENOMINATOR) / LOAD_NUMERATOR + 1;
        let slots_len = wanted.next_power_of_two().max(MIN_SLOTS);
        let slots = Slots::zeroed(slots_len);
        let seed = {
            // Any varying value will do: the seed only spreads ids; outputs never depend on it.
            let stack = &slots_len as *const usize as u64;
            let time = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            mix(stack ^ 0x9E37_79B9_7F4A_7C15, time | 1)
        };
        IdIndex { slots, len: 0, mask: slots_len - 1, seed }
    }

    /// Ids stored.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes allocated.
    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * core::mem::size_of::<Slot>()
    }

    #[inline]
    fn home(&self, lo: u64, hi: u64) -> usize {
        (mix(lo ^ self.seed, hi ^ 0xA076_1D64_78BD_642F) as usize) & self.mask
    }

    /// Hints the CPU to fetch the slot `id` hashes to; a later `find` then hits cache.
    #[inline]
    pub fn prefetch(&self, id: u128) {
        let index = self.home(id as u64, (id >> 64) as u64);
        let slot = &self.slots[index] as *const Slot;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: prefetching is a hint; the pointer is in bounds of `slots`.
        unsafe {
            core::arch::x86_64::_mm_prefetch(slot.cast::<i8>(), core::arch::x86_64::_MM_HINT_T0);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = slot;
    }

    /// Looks `id` up (id must not be 0).
    #[inline]
    pub fn find(&self, id: u128) -> Probe {
        debug_assert!(id != 0);
        let (lo, hi) = (id as u64, (id >> 64) as u64);
        let mut index = self.home(lo, hi);
        loop {
            let slot = &self.slots[index];
            if slot.lo == lo && slot.hi == hi {
                return Probe::Found(index);
            }
            if slot.lo == 0 && slot.hi == 0 {
                return Probe::Vacant(index);
            }
            index = (index + 1) & self.mask;
        }
    }

    /// The value stored for `id`.
    #[inline]
    pub fn get(&self, id: u128) -> Option<u64> {
        match self.find(id) {
            Probe::Found(index) => Some(self.slots[index].value),
            Probe::Vacant(_) => None,
        }
    }

    /// The value at a slot `find` returned as `Found`.
    #[inline]
    pub fn value_at(&self, index: usize) -> u64 {
        self.slots[index].value
    }

    /// Makes room for one more id; call before `find` when you may insert after it,
    /// since growing moves every slot.
    #[inline]
    pub fn reserve_one(&mut self) {
        if (self.len + 1) * LOAD_DENOMINATOR > self.slots.len() * LOAD_NUMERATOR {
            self.grow();
        }
    }

    /// Stores `id` at the slot `find` returned as `Vacant` (no insert in between).
    #[inline]
    pub fn insert_at(&mut self, index: usize, id: u128, value: u64) {
        assert!(id != 0, "id 0 marks empty slots");
        let slot = &mut self.slots[index];
        assert!(slot.lo == 0 && slot.hi == 0, "insert_at needs a vacant slot");
        *slot = Slot { lo: id as u64, hi: (id >> 64) as u64, value };
        self.len += 1;
        assert!(self.len < self.slots.len());
    }

    /// Stores or replaces `id`.
    pub fn insert(&mut self, id: u128, value: u64) {
        self.reserve_one();
        match self.find(id) {
            Probe::Found(index) => self.slots[index].value = value,
            Probe::Vacant(index) => self.insert_at(index, id, value),
        }
    }

    /// Removes `id`, shifting later entries of its probe run back so that lookups
    /// never stop early at the hole (backward-shift deletion).
    pub fn remove(&mut self, id: u128) -> Option<u64> {
        let Probe::Found(mut hole) = self.find(id) else { return None };
        let value = self.slots[hole].value;
        let mut next = (hole + 1) & self.mask;
        loop {
            let slot = self.slots[next];
            if slot.lo == 0 && slot.hi == 0 {
                break;
            }
            let home = self.home(slot.lo, slot.hi);
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
        self.len -= 1;
        Some(value)
    }

    fn grow(&mut self) {
        let mut bigger = IdIndex::with_capacity((self.slots.len() * 2) * LOAD_NUMERATOR / LOAD_DENOMINATOR);
        bigger.seed = self.seed;
        for slot in self.slots.iter().filter(|s| s.lo != 0 || s.hi != 0) {
            let id = u128::from(slot.lo) | (u128::from(slot.hi) << 64);
            match bigger.find(id) {
                Probe::Vacant(index) => bigger.insert_at(index, id, slot.value),
                Probe::Found(_) => unreachable!("ids are unique"),
            }
        }
        *self = bigger;
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
        self.slots
            .iter()
            .filter(|s| s.lo != 0 || s.hi != 0)
            .map(|s| (u128::from(s.lo) | (u128::from(s.hi) << 64), s.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn behaves_like_a_map_under_inserts_and_removes() {
        let mut index = IdIndex::with_capacity(4);
        let mut model = HashMap::new();
        let mut state = 12345u64;
        for step in 0..50_000u64 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Small id space so that collisions, re-inserts and removals are frequent.
            let id = u128::from(state % 3_000) + 1 + (u128::from(state % 3) << 64);
            if state % 4 == 0 {
                assert_eq!(index.remove(id), model.remove(&id), "step {step}");
            } else {
                index.insert(id, step);
                model.insert(id, step);
            }
            assert_eq!(index.len(), model.len());
        }
        for (id, value) in &model {
            assert_eq!(index.get(*id), Some(*value));
        }
        assert_eq!(index.iter().count(), model.len());
    }
}
