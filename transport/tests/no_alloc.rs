//! The hot path allocates nothing after warm-up (docs/architecture.md, "Design rules" 5): publishing,
//! sending, receiving and delivering in order run on memory reserved at start-up.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use ledgerbus_transport::sim::event_frame;
use ledgerbus_transport::{
    BusKey, BusKeys, BusSecurity, MonoTime, Receiver, ReceiverConfig, Sender, SenderConfig,
};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One test, run plain and sealed in turn (a second test in this binary would
/// allocate on its own thread while the first counts).
#[test]
fn steady_state_publish_send_receive_deliver_does_not_allocate() {
    steady_state(BusSecurity::None);
    let keys = std::sync::Arc::new(BusKeys::new(vec![BusKey::from_bytes([3; 32])]).unwrap());
    steady_state(BusSecurity::Aead(keys));
}

fn steady_state(security: BusSecurity) {
    let source: SocketAddr = "198.18.0.1:4000".parse().unwrap();
    let sender_config = SenderConfig { security: security.clone(), instance: 1, ..SenderConfig::default() };
    let receiver_config =
        ReceiverConfig { security: security.clone(), instance: 2, ..ReceiverConfig::default() };
    let mut sender = Sender::new(sender_config, 1, MonoTime(0)).unwrap();
    let mut receiver = Receiver::new(receiver_config, 1, None, MonoTime(0)).unwrap();
    let mut buf = vec![0u8; 1408];
    let mut control = vec![0u8; 1408];
    let frames: Vec<_> = (1..=200_000u64).map(event_frame).collect();
    let mut delivered = 0u64;
    let mut run = |from: usize, to: usize, delivered: &mut u64| {
        for (index, frame) in frames[from..to].iter().enumerate() {
            let now = MonoTime((from + index) as u64 * 100);
            sender.publish(now, frame).unwrap();
            if index % 64 == 63 {
                while let Some(transmit) = sender.poll_transmit(now, &mut buf) {
                    receiver.handle_datagram(now, source, &buf[..transmit.size], &mut |_, _| *delivered += 1);
                }
                receiver.handle_timeout(now);
                while let Some(size) = receiver.poll_transmit(now, &mut control) {
                    sender.handle_datagram(now, source, &control[..size]);
                }
                sender.handle_timeout(now);
            }
        }
    };
    run(0, 100_000, &mut delivered);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    run(100_000, 200_000, &mut delivered);
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    assert!(delivered > 190_000);
    assert_eq!(
        after - before,
        0,
        "the steady state ({}) allocated {} times",
        security.name(),
        after - before
    );
}
