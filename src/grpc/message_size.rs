//! The size cap of each request, enforced on the body as it arrives.
//!
//! tonic buffers a whole message before its codec sees a byte, and its own
//! cap (`max_decoding_message_size`) is one number per service. So every
//! consent.v1 service is wrapped in [`SizeCapped`], which reads the 5-byte
//! gRPC frame header and refuses a message longer than its method's cap
//! before tonic reserves room for it: `--max-message-bytes` for most
//! methods, and for those that carry a list the largest request its limits
//! allow (`lists::request_cap`). 16 hostile BatchChecks then buffer about
//! 19 MiB, not 64.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use http_body::{Frame, SizeHint};
use prost::bytes::Bytes;
use tonic::{Status, body::Body, codegen::http, server::NamedService};

use super::lists::request_cap;
use crate::error::Error;

/// The gRPC frame header: a compressed flag and a 4-byte length.
const HEADER: usize = 5;

/// A service whose request bodies are held to their method's size cap.
#[derive(Debug, Clone)]
pub struct SizeCapped<S> {
    inner: S,
    /// `--max-message-bytes`: the cap of methods without a list, and the
    /// most any method takes.
    max_message_bytes: usize,
}

impl<S> SizeCapped<S> {
    pub fn new(inner: S, max_message_bytes: usize) -> Self {
        Self {
            inner,
            max_message_bytes,
        }
    }
}

impl<S: NamedService> NamedService for SizeCapped<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tonic::codegen::Service<http::Request<Body>> for SizeCapped<S>
where
    S: tonic::codegen::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // A request stream (BulkCheck) holds many messages in one body, each
        // held to the cap on its own.
        let streaming = CLIENT_STREAMING.contains(request.uri().path());
        let cap = request_cap(request.uri().path(), self.max_message_bytes);
        self.inner.call(request.map(|body| {
            let mut body = CappedBody::new(body, cap);
            body.streaming = streaming;
            Body::new(body)
        }))
    }
}

/// The consent.v1 methods that take a stream of requests, by HTTP path.
static CLIENT_STREAMING: std::sync::LazyLock<std::collections::HashSet<String>> =
    std::sync::LazyLock::new(|| {
        super::limits::method_paths(&[super::pb::FILE_DESCRIPTOR_SET], |method| {
            method.is_client_streaming()
        })
    });

/// A request body that fails with RESOURCE_EXHAUSTED once its message is
/// known to be longer than `cap`: from the length in the frame header, or
/// from the bytes that arrived. Only unary requests are wrapped, so one
/// message is all a body may hold.
struct CappedBody {
    inner: Body,
    cap: usize,
    header: [u8; HEADER],
    /// Bytes of the body so far.
    seen: usize,
    /// The error was given; the body ends here.
    refused: bool,
    /// The body is a stream of messages, each held to `cap`; otherwise it
    /// is one message, and every byte counts towards it.
    streaming: bool,
}

impl CappedBody {
    fn new(inner: Body, cap: usize) -> Self {
        Self {
            inner,
            cap,
            header: [0; HEADER],
            seen: 0,
            refused: false,
            streaming: false,
        }
    }

    /// The message's length, at its most, once that is known to be over.
    fn over_cap(&mut self, data: &[u8]) -> Option<usize> {
        if self.streaming {
            return self.over_cap_in_stream(data);
        }
        let before = self.seen;
        self.seen += data.len();
        if before < HEADER {
            let take = (HEADER - before).min(data.len());
            self.header[before..before + take].copy_from_slice(&data[..take]);
        }
        if self.seen >= HEADER {
            let declared = u32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]) as usize;
            let sent = self.seen - HEADER;
            let length = declared.max(sent);
            return (length > self.cap).then_some(length);
        }
        None
    }
}

impl CappedBody {
    /// [`over_cap`](Self::over_cap) for a stream: `seen` counts the bytes
    /// of the current message, header included, and starts again at the
    /// next one.
    fn over_cap_in_stream(&mut self, mut data: &[u8]) -> Option<usize> {
        while !data.is_empty() {
            if self.seen < HEADER {
                let take = (HEADER - self.seen).min(data.len());
                self.header[self.seen..self.seen + take].copy_from_slice(&data[..take]);
                self.seen += take;
                data = &data[take..];
                if self.seen < HEADER {
                    return None;
                }
                if self.declared() > self.cap {
                    return Some(self.declared());
                }
            }
            let end = HEADER + self.declared();
            let take = (end - self.seen).min(data.len());
            self.seen += take;
            data = &data[take..];
            if self.seen == end {
                self.seen = 0;
            }
        }
        None
    }

    /// The length the current message's header declares.
    fn declared(&self) -> usize {
        u32::from_be_bytes([
            self.header[1],
            self.header[2],
            self.header[3],
            self.header[4],
        ]) as usize
    }
}

impl http_body::Body for CappedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.refused {
            return Poll::Ready(None);
        }
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let over = match &frame {
            Some(Ok(frame)) => frame.data_ref().and_then(|data| self.over_cap(data)),
            _ => None,
        };
        let Some(length) = over else {
            return Poll::Ready(frame);
        };
        self.refused = true;
        let cap = self.cap;
        Poll::Ready(Some(Err(Status::from(Error::MessageTooLarge {
            length,
            cap,
        }))))
    }

    fn is_end_stream(&self) -> bool {
        self.refused || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(declared: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend(declared.to_be_bytes());
        bytes
    }

    #[test]
    fn in_a_stream_each_message_is_held_to_the_cap_on_its_own() {
        let mut body = CappedBody::new(Body::empty(), 100);
        body.streaming = true;
        let mut three = Vec::new();
        for _ in 0..3 {
            three.extend(frame(100));
            three.extend([7; 100]);
        }
        // Three messages at the cap, in chunks that cut across them.
        for chunk in three.chunks(33) {
            assert_eq!(body.over_cap(chunk), None);
        }
        assert_eq!(body.over_cap(&frame(0)), None);
        assert_eq!(body.over_cap(&frame(101)), Some(101));
    }

    #[test]
    fn a_declared_length_over_the_cap_is_refused_at_the_header() {
        let mut body = CappedBody::new(Body::empty(), 100);
        assert_eq!(body.over_cap(&frame(100)), None);
        let mut body = CappedBody::new(Body::empty(), 100);
        assert_eq!(body.over_cap(&frame(101)), Some(101));
    }

    #[test]
    fn a_header_split_across_chunks_is_read_whole() {
        let mut body = CappedBody::new(Body::empty(), 100);
        let header = frame(5000);
        assert_eq!(body.over_cap(&header[..2]), None);
        assert_eq!(body.over_cap(&header[2..4]), None);
        assert_eq!(body.over_cap(&header[4..]), Some(5000));
    }

    #[test]
    fn bytes_past_the_cap_are_refused_whatever_the_header_said() {
        let mut body = CappedBody::new(Body::empty(), 100);
        assert_eq!(body.over_cap(&frame(10)), None);
        assert_eq!(body.over_cap(&[0; 100]), None);
        assert_eq!(body.over_cap(&[0; 1]), Some(101));
    }
}
