//! Tar archives in and out of the guest, on a stream of their own
//! (`capsem cp`). The host never unpacks here: it forwards chunks; what
//! reaches the host's disk is checked where it is written.

use bytes::Bytes;
use capsem_proto::limits::MAX_CHUNK_BYTES;
use capsem_proto::{ArchiveTarget, GuestToHost, HostToGuest, ProtocolError};
use futures::{SinkExt, Stream, StreamExt};

use super::{Channel, ChannelError};

impl Channel {
    /// Sends the archive `chunks` to be unpacked at `target`; returns once
    /// the guest has it in place.
    pub async fn put_archive<E: std::fmt::Display>(
        &self,
        target: ArchiveTarget,
        chunks: impl Stream<Item = Result<Bytes, E>>,
    ) -> Result<(), ChannelError> {
        let msg = HostToGuest::PutArchive(target);
        msg.validate()?;
        let mut stream = self.open().await?;
        stream.send(msg).await?;
        let mut chunks = std::pin::pin!(chunks);
        while let Some(chunk) = chunks.next().await {
            let chunk =
                chunk.map_err(|e| ChannelError::Refused(format!("reading the archive: {e}")))?;
            for piece in chunk.chunks(MAX_CHUNK_BYTES) {
                stream.send(HostToGuest::Data(piece.to_vec())).await?;
            }
        }
        stream.send(HostToGuest::DataEnd).await?;
        match stream.next().await.ok_or(ChannelError::Closed)?? {
            GuestToHost::Done => Ok(()),
            GuestToHost::Refused(why) => Err(ChannelError::Refused(why)),
            _ => Err(ProtocolError::Unexpected("an answer other than Done to an archive").into()),
        }
    }

    /// Asks for `path` as an archive; its chunks follow as they come, and
    /// the stream ends with an error if the guest fails half-way.
    pub async fn get_archive(&self, path: &str) -> Result<Chunks, ChannelError> {
        self.receive_archive(HostToGuest::GetArchive {
            path: path.to_owned(),
        })
        .await
    }

    /// Asks for what the guest changed over the workspace, as an archive
    /// (see [`HostToGuest::ExportWorkspace`]).
    pub async fn export_workspace(&self) -> Result<Chunks, ChannelError> {
        self.receive_archive(HostToGuest::ExportWorkspace).await
    }

    async fn receive_archive(&self, msg: HostToGuest) -> Result<Chunks, ChannelError> {
        msg.validate()?;
        let mut stream = self.open().await?;
        stream.send(msg).await?;
        Ok(Box::pin(futures::stream::unfold(
            Some(stream),
            |stream| async move {
                let mut stream = stream?;
                let next = match stream.next().await {
                    None => Err(ChannelError::Closed),
                    Some(Err(e)) => Err(e.into()),
                    Some(Ok(msg)) => match msg.validate().map(|()| msg) {
                        Err(e) => Err(e.into()),
                        Ok(GuestToHost::Data(data)) => Ok(Bytes::from(data)),
                        Ok(GuestToHost::Done) => return None,
                        Ok(GuestToHost::Refused(why)) => Err(ChannelError::Refused(why)),
                        Ok(_) => Err(ProtocolError::Unexpected(
                            "a message other than Data in an archive",
                        )
                        .into()),
                    },
                };
                let keep = next.is_ok().then_some(stream);
                Some((next, keep))
            },
        )))
    }
}

/// The chunks of an archive from the guest, as they come.
pub type Chunks =
    std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, ChannelError>> + Send + 'static>>;
