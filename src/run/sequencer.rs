//! `ledgerbus sequencer`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use ledgerbus_sequencer::{GroupConfig, SequencerConfig};

use crate::cli::SequencerArgs;

/// The sequencer configuration the flags describe.
pub fn config(args: &SequencerArgs) -> anyhow::Result<SequencerConfig> {
    let secret = args.secret.clone().context("--secret is required")?;
    Ok(SequencerConfig {
        data_dir: args.data_dir.clone(),
        gateway_listen: args.gateway_listen,
        control_listen: args.control_listen,
        replay_listen: args.replay_listen,
        metrics_listen: Some(args.metrics_listen),
        targets: args.transport.targets(&args.subscribers)?,
        durability: args.durability,
        sender: args.transport.sender_config(args.ring_datagrams as usize)?,
        socket: args.transport.socket_options(),
        secret: secret.into_bytes(),
        bus_keys: args.transport.bus.keys()?,
        segment_size_max: args.segment_mib << 20,
        batch_events_max: 65_536,
        transfer_capacity: args.transfer_capacity,
        group: group(args)?,
        idle: args.transport.idle.strategy(),
    })
}

/// The group the flags describe, if any.
fn group(args: &SequencerArgs) -> anyhow::Result<Option<GroupConfig>> {
    match (args.replicas.is_empty(), args.replica_id) {
        (true, None) => Ok(None),
        (true, Some(_)) => {
            anyhow::bail!("--replica-id needs --replicas (every member's replication address)")
        }
        (false, None) => anyhow::bail!("--replicas needs --replica-id (this member's position in the list)"),
        (false, Some(replica_id)) => {
            let group = GroupConfig {
                replica_id,
                members: args.replicas.clone(),
                tick: Duration::from_millis(args.raft_tick_ms),
            };
            group.validate()?;
            Ok(Some(group))
        }
    }
}

/// Runs until SIGINT/SIGTERM, then drains in order and exits.
pub fn run(args: &SequencerArgs) -> anyhow::Result<()> {
    let shutdown = super::shutdown_on_signal()?;
    let running = ledgerbus_sequencer::start(config(args)?)?;
    tracing::info!(
        gateway = %running.gateway_addr,
        control = %running.control_addr,
        replay = %running.replay_addr,
        metrics = ?running.metrics_addr,
        session = format_args!("{:#018x}", running.session_id),
        durability = %args.durability,
        "sequencer running"
    );
    while !shutdown.load(Ordering::Relaxed) && running.is_running() {
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!("shutting down: stopping intake, flushing the last group commit");
    running.stop()?;
    Ok(())
}
