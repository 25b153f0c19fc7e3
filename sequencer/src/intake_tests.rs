//! The intake driven byte by byte, without a socket: handshake, framing, chains,
//! window and back-pressure.

use std::time::{Duration, Instant};

use ledgerbus_codec::messages::{Authenticate, Challenge, CreateAccount, Transfer, Welcome};
use ledgerbus_codec::{decode, encode, transfer_flags, Message, ResultCode};
use ledgerbus_ledger::{Ledger, Replica};

use super::*;

const SECRET: &[u8] = b"a-gateway-secret-of-some-length";
const NONCE: [u8; 32] = [7; 32];

fn frame<M: Message>(message: &M) -> Vec<u8> {
    let mut bytes = vec![0u8; M::FRAME_SIZE];
    encode(message, &mut bytes).unwrap();
    bytes
}

fn answer(secret: &[u8]) -> Vec<u8> {
    frame(&Authenticate { gateway_id: 3.into(), reserved: [0; 4], mac: auth::answer(secret, &NONCE) })
}

fn account(id: u128) -> Vec<u8> {
    frame(&CreateAccount {
        correlation_id: 0.into(),
        id: id.into(),
        ledger: 1.into(),
        code: 1.into(),
        flags: ledgerbus_codec::account_flags::ALLOW_NEGATIVE.into(),
        ..Default::default()
    })
}

fn transfer(id: u128, linked: bool) -> Vec<u8> {
    frame(&Transfer {
        correlation_id: 0.into(),
        id: id.into(),
        debit_account_id: 1u128.into(),
        credit_account_id: 2u128.into(),
        amount: 1.into(),
        ledger: 1.into(),
        code: 1.into(),
        flags: if linked { transfer_flags::LINKED } else { 0 }.into(),
        ..Default::default()
    })
}

/// Bytes in as the socket would deliver them.
fn feed(intake: &mut Intake, bytes: &[u8]) {
    let buffer = intake.receive_buffer();
    buffer[..bytes.len()].copy_from_slice(bytes);
    intake.received(bytes.len());
}

/// An authenticated intake, a core with accounts 1 and 2, and its scratch space.
struct Fixture {
    intake: Intake,
    core: SequencerCore,
    chain: Vec<Transfer>,
}

impl Fixture {
    fn new() -> Fixture {
        let mut intake = Intake::new(NONCE, Instant::now() + Duration::from_secs(5));
        feed(&mut intake, &answer(SECRET));
        assert_eq!(
            intake.authenticate(SECRET, Instant::now(), 9, 1, Leadership::Here),
            Handshake::Accepted { gateway_id: 3 }
        );
        let mut core = SequencerCore::new(Replica::new(Ledger::new()));
        let mut batch = PendingBatch::with_capacity(8);
        let mut setup = Intake::new(NONCE, Instant::now() + Duration::from_secs(5));
        feed(&mut setup, &[answer(SECRET), account(1), account(2)].concat());
        setup.authenticate(SECRET, Instant::now(), 9, 1, Leadership::Here);
        setup.decide(0, &mut core, &mut Vec::new(), 1, 100, &mut batch).unwrap();
        assert_eq!(batch.len(), 2, "accounts 1 and 2 exist");
        Fixture { intake, core, chain: Vec::new() }
    }

    /// Decides what is buffered into a new batch; returns the results.
    fn decide(&mut self, window: usize) -> Result<Vec<ResultCode>, ProtocolError> {
        let mut batch = PendingBatch::with_capacity(8);
        let outcome = self.intake.decide(1, &mut self.core, &mut self.chain, 1, window, &mut batch);
        let results = batch.replies().iter().map(|reply| reply.result).collect();
        outcome.map(|()| results)
    }
}

