//! The protocol core driven by hand: hostile input, session changes, tail loss,
//! flow control and the "not retransmittable" reply.

use std::net::SocketAddr;

use ledgerbus_codec::messages::{Nak, StatusMessage};
use ledgerbus_codec::PacketWriter;
use ledgerbus_transport::sim::event_frame;
use ledgerbus_transport::{
    Destination, MonoTime, PublishError, Receiver, ReceiverConfig, ReceiverEvent, Sender, SenderConfig,
};
use proptest::prelude::*;

const SENDER: &str = "198.18.0.1:4000";
const RECEIVER: &str = "198.18.0.2:4000";

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn us(value: u64) -> MonoTime {
    MonoTime(value * 1_000)
}

/// Every datagram the sender wants to send now.
fn drain(sender: &mut Sender, now: MonoTime) -> Vec<(Destination, Vec<u8>)> {
    let mut buf = vec![0u8; 1408];
    let mut out = Vec::new();
    while let Some(t) = sender.poll_transmit(now, &mut buf) {
        out.push((t.destination, buf[..t.size].to_vec()));
    }
    out
}

fn feed(receiver: &mut Receiver, now: MonoTime, datagram: &[u8], got: &mut Vec<u64>) {
    receiver.handle_datagram(now, addr(SENDER), datagram, &mut |sequence, _| got.push(sequence));
}

fn control_out(receiver: &mut Receiver, now: MonoTime) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 1408];
    let mut out = Vec::new();
    while let Some(size) = receiver.poll_transmit(now, &mut buf) {
        out.push(buf[..size].to_vec());
    }
    out
}

#[test]
fn tail_loss_is_found_by_heartbeat_and_repaired() {
    let mut sender = Sender::new(SenderConfig::default(), 1, us(0)).unwrap();
    let mut receiver = Receiver::new(ReceiverConfig::default(), 1, None, us(0)).unwrap();
    let mut got = Vec::new();
    for sequence in 1..=5 {
        sender.publish(us(0), &event_frame(sequence)).unwrap();
    }
    let first = drain(&mut sender, us(0));
    assert_eq!(first.len(), 1, "five small events share one datagram");
    // First datagram delivered; then 3 more events whose datagram is lost.
    feed(&mut receiver, us(10), &first[0].1, &mut got);
    for sequence in 6..=8 {
        sender.publish(us(20), &event_frame(sequence)).unwrap();
    }
    let lost = drain(&mut sender, us(20));
    assert_eq!(lost.len(), 1);
    // Idle: the heartbeat announces next sequence 9.
    sender.handle_timeout(us(2_000));
    let heartbeat = drain(&mut sender, us(2_000));
    feed(&mut receiver, us(2_010), &heartbeat[0].1, &mut got);
    assert_eq!(receiver.known_end(), 9);
    // After the NAK delay the receiver asks for 6..=8.
    receiver.handle_timeout(receiver.poll_timeout().max(us(2_200)));
    for nak in control_out(&mut receiver, us(2_200)) {
        sender.handle_datagram(us(2_210), addr(RECEIVER), &nak);
    }
    let repair = drain(&mut sender, us(2_210));
    assert_eq!(repair.len(), 1);
    assert_eq!(repair[0].0, Destination::To(addr(RECEIVER)), "unicast repairs go to the requester");
    feed(&mut receiver, us(2_220), &repair[0].1, &mut got);
    assert_eq!(got, (1..=8).collect::<Vec<_>>());
    assert_eq!(receiver.stats().gaps_repaired, 1);
    // Duplicates change nothing.
    feed(&mut receiver, us(2_230), &repair[0].1, &mut got);
    feed(&mut receiver, us(2_240), &first[0].1, &mut got);
    assert_eq!(got.len(), 8);
    assert_eq!(receiver.stats().duplicate_datagrams, 2);
}

