//! `ledgerbus consumer memory|disk|sql`.

use std::time::Duration;

use anyhow::Context;

use ledgerbus_consumers::disk::DiskConfig;
use ledgerbus_consumers::follow::FollowConfig;
use ledgerbus_consumers::sql::{DatabaseUrl, SqlConfig};

use crate::cli::{ConsumerArgs, ConsumerKind};

/// The follower settings the flags describe.
pub fn follow_config(args: &ConsumerArgs) -> anyhow::Result<FollowConfig> {
    let mut listen = args.listen;
    if args.transport.multicast_group.is_some() {
        // Receive on the group's port; the group itself is joined on the interface.
        listen = std::net::SocketAddr::from((
            args.transport.multicast_group.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
            args.transport.multicast_port,
        ));
    }
    Ok(FollowConfig {
        listen,
        multicast: args.transport.multicast(),
        sequencer_control: args.sequencer_control,
        sequencer_replay: ledgerbus_consumers::follow::ReplayServices::new(args.sequencer_replay.clone()),
        replay_key: args.transport.bus.keys()?.replay_key(),
        receiver: args.transport.receiver_config(args.consumer_id, args.reorder_datagrams_max as usize)?,
        socket: args.transport.socket_options(),
        idle: args.transport.idle.strategy(),
    })
}

/// Runs the consumer until SIGINT/SIGTERM.
pub fn run(args: &ConsumerArgs) -> anyhow::Result<()> {
    let stop = super::shutdown_on_signal()?;
    let http = std::net::TcpListener::bind(args.http_listen)
        .with_context(|| format!("HTTP address {} (--http-listen)", args.http_listen))?;
    tracing::info!(kind = %kind_name(args.kind), http = %http.local_addr()?, listen = %args.listen, "consumer starting");
    let config = follow_config(args)?;
    let result = match args.kind {
        ConsumerKind::Memory => ledgerbus_consumers::memory::run(
            config,
            args.transfer_capacity,
            args.api_keys.clone(),
            http,
            stop,
        ),
        ConsumerKind::Disk => {
            let disk = DiskConfig {
                data_dir: args.data_dir.clone(),
                durability: args.durability,
                snapshot_every: args.snapshot_every,
                segment_size_max: 256 << 20,
            };
            ledgerbus_consumers::disk::run(disk, config, http, stop)
        }
        ConsumerKind::Sql => {
            let url = args.database.as_deref().context("--database is required for the SQL consumer")?;
            let sql = SqlConfig {
                database: DatabaseUrl::parse(url)?,
                consumer_id: args.consumer_id.to_string(),
                batch_events_max: args.batch_events as usize,
                batch_delay: Duration::from_millis(args.batch_delay_ms),
            };
            // An observer: a slow database makes this consumer lag and catch up by
            // bulk replay; it never holds the sequencer (and everyone else) back.
            let mut config = config;
            config.receiver.flow_control = false;
            ledgerbus_consumers::sql::run(sql, config, http, stop)
        }
    };
    // Give a last log line a moment to flush before exiting.
    std::thread::sleep(Duration::from_millis(10));
    Ok(result?)
}

/// The kind as the CLI spells it.
fn kind_name(kind: ConsumerKind) -> &'static str {
    match kind {
        ConsumerKind::Memory => "memory",
        ConsumerKind::Disk => "disk",
        ConsumerKind::Sql => "sql",
    }
}
