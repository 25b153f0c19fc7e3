//! What a client needs to reconcile an idempotent retry. The sequencer decides
//! `exists` / `exists_with_different_fields` from a fingerprint of the original's
//! fields, so its answer carries only the retry's own decision; the original (its
//! sequence, time stamp and fields) lives in the read model. For those answers the
//! gateway looks the original up there, and adds it, with the first field that
//! differs, to the answer:
//!
//! ```json
//! {"id": "5001", "result": "exists_with_different_fields", "sequence": 912, "timestamp": …,
//!  "original": {"sequence": 17, "timestamp": …}, "field": "amount"}
//! ```
//!
//! `sequence` and `timestamp` stay those of this decision's event, as in every answer.
//! If the read model cannot say within [`LOOKUP_BUDGET`] (it is down, or far behind),
//! `original` is `null`: the decision stands, and `GET /transfers/{id}` says the rest
//! later.

use std::time::Duration;

use ledgerbus_codec::messages::{CreateAccount, Transfer};
use ledgerbus_codec::{account_flags, transfer_flags, ResultCode};
use serde_json::{json, Value};

use crate::http::AppState;

/// How long one request may spend looking originals up, all of them together; what
/// is not found by then is answered with `original: null`.
pub const LOOKUP_BUDGET: Duration = Duration::from_secs(2);

/// A command whose answer may need its original.
pub trait Retried {
    /// The read model's path for the original (`/transfers/{id}`).
    fn path(&self) -> String;
    /// The first field in which this command differs from `original` (the read
    /// model's JSON of it), in the order the API documents the fields.
    fn differing_field(&self, original: &Value) -> Option<&'static str>;
}

impl Retried for Transfer {
    fn path(&self) -> String {
        format!("/transfers/{}", self.id.get())
    }

    fn differing_field(&self, original: &Value) -> Option<&'static str> {
        let flags = self.flags.get();
        let resolving = flags & (transfer_flags::POST_PENDING | transfer_flags::VOID_PENDING) != 0;
        let balancing = flags & (transfer_flags::BALANCING_DEBIT | transfer_flags::BALANCING_CREDIT) != 0;
        let mut fields: Vec<(&'static str, Value)> = Vec::with_capacity(20);
        // A post or void that left a field zero took it from its pending transfer.
        let mut given = |name: &'static str, value: u128, json: Value| {
            if !(resolving && value == 0) {
                fields.push((name, json));
            }
        };
        given(
            "debit_account_id",
            self.debit_account_id.get(),
            self.debit_account_id.get().to_string().into(),
        );
        given(
            "credit_account_id",
            self.credit_account_id.get(),
            self.credit_account_id.get().to_string().into(),
        );
        if !balancing {
            given("amount", u128::from(self.amount.get()), self.amount.get().to_string().into());
        }
        given("ledger", u128::from(self.ledger.get()), self.ledger.get().into());
        given("code", u128::from(self.code.get()), self.code.get().into());
        given("user_data_128", self.user_data_128.get(), self.user_data_128.get().to_string().into());
        given(
            "user_data_64",
            u128::from(self.user_data_64.get()),
            self.user_data_64.get().to_string().into(),
        );
        given("user_data_32", u128::from(self.user_data_32.get()), self.user_data_32.get().into());
        for (name, bit) in crate::json::TRANSFER_FLAG_FIELDS {
            fields.push((name, (flags & bit != 0).into()));
        }
        let pending_id = self.pending_id.get();
        fields
            .push(("pending_id", if pending_id == 0 { Value::Null } else { pending_id.to_string().into() }));
        fields.push(("timeout", self.timeout.get().into()));
        first_difference(&fields, original)
    }
}

impl Retried for CreateAccount {
    fn path(&self) -> String {
        format!("/accounts/{}", self.id.get())
    }

    fn differing_field(&self, original: &Value) -> Option<&'static str> {
        let mut fields: Vec<(&'static str, Value)> =
            vec![("ledger", self.ledger.get().into()), ("code", self.code.get().into())];
        for (name, bit) in crate::json::ACCOUNT_FLAG_FIELDS {
            // Closing is state, not a field of the creation.
            if *bit != account_flags::CLOSED {
                fields.push((name, (self.flags.get() & bit != 0).into()));
            }
        }
        fields.push(("user_data_128", self.user_data_128.get().to_string().into()));
        fields.push(("user_data_64", self.user_data_64.get().to_string().into()));
        fields.push(("user_data_32", self.user_data_32.get().into()));
        first_difference(&fields, original)
    }
}

