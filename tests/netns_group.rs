//! A three-member sequencer group across network namespaces this test builds, with
//! real multicast: three sequencer hosts, a gateway host and two consumer hosts on a
//! bridge (198.18.0.0/24, group 239.255.0.2). The leader's host is cut off with
//! nftables: it stops acknowledging and steps down, the other two elect a leader and
//! clients go on through the gateway; when the rule is removed, the old leader
//! rejoins as a follower and catches up, and both consumers end on the group's hash.
//!
//! The namespaces are deleted even on failure; where they cannot be made (not root,
//! no `ip`/`nft`), the test skips and says why. Nothing here touches the root
//! namespace's addresses, routes or firewall, and no multicast is sent there.

use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "netns-group-secret-0123456789";
const API_KEY: &str = "netns-group-api-key-0123456789";
const BUS_KEY: &str = "6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e";
const GROUP: &str = "239.255.0.2";

/// Namespaces and processes of one run, removed when dropped (processes first).
struct Lab {
    names: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
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

fn address(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, host)
}

fn at(host: u8, port: u16) -> SocketAddr {
    SocketAddr::from((address(host), port))
}

/// Adds host namespace `name` with address 198.18.0.`host` on the switch's bridge.
fn add_host(lab: &mut Lab, switch: &str, name: &str, host: u8) -> Result<(), String> {
    run(&["ip", "netns", "add", name])?;
    lab.names.push(name.to_string());
    let port = format!("p{host}");
    run(&["ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", switch])?;
    run(&["ip", "-n", switch, "link", "set", &port, "master", "br0"])?;
    run(&["ip", "-n", switch, "link", "set", &port, "up"])?;
    run(&["ip", "-n", name, "addr", "add", &format!("{}/24", address(host)), "dev", "eth0"])?;
    run(&["ip", "-n", name, "link", "set", "eth0", "up"])?;
    run(&["ip", "-n", name, "link", "set", "lo", "up"])?;
    run(&["ip", "-n", name, "route", "add", "224.0.0.0/4", "dev", "eth0"])
}

/// Runs `f` on a thread inside namespace `name`.
fn in_ns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = File::open(format!("/var/run/netns/{name}")).expect("namespace file");
                // SAFETY: a valid namespace fd; affects only this thread.
                let result = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(result, 0, "setns {name}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("namespace thread")
    })
}

fn spawn(lab: &mut Lab, ns: &str, args: &[String]) {
    let child = Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_ledgerbus"), "--log-level", "warn"])
        .args(args)
        .env("LEDGERBUS_SEQUENCER_SECRET", SECRET)
        .env("LEDGERBUS_API_KEYS", API_KEY)
        .env("LEDGERBUS_BUS_KEY", BUS_KEY)
        .env_remove("LEDGERBUS_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start a ledgerbus process");
    lab.children.push(child);
}

fn status(address: SocketAddr) -> Option<serde_json::Value> {
    ledgerbus_tools::cluster::http_json(address, "/status", None).map(|(_, v)| v)
}

fn post(gateway: SocketAddr, path: &str, body: &str) -> Option<u16> {
    ledgerbus_tools::cluster::http_request(gateway, "POST", path, Some(API_KEY), Some(body)).map(|(s, _)| s)
}

