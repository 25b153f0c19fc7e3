//! A member that starts with an empty disk: a new group, or a member whose disk was
//! lost. Raft assumes a member never forgets what it acknowledged or whom it voted
//! for, so a member that lost its disk and voted at once could elect a leader that
//! lacks entries committed with its help. Until it is safe, an empty member neither
//! votes nor campaigns (it is *quarantined*); it asks every peer how far its log goes
//! (a probe, answered with the peer's last index and commit index) and leaves
//! quarantine when
//! - enough peers answered that any majority includes one of them
//!   (`members - majority + 1`), and
//! - either all of those are empty too (the group is new: nothing was ever
//!   committed), or this member has caught up to the furthest of their logs (its
//!   commit index reached their last index), so it holds every entry it could have
//!   acknowledged before.
//!
//! Leaders also learn that a follower lost entries they count it as holding (it
//! answers a heartbeat whose commit index is beyond its log with a *log lost*
//! notice), and replicate to it again from where its log ends.
//!
//! These are raft-rs messages marked in their `context`; they never reach raft-rs.

use std::collections::HashMap;

use raft::eraftpb::{Message, MessageType};

/// A probe: "how far does your log go?"
const PROBE: &[u8] = b"ledgerbus:probe";
/// The answer: `index` = last index, `commit` = commit index.
const PROBE_ANSWER: &[u8] = b"ledgerbus:probe-answer";
/// "My log ends at `reject_hint`, before the commit index you sent."
const LOG_LOST: &[u8] = b"ledgerbus:log-lost";

/// A message of this module, recognised by its context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// A peer asks how far this member's log goes.
    Probe,
    /// A peer's answer to a probe.
    ProbeAnswer {
        /// Its last index.
        last: u64,
        /// Its commit index.
        commit: u64,
    },
    /// A follower lost entries beyond `last`.
    LogLost {
        /// Where its log ends.
        last: u64,
    },
}

impl Notice {
    /// The notice `message` carries, if it is one.
    pub fn of(message: &Message) -> Option<Notice> {
        if message.msg_type != MessageType::MsgHeartbeatResponse {
            return None;
        }
        match &message.context[..] {
            PROBE => Some(Notice::Probe),
            PROBE_ANSWER => Some(Notice::ProbeAnswer { last: message.index, commit: message.commit }),
            LOG_LOST => Some(Notice::LogLost { last: message.reject_hint }),
            _ => None,
        }
    }

    /// The message carrying it from `from` to `to`.
    pub fn message(self, from: u64, to: u64) -> Message {
        let mut message =
            Message { msg_type: MessageType::MsgHeartbeatResponse, from, to, ..Default::default() };
        let context = match self {
            Notice::Probe => PROBE,
            Notice::ProbeAnswer { last, commit } => {
                message.index = last;
                message.commit = commit;
                PROBE_ANSWER
            }
            Notice::LogLost { last } => {
                message.reject_hint = last;
                LOG_LOST
            }
        };
        message.context = context.to_vec().into();
        message
    }
}

/// The quarantine of an empty member.
#[derive(Debug, Default)]
pub struct Quarantine {
    /// The latest answer of each peer: (last index, commit index).
    answers: HashMap<u64, (u64, u64)>,
}

impl Quarantine {
    /// Records a peer's answer.
    pub fn answered(&mut self, peer: u64, last: u64, commit: u64) {
        self.answers.insert(peer, (last, commit));
    }

    /// Whether the member may vote again, holding entries up to `commit` and with
    /// `members` in the group.
    pub fn may_leave(&self, members: usize, commit: u64) -> bool {
        let majority = members / 2 + 1;
        let needed = members - majority + 1;
        if self.answers.len() < needed {
            return false;
        }
        let furthest = self.answers.values().map(|(last, _)| *last).max().unwrap_or(0);
        furthest == 0 || commit >= furthest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_group_leaves_quarantine_once_enough_peers_are_empty_too() {
        let mut quarantine = Quarantine::default();
        quarantine.answered(2, 0, 0);
        assert!(!quarantine.may_leave(3, 0), "one of two peers could miss the majority that committed");
        quarantine.answered(3, 0, 0);
        assert!(quarantine.may_leave(3, 0));
    }

    #[test]
    fn a_wiped_member_waits_until_it_holds_what_its_peers_hold() {
        let mut quarantine = Quarantine::default();
        quarantine.answered(2, 40, 38);
        quarantine.answered(3, 0, 0);
        assert!(!quarantine.may_leave(3, 0));
        assert!(!quarantine.may_leave(3, 39));
        assert!(quarantine.may_leave(3, 40));
        // Five members: three of the four peers must answer.
        let mut five = Quarantine::default();
        five.answered(2, 0, 0);
        five.answered(3, 0, 0);
        assert!(!five.may_leave(5, 0));
        five.answered(4, 0, 0);
        assert!(five.may_leave(5, 0));
    }

    #[test]
    fn notices_round_trip_and_ordinary_messages_are_not_notices() {
        for notice in [Notice::Probe, Notice::ProbeAnswer { last: 7, commit: 5 }, Notice::LogLost { last: 3 }]
        {
            let message = notice.message(1, 2);
            assert_eq!(Notice::of(&message), Some(notice));
            assert_eq!((message.from, message.to), (1, 2));
        }
        let ordinary = Message { msg_type: MessageType::MsgHeartbeatResponse, ..Default::default() };
        assert_eq!(Notice::of(&ordinary), None);
    }
}
