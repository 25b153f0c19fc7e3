//! Deterministic simulation of the protocol under loss, bursts, reordering and
//! duplication. Every failure message carries the seed that replays it.

use ledgerbus_transport::sim::{run, LinkFaults, SimConfig};
use ledgerbus_transport::DeliveryMode;

fn lossy(loss: f64) -> LinkFaults {
    LinkFaults {
        latency_us: 20,
        jitter_us: 40,
        loss,
        burst_probability: 0.002,
        burst_len: (50, 80),
        duplicate: 0.01,
    }
}

#[test]
fn every_event_exactly_once_in_order_at_ten_percent_loss() {
    let mut config = SimConfig::new(0xC0FFEE);
    config.receivers = 3;
    config.events = 200_000;
    config.data_link = lossy(0.10);
    config.control_link = lossy(0.10);
    config.heal_after_us = 30_000_000;
    let report = run(config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.delivered, vec![200_000; 3]);
    assert!(report.datagrams_lost > 1_000, "the network really lost data: {report:?}");
    assert!(report.retransmits > 0);
    assert_eq!(report.replays, 0, "the ring covers every burst; no bulk replay needed: {report:?}");
    println!("{report:?}");
}

#[test]
fn many_seeds_with_random_faults() {
    for seed in 1..=24u64 {
        let mut config = SimConfig::new(seed);
        // Derive the scenario from the seed too, so each seed explores another mix.
        let loss = (seed % 5) as f64 * 0.05;
        config.receivers = 1 + (seed % 4) as usize;
        config.events = 20_000;
        config.data_link =
            LinkFaults { jitter_us: seed * 7 % 120, duplicate: (seed % 3) as f64 * 0.02, ..lossy(loss) };
        config.control_link = lossy(loss / 2.0);
        config.publish_batch = 1 + (seed * 13 % 200) as u32;
        config.receiver.mode = if seed % 2 == 0 { DeliveryMode::Unicast } else { DeliveryMode::Multicast };
        config.sender.mode = config.receiver.mode;
        config.shared_loss = if seed % 2 == 1 { loss / 2.0 } else { 0.0 };
        config.heal_after_us = 5_000_000;
        let report = run(config).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.delivered.iter().all(|&d| d == 20_000), "seed {seed}: {report:?}");
    }
}

#[test]
fn multicast_nak_suppression_keeps_naks_bounded() {
    let receivers = 10;
    let run_mode = |mode: DeliveryMode| {
        let mut config = SimConfig::new(0xBEEF);
        config.receivers = receivers;
        config.events = 50_000;
        config.data_link = LinkFaults::clean(20);
        config.control_link = LinkFaults::clean(20);
        config.shared_loss = 0.05;
        config.sender.mode = mode;
        config.receiver.mode = mode;
        run(config).unwrap_or_else(|e| panic!("{e}"))
    };
    let multicast = run_mode(DeliveryMode::Multicast);
    println!("multicast {multicast:?}");
    assert!(multicast.shared_losses > 100, "{multicast:?}");
    // Without suppression each of the 10 receivers NAKs each loss at least once.
    let naks_per_loss = multicast.naks_sent as f64 / multicast.shared_losses as f64;
    assert!(
        naks_per_loss < 3.0,
        "suppression failed: {naks_per_loss:.2} NAKs per lost datagram, {multicast:?}"
    );

    let unicast = run_mode(DeliveryMode::Unicast);
    println!("unicast {unicast:?}");
    let unicast_per_loss = unicast.naks_sent as f64 / unicast.shared_losses as f64;
    assert!(
        unicast_per_loss > naks_per_loss * 2.0,
        "fixed-delay NAKs ({unicast_per_loss:.2}/loss) should far exceed back-off NAKs ({naks_per_loss:.2}/loss)"
    );
}

#[test]
fn receiver_behind_the_ring_asks_for_replay_instead_of_hanging() {
    let mut config = SimConfig::new(0xDEAD);
    config.receivers = 2;
    config.events = 30_000;
    config.sender.ring_datagrams = 16;
    // Long bursts on every data link: gaps outlive a 16-datagram ring.
    config.data_link = LinkFaults { burst_probability: 0.01, burst_len: (60, 120), ..lossy(0.02) };
    config.heal_after_us = 10_000_000;
    let report = run(config).unwrap_or_else(|e| panic!("{e}"));
    println!("{report:?}");
    assert!(report.replays > 0, "expected bulk replays: {report:?}");
    assert_eq!(report.delivered, vec![30_000; 2]);
}

#[test]
fn unicast_repair_latency_stays_under_a_millisecond() {
    let mut config = SimConfig::new(0xF00D);
    config.receivers = 1;
    config.events = 100_000;
    config.data_link = LinkFaults { burst_probability: 0.0, ..lossy(0.05) };
    config.control_link = LinkFaults { burst_probability: 0.0, ..lossy(0.05) };
    let report = run(config).unwrap_or_else(|e| panic!("{e}"));
    println!("{report:?}");
    assert!(report.repair_p99_us <= 1_000, "repair p99 {} µs: {report:?}", report.repair_p99_us);
}

/// An attacker on the wire (forged events and heartbeats, forged status and NAKs from
/// its own and a spoofed address, replays and bit flips of captured datagrams) during
/// a lossy run on a sealed bus: every receiver still gets exactly the sender's events,
/// and the sender never sends a byte to an address that is not a receiver.
#[test]
fn sealed_bus_shrugs_off_an_attacker() {
    for seed in [0xA77AC4, 7, 8] {
        let mut config = SimConfig::new(seed).secured();
        config.receivers = 3;
        config.events = 30_000;
        config.data_link = lossy(0.05);
        config.control_link = lossy(0.05);
        config.heal_after_us = 3_000_000;
        config.attack_interval_us = Some(4);
        let report = run(config).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.delivered.iter().all(|&d| d == 30_000), "{report:?}");
        assert!(report.attacks > 3_000, "the attacker was busy: {report:?}");
        assert!(
            report.unauthenticated > report.attacks / 2,
            "forgeries were counted and dropped: {report:?}"
        );
        assert!(report.retransmits > 0, "loss was repaired under attack: {report:?}");
    }
}

/// The same attacker against a bus without security wins: the sealed run above is
/// what stops it, not the scenario.
#[test]
fn the_same_attacker_breaks_an_unsealed_bus() {
    let mut config = SimConfig::new(0xA77AC4);
    config.events = 30_000;
    config.heal_after_us = 3_000_000;
    config.attack_interval_us = Some(50);
    let error = run(config).expect_err("an unsealed bus cannot tell forgeries apart").to_string();
    assert!(
        error.contains("wrong bytes") || error.contains("not a receiver") || error.contains("session change"),
        "{error}"
    );
}
