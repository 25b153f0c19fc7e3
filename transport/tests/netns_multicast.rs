//! Real IP multicast between network namespaces this test builds: a sender host and
//! three receiver hosts on a bridge (198.18.0.0/24, group 239.255.0.1), each receiver
//! dropping 5% of incoming data packets with an nftables `numgen random` rule. All
//! three must get all 100,000 events in order. The namespaces are torn down even on
//! failure; where they cannot be made (not root, no `ip`/`nft`), the test skips and
//! says why. Nothing here touches the root namespace's addresses, routes or firewall.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledgerbus_transport::driver::{MulticastOptions, Publisher, SocketOptions, Subscriber, Targets};
use ledgerbus_transport::sim::event_frame;
use ledgerbus_transport::{DeliveryMode, ReceiverConfig, SenderConfig};

const EVENTS: u64 = 100_000;
const RECEIVERS: usize = 3;
const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 0, 1);
const DATA_PORT: u16 = 15_000;
const CONTROL_PORT: u16 = 15_001;

/// The namespaces of one run; dropping it deletes them (and with them the veths).
struct Lab {
    names: Vec<String>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "delete", name]).status();
        }
    }
}

fn run(args: &[&str]) -> Result<(), String> {
    let output = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args[0]))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

fn run_stdin(args: &[&str], input: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    child.stdin.take().unwrap().write_all(input.as_bytes()).map_err(|e| e.to_string())?;
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

fn host_address(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 1 + index as u8)
}

