//! Events as text lines or JSON objects, for `ledgerbus replay`.

use ledgerbus_codec::{account_flags, transfer_flags, Frame, ResultCode};
use serde_json::{json, Value};

/// Transfer flags by name (as the HTTP API and `--fields` spell them).
const TRANSFER_FLAGS: [(&str, u16); 8] = transfer_flags::NAMES;

/// Account flags by name.
const ACCOUNT_FLAGS: [(&str, u16); 5] = account_flags::NAMES;

/// The names of the flags set in `bits`, each with a leading space.
fn flag_words(bits: u16, names: &[(&str, u16)]) -> String {
    names.iter().filter(|(_, bit)| bits & bit != 0).map(|(name, _)| format!(" {name}")).collect()
}

/// The v2 details of a transfer event worth a human's eye (pending id, timeout,
/// references), each with a leading space; empty for a plain transfer.
fn transfer_details(e: &ledgerbus_codec::messages::TransferEvent) -> String {
    let mut out = String::new();
    if e.pending_id.get() != 0 {
        out += &format!(" pending_id {}", e.pending_id.get());
    }
    if e.timeout.get() != 0 {
        out += &format!(" timeout {}s", e.timeout.get());
    }
    for (name, value) in [
        ("user_data_128", e.user_data_128.get()),
        ("user_data_64", u128::from(e.user_data_64.get())),
        ("user_data_32", u128::from(e.user_data_32.get())),
    ] {
        if value != 0 {
            out += &format!(" {name} {value}");
        }
    }
    out
}

/// The result's JSON name, or `unknown` for a value this version does not define.
fn result_name(result: Result<ResultCode, ledgerbus_codec::DecodeError>) -> &'static str {
    result.map_or("unknown", ResultCode::snake_name)
}

/// Nanoseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (UTC).
pub fn utc(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let nanos = ns % 1_000_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60
    )
}

/// One human-readable line.
pub fn text(frame: &[u8]) -> String {
    match Frame::decode(frame) {
        Ok((Frame::TransferEvent(e), _)) => format!(
            "{:>10} {} transfer {} {} -> {} amount {} ledger {} code {}{}{} => {}",
            e.sequence.get(),
            utc(e.timestamp_ns.get()),
            e.id.get(),
            e.debit_account_id.get(),
            e.credit_account_id.get(),
            e.amount.get(),
            e.ledger.get(),
            e.code.get(),
            flag_words(e.flags.get(), &TRANSFER_FLAGS),
            transfer_details(&e),
            result_name(e.result())
        ),
        Ok((Frame::PendingExpired(e), _)) => format!(
            "{:>10} {} expired {} {} -> {} amount {} ledger {} code {} released",
            e.sequence.get(),
            utc(e.timestamp_ns.get()),
            e.pending_id.get(),
            e.debit_account_id.get(),
            e.credit_account_id.get(),
            e.amount.get(),
            e.ledger.get(),
            e.code.get(),
        ),
        Ok((Frame::AccountEvent(e), _)) => format!(
            "{:>10} {} account {} ledger {} code {}{} => {}",
            e.sequence.get(),
            utc(e.timestamp_ns.get()),
            e.id.get(),
            e.ledger.get(),
            e.code.get(),
            flag_words(e.flags.get(), &ACCOUNT_FLAGS),
            result_name(e.result())
        ),
        Ok((other, _)) => format!("template {} (not an event)", other.template_id()),
        Err(error) => format!("undecodable frame: {error}"),
    }
}

/// One JSON object (ids and amounts as strings, as in the HTTP API).
pub fn json(frame: &[u8]) -> Value {
    match Frame::decode(frame) {
        Ok((Frame::TransferEvent(e), _)) => {
            let mut event = json!({
                "sequence": e.sequence.get(),
                "timestamp": e.timestamp_ns.get(),
                "type": "transfer",
                "id": e.id.get().to_string(),
                "debit_account_id": e.debit_account_id.get().to_string(),
                "credit_account_id": e.credit_account_id.get().to_string(),
                "amount": e.amount.get().to_string(),
                "ledger": e.ledger.get(),
                "code": e.code.get(),
            });
            let object = event.as_object_mut().expect("an object");
            for (name, bit) in TRANSFER_FLAGS {
                object.insert(name.into(), (e.flags.get() & bit != 0).into());
            }
            object.insert("pending_id".into(), e.pending_id.get().to_string().into());
            object.insert("timeout".into(), e.timeout.get().into());
            object.insert("user_data_128".into(), e.user_data_128.get().to_string().into());
            object.insert("user_data_64".into(), e.user_data_64.get().to_string().into());
            object.insert("user_data_32".into(), e.user_data_32.get().into());
            object.insert("result".into(), result_name(e.result()).into());
            event
        }
        Ok((Frame::PendingExpired(e), _)) => json!({
            "sequence": e.sequence.get(),
            "timestamp": e.timestamp_ns.get(),
            "type": "expired",
            "pending_id": e.pending_id.get().to_string(),
            "debit_account_id": e.debit_account_id.get().to_string(),
            "credit_account_id": e.credit_account_id.get().to_string(),
            "amount": e.amount.get().to_string(),
            "ledger": e.ledger.get(),
            "code": e.code.get(),
            "flags": e.flags.get(),
        }),
        Ok((Frame::AccountEvent(e), _)) => {
            let mut event = json!({
                "sequence": e.sequence.get(),
                "timestamp": e.timestamp_ns.get(),
                "type": "account",
                "id": e.id.get().to_string(),
                "ledger": e.ledger.get(),
                "code": e.code.get(),
            });
            let object = event.as_object_mut().expect("an object");
            for (name, bit) in ACCOUNT_FLAGS {
                object.insert(name.into(), (e.flags.get() & bit != 0).into());
            }
            object.insert("user_data_128".into(), e.user_data_128.get().to_string().into());
            object.insert("user_data_64".into(), e.user_data_64.get().to_string().into());
            object.insert("user_data_32".into(), e.user_data_32.get().into());
            object.insert("result".into(), result_name(e.result()).into());
            event
        }
        Ok((other, _)) => json!({ "type": "unknown", "template_id": other.template_id() }),
        Err(error) => json!({ "type": "undecodable", "error": error.to_string() }),
    }
}

