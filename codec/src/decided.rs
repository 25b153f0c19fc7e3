//! What a result frame says, read once by whoever receives it: the gateway's link to
//! the sequencer and the Rust client. Both result messages share one size and the
//! layout of the fields read here.

use crate::messages::{CreateAccountResult, TransferResult};
use crate::{decode, ResultCode};

/// What a reply frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decided {
    /// The command's correlation id.
    pub correlation_id: u64,
    /// The account or transfer id.
    pub id: u128,
    /// The decision's event sequence (0 when decided at the edge).
    pub sequence: u64,
    /// The decision's time stamp.
    pub timestamp_ns: u64,
    /// The decision.
    pub result: ResultCode,
}

impl Decided {
    /// Reads a result frame; `None` for anything else or an unknown result code.
    pub fn read(frame: &[u8]) -> Option<Decided> {
        if let Ok((view, _)) = decode::<TransferResult>(frame) {
            return Some(Decided {
                correlation_id: view.correlation_id.get(),
                id: view.id.get(),
                sequence: view.sequence.get(),
                timestamp_ns: view.timestamp_ns.get(),
                result: view.result().ok()?,
            });
        }
        let (view, _) = decode::<CreateAccountResult>(frame).ok()?;
        Some(Decided {
            correlation_id: view.correlation_id.get(),
            id: view.id.get(),
            sequence: view.sequence.get(),
            timestamp_ns: view.timestamp_ns.get(),
            result: view.result().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Transfer, TransferResult};
    use crate::{encode, Message};

    #[test]
    fn a_result_frame_reads_back_and_other_bytes_do_not() {
        let command = Transfer {
            correlation_id: 9.into(),
            id: 5u128.into(),
            debit_account_id: 1u128.into(),
            credit_account_id: 2u128.into(),
            amount: 1.into(),
            ledger: 1.into(),
            code: 1.into(),
            flags: 0.into(),
            ..Default::default()
        };
        let mut frame = [0u8; TransferResult::FRAME_SIZE];
        encode(&TransferResult::answering(&command, 7, 70, ResultCode::Exists), &mut frame).unwrap();
        let decided = Decided::read(&frame).unwrap();
        assert_eq!(
            decided,
            Decided { correlation_id: 9, id: 5, sequence: 7, timestamp_ns: 70, result: ResultCode::Exists }
        );
        assert_eq!(Decided::read(&frame[..10]), None);
        let mut command_frame = vec![0u8; Transfer::FRAME_SIZE];
        encode(&command, &mut command_frame).unwrap();
        assert_eq!(Decided::read(&command_frame), None, "a command is not a reply");
    }
}