#[test]
fn a_new_session_is_surfaced_never_mixed_in() {
    let mut old = Sender::new(SenderConfig { session_id: 1, ..SenderConfig::default() }, 1, us(0)).unwrap();
    let mut new = Sender::new(SenderConfig { session_id: 2, ..SenderConfig::default() }, 1, us(0)).unwrap();
    let mut receiver = Receiver::new(ReceiverConfig::default(), 1, None, us(0)).unwrap();
    let mut got = Vec::new();
    old.publish(us(0), &event_frame(1)).unwrap();
    new.publish(us(0), &event_frame(1)).unwrap();
    new.publish(us(0), &event_frame(2)).unwrap();
    feed(&mut receiver, us(1), &drain(&mut old, us(0))[0].1, &mut got);
    let other = drain(&mut new, us(0));
    feed(&mut receiver, us(2), &other[0].1, &mut got);
    feed(&mut receiver, us(3), &other[0].1, &mut got);
    assert_eq!(got, vec![1], "the other session's events were not delivered");
    assert_eq!(receiver.poll_event(), Some(ReceiverEvent::SessionChanged { current: 1, new: 2 }));
    assert_eq!(receiver.poll_event(), None, "reported once");
    receiver.reset_session(us(4), 2, 1);
    feed(&mut receiver, us(5), &other[0].1, &mut got);
    assert_eq!(got, vec![1, 1, 2]);
}

#[test]
fn nak_for_a_range_that_left_the_ring_gets_not_retransmittable() {
    let config = SenderConfig {
        ring_datagrams: 16,
        allowed_requesters: vec![addr(RECEIVER)],
        ..SenderConfig::default()
    };
    let mut sender = Sender::new(config, 1, us(0)).unwrap();
    // Fill 40 datagrams of 14 events each; only the last 16 stay in the ring.
    for sequence in 1..=14 * 40 {
        sender.publish(us(0), &event_frame(sequence)).unwrap();
        if sequence % 14 == 0 {
            drain(&mut sender, us(0));
        }
    }
    assert!(sender.oldest_retained_sequence() > 100);
    let mut receiver = Receiver::new(ReceiverConfig::default(), 1, Some(1), us(0)).unwrap();
    let mut buf = [0u8; 256];
    let mut writer = PacketWriter::control(&mut buf, 1, 1);
    writer.push(&Nak { from_sequence: 1.into(), count: 14.into(), receiver_id: 1.into() }).unwrap();
    let size = writer.finish(0);
    sender.handle_datagram(us(10), addr(RECEIVER), &buf[..size]);
    let reply = drain(&mut sender, us(10));
    assert_eq!(reply.len(), 1);
    assert_eq!(reply[0].0, Destination::To(addr(RECEIVER)));
    let mut got = Vec::new();
    feed(&mut receiver, us(20), &reply[0].1, &mut got);
    match receiver.poll_event() {
        Some(ReceiverEvent::NeedsReplay { from_sequence: 1, oldest_retained_sequence }) => {
            assert_eq!(oldest_retained_sequence, sender.oldest_retained_sequence());
        }
        other => panic!("expected NeedsReplay, got {other:?}"),
    }
    assert_eq!(receiver.needs_replay(), Some(1));
}

#[test]
fn flow_control_follows_status_messages() {
    let mut sender = Sender::new(SenderConfig::default(), 1, us(0)).unwrap();
    assert_eq!(sender.window_remaining(us(0)), u64::MAX, "unlimited before any receiver reports");
    let mut buf = [0u8; 256];
    let mut writer = PacketWriter::control(&mut buf, 1, 1);
    writer
        .push(&StatusMessage {
            receiver_id: 9.into(),
            window_events: 100.into(),
            highest_contiguous_sequence: 0.into(),
        })
        .unwrap();
    let size = writer.finish(0);
    sender.handle_datagram(us(1), addr(RECEIVER), &buf[..size]);
    assert_eq!(sender.window_remaining(us(1)), 100);
    for sequence in 1..=30 {
        sender.publish(us(2), &event_frame(sequence)).unwrap();
    }
    assert_eq!(sender.window_remaining(us(2)), 70);
    assert_eq!(sender.receivers()[0].receiver_id, 9);
    // A receiver silent past the timeout no longer holds the sender back.
    assert_eq!(sender.window_remaining(us(10_000_000)), u64::MAX);
}

