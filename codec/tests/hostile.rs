//! Hostile bytes: every decoder returns an error or a value for any input, never a
//! panic or an out-of-bounds read; encode/decode round-trips exactly.

use ledgerbus_codec::messages::*;
use ledgerbus_codec::{
    decode, encode, CrcCheck, DecodeError, Frame, Frames, Id128, Message, Packet, PacketWriter, ResultCode,
    View, DATAGRAM_SIZE_DEFAULT, PACKET_HEADER_SIZE,
};
use proptest::prelude::*;

/// Runs every decoder on `bytes`; none may panic.
fn decode_everything(bytes: &[u8]) {
    fn typed<M: Message>(bytes: &[u8]) {
        if let Ok((view, size)) = View::<M>::decode(bytes) {
            assert!(size <= bytes.len());
            assert!(size >= 8);
            let _ = view.to_block();
        }
    }
    typed::<CreateAccount>(bytes);
    typed::<Transfer>(bytes);
    typed::<CreateAccountResult>(bytes);
    typed::<TransferResult>(bytes);
    typed::<AccountEvent>(bytes);
    typed::<TransferEvent>(bytes);
    typed::<Heartbeat>(bytes);
    typed::<Nak>(bytes);
    typed::<StatusMessage>(bytes);
    typed::<NakUnavailable>(bytes);
    typed::<ReplayRequest>(bytes);
    typed::<ReplayEnd>(bytes);
    typed::<Challenge>(bytes);
    typed::<Authenticate>(bytes);
    typed::<Welcome>(bytes);
    typed::<ClientHello>(bytes);
    typed::<LookupAccount>(bytes);
    typed::<LookupTransfer>(bytes);
    typed::<AccountRecord>(bytes);
    typed::<TransferRecord>(bytes);
    typed::<LookupHistory>(bytes);
    typed::<HistoryEnd>(bytes);
    typed::<NotLeader>(bytes);
    if let Ok((frame, size)) = Frame::decode(bytes) {
        assert!(size <= bytes.len());
        if let Frame::TransferEvent(event) = frame {
            let _ = event.result();
        }
        if let Frame::TransferRecord(record) = frame {
            let _ = record.result();
        }
        if let Frame::AccountRecord(record) = frame {
            let _ = record.result();
        }
    }
    let consumed: usize = Frames::new(bytes).map_while(Result::ok).map(<[u8]>::len).sum();
    assert!(consumed <= bytes.len());
    for crc in [CrcCheck::Verify, CrcCheck::Skip] {
        if let Ok(packet) = Packet::decode(bytes, crc) {
            // A packet that decodes has frames that exactly fill its payload.
            let total: usize = packet.frames().map(|f| f.unwrap().len()).sum();
            assert_eq!(PACKET_HEADER_SIZE + total, bytes.len());
            assert_eq!(
                packet.frames().count(),
                usize::from(packet.header().message_count.get())
                    .max(usize::from(packet.kind() == ledgerbus_codec::PacketKind::Control))
            );
            for frame in packet.frames() {
                let frame = frame.unwrap();
                match Frame::decode(frame) {
                    Ok((_, size)) => assert_eq!(size, frame.len()),
                    Err(DecodeError::UnknownTemplate { frame_size, .. }) => {
                        assert_eq!(frame_size, frame.len())
                    }
                    Err(_) => {}
                }
            }
        }
    }
}

fn transfer_event(sequence: u64) -> TransferEvent {
    TransferEvent {
        sequence: sequence.into(),
        timestamp_ns: 1_700_000_000_000_000_000u64.wrapping_add(sequence).into(),
        id: Id128::from(u128::from(sequence) << 64 | 9),
        debit_account_id: Id128::from(1u128),
        credit_account_id: Id128::from(2u128),
        amount: 250.into(),
        ledger: 978.into(),
        code: 3.into(),
        flags: 0.into(),
        result: ResultCode::Ok.to_wire().into(),
        reserved: [0; 6],
        ..Default::default()
    }
}

