//! One gateway connection's intake, sans-IO: the bytes the socket delivered go in,
//! decided commands (into the batch) and bytes to send come out. No socket and no
//! clock inside; the hot loop reads and writes for it, and tests drive it byte by
//! byte (docs/architecture.md, "Design rules").
//!
//! What lives here:
//! - the handshake: a challenge goes out first; until a valid HMAC answer arrives
//!   (before the deadline) nothing else is read, and a wrong answer closes;
//! - framing: only whole frames are decided; a frame cut by the end of the bytes
//!   waits for the rest;
//! - chains: a linked chain is decided whole. One cut by another message or longer
//!   than [`CHAIN_MAX`] is decided as it is (every member answers `LinkedChainOpen`);
//!   one cut by the end of the bytes waits, unless the buffer is half full, because
//!   a chain that cannot fit would otherwise wait forever (the buffer rule);
//! - the window: no more commands are decided than the batch and the transport's
//!   flow-control window have room for; the rest stays buffered;
//! - back-pressure: while the replies queued for the gateway exceed
//!   [`OUTBOUND_LIMIT`], no more bytes are taken in, so a gateway that does not read
//!   its answers stops being served instead of growing our memory.

use std::time::Instant;

use ledgerbus_codec::messages::{Challenge, NotLeader, Transfer, Welcome};
use ledgerbus_codec::{
    encode, next_group, DecodeError, Frame, Group, Message, MessageHeader, MESSAGE_HEADER_SIZE,
};
use ledgerbus_ledger::ledger::CHAIN_MAX;
use ledgerbus_protocol::auth;

use crate::core::{PendingBatch, SequencerCore};

/// Bytes of unread commands held per connection.
pub const INBOUND_SIZE: usize = 1 << 20;
/// Replies queued per connection beyond which its commands are not read.
pub const OUTBOUND_LIMIT: usize = 4 << 20;
/// How far ahead of the command being decided the transfer index is prefetched:
/// about eight transfer frames.
const PREFETCH_BYTES: usize = 8 * 80;
/// Where a Transfer frame's id ends (header, correlation id, id).
const TRANSFER_ID_END: usize = MESSAGE_HEADER_SIZE + 8 + 16;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntakeState {
    /// Challenge sent; waiting for the answer until the deadline.
    Authenticating {
        /// The challenge's nonce.
        nonce: [u8; 32],
        /// When an unanswered challenge closes the connection.
        deadline: Instant,
    },
    /// Authenticated: commands are decided.
    Ready {
        /// The gateway's id, for logs.
        gateway_id: u32,
    },
}

/// What the handshake step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Still authenticating (or already authenticated): nothing to do.
    Waiting,
    /// The gateway proved it knows the secret; the Welcome is queued.
    Accepted {
        /// The gateway's id.
        gateway_id: u32,
    },
    /// The gateway proved it knows the secret, but this group member does not lead:
    /// a NotLeader naming the leader is queued; send it and close.
    NotLeader {
        /// The gateway's id.
        gateway_id: u32,
    },
    /// A wrong or malformed answer, or none in time: close the connection.
    Refused,
}

/// Whether this sequencer takes commands (a single sequencer always does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// It decides.
    Here,
    /// Another group member leads (`leader` 0: none known yet, in `term`).
    Elsewhere {
        /// The leader's replica id, or 0.
        leader: u32,
        /// This member's term.
        term: u64,
    },
}

/// Why a connection is closed for what it sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A well-formed frame that is not a command.
    #[error("unexpected message template {0}")]
    UnexpectedTemplate(u16),
    /// Bytes that are not a frame of this schema.
    #[error(transparent)]
    Malformed(#[from] DecodeError),
}

/// One connection's buffers and handshake state.
#[derive(Debug)]
pub struct Intake {
    state: IntakeState,
    inbound: Box<[u8]>,
    inbound_len: usize,
    outbound: Vec<u8>,
    outbound_sent: usize,
}

impl Intake {
    /// A new connection: the challenge for `nonce` is queued to be sent, and an
    /// answer is due by `deadline`.
    pub fn new(nonce: [u8; 32], deadline: Instant) -> Intake {
        let mut intake = Intake {
            state: IntakeState::Authenticating { nonce, deadline },
            inbound: vec![0; INBOUND_SIZE].into_boxed_slice(),
            inbound_len: 0,
            outbound: Vec::with_capacity(64 << 10),
            outbound_sent: 0,
        };
        let mut challenge = [0u8; Challenge::FRAME_SIZE];
        encode(&Challenge { nonce }, &mut challenge).expect("sized");
        intake.queue(&challenge);
        intake
    }

    /// Where the connection is.
    pub fn state(&self) -> IntakeState {
        self.state
    }

    /// The free part of the inbound buffer, for the driver to read into (empty
    /// while back-pressured: read nothing then).
    pub fn receive_buffer(&mut self) -> &mut [u8] {
        if self.backpressured() {
            return &mut [];
        }
        &mut self.inbound[self.inbound_len..]
    }

    /// `n` bytes were read into [`receive_buffer`](Self::receive_buffer).
    pub fn received(&mut self, n: usize) {
        assert!(self.inbound_len + n <= self.inbound.len(), "received more than the buffer holds");
        self.inbound_len += n;
    }

    /// Bytes received and not decided yet.
    pub fn buffered(&self) -> usize {
        self.inbound_len
    }

    /// Queues bytes to send (a reply frame).
    pub fn queue(&mut self, bytes: &[u8]) {
        self.outbound.extend_from_slice(bytes);
    }

