//! A three-member sequencer group in one process, on 127.0.0.1: it elects a leader,
//! followers name it to gateways, committed batches reach every member's journal and
//! ledger (equal hashes), the group goes on when the leader stops, the stopped member
//! catches up when it comes back, and a member of another group (or with another key)
//! is refused on the replication port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use ledgerbus_codec::messages::{CreateAccount, Transfer};
use ledgerbus_codec::{account_flags, ResultCode};
use ledgerbus_protocol::blocking::{leader_hint, SequencerClient};
use ledgerbus_protocol::Decided;
use ledgerbus_sequencer::config::GroupConfig;
use ledgerbus_sequencer::{start, RunningSequencer, SequencerConfig};
use ledgerbus_transport::{BusKey, BusKeys, BusSecurity};

const SECRET: &[u8] = b"a-test-secret-of-some-length";

/// A port free now, chosen below the kernel's ephemeral range (one the kernel hands
/// out can be taken by another test's outgoing connection before the member binds it).
fn free_port() -> SocketAddr {
    ledgerbus_tools::cluster::free_tcp().expect("a free port")
}

struct Group {
    dirs: Vec<tempfile::TempDir>,
    members: Vec<SocketAddr>,
    running: Vec<Option<RunningSequencer>>,
    _sink: UdpSocket,
    base: SequencerConfig,
}

impl Group {
    fn new(size: usize, key: [u8; 32]) -> Group {
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let target = match sink.local_addr().unwrap() {
            SocketAddr::V4(v4) => v4,
            SocketAddr::V6(_) => unreachable!(),
        };
        let dirs: Vec<_> = (0..size).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut base = SequencerConfig::local(dirs[0].path().to_path_buf(), vec![target], SECRET);
        let keys = std::sync::Arc::new(BusKeys::new(vec![BusKey::from_bytes(key)]).unwrap());
        base.bus_keys = keys.clone();
        base.sender.security = BusSecurity::Aead(keys);
        base.durability = ledgerbus_sequencer::Durability::Os;
        base.transfer_capacity = 1 << 12;
        let members = (0..size).map(|_| free_port()).collect();
        let mut group =
            Group { dirs, members, running: (0..size).map(|_| None).collect(), _sink: sink, base };
        for index in 0..size {
            group.start(index);
        }
        group
    }

    fn start(&mut self, index: usize) {
        let mut config = self.base.clone();
        config.data_dir = self.dirs[index].path().to_path_buf();
        config.group = Some(GroupConfig {
            replica_id: index as u64 + 1,
            members: self.members.clone(),
            tick: Duration::from_millis(10),
        });
        self.running[index] = Some(start(config).expect("member starts"));
    }

    fn gateways(&self) -> Vec<SocketAddr> {
        self.running.iter().map(|r| r.as_ref().map_or(self.members[0], |r| r.gateway_addr)).collect()
    }

