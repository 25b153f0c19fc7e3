//! The real drivers over 127.0.0.1: a publisher and two subscribers on their own
//! threads, with injected loss, deliver every event exactly once and in order.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ledgerbus_transport::driver::{socket, Publisher, SocketOptions, Subscriber, Targets};
use ledgerbus_transport::sim::event_frame;
use ledgerbus_transport::{ReceiverConfig, SenderConfig};

const EVENTS: u64 = 50_000;

#[test]
fn publisher_and_subscribers_over_loopback_with_loss() {
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let mut subscribers = Vec::new();
    for index in 0..2u32 {
        let config = ReceiverConfig { receiver_id: index + 1, ..ReceiverConfig::default() };
        let mut subscriber =
            Subscriber::new(config, 1, None, loopback, None, loopback, SocketOptions::default()).unwrap();
        subscriber.inject_loss(5.0, u64::from(index) + 7);
        subscribers.push(subscriber);
    }
    let targets = subscribers.iter().map(|s| socket::ipv4(s.local_addr().unwrap()).unwrap()).collect();
    let mut publisher = Publisher::new(
        SenderConfig::default(),
        1,
        loopback,
        Targets::Unicast(targets),
        SocketOptions::default(),
    )
    .unwrap();
    let control = publisher.local_addr().unwrap();
    let threads: Vec<_> = subscribers
        .into_iter()
        .map(|mut subscriber| {
            subscriber.set_sender_control(control).unwrap();
            std::thread::spawn(move || {
                let mut delivered = Vec::with_capacity(EVENTS as usize);
                let deadline = Instant::now() + Duration::from_secs(60);
                while (delivered.len() as u64) < EVENTS && Instant::now() < deadline {
                    subscriber
                        .poll(Duration::from_millis(5), &mut |sequence, frame| {
                            assert_eq!(frame, event_frame(sequence), "bytes of event {sequence}");
                            delivered.push(sequence);
                        })
                        .unwrap();
                }
                (delivered, subscriber.stats().injected_drops)
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next = 1;
    while next <= EVENTS && Instant::now() < deadline {
        publisher.service().unwrap();
        let window = publisher.window_remaining().min(256);
        if window == 0 {
            publisher.wait(Duration::from_millis(1)).unwrap();
            continue;
        }
        for _ in 0..window.min(EVENTS + 1 - next) {
            assert_eq!(publisher.publish(&event_frame(next)).unwrap(), Ok(next));
            next += 1;
        }
        publisher.flush().unwrap();
    }
    while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
        publisher.wait(Duration::from_millis(1)).unwrap();
    }
    for thread in threads {
        let (delivered, drops) = thread.join().unwrap();
        assert!(drops > 0, "loss was injected");
        assert_eq!(delivered.len() as u64, EVENTS);
        assert!(delivered.iter().copied().eq(1..=EVENTS), "in order, exactly once");
    }
    assert!(publisher.core().stats().retransmits > 0);
}
