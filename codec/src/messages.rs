//! Every ledgerbus message as a zero-copy block. Layouts mirror `schema/ledgerbus.xml`
//! field for field; `tests/schema_drift.rs` keeps the two identical.

use zerocopy::little_endian::{U16, U32, U64};

use crate::types::{Id128, ResultCode};
use crate::{DecodeError, Message};

/// Implements [`Message`] for a block declared with `sbe_block!`.
macro_rules! message {
    ($name:ident, template $id:literal) => {
        impl Message for $name {
            const TEMPLATE_ID: u16 = $id;
            const BLOCK_LENGTH: u16 = <$name as $crate::Block>::SIZE as u16;
        }
        const _: () = assert!(<$name as $crate::Block>::SIZE <= $crate::BLOCK_LENGTH_MAX as usize);
    };
    ($name:ident, template $id:literal, version 1 block $min:literal) => {
        impl Message for $name {
            const TEMPLATE_ID: u16 = $id;
            const BLOCK_LENGTH: u16 = <$name as $crate::Block>::SIZE as u16;
            const MIN_BLOCK_LENGTH: u16 = $min;
        }
        const _: () = assert!(<$name as $crate::Block>::SIZE <= $crate::BLOCK_LENGTH_MAX as usize);
        const _: () = assert!($min < <$name as $crate::Block>::SIZE);
    };
}

/// Adds a checked `result()` reader to blocks with a `result: U16` field.
macro_rules! result_reader {
    ($($name:ident),*) => {$(
        impl $name {
            /// The decided result; an unknown value is an error, not a panic.
            #[inline]
            pub fn result(&self) -> Result<ResultCode, DecodeError> {
                ResultCode::from_wire(self.result.get())
            }
        }
    )*};
}

crate::sbe_block! {
    /// Command: open an account.
    pub struct CreateAccount: size 64 {
        /// Chosen by the sender, echoed in the result.
        [0] correlation_id: U64,
        /// Client-chosen, non-zero account id.
        [8] id: Id128,
        /// Ledger (currency) code.
        [24] ledger: U32,
        /// Account kind.
        [28] code: U16,
        /// `account_flags` bits.
        [30] flags: U16,
        /// Opaque reference (since version 2), e.g. the customer it belongs to.
        [32] user_data_128: Id128,
        /// Opaque reference (since version 2).
        [48] user_data_64: U64,
        /// Opaque reference (since version 2).
        [56] user_data_32: U32,
        /// Zero.
        [60] reserved: [u8; 4],
    }
}
message!(CreateAccount, template 1, version 1 block 32);

crate::sbe_block! {
    /// Command: move `amount` from the debit to the credit account.
    pub struct Transfer: size 120 {
        /// Chosen by the sender, echoed in the result.
        [0] correlation_id: U64,
        /// Idempotency key.
        [8] id: Id128,
        /// Account whose debits grow.
        [24] debit_account_id: Id128,
        /// Account whose credits grow.
        [40] credit_account_id: Id128,
        /// Integer minor units.
        [56] amount: U64,
        /// Ledger (currency) code; must match both accounts.
        [64] ledger: U32,
        /// Transfer kind.
        [68] code: U16,
        /// `transfer_flags` bits.
        [70] flags: U16,
        /// The pending transfer a post or void resolves (since version 2); else zero.
        [72] pending_id: Id128,
        /// Opaque reference (since version 2), e.g. an invoice or an authorisation.
        [88] user_data_128: Id128,
        /// Opaque reference (since version 2).
        [104] user_data_64: U64,
        /// Opaque reference (since version 2).
        [112] user_data_32: U32,
        /// Seconds a pending transfer may wait before it expires; 0: never (since
        /// version 2).
        [116] timeout: U32,
    }
}
message!(Transfer, template 2, version 1 block 72);

