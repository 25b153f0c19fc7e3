//! A load mix with two-phase transfers: a share of the commands a generator sends
//! become pending transfers, and later posts or voids of them, so benchmarks measure
//! the cost of reservations next to plain transfers.

use std::collections::VecDeque;

use ledgerbus_codec::messages::Transfer;
use ledgerbus_codec::transfer_flags;

/// Pending transfers a mix keeps open before it resolves the oldest: far enough back
/// that the pending transfer has been decided when its post or void is sent, even
/// with many requests in flight.
const OPEN: usize = 64;

/// Turns a stream of plain transfers into one where `percent` of the commands are
/// two-phase: a pending transfer, or the post or void (alternately) of the oldest
/// pending transfer still open. Deterministic for a given stream of random words.
#[derive(Debug, Clone)]
pub struct TwoPhaseMix {
    percent: u64,
    open: VecDeque<u128>,
    post_next: bool,
}

impl TwoPhaseMix {
    /// A mix with `percent` (0 to 100) two-phase commands.
    pub fn new(percent: u32) -> TwoPhaseMix {
        TwoPhaseMix {
            percent: u64::from(percent.min(100)),
            open: VecDeque::with_capacity(OPEN),
            post_next: true,
        }
    }

    /// The command to send instead of `plain`, chosen with `random`.
    pub fn shape(&mut self, plain: Transfer, random: u64) -> Transfer {
        if self.percent == 0 || random % 100 >= self.percent {
            return plain;
        }
        if self.open.len() < OPEN {
            self.open.push_back(plain.id.get());
            return Transfer { flags: (plain.flags.get() | transfer_flags::PENDING).into(), ..plain };
        }
        let pending_id = self.open.pop_front().expect("open is full");
        let flag = if self.post_next { transfer_flags::POST_PENDING } else { transfer_flags::VOID_PENDING };
        self.post_next = !self.post_next;
        // Accounts, amount, ledger and code come from the pending transfer.
        Transfer {
            correlation_id: plain.correlation_id,
            id: plain.id,
            flags: flag.into(),
            pending_id: pending_id.into(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_of_commands_reserve_and_each_reservation_is_resolved_once_later() {
        let mut mix = TwoPhaseMix::new(30);
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut pending = std::collections::HashSet::new();
        let (mut two_phase, total) = (0, 100_000);
        for id in 1..=total {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let plain = Transfer { id: u128::from(id).into(), amount: 5.into(), ..Default::default() };
            let shaped = mix.shape(plain, state);
            let flags = shaped.flags.get();
            if flags & transfer_flags::PENDING != 0 {
                assert!(pending.insert(id), "a pending id once");
            }
            if flags & (transfer_flags::POST_PENDING | transfer_flags::VOID_PENDING) != 0 {
                let resolved = shaped.pending_id.get() as u64;
                assert!(pending.remove(&resolved), "resolves an open pending transfer, once");
            }
            if flags != 0 {
                two_phase += 1;
            }
        }
        let share = f64::from(two_phase) / total as f64;
        assert!((0.28..0.32).contains(&share), "{share}");
        assert_eq!(TwoPhaseMix::new(0).shape(Transfer::default(), 0), Transfer::default());
    }
}
