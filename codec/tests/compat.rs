//! Schema evolution: a reader honours the on-wire block length, so a version N reader
//! reads a version N+1 writer's message (ignoring the new trailing field) and a
//! version N+1 reader reads a version N writer's message (the new field is absent).

use ledgerbus_codec::messages::Transfer;
use ledgerbus_codec::{decode, encode, sbe_block, Block, Frame, Frames, Id128, Message, SCHEMA_VERSION};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::IntoBytes;

sbe_block! {
    /// `Transfer` as a hypothetical version 2 of the schema: one field appended.
    pub struct TransferV2: size 80 {
        [0] correlation_id: U64,
        [8] id: Id128,
        [24] debit_account_id: Id128,
        [40] credit_account_id: Id128,
        [56] amount: U64,
        [64] ledger: U32,
        [68] code: U16,
        [70] flags: U16,
        /// New in version 2.
        [72] user_data: U64,
    }
}

impl Message for TransferV2 {
    const TEMPLATE_ID: u16 = Transfer::TEMPLATE_ID;
    const BLOCK_LENGTH: u16 = 80;
    const MIN_BLOCK_LENGTH: u16 = Transfer::BLOCK_LENGTH;
}

fn v1_transfer() -> Transfer {
    Transfer {
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

/// Encodes like a version-2 writer: header with version 2 and block length 80.
fn encode_v2(block: &TransferV2) -> Vec<u8> {
    let mut header = TransferV2::header();
    header.version = (SCHEMA_VERSION + 1).into();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(block.as_bytes());
    out
}

#[test]
fn version_n_reader_reads_a_newer_writer_and_skips_the_new_field() {
    let v1 = v1_transfer();
    let v2 = TransferV2 {
        correlation_id: v1.correlation_id,
        id: v1.id,
        debit_account_id: v1.debit_account_id,
        credit_account_id: v1.credit_account_id,
        amount: v1.amount,
        ledger: v1.ledger,
        code: v1.code,
        flags: v1.flags,
        user_data: 0xDEAD_BEEF.into(),
    };
    let mut bytes = encode_v2(&v2);
    // A second frame behind it must still be found: the reader steps by the on-wire length.
    let mut second = vec![0u8; Transfer::FRAME_SIZE];
    encode(&v1, &mut second).unwrap();
    bytes.extend_from_slice(&second);

    let (view, size) = decode::<Transfer>(&bytes).unwrap();
    assert_eq!(size, 8 + 80, "frame size is the writer's, not ours");
    assert_eq!(*view, v1, "known prefix decodes unchanged");
    assert_eq!(view.acting_version(), SCHEMA_VERSION + 1);
    let (next, _) = decode::<Transfer>(&bytes[size..]).unwrap();
    assert_eq!(*next, v1);
    assert_eq!(Frames::new(&bytes).count(), 2);
    assert!(matches!(Frame::decode(&bytes).unwrap().0, Frame::Transfer(_)));
}

#[test]
fn newer_reader_reads_an_older_writer_with_the_new_field_absent() {
    let v1 = v1_transfer();
    let mut bytes = vec![0u8; Transfer::FRAME_SIZE];
    encode(&v1, &mut bytes).unwrap();

    let (view, size) = decode::<TransferV2>(&bytes).unwrap();
    assert_eq!(size, Transfer::FRAME_SIZE);
    assert_eq!(view.amount.get(), 1_000);
    assert_eq!(view.id.get(), v1.id.get());
    assert_eq!(view.user_data.get(), 0, "absent field reads as zero");
    let offset = TransferV2::FIELDS.iter().find(|f| f.name == "user_data").unwrap().offset;
    assert!(!view.has_field(offset, 8), "reader can tell the field was absent");
    assert!(view.has_field(56, 8));
}

#[test]
fn a_block_shorter_than_the_first_version_is_rejected() {
    let mut bytes = vec![0u8; Transfer::FRAME_SIZE];
    encode(&v1_transfer(), &mut bytes).unwrap();
    bytes[0..2].copy_from_slice(&64u16.to_le_bytes());
    let error = decode::<Transfer>(&bytes).unwrap_err();
    assert_eq!(
        error,
        ledgerbus_codec::DecodeError::BlockLengthTooSmall { template_id: 2, block_length: 64, min: 72 }
    );
}