#[test]
fn the_challenge_goes_out_first_and_only_the_right_answer_opens_the_connection() {
    let now = Instant::now();
    let mut intake = Intake::new(NONCE, now + Duration::from_secs(5));
    let (challenge, _) = decode::<Challenge>(intake.unsent()).unwrap();
    assert_eq!(challenge.nonce, NONCE);
    // Half an answer: wait for the rest.
    let right = answer(SECRET);
    feed(&mut intake, &right[..10]);
    assert_eq!(intake.authenticate(SECRET, now, 9, 42, Leadership::Here), Handshake::Waiting);
    feed(&mut intake, &right[10..]);
    assert_eq!(
        intake.authenticate(SECRET, now, 9, 42, Leadership::Here),
        Handshake::Accepted { gateway_id: 3 }
    );
    assert_eq!(intake.state(), IntakeState::Ready { gateway_id: 3 });
    let queued = &intake.unsent()[Challenge::FRAME_SIZE..];
    let (welcome, _) = decode::<Welcome>(queued).unwrap();
    assert_eq!((welcome.session_id.get(), welcome.next_sequence.get()), (9, 42));
    assert_eq!(intake.buffered(), 0, "the answer was consumed");

    let mut wrong = Intake::new(NONCE, now + Duration::from_secs(5));
    feed(&mut wrong, &answer(b"another-secret-entirely-wrong"));
    assert_eq!(wrong.authenticate(SECRET, now, 9, 42, Leadership::Here), Handshake::Refused);

    let mut slow = Intake::new(NONCE, now + Duration::from_secs(5));
    feed(&mut slow, &right[..10]);
    assert_eq!(
        slow.authenticate(SECRET, now + Duration::from_secs(6), 9, 42, Leadership::Here),
        Handshake::Refused
    );

    let mut rude = Intake::new(NONCE, now + Duration::from_secs(5));
    feed(&mut rude, &account(1));
    assert_eq!(
        rude.authenticate(SECRET, now, 9, 42, Leadership::Here),
        Handshake::Refused,
        "a command is not an answer"
    );
}

#[test]
fn a_member_that_does_not_lead_names_the_leader_instead_of_welcoming() {
    let now = Instant::now();
    let mut intake = Intake::new(NONCE, now + Duration::from_secs(5));
    feed(&mut intake, &answer(SECRET));
    let elsewhere = Leadership::Elsewhere { leader: 2, term: 7 };
    assert_eq!(intake.authenticate(SECRET, now, 9, 42, elsewhere), Handshake::NotLeader { gateway_id: 3 });
    let queued = &intake.unsent()[Challenge::FRAME_SIZE..];
    let (refusal, _) = decode::<ledgerbus_codec::messages::NotLeader>(queued).unwrap();
    assert_eq!((refusal.leader_replica_id.get(), refusal.term.get()), (2, 7));
    // A wrong secret learns nothing, not even who leads.
    let mut wrong = Intake::new(NONCE, now + Duration::from_secs(5));
    feed(&mut wrong, &answer(b"another-secret-entirely-wrong"));
    assert_eq!(wrong.authenticate(SECRET, now, 9, 42, elsewhere), Handshake::Refused);
    assert_eq!(wrong.unsent().len(), Challenge::FRAME_SIZE);
}

#[test]
fn nothing_is_decided_before_the_handshake() {
    let mut intake = Intake::new(NONCE, Instant::now() + Duration::from_secs(5));
    feed(&mut intake, &account(1));
    let mut core = SequencerCore::new(Replica::new(Ledger::new()));
    let mut batch = PendingBatch::with_capacity(1);
    intake.decide(0, &mut core, &mut Vec::new(), 1, 10, &mut batch).unwrap();
    assert!(batch.is_empty());
    assert_eq!(intake.buffered(), account(1).len());
}

#[test]
fn commands_cut_anywhere_are_decided_once_they_are_whole() {
    let mut fixture = Fixture::new();
    let stream = [transfer(10, false), account(3), transfer(11, false)].concat();
    let mut results = Vec::new();
    for byte in &stream {
        feed(&mut fixture.intake, std::slice::from_ref(byte));
        results.extend(fixture.decide(100).unwrap());
    }
    assert_eq!(results, [ResultCode::Ok, ResultCode::Ok, ResultCode::Ok]);
    assert_eq!(fixture.intake.buffered(), 0);
}

