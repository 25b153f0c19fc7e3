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
        check_fields(object, &path, &["id", "ledger", "code", "allow_negative"])?;
        let negative = bool_field(object, &path, "allow_negative")?;
        commands.push(CreateAccount {
            correlation_id: 0.into(),
            id: id_field(object, &path, "id")?.into(),
            ledger: (unsigned_field(object, &path, "ledger", u64::from(u32::MAX), false)? as u32).into(),
            code: (unsigned_field(object, &path, "code", u64::from(u16::MAX), false)? as u16).into(),
            flags: (if negative { account_flags::ALLOW_NEGATIVE } else { 0 }).into(),
            ..Default::default()
        });
    }
    Ok(commands)
}

/// Parses `POST /transfers` items.
pub fn transfers(objects: &[Map<String, Value>], is_array: bool) -> Result<Vec<Transfer>, BadRequest> {
    let mut commands = Vec::with_capacity(objects.len());
    for (index, object) in objects.iter().enumerate() {
        let path = prefix(index, is_array);
        check_fields(
            object,
            &path,
            &["id", "debit_account_id", "credit_account_id", "amount", "ledger", "code", "linked"],
        )?;
        let linked = bool_field(object, &path, "linked")?;
        commands.push(Transfer {
            correlation_id: 0.into(),
            id: id_field(object, &path, "id")?.into(),
            debit_account_id: id_field(object, &path, "debit_account_id")?.into(),
            credit_account_id: id_field(object, &path, "credit_account_id")?.into(),
            amount: unsigned_field(object, &path, "amount", u64::MAX, true)?.into(),
            ledger: (unsigned_field(object, &path, "ledger", u64::from(u32::MAX), false)? as u32).into(),
            code: (unsigned_field(object, &path, "code", u64::from(u16::MAX), false)? as u16).into(),
            flags: (if linked { transfer_flags::LINKED } else { 0 }).into(),
            ..Default::default()
        });
    }
    Ok(commands)
}

/// The JSON of one decided command.
pub fn result_json(id: u128, code: ResultCode, sequence: u64, timestamp_ns: u64) -> Value {
    json!({ "id": id.to_string(), "result": code.snake_name(), "sequence": sequence, "timestamp": timestamp_ns })
}
