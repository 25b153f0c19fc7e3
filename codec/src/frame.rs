//! Decoding a frame whose template is not known in advance, and walking a buffer of
//! back-to-back frames.

use crate::header::{MessageHeader, MESSAGE_HEADER_SIZE};
use crate::messages::*;
use crate::{DecodeError, Message, View};

/// Any ledgerbus message, decoded by its template id.
#[derive(Debug, Clone, Copy)]
pub enum Frame<'a> {
    CreateAccount(View<'a, CreateAccount>),
    Transfer(View<'a, Transfer>),
    CreateAccountResult(View<'a, CreateAccountResult>),
    TransferResult(View<'a, TransferResult>),
    AccountEvent(View<'a, AccountEvent>),
    TransferEvent(View<'a, TransferEvent>),
    Heartbeat(View<'a, Heartbeat>),
    Nak(View<'a, Nak>),
    StatusMessage(View<'a, StatusMessage>),
    NakUnavailable(View<'a, NakUnavailable>),
    ReplayRequest(View<'a, ReplayRequest>),
    ReplayEnd(View<'a, ReplayEnd>),
    Challenge(View<'a, Challenge>),
    Authenticate(View<'a, Authenticate>),
    Welcome(View<'a, Welcome>),
    ClientHello(View<'a, ClientHello>),
    /// A lookup of an account (gateway TCP).
    LookupAccount(View<'a, LookupAccount>),
    /// A lookup of a transfer (gateway TCP).
    LookupTransfer(View<'a, LookupTransfer>),
    /// An account record (gateway TCP).
    AccountRecord(View<'a, AccountRecord>),
    /// A transfer record (gateway TCP).
    TransferRecord(View<'a, TransferRecord>),
    /// A lookup of an account's history (gateway TCP).
    LookupHistory(View<'a, LookupHistory>),
    /// The end of a history page (gateway TCP).
    HistoryEnd(View<'a, HistoryEnd>),
    /// A group member that does not lead (sequencer to gateway).
    NotLeader(View<'a, NotLeader>),
    /// A pending transfer expired (an event, since version 2).
    PendingExpired(View<'a, PendingExpired>),
}

impl<'a> Frame<'a> {
    /// Decodes the frame at the start of `bytes`; returns it with its size.
    ///
    /// An unknown template is `Err(UnknownTemplate { frame_size, .. })`, so a reader of
    /// a stream can skip exactly that frame and count it.
    pub fn decode(bytes: &'a [u8]) -> Result<(Frame<'a>, usize), DecodeError> {
        let (header, frame_size) = MessageHeader::read(bytes)?;
        if bytes.len() < frame_size {
            return Err(DecodeError::Truncated { needed: frame_size, available: bytes.len() });
        }
        let block = &bytes[MESSAGE_HEADER_SIZE..frame_size];
        let frame = match header.template_id.get() {
            CreateAccount::TEMPLATE_ID => Frame::CreateAccount(View::from_frame(header, block)?),
            Transfer::TEMPLATE_ID => Frame::Transfer(View::from_frame(header, block)?),
            CreateAccountResult::TEMPLATE_ID => Frame::CreateAccountResult(View::from_frame(header, block)?),
            TransferResult::TEMPLATE_ID => Frame::TransferResult(View::from_frame(header, block)?),
            AccountEvent::TEMPLATE_ID => Frame::AccountEvent(View::from_frame(header, block)?),
            TransferEvent::TEMPLATE_ID => Frame::TransferEvent(View::from_frame(header, block)?),
            Heartbeat::TEMPLATE_ID => Frame::Heartbeat(View::from_frame(header, block)?),
            Nak::TEMPLATE_ID => Frame::Nak(View::from_frame(header, block)?),
            StatusMessage::TEMPLATE_ID => Frame::StatusMessage(View::from_frame(header, block)?),
            NakUnavailable::TEMPLATE_ID => Frame::NakUnavailable(View::from_frame(header, block)?),
            ReplayRequest::TEMPLATE_ID => Frame::ReplayRequest(View::from_frame(header, block)?),
            ReplayEnd::TEMPLATE_ID => Frame::ReplayEnd(View::from_frame(header, block)?),
            Challenge::TEMPLATE_ID => Frame::Challenge(View::from_frame(header, block)?),
            Authenticate::TEMPLATE_ID => Frame::Authenticate(View::from_frame(header, block)?),
            Welcome::TEMPLATE_ID => Frame::Welcome(View::from_frame(header, block)?),
            ClientHello::TEMPLATE_ID => Frame::ClientHello(View::from_frame(header, block)?),
            LookupAccount::TEMPLATE_ID => Frame::LookupAccount(View::from_frame(header, block)?),
            LookupTransfer::TEMPLATE_ID => Frame::LookupTransfer(View::from_frame(header, block)?),
            AccountRecord::TEMPLATE_ID => Frame::AccountRecord(View::from_frame(header, block)?),
            TransferRecord::TEMPLATE_ID => Frame::TransferRecord(View::from_frame(header, block)?),
            LookupHistory::TEMPLATE_ID => Frame::LookupHistory(View::from_frame(header, block)?),
            HistoryEnd::TEMPLATE_ID => Frame::HistoryEnd(View::from_frame(header, block)?),
            NotLeader::TEMPLATE_ID => Frame::NotLeader(View::from_frame(header, block)?),
            PendingExpired::TEMPLATE_ID => Frame::PendingExpired(View::from_frame(header, block)?),
            id => return Err(DecodeError::UnknownTemplate { id, frame_size }),
        };
        Ok((frame, frame_size))
    }

    /// The template id of the frame.
    pub fn template_id(&self) -> u16 {
        match self {
            Frame::CreateAccount(_) => CreateAccount::TEMPLATE_ID,
            Frame::Transfer(_) => Transfer::TEMPLATE_ID,
            Frame::CreateAccountResult(_) => CreateAccountResult::TEMPLATE_ID,
            Frame::TransferResult(_) => TransferResult::TEMPLATE_ID,
            Frame::AccountEvent(_) => AccountEvent::TEMPLATE_ID,
            Frame::TransferEvent(_) => TransferEvent::TEMPLATE_ID,
            Frame::Heartbeat(_) => Heartbeat::TEMPLATE_ID,
            Frame::Nak(_) => Nak::TEMPLATE_ID,
            Frame::StatusMessage(_) => StatusMessage::TEMPLATE_ID,
            Frame::NakUnavailable(_) => NakUnavailable::TEMPLATE_ID,
            Frame::ReplayRequest(_) => ReplayRequest::TEMPLATE_ID,
            Frame::ReplayEnd(_) => ReplayEnd::TEMPLATE_ID,
            Frame::Challenge(_) => Challenge::TEMPLATE_ID,
            Frame::Authenticate(_) => Authenticate::TEMPLATE_ID,
            Frame::Welcome(_) => Welcome::TEMPLATE_ID,
            Frame::ClientHello(_) => ClientHello::TEMPLATE_ID,
            Frame::LookupAccount(_) => LookupAccount::TEMPLATE_ID,
            Frame::LookupTransfer(_) => LookupTransfer::TEMPLATE_ID,
            Frame::AccountRecord(_) => AccountRecord::TEMPLATE_ID,
            Frame::TransferRecord(_) => TransferRecord::TEMPLATE_ID,
            Frame::LookupHistory(_) => LookupHistory::TEMPLATE_ID,
            Frame::HistoryEnd(_) => HistoryEnd::TEMPLATE_ID,
            Frame::NotLeader(_) => NotLeader::TEMPLATE_ID,
            Frame::PendingExpired(_) => PendingExpired::TEMPLATE_ID,
        }
    }

    /// The sequence of an event frame; `None` for every other message.
    pub fn event_sequence(&self) -> Option<u64> {
        match self {
            Frame::AccountEvent(event) => Some(event.sequence.get()),
            Frame::TransferEvent(event) => Some(event.sequence.get()),
            Frame::PendingExpired(event) => Some(event.sequence.get()),
            _ => None,
        }
    }
}

/// Iterates over back-to-back frames in a buffer, yielding each frame's bytes.
///
/// It checks only framing (header present, ours, block fits), not templates, so it
/// steps over messages a newer writer added. After the first error it yields nothing
/// more: a corrupt length means nothing after it can be trusted.
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Frames<'a> {
    /// Frames of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Frames { rest: bytes, failed: false }
    }

    /// The bytes not yet consumed.
    pub fn remainder(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<&'a [u8], DecodeError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        match MessageHeader::frame_size(self.rest) {
            Ok(frame_size) => {
                let (frame, rest) = self.rest.split_at(frame_size);
                self.rest = rest;
                Some(Ok(frame))
            }
            Err(error) => {
                self.failed = true;
                Some(Err(error))
            }
        }
    }
}
