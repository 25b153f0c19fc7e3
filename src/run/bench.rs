//! `ledgerbus bench transport|sequencer`.

use std::time::Duration;

use crate::cli::{BenchSequencerArgs, BenchTransportArgs, BusSecurityMode};

/// `ledgerbus bench transport`: see `ledgerbus_tools::bench_transport`.
pub fn transport(args: &BenchTransportArgs) -> anyhow::Result<()> {
    let mut modes = vec![args.bus_security];
    if args.compare {
        modes.push(match args.bus_security {
            BusSecurityMode::Aes256Gcm => BusSecurityMode::None,
            BusSecurityMode::None => BusSecurityMode::Aes256Gcm,
        });
    }
    let mut rates = Vec::new();
    for mode in modes {
        let report = transport_once(args, mode)?;
        rates.push((mode, report.events_per_sec));
    }
    if let [(first, a), (_, b)] = rates[..] {
        let (sealed, plain) = if first == BusSecurityMode::Aes256Gcm { (a, b) } else { (b, a) };
        println!(
            "sealed / plain    {:>14.2}  ({sealed:.0} / {plain:.0} events/s, same invocation)",
            sealed / plain
        );
    }
    Ok(())
}

fn transport_once(
    args: &BenchTransportArgs,
    mode: BusSecurityMode,
) -> anyhow::Result<ledgerbus_tools::bench_transport::BenchReport> {
    use ledgerbus_tools::bench_transport as bench;
    use ledgerbus_transport::{BusKey, BusKeys, BusSecurity};
    let security = match mode {
        BusSecurityMode::None => BusSecurity::None,
        BusSecurityMode::Aes256Gcm => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            BusSecurity::Aead(std::sync::Arc::new(BusKeys::new(vec![BusKey::from_bytes(key)])?))
        }
    };
    let options = bench::BenchOptions {
        duration: Duration::from_secs_f64(args.duration),
        receivers: args.receivers,
        loss_percent: args.loss,
        event_size: args.size as usize,
        datagram_size_max: usize::from(args.mtu),
        drain_timeout: Duration::from_secs(10),
        security,
    };
    eprintln!(
        "bench transport: {} receiver(s), {}% loss, {}-byte events, {} s on 127.0.0.1 (unicast fan-out), bus security {}",
        args.receivers, args.loss, args.size, args.duration, options.security.name()
    );
    let report = bench::run(&options, |published| eprintln!("  {published} events published"))?;
    println!("bus security      {:>14}", report.bus_security);
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
    Ok(report)
}

/// `ledgerbus bench sequencer`: see `super::bench_sequencer`.
pub fn sequencer(args: &BenchSequencerArgs) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("ledgerbus-bench-").tempdir()?;
    let durability = args.durability;
    eprintln!(
        "bench sequencer: --durability {}, {} s, journal in {} (decide + journal + publish, no gateway)",
        args.durability,
        args.duration,
        dir.path().display()
    );
    let live = if args.subscribers.is_empty() {
        None
    } else {
        let subscribers = args
            .subscribers
            .iter()
            .map(|a| ledgerbus_transport::driver::socket::ipv4(*a))
            .collect::<Result<Vec<_>, _>>()?;
        eprintln!(
            "publishing to {} live consumer(s); NAKs/status on {}, replay on {}",
            subscribers.len(),
            args.control_listen,
            args.replay_listen
        );
        Some(super::bench_sequencer::LiveConsumers {
            subscribers,
            control: args.control_listen,
            replay: args.replay_listen,
            bus_keys: args.bus.keys()?,
            security: args.bus.security()?,
        })
    };
    let report = super::bench_sequencer::run(
        dir.path(),
        durability,
        Duration::from_secs_f64(args.duration),
        live,
        args.two_phase,
    )?;
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