/// A full data datagram of transfer events.
fn data_packet(first_sequence: u64) -> Vec<u8> {
    let mut buf = vec![0u8; DATAGRAM_SIZE_DEFAULT];
    let mut writer = PacketWriter::data(&mut buf, 1, 77, first_sequence);
    let mut sequence = first_sequence;
    while writer.remaining() >= TransferEvent::FRAME_SIZE {
        writer.push(&transfer_event(sequence)).unwrap();
        sequence += 1;
    }
    let size = writer.finish(5);
    buf.truncate(size);
    buf
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
        decode_everything(&bytes);
    }

    #[test]
    fn mutated_packets_never_panic_and_crc_catches_them(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = data_packet(100);
        for (index, xor) in &flips {
            let i = index.index(bytes.len());
            bytes[i] ^= xor;
        }
        if truncate {
            let len = cut.index(bytes.len());
            bytes.truncate(len);
        }
        decode_everything(&bytes);
        // Any change to a CRC-protected datagram is caught (CRC32 detects every burst
        // up to 32 bits; the flips here are few bytes, so a miss would be a bug).
        if flips.len() == 1 && !truncate {
            prop_assert!(Packet::decode(&bytes, CrcCheck::Verify).is_err());
        }
    }

    #[test]
    fn mutated_frames_never_panic(
        index in any::<prop::sample::Index>(),
        value in any::<u8>(),
        len in 0usize..120,
    ) {
        let mut bytes = vec![0u8; TransferEvent::FRAME_SIZE];
        encode(&transfer_event(1), &mut bytes).unwrap();
        let i = index.index(bytes.len());
        bytes[i] = value;
        bytes.truncate(len.min(bytes.len()));
        decode_everything(&bytes);
    }

    #[test]
    fn transfer_round_trips(
        correlation_id in any::<u64>(), id in any::<u128>(), debit in any::<u128>(), credit in any::<u128>(),
        amount in any::<u64>(), ledger in any::<u32>(), code in any::<u16>(), flags in any::<u16>(),
    ) {
        let transfer = Transfer {
            correlation_id: correlation_id.into(),
            id: id.into(),
            debit_account_id: debit.into(),
            credit_account_id: credit.into(),
            amount: amount.into(),
            ledger: ledger.into(),
            code: code.into(),
            flags: flags.into(), ..Default::default()
        };
        let mut bytes = [0u8; Transfer::FRAME_SIZE];
        prop_assert_eq!(encode(&transfer, &mut bytes).unwrap(), Transfer::FRAME_SIZE);
        let (view, size) = decode::<Transfer>(&bytes).unwrap();
        prop_assert_eq!(size, bytes.len());
        prop_assert_eq!(*view, transfer);
        prop_assert_eq!(view.id.get(), id);
        prop_assert_eq!(view.debit_account_id.get(), debit);
    }

    #[test]
    fn packets_round_trip(first_sequence in any::<u64>(), send_time in any::<u64>(), count in 1usize..=9) {
        let mut buf = vec![0u8; DATAGRAM_SIZE_DEFAULT];
        let mut writer = PacketWriter::data(&mut buf, 3, 11, first_sequence);
        for i in 0..count {
            writer.push(&transfer_event(first_sequence.wrapping_add(i as u64))).unwrap();
        }
        if count == 9 {
            // 40 + 9 * 144 = 1336: a tenth event does not fit in 1408 bytes.
            let refused = writer.push(&transfer_event(0));
            let too_small = matches!(refused, Err(ledgerbus_codec::EncodeError::BufferTooSmall { .. }));
            prop_assert!(too_small);
        }
        let size = writer.finish(send_time);
        let packet = Packet::decode(&buf[..size], CrcCheck::Verify).unwrap();
        prop_assert_eq!(packet.header().first_sequence.get(), first_sequence);
        prop_assert_eq!(packet.header().send_time_ns.get(), send_time);
        prop_assert_eq!(usize::from(packet.header().message_count.get()), count);
        for (i, frame) in packet.frames().enumerate() {
            let (view, _) = decode::<TransferEvent>(frame.unwrap()).unwrap();
            prop_assert_eq!(view.sequence.get(), first_sequence.wrapping_add(i as u64));
        }
    }
}

