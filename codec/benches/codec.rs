//! Encode and decode costs of the hot messages (issue 2's speed targets):
//! `cargo bench -p ledgerbus-codec --bench codec`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ledgerbus_codec::messages::TransferEvent;
use ledgerbus_codec::{
    decode, encode, CrcCheck, Frame, Id128, Message, Packet, PacketWriter, ResultCode, DATAGRAM_SIZE_DEFAULT,
};

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

fn full_datagram() -> (Vec<u8>, u64) {
    let mut buf = vec![0u8; DATAGRAM_SIZE_DEFAULT];
    let mut writer = PacketWriter::data(&mut buf, 1, 77, 1000);
    let mut count = 0;
    while writer.remaining() >= TransferEvent::FRAME_SIZE {
        writer.push(&transfer_event(1000 + count)).unwrap();
        count += 1;
    }
    let size = writer.finish(1);
    buf.truncate(size);
    (buf, count)
}

fn transfer_event_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("transfer_event");
    group.throughput(Throughput::Elements(1));
    let event = transfer_event(7);
    let mut frame = [0u8; TransferEvent::FRAME_SIZE];
    encode(&event, &mut frame).unwrap();

    group.bench_function("decode", |b| {
        b.iter(|| {
            let (view, _) = decode::<TransferEvent>(black_box(&frame)).unwrap();
            black_box(view.amount.get())
        })
    });
    group.bench_function("decode_any", |b| {
        b.iter(|| match Frame::decode(black_box(&frame)).unwrap().0 {
            Frame::TransferEvent(view) => black_box(view.amount.get()),
            _ => unreachable!(),
        })
    });
    let mut out = [0u8; TransferEvent::FRAME_SIZE];
    group.bench_function("encode", |b| {
        b.iter(|| {
            encode(black_box(&event), &mut out).unwrap();
            black_box(&out);
        })
    });
    group.bench_function("encode_crc", |b| {
        b.iter(|| {
            encode(black_box(&event), &mut out).unwrap();
            black_box(crc32fast::hash(&out))
        })
    });
    group.finish();
}

fn datagram_benches(c: &mut Criterion) {
    let (datagram, count) = full_datagram();
    let mut group = c.benchmark_group("datagram_1408");
    group.throughput(Throughput::Elements(count));
    for (name, crc) in [("decode_crc", CrcCheck::Verify), ("decode_no_crc", CrcCheck::Skip)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let packet = Packet::decode(black_box(&datagram), crc).unwrap();
                let mut sum = 0u64;
                for frame in packet.frames() {
                    let (view, _) = decode::<TransferEvent>(frame.unwrap()).unwrap();
                    sum = sum.wrapping_add(view.amount.get());
                }
                black_box(sum)
            })
        });
    }
    let events: Vec<TransferEvent> = (0..count).map(transfer_event).collect();
    let mut buf = vec![0u8; DATAGRAM_SIZE_DEFAULT];
    group.bench_function("encode_crc", |b| {
        b.iter(|| {
            let mut writer = PacketWriter::data(&mut buf, 1, 77, 0);
            for event in &events {
                writer.push(black_box(event)).unwrap();
            }
            black_box(writer.finish(1))
        })
    });
    group.finish();
}

criterion_group!(benches, transfer_event_benches, datagram_benches);
criterion_main!(benches);
