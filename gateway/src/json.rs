//! JSON at the edge: request bodies to commands, with a 400 message that names the
//! field for anything malformed, and results to JSON. Nothing malformed ever reaches
//! the sequencer.

use ledgerbus_codec::messages::{CreateAccount, Transfer};
use ledgerbus_codec::{account_flags, transfer_flags, ResultCode};
use serde_json::{json, Map, Value};

/// Largest array accepted in one request.
pub const BATCH_MAX: usize = 8_190;

/// A malformed request: the offending field (`param`, as a path like
/// `[1].debit_account_id`, or `body`) and a message that names it too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest {
    /// The field, or `body` for the request as a whole.
    pub param: String,
    /// What is wrong, for a person.
    pub message: String,
}

fn bad(path: &str, message: impl std::fmt::Display) -> BadRequest {
    BadRequest { param: path.to_string(), message: format!("{path}: {message}") }
}

/// The body of every error answer, for machines and people alike (Stripe's shape):
/// `{"error": {"code": "...", "param": "..." or null, "message": "..."}}`.
pub fn error_body(code: &str, param: Option<&str>, message: &str) -> Value {
    json!({ "error": { "code": code, "param": param, "message": message } })
}

/// The objects of a body that is one object or an array of objects.
pub fn items(body: &[u8]) -> Result<(Vec<Map<String, Value>>, bool), BadRequest> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad("body", format!("not valid JSON: {e}")))?;
    match value {
        Value::Object(object) => Ok((vec![object], false)),
        Value::Array(array) => {
            if array.is_empty() {
                return Err(bad("body", "the array is empty"));
            }
            if array.len() > BATCH_MAX {
                return Err(bad("body", format!("at most {BATCH_MAX} items per request")));
            }
            let mut objects = Vec::with_capacity(array.len());
            for (index, item) in array.into_iter().enumerate() {
                match item {
                    Value::Object(object) => objects.push(object),
                    _ => return Err(bad(&format!("[{index}]"), "must be an object")),
                }
            }
            Ok((objects, true))
        }
        _ => Err(bad("body", "must be an object or an array of objects")),
    }
}

fn check_fields(object: &Map<String, Value>, path: &str, allowed: &[&str]) -> Result<(), BadRequest> {
    for key in object.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(bad(&format!("{path}{key}"), "unknown field"));
        }
    }
    Ok(())
}

fn id_field(object: &Map<String, Value>, path: &str, name: &str) -> Result<u128, BadRequest> {
    let field = format!("{path}{name}");
    match object.get(name) {
        None => Err(bad(&field, "is required")),
        Some(Value::String(text)) => match text.parse::<u128>() {
            Ok(0) => Err(bad(&field, "must not be zero")),
            Ok(id) if text.starts_with('+') => {
                Err(bad(&field, format!("`{id}` must be plain decimal digits")))
            }
            Ok(id) => Ok(id),
            Err(_) => Err(bad(&field, "must be a u128 as a decimal string")),
        },
        Some(_) => Err(bad(&field, "must be a u128 as a decimal string (JSON numbers lose precision)")),
    }
}

fn unsigned_field(
    object: &Map<String, Value>,
    path: &str,
    name: &str,
    max: u64,
    allow_string: bool,
) -> Result<u64, BadRequest> {
    let field = format!("{path}{name}");
    let value = match object.get(name) {
        None => return Err(bad(&field, "is required")),
        Some(Value::Number(number)) => {
            number.as_u64().ok_or_else(|| bad(&field, format!("must be an integer in 0..={max}")))?
        }
        Some(Value::String(text)) if allow_string => {
            text.parse::<u64>().map_err(|_| bad(&field, "must be a u64 as a number or decimal string"))?
        }
        Some(_) => return Err(bad(&field, format!("must be an integer in 0..={max}"))),
    };
    if value > max {
        return Err(bad(&field, format!("{value} is out of range 0..={max}")));
    }
    Ok(value)
}

fn bool_field(object: &Map<String, Value>, path: &str, name: &str) -> Result<bool, BadRequest> {
    match object.get(name) {
        None => Ok(false),
        Some(Value::Bool(value)) => Ok(*value),
        Some(_) => Err(bad(&format!("{path}{name}"), "must be true or false")),
    }
}

/// An optional u128 given as a decimal string; 0 when absent (zero allowed).
fn optional_u128_field(object: &Map<String, Value>, path: &str, name: &str) -> Result<u128, BadRequest> {
    match object.get(name) {
        None => Ok(0),
        Some(Value::String(text)) if !text.starts_with('+') => text
            .parse::<u128>()
            .map_err(|_| bad(&format!("{path}{name}"), "must be a u128 as a decimal string")),
        Some(_) => Err(bad(
            &format!("{path}{name}"),
            "must be a u128 as a decimal string (JSON numbers lose precision)",
        )),
    }
}