crate::sbe_block! {
    /// Reply to a CreateAccount.
    pub struct CreateAccountResult: size 48 {
        /// Echo of the command's correlation id.
        [0] correlation_id: U64,
        /// The account id.
        [8] id: Id128,
        /// Sequence of the event; 0 when rejected before sequencing (busy).
        [24] sequence: U64,
        /// Sequencer timestamp.
        [32] timestamp_ns: U64,
        /// [`ResultCode`].
        [40] result: U16,
        /// Zero.
        [42] reserved: [u8; 6],
    }
}
message!(CreateAccountResult, template 3);

crate::sbe_block! {
    /// Reply to a Transfer.
    pub struct TransferResult: size 48 {
        /// Echo of the command's correlation id.
        [0] correlation_id: U64,
        /// The transfer id.
        [8] id: Id128,
        /// Sequence of the event; 0 when rejected before sequencing (busy).
        [24] sequence: U64,
        /// Sequencer timestamp.
        [32] timestamp_ns: U64,
        /// [`ResultCode`].
        [40] result: U16,
        /// Zero.
        [42] reserved: [u8; 6],
    }
}
message!(TransferResult, template 4);

crate::sbe_block! {
    /// Sequenced event: a decided CreateAccount.
    pub struct AccountEvent: size 80 {
        /// Gap-free position in the log, from 1.
        [0] sequence: U64,
        /// Stamped by the sequencer.
        [8] timestamp_ns: U64,
        /// The account id.
        [16] id: Id128,
        /// Ledger (currency) code.
        [32] ledger: U32,
        /// Account kind.
        [36] code: U16,
        /// `account_flags` bits.
        [38] flags: U16,
        /// [`ResultCode`].
        [40] result: U16,
        /// Zero.
        [42] reserved: [u8; 6],
        /// Opaque reference (since version 2).
        [48] user_data_128: Id128,
        /// Opaque reference (since version 2).
        [64] user_data_64: U64,
        /// Opaque reference (since version 2).
        [72] user_data_32: U32,
        /// Zero.
        [76] reserved2: [u8; 4],
    }
}
message!(AccountEvent, template 5, version 1 block 48);

crate::sbe_block! {
    /// Sequenced event: a decided Transfer.
    pub struct TransferEvent: size 136 {
        /// Gap-free position in the log, from 1.
        [0] sequence: U64,
        /// Stamped by the sequencer.
        [8] timestamp_ns: U64,
        /// The transfer id.
        [16] id: Id128,
        /// Account whose debits grow.
        [32] debit_account_id: Id128,
        /// Account whose credits grow.
        [48] credit_account_id: Id128,
        /// Integer minor units.
        [64] amount: U64,
        /// Ledger (currency) code.
        [72] ledger: U32,
        /// Transfer kind.
        [76] code: U16,
        /// `transfer_flags` bits.
        [78] flags: U16,
        /// [`ResultCode`].
        [80] result: U16,
        /// Zero.
        [82] reserved: [u8; 6],
        /// The pending transfer a post or void resolved (since version 2).
        [88] pending_id: Id128,
        /// Opaque reference (since version 2).
        [104] user_data_128: Id128,
        /// Opaque reference (since version 2).
        [120] user_data_64: U64,
        /// Opaque reference (since version 2).
        [128] user_data_32: U32,
        /// Seconds a pending transfer may wait (since version 2).
        [132] timeout: U32,
    }
}
message!(TransferEvent, template 6, version 1 block 88);

crate::sbe_block! {
    /// Control: the sender is alive; lets receivers detect loss at the tail.
    pub struct Heartbeat: size 16 {
        /// The sequence the sender will use next.
        [0] next_sequence: U64,
        /// Oldest sequence the sender can still retransmit.
        [8] oldest_retained_sequence: U64,
    }
}
message!(Heartbeat, template 10);

crate::sbe_block! {
    /// Control: a receiver asks for `count` events from `from_sequence`.
    /// Stream and session are in the packet header.
    pub struct Nak: size 16 {
        /// First missing sequence.
        [0] from_sequence: U64,
        /// Number of missing sequences.
        [8] count: U32,
        /// Who asks.
        [12] receiver_id: U32,
    }
}
message!(Nak, template 11);

