//! Where a group of commands ends: one account, or a linked chain of transfers (each
//! linked to the next but the last), decided all or nothing. The sequencer's intake
//! and the gateway's TCP API both split bytes into groups with [`next_group`], so
//! they always agree on where a chain ends.

use crate::frame::Frame;
use crate::header::MessageHeader;
use crate::DecodeError;

/// Longest linked chain the sequencer decides as a chain; a longer one is cut there
/// and decided open (every member `LinkedChainOpen`).
pub const CHAIN_MAX: usize = 1024;

/// How the group of commands at the start of some bytes ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// A whole group (an account, or a chain ending with an unlinked transfer).
    Whole {
        /// Its bytes.
        size: usize,
        /// Its commands.
        commands: usize,
    },
    /// A chain cut before its end, by a frame that is not a transfer or by the
    /// member limit: decided as it is, an open chain (every member refused).
    Cut {
        /// Its bytes.
        size: usize,
        /// Its commands.
        commands: usize,
    },
    /// The bytes end inside the group: wait for more. `size` bytes of `commands`
    /// whole members came before the end.
    Partial {
        /// Bytes of the whole members so far.
        size: usize,
        /// Whole members so far.
        commands: usize,
    },
    /// The first frame is not a command (a lookup, or anything else): the caller
    /// says what that means.
    NotACommand {
        /// Its template id.
        template: u16,
    },
    /// The bytes are not a frame of this schema.
    Malformed(DecodeError),
}

/// The group at the start of `bytes`, a chain holding at most `members_max`
/// transfers; calls `each` with every command of it, decoded once, in order.
pub fn next_group<'a>(bytes: &'a [u8], members_max: usize, mut each: impl FnMut(&Frame<'a>)) -> Group {
    let mut size = 0;
    let mut commands = 0;
    loop {
        match Frame::decode(&bytes[size..]) {
            Ok((frame @ Frame::CreateAccount(_), frame_size)) if commands == 0 => {
                each(&frame);
                return Group::Whole { size: frame_size, commands: 1 };
            }
            Ok((frame @ Frame::Transfer(transfer), frame_size)) => {
                each(&frame);
                size += frame_size;
                commands += 1;
                if !transfer.is_linked() {
                    return Group::Whole { size, commands };
                }
                if commands >= members_max {
                    return Group::Cut { size, commands };
                }
            }
            // The bytes end inside a frame.
            Err(DecodeError::Truncated { .. }) if MessageHeader::frame_size(&bytes[size..]).is_err() => {
                return Group::Partial { size, commands };
            }
            Ok((frame, _)) if commands == 0 => return Group::NotACommand { template: frame.template_id() },
            Err(error) if commands == 0 => return Group::Malformed(error),
            // Anything else after a linked transfer cuts the chain there.
            _ => return Group::Cut { size, commands },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{CreateAccount, Transfer, Welcome};
    use crate::{encode, transfer_flags, Message};

    fn frame<M: Message>(message: &M) -> Vec<u8> {
        let mut bytes = vec![0u8; M::FRAME_SIZE];
        encode(message, &mut bytes).unwrap();
        bytes
    }

    fn transfer(id: u128, linked: bool) -> Vec<u8> {
        frame(&Transfer {
            correlation_id: 0.into(),
            id: id.into(),
            debit_account_id: 1u128.into(),
            credit_account_id: 2u128.into(),
            amount: 1.into(),
            ledger: 1.into(),
            code: 1.into(),
            flags: if linked { transfer_flags::LINKED } else { 0 }.into(),
            ..Default::default()
        })
    }

    fn account(id: u128) -> Vec<u8> {
        frame(&CreateAccount {
            correlation_id: 0.into(),
            id: id.into(),
            ledger: 1.into(),
            code: 1.into(),
            flags: 0.into(),
            ..Default::default()
        })
    }

    fn group(bytes: &[u8], max: usize) -> (Group, usize) {
        let mut seen = 0;
        let group = next_group(bytes, max, |_| seen += 1);
        (group, seen)
    }

    #[test]
    fn groups_end_where_chains_end() {
        let t = Transfer::FRAME_SIZE;
        assert_eq!(group(&account(1), 8).0, Group::Whole { size: CreateAccount::FRAME_SIZE, commands: 1 });
        let chain = [transfer(1, true), transfer(2, true), transfer(3, false), transfer(4, false)].concat();
        assert_eq!(group(&chain, 8), (Group::Whole { size: 3 * t, commands: 3 }, 3));
        assert_eq!(group(&chain[..2 * t + 5], 8).0, Group::Partial { size: 2 * t, commands: 2 }, "bytes end");
        let cut = [transfer(1, true), account(9)].concat();
        assert_eq!(group(&cut, 8).0, Group::Cut { size: t, commands: 1 }, "cut by another message");
        let long: Vec<u8> = (0..5).flat_map(|n| transfer(n, true)).collect();
        assert_eq!(group(&long, 3).0, Group::Cut { size: 3 * t, commands: 3 }, "cut at the member limit");
        let welcome = frame(&Welcome { session_id: 1.into(), next_sequence: 1.into() });
        assert_eq!(group(&welcome, 8).0, Group::NotACommand { template: Welcome::TEMPLATE_ID });
        assert!(matches!(group(&[0xff; 16], 8).0, Group::Malformed(_)));
        assert_eq!(group(&[], 8).0, Group::Partial { size: 0, commands: 0 });
    }
}
