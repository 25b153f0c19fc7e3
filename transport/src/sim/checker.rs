//! The events the simulator publishes, and the per-receiver check that each arrives
//! exactly once, in order, with the right bytes.

use ledgerbus_codec::messages::TransferEvent;
use ledgerbus_codec::{decode, encode_compact, Id128, Message, ResultCode};

/// The frame the simulator publishes as event `sequence`: its bytes depend only on
/// the sequence, so the checker (and the simulated replay) can rebuild it.
pub fn event_frame(sequence: u64) -> [u8; PLAIN_TRANSFER_FRAME_SIZE] {
    let event = TransferEvent {
        sequence: sequence.into(),
        timestamp_ns: sequence.wrapping_mul(1_000).into(),
        id: Id128::from(u128::from(sequence) | (7u128 << 100)),
        debit_account_id: Id128::from(1u128),
        credit_account_id: Id128::from(2u128),
        amount: (sequence % 1_000 + 1).into(),
        ledger: 1.into(),
        code: 1.into(),
        flags: 0.into(),
        result: ResultCode::Ok.to_wire().into(),
        reserved: [0; 6],
        ..Default::default()
    };
    let mut frame = [0u8; TransferEvent::FRAME_SIZE];
    let size = encode_compact(&event, &mut frame).expect("buffer sized for the frame");
    assert_eq!(size, PLAIN_TRANSFER_FRAME_SIZE);
    frame[..PLAIN_TRANSFER_FRAME_SIZE].try_into().expect("sized")
}

/// Bytes of a plain transfer's event as the sequencer writes it: the version 1
/// block (no field of version 2 set), 8 + 88.
pub const PLAIN_TRANSFER_FRAME_SIZE: usize = 96;

/// Per-receiver delivery checker: exactly once, in order, right bytes.
pub(super) struct Checker {
    pub(super) next: u64,
    pub(super) error: Option<String>,
}

impl Checker {
    pub(super) fn deliver(&mut self, sequence: u64, frame: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if sequence != self.next {
            self.error = Some(format!("delivered {sequence}, expected {}", self.next));
            return;
        }
        match decode::<TransferEvent>(frame) {
            Ok((event, _)) if event.sequence.get() == sequence && frame == event_frame(sequence) => {}
            _ => {
                self.error = Some(format!("event {sequence} has the wrong bytes"));
                return;
            }
        }
        self.next += 1;
    }
}
