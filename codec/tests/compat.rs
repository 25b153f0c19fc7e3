//! Schema evolution: a reader honours the on-wire block length, so a version N reader
//! reads a version N+1 writer's message (ignoring the new trailing fields) and a
//! version N+1 reader reads a version N writer's message (the new fields are absent).
//! Version 2 appended fields to Transfer (and others); a version 1 writer's frames
//! (clients, journals) must keep decoding.

use ledgerbus_codec::messages::Transfer;
use ledgerbus_codec::{decode, encode, sbe_block, Block, Frame, Frames, Id128, Message, SCHEMA_VERSION};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::IntoBytes;

sbe_block! {
    /// `Transfer` as version 1 of the schema wrote it (before pending ids, user data
    /// and timeouts): 72 bytes.
    pub struct TransferV1: size 72 {
        [0] correlation_id: U64,
        [8] id: Id128,
        [24] debit_account_id: Id128,
        [40] credit_account_id: Id128,
        [56] amount: U64,
        [64] ledger: U32,
        [68] code: U16,
        [70] flags: U16,
    }
}

impl Message for TransferV1 {
    const TEMPLATE_ID: u16 = Transfer::TEMPLATE_ID;
    const BLOCK_LENGTH: u16 = 72;
}

sbe_block! {
    /// `Transfer` as a hypothetical version 3: one field appended to version 2.
    pub struct TransferV3: size 128 {
        [0] correlation_id: U64,
        [8] id: Id128,
        [24] debit_account_id: Id128,
        [40] credit_account_id: Id128,
        [56] amount: U64,
        [64] ledger: U32,
        [68] code: U16,
        [70] flags: U16,
        [72] pending_id: Id128,
        [88] user_data_128: Id128,
        [104] user_data_64: U64,
        [112] user_data_32: U32,
        [116] timeout: U32,
        /// New in version 3.
        [120] extra: U64,
    }
}

impl Message for TransferV3 {
    const TEMPLATE_ID: u16 = Transfer::TEMPLATE_ID;
    const BLOCK_LENGTH: u16 = 128;
    const MIN_BLOCK_LENGTH: u16 = 72;
}

fn v1_transfer() -> TransferV1 {
    TransferV1 {
        correlation_id: 42.into(),
        id: Id128::from(7u128 << 70 | 3),
        debit_account_id: Id128::from(1u128),
        credit_account_id: Id128::from(2u128),
        amount: 1_000.into(),
        ledger: 840.into(),
        code: 1.into(),
        flags: 0.into(),
    }
}

fn v2_transfer() -> Transfer {
    let v1 = v1_transfer();
    Transfer {
        correlation_id: v1.correlation_id,
        id: v1.id,
        debit_account_id: v1.debit_account_id,
        credit_account_id: v1.credit_account_id,
        amount: v1.amount,
        ledger: v1.ledger,
        code: v1.code,
        flags: v1.flags,
        pending_id: Id128::from(99u128),
        user_data_128: Id128::from(5u128 << 90),
        user_data_64: 6.into(),
        user_data_32: 7.into(),
        timeout: 30.into(),
    }
}

/// Encodes like a writer of `version`.
fn encode_as<M: Message>(block: &M, version: u16) -> Vec<u8> {
    let mut header = M::header();
    header.version = version.into();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(block.as_bytes());
    out
}

#[test]
fn version_2_reads_a_version_1_writer_with_the_new_fields_absent() {
    let v1 = v1_transfer();
    let bytes = encode_as(&v1, 1);
    let (view, size) = decode::<Transfer>(&bytes).unwrap();
    assert_eq!(size, 8 + 72, "frame size is the writer's");
    assert_eq!(view.acting_version(), 1);
    assert_eq!(view.amount.get(), 1_000);
    assert_eq!(view.id.get(), v1.id.get());
    assert_eq!((view.pending_id.get(), view.user_data_64.get(), view.timeout.get()), (0, 0, 0));
    let offset = Transfer::FIELDS.iter().find(|f| f.name == "pending_id").unwrap().offset;
    assert!(!view.has_field(offset, 16), "reader can tell the field was absent");
    assert!(view.has_field(56, 8));
    assert_eq!(Transfer::MIN_BLOCK_LENGTH, 72);
}

#[test]
fn a_version_2_reader_reads_a_newer_writer_and_skips_the_new_field() {
    let v2 = v2_transfer();
    let v3 = TransferV3 {
        correlation_id: v2.correlation_id,
        id: v2.id,
        debit_account_id: v2.debit_account_id,
        credit_account_id: v2.credit_account_id,
        amount: v2.amount,
        ledger: v2.ledger,
        code: v2.code,
        flags: v2.flags,
        pending_id: v2.pending_id,
        user_data_128: v2.user_data_128,
        user_data_64: v2.user_data_64,
        user_data_32: v2.user_data_32,
        timeout: v2.timeout,
        extra: 0xDEAD_BEEF.into(),
    };
    let mut bytes = encode_as(&v3, SCHEMA_VERSION + 1);
    // A second frame behind it must still be found: the reader steps by the on-wire length.
    let mut second = vec![0u8; Transfer::FRAME_SIZE];
    encode(&v2, &mut second).unwrap();
    bytes.extend_from_slice(&second);

    let (view, size) = decode::<Transfer>(&bytes).unwrap();
    assert_eq!(size, 8 + 128, "frame size is the writer's, not ours");
    assert_eq!(*view, v2, "known prefix decodes unchanged");
    assert_eq!(view.acting_version(), SCHEMA_VERSION + 1);
    let (next, _) = decode::<Transfer>(&bytes[size..]).unwrap();
    assert_eq!(*next, v2);
    assert_eq!(Frames::new(&bytes).count(), 2);
    assert!(matches!(Frame::decode(&bytes).unwrap().0, Frame::Transfer(_)));
}

#[test]
fn a_version_1_reader_reads_a_version_2_writer() {
    let v2 = v2_transfer();
    let mut bytes = vec![0u8; Transfer::FRAME_SIZE];
    encode(&v2, &mut bytes).unwrap();
    let (view, size) = decode::<TransferV1>(&bytes).unwrap();
    assert_eq!(size, Transfer::FRAME_SIZE);
    assert_eq!(*view, v1_transfer());
}

#[test]
fn a_block_shorter_than_the_first_version_is_rejected() {
    let mut bytes = encode_as(&v1_transfer(), 1);
    bytes[0..2].copy_from_slice(&64u16.to_le_bytes());
    bytes.truncate(8 + 64);
    let error = decode::<Transfer>(&bytes).unwrap_err();
    assert_eq!(
        error,
        ledgerbus_codec::DecodeError::BlockLengthTooSmall { template_id: 2, block_length: 64, min: 72 }
    );
}