    /// Bytes queued and not sent yet.
    pub fn unsent(&self) -> &[u8] {
        &self.outbound[self.outbound_sent..]
    }

    /// `n` bytes of [`unsent`](Self::unsent) were written.
    pub fn sent(&mut self, n: usize) {
        assert!(n <= self.unsent().len(), "sent more than was queued");
        self.outbound_sent += n;
        if self.outbound_sent == self.outbound.len() {
            self.outbound.clear();
            self.outbound_sent = 0;
        }
    }

    /// Whether so many replies wait to be sent that no more commands are taken in.
    pub fn backpressured(&self) -> bool {
        self.unsent().len() > OUTBOUND_LIMIT
    }

    /// While authenticating: checks the answer, if it has arrived, against `secret`.
    /// On success the Welcome (the log's `session` and `next_sequence`) is queued, or,
    /// when `leads` says another member leads, a NotLeader naming it.
    pub fn authenticate(
        &mut self,
        secret: &[u8],
        now: Instant,
        session: u64,
        next_sequence: u64,
        leads: Leadership,
    ) -> Handshake {
        let IntakeState::Authenticating { nonce, deadline } = self.state else { return Handshake::Waiting };
        let answer = match Frame::decode(&self.inbound[..self.inbound_len]) {
            Err(DecodeError::Truncated { .. }) if now < deadline => return Handshake::Waiting,
            Ok((Frame::Authenticate(answer), size)) => Some((answer.to_block(), size)),
            _ => None,
        };
        match answer {
            Some((answer, size)) if auth::verify(secret, &nonce, &answer.mac) => {
                let gateway_id = answer.gateway_id.get();
                self.state = IntakeState::Ready { gateway_id };
                self.consume(size);
                if let Leadership::Elsewhere { leader, term } = leads {
                    let refusal =
                        NotLeader { leader_replica_id: leader.into(), reserved: [0; 4], term: term.into() };
                    let mut bytes = [0u8; NotLeader::FRAME_SIZE];
                    encode(&refusal, &mut bytes).expect("sized");
                    self.queue(&bytes);
                    return Handshake::NotLeader { gateway_id };
                }
                let welcome = Welcome { session_id: session.into(), next_sequence: next_sequence.into() };
                let mut bytes = [0u8; Welcome::FRAME_SIZE];
                encode(&welcome, &mut bytes).expect("sized");
                self.queue(&bytes);
                Handshake::Accepted { gateway_id }
            }
            _ => Handshake::Refused,
        }
    }

    /// Decides the whole commands buffered, in order, while `batch` holds fewer than
    /// `window` events; what cannot be decided yet stays buffered. `connection` is
    /// the id replies are addressed to; `chain` is scratch space. Does nothing
    /// before the handshake. An error means the connection must close (what was
    /// decided before it stays decided).
    pub fn decide(
        &mut self,
        connection: u32,
        core: &mut SequencerCore,
        chain: &mut Vec<Transfer>,
        now_ns: u64,
        window: usize,
        batch: &mut PendingBatch,
    ) -> Result<(), ProtocolError> {
        if !matches!(self.state, IntakeState::Ready { .. }) {
            return Ok(());
        }
        let len = self.inbound_len;
        let mut consumed = 0;
        let mut prefetched = 0;
        let outcome = loop {
            if batch.len() >= window {
                break Ok(());
            }
            // Prefetch the transfer-index slots of the next few commands, so that
            // their cache misses overlap with deciding this one.
            prefetched = prefetched.max(consumed);
            while prefetched < len && prefetched < consumed + PREFETCH_BYTES {
                // A hint only: the id straight from the bytes, no decode (a version 1
                // frame read through a version 2 view is a copy).
                let rest = &self.inbound[prefetched..len];
                let Ok(size) = MessageHeader::frame_size(rest) else { break };
                if rest[2..4] == Transfer::TEMPLATE_ID.to_le_bytes() && size >= TRANSFER_ID_END {
                    let mut id = [0u8; 16];
                    id.copy_from_slice(&rest[TRANSFER_ID_END - 16..TRANSFER_ID_END]);
                    core.prefetch_transfer(u128::from_le_bytes(id));
                }
                prefetched += size;
            }
            let rest = &self.inbound[consumed..len];
            if rest.is_empty() {
                break Ok(());
            }
            chain.clear();
            let mut account = None;
            let group = next_group(rest, CHAIN_MAX + 1, |frame| match frame {
                Frame::Transfer(transfer) => chain.push(transfer.to_block()),
                Frame::CreateAccount(command) => account = Some(command.to_block()),
                _ => {}
            });
            let size = match group {
                Group::Whole { size, .. } | Group::Cut { size, .. } => size,
                // A chain that could never fit the buffer is decided open now (the
                // buffer rule); anything else waits for the rest of its bytes.
                Group::Partial { size, commands } if commands > 0 && rest.len() >= INBOUND_SIZE / 2 => size,
                Group::Partial { .. } => break Ok(()),
                Group::NotACommand { template } => break Err(ProtocolError::UnexpectedTemplate(template)),
                Group::Malformed(error) => break Err(ProtocolError::Malformed(error)),
            };
            match account {
                Some(command) => core.decide_account(connection, &command, now_ns, batch),
                None => core.decide_transfers(connection, chain, now_ns, batch),
            }
            consumed += size;
        };
        self.consume(consumed);
        outcome
    }

    fn consume(&mut self, size: usize) {
        self.inbound.copy_within(size..self.inbound_len, 0);
        self.inbound_len -= size;
    }
}

#[cfg(test)]
#[path = "intake_tests.rs"]
mod tests;