#[test]
fn a_receiver_without_flow_control_never_holds_the_sender_back() {
    let mut sender = Sender::new(SenderConfig::default(), 1, us(0)).unwrap();
    let config = |id, flow_control| ReceiverConfig {
        receiver_id: id,
        window_events: 100,
        flow_control,
        ..ReceiverConfig::default()
    };
    let mut observer = Receiver::new(config(1, false), 1, None, us(0)).unwrap();
    let mut held = Receiver::new(config(2, true), 1, None, us(0)).unwrap();
    observer.handle_timeout(us(1));
    held.handle_timeout(us(1));
    for datagram in control_out(&mut observer, us(1)) {
        sender.handle_datagram(us(1), addr(RECEIVER), &datagram);
    }
    assert_eq!(sender.receivers().len(), 1, "the observer is known (it gets repairs)");
    assert_eq!(sender.window_remaining(us(1)), u64::MAX, "but its window does not count");
    for datagram in control_out(&mut held, us(1)) {
        sender.handle_datagram(us(1), addr("198.18.0.3:4000"), &datagram);
    }
    assert_eq!(sender.window_remaining(us(1)), 100, "a flow-controlled receiver does");
}

#[test]
fn publish_refuses_bad_frames_and_a_ring_full_of_unsent_data() {
    let mut sender =
        Sender::new(SenderConfig { ring_datagrams: 16, ..SenderConfig::default() }, 1, us(0)).unwrap();
    assert_eq!(sender.publish(us(0), &[1, 2, 3]), Err(PublishError::BadFrame));
    assert!(matches!(sender.publish(us(0), &[0u8; 2000]), Err(PublishError::FrameTooLarge { .. })));
    let mut refused = None;
    for sequence in 1..=14 * 17 {
        if let Err(error) = sender.publish(us(0), &event_frame(sequence)) {
            refused = Some((sequence, error));
            break;
        }
    }
    let (sequence, error) = refused.expect("the ring fills up");
    assert_eq!(error, PublishError::RingFull);
    assert_eq!(sender.next_sequence(), sequence, "a refused publish changes nothing");
    assert_eq!(drain(&mut sender, us(1)).len(), 16);
    sender.publish(us(2), &event_frame(sequence)).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Hostile datagrams are counted and dropped; the stream carries on.
    #[test]
    fn hostile_datagrams_change_nothing(garbage in proptest::collection::vec(any::<u8>(), 0..1500), flip in 0usize..1400) {
        let mut sender = Sender::new(SenderConfig::default(), 1, us(0)).unwrap();
        let mut receiver = Receiver::new(ReceiverConfig::default(), 1, None, us(0)).unwrap();
        let mut got = Vec::new();
        sender.publish(us(0), &event_frame(1)).unwrap();
        let good = drain(&mut sender, us(0)).remove(0).1;
        let mut corrupt = good.clone();
        let index = flip % corrupt.len();
        corrupt[index] ^= 0x40;
        feed(&mut receiver, us(1), &garbage, &mut got);
        feed(&mut receiver, us(2), &corrupt, &mut got);
        feed(&mut receiver, us(3), &good[..good.len() - 1], &mut got);
        sender.handle_datagram(us(4), addr(RECEIVER), &garbage);
        sender.handle_datagram(us(5), addr(RECEIVER), &corrupt);
        prop_assert!(got.is_empty());
        feed(&mut receiver, us(6), &good, &mut got);
        prop_assert_eq!(got, vec![1]);
        prop_assert!(receiver.stats().bad_packets >= 2);
    }
}

