//! Pass-through requests that time out only when nothing moves.
//!
//! reqwest's `read_timeout` runs one timer from sending the request until WBIA's headers
//! arrive, whatever the upload is doing meanwhile: an upload that took longer to send than the
//! idle timeout was cut off mid-stream although its bytes kept moving. Here the timer restarts
//! with every piece of the request body WBIA takes and every piece of its answer, so only a
//! connection where nothing moves for [`crate::ClientOptions::forward_idle_timeout`] fails.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::time::Instant;

use crate::{end_to_end_headers, Error, Result, WbiaClient};

/// A body passed through in pieces of this size when it is already in memory, so that its
/// progress restarts the idle timer as a streamed body's does.
const PIECE: usize = 64 << 10;

/// A stream of body pieces.
pub type BodyStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// What [`WbiaClient::forward`] sends: a body already read, or one still streaming in.
pub enum ForwardBody {
    Bytes(Bytes),
    Stream(BodyStream),
}

impl From<Bytes> for ForwardBody {
    fn from(bytes: Bytes) -> Self {
        Self::Bytes(bytes)
    }
}

/// WBIA's answer to a passed-through request: its status, end-to-end headers, and its body,
/// which ends in an error (`TimedOut`) when WBIA stops sending for the idle timeout.
pub struct Forwarded {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: BodyStream,
}

/// When bytes last moved, in milliseconds after `origin`.
#[derive(Clone)]
struct Activity {
    origin: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn idle_until(&self, idle: Duration) -> Instant {
        self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }
}

impl WbiaClient {
    /// Sends a request to WBIA unchanged (for pass-through): same method, path and query,
    /// end-to-end headers and the body as it streams in. No retries (the caller's request may
    /// not be idempotent) and no redirects followed (the caller gets WBIA's redirect). Fails
    /// with [`Error::Timeout`] only when nothing has moved either way for the idle timeout.
    pub async fn forward(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        headers: &reqwest::header::HeaderMap,
        body: ForwardBody,
    ) -> Result<Forwarded> {
        let url = self.url(path_and_query);
        let idle = self.options.forward_idle_timeout;
        let timeout = || Error::Timeout {
            url: url.clone(),
            secs: idle.as_secs(),
        };
        let mut out = end_to_end_headers(headers);
        out.remove(reqwest::header::HOST);
        let pieces: BodyStream = match body {
            ForwardBody::Bytes(bytes) => {
                // The length a whole body would have been sent with.
                out.insert(reqwest::header::CONTENT_LENGTH, bytes.len().into());
                let chunks: Vec<Bytes> = (0..bytes.len())
                    .step_by(PIECE)
                    .map(|at| bytes.slice(at..(at + PIECE).min(bytes.len())))
                    .collect();
                Box::pin(futures::stream::iter(chunks.into_iter().map(Ok)))
            }
            ForwardBody::Stream(stream) => stream,
        };
        let activity = Activity::new();
        let seen = activity.clone();
        let tracked = pieces.inspect(move |_| seen.touch());
        let send = self
            .forwarding
            .request(method, &url)
            .headers(out)
            .body(reqwest::Body::wrap_stream(tracked))
            .send();
        tokio::pin!(send);
        let response = loop {
            tokio::select! {
                sent = &mut send => break sent.map_err(|e| self.transport_error(&url, &e))?,
                _ = tokio::time::sleep_until(activity.idle_until(idle)) => {
                    if Instant::now() >= activity.idle_until(idle) {
                        return Err(timeout());
                    }
                }
            }
        };
        Ok(Forwarded {
            status: response.status(),
            headers: response.headers().clone(),
            body: idle_bounded(response.bytes_stream(), idle),
        })
    }
}

/// `stream`'s pieces, then an error if the next one takes longer than `idle`; ends after
/// the first error.
fn idle_bounded(
    stream: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    idle: Duration,
) -> BodyStream {
    let state = Some(Box::pin(stream));
    Box::pin(futures::stream::unfold(state, move |state| async move {
        let mut stream = state?;
        match tokio::time::timeout(idle, stream.next()).await {
            Ok(Some(Ok(piece))) => Some((Ok(piece), Some(stream))),
            Ok(Some(Err(e))) => Some((Err(io::Error::other(e)), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("WBIA sent nothing for {} s", idle.as_secs_f32()),
                )),
                None,
            )),
        }
    }))
}