/// An optional id: 0 when absent, else as [`id_field`] (never zero).
fn optional_id_field(object: &Map<String, Value>, path: &str, name: &str) -> Result<u128, BadRequest> {
    if object.contains_key(name) {
        id_field(object, path, name)
    } else {
        Ok(0)
    }
}

/// An optional unsigned number: 0 when absent.
fn optional_unsigned_field(
    object: &Map<String, Value>,
    path: &str,
    name: &str,
    max: u64,
    allow_string: bool,
) -> Result<u64, BadRequest> {
    if object.contains_key(name) {
        unsigned_field(object, path, name, max, allow_string)
    } else {
        Ok(0)
    }
}

/// The flag bits named by the boolean fields in `names` that are true.
fn flag_fields(object: &Map<String, Value>, path: &str, names: &[(&str, u16)]) -> Result<u16, BadRequest> {
    let mut flags = 0;
    for (name, bit) in names {
        if bool_field(object, path, name)? {
            flags |= bit;
        }
    }
    Ok(flags)
}

/// Account flags by their JSON names.
pub const ACCOUNT_FLAG_FIELDS: &[(&str, u16)] = &account_flags::NAMES;

/// Transfer flags by their JSON names.
pub const TRANSFER_FLAG_FIELDS: &[(&str, u16)] = &transfer_flags::NAMES;

fn prefix(index: usize, is_array: bool) -> String {
    if is_array {
        format!("[{index}].")
    } else {
        String::new()
    }
}

/// Parses `POST /accounts` items.
pub fn accounts(objects: &[Map<String, Value>], is_array: bool) -> Result<Vec<CreateAccount>, BadRequest> {
    let mut commands = Vec::with_capacity(objects.len());
    for (index, object) in objects.iter().enumerate() {
        let path = prefix(index, is_array);
        let mut allowed = vec!["id", "ledger", "code", "user_data_128", "user_data_64", "user_data_32"];
        allowed.extend(ACCOUNT_FLAG_FIELDS.iter().map(|(name, _)| *name));
        check_fields(object, &path, &allowed)?;
        commands.push(CreateAccount {
            correlation_id: 0.into(),
            id: id_field(object, &path, "id")?.into(),
            ledger: (unsigned_field(object, &path, "ledger", u64::from(u32::MAX), false)? as u32).into(),
            code: (unsigned_field(object, &path, "code", u64::from(u16::MAX), false)? as u16).into(),
            flags: flag_fields(object, &path, ACCOUNT_FLAG_FIELDS)?.into(),
            user_data_128: optional_u128_field(object, &path, "user_data_128")?.into(),
            user_data_64: optional_unsigned_field(object, &path, "user_data_64", u64::MAX, true)?.into(),
            user_data_32:
                (optional_unsigned_field(object, &path, "user_data_32", u64::from(u32::MAX), false)? as u32)
                    .into(),
            reserved: [0; 4],
        });
    }
    Ok(commands)
}

type IdParser = fn(&Map<String, Value>, &str, &str) -> Result<u128, BadRequest>;
type NumberParser = fn(&Map<String, Value>, &str, &str, u64, bool) -> Result<u64, BadRequest>;

/// Parses `POST /transfers` items.
pub fn transfers(objects: &[Map<String, Value>], is_array: bool) -> Result<Vec<Transfer>, BadRequest> {
    let mut commands = Vec::with_capacity(objects.len());
    for (index, object) in objects.iter().enumerate() {
        let path = prefix(index, is_array);
        let mut allowed = vec![
            "id",
            "debit_account_id",
            "credit_account_id",
            "amount",
            "ledger",
            "code",
            "pending_id",
            "timeout",
            "user_data_128",
            "user_data_64",
            "user_data_32",
        ];
        allowed.extend(TRANSFER_FLAG_FIELDS.iter().map(|(name, _)| *name));
        check_fields(object, &path, &allowed)?;
        let flags = flag_fields(object, &path, TRANSFER_FLAG_FIELDS)?;
        // A post or void may leave accounts, amount, ledger and code to its pending
        // transfer; every other transfer must give them.
        let resolving = flags & (transfer_flags::POST_PENDING | transfer_flags::VOID_PENDING) != 0;
        let (account, number): (IdParser, NumberParser) =
            if resolving { (optional_id_field, optional_unsigned_field) } else { (id_field, unsigned_field) };
        commands.push(Transfer {
            correlation_id: 0.into(),
            id: id_field(object, &path, "id")?.into(),
            debit_account_id: account(object, &path, "debit_account_id")?.into(),
            credit_account_id: account(object, &path, "credit_account_id")?.into(),
            amount: number(object, &path, "amount", u64::MAX, true)?.into(),
            ledger: (number(object, &path, "ledger", u64::from(u32::MAX), false)? as u32).into(),
            code: (number(object, &path, "code", u64::from(u16::MAX), false)? as u16).into(),
            flags: flags.into(),
            pending_id: optional_id_field(object, &path, "pending_id")?.into(),
            user_data_128: optional_u128_field(object, &path, "user_data_128")?.into(),
            user_data_64: optional_unsigned_field(object, &path, "user_data_64", u64::MAX, true)?.into(),
            user_data_32:
                (optional_unsigned_field(object, &path, "user_data_32", u64::from(u32::MAX), false)? as u32)
                    .into(),
            timeout: (optional_unsigned_field(object, &path, "timeout", u64::from(u32::MAX), false)? as u32)
                .into(),
        });
    }
    Ok(commands)
}

