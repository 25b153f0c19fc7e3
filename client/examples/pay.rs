//! Opens two accounts, funds one, and pays from it to the other over a gateway's
//! TCP API, then pays again with the same id to show that a retry is safe.
//!
//! ```sh
//! cargo run -p ledgerbus-client --example pay -- 127.0.0.1:7070 "$LEDGERBUS_API_KEYS"
//! ```

use ledgerbus_client::{Account, Client, ResultCode, Transfer};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(gateway), Some(api_key)) = (args.next(), args.next()) else {
        eprintln!("usage: pay GATEWAY_TCP_ADDRESS API_KEY");
        std::process::exit(2);
    };
    let client = Client::connect(gateway.as_str(), &api_key).await?;
    // Ids are yours to choose; these are unlikely to collide with the demo's.
    let (bank, alice, bob) = (9_000_001, 9_000_002, 9_000_003);
    let opened = client
        .submit(&[
            Account::new(bank, 840, 1).allow_negative().into(),
            Account::new(alice, 840, 1).into(),
            Account::new(bob, 840, 1).into(),
        ])
        .await?;
    for outcome in &opened {
        println!("account {}: {:?}", outcome.id, outcome.result);
    }
    // Funding and payment as one linked chain: both apply, or neither.
    let chain = [
        Transfer::new(9_000_101, bank, alice, 10_000).ledger(840).code(1).linked().into(),
        Transfer::new(9_000_102, alice, bob, 2_500).ledger(840).code(2).into(),
    ];
    for outcome in client.submit(&chain).await? {
        println!("transfer {}: {:?} (event {})", outcome.id, outcome.result, outcome.sequence);
    }
    // The same ids again: nothing moves twice.
    let again = client.submit(&chain).await?;
    assert!(again.iter().all(|o| o.result == ResultCode::Exists), "{again:?}");
    println!("sent again: every transfer answered `exists`; nothing applied twice");
    // Reads over the same connection see the writes before them.
    for account in [alice, bob] {
        if let Some(info) = client.account(account).await? {
            println!("account {account}: balance {}", info.balance());
        }
    }
    if let Some(page) = client.history(bob, 0, 10).await? {
        println!("bob's history: {:?}", page.transfers.iter().map(|t| (t.id, t.amount)).collect::<Vec<_>>());
    }
    Ok(())
}