fn first_difference(fields: &[(&'static str, Value)], original: &Value) -> Option<&'static str> {
    fields.iter().find(|(name, value)| original.get(name) != Some(value)).map(|(name, _)| *name)
}

/// Adds `original` (and `field` where the fields differ) to each `exists` answer in
/// `results`, which answer `commands` in order.
pub async fn add_originals<C: Retried>(
    state: &AppState,
    commands: &[C],
    results: &mut [(Value, axum::http::StatusCode)],
) {
    let deadline = tokio::time::Instant::now() + LOOKUP_BUDGET;
    for (command, (answer, _)) in commands.iter().zip(results.iter_mut()) {
        let code = answer.get("result").and_then(Value::as_str);
        let differs = code == Some(ResultCode::ExistsWithDifferentFields.snake_name());
        if !differs && code != Some(ResultCode::Exists.snake_name()) {
            continue;
        }
        // The retry's own event comes after the original: a read model that has
        // applied it has applied the original.
        let decided = answer.get("sequence").and_then(Value::as_u64).unwrap_or(0);
        let original = match tokio::time::timeout_at(deadline, lookup(state, &command.path(), decided)).await
        {
            Ok(Some(original)) => original,
            _ => {
                answer["original"] = Value::Null;
                continue;
            }
        };
        answer["original"] = json!({
            "sequence": original.get("sequence").cloned().unwrap_or(Value::Null),
            "timestamp": original.get("timestamp").cloned().unwrap_or(Value::Null),
        });
        if differs {
            answer["field"] = command.differing_field(&original).map_or(Value::Null, Value::from);
        }
    }
}

/// The read model's JSON at `path` once it has applied `min_sequence`, or `None`.
async fn lookup(state: &AppState, path: &str, min_sequence: u64) -> Option<Value> {
    match state.query.get(path, min_sequence).await {
        crate::query::Looked::Found(json) => Some(json),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(amount: u64, flags: u16) -> Transfer {
        Transfer {
            correlation_id: 0.into(),
            id: 5001u128.into(),
            debit_account_id: 1u128.into(),
            credit_account_id: 2u128.into(),
            amount: amount.into(),
            ledger: 840.into(),
            code: 1.into(),
            flags: flags.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_first_differing_field_is_named_in_documented_order() {
        let original = json!({"id": "5001", "debit_account_id": "1", "credit_account_id": "2",
            "amount": "100", "ledger": 840, "code": 1, "linked": false, "pending": false, "post": false,
            "void": false, "balancing_debit": false, "balancing_credit": false, "closing_debit": false,
            "closing_credit": false, "pending_id": null, "timeout": 0, "user_data_128": "0",
            "user_data_64": "0", "user_data_32": 0, "sequence": 17, "timestamp": 5});
        assert_eq!(transfer(100, 0).differing_field(&original), None);
        assert_eq!(transfer(101, 0).differing_field(&original), Some("amount"));
        assert_eq!(
            transfer(100, ledgerbus_codec::transfer_flags::LINKED).differing_field(&original),
            Some("linked")
        );
        // A post that left accounts and amount to its pending transfer matches the
        // resolved original; one that names another amount does not.
        let mut resolved = original.clone();
        resolved["post"] = true.into();
        resolved["pending_id"] = "9".into();
        let post = |amount: u64| Transfer {
            id: 5001u128.into(),
            amount: amount.into(),
            flags: ledgerbus_codec::transfer_flags::POST_PENDING.into(),
            pending_id: 9u128.into(),
            ..Default::default()
        };
        assert_eq!(post(0).differing_field(&resolved), None);
        assert_eq!(post(50).differing_field(&resolved), Some("amount"));
        let account = CreateAccount {
            correlation_id: 0.into(),
            id: 1u128.into(),
            ledger: 978.into(),
            code: 1.into(),
            flags: 0.into(),
            ..Default::default()
        };
        let original = json!({"id": "1", "ledger": 840, "code": 1, "allow_negative": true});
        assert_eq!(account.differing_field(&original), Some("ledger"));
    }
}
