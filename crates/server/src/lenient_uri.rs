//! Accepts Wildbook's request lines with a raw `"` in the query (it appends unescaped JSON to
//! GET URLs, docs/wbia-api.md §1.4): the `http` crate's URI parser refuses `"`, so each connection's
//! bytes pass through a small rewriter that percent-encodes `"` inside request targets, and
//! leaves headers and bodies untouched (it follows Content-Length; after a chunked body it
//! stops rewriting for that connection).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Longest header line tracked while looking for Content-Length.
const MAX_HEADER_LINE: usize = 64 * 1024;

#[derive(Debug)]
enum State {
    /// In the request line; counts spaces to know when we are inside the target. `started`
    /// stays false through empty lines before it, which HTTP parsers skip (RFC 9112 §2.2).
    RequestLine {
        spaces: u8,
        started: bool,
    },
    Headers {
        line: Vec<u8>,
        content_length: usize,
        chunked: bool,
    },
    Body(usize),
    /// Framing we do not follow (chunked bodies): pass the rest unchanged.
    Passthrough,
}

/// The request-target rewriter, fed bytes in arbitrary pieces.
#[derive(Debug)]
pub struct Rewriter {
    state: State,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self {
            state: State::RequestLine {
                spaces: 0,
                started: false,
            },
        }
    }
}

impl Rewriter {
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            match &mut self.state {
                State::Passthrough => {
                    out.extend_from_slice(input);
                    return;
                }
                State::Body(left) => {
                    let n = (*left).min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    *left -= n;
                    if *left == 0 {
                        self.state = State::RequestLine {
                            spaces: 0,
                            started: false,
                        };
                    }
                }
                State::RequestLine { spaces, started } => {
                    let b = input[0];
                    input = &input[1..];
                    match b {
                        b'\r' | b'\n' if !*started => out.push(b),
                        b'\n' => {
                            out.push(b);
                            self.state = State::Headers {
                                line: Vec::new(),
                                content_length: 0,
                                chunked: false,
                            };
                        }
                        b' ' => {
                            *started = true;
                            *spaces = spaces.saturating_add(1);
                            out.push(b);
                        }
                        b'"' if *spaces == 1 => out.extend_from_slice(b"%22"),
                        _ => {
                            *started = true;
                            out.push(b);
                        }
                    }
                }
                State::Headers {
                    line,
                    content_length,
                    chunked,
                } => {
                    let b = input[0];
                    input = &input[1..];
                    out.push(b);
                    if b != b'\n' {
                        if line.len() < MAX_HEADER_LINE {
                            line.push(b);
                        }
                        continue;
                    }
                    let text = String::from_utf8_lossy(line).trim().to_ascii_lowercase();
                    line.clear();
                    if text.is_empty() {
                        self.state = if *chunked {
                            State::Passthrough
                        } else if *content_length > 0 {
                            State::Body(*content_length)
                        } else {
                            State::RequestLine {
                                spaces: 0,
                                started: false,
                            }
                        };
                    } else if let Some(v) = text.strip_prefix("content-length:") {
                        *content_length = v.trim().parse().unwrap_or(0);
                    } else if let Some(v) = text.strip_prefix("transfer-encoding:") {
                        *chunked |= v.contains("chunked");
                    }
                }
            }
        }
    }
}

/// A TCP stream whose incoming bytes go through a [`Rewriter`].
pub struct LenientStream {
    inner: TcpStream,
    rewriter: Rewriter,
    pending: Vec<u8>,
    offset: usize,
}

impl AsyncRead for LenientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.offset == this.pending.len() {
            let mut raw = [0u8; 8192];
            let mut raw_buf = ReadBuf::new(&mut raw);
            match Pin::new(&mut this.inner).poll_read(cx, &mut raw_buf) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            if raw_buf.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.pending.clear();
            this.offset = 0;
            this.rewriter.feed(raw_buf.filled(), &mut this.pending);
        }
        let n = buf.remaining().min(this.pending.len() - this.offset);
        buf.put_slice(&this.pending[this.offset..this.offset + n]);
        this.offset += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for LenientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A listener handing out [`LenientStream`]s, for `axum::serve`.
pub struct LenientListener(pub TcpListener);

impl axum::serve::Listener for LenientListener {
    type Io = LenientStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((inner, addr)) => {
                    let _ = inner.set_nodelay(true);
                    let stream = LenientStream {
                        inner,
                        rewriter: Rewriter::default(),
                        pending: Vec::new(),
                        offset: 0,
                    };
                    return (stream, addr);
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(pieces: &[&[u8]]) -> String {
        let mut r = Rewriter::default();
        let mut out = Vec::new();
        for p in pieces {
            r.feed(p, &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn quotes_in_the_target_only() {
        let req = b"POST /a?x=[{\"k\":1}] HTTP/1.1\r\nContent-Length: 7\r\nX-H: \"q\"\r\n\r\n{\"b\":1}GET /b?y=\"z\" HTTP/1.1\r\n\r\n";
        let want = "POST /a?x=[{%22k%22:1}] HTTP/1.1\r\nContent-Length: 7\r\nX-H: \"q\"\r\n\r\n{\"b\":1}GET /b?y=%22z%22 HTTP/1.1\r\n\r\n";
        assert_eq!(rewrite(&[req]), want);
        // Byte by byte gives the same.
        let pieces: Vec<&[u8]> = req.chunks(1).collect();
        assert_eq!(rewrite(&pieces), want);
    }

    #[test]
    fn chunked_bodies_switch_rewriting_off() {
        let req = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n\"x\"\r\n0\r\n\r\nGET /\"q\" HTTP/1.1\r\n\r\n";
        assert_eq!(rewrite(&[req]), String::from_utf8(req.to_vec()).unwrap());
    }
}