/// The fields `--fields` can pick: every key of [`json()`], and `time` (the time stamp
/// in RFC 3339).
pub const FIELDS: [&str; 29] = [
    "sequence",
    "timestamp",
    "time",
    "type",
    "id",
    "debit_account_id",
    "credit_account_id",
    "amount",
    "ledger",
    "code",
    "linked",
    "pending",
    "post",
    "void",
    "balancing_debit",
    "balancing_credit",
    "closing_debit",
    "closing_credit",
    "pending_id",
    "timeout",
    "allow_negative",
    "debits_must_not_exceed_credits",
    "credits_must_not_exceed_debits",
    "history",
    "closed",
    "user_data_128",
    "user_data_64",
    "user_data_32",
    "result",
];

/// The fields to print, in order (`--fields sequence,id,amount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSelection(Vec<&'static str>);

impl std::str::FromStr for FieldSelection {
    type Err = String;

    fn from_str(text: &str) -> Result<FieldSelection, String> {
        let mut fields = Vec::new();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let Some(field) = FIELDS.iter().find(|f| **f == name) else {
                return Err(format!("unknown field `{name}`; the fields are {}", FIELDS.join(", ")));
            };
            fields.push(*field);
        }
        if fields.is_empty() {
            return Err(format!("name at least one field: {}", FIELDS.join(", ")));
        }
        Ok(FieldSelection(fields))
    }
}

impl FieldSelection {
    fn value(&self, event: &Value, field: &str) -> Value {
        match field {
            "time" => event.get("timestamp").and_then(Value::as_u64).map_or(Value::Null, |ns| utc(ns).into()),
            _ => event.get(field).cloned().unwrap_or(Value::Null),
        }
    }

    /// The event as a JSON object of the selected fields only (null where the
    /// event has no such field, such as `amount` of an account).
    pub fn json(&self, frame: &[u8]) -> Value {
        let event = json(frame);
        Value::Object(self.0.iter().map(|field| (field.to_string(), self.value(&event, field))).collect())
    }

    /// The selected fields separated by tabs (`-` where the event has none), for
    /// `cut`, `awk` and spreadsheets.
    pub fn text(&self, frame: &[u8]) -> String {
        let event = json(frame);
        let cells: Vec<String> = self
            .0
            .iter()
            .map(|field| match self.value(&event, field) {
                Value::Null => "-".to_string(),
                Value::String(text) => text,
                other => other.to_string(),
            })
            .collect();
        cells.join("\t")
    }
}

#[cfg(test)]
mod field_tests {
    use super::*;
    use ledgerbus_codec::messages::AccountEvent;
    use ledgerbus_codec::{encode, Message};

    #[test]
    fn fields_select_in_order_and_unknown_names_are_refused() {
        let event = AccountEvent {
            sequence: 7.into(),
            timestamp_ns: 1_000_000_000.into(),
            id: 42u128.into(),
            ledger: 840.into(),
            code: 1.into(),
            flags: 0.into(),
            result: 0.into(),
            reserved: [0; 6],
            ..Default::default()
        };
        let mut frame = vec![0u8; AccountEvent::FRAME_SIZE];
        encode(&event, &mut frame).unwrap();
        let fields: FieldSelection = "id, time,amount".parse().unwrap();
        assert_eq!(fields.text(&frame), "42\t1970-01-01T00:00:01.000000000Z\t-");
        assert_eq!(
            fields.json(&frame).to_string(),
            r#"{"id":"42","time":"1970-01-01T00:00:01.000000000Z","amount":null}"#
        );
        assert!("id,colour".parse::<FieldSelection>().unwrap_err().contains("unknown field `colour`"));
        assert!(",".parse::<FieldSelection>().is_err());
    }
}
