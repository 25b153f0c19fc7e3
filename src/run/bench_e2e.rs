//! `ledgerbus bench e2e`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use ledgerbus_tools::histogram;
use ledgerbus_tools::loadgen::{self, E2eOptions, Protocol};

use crate::cli::{BenchE2eArgs, BenchProtocol};

/// Runs the load generator, against `--gateway` or a system it spawns.
pub fn run(args: &BenchE2eArgs) -> anyhow::Result<()> {
    let rate = if args.rate == "max" { None } else { Some(args.rate.parse::<u64>().context("--rate")?) };
    let system = if args.spawn {
        // Size the indexes for the run, as an operator sizes them for the load: a
        // table that grows mid-run competes with deciding for memory bandwidth.
        let expected = rate.unwrap_or(2_000_000) as f64 * args.duration * 1.25;
        let capacity = args.transfer_capacity.unwrap_or((expected as usize).max(1 << 20));
        eprintln!(
            "starting the whole system on 127.0.0.1 (--durability {}, --transfer-capacity {capacity}, --bus-security {:?})",
            args.durability, args.bus_security
        );
        let local = "127.0.0.1:0".parse().expect("valid address");
        Some(super::demo::System::start(
            args.durability,
            None,
            local,
            local,
            args.api_key.clone(),
            super::demo::Shape {
                transfer_capacity: Some(capacity),
                bus_security: args.bus_security,
                replicas: args.replicas,
                sql: None,
                idle: args.idle.env(),
                memory_consumers: usize::from(args.memory_consumers),
            },
        )?)
    } else {
        None
    };
    let (gateway_tcp, gateway_http, api_key) = match &system {
        Some(system) => (system.addresses.gateway_tcp, system.addresses.gateway_http, system.api_key.clone()),
        None => {
            let cluster = crate::cluster_file::ClusterFile::load_if(args.cluster.as_deref())?;
            let tcp = args
                .gateway
                .or(cluster.as_ref().map(|c| c.gateway_tcp))
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7070)));
            let http = args
                .gateway_http
                .or(cluster.as_ref().map(|c| c.gateway_http))
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)));
            (tcp, http, args.api_key.clone().context("--api-key (or LEDGERBUS_API_KEY) is required")?)
        }
    };
    let options = E2eOptions {
        gateway_tcp,
        gateway_http,
        api_key,
        protocol: match args.protocol {
            BenchProtocol::Tcp => Protocol::Tcp,
            BenchProtocol::Http => Protocol::Http,
        },
        rate,
        duration: Duration::from_secs_f64(args.duration),
        connections: args.connections,
        batch: args.batch,
        accounts: args.accounts,
        two_phase: args.two_phase,
        in_flight: args.in_flight,
        queries: match args.queries.as_deref() {
            None => None,
            Some(queries) => Some(ledgerbus_tools::queries::QueryOptions {
                rate: match queries {
                    "max" => None,
                    rate => Some(
                        rate.parse::<u64>()
                            .ok()
                            .filter(|r| *r > 0)
                            .context("--queries: a positive rate or max")?,
                    ),
                },
                connections: args.query_connections,
            }),
        },
        tls: match &args.tls_ca {
            None => None,
            Some(ca) => {
                if args.protocol == BenchProtocol::Http {
                    anyhow::bail!(
                        "--tls-ca works with --protocol tcp; for HTTPS use a client such as curl --cacert"
                    );
                }
                let name = args.tls_server_name.clone().unwrap_or_else(|| gateway_tcp.ip().to_string());
                Some(ledgerbus_client::TlsClient::new(ca, &name)?)
            }
        },
    };
    let bar = ProgressBar::new((args.duration * 4.0).ceil() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {elapsed}/{duration} {msg}").expect("valid template"),
    );
    let idle = args.idle.strategy();
    let runtime = ledgerbus_client::idle::runtime(idle, 2)?;
    runtime.spawn(ledgerbus_client::idle::keep_warm(idle));
    let (report, histogram) = runtime.block_on(loadgen::run(&options, |counters, elapsed| {
        let decided = counters.accepted.load(std::sync::atomic::Ordering::Relaxed)
            + counters.rejected.load(std::sync::atomic::Ordering::Relaxed);
        bar.set_position((elapsed.as_secs_f64() * 4.0) as u64);
        bar.set_message(format!(
            "{decided} transfers, {:.0}/s",
            decided as f64 / elapsed.as_secs_f64().max(1e-9)
        ));
    }))?;
    bar.finish_and_clear();
    println!(
        "bench e2e over {} at rate {}: {} connections, batch {}",
        report.protocol,
        if report.rate == 0 { "max".to_string() } else { report.rate.to_string() },
        args.connections,
        args.batch
    );
    println!("  throughput  {:>12.0} transfers/s (accepted and rejected)", report.throughput_tps);
    println!("  accepted    {:>12}", report.accepted);
    println!("  rejected    {:>12}", report.rejected);
    println!("  errors      {:>12}", report.errors);
    println!("  latency per request (from intended send time):");
    print!("{}", histogram::table(&histogram));
    println!(
        "  all accepted      p50 {} µs, p99 {} µs;  with a rejection  p50 {} µs, p99 {} µs",
        report.accepted_p50_us, report.accepted_p99_us, report.rejected_p50_us, report.rejected_p99_us
    );
    if let Some(reads) = &report.queries {
        println!(
            "  reads (GET /accounts/{{id}} over HTTP):  {:.0}/s answered, {} errors;  p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
            reads.per_second, reads.errors, reads.p50_us, reads.p90_us, reads.p99_us, reads.p999_us, reads.max_us
        );
    }
    if let Some(path) = &args.hgrm {
        std::fs::write(path, histogram::hgrm(&histogram, 5))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("  histogram written to {}", path.display());
    }
    if let Some(path) = &args.plot {
        let rate = match rate {
            Some(per_second) => format!("{}/s", ledgerbus_tools::histogram::thousands(per_second)),
            None => "max rate".to_string(),
        };
        let title = format!("ledgerbus e2e latency, {} at {rate}", report.protocol);
        histogram::plot(&histogram, path, &title)?;
        println!("  plot written to {}", path.display());
    }
    // What the load did must be what every replica holds: once the consumers have
    // caught up, their state hashes must equal the sequencer's.
    let verified = system.as_ref().map(|system| system.verify_hashes());
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    if let Some(system) = system {
        system.stop();
    }
    verified.unwrap_or(Ok(()))?;
    if report.accepted == 0 {
        anyhow::bail!(
            "no transfer was accepted ({} rejected, {} errors): the figures above measure refusals, not a ledger",
            report.rejected,
            report.errors
        );
    }
    Ok(())
}
