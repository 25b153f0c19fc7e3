//! Which events `ledgerbus replay` prints: by account, type, result and time.

use std::time::{SystemTime, UNIX_EPOCH};

use ledgerbus_codec::{Frame, ResultCode};

/// An event kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// An account was created (or refused).
    Account,
    /// A transfer was decided.
    Transfer,
    /// A pending transfer expired (its reservation released).
    Expired,
}

/// Which results pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultFilter {
    /// `ok` and `exists`.
    Accepted,
    /// Every other result.
    Rejected,
    /// Exactly this one.
    Code(ResultCode),
}

impl std::str::FromStr for ResultFilter {
    type Err = String;

    /// `accepted`, `rejected`, or a result code as the API or the schema spells it
    /// (`insufficient_funds`, `InsufficientFunds`).
    fn from_str(text: &str) -> Result<ResultFilter, String> {
        let folded = |name: &str| name.replace('_', "").to_ascii_lowercase();
        match folded(text).as_str() {
            "accepted" => return Ok(ResultFilter::Accepted),
            "rejected" => return Ok(ResultFilter::Rejected),
            _ => {}
        }
        ResultCode::ALL
            .iter()
            .find(|(_, name)| folded(name) == folded(text))
            .map(|(code, _)| ResultFilter::Code(*code))
            .ok_or_else(|| {
                format!("`{text}` is not accepted, rejected or a result code (e.g. insufficient_funds)")
            })
    }
}

/// A time given as RFC 3339 (`2026-12-01T12:00:00Z`) or as seconds since the epoch;
/// returned in nanoseconds since the epoch, the unit of event timestamps.
pub fn parse_time(text: &str) -> Result<u64, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        if seconds.is_finite() && seconds >= 0.0 {
            return Ok((seconds * 1e9) as u64);
        }
    }
    let time = humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("`{text}` is neither RFC 3339 (2026-12-01T12:00:00Z) nor epoch seconds: {e}"))?;
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    Ok(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
}

/// The current time in nanoseconds since the epoch.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Conditions an event must meet to be printed; all given ones must hold.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// The account created, or either side of the transfer.
    pub account: Option<u128>,
    /// The event's kind.
    pub kind: Option<EventKind>,
    /// The event's result.
    pub result: Option<ResultFilter>,
    /// Time stamped at or after (ns since the epoch).
    pub since_ns: Option<u64>,
    /// Time stamped before (ns since the epoch).
    pub until_ns: Option<u64>,
}

impl EventFilter {
    /// Whether nothing is filtered.
    pub fn is_empty(&self) -> bool {
        self.account.is_none()
            && self.kind.is_none()
            && self.result.is_none()
            && self.since_ns.is_none()
            && self.until_ns.is_none()
    }

