//! Golden business-rule test (`tests/golden.txt`) and property tests of the
//! ledger's invariants over random command streams.

use ledgerbus_codec::messages::{CreateAccount, Transfer};
use ledgerbus_codec::{account_flags, transfer_flags, ResultCode};
use ledgerbus_ledger::{Ledger, PendingState};
use proptest::prelude::*;

const SECOND: u64 = 1_000_000_000;

fn account(id: u128, ledger: u32, code: u16, flags: u16) -> CreateAccount {
    CreateAccount {
        id: id.into(),
        ledger: ledger.into(),
        code: code.into(),
        flags: flags.into(),
        ..Default::default()
    }
}

fn transfer(
    id: u128,
    debit: u128,
    credit: u128,
    amount: u64,
    ledger: u32,
    code: u16,
    flags: u16,
) -> Transfer {
    Transfer {
        id: id.into(),
        debit_account_id: debit.into(),
        credit_account_id: credit.into(),
        amount: amount.into(),
        ledger: ledger.into(),
        code: code.into(),
        flags: flags.into(),
        ..Default::default()
    }
}

fn code_named(name: &str) -> ResultCode {
    ResultCode::ALL.iter().find(|(_, n)| *n == name).unwrap_or_else(|| panic!("no result code {name}")).0
}

/// Account flag words of the golden file.
fn account_flag(word: &str) -> Option<u16> {
    Some(match word {
        "neg" => account_flags::ALLOW_NEGATIVE,
        "dmnec" => account_flags::DEBITS_MUST_NOT_EXCEED_CREDITS,
        "cmned" => account_flags::CREDITS_MUST_NOT_EXCEED_DEBITS,
        "history" => account_flags::HISTORY,
        "closed" => account_flags::CLOSED,
        "reserved" => 1 << 15,
        _ => return None,
    })
}

/// Applies one transfer option word of the golden file to `t`.
fn transfer_option(t: &mut Transfer, word: &str) -> bool {
    let flag = match word {
        "linked" => transfer_flags::LINKED,
        "pending" => transfer_flags::PENDING,
        "post" => transfer_flags::POST_PENDING,
        "void" => transfer_flags::VOID_PENDING,
        "bd" => transfer_flags::BALANCING_DEBIT,
        "bc" => transfer_flags::BALANCING_CREDIT,
        "close_debit" => transfer_flags::CLOSING_DEBIT,
        "close_credit" => transfer_flags::CLOSING_CREDIT,
        "reserved" => 1 << 15,
        _ => {
            let Some((name, value)) = word.split_once('=') else { return false };
            let value: u128 = value.parse().expect("a number after =");
            match name {
                "pid" => t.pending_id = value.into(),
                "timeout" => t.timeout = (value as u32).into(),
                "ud128" => t.user_data_128 = value.into(),
                _ => return false,
            }
            return true;
        }
    };
    t.flags = (t.flags.get() | flag).into();
    true
}