#[test]
fn a_linked_chain_waits_for_its_last_member_and_is_decided_whole() {
    let mut fixture = Fixture::new();
    let chain = [transfer(20, true), transfer(21, true), transfer(22, false)].concat();
    let cut = Transfer::FRAME_SIZE * 2 + 5;
    feed(&mut fixture.intake, &chain[..cut]);
    assert_eq!(fixture.decide(100).unwrap(), [], "two members and a piece: wait");
    assert_eq!(fixture.intake.buffered(), cut, "nothing consumed");
    feed(&mut fixture.intake, &chain[cut..]);
    assert_eq!(fixture.decide(100).unwrap(), [ResultCode::Ok; 3]);
}

#[test]
fn a_chain_cut_by_another_message_is_decided_as_an_open_chain() {
    let mut fixture = Fixture::new();
    feed(&mut fixture.intake, &[transfer(30, true), transfer(31, true), account(4)].concat());
    assert_eq!(
        fixture.decide(100).unwrap(),
        [ResultCode::LinkedChainOpen, ResultCode::LinkedChainOpen, ResultCode::Ok]
    );
}

#[test]
fn a_chain_longer_than_the_limit_is_decided_open_and_what_follows_goes_on() {
    let mut fixture = Fixture::new();
    let too_long: Vec<u8> = (0..=CHAIN_MAX as u128).flat_map(|n| transfer(1_000 + n, true)).collect();
    feed(&mut fixture.intake, &too_long);
    feed(&mut fixture.intake, &transfer(5_000, false));
    let results = fixture.decide(10_000).unwrap();
    assert_eq!(results.len(), CHAIN_MAX + 2);
    assert!(results[..=CHAIN_MAX].iter().all(|r| *r == ResultCode::LinkedChainOpen));
    assert_eq!(results[CHAIN_MAX + 1], ResultCode::Ok, "the next transfer is decided on its own");
}

#[test]
fn the_window_bounds_each_round_and_the_rest_waits_its_turn() {
    let mut fixture = Fixture::new();
    let accounts: Vec<u8> = (100..110).flat_map(account).collect();
    feed(&mut fixture.intake, &accounts);
    assert_eq!(fixture.decide(4).unwrap().len(), 4);
    assert_eq!(fixture.intake.buffered(), 6 * CreateAccount::FRAME_SIZE);
    assert_eq!(fixture.decide(4).unwrap().len(), 4);
    assert_eq!(fixture.decide(4).unwrap().len(), 2);
    assert_eq!(fixture.decide(0).unwrap().len(), 0, "a closed window decides nothing");
}

#[test]
fn what_is_not_a_command_closes_the_connection_after_what_came_before() {
    let mut fixture = Fixture::new();
    let welcome = frame(&Welcome { session_id: 1.into(), next_sequence: 1.into() });
    feed(&mut fixture.intake, &[account(5), welcome].concat());
    let mut batch = PendingBatch::with_capacity(8);
    let outcome = fixture.intake.decide(1, &mut fixture.core, &mut fixture.chain, 1, 100, &mut batch);
    assert_eq!(outcome, Err(ProtocolError::UnexpectedTemplate(Welcome::TEMPLATE_ID)));
    assert_eq!(batch.len(), 1, "the account before it was decided");

    let mut fixture = Fixture::new();
    feed(&mut fixture.intake, &[0xff; 64]);
    assert!(matches!(fixture.decide(100), Err(ProtocolError::Malformed(_))));
}

#[test]
fn unsent_replies_over_the_limit_stop_intake_until_they_are_written() {
    let mut fixture = Fixture::new();
    let queued = fixture.intake.unsent().len();
    fixture.intake.sent(queued);
    fixture.intake.queue(&vec![0u8; OUTBOUND_LIMIT + 1]);
    assert!(fixture.intake.backpressured());
    assert!(fixture.intake.receive_buffer().is_empty(), "no room while back-pressured");
    fixture.intake.sent(OUTBOUND_LIMIT);
    assert!(!fixture.intake.backpressured());
    assert_eq!(fixture.intake.receive_buffer().len(), INBOUND_SIZE);
    fixture.intake.sent(1);
    assert!(fixture.intake.unsent().is_empty());
}
