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

use ledgerbus_tools::filter::{self, EventFilter, EventKind};

use crate::cli::{ReplayAction, ReplayArgs, ReplayFormat, ReplayKind, ReplayNakArgs};
use crate::cluster_file::ClusterFile;

/// Runs `ledgerbus replay`.
pub fn run(args: &ReplayArgs) -> anyhow::Result<()> {
    if let Some(ReplayAction::Nak(nak)) = &args.action {
        return run_nak(nak);
    }
    let from_cluster = ClusterFile::load_if(args.cluster.as_deref())?.map(|c| c.sequencer_replay);
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
    let out: Box<dyn Write> = match (&args.output, args.verify) {
        (Some(path), false) => Box::new(BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        _ => Box::new(BufWriter::with_capacity(1 << 16, stdout.lock())),
    };
    let filter = event_filter(args)?;
    let from = match args.last {
        None => args.from,
        Some(last) => {
            let next = match &source {
                Source::Sequencer(address, key) => {
                    ledgerbus_log::replay_client::sequencer_head(*address, key)?.next_sequence
                }
                Source::Journal(_) => {
                    replay::read(&source, 1, None, |_, _| Ok(()))?.last_sequence.map_or(1, |s| s + 1)
                }
            };
            next.saturating_sub(last).max(1)
        }
    };
    if args.fields.is_some() && matches!(args.format, ReplayFormat::Raw) {
        anyhow::bail!("--fields picks fields of text or JSON lines; --format raw writes whole frames");
    }
    let mut printer = Printer {
        out,
        open: true,
        format: args.format,
        fields: args.fields.clone(),
        filter,
        print: !args.verify,
        progress,
    };
    let summary = replay::read(&source, from, args.to, |sequence, frame| printer.event(sequence, frame))?;
    if args.follow {
        // New events as they are published, until Ctrl-C (or the reader goes away).
        let stop = super::shutdown_on_signal()?;
        let mut next = summary.last_sequence.map_or(from, |last| last + 1);
        while printer.open && !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = printer.out.flush();
            std::thread::sleep(Duration::from_millis(200));
            let more = replay::read(&source, next, None, |sequence, frame| printer.event(sequence, frame))?;
            if let Some(last) = more.last_sequence {
                next = last + 1;
            }
        }
    }
    printer.progress.finish_and_clear();
    let _ = printer.out.flush();
    drop(printer);
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

/// Prints the events that pass the filter, in the chosen format, until the reader
/// of stdout goes away.
struct Printer<'a> {
    out: Box<dyn Write + 'a>,
    /// False once stdout is closed (a pipe into `head`).
    open: bool,
    format: ReplayFormat,
    /// `--fields`: only these, in this order.
    fields: Option<format::FieldSelection>,
    filter: EventFilter,
    /// False with --verify: only the summary is printed.
    print: bool,
    progress: ProgressBar,
}

impl Printer<'_> {
    fn event(&mut self, sequence: u64, frame: &[u8]) -> anyhow::Result<()> {
        self.progress.set_message(format!("at {sequence}"));
        self.progress.inc(1);
        if !self.print || !self.open || !self.filter.matches(frame) {
            return Ok(());
        }
        self.open = match (self.format, &self.fields) {
            (ReplayFormat::Text, Some(fields)) => {
                replay::write_stdout(&mut self.out, format!("{}\n", fields.text(frame)).as_bytes())?
            }
            (ReplayFormat::Json, Some(fields)) => {
                replay::write_stdout(&mut self.out, format!("{}\n", fields.json(frame)).as_bytes())?
            }
            (ReplayFormat::Text, None) => {
                replay::write_stdout(&mut self.out, format!("{}\n", format::text(frame)).as_bytes())?
            }
            (ReplayFormat::Json, None) => {
                replay::write_stdout(&mut self.out, format!("{}\n", format::json(frame)).as_bytes())?
            }
            (ReplayFormat::Raw, _) => replay::write_stdout(&mut self.out, frame)?,
        };
        Ok(())
    }
}

/// The event filter the flags describe.
fn event_filter(args: &ReplayArgs) -> anyhow::Result<EventFilter> {
    let time = |text: &Option<String>, flag: &str| -> anyhow::Result<Option<u64>> {
        text.as_deref().map(|t| filter::parse_time(t).map_err(|e| anyhow::anyhow!("{flag}: {e}"))).transpose()
    };
    Ok(EventFilter {
        account: args.account,
        kind: args.kind.map(|kind| match kind {
            ReplayKind::Account => EventKind::Account,
            ReplayKind::Transfer => EventKind::Transfer,
            ReplayKind::Expired => EventKind::Expired,
        }),
        result: args
            .result
            .as_deref()
            .map(|r| r.parse())
            .transpose()
            .map_err(|e: String| anyhow::anyhow!("--result: {e}"))?,
        since_ns: time(&args.since, "--since")?,
        until_ns: time(&args.until, "--until")?,
    })
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
        Source::Sequencer(address, key) => ledgerbus_log::replay_client::sequencer_session(*address, key)?,
        Source::Journal(dir) => {
            ledgerbus_log::journal::JournalReader::open(dir, u64::MAX)?.session_id().unwrap_or(0)
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
    let cluster = ClusterFile::load_if(args.cluster.as_deref())?;
    let control = args
        .sequencer
        .or(cluster.as_ref().map(|c| c.sequencer_control))
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7001)));
    let replay_addr = args
        .replay
        .or(cluster.as_ref().map(|c| c.sequencer_replay))
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7002)));
    let head = ledgerbus_log::replay_client::sequencer_head(replay_addr, &args.bus.keys()?.replay_key())
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
    let lines = replay::nak(
        control,
        &args.bus.security()?,
        session,
        args.stream_id,
        args.from,
        args.count,
        Duration::from_millis(args.wait_ms),
    )?;
    for line in &lines {
        println!("{line}");
    }
    if lines.is_empty() {
        bail!(
            "no repair of {}..{} from {control} within {} ms: is it the sequencer's control port (UDP, 7001 by default)?",
            args.from,
            args.from + u64::from(args.count),
            args.wait_ms
        );
    }
    Ok(())
}
