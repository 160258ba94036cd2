//! Guest bytes into the host's frame decoder, as a stream of frames.
//!
//! Asserts: decoding never panics; every decoded message can be validated
//! (without panicking) and re-encodes to a frame that decodes to itself.
#![no_main]

use bytes::BytesMut;
use capsem_proto::{GuestToHost, HostCodec, frame};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut codec = HostCodec::new();
    while let Ok(Some(msg)) = codec.decode(&mut buf) {
        let _ = msg.validate();
        let mut again = BytesMut::new();
        frame::encode_frame(&msg, &mut again).expect("a decoded message re-encodes");
        let (back, used) = frame::decode_frame::<GuestToHost>(&again)
            .expect("a re-encoded message decodes")
            .expect("a whole frame");
        assert_eq!(back, msg);
        assert_eq!(used, again.len());
    }
});
