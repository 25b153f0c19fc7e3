//! `ledgerbus bench transport|sequencer`.

use std::time::Duration;

use crate::cli::{BenchSequencerArgs, BenchTransportArgs};

/// `ledgerbus bench transport`: see `ledgerbus_transport::bench`.
pub fn transport(args: &BenchTransportArgs) -> anyhow::Result<()> {
    use ledgerbus_transport::bench;
    let options = bench::BenchOptions {
        duration: Duration::from_secs_f64(args.duration),
        receivers: args.receivers,
        loss_percent: args.loss,
        event_size: args.size as usize,
        datagram_size_max: usize::from(args.mtu),
        drain_timeout: Duration::from_secs(10),
    };
    eprintln!(
        "bench transport: {} receiver(s), {}% loss, {}-byte events, {} s on 127.0.0.1 (unicast fan-out)",
        args.receivers, args.loss, args.size, args.duration
    );
    let report = bench::run(&options, |published| eprintln!("  {published} events published"))?;
    println!("events/s          {:>14.0}", report.events_per_sec);
    println!("MB/s per receiver {:>14.1}", report.mb_per_sec);
    println!("events            {:>14}", report.events);
    println!("naks              {:>14}", report.naks);
    println!("retransmits       {:>14}", report.retransmits);
    println!("injected drops    {:>14}", report.injected_drops);
    println!("repair p50 / p99  {:>8} / {} µs", report.repair_p50_us, report.repair_p99_us);
    println!("unrecovered       {:>14}", report.unrecovered);
    println!("order violations  {:>14}", report.order_violations);
    if args.json {
        println!("{}", report.to_json());
    }
    if report.unrecovered > 0 || report.order_violations > 0 {
        anyhow::bail!(
            "{} events unrecovered, {} order violations",
            report.unrecovered,
            report.order_violations
        );
    }
    Ok(())
}

/// `ledgerbus bench sequencer`: see `ledgerbus_sequencer::bench`.
pub fn sequencer(args: &BenchSequencerArgs) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("ledgerbus-bench-").tempdir()?;
    let durability = super::sequencer::durability(args.durability);
    eprintln!(
        "bench sequencer: --durability {:?}, {} s, journal in {} (decide + journal + publish, no gateway)",
        args.durability,
        args.duration,
        dir.path().display()
    );
    let report =
        ledgerbus_sequencer::bench::run(dir.path(), durability, Duration::from_secs_f64(args.duration))?;
    println!("transfers/s        {:>12.0}", report.transfers_per_sec);
    println!("transfers          {:>12}", report.transfers);
    println!("group commits      {:>12}", report.commits);
    println!("group size mean    {:>12.0}", report.group_size_mean);
    println!("group size max     {:>12}", report.group_size_max);
    println!("fsync p50 / p99    {:>6} / {} µs", report.fsync_p50_us, report.fsync_p99_us);
    println!("rejected           {:>12}", report.rejected);
    println!(
        "recovery events/s  {:>12.0}  ({} events replayed on reopen)",
        report.recovery_events_per_sec, report.recovery_events
    );
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
