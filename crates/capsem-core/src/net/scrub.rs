//! The real API keys never reach the guest: what a server answers (a
//! header that reflects the request, a `Location` with the key in its
//! query, an error message quoting it) has every key replaced by its mask
//! (see [`super::keys::Secret::mask`]) before the guest, the model-call
//! meter or the body log sees it. Masks have the key's length, so a
//! response keeps its `Content-Length`.
//!
//! A key split across two data frames is caught: the tail of a frame that
//! could begin a key is held back until the next frame (or the end)
//! shows whether it does.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::header::HeaderValue;
use http_body::{Body as HttpBody, Frame};
use memchr::memmem;

use super::keys::Secret;

/// The keys to take out of responses, and their masks.
pub struct Scrubber {
    pairs: Vec<(memmem::Finder<'static>, Vec<u8>)>,
    /// The longest key, less one: the most a frame's tail holds back.
    longest: usize,
}

impl Scrubber {
    /// A scrubber for `secrets`; `None` when there is nothing to scrub.
    pub fn new(secrets: &[Secret]) -> Option<Arc<Scrubber>> {
        let pairs: Vec<_> = secrets
            .iter()
            .filter(|s| !s.key().is_empty())
            .map(|s| {
                let finder = memmem::Finder::new(s.key().as_bytes()).into_owned();
                (finder, s.mask().into_bytes())
            })
            .collect();
        let longest = pairs.iter().map(|(f, _)| f.needle().len()).max()?;
        Some(Arc::new(Scrubber {
            pairs,
            longest: longest - 1,
        }))
    }

    /// Replaces every key in `data` by its mask, in place.
    pub fn bytes(&self, data: &mut [u8]) -> bool {
        let mut found = false;
        for (finder, mask) in &self.pairs {
            let mut from = 0;
            while let Some(at) = finder.find(&data[from..]) {
                let start = from + at;
                data[start..start + mask.len()].copy_from_slice(mask);
                from = start + mask.len();
                found = true;
            }
        }
        found
    }

    /// A string with every key masked.
    pub fn text(&self, text: &str) -> String {
        let mut bytes = text.as_bytes().to_vec();
        self.bytes(&mut bytes);
        // Masks are ASCII replacing whole (UTF-8) keys.
        String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
    }

    /// Masks keys in header values.
    pub fn headers(&self, headers: &mut HeaderMap) {
        for value in headers.values_mut() {
            let mut bytes = value.as_bytes().to_vec();
            if self.bytes(&mut bytes)
                && let Ok(masked) = HeaderValue::from_bytes(&bytes)
            {
                *value = masked;
            }
        }
    }

    /// How many bytes at the end of `data` could be the start of a key.
    fn partial_tail(&self, data: &[u8]) -> usize {
        let window = data.len().min(self.longest);
        let tail = &data[data.len() - window..];
        (0..tail.len())
            .find(|&i| {
                let rest = &tail[i..];
                self.pairs
                    .iter()
                    .any(|(finder, _)| finder.needle().starts_with(rest))
            })
            .map_or(0, |i| tail.len() - i)
    }
}

/// A response body with the keys masked as it streams.
pub struct Scrubbed<B> {
    inner: B,
    scrubber: Arc<Scrubber>,
    held: BytesMut,
    /// A frame that came after held bytes, to be given out once they are.
    pending: Option<Frame<Bytes>>,
}

impl<B> Scrubbed<B> {
    /// Scrubs `inner` with `scrubber`.
    pub fn new(inner: B, scrubber: Arc<Scrubber>) -> Self {
        Scrubbed {
            inner,
            scrubber,
            held: BytesMut::new(),
            pending: None,
        }
    }

    /// Scrubs `data` after what was held; returns what can go out now.
    fn push(&mut self, data: &[u8]) -> Bytes {
        self.held.extend_from_slice(data);
        self.scrubber.bytes(&mut self.held);
        let keep = self.scrubber.partial_tail(&self.held);
        let out = self.held.split_to(self.held.len() - keep);
        out.freeze()
    }
}

impl<B> HttpBody for Scrubbed<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        if let Some(frame) = this.pending.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.push(&data);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        let mut frame = frame;
                        if let Some(trailers) = frame.trailers_mut() {
                            this.scrubber.headers(trailers);
                        }
                        if this.held.is_empty() {
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        this.pending = Some(frame);
                        let rest = this.held.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                },
                Poll::Ready(None) if !this.held.is_empty() => {
                    let rest = this.held.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_empty() && self.pending.is_none() && self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    const KEY: &str = "sk-ant-real-key-0123456789";

    fn scrubber() -> Arc<Scrubber> {
        let settings = crate::settings::from_user_text(&format!(
            "[ai.anthropic]\napi_key = \"{KEY}\"\n[ai.google]\napi_key = \"g-real-key\"\n"
        ));
        Scrubber::new(&super::super::keys::from_settings(&settings)).unwrap()
    }

    /// Streams `chunks` through a scrubber; returns what came out.
    async fn through(chunks: Vec<&'static str>) -> Vec<u8> {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(c))));
        let body = StreamBody::new(futures::stream::iter(frames));
        let scrubbed = Scrubbed::new(body, scrubber());
        scrubbed.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn keys_are_masked_even_across_frames_and_lengths_kept() {
        let whole = format!("a{KEY}b g-real-key {KEY}");
        for split in 0..whole.len() {
            let (a, b) = whole.split_at(split);
            let chunks = vec![&*a.to_owned().leak(), &*b.to_owned().leak()];
            let out = through(chunks).await;
            assert_eq!(out.len(), whole.len(), "split at {split}");
            let text = String::from_utf8(out).unwrap();
            assert!(
                !text.contains(KEY) && !text.contains("g-real-key"),
                "{split}: {text}"
            );
            assert!(text.starts_with("ask-ant-capsem-placeholder"), "{text}");
        }
        let bytewise: Vec<&'static str> = whole
            .bytes()
            .map(|b| &*String::from(b as char).leak())
            .collect();
        let text = String::from_utf8(through(bytewise).await).unwrap();
        assert!(!text.contains(KEY), "{text}");
    }

    #[tokio::test]
    async fn a_frame_that_cannot_start_a_key_is_not_held_back() {
        let s = scrubber();
        let mut body = Scrubbed::new(http_body_util::Empty::<Bytes>::new(), s);
        assert_eq!(&body.push(b"data: {}\n\n")[..], b"data: {}\n\n");
        assert_eq!(&body.push(b"x sk-a")[..], b"x ");
        assert_eq!(&body.push(b"pple")[..], b"sk-apple");
    }

    #[test]
    fn headers_and_text_are_masked() {
        let s = scrubber();
        let mut headers = HeaderMap::new();
        let location = format!("https://api.anthropic.com/x?k={KEY}");
        headers.insert("location", HeaderValue::from_str(&location).unwrap());
        headers.insert("x-echo", HeaderValue::from_static("nothing"));
        s.headers(&mut headers);
        assert!(!headers["location"].to_str().unwrap().contains(KEY));
        assert_eq!(headers["x-echo"], "nothing");
        assert!(!s.text(&format!("said {KEY}")).contains(KEY));
        assert!(Scrubber::new(&[]).is_none());
    }
}
