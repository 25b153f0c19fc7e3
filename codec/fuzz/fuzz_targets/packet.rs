//! Any bytes given to the packet decoder: never a panic, and a packet that decodes
//! has frames whose lengths add up exactly to the datagram, each of which decodes
//! or is a skippable unknown template.
#![no_main]

use ledgerbus_codec::{CrcCheck, DecodeError, Frame, Packet, PACKET_HEADER_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for crc in [CrcCheck::Verify, CrcCheck::Skip] {
        let Ok(packet) = Packet::decode(data, crc) else { continue };
        let mut total = PACKET_HEADER_SIZE;
        for frame in packet.frames() {
            let frame = frame.expect("a decoded packet is well framed");
            total += frame.len();
            match Frame::decode(frame) {
                Ok((_, size)) => assert_eq!(size, frame.len()),
                Err(DecodeError::UnknownTemplate { frame_size, .. }) => assert_eq!(frame_size, frame.len()),
                Err(_) => {}
            }
        }
        assert_eq!(total, data.len());
    }
});
