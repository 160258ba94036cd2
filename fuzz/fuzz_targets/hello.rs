//! Guest bytes as the handshake's first frame.
//!
//! Asserts: decoding and validating a `GuestHello` never panics, and a hello
//! that validates speaks our protocol version.
#![no_main]

use capsem_proto::limits::PROTOCOL_VERSION;
use capsem_proto::{GuestHello, frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((hello, _))) = frame::decode_frame::<GuestHello>(data)
        && hello.validate().is_ok()
    {
        assert_eq!(hello.protocol, PROTOCOL_VERSION);
    }
});