/// The JSON of one decided command.
pub fn result_json(id: u128, code: ResultCode, sequence: u64, timestamp_ns: u64) -> Value {
    json!({ "id": id.to_string(), "result": code.snake_name(), "sequence": sequence, "timestamp": timestamp_ns })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_transfer(body: &str) -> Result<Transfer, BadRequest> {
        let (objects, is_array) = items(body.as_bytes())?;
        Ok(transfers(&objects, is_array)?[0])
    }

    fn one_account(body: &str) -> Result<CreateAccount, BadRequest> {
        let (objects, is_array) = items(body.as_bytes())?;
        Ok(accounts(&objects, is_array)?[0])
    }

    #[test]
    fn two_phase_fields_parse_and_a_post_may_leave_the_rest_to_its_pending_transfer() {
        let hold = one_transfer(
            r#"{"id":"5","debit_account_id":"1","credit_account_id":"2","amount":10,"ledger":840,"code":1,
                "pending":true,"timeout":60,"user_data_128":"340282366920938463463374607431768211455",
                "user_data_64":"18446744073709551615","user_data_32":7}"#,
        )
        .unwrap();
        assert_eq!(hold.flags.get(), transfer_flags::PENDING);
        assert_eq!(
            (hold.timeout.get(), hold.user_data_128.get(), hold.user_data_64.get()),
            (60, u128::MAX, u64::MAX)
        );
        let post = one_transfer(r#"{"id":"6","pending_id":"5","post":true}"#).unwrap();
        assert_eq!((post.flags.get(), post.pending_id.get()), (transfer_flags::POST_PENDING, 5));
        assert_eq!((post.debit_account_id.get(), post.amount.get(), post.ledger.get()), (0, 0, 0));
        let sweep = one_transfer(
            r#"{"id":"7","debit_account_id":"1","credit_account_id":"2","amount":"99","ledger":840,"code":1,
                "balancing_debit":true,"linked":false}"#,
        )
        .unwrap();
        assert_eq!(sweep.flags.get(), transfer_flags::BALANCING_DEBIT);
        let account = one_account(
            r#"{"id":"1","ledger":840,"code":1,"credits_must_not_exceed_debits":true,"history":true,"user_data_32":3}"#,
        )
        .unwrap();
        assert_eq!(
            account.flags.get(),
            account_flags::CREDITS_MUST_NOT_EXCEED_DEBITS | account_flags::HISTORY
        );
        assert_eq!(account.user_data_32.get(), 3);
    }

    #[test]
    fn malformed_two_phase_fields_name_the_field() {
        let param = |body: &str| one_transfer(body).unwrap_err().param;
        assert_eq!(param(r#"{"id":"6","pending_id":"0","post":true}"#), "pending_id");
        assert_eq!(param(r#"{"id":"6","pending_id":5,"post":true}"#), "pending_id");
        assert_eq!(param(r#"{"id":"6","pending_id":"5","post":1}"#), "post");
        assert_eq!(param(r#"{"id":"6","pending_id":"5","void":true,"timeout":4294967296}"#), "timeout");
        assert_eq!(param(r#"{"id":"6","pending_id":"5","void":true,"user_data_128":"-1"}"#), "user_data_128");
        assert_eq!(
            param(r#"{"id":"6","pending_id":"5","void":true,"user_data_32":4294967296}"#),
            "user_data_32"
        );
        assert_eq!(param(r#"{"id":"6","pending_id":"5","void":true,"expire":true}"#), "expire");
        // Without post or void, accounts, amount, ledger and code are required.
        assert_eq!(param(r#"{"id":"6","pending":true,"amount":5,"ledger":1,"code":1}"#), "debit_account_id");
        let account = |body: &str| one_account(body).unwrap_err().param;
        assert_eq!(account(r#"{"id":"1","ledger":840,"code":1,"history":"yes"}"#), "history");
        assert_eq!(account(r#"{"id":"1","ledger":840,"code":1,"user_data_64":-5}"#), "user_data_64");
    }
}
