//! Golden business-rule test (`tests/golden.txt`) and property tests of the
//! ledger's invariants over random command streams.

use ledgerbus_codec::messages::{CreateAccount, Transfer};
use ledgerbus_codec::{account_flags, transfer_flags, ResultCode};
use ledgerbus_ledger::Ledger;
use proptest::prelude::*;

fn account(id: u128, ledger: u32, code: u16, negative: bool) -> CreateAccount {
    CreateAccount {
        correlation_id: 0.into(),
        id: id.into(),
        ledger: ledger.into(),
        code: code.into(),
        flags: (if negative { account_flags::ALLOW_NEGATIVE } else { 0 }).into(),
    }
}

fn transfer(
    id: u128,
    debit: u128,
    credit: u128,
    amount: u64,
    ledger: u32,
    code: u16,
    linked: bool,
) -> Transfer {
    Transfer {
        correlation_id: 0.into(),
        id: id.into(),
        debit_account_id: debit.into(),
        credit_account_id: credit.into(),
        amount: amount.into(),
        ledger: ledger.into(),
        code: code.into(),
        flags: (if linked { transfer_flags::LINKED } else { 0 }).into(),
    }
}

fn code_named(name: &str) -> ResultCode {
    ResultCode::ALL.iter().find(|(_, n)| *n == name).unwrap_or_else(|| panic!("no result code {name}")).0
}

#[test]
fn golden_rules() {
    let text = include_str!("golden.txt");
    let mut ledger = Ledger::new();
    let mut chain: Vec<(Transfer, ResultCode, usize)> = Vec::new();
    for (number, line) in text.lines().enumerate().map(|(n, l)| (n + 1, l.trim())) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (command, expected) = match line.split_once("=>") {
            Some((command, expected)) => (command.trim(), Some(code_named(expected.trim()))),
            None => (line, None),
        };
        let words: Vec<&str> = command.split_whitespace().collect();
        let num = |i: usize| words[i].parse::<u128>().unwrap_or_else(|_| panic!("line {number}: bad number"));
        match words[0] {
            "A" => {
                let got = ledger.create_account(
                    &account(num(1), num(2) as u32, num(3) as u16, words.get(4) == Some(&"neg")),
                    number as u64,
                );
                assert_eq!(got, expected.unwrap(), "line {number}: {line}");
            }
            "T" => {
                let linked = words.get(7) == Some(&"linked");
                let t = transfer(num(1), num(2), num(3), num(4) as u64, num(5) as u32, num(6) as u16, linked);
                chain.push((t, expected.unwrap(), number));
                let last_is_open_at_end =
                    linked && !text.lines().skip(number).any(|l| l.trim_start().starts_with('T'));
                if !linked || last_is_open_at_end {
                    let commands: Vec<Transfer> = chain.iter().map(|c| c.0).collect();
                    let mut results = vec![ResultCode::Ok; commands.len()];
                    if commands.len() == 1 {
                        results[0] = ledger.transfer(&commands[0]);
                    } else {
                        ledger.transfer_chain(&commands, &mut results);
                    }
                    for ((_, want, at), got) in chain.iter().zip(&results) {
                        assert_eq!(got, want, "line {at}");
                    }
                    chain.clear();
                }
            }
            "balance" => {
                let found = ledger.account(num(1)).unwrap_or_else(|| panic!("line {number}: no account"));
                assert_eq!(
                    (u128::from(found.debits_posted), u128::from(found.credits_posted)),
                    (num(2), num(3)),
                    "line {number}: {line}"
                );
            }
            other => panic!("line {number}: unknown command {other}"),
        }
    }
    assert!(chain.is_empty(), "golden file ends inside a chain");
}

/// A random command: account creation, a single transfer, or a linked chain.
#[derive(Debug, Clone)]
enum Command {
    Account(u128, u32, bool),
    Transfer(Vec<(u128, u128, u128, u64)>),
}

fn command() -> impl Strategy<Value = Command> {
    // Few ids and ledgers so that collisions, retries and mismatches are common.
    let id = 1u128..12;
    let amount = prop_oneof![1u64..50, Just(0u64), Just(u64::MAX / 2)];
    let leg = (1u128..40, id.clone(), id.clone(), amount);
    prop_oneof![
        (id, 1u32..3, any::<bool>()).prop_map(|(id, ledger, neg)| Command::Account(id, ledger, neg)),
        proptest::collection::vec(leg, 1..4).prop_map(Command::Transfer),
    ]
}

fn run(ledger: &mut Ledger, commands: &[Command]) -> Vec<ResultCode> {
    let mut all = Vec::new();
    for (index, command) in commands.iter().enumerate() {
        match command {
            Command::Account(id, ledger_code, neg) => {
                all.push(ledger.create_account(&account(*id, *ledger_code, 1, *neg), index as u64));
            }
            Command::Transfer(legs) => {
                let chain: Vec<Transfer> = legs
                    .iter()
                    .enumerate()
                    .map(|(i, (id, debit, credit, amount))| {
                        transfer(*id, *debit, *credit, *amount, 1, 1, i + 1 < legs.len())
                    })
                    .collect();
                let before = ledger.state_digest();
                let mut results = vec![ResultCode::Ok; chain.len()];
                ledger.transfer_chain(&chain, &mut results);
                if results.iter().any(|r| !r.is_success()) {
                    assert_eq!(
                        ledger.state_digest(),
                        before,
                        "a failed chain changed the state: {results:?}"
                    );
                    assert!(results.iter().all(|r| !r.is_success()), "a chain half-applied: {results:?}");
                }
                all.extend(results);
            }
        }
        check_invariants(ledger);
    }
    all
}

fn check_invariants(ledger: &Ledger) {
    for (code, debits, credits) in ledger.totals_by_ledger() {
        assert_eq!(debits, credits, "double entry broken on ledger {code}");
    }
    for (id, account) in ledger.accounts_sorted() {
        if !account.allows_negative() {
            assert!(account.debits_posted <= account.credits_posted, "account {id} overdrawn: {account:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_and_replay_is_deterministic(commands in proptest::collection::vec(command(), 1..120)) {
        let mut first = Ledger::new();
        let results = run(&mut first, &commands);
        let mut second = Ledger::new();
        let replayed = run(&mut second, &commands);
        prop_assert_eq!(results, replayed);
        prop_assert_eq!(first.state_digest(), second.state_digest());
    }
}

/// Capacity (issue 4): 10 million accounts and 100 million transfer ids fit this
/// machine, at most 128 bytes per account and 48 per remembered transfer id.
/// The tables are reserved up front; untouched pages cost nothing until used.
#[test]
fn memory_per_account_and_per_transfer_id() {
    let accounts = 10_000_000;
    let transfers = 100_000_000;
    let ledger = Ledger::with_capacity(accounts, transfers);
    let empty_accounts = Ledger::with_capacity(accounts, 0).memory_bytes();
    let per_account = empty_accounts as f64 / accounts as f64;
    let per_transfer = (ledger.memory_bytes() - empty_accounts) as f64 / transfers as f64;
    println!("{per_account:.1} bytes per account, {per_transfer:.1} bytes per transfer id");
    assert!(per_account <= 128.0, "{per_account} bytes per account");
    assert!(per_transfer <= 48.0, "{per_transfer} bytes per transfer id");
}