    /// Whether the event frame passes. A frame that is not an event never does.
    pub fn matches(&self, frame: &[u8]) -> bool {
        let (kind, timestamp, result, accounts) = match Frame::decode(frame) {
            Ok((Frame::TransferEvent(e), _)) => (
                EventKind::Transfer,
                e.timestamp_ns.get(),
                e.result.get(),
                [e.debit_account_id.get(), e.credit_account_id.get()],
            ),
            Ok((Frame::AccountEvent(e), _)) => {
                (EventKind::Account, e.timestamp_ns.get(), e.result.get(), [e.id.get(), e.id.get()])
            }
            // An expiry always applies: it counts as accepted.
            Ok((Frame::PendingExpired(e), _)) => (
                EventKind::Expired,
                e.timestamp_ns.get(),
                ResultCode::Ok.to_wire(),
                [e.debit_account_id.get(), e.credit_account_id.get()],
            ),
            _ => return false,
        };
        let result = ResultCode::from_wire(result).ok();
        self.kind.is_none_or(|wanted| wanted == kind)
            && self.account.is_none_or(|id| accounts.contains(&id))
            && self.since_ns.is_none_or(|since| timestamp >= since)
            && self.until_ns.is_none_or(|until| timestamp < until)
            && self.result.is_none_or(|wanted| match (wanted, result) {
                (ResultFilter::Accepted, Some(code)) => matches!(code, ResultCode::Ok | ResultCode::Exists),
                (ResultFilter::Rejected, Some(code)) => !matches!(code, ResultCode::Ok | ResultCode::Exists),
                (ResultFilter::Code(wanted), Some(code)) => wanted == code,
                (_, None) => false,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledgerbus_codec::messages::TransferEvent;
    use ledgerbus_codec::{encode, Id128, Message};

    fn event(debit: u128, result: ResultCode, timestamp_ns: u64) -> Vec<u8> {
        let event = TransferEvent {
            sequence: 1.into(),
            timestamp_ns: timestamp_ns.into(),
            id: Id128::from(9u128),
            debit_account_id: Id128::from(debit),
            credit_account_id: Id128::from(2u128),
            amount: 5.into(),
            ledger: 1.into(),
            code: 1.into(),
            flags: 0.into(),
            result: result.to_wire().into(),
            reserved: [0; 6],
            ..Default::default()
        };
        let mut frame = vec![0u8; TransferEvent::FRAME_SIZE];
        encode(&event, &mut frame).unwrap();
        frame
    }

    #[test]
    fn an_expiry_is_its_own_kind_touches_both_accounts_and_counts_as_accepted() {
        let expired = ledgerbus_codec::messages::PendingExpired {
            sequence: 3.into(),
            timestamp_ns: 5.into(),
            pending_id: Id128::from(9u128),
            debit_account_id: Id128::from(1u128),
            credit_account_id: Id128::from(2u128),
            amount: 5.into(),
            ledger: 1.into(),
            code: 1.into(),
            ..Default::default()
        };
        let mut frame = vec![0u8; ledgerbus_codec::messages::PendingExpired::FRAME_SIZE];
        encode(&expired, &mut frame).unwrap();
        let matches = |f: EventFilter| f.matches(&frame);
        assert!(matches(EventFilter { kind: Some(EventKind::Expired), ..Default::default() }));
        assert!(!matches(EventFilter { kind: Some(EventKind::Transfer), ..Default::default() }));
        assert!(matches(EventFilter { account: Some(2), ..Default::default() }));
        assert!(matches(EventFilter { result: Some("accepted".parse().unwrap()), ..Default::default() }));
    }

    #[test]
    fn every_condition_must_hold() {
        let ok = event(1, ResultCode::Ok, 2_000_000_000);
        let poor = event(1, ResultCode::InsufficientFunds, 3_000_000_000);
        let filter = |f: EventFilter| (f.matches(&ok), f.matches(&poor));
        assert_eq!(filter(EventFilter::default()), (true, true));
        assert_eq!(filter(EventFilter { account: Some(2), ..Default::default() }), (true, true));
        assert_eq!(filter(EventFilter { account: Some(3), ..Default::default() }), (false, false));
        assert_eq!(
            filter(EventFilter { kind: Some(EventKind::Account), ..Default::default() }),
            (false, false)
        );
        let rejected = "rejected".parse().unwrap();
        assert_eq!(filter(EventFilter { result: Some(rejected), ..Default::default() }), (false, true));
        let code = "insufficient_funds".parse().unwrap();
        assert_eq!(filter(EventFilter { result: Some(code), ..Default::default() }), (false, true));
        assert_eq!(
            filter(EventFilter { since_ns: Some(2_500_000_000), ..Default::default() }),
            (false, true)
        );
        assert_eq!(
            filter(EventFilter { until_ns: Some(2_500_000_000), ..Default::default() }),
            (true, false)
        );
        assert!(!EventFilter::default().matches(&[0xEE; 20]), "garbage is no event");
        assert!("nonsense".parse::<ResultFilter>().is_err());
        assert_eq!(parse_time("1.5").unwrap(), 1_500_000_000);
        assert_eq!(parse_time("1970-01-01T00:00:02Z").unwrap(), 2_000_000_000);
        assert!(parse_time("yesterday-ish").is_err());
    }
}
