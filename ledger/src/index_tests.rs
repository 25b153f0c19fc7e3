//! The transfer-id index: probing, growth while in use, removal, prefetch.
use super::*;
use std::collections::HashMap;

#[test]
fn behaves_like_a_map_under_inserts_and_removes() {
    behaves_like_a_map(usize::MAX);
}

#[test]
fn behaves_like_a_map_while_growing_gradually() {
    behaves_like_a_map(0);
}

fn behaves_like_a_map(gradual_from: usize) {
    let mut index = IdIndex::with_capacity(4);
    index.gradual_from = gradual_from;
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
        let probe = u128::from(state.rotate_left(29) % 3_000) + 1 + (u128::from(state % 3) << 64);
        assert_eq!(index.get(probe), model.get(&probe).copied(), "step {step}");
        if step % 5_000 == 0 {
            let mut listed: Vec<(u128, u64)> = index.iter().collect();
            listed.sort_unstable();
            let mut expected: Vec<(u128, u64)> = model.iter().map(|(k, v)| (*k, *v)).collect();
            expected.sort_unstable();
            assert_eq!(listed, expected, "step {step}");
        }
    }
    for (id, value) in &model {
        assert_eq!(index.get(*id), Some(*value));
    }
    assert_eq!(index.iter().count(), model.len());
}

/// Growing moves ids over later inserts; meanwhile every id stays findable,
/// removable (as a linked chain's undo does) and insertable again.
#[test]
fn growing_moves_ids_gradually_without_losing_any() {
    let mut index = IdIndex::with_capacity(1_000);
    index.gradual_from = 0;
    let slots = index.slots.len();
    let mut next = 1u128;
    while index.old.is_none() {
        index.insert(next, next as u64 * 10);
        next += 1;
    }
    assert_eq!(index.slots.len(), slots * 2, "grew by doubling");
    let old = index.old.as_ref().unwrap();
    assert!(old.migrated < old.slots.len(), "the move is spread over later inserts");
    // A chain of ids inserted before the growth is undone while they are unmoved.
    let chain: Vec<u128> = (1..next).rev().take(5).collect();
    for &id in &chain {
        assert_eq!(index.remove(id), Some(id as u64 * 10));
        assert_eq!(index.get(id), None);
    }
    // One comes back with another value.
    index.insert(chain[0], 7);
    while index.old.is_some() {
        index.insert(next, next as u64 * 10);
        next += 1;
    }
    for id in 1..next {
        let expected = if id == chain[0] {
            Some(7)
        } else if chain.contains(&id) {
            None
        } else {
            Some(id as u64 * 10)
        };
        assert_eq!(index.get(id), expected, "id {id}");
    }
    assert_eq!(index.len(), (next - 1) as usize - chain.len() + 1);
    assert_eq!(index.iter().count(), index.len());
}

/// Past a million slots the next table is faulted in on a helper thread; growing
/// into it keeps every id.
#[test]
fn large_tables_grow_into_a_prepared_table() {
    let mut index = IdIndex::with_capacity(PREPARE_MIN_SLOTS * 7 / 8 - 1);
    assert_eq!(index.slots.len(), PREPARE_MIN_SLOTS);
    let count = PREPARE_MIN_SLOTS as u128; // past 7/8: one growth
    let mut prepared = false;
    for id in 1..=count {
        index.insert(id, id as u64);
        prepared |= index.next.is_some();
    }
    assert!(prepared, "the next table was prepared ahead");
    assert_eq!(index.slots.len(), PREPARE_MIN_SLOTS * 2);
    assert_eq!(index.len(), count as usize);
    for id in (1..=count).step_by(97) {
        assert_eq!(index.get(id), Some(id as u64));
    }
    assert_eq!(index.get(count + 1), None);
}