crate::sbe_block! {
    /// Control: a receiver's position, so the sender knows each consumer's lag.
    pub struct StatusMessage: size 16 {
        /// Who reports.
        [0] receiver_id: U32,
        /// How many events past its position the receiver can buffer.
        [4] window_events: U32,
        /// Every event up to this sequence has been delivered.
        [8] highest_contiguous_sequence: U64,
    }
}
message!(StatusMessage, template 12);

crate::sbe_block! {
    /// Control: the NAKed range has left the sender's ring; use bulk replay.
    pub struct NakUnavailable: size 24 {
        /// First sequence of the NAK.
        [0] from_sequence: U64,
        /// Count of the NAK.
        [8] count: U32,
        /// Zero.
        [12] reserved: [u8; 4],
        /// Oldest sequence the sender still holds.
        [16] oldest_retained_sequence: U64,
    }
}
message!(NakUnavailable, template 13);

crate::sbe_block! {
    /// Bulk replay request over TCP.
    pub struct ReplayRequest: size 24 {
        /// Session to replay; 0 means whichever session the sequencer has.
        [0] session_id: U64,
        /// First sequence wanted.
        [8] from_sequence: U64,
        /// Last sequence wanted, inclusive; 0 means up to the live head.
        [16] to_sequence: U64,
    }
}
message!(ReplayRequest, template 14);

crate::sbe_block! {
    /// Ends a bulk replay stream.
    pub struct ReplayEnd: size 16 {
        /// Session replayed.
        [0] session_id: U64,
        /// One past the last event sent.
        [8] next_sequence: U64,
    }
}
message!(ReplayEnd, template 15);

crate::sbe_block! {
    /// Handshake, sequencer to gateway: prove you know the secret.
    pub struct Challenge: size 32 {
        /// Fresh random bytes.
        [0] nonce: [u8; 32],
    }
}
message!(Challenge, template 20);

crate::sbe_block! {
    /// Handshake, gateway to sequencer.
    pub struct Authenticate: size 40 {
        /// The gateway's id (for logs and metrics).
        [0] gateway_id: U32,
        /// Zero.
        [4] reserved: [u8; 4],
        /// HMAC-SHA256(secret, nonce).
        [8] mac: [u8; 32],
    }
}
message!(Authenticate, template 21);

crate::sbe_block! {
    /// Handshake accepted.
    pub struct Welcome: size 16 {
        /// The sequencer's session.
        [0] session_id: U64,
        /// The sequence the next event will get.
        [8] next_sequence: U64,
    }
}
message!(Welcome, template 22);

crate::sbe_block! {
    /// Client handshake on the gateway's TCP port.
    pub struct ClientHello: size 64 {
        /// The API key, UTF-8, zero-padded.
        [0] api_key: [u8; 64],
    }
}
message!(ClientHello, template 23);

crate::sbe_block! {
    /// Read on the gateway's TCP port: an account, answered by an [`AccountRecord`].
    pub struct LookupAccount: size 24 {
        /// Chosen by the sender, echoed in the record.
        [0] correlation_id: U64,
        /// The account.
        [8] id: Id128,
    }
}
message!(LookupAccount, template 24);

crate::sbe_block! {
    /// Read on the gateway's TCP port: how a transfer id was decided, answered by a
    /// [`TransferRecord`].
    pub struct LookupTransfer: size 24 {
        /// Chosen by the sender, echoed in the record.
        [0] correlation_id: U64,
        /// The transfer.
        [8] id: Id128,
    }
}
message!(LookupTransfer, template 25);

