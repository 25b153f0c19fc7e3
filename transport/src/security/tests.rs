//! Sealing and opening datagrams and replay records: round trips, forgeries, replays.
use super::*;
use ledgerbus_codec::messages::Heartbeat;
use ledgerbus_codec::{CrcCheck, Packet, PacketWriter};

fn keys(byte: u8) -> Arc<BusKeys> {
    Arc::new(BusKeys::new(vec![BusKey::from_bytes([byte; 32])]).unwrap())
}

fn heartbeat(buf: &mut [u8], session: u64) -> usize {
    let mut writer = PacketWriter::control(buf, 1, session);
    writer.push(&Heartbeat { next_sequence: 5.into(), oldest_retained_sequence: 1.into() }).unwrap();
    writer.finish(0)
}

#[test]
fn sealed_datagram_opens_and_every_flipped_bit_is_refused() {
    let mut sealer = Sealer::new(keys(1), 0, 42);
    let mut buf = [0u8; 256];
    let plain = heartbeat(&mut buf, 9);
    let original = buf[..plain].to_vec();
    let size = sealer.seal(&mut buf, plain);
    assert_eq!(size, plain + SEAL_OVERHEAD);
    assert_ne!(&buf[PACKET_HEADER_SIZE..plain], &original[PACKET_HEADER_SIZE..], "frames are encrypted");
    let mut out = [0u8; 256];
    for bit in 0..size * 8 {
        let mut forged = buf[..size].to_vec();
        forged[bit / 8] ^= 1 << (bit % 8);
        assert!(Opener::new(keys(1)).open(&forged, &mut out).is_err(), "bit {bit} flipped was accepted");
    }
    let (len, origin) = Opener::new(keys(1)).open(&buf[..size], &mut out).unwrap();
    assert_eq!(&out[..len], &original[..]);
    assert_eq!(origin, Origin { sender_id: 0, instance: 42, counter: 0 });
    Packet::decode(&out[..len], CrcCheck::Verify).unwrap();
}

#[test]
fn wrong_key_replayed_control_and_truncation_are_refused() {
    let mut sealer = Sealer::new(keys(1), 3, 7);
    let mut buf = [0u8; 256];
    let plain = heartbeat(&mut buf, 9);
    let size = sealer.seal(&mut buf, plain);
    let mut out = [0u8; 256];
    assert_eq!(Opener::new(keys(2)).open(&buf[..size], &mut out), Err(OpenError::UnknownKey));
    let mut opener = Opener::new(keys(1));
    opener.open(&buf[..size], &mut out).unwrap();
    assert_eq!(opener.open(&buf[..size], &mut out), Err(OpenError::Replayed));
    for cut in 0..size {
        assert!(opener.open(&buf[..cut], &mut out).is_err());
    }
    // The next datagram of the same sender is fine.
    let plain = heartbeat(&mut buf, 9);
    let size = sealer.seal(&mut buf, plain);
    assert_eq!(opener.open(&buf[..size], &mut out).unwrap().1.counter, 1);
}

#[test]
fn rotation_opens_with_either_key_and_seals_with_the_first() {
    let old = BusKey::from_bytes([1; 32]);
    let new = BusKey::from_bytes([2; 32]);
    let both = Arc::new(BusKeys::new(vec![new.clone(), old.clone()]).unwrap());
    let mut buf = [0u8; 256];
    let mut out = [0u8; 256];
    let plain = heartbeat(&mut buf, 1);
    let size = Sealer::new(keys(1), 0, 1).seal(&mut buf, plain);
    Opener::new(both.clone()).open(&buf[..size], &mut out).expect("old key still opens");
    let plain = heartbeat(&mut buf, 1);
    let size = Sealer::new(both, 0, 2).seal(&mut buf, plain);
    assert_eq!(u32::from_le_bytes(buf[plain..plain + 4].try_into().unwrap()), new.id());
    assert_eq!(Opener::new(keys(1)).open(&buf[..size], &mut out), Err(OpenError::UnknownKey));
}

proptest::proptest! {
    /// Arbitrary bytes, or a sealed datagram with arbitrary bytes spliced in, never
    /// panic and never open.
    #[test]
    fn hostile_bytes_never_open(
        noise in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        at in 0usize..200,
    ) {
        let mut opener = Opener::new(keys(1));
        let mut out = [0u8; 512];
        proptest::prop_assert!(opener.open(&noise, &mut out).is_err());
        let mut buf = [0u8; 256];
        let plain = heartbeat(&mut buf, 9);
        let size = Sealer::new(keys(1), 0, 5).seal(&mut buf, plain);
        let mut spliced = buf[..size].to_vec();
        let at = at.min(size);
        let end = (at + noise.len()).min(size);
        spliced[at..end].copy_from_slice(&noise[..end - at]);
        if spliced[..] != buf[..size] {
            proptest::prop_assert!(opener.open(&spliced, &mut out).is_err());
        }
    }
}

#[test]
fn replay_records_open_in_order_only_and_with_the_right_key() {
    let key = BusKey::from_bytes([4; 32]).replay_key();
    let challenge = [9u8; 32];
    let mut sealer = key.record_sealer(&challenge, RecordDirection::ToClient);
    let mut wire = Vec::new();
    sealer.seal(b"first", &mut wire);
    sealer.seal(b"second record", &mut wire);
    let split = |wire: &[u8]| {
        let (length, rest) = wire.split_at(4);
        let body = u32::from_le_bytes(length.try_into().unwrap()) as usize;
        (<[u8; 4]>::try_from(length).unwrap(), rest[..body].to_vec(), rest[body..].to_vec())
    };
    let (l1, mut b1, rest) = split(&wire);
    let (l2, mut b2, _) = split(&rest);
    // Out of order, the other direction, another connection: refused.
    let mut opener = key.record_opener(&challenge, RecordDirection::ToClient);
    assert!(opener.open(l2, &mut b2.clone()).is_err());
    assert!(key.record_opener(&challenge, RecordDirection::ToServer).open(l1, &mut b1.clone()).is_err());
    assert!(key.record_opener(&[8; 32], RecordDirection::ToClient).open(l1, &mut b1.clone()).is_err());
    assert_eq!(opener.open(l1, &mut b1).unwrap(), b"first");
    assert_eq!(opener.open(l2, &mut b2).unwrap(), b"second record");
    assert!(opener.body_length(u32::MAX.to_le_bytes()).is_err(), "a huge length is refused before reading");
}

#[test]
fn keys_parse_from_hex_and_never_print() {
    let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let keys = BusKeys::parse(&format!("{hex}, {hex}")).unwrap();
    assert_eq!(keys.all().len(), 2);
    assert!(!format!("{keys:?}").contains("0011"));
    assert_eq!(BusKeys::parse("abc").unwrap_err(), BusKeyError::Length { found: 3 });
    assert_eq!(BusKeys::parse(&"zz".repeat(32)).unwrap_err(), BusKeyError::NotHex);
    assert_eq!(BusKeys::parse("").unwrap_err(), BusKeyError::Empty);
    assert_eq!(BusKeys::parse(&[hex; 3].join(",")).unwrap_err(), BusKeyError::TooMany);
}
