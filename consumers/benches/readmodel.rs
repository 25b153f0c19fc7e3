//! How fast the memory consumer's read model applies the event stream: the
//! end-to-end ceiling when every event must reach it.
//! `cargo bench -p ledgerbus-consumers --bench readmodel`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ledgerbus_codec::messages::{AccountEvent, TransferEvent};
use ledgerbus_codec::{account_flags, encode_compact, transfer_flags, Message, ResultCode};
use ledgerbus_consumers::readmodel::ReadModel;

const ACCOUNTS: u64 = 10_000;
const TRANSFERS: u64 = 500_000;

/// Account events (overdraft allowed, so any pair may move money), then transfer
/// events between random pairs (every 50th rejected); with `two_phase` percent of
/// them pending transfers and posts or voids of earlier ones, as the sequencer
/// writes them (resolved). Frames are encoded as the sequencer encodes them.
fn event_log(two_phase: u64) -> Vec<Vec<u8>> {
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
        let size = encode_compact(&event, &mut bytes).expect("sized");
        bytes.truncate(size);
        frames.push(bytes);
    }
    let mut open = std::collections::VecDeque::new();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for n in 0..TRANSFERS {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        sequence += 1;
        let debit = 1 + state % (ACCOUNTS + 1);
        let credit = 1 + debit % (ACCOUNTS + 1);
        let result = if n % 50 == 0 { ResultCode::InsufficientFunds } else { ResultCode::Ok };
        let id = u128::from(n + 1_000_000);
        let mut event = TransferEvent {
            sequence: sequence.into(),
            timestamp_ns: sequence.into(),
            id: id.into(),
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
        if result == ResultCode::Ok && (state >> 32) % 100 < two_phase {
            if open.len() < 64 {
                event.flags = transfer_flags::PENDING.into();
                open.push_back((id, debit, credit));
            } else {
                let (pending, debit, credit) = open.pop_front().expect("open");
                let flag =
                    if n % 2 == 0 { transfer_flags::POST_PENDING } else { transfer_flags::VOID_PENDING };
                event.flags = flag.into();
                event.pending_id = pending.into();
                event.debit_account_id = u128::from(debit).into();
                event.credit_account_id = u128::from(credit).into();
            }
        }
        let mut bytes = vec![0; TransferEvent::FRAME_SIZE];
        let size = encode_compact(&event, &mut bytes).expect("sized");
        bytes.truncate(size);
        frames.push(bytes);
    }
    frames
}

fn apply(c: &mut Criterion) {
    for (name, two_phase) in [("apply", 0), ("apply_two_phase_30", 30)] {
        apply_log(c, name, two_phase);
    }
}

fn apply_log(c: &mut Criterion, name: &str, two_phase: u64) {
    let frames = event_log(two_phase);
    let mut group = c.benchmark_group("readmodel");
    group.sample_size(10);
    group.throughput(Throughput::Elements(frames.len() as u64));
    // One contiguous log, as frames sit in a receive buffer.
    let log: Vec<u8> = frames.concat();
    group.bench_function(name, |b| {
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