#[test]
fn precise_errors() {
    let mut bytes = vec![0u8; TransferEvent::FRAME_SIZE];
    encode(&transfer_event(1), &mut bytes).unwrap();

    assert_eq!(
        decode::<TransferEvent>(&bytes[..5]).unwrap_err(),
        DecodeError::Truncated { needed: 8, available: 5 }
    );
    assert_eq!(
        decode::<TransferEvent>(&bytes[..50]).unwrap_err(),
        DecodeError::Truncated { needed: 144, available: 50 }
    );
    assert_eq!(
        decode::<Transfer>(&bytes).unwrap_err(),
        DecodeError::UnexpectedTemplate { expected: 2, found: 6 }
    );

    let mut other_schema = bytes.clone();
    other_schema[4..6].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(Frame::decode(&other_schema).unwrap_err(), DecodeError::UnknownSchema { id: 1 });

    let mut unknown = bytes.clone();
    unknown[2..4].copy_from_slice(&999u16.to_le_bytes());
    assert_eq!(
        Frame::decode(&unknown).unwrap_err(),
        DecodeError::UnknownTemplate { id: 999, frame_size: 144 }
    );

    let mut bad_result = bytes.clone();
    bad_result[8 + 80..8 + 82].copy_from_slice(&900u16.to_le_bytes());
    let (view, _) = decode::<TransferEvent>(&bad_result).unwrap();
    assert_eq!(view.result().unwrap_err(), DecodeError::UnknownEnumValue { name: "ResultCode", value: 900 });

    let mut huge = bytes.clone();
    huge[0..2].copy_from_slice(&60_000u16.to_le_bytes());
    assert!(matches!(Frame::decode(&huge).unwrap_err(), DecodeError::LengthOverMax { .. }));

    let mut small = [0u8; 4];
    assert_eq!(
        encode(&transfer_event(1), &mut small).unwrap_err(),
        ledgerbus_codec::EncodeError::BufferTooSmall { needed: 144, available: 4 }
    );
}

#[test]
fn packet_errors_are_precise() {
    let good = data_packet(1);
    assert!(Packet::decode(&good, CrcCheck::Verify).is_ok());

    let mut bad_crc = good.clone();
    *bad_crc.last_mut().unwrap() ^= 1;
    assert!(matches!(Packet::decode(&bad_crc, CrcCheck::Verify), Err(DecodeError::BadCrc { .. })));

    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    assert!(matches!(Packet::decode(&bad_magic, CrcCheck::Skip), Err(DecodeError::BadMagic { .. })));

    let mut bad_count = good.clone();
    bad_count[6..8].copy_from_slice(&3u16.to_le_bytes());
    assert_eq!(
        Packet::decode(&bad_count, CrcCheck::Skip).unwrap_err(),
        DecodeError::FrameCountMismatch { declared: 3, found: 9 }
    );

    let truncated = &good[..good.len() - 10];
    assert!(matches!(Packet::decode(truncated, CrcCheck::Skip), Err(DecodeError::Truncated { .. })));

    assert_eq!(
        Packet::decode(&good[..10], CrcCheck::Verify).unwrap_err(),
        DecodeError::Truncated { needed: PACKET_HEADER_SIZE, available: 10 }
    );
}

#[test]
fn control_packets_carry_exactly_one_message() {
    let mut buf = [0u8; 256];
    let mut writer = PacketWriter::control(&mut buf, 1, 2);
    writer.push(&Nak { from_sequence: 10.into(), count: 5.into(), receiver_id: 3.into() }).unwrap();
    let size = writer.finish(9);
    let packet = Packet::decode(&buf[..size], CrcCheck::Verify).unwrap();
    match packet.control().unwrap() {
        Frame::Nak(nak) => {
            assert_eq!(nak.from_sequence.get(), 10);
            assert_eq!(nak.count.get(), 5);
        }
        other => panic!("expected a NAK, got {other:?}"),
    }

    let mut two = [0u8; 256];
    let mut writer = PacketWriter::control(&mut two, 1, 2);
    let heartbeat = Heartbeat { next_sequence: 1.into(), oldest_retained_sequence: 1.into() };
    writer.push(&heartbeat).unwrap();
    writer.push(&heartbeat).unwrap();
    let size = writer.finish(9);
    assert_eq!(Packet::decode(&two[..size], CrcCheck::Verify).unwrap_err(), DecodeError::BadControlPacket);
}