    fn leader(&self, patience: Duration) -> usize {
        let deadline = Instant::now() + patience;
        loop {
            for (index, member) in self.running.iter().enumerate() {
                let Some(member) = member else { continue };
                let status = member.metrics.group.lock().unwrap().clone();
                if status.is_some_and(|s| s.role == "leader") {
                    return index;
                }
            }
            assert!(Instant::now() < deadline, "no leader within {patience:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every running member's committed head is `last`, and returns
    /// their hashes there.
    fn converge(&self, last: u64) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let heads: Vec<_> = self.running.iter().flatten().map(|m| m.metrics.head()).collect();
            if heads.iter().all(|h| h.last_sequence == last) {
                return heads.iter().map(|h| h.state_hash).collect();
            }
            assert!(Instant::now() < deadline, "members did not converge on {last}: {heads:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn account(id: u128) -> CreateAccount {
    CreateAccount {
        correlation_id: 0.into(),
        id: id.into(),
        ledger: 840.into(),
        code: 1.into(),
        flags: account_flags::ALLOW_NEGATIVE.into(),
        ..Default::default()
    }
}

fn transfer(id: u128) -> Transfer {
    Transfer {
        correlation_id: 0.into(),
        id: id.into(),
        debit_account_id: 1u128.into(),
        credit_account_id: 2u128.into(),
        amount: 5.into(),
        ledger: 840.into(),
        code: 1.into(),
        flags: 0.into(),
        ..Default::default()
    }
}

fn decide(client: &mut SequencerClient, ids: std::ops::Range<u128>) -> Vec<Decided> {
    for id in ids.clone() {
        client.send(&transfer(id)).unwrap();
    }
    client.flush().unwrap();
    ids.map(|_| Decided::read(client.read_reply().unwrap()).unwrap()).collect()
}

#[test]
fn a_group_elects_replicates_fails_over_and_catches_a_member_up() {
    let mut group = Group::new(3, [7; 32]);
    let leader = group.leader(Duration::from_secs(10));
    let gateways = group.gateways();
    let (mut client, leader_id) =
        SequencerClient::connect_leader(&gateways, SECRET, 1, Duration::from_secs(5)).unwrap();
    assert_eq!(leader_id as usize, leader + 1);
    // A follower names the leader.
    let follower = (leader + 1) % 3;
    let refusal = SequencerClient::connect(gateways[follower], SECRET, 2).err().expect("a follower refuses");
    assert_eq!(leader_hint(&refusal), Some(leader as u32 + 1));

    client.send(&account(1)).unwrap();
    client.send(&account(2)).unwrap();
    client.flush().unwrap();
    for _ in 0..2 {
        assert_eq!(Decided::read(client.read_reply().unwrap()).unwrap().result, ResultCode::Ok);
    }
    let first = decide(&mut client, 100..150);
    assert!(first.iter().all(|d| d.result == ResultCode::Ok));
    assert_eq!(first.last().unwrap().sequence, 52);
    let hashes = group.converge(52);
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "every member holds the same ledger: {hashes:?}");

    // The leader goes away: the others elect one and the sequence goes on.
    drop(client);
    group.running[leader].take().unwrap().stop().unwrap();
    let started = Instant::now();
    let next = group.leader(Duration::from_secs(10));
    assert_ne!(next, leader);
    let (mut client, _) =
        SequencerClient::connect_leader(&gateways, SECRET, 1, Duration::from_secs(10)).unwrap();
    let second = decide(&mut client, 150..170);
    eprintln!("failover (in-process stop to the first answer): {:?}", started.elapsed());
    assert!(second.iter().all(|d| d.result == ResultCode::Ok));
    assert_eq!(second.first().unwrap().sequence, 53, "no gap, no duplicate");
    // A retry of an id decided before the failover is recognised.
    let again = decide(&mut client, 120..121);
    assert_eq!(again[0].result, ResultCode::Exists);
    group.converge(73);

    // The old leader comes back and catches up as a follower.
    group.start(leader);
    let hashes = group.converge(73);
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    // The role in the status is a snapshot refreshed every 100 ms, and a member that
    // comes back may stand as a candidate until the leader's first heartbeat.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = group.running[leader].as_ref().unwrap().metrics.group.lock().unwrap().clone().unwrap();
        if status.role == "follower" {
            break;
        }
        assert!(Instant::now() < deadline, "the old leader is still a {} after 10 s", status.role);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads everything the replication port sends until it closes.
fn exchange(address: SocketAddr, hello: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut challenge = [0u8; 32];
    stream.read_exact(&mut challenge).unwrap();
    stream.write_all(hello).unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    rest
}

#[test]
fn the_replication_port_refuses_strangers_and_says_nothing() {
    let group = Group::new(3, [9; 32]);
    group.leader(Duration::from_secs(10));
    // A hello with a wrong MAC (another key or group): closed, nothing sent after the challenge.
    let mut hello = b"LBGROUP1".to_vec();
    hello.extend_from_slice(&[0u8; 24]);
    hello.extend_from_slice(&[1u8; 32]);
    assert!(exchange(group.members[0], &hello).is_empty());
    // Garbage of the right length: the same.
    assert!(exchange(group.members[1], &[0xAB; 64]).is_empty());
    // The group still leads on.
    group.leader(Duration::from_secs(5));
}