/// Builds the lab: a switch namespace with a bridge, and one namespace per host.
fn build_lab(tag: &str) -> Result<(Lab, Vec<String>), String> {
    let switch = format!("lbsw{tag}");
    run(&["ip", "netns", "add", &switch])?;
    let mut lab = Lab { names: vec![switch.clone()] };
    run(&["ip", "-n", &switch, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])?;
    run(&["ip", "-n", &switch, "link", "set", "br0", "up"])?;
    let mut hosts = Vec::new();
    for index in 0..=RECEIVERS {
        let host = format!("lbh{index}{tag}");
        run(&["ip", "netns", "add", &host])?;
        lab.names.push(host.clone());
        let port = format!("p{index}");
        run(&[
            "ip", "-n", &host, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &switch,
        ])?;
        run(&["ip", "-n", &switch, "link", "set", &port, "master", "br0"])?;
        run(&["ip", "-n", &switch, "link", "set", &port, "up"])?;
        let cidr = format!("{}/24", host_address(index));
        run(&["ip", "-n", &host, "addr", "add", &cidr, "dev", "eth0"])?;
        run(&["ip", "-n", &host, "link", "set", "eth0", "up"])?;
        run(&["ip", "-n", &host, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", &host, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        hosts.push(host);
    }
    Ok((lab, hosts))
}

/// Drops 5% of data packets arriving at a receiver host, counting them.
fn add_loss_rule(host: &str) -> Result<(), String> {
    let rules = format!(
        "table inet lbtest {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  \
         udp dport {DATA_PORT} numgen random mod 100 < 5 counter drop\n }}\n}}\n"
    );
    run_stdin(&["ip", "netns", "exec", host, "nft", "-f", "-"], &rules)
}

fn dropped_by_rule(host: &str) -> u64 {
    let output =
        Command::new("ip").args(["netns", "exec", host, "nft", "list", "table", "inet", "lbtest"]).output();
    let text = output.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.split_whitespace().skip_while(|w| *w != "packets").nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Moves the calling thread into network namespace `name`.
fn enter(name: &str) {
    let file = File::open(format!("/var/run/netns/{name}")).expect("namespace file");
    // SAFETY: a valid namespace fd; affects only the calling thread.
    let result = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(result, 0, "setns into {name}: {}", std::io::Error::last_os_error());
}

fn skip(reason: &str) {
    println!("SKIPPED netns multicast test: {reason}");
}

#[test]
fn multicast_across_namespaces_with_five_percent_loss() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("needs root to create network namespaces");
    }
    for tool in ["ip", "nft"] {
        if Command::new(tool).arg("-V").output().is_err() {
            return skip(&format!("`{tool}` is not installed (iproute2 / nftables)"));
        }
    }
    let tag = format!("{}", std::process::id() % 100_000);
    let (lab, hosts) = match build_lab(&tag) {
        Ok(built) => built,
        Err(reason) if reason.contains("netns add") => return skip(&reason),
        Err(reason) => panic!("building the lab: {reason}"),
    };
    for host in &hosts[1..] {
        add_loss_rule(host).unwrap_or_else(|e| panic!("nftables rule: {e}"));
    }

    let multicast = |index: usize| MulticastOptions {
        group: GROUP,
        interface: host_address(index),
        ttl: 1,
        loopback: false,
    };
    let control = SocketAddr::from((host_address(0), CONTROL_PORT));
    let finished = Arc::new(AtomicUsize::new(0));
    let receivers: Vec<_> = (1..=RECEIVERS)
        .map(|index| {
            let host = hosts[index].clone();
            let finished = Arc::clone(&finished);
            let options = multicast(index);
            std::thread::spawn(move || {
                enter(&host);
                let config = ReceiverConfig {
                    receiver_id: index as u32,
                    mode: DeliveryMode::Multicast,
                    rng_seed: index as u64,
                    security: sealed(),
                    instance: index as u64 + 100,
                    ..ReceiverConfig::default()
                };
                let bind = SocketAddr::from((GROUP, DATA_PORT));
                let mut subscriber =
                    Subscriber::new(config, 1, None, bind, Some(options), control, SocketOptions::default())
                        .unwrap();
                let mut next = 1u64;
                let deadline = Instant::now() + Duration::from_secs(90);
                while next <= EVENTS && Instant::now() < deadline {
                    subscriber
                        .poll(Duration::from_millis(5), &mut |sequence, frame| {
                            assert_eq!(sequence, next, "receiver {index}: in order, exactly once");
                            assert_eq!(frame, event_frame(sequence));
                            next += 1;
                        })
                        .unwrap();
                }
                finished.fetch_add(1, Ordering::AcqRel);
                (next - 1, subscriber.core().stats().naks_sent)
            })
        })
        .collect();

    let sender_host = hosts[0].clone();
    let all_finished = Arc::clone(&finished);
    let sender = std::thread::spawn(move || {
        enter(&sender_host);
        let config = SenderConfig {
            mode: DeliveryMode::Multicast,
            security: sealed(),
            instance: 1,
            ..SenderConfig::default()
        };
        let targets =
            Targets::Multicast { group: SocketAddrV4::new(GROUP, DATA_PORT), options: multicast(0) };
        let mut publisher = Publisher::new(config, 1, control, targets, SocketOptions::default()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        // Wait until all receivers have announced themselves (flow control).
        while publisher.core().receivers().len() < RECEIVERS && Instant::now() < deadline {
            publisher.wait(Duration::from_millis(1)).unwrap();
        }
        let mut next = 1;
        while next <= EVENTS && Instant::now() < deadline {
            publisher.service().unwrap();
            let window = publisher.window_remaining().min(512).min(EVENTS + 1 - next);
            if window == 0 {
                publisher.wait(Duration::from_millis(1)).unwrap();
                continue;
            }
            for _ in 0..window {
                publisher.publish(&event_frame(next)).unwrap().unwrap();
                next += 1;
            }
            publisher.flush().unwrap();
        }
        // Serve NAKs until every receiver has everything.
        while Instant::now() < deadline && all_finished.load(Ordering::Acquire) < RECEIVERS {
            publisher.wait(Duration::from_millis(1)).unwrap();
        }
        publisher.core().stats().clone()
    });

    let results: Vec<_> = receivers.into_iter().map(|r| r.join()).collect();
    let sender_stats = sender.join();
    let drops: Vec<u64> = hosts[1..].iter().map(|h| dropped_by_rule(h)).collect();
    drop(lab);
    let sender_stats = sender_stats.expect("sender thread");
    for (index, result) in results.into_iter().enumerate() {
        let (delivered, naks) = result.unwrap_or_else(|_| panic!("receiver {} panicked", index + 1));
        assert_eq!(delivered, EVENTS, "receiver {} got {delivered} of {EVENTS}", index + 1);
        println!(
            "receiver {}: {delivered} events, {naks} NAKs, {} packets dropped by nftables",
            index + 1,
            drops[index]
        );
    }
    assert!(drops.iter().all(|&d| d > 0), "nftables dropped packets on every receiver: {drops:?}");
    assert!(sender_stats.retransmits > 0, "{sender_stats:?}");
    println!("sender: {sender_stats:?}");
}

/// The group's traffic is sealed, as in production.
fn sealed() -> ledgerbus_transport::BusSecurity {
    let keys =
        ledgerbus_transport::BusKeys::new(vec![ledgerbus_transport::BusKey::from_bytes([9; 32])]).unwrap();
    ledgerbus_transport::BusSecurity::Aead(std::sync::Arc::new(keys))
}
