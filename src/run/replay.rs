//! `ledgerbus replay` and `ledgerbus replay nak`.

use std::io::{BufWriter, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use ledgerbus_tools::format;
use ledgerbus_tools::replay::{self, Source};
use ledgerbus_transport::driver::{socket, Publisher, SocketOptions, Targets};
use ledgerbus_transport::SenderConfig;

use crate::cli::{ReplayAction, ReplayArgs, ReplayFormat, ReplayNakArgs};
use crate::cluster_file::ClusterFile;

/// Runs `ledgerbus replay`.
pub fn run(args: &ReplayArgs) -> anyhow::Result<()> {
    if let Some(ReplayAction::Nak(nak)) = &args.action {
        return run_nak(nak);
    }
    let from_cluster = match &args.cluster {
        Some(path) => Some(ClusterFile::load(path)?.sequencer_replay),
        None => None,
    };
    let source = match (args.from_sequencer.or(from_cluster), &args.journal) {
        (Some(address), _) => Source::Sequencer(address, args.bus.keys()?.replay_key()),
        (None, Some(dir)) => Source::Journal(dir.clone()),
        (None, None) => bail!("give --journal DIR, --from-sequencer ADDR or --cluster FILE"),
    };
    if let Some(subscriber) = args.to_subscriber {
        return republish(&source, args, subscriber);
    }
    let progress = progress_bar(args.verify);
    let stdout = std::io::stdout();
    let mut out: Box<dyn Write> = match (&args.output, args.verify) {
        (Some(path), false) => Box::new(BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        _ => Box::new(BufWriter::with_capacity(1 << 16, stdout.lock())),
    };
    let mut open = true;
    let summary = replay::read(&source, args.from, args.to, |sequence, frame| {
        progress.set_message(format!("at {sequence}"));
        progress.inc(1);
        if args.verify || !open {
            return Ok(());
        }
        open = match args.format {
            ReplayFormat::Text => {
                replay::write_stdout(&mut out, format!("{}\n", format::text(frame)).as_bytes())?
            }
            ReplayFormat::Json => {
                replay::write_stdout(&mut out, format!("{}\n", format::json(frame)).as_bytes())?
            }
            ReplayFormat::Raw => replay::write_stdout(&mut out, frame)?,
        };
        Ok(())
    })?;
    progress.finish_and_clear();
    let _ = out.flush();
    drop(out);
    if args.verify {
        println!("events          {}", summary.count);
        println!("first sequence  {}", summary.first_sequence.map_or("-".into(), |s| s.to_string()));
        println!("last sequence   {}", summary.last_sequence.map_or("-".into(), |s| s.to_string()));
        println!("gaps            {}", summary.gaps);
        println!("corrupt frames  {}", summary.corrupt_frames);
        println!("sessions        {}", summary.sessions.join(", "));
        if args.from == 1 {
            println!("inconsistent    {}", summary.inconsistent);
            println!("state hash      {}", summary.state_hash);
        } else {
            println!("range hash      {} (the state hash needs --from 1)", summary.state_hash);
        }
        println!("{}", if summary.is_clean() { "verified: clean" } else { "verification FAILED" });
        if args.json {
            println!("{}", serde_json::to_string(&summary)?);
        }
        if !summary.is_clean() {
            bail!("verification failed");
        }
    }
    Ok(())
}

fn progress_bar(visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos} events {msg} ({per_sec})").expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Publishes the range through the transport to one subscriber, paced so that it
/// does not overrun the receiver, with a progress bar.
fn republish(source: &Source, args: &ReplayArgs, subscriber: SocketAddr) -> anyhow::Result<()> {
    let target = socket::ipv4(subscriber)?;
    let session = match source {
        Source::Sequencer(address, key) => ledgerbus_sequencer::client::sequencer_session(*address, key)?,
        Source::Journal(dir) => {
            ledgerbus_sequencer::journal::JournalReader::open(dir, u64::MAX)?.session_id().unwrap_or(0)
        }
    };
    let mut publisher = Publisher::new(
        SenderConfig {
            session_id: session,
            restrict_naks: false,
            security: args.bus.security()?,
            instance: crate::run::random_instance()?,
            ..SenderConfig::default()
        },
        args.from,
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        Targets::Unicast(vec![target]),
        SocketOptions::default(),
    )?;
    let progress = progress_bar(true);
    let mut sent = 0u64;
    let summary = replay::read(source, args.from, args.to, |_, frame| {
        while publisher.window_remaining() == 0 {
            publisher.wait(Duration::from_millis(1))?;
        }
        if publisher.publish(frame)?.is_err() {
            bail!("the transport refused an event");
        }
        sent += 1;
        if sent % 256 == 0 {
            publisher.flush()?;
            publisher.service()?;
            progress.set_position(sent);
        }
        Ok(())
    })?;
    publisher.flush()?;
    // Answer NAKs for a moment so the subscriber can repair the tail.
    let until = std::time::Instant::now() + Duration::from_secs(1);
    while std::time::Instant::now() < until {
        publisher.wait(Duration::from_millis(10))?;
    }
    progress.finish_and_clear();
    println!(
        "published {} events ({:?}..={:?}) to {subscriber}",
        summary.count, summary.first_sequence, summary.last_sequence
    );
    Ok(())
}

fn run_nak(args: &ReplayNakArgs) -> anyhow::Result<()> {
    let cluster = match &args.cluster {
        Some(path) => Some(ClusterFile::load(path)?),
        None => None,
    };
    let control = args
        .sequencer
        .or(cluster.as_ref().map(|c| c.sequencer_control))
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7001)));
    let replay_addr = args
        .replay
        .or(cluster.as_ref().map(|c| c.sequencer_replay))
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7002)));
    let head = ledgerbus_sequencer::client::sequencer_head(replay_addr, &args.bus.keys()?.replay_key())
        .with_context(|| format!("asking the replay service {replay_addr} where the log stands"))?;
    if args.from >= head.next_sequence {
        bail!("sequence {} is beyond the head: the next event will be {}", args.from, head.next_sequence);
    }
    let session = match &args.session {
        Some(hex) => u64::from_str_radix(hex, 16)?,
        None => head.session_id,
    };
    println!(
        "NAK {}..{} to {} (session {session:016x})",
        args.from,
        args.from + u64::from(args.count),
        control
    );
    let replies = replay::nak(
        control,
        &args.bus.security()?,
        session,
        args.stream_id,
        args.from,
        args.count,
        Duration::from_millis(args.wait_ms),
    )?;
    for line in &replies.lines {
        println!("{line}");
    }
    if replies.lines.is_empty() {
        bail!(
            "no repair of {}..{} from {control} within {} ms: is it the sequencer's control port (UDP, 7001 by default)?",
            args.from,
            args.from + u64::from(args.count),
            args.wait_ms
        );
    }
    Ok(())
}