crate::sbe_block! {
    /// An account as the read model holds it; `ledger` 0 when there is no such
    /// account; `result` busy when the read model could not answer (ask again).
    pub struct AccountRecord: size 120 {
        /// The lookup's correlation id.
        [0] correlation_id: U64,
        /// The account.
        [8] id: Id128,
        /// Sum of debits, minor units.
        [24] debits_posted: U64,
        /// Sum of credits, minor units.
        [32] credits_posted: U64,
        /// When it was created.
        [40] timestamp_ns: U64,
        /// The event that created it.
        [48] sequence: U64,
        /// Ledger (currency) code; 0: not found.
        [56] ledger: U32,
        /// Account kind.
        [60] code: U16,
        /// `account_flags` bits.
        [62] flags: U16,
        /// [`ResultCode`]: ok, or busy.
        [64] result: U16,
        /// Zero.
        [66] reserved: [u8; 6],
        /// Sum of pending (reserved) debits (since version 2).
        [72] debits_pending: U64,
        /// Sum of pending (reserved) credits (since version 2).
        [80] credits_pending: U64,
        /// Opaque reference (since version 2).
        [88] user_data_128: Id128,
        /// Opaque reference (since version 2).
        [104] user_data_64: U64,
        /// Opaque reference (since version 2).
        [112] user_data_32: U32,
        /// Zero.
        [116] reserved2: [u8; 4],
    }
}
message!(AccountRecord, template 26, version 1 block 72);
result_reader!(AccountRecord);

crate::sbe_block! {
    /// How a transfer id was decided: the applied transfer (`result` ok), or its last
    /// refusal; `sequence` 0 when it was never decided; `result` busy and `sequence` 0
    /// when the read model could not answer (ask again).
    pub struct TransferRecord: size 152 {
        /// The lookup's correlation id.
        [0] correlation_id: U64,
        /// The transfer.
        [8] id: Id128,
        /// Debited account.
        [24] debit_account_id: Id128,
        /// Credited account.
        [40] credit_account_id: Id128,
        /// Minor units.
        [56] amount: U64,
        /// When it was decided.
        [64] timestamp_ns: U64,
        /// The event that decided it; 0: never decided.
        [72] sequence: U64,
        /// Ledger code.
        [80] ledger: U32,
        /// Transfer kind.
        [84] code: U16,
        /// `transfer_flags` bits.
        [86] flags: U16,
        /// [`ResultCode`].
        [88] result: U16,
        /// Zero.
        [90] reserved: [u8; 6],
        /// The pending transfer it posted or voided (since version 2).
        [96] pending_id: Id128,
        /// Opaque reference (since version 2).
        [112] user_data_128: Id128,
        /// Opaque reference (since version 2).
        [128] user_data_64: U64,
        /// Opaque reference (since version 2).
        [136] user_data_32: U32,
        /// A pending transfer's timeout, seconds (since version 2).
        [140] timeout: U32,
        /// A pending transfer's state (since version 2): 0 not pending, 1 pending,
        /// 2 posted, 3 voided, 4 expired.
        [144] pending_state: U16,
        /// Zero.
        [146] reserved2: [u8; 6],
    }
}
message!(TransferRecord, template 27, version 1 block 96);
result_reader!(TransferRecord);

crate::sbe_block! {
    /// Read on the gateway's TCP port: a page of an account's applied transfers, in
    /// sequence order, answered by up to `limit` [`TransferRecord`]s and a
    /// [`HistoryEnd`].
    pub struct LookupHistory: size 40 {
        /// Chosen by the sender, echoed in every answer frame.
        [0] correlation_id: U64,
        /// The account.
        [8] account_id: Id128,
        /// 0 for the first page, else the previous page's `next_after`.
        [24] after_sequence: U64,
        /// Transfers at most (1 to 1000).
        [32] limit: U32,
        /// Zero.
        [36] reserved: [u8; 4],
    }
}
message!(LookupHistory, template 28);

crate::sbe_block! {
    /// Ends a page answering [`LookupHistory`].
    pub struct HistoryEnd: size 32 {
        /// The lookup's correlation id.
        [0] correlation_id: U64,
        /// `after_sequence` of the next page; 0 when this page was the last.
        [8] next_after: U64,
        /// [`TransferRecord`]s before this frame.
        [16] count: U32,
        /// [`ResultCode`]: ok; busy (the read model could not answer);
        /// debit_account_not_found (no such account).
        [20] result: U16,
        /// Zero.
        [22] reserved: [u8; 6],
        /// Zero.
        [28] reserved2: [u8; 4],
    }
}
message!(HistoryEnd, template 29);
result_reader!(HistoryEnd);

