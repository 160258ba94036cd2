//! Length-prefixed frames: a little-endian `u32` payload length, then a
//! postcard-encoded message.
//!
//! The length is checked against [`MAX_FRAME_BYTES`] before anything is
//! buffered, and a payload must decode to exactly one message with no
//! trailing bytes. Decoding copies the payload out of the transport buffer
//! once, so a message is never re-read from memory the peer still controls.

use std::io;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

use crate::limits::MAX_FRAME_BYTES;

/// Bytes in a frame header.
pub const HEADER_BYTES: usize = 4;

/// A frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The header announces more than [`MAX_FRAME_BYTES`].
    #[error("frame of {size} bytes exceeds the limit of {MAX_FRAME_BYTES}")]
    TooLarge {
        /// The announced payload size.
        size: usize,
    },
    /// The payload is not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The transport failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame, and
/// otherwise the message and the number of bytes it used.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    let Some(header) = buf.get(..HEADER_BYTES) else {
        return Ok(None);
    };
    let size = payload_size(header.try_into().expect("slice of HEADER_BYTES"))?;
    let Some(payload) = buf.get(HEADER_BYTES..HEADER_BYTES + size) else {
        return Ok(None);
    };
    Ok(Some((decode_payload(payload)?, HEADER_BYTES + size)))
}

/// Encodes `msg` as one frame appended to `dst`.
pub fn encode_frame<T: Serialize>(msg: &T, dst: &mut BytesMut) -> Result<(), FrameError> {
    let payload = postcard::to_stdvec(msg).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if payload.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            size: payload.len(),
        });
    }
    dst.reserve(HEADER_BYTES + payload.len());
    dst.put_u32_le(payload.len() as u32);
    dst.put_slice(&payload);
    Ok(())
}

fn payload_size(header: [u8; HEADER_BYTES]) -> Result<usize, FrameError> {
    let size = u32::from_le_bytes(header) as usize;
    if size > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge { size });
    }
    Ok(size)
}

fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    match postcard::take_from_bytes(payload) {
        Ok((msg, [])) => Ok(msg),
        Ok((_, rest)) => Err(FrameError::Malformed(format!(
            "{} trailing bytes after the message",
            rest.len()
        ))),
        Err(e) => Err(FrameError::Malformed(e.to_string())),
    }
}

/// Reads exactly one frame, consuming nothing beyond it. Used for the
/// handshake, before the multiplexer takes over the same transport.
pub async fn read_frame<T, R>(reader: &mut R) -> Result<T, FrameError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; HEADER_BYTES];
    read_exact(reader, &mut header).await?;
    let mut payload = vec![0u8; payload_size(header)?];
    read_exact(reader, &mut payload).await?;
    decode_payload(&payload)
}

async fn read_exact<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<(), FrameError> {
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(e) => Err(FrameError::Io(e)),
    }
}

/// Writes one frame and flushes it.
pub async fn write_frame<T, W>(writer: &mut W, msg: &T) -> Result<(), FrameError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::new();
    encode_frame(msg, &mut buf)?;
    writer.write_all(&buf).await?;
    writer.flush().await?;
    Ok(())
}

/// A [`tokio_util::codec`] codec that decodes `In` and encodes `Out`.
///
/// The host uses `FrameCodec<GuestToHost, HostToGuest>`, the guest the
/// reverse, so neither side can decode the other's messages by mistake.
#[derive(Debug)]
pub struct FrameCodec<In, Out> {
    types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> FrameCodec<In, Out> {
    /// A new codec.
    pub fn new() -> Self {
        FrameCodec { types: PhantomData }
    }
}

impl<In, Out> Default for FrameCodec<In, Out> {
    fn default() -> Self {
        Self::new()
    }
}

impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        match decode_frame(src)? {
            Some((msg, used)) => {
                src.advance(used);
                Ok(Some(msg))
            }
            None => {
                if let Some(header) = src.get(..HEADER_BYTES) {
                    let size = payload_size(header.try_into().expect("slice of HEADER_BYTES"))?;
                    src.reserve(HEADER_BYTES + size - src.len());
                }
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        match self.decode(src)? {
            Some(msg) => Ok(Some(msg)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated),
        }
    }
}

impl<In, Out: Serialize> Encoder<Out> for FrameCodec<In, Out> {
    type Error = FrameError;

    fn encode(&mut self, msg: Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame(&msg, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{Command, ExecRequest, ExitStatus, GuestToHost, HostToGuest};
    use proptest::prelude::*;

    fn frame_of<T: Serialize>(msg: &T) -> BytesMut {
        let mut buf = BytesMut::new();
        encode_frame(msg, &mut buf).unwrap();
        buf
    }

    fn guest_msg() -> impl Strategy<Value = GuestToHost> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..2048).prop_map(GuestToHost::Stdout),
            proptest::collection::vec(any::<u8>(), 0..2048).prop_map(GuestToHost::Stderr),
            any::<u8>().prop_map(|c| GuestToHost::Exited(ExitStatus::Code(c))),
            (1u8..=64).prop_map(|s| GuestToHost::Exited(ExitStatus::Signal(s))),
            ".{0,64}".prop_map(GuestToHost::Refused),
        ]
    }