/// `ledgerbus bench codec`: a quick in-binary measurement of the hot codec paths
/// (criterion's `cargo bench -p ledgerbus-codec` gives the precise figures).
pub fn codec(args: &crate::cli::BenchCodecArgs) -> anyhow::Result<()> {
    use std::hint::black_box;
    use std::time::Instant;

    use ledgerbus_codec::messages::TransferEvent;
    use ledgerbus_codec::{decode, encode, CrcCheck, Id128, Message, Packet, PacketWriter, ResultCode};

    let event = |sequence: u64| TransferEvent {
        sequence: sequence.into(),
        timestamp_ns: sequence.into(),
        id: Id128::from(u128::from(sequence) + 1),
        debit_account_id: Id128::from(1u128),
        credit_account_id: Id128::from(2u128),
        amount: 250.into(),
        ledger: 1.into(),
        code: 1.into(),
        flags: 0.into(),
        result: ResultCode::Ok.to_wire().into(),
        reserved: [0; 6],
        ..Default::default()
    };
    let budget = Duration::from_secs_f64(args.duration);
    let measure = |name: &str, per_iteration: u64, mut body: Box<dyn FnMut()>| -> (String, f64) {
        let start = Instant::now();
        let mut iterations = 0u64;
        while start.elapsed() < budget {
            for _ in 0..1_000 {
                body();
            }
            iterations += 1_000;
        }
        let ns = start.elapsed().as_nanos() as f64 / (iterations * per_iteration) as f64;
        println!("{name:<28} {ns:>8.2} ns per event");
        (name.to_string(), ns)
    };
    let mut frame = [0u8; TransferEvent::FRAME_SIZE];
    encode(&event(7), &mut frame).expect("sized");
    let mut results = Vec::new();
    results.push(measure(
        "transfer_event_decode",
        1,
        Box::new(move || {
            let (view, _) = decode::<TransferEvent>(black_box(&frame)).expect("valid frame");
            black_box(view.amount.get());
        }),
    ));
    let mut out = [0u8; TransferEvent::FRAME_SIZE];
    let one = event(9);
    results.push(measure(
        "transfer_event_encode_crc",
        1,
        Box::new(move || {
            encode(black_box(&one), &mut out).expect("sized");
            black_box(crc32fast::hash(&out));
        }),
    ));
    let mut datagram = vec![0u8; ledgerbus_codec::DATAGRAM_SIZE_DEFAULT];
    let mut writer = PacketWriter::data(&mut datagram, 1, 1, 1);
    let mut count = 0u64;
    while writer.remaining() >= TransferEvent::FRAME_SIZE {
        writer.push(&event(count + 1)).expect("room checked");
        count += 1;
    }
    let size = writer.finish(1);
    datagram.truncate(size);
    results.push(measure(
        "datagram_decode_crc",
        count,
        Box::new(move || {
            let packet = Packet::decode(black_box(&datagram), CrcCheck::Verify).expect("valid datagram");
            for frame in packet.frames() {
                let (view, _) = decode::<TransferEvent>(frame.expect("framed")).expect("valid event");
                black_box(view.amount.get());
            }
        }),
    ));
    if args.json {
        let map: serde_json::Map<String, serde_json::Value> =
            results.into_iter().map(|(name, ns)| (format!("{name}_ns"), serde_json::json!(ns))).collect();
        println!("{}", serde_json::Value::Object(map));
    }
    Ok(())
}

/// `bench hops`: the hand-off latency floor.
pub fn hops(args: &crate::cli::BenchHopsArgs) -> anyhow::Result<()> {
    use ledgerbus_tools::hops;
    let report = hops::run(hops::HopsOptions {
        rate: args.rate,
        duration: Duration::from_secs_f64(args.duration),
        from_send: args.from_send,
    })?;
    println!(
        "client -> relay -> server -> relay -> client, {} messages at {}/s, latency from the {} send time:",
        report.messages,
        args.rate,
        if args.from_send { "actual" } else { "intended" }
    );
    println!(
        "  p50 {} µs   p90 {} µs   p99 {} µs   p99.9 {} µs   max {} µs",
        report.p50_us, report.p90_us, report.p99_us, report.p999_us, report.max_us
    );
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

/// `ledgerbus bench floor`: the raw UDP round trip with each idle strategy.
pub fn floor(args: &crate::cli::BenchFloorArgs) -> anyhow::Result<()> {
    use ledgerbus_tools::floor;
    let strategies: Vec<&str> = match args.idle_strategy.as_str() {
        "all" => vec!["block", "backoff", "spin"],
        one => vec![one],
    };
    println!(
        "UDP round trip on 127.0.0.1, 64 bytes, {}/s for {} s per strategy, latency from the intended send time:",
        args.rate, args.duration
    );
    let mut reports = Vec::new();
    for strategy in strategies {
        let report = floor::run(floor::FloorOptions {
            rate: args.rate,
            duration: Duration::from_secs_f64(args.duration),
            idle: match strategy.parse().map_err(anyhow::Error::msg)? {
                ledgerbus_transport::idle::IdleStrategy::Backoff(_) => {
                    ledgerbus_transport::idle::IdleStrategy::Backoff(args.backoff.backoff())
                }
                other => other,
            },
        })?;
        println!(
            "  {:<8} p50 {:>5} µs   p99 {:>6} µs   p99.9 {:>6} µs   max {:>6} µs   lost {}   CPU {:.0}% of a core",
            report.strategy,
            report.p50_us,
            report.p99_us,
            report.p999_us,
            report.max_us,
            report.lost,
            report.cpu_percent
        );
        reports.push(report);
    }
    if args.json {
        println!("{}", serde_json::to_string(&reports)?);
    }
    Ok(())
}

/// `ledgerbus bench plot`: several `.hgrm` files as curves of one plot.
pub fn plot(args: &crate::cli::BenchPlotArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use ledgerbus_tools::histogram::{plot_curves, Curve};
    let curves = args
        .files
        .iter()
        .map(|path| {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let label =
                path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into());
            Curve::from_hgrm(&text, &label).with_context(|| path.display().to_string())
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    plot_curves(&curves, &args.output, &args.title)?;
    println!("{} curves plotted to {}", curves.len(), args.output.display());
    Ok(())
}