crate::sbe_block! {
    /// Handshake answer of a sequencer group member that does not lead: the gateway
    /// authenticated, but must send its commands to the leader.
    pub struct NotLeader: size 16 {
        /// The leader's replica id (1-based, the position in the group's member
        /// list); 0 when this member knows of no leader (an election is running).
        [0] leader_replica_id: U32,
        /// Zero.
        [4] reserved: [u8; 4],
        /// The Raft term this member is in.
        [8] term: U64,
    }
}
message!(NotLeader, template 30);

crate::sbe_block! {
    /// Sequenced event (since version 2): a pending transfer reached its timeout and
    /// the sequencer released its reservation. Decided from the log's own time
    /// stamps, so every replica releases the same reservation at the same place.
    pub struct PendingExpired: size 88 {
        /// Gap-free position in the log, from 1.
        [0] sequence: U64,
        /// Stamped by the sequencer (at or after the pending transfer's deadline).
        [8] timestamp_ns: U64,
        /// The pending transfer that expired.
        [16] pending_id: Id128,
        /// Its debit account.
        [32] debit_account_id: Id128,
        /// Its credit account.
        [48] credit_account_id: Id128,
        /// The amount released.
        [64] amount: U64,
        /// Its ledger.
        [72] ledger: U32,
        /// Its code.
        [76] code: U16,
        /// Its `transfer_flags`.
        [78] flags: U16,
        /// Zero.
        [80] reserved: [u8; 8],
    }
}
message!(PendingExpired, template 31);

result_reader!(CreateAccountResult, TransferResult, AccountEvent, TransferEvent);

impl CreateAccountResult {
    /// The answer to `command`: its correlation id and account id, and the decision
    /// (sequence and timestamp 0 when it was decided at the edge, like `busy`).
    pub fn answering(command: &CreateAccount, sequence: u64, timestamp_ns: u64, result: ResultCode) -> Self {
        CreateAccountResult {
            correlation_id: command.correlation_id,
            id: command.id,
            sequence: sequence.into(),
            timestamp_ns: timestamp_ns.into(),
            result: result.to_wire().into(),
            reserved: [0; 6],
        }
    }
}

impl TransferResult {
    /// The answer to `command`: its correlation id and transfer id, and the decision
    /// (sequence and timestamp 0 when it was decided at the edge, like `busy`).
    pub fn answering(command: &Transfer, sequence: u64, timestamp_ns: u64, result: ResultCode) -> Self {
        TransferResult {
            correlation_id: command.correlation_id,
            id: command.id,
            sequence: sequence.into(),
            timestamp_ns: timestamp_ns.into(),
            result: result.to_wire().into(),
            reserved: [0; 6],
        }
    }
}

impl AccountEvent {
    /// The event recording the decision on `command` (beside
    /// [`CreateAccountResult::answering`], its answer).
    pub fn deciding(command: &CreateAccount, sequence: u64, timestamp_ns: u64, result: ResultCode) -> Self {
        AccountEvent {
            sequence: sequence.into(),
            timestamp_ns: timestamp_ns.into(),
            id: command.id,
            ledger: command.ledger,
            code: command.code,
            flags: command.flags,
            result: result.to_wire().into(),
            reserved: [0; 6],
            user_data_128: command.user_data_128,
            user_data_64: command.user_data_64,
            user_data_32: command.user_data_32,
            reserved2: [0; 4],
        }
    }

    /// The command this event decided (the correlation id is not journaled: 0).
    pub fn command(&self) -> CreateAccount {
        CreateAccount {
            correlation_id: 0.into(),
            id: self.id,
            ledger: self.ledger,
            code: self.code,
            flags: self.flags,
            user_data_128: self.user_data_128,
            user_data_64: self.user_data_64,
            user_data_32: self.user_data_32,
            reserved: [0; 4],
        }
    }
}