#[test]
fn golden_rules() {
    let text = include_str!("golden.txt");
    let mut ledger = Ledger::new();
    let mut now = SECOND;
    let mut chain: Vec<(Transfer, ResultCode, usize)> = Vec::new();
    let mut codes_seen = std::collections::BTreeSet::new();
    for (number, line) in text.lines().enumerate().map(|(n, l)| (n + 1, l.trim())) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (command, expected) = match line.split_once("=>") {
            Some((command, expected)) => (command.trim(), Some(code_named(expected.trim()))),
            None => (line, None),
        };
        codes_seen.extend(expected);
        let words: Vec<&str> = command.split_whitespace().collect();
        let num = |i: usize| words[i].parse::<u128>().unwrap_or_else(|_| panic!("line {number}: bad number"));
        match words[0] {
            "A" => {
                let flags = words[4..]
                    .iter()
                    .map(|w| account_flag(w).unwrap_or_else(|| panic!("line {number}: unknown flag {w}")))
                    .fold(0, |a, b| a | b);
                now += 1;
                let got = ledger.create_account(&account(num(1), num(2) as u32, num(3) as u16, flags), now);
                assert_eq!(got, expected.unwrap(), "line {number}: {line}");
            }
            "T" => {
                let mut t = transfer(num(1), num(2), num(3), num(4) as u64, num(5) as u32, num(6) as u16, 0);
                for word in &words[7..] {
                    assert!(transfer_option(&mut t, word), "line {number}: unknown option {word}");
                }
                let linked = t.is_linked();
                chain.push((t, expected.unwrap(), number));
                let last_is_open_at_end =
                    linked && !text.lines().skip(number).any(|l| l.trim_start().starts_with('T'));
                if !linked || last_is_open_at_end {
                    let mut commands: Vec<Transfer> = chain.iter().map(|c| c.0).collect();
                    let stamps: Vec<u64> = commands
                        .iter()
                        .map(|_| {
                            now += 1;
                            now
                        })
                        .collect();
                    let mut results = vec![ResultCode::Ok; commands.len()];
                    if commands.len() == 1 {
                        results[0] = ledger.transfer(&mut commands[0], stamps[0]);
                    } else {
                        ledger.transfer_chain(&mut commands, &stamps, &mut results);
                    }
                    for ((_, want, at), got) in chain.iter().zip(&results) {
                        assert_eq!(got, want, "line {at}");
                    }
                    chain.clear();
                }
            }
            // `at S`: the clock moves to S seconds; pending transfers due expire.
            "at" => {
                now = now.max(num(1) as u64 * SECOND);
                while let Some((deadline, id)) = ledger.next_expiry() {
                    if deadline > now {
                        break;
                    }
                    now += 1;
                    ledger.expire(id, now).unwrap();
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
            "reserved" => {
                let found = ledger.account(num(1)).unwrap_or_else(|| panic!("line {number}: no account"));
                assert_eq!(
                    (u128::from(found.debits_pending), u128::from(found.credits_pending)),
                    (num(2), num(3)),
                    "line {number}: {line}"
                );
            }
            "closed" | "open" => {
                let found = ledger.account(num(1)).unwrap_or_else(|| panic!("line {number}: no account"));
                assert_eq!(found.is_closed(), words[0] == "closed", "line {number}: {line}");
            }
            "state" => {
                let found = ledger.pending(num(1)).unwrap_or_else(|| panic!("line {number}: not pending"));
                assert_eq!(found.state.name(), words[2], "line {number}: {line}");
            }
            other => panic!("line {number}: unknown command {other}"),
        }
    }
    assert!(chain.is_empty(), "golden file ends inside a chain");
    let missing: Vec<&str> = ResultCode::ALL
        .iter()
        .filter(|(code, _)| !codes_seen.contains(code) && *code != ResultCode::Busy)
        .map(|(_, name)| *name)
        .collect();
    assert!(missing.is_empty(), "the golden file shows no command getting {missing:?}");
}

/// A random command: account creation, a single transfer, a linked chain, or time
/// passing (pending transfers expire).
#[derive(Debug, Clone)]
enum Command {
    Account(u128, u32, u16),
    Transfer(Vec<Leg>),
    Wait(u64),
}

/// One transfer of a random command.
#[derive(Debug, Clone)]
struct Leg {
    id: u128,
    debit: u128,
    credit: u128,
    amount: u64,
    flags: u16,
    pending_id: u128,
    timeout: u32,
}

fn command() -> impl Strategy<Value = Command> {
    // Few ids and ledgers so that collisions, retries and mismatches are common.
    let id = 1u128..12;
    let amount = prop_oneof![1u64..50, Just(0u64), Just(u64::MAX / 2)];
    let flags = prop_oneof![
        3 => Just(0u16),
        2 => Just(transfer_flags::PENDING),
        2 => Just(transfer_flags::POST_PENDING),
        1 => Just(transfer_flags::VOID_PENDING),
        1 => Just(transfer_flags::BALANCING_DEBIT),
        1 => Just(transfer_flags::BALANCING_CREDIT),
        1 => Just(transfer_flags::PENDING | transfer_flags::CLOSING_DEBIT),
    ];
    let leg = (1u128..40, id.clone(), id.clone(), amount, flags, 1u128..40, prop_oneof![Just(0u32), 1u32..5])
        .prop_map(|(id, debit, credit, amount, flags, pending_id, timeout)| {
            let resolving = flags & (transfer_flags::POST_PENDING | transfer_flags::VOID_PENDING) != 0;
            Leg {
                id,
                // A post or void mostly leaves accounts and amount to its pending transfer.
                debit: if resolving { 0 } else { debit },
                credit: if resolving { 0 } else { credit },
                amount: if resolving { amount % 3 * 5 } else { amount },
                flags,
                pending_id: if resolving { pending_id } else { 0 },
                timeout: if flags & transfer_flags::PENDING != 0 { timeout } else { 0 },
            }
        });
    let account_flags = prop_oneof![
        Just(0u16),
        Just(account_flags::ALLOW_NEGATIVE),
        Just(account_flags::CREDITS_MUST_NOT_EXCEED_DEBITS),
        Just(account_flags::DEBITS_MUST_NOT_EXCEED_CREDITS),
    ];
    prop_oneof![
        2 => (id, 1u32..3, account_flags).prop_map(|(id, ledger, flags)| Command::Account(id, ledger, flags)),
        5 => proptest::collection::vec(leg, 1..4).prop_map(Command::Transfer),
        1 => (1u64..4).prop_map(Command::Wait),
    ]
}

/// What a follower applies: every applied transfer as resolved, every expiry.
#[derive(Debug, Clone)]
enum Event {
    Account(CreateAccount, u64),
    Transfer(Transfer, u64),
    Expired(u128, u64),
}

fn run(ledger: &mut Ledger, commands: &[Command], log: &mut Vec<Event>) -> Vec<ResultCode> {
    let mut all = Vec::new();
    let mut now = SECOND;
    for command in commands {
        match command {
            Command::Account(id, ledger_code, flags) => {
                now += 1;
                let create = account(*id, *ledger_code, 1, *flags);
                let result = ledger.create_account(&create, now);
                if result == ResultCode::Ok {
                    log.push(Event::Account(create, now));
                }
                all.push(result);
            }
            Command::Transfer(legs) => {
                let mut chain: Vec<Transfer> = legs
                    .iter()
                    .enumerate()
                    .map(|(i, leg)| {
                        let linked = if i + 1 < legs.len() { transfer_flags::LINKED } else { 0 };
                        let mut t =
                            transfer(leg.id, leg.debit, leg.credit, leg.amount, 1, 1, leg.flags | linked);
                        t.pending_id = leg.pending_id.into();
                        t.timeout = leg.timeout.into();
                        t
                    })
                    .collect();
                let stamps: Vec<u64> = chain
                    .iter()
                    .map(|_| {
                        now += 1;
                        now
                    })
                    .collect();
                let before = ledger.state_digest();
                let mut results = vec![ResultCode::Ok; chain.len()];
                ledger.transfer_chain(&mut chain, &stamps, &mut results);
                if results.iter().any(|r| !r.is_success()) {
                    assert_eq!(
                        ledger.state_digest(),
                        before,
                        "a failed chain changed the state: {results:?}"
                    );
                    assert!(results.iter().all(|r| !r.is_success()), "a chain half-applied: {results:?}");
                }
                for ((t, result), stamp) in chain.iter().zip(&results).zip(&stamps) {
                    if *result == ResultCode::Ok {
                        log.push(Event::Transfer(*t, *stamp));
                    }
                }
                all.extend(results);
            }
            Command::Wait(seconds) => {
                now += seconds * SECOND;
                while let Some((deadline, id)) = ledger.next_expiry() {
                    if deadline > now {
                        break;
                    }
                    now += 1;
                    ledger.expire(id, now).expect("a due pending transfer expires");
                    log.push(Event::Expired(id, now));
                }
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
    let mut debits_pending = 0u128;
    let mut credits_pending = 0u128;
    for (id, account) in ledger.accounts_sorted() {
        debits_pending += u128::from(account.debits_pending);
        credits_pending += u128::from(account.credits_pending);
        let debits = u128::from(account.debits_posted) + u128::from(account.debits_pending);
        let credits = u128::from(account.credits_posted) + u128::from(account.credits_pending);
        if account.limits_debits() {
            assert!(debits <= u128::from(account.credits_posted), "account {id} overdrawn: {account:?}");
        }
        if account.limits_credits() {
            assert!(
                credits <= u128::from(account.debits_posted),
                "account {id} over its debits: {account:?}"
            );
        }
    }
    // Every reservation still held is a pending transfer in state pending, and
    // nothing else is held: a reservation is released exactly once.
    let held: u128 = ledger
        .pendings_sorted()
        .iter()
        .filter(|(_, p)| p.state == PendingState::Pending)
        .map(|(_, p)| u128::from(p.amount))
        .sum();
    assert_eq!(debits_pending, held, "debits pending differ from the pending transfers");
    assert_eq!(credits_pending, held, "credits pending differ from the pending transfers");
}

/// A follower applying the decider's log reaches the decider's balances and
/// pending transfers.
fn follow(log: &[Event]) -> Ledger {
    let mut follower = Ledger::new();
    for event in log {
        match event {
            Event::Account(create, at) => assert_eq!(follower.create_account(create, *at), ResultCode::Ok),
            Event::Transfer(t, at) => follower.post_transfer(t, *at).expect("an applied transfer applies"),
            Event::Expired(id, at) => {
                follower.expire(*id, *at).expect("an expiry applies");
            }
        }
    }
    follower
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_and_replay_is_deterministic(commands in proptest::collection::vec(command(), 1..120)) {
        let mut first = Ledger::new();
        let mut log = Vec::new();
        let results = run(&mut first, &commands, &mut log);
        let mut second = Ledger::new();
        let replayed = run(&mut second, &commands, &mut Vec::new());
        prop_assert_eq!(results, replayed);
        prop_assert_eq!(first.state_digest(), second.state_digest());
        let follower = follow(&log);
        prop_assert_eq!(follower.accounts_sorted(), first.accounts_sorted());
        prop_assert_eq!(follower.pendings_sorted(), first.pendings_sorted());
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