fn nak_bytes(from: u64, count: u32) -> Vec<u8> {
    let mut buf = [0u8; 256];
    let mut writer = PacketWriter::control(&mut buf, 1, 1);
    writer.push(&Nak { from_sequence: from.into(), count: count.into(), receiver_id: 1.into() }).unwrap();
    let size = writer.finish(0);
    buf[..size].to_vec()
}

#[test]
fn naks_from_strangers_are_not_answered_and_requesters_are_rate_limited() {
    let config = SenderConfig {
        allowed_requesters: vec![addr(RECEIVER)],
        retransmit_rate_per_sec: 1_000,
        retransmit_burst: 10,
        ..SenderConfig::default()
    };
    let mut sender = Sender::new(config, 1, us(0)).unwrap();
    for sequence in 1..=14 * 100 {
        sender.publish(us(0), &event_frame(sequence)).unwrap();
    }
    assert_eq!(drain(&mut sender, us(0)).len(), 100);
    // A spoofed NAK from a third party: nothing is reflected at it.
    sender.handle_datagram(us(10), addr("198.18.0.99:4000"), &nak_bytes(1, 1_400));
    assert!(drain(&mut sender, us(10)).is_empty());
    assert_eq!(sender.stats().naks_unknown_source, 1);
    // The configured subscriber asks for everything: it gets its burst, no more.
    sender.handle_datagram(us(20), addr(RECEIVER), &nak_bytes(1, 1_400));
    assert_eq!(drain(&mut sender, us(20)).len(), 10);
    assert!(sender.stats().naks_rate_limited > 0);
    // A second later the budget has refilled (1,000/s, capped at the burst of 10).
    sender.handle_datagram(us(1_020_000), addr(RECEIVER), &nak_bytes(14 * 50 + 1, 14 * 20));
    assert_eq!(drain(&mut sender, us(1_020_000)).len(), 10);
}

/// An idle bus costs little: heartbeats and status messages back off while nothing
/// moves, and come back to their base rate as soon as data flows, so tail loss after a
/// burst is still seen within the base interval.
#[test]
fn idle_heartbeats_and_status_back_off_and_data_brings_them_back() {
    let mut sender = Sender::new(SenderConfig::default(), 1, us(0)).unwrap();
    let mut receiver = Receiver::new(ReceiverConfig::default(), 1, None, us(0)).unwrap();
    let run = |sender: &mut Sender, receiver: &mut Receiver, from_us: u64, to_us: u64| {
        let (mut beats, mut status) = (0, 0);
        let mut got = Vec::new();
        for t in (from_us..to_us).step_by(100) {
            sender.handle_timeout(us(t));
            for (_, datagram) in drain(sender, us(t)) {
                if datagram[5] == ledgerbus_codec::PacketKind::Control.to_wire() {
                    beats += 1;
                }
                feed(receiver, us(t), &datagram, &mut got);
            }
            receiver.handle_timeout(us(t));
            for control in control_out(receiver, us(t)) {
                status += 1;
                sender.handle_datagram(us(t), addr(RECEIVER), &control);
            }
        }
        (beats, status)
    };
    // One idle second: at 1 ms fixed that was 1,000 of each.
    let (heartbeats, statuses) = run(&mut sender, &mut receiver, 0, 1_000_000);
    assert!(heartbeats < 30, "{heartbeats} heartbeats in an idle second");
    assert!(statuses < 30, "{statuses} status messages in an idle second");
    // Data: the next heartbeat comes within the base interval again.
    sender.publish(us(1_000_000), &event_frame(1)).unwrap();
    let (beats, _) = run(&mut sender, &mut receiver, 1_000_000, 1_001_500);
    assert_eq!(beats, 1, "a heartbeat within 1 ms of the data announces its end");
    assert_eq!(receiver.next_expected(), 2);
}