/// Transfers `ids` through the gateway, each re-sent (same id) until answered;
/// panics if one is not answered within 20 s.
fn transfers(gateway: SocketAddr, ids: std::ops::Range<u32>) {
    for id in ids {
        let body = format!(
            r#"{{"id":"{id}","debit_account_id":"1","credit_account_id":"2","amount":1,"ledger":840,"code":1}}"#
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(post(gateway, "/transfers", &body), Some(200 | 201)) {
            assert!(Instant::now() < deadline, "transfer {id} not answered within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn wait_for(what: &str, patience: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + patience;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} within {patience:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn skip(reason: &str) {
    println!("SKIPPED netns group test: {reason}");
}

#[test]
fn an_isolated_leader_steps_down_the_majority_goes_on_and_it_rejoins() {
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
    let switch = format!("lgsw{tag}");
    if let Err(reason) = run(&["ip", "netns", "add", &switch]) {
        return skip(&reason);
    }
    let mut lab = Lab { names: vec![switch.clone()], children: Vec::new() };
    run(&["ip", "-n", &switch, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"]).unwrap();
    run(&["ip", "-n", &switch, "link", "set", "br0", "up"]).unwrap();
    let sequencer_hosts: Vec<String> = (1..=3).map(|i| format!("lgs{i}{tag}")).collect();
    for (i, name) in sequencer_hosts.iter().enumerate() {
        add_host(&mut lab, &switch, name, i as u8 + 1).unwrap();
    }
    let (gateway_ns, memory_ns, disk_ns) = (format!("lggw{tag}"), format!("lgm{tag}"), format!("lgd{tag}"));
    add_host(&mut lab, &switch, &gateway_ns, 10).unwrap();
    add_host(&mut lab, &switch, &memory_ns, 20).unwrap();
    add_host(&mut lab, &switch, &disk_ns, 21).unwrap();
    let data = tempfile::tempdir().unwrap();

    let s = |v: &dyn std::fmt::Display| v.to_string();
    let replicas = (1..=3).map(|i| at(i, 7010).to_string()).collect::<Vec<_>>().join(",");
    let replays = (1..=3).map(|i| at(i, 7002).to_string()).collect::<Vec<_>>().join(",");
    for (i, ns) in sequencer_hosts.iter().enumerate() {
        let host = i as u8 + 1;
        let args = vec![
            s(&"sequencer"),
            s(&"--replicas"),
            replicas.clone(),
            s(&"--replica-id"),
            s(&host),
            s(&"--data-dir"),
            s(&data.path().join(format!("seq{host}")).display()),
            s(&"--gateway-listen"),
            s(&at(host, 7000)),
            s(&"--control-listen"),
            s(&at(host, 7001)),
            s(&"--replay-listen"),
            s(&at(host, 7002)),
            s(&"--metrics-listen"),
            s(&at(host, 7003)),
            s(&"--multicast-group"),
            s(&GROUP),
            s(&"--multicast-interface"),
            s(&address(host)),
            s(&"--durability"),
            s(&"os"),
            s(&"--transfer-capacity"),
            s(&65_536),
        ];
        spawn(&mut lab, ns, &args);
    }
    for (ns, kind, host, id) in [(&memory_ns, "memory", 20u8, 1), (&disk_ns, "disk", 21, 2)] {
        let args = vec![
            s(&"consumer"),
            s(&kind),
            s(&"--multicast-group"),
            s(&GROUP),
            s(&"--multicast-interface"),
            s(&address(host)),
            s(&"--http-listen"),
            s(&at(host, 8081)),
            s(&"--sequencer-control"),
            s(&at(1, 7001)),
            s(&"--sequencer-replay"),
            replays.clone(),
            s(&"--consumer-id"),
            s(&id),
            s(&"--data-dir"),
            s(&data.path().join("disk").display()),
            s(&"--durability"),
            s(&"os"),
            s(&"--transfer-capacity"),
            s(&65_536),
        ];
        spawn(&mut lab, ns, &args);
    }
    let gateway = at(10, 8080);
    let sequencers = (1..=3).map(|i| at(i, 7000).to_string()).collect::<Vec<_>>().join(",");
    let args = vec![
        s(&"gateway"),
        s(&"--http-listen"),
        s(&gateway),
        s(&"--tcp-listen"),
        s(&at(10, 7070)),
        s(&"--sequencer"),
        sequencers,
        s(&"--query-upstream"),
        s(&at(20, 8081)),
    ];
    spawn(&mut lab, &gateway_ns, &args);

    // The leader: the member claiming it in the highest term, as seen from the gateway host.
    let leader = |exclude: Option<u8>| -> Option<(u8, u64)> {
        in_ns(&gateway_ns, || {
            (1..=3u8)
                .filter(|h| Some(*h) != exclude)
                .filter_map(|h| {
                    let group = status(at(h, 7003))?["group"].clone();
                    (group["role"] == "leader").then(|| (group["term"].as_u64().unwrap_or(0), h))
                })
                .max()
                .map(|(term, h)| (h, term))
        })
    };
    wait_for("a leader", Duration::from_secs(30), || leader(None).is_some());
    in_ns(&gateway_ns, || {
        wait_for("the gateway", Duration::from_secs(30), || {
            ledgerbus_tools::cluster::http_json(gateway, "/health", None).is_some_and(|(code, _)| code == 200)
        });
        for id in [1, 2] {
            let body = format!(r#"{{"id":"{id}","ledger":840,"code":1,"allow_negative":true}}"#);
            assert!(matches!(post(gateway, "/accounts", &body), Some(200 | 201)), "account {id}");
        }
        transfers(gateway, 1_000..1_050);
    });

    // Cut the leader's host off: nothing in or out but its own loopback.
    let (old, old_term) = leader(None).expect("a leader");
    let old_ns = &sequencer_hosts[old as usize - 1];
    let rules = "table inet lbiso {\n chain input { type filter hook input priority 0; policy drop; iif lo accept; }\n \
                 chain output { type filter hook output priority 0; policy drop; oif lo accept; }\n}\n";
    let mut nft = Command::new("ip")
        .args(["netns", "exec", old_ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    nft.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
    assert!(nft.wait().unwrap().success(), "nft rules on {old_ns}");

    // It stops leading (check-quorum), seen from inside its own host.
    in_ns(old_ns, || {
        let mut last = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            last = status(at(old, 7003)).or(last);
            if last.as_ref().is_some_and(|s| s["group"]["role"] != "leader") {
                break;
            }
            assert!(Instant::now() < deadline, "the isolated leader did not step down in 5 s: {last:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    // The majority elects another and clients go on.
    wait_for("a new leader on the majority side", Duration::from_secs(10), || {
        leader(Some(old)).is_some_and(|(_, term)| term > old_term)
    });
    in_ns(&gateway_ns, || transfers(gateway, 2_000..2_050));
    let (new, _) = leader(Some(old)).expect("the new leader");
    assert_ne!(new, old);

    // Heal: the old leader rejoins as a follower and catches up.
    run(&["ip", "netns", "exec", old_ns, "nft", "delete", "table", "inet", "lbiso"]).unwrap();
    let head =
        in_ns(&gateway_ns, || status(at(new, 7003)).expect("new leader's status")["last_sequence"].clone());
    in_ns(old_ns, || {
        wait_for("the old leader to rejoin as a follower and catch up", Duration::from_secs(20), || {
            status(at(old, 7003)).is_some_and(|s| {
                s["group"]["role"] == "follower" && s["last_sequence"].as_u64() >= head.as_u64()
            })
        })
    });
    // Both consumers (on their own hosts, fed by multicast) reach the group's state.
    let leader_status = in_ns(&gateway_ns, || status(at(new, 7003)).expect("status"));
    for (ns, host) in [(&memory_ns, 20u8), (&disk_ns, 21)] {
        in_ns(ns, || {
            wait_for("a consumer to reach the group's head", Duration::from_secs(20), || {
                status(at(host, 8081)).is_some_and(|s| {
                    s["last_sequence"] == leader_status["last_sequence"]
                        && s["state_hash"] == leader_status["state_hash"]
                })
            })
        });
    }
    for child in &mut lab.children {
        assert!(child.try_wait().unwrap().is_none(), "every process is still running");
    }
}
