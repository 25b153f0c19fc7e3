//! How fast the memory consumer's read model applies the event stream: the
//! end-to-end ceiling when every event must reach it.
//! `cargo bench -p ledgerbus-consumers --bench readmodel`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ledgerbus_codec::messages::{AccountEvent, TransferEvent};
use ledgerbus_codec::{account_flags, encode, Message, ResultCode};
use ledgerbus_consumers::readmodel::ReadModel;

const ACCOUNTS: u64 = 10_000;
const TRANSFERS: u64 = 500_000;

/// Account events (overdraft allowed, so any pair may move money), then transfer
/// events between random pairs (every 50th rejected).
fn event_log() -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut sequence = 0;
    for id in 0..=ACCOUNTS {
        sequence += 1;
        let event = AccountEvent {
            sequence: sequence.into(),
            timestamp_ns: sequence.into(),
            id: u128::from(id + 1).into(),
            ledger: 1.into(),
            code: 1.into(),
            flags: account_flags::ALLOW_NEGATIVE.into(),
            result: ResultCode::Ok.to_wire().into(),
            reserved: [0; 6],
            ..Default::default()
        };
        let mut bytes = vec![0; AccountEvent::FRAME_SIZE];
        encode(&event, &mut bytes).expect("sized");
        frames.push(bytes);
    }
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for n in 0..TRANSFERS {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        sequence += 1;
        let debit = 1 + state % (ACCOUNTS + 1);
        let credit = 1 + debit % (ACCOUNTS + 1);
        let result = if n % 50 == 0 { ResultCode::InsufficientFunds } else { ResultCode::Ok };
        let event = TransferEvent {
            sequence: sequence.into(),
            timestamp_ns: sequence.into(),
            id: u128::from(n + 1_000_000).into(),
            debit_account_id: u128::from(debit).into(),
            credit_account_id: u128::from(credit).into(),
            amount: 1.into(),
            ledger: 1.into(),
            code: 1.into(),
            flags: 0.into(),
            result: result.to_wire().into(),
            reserved: [0; 6],
            ..Default::default()
        };
        let mut bytes = vec![0; TransferEvent::FRAME_SIZE];
        encode(&event, &mut bytes).expect("sized");
        frames.push(bytes);
    }
    frames
}

fn apply(c: &mut Criterion) {
    let frames = event_log();
    let mut group = c.benchmark_group("readmodel");
    group.sample_size(10);
    group.throughput(Throughput::Elements(frames.len() as u64));
    // One contiguous log, as frames sit in a receive buffer.
    let log: Vec<u8> = frames.concat();
    group.bench_function("apply", |b| {
        // Sized for the log, as `--transfer-capacity` sizes a running consumer.
        b.iter_batched(
            || ReadModel::with_capacity(TRANSFERS as usize),
            |mut model| {
                model.apply_batch(&log).expect("applies");
                model
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
