//! `ledgerbus sql verify`: the SQL projection checked from its rows alone.

use std::time::Instant;

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use ledgerbus_consumers::sql::verify::verify as verify_rows;
use ledgerbus_consumers::sql::DatabaseUrl;

use crate::cli::SqlVerifyArgs;

/// Recomputes the state hash and the accounts from the event rows; fails if the
/// position, the accounts table, the trial balance or `--expect-hash` disagree.
pub fn verify(args: &SqlVerifyArgs) -> anyhow::Result<()> {
    let url = DatabaseUrl::parse(&args.database)?;
    let expected = match &args.expect_hash {
        Some(hex) => Some(
            u64::from_str_radix(hex.trim_start_matches("0x"), 16)
                .map_err(|_| anyhow::anyhow!("--expect-hash {hex:?} is not a hexadecimal 64-bit hash"))?,
        ),
        None => None,
    };
    let mut db = url.connect()?;
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {msg} {pos} events re-read ({per_sec})")
            .expect("a valid template"),
    );
    bar.set_message(format!("{url}:"));
    let started = Instant::now();
    let found = verify_rows(db.as_mut(), &mut |events| bar.set_position(events))?;
    bar.finish_and_clear();
    let mut problems = found.problems.clone();
    if let Some(expected) = expected {
        if expected != found.state_hash {
            problems.push(format!(
                "the rows hash to {:016x}, --expect-hash is {expected:016x}",
                found.state_hash
            ));
        }
    }
    println!(
        "{url}: {} events re-read in {:.2} s, last sequence {}, state hash {:016x}",
        found.last_sequence,
        started.elapsed().as_secs_f64(),
        found.last_sequence,
        found.state_hash
    );
    println!("  accounts           {} rows", found.accounts);
    println!("  trial balance      {} ledgers", found.ledgers);
    match found.position {
        Some(position) => {
            println!("  stored position    sequence {}, hash {:016x}", position.sequence, position.state_hash)
        }
        None => println!("  stored position    none"),
    }
    for problem in &problems {
        println!("  MISMATCH: {problem}");
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "last_sequence": found.last_sequence,
                "state_hash": format!("{:016x}", found.state_hash),
                "accounts": found.accounts,
                "ledgers": found.ledgers,
                "problems": problems,
            })
        );
    }
    if !problems.is_empty() {
        bail!("the SQL projection does not match its events ({} problems)", problems.len());
    }
    println!("  the projection matches its events");
    Ok(())
}