    fn host_msg() -> impl Strategy<Value = HostToGuest> {
        prop_oneof![
            ".{0,64}".prop_map(|s| HostToGuest::Exec(ExecRequest {
                id: 1,
                command: Command::Shell(s),
                env: vec![("A".into(), "b".into())],
                tty: None,
            })),
            proptest::collection::vec(".{0,16}", 1..8).prop_map(|argv| HostToGuest::Exec(
                ExecRequest {
                    id: 2,
                    command: Command::Argv(argv),
                    env: vec![],
                    tty: None,
                }
            )),
            proptest::collection::vec(any::<u8>(), 0..2048).prop_map(HostToGuest::Stdin),
            Just(HostToGuest::StdinEof),
            (any::<u32>(), 1u8..=64)
                .prop_map(|(exec, signal)| HostToGuest::Signal { exec, signal }),
            (any::<u32>(), any::<u16>(), any::<u16>()).prop_map(|(exec, rows, cols)| {
                HostToGuest::Resize {
                    exec,
                    size: crate::msg::TtySize { rows, cols },
                }
            }),
            Just(HostToGuest::Shutdown),
            any::<u64>().prop_map(|unix_time_ns| HostToGuest::SetClock { unix_time_ns }),
        ]
    }

    proptest! {
        #[test]
        fn guest_messages_round_trip(msgs in proptest::collection::vec(guest_msg(), 1..8)) {
            let mut buf = BytesMut::new();
            for m in &msgs {
                encode_frame(m, &mut buf).unwrap();
            }
            let mut codec = FrameCodec::<GuestToHost, HostToGuest>::new();
            let mut out = Vec::new();
            while let Some(m) = codec.decode(&mut buf).unwrap() {
                out.push(m);
            }
            prop_assert_eq!(out, msgs);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn host_messages_round_trip(msg in host_msg()) {
            let buf = frame_of(&msg);
            let (back, used) = decode_frame::<HostToGuest>(&buf).unwrap().unwrap();
            prop_assert_eq!(back, msg);
            prop_assert_eq!(used, buf.len());
        }

        #[test]
        fn every_prefix_of_a_frame_waits_for_more(msg in guest_msg()) {
            let buf = frame_of(&msg);
            for cut in 0..buf.len() {
                prop_assert!(decode_frame::<GuestToHost>(&buf[..cut]).unwrap().is_none());
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let mut codec = FrameCodec::<GuestToHost, HostToGuest>::new();
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }
    }

    #[test]
    fn oversized_header_is_rejected_before_buffering() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(u32::MAX);
        let mut codec = FrameCodec::<GuestToHost, HostToGuest>::new();
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge { size }) if size == u32::MAX as usize
        ));
        assert!(buf.capacity() < 1024, "buffer grew to {}", buf.capacity());
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut payload = postcard::to_stdvec(&GuestToHost::Exited(ExitStatus::Code(0))).unwrap();
        payload.push(0);
        let mut buf = BytesMut::new();
        buf.put_u32_le(payload.len() as u32);
        buf.put_slice(&payload);
        assert!(matches!(
            decode_frame::<GuestToHost>(&buf),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_variant_is_malformed() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(1);
        buf.put_u8(200);
        assert!(matches!(
            decode_frame::<GuestToHost>(&buf),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn huge_length_inside_a_small_frame_does_not_allocate() {
        // A Stdout variant claiming 2^62 bytes of data in a 12-byte payload.
        let mut payload = vec![0u8];
        payload.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f]);
        let mut buf = BytesMut::new();
        buf.put_u32_le(payload.len() as u32);
        buf.put_slice(&payload);
        assert!(matches!(
            decode_frame::<GuestToHost>(&buf),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn eof_inside_a_frame_is_truncation() {
        let mut buf = frame_of(&GuestToHost::Stdout(vec![1, 2, 3]));
        buf.truncate(buf.len() - 1);
        let mut codec = FrameCodec::<GuestToHost, HostToGuest>::new();
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(FrameError::Truncated)
        ));
    }

    #[tokio::test]
    async fn read_frame_consumes_exactly_one_frame() {
        let mut bytes = frame_of(&GuestToHost::Exited(ExitStatus::Code(7))).to_vec();
        bytes.extend_from_slice(b"next");
        let mut reader = &bytes[..];
        let msg: GuestToHost = read_frame(&mut reader).await.unwrap();
        assert_eq!(msg, GuestToHost::Exited(ExitStatus::Code(7)));
        assert_eq!(reader, b"next");
        let mut short = &bytes[..3];
        assert!(matches!(
            read_frame::<GuestToHost, _>(&mut short).await,
            Err(FrameError::Truncated)
        ));
    }
}