impl TransferEvent {
    /// The event recording the decision on `command` (beside
    /// [`TransferResult::answering`], its answer).
    pub fn deciding(command: &Transfer, sequence: u64, timestamp_ns: u64, result: ResultCode) -> Self {
        TransferEvent {
            sequence: sequence.into(),
            timestamp_ns: timestamp_ns.into(),
            id: command.id,
            debit_account_id: command.debit_account_id,
            credit_account_id: command.credit_account_id,
            amount: command.amount,
            ledger: command.ledger,
            code: command.code,
            flags: command.flags,
            result: result.to_wire().into(),
            reserved: [0; 6],
            pending_id: command.pending_id,
            user_data_128: command.user_data_128,
            user_data_64: command.user_data_64,
            user_data_32: command.user_data_32,
            timeout: command.timeout,
        }
    }

    /// The command this event decided (the correlation id is not journaled: 0).
    /// For an applied transfer these are the fields as resolved: a post or void
    /// carries its pending transfer's accounts, a balancing transfer the amount moved.
    pub fn command(&self) -> Transfer {
        Transfer {
            correlation_id: 0.into(),
            id: self.id,
            debit_account_id: self.debit_account_id,
            credit_account_id: self.credit_account_id,
            amount: self.amount,
            ledger: self.ledger,
            code: self.code,
            flags: self.flags,
            pending_id: self.pending_id,
            user_data_128: self.user_data_128,
            user_data_64: self.user_data_64,
            user_data_32: self.user_data_32,
            timeout: self.timeout,
        }
    }

    /// Whether the chain continues with the next transfer.
    pub fn is_linked(&self) -> bool {
        self.flags.get() & crate::transfer_flags::LINKED != 0
    }

    /// Whether it is a plain single-phase transfer: no flag but `linked`, no
    /// pending id, no timeout.
    pub fn is_plain(&self) -> bool {
        is_plain(self.flags.get(), self.pending_id.get(), self.timeout.get())
    }
}

impl Transfer {
    /// Whether the chain continues with the next transfer (all-or-nothing).
    pub fn is_linked(&self) -> bool {
        self.flags.get() & crate::transfer_flags::LINKED != 0
    }

    /// Whether it is a plain single-phase transfer: no flag but `linked`, no
    /// pending id, no timeout.
    pub fn is_plain(&self) -> bool {
        is_plain(self.flags.get(), self.pending_id.get(), self.timeout.get())
    }
}

fn is_plain(flags: u16, pending_id: u128, timeout: u32) -> bool {
    flags & !crate::transfer_flags::LINKED == 0 && pending_id == 0 && timeout == 0
}

/// Name, template id, block length and fields of one message, for tools and for the
/// schema drift test.
#[derive(Debug, Clone, Copy)]
pub struct MessageMeta {
    /// Schema name.
    pub name: &'static str,
    /// Template id.
    pub template_id: u16,
    /// Block length this version writes.
    pub block_length: u16,
    /// Shortest block this version reads: the block of the version that added it.
    pub min_block_length: u16,
    /// Fields in declaration order.
    pub fields: &'static [crate::FieldMeta],
}

macro_rules! message_table {
    ($($name:ident),* $(,)?) => {
        /// Every message this version knows.
        pub const MESSAGES: &[MessageMeta] = &[$(MessageMeta {
            name: stringify!($name),
            template_id: <$name as Message>::TEMPLATE_ID,
            block_length: <$name as Message>::BLOCK_LENGTH,
            min_block_length: <$name as Message>::MIN_BLOCK_LENGTH,
            fields: <$name as crate::Block>::FIELDS,
        }),*];
    };
}

message_table!(
    CreateAccount,
    Transfer,
    CreateAccountResult,
    TransferResult,
    AccountEvent,
    TransferEvent,
    Heartbeat,
    Nak,
    StatusMessage,
    NakUnavailable,
    ReplayRequest,
    ReplayEnd,
    Challenge,
    Authenticate,
    Welcome,
    ClientHello,
    LookupAccount,
    LookupTransfer,
    AccountRecord,
    TransferRecord,
    LookupHistory,
    HistoryEnd,
    NotLeader,
    PendingExpired,
);
