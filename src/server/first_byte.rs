//! A stream wrapper that closes connections which send nothing.
//!
//! hyper's `header_read_timeout` starts once HTTP/1 has been chosen, but hyper-util's automatic
//! protocol detection first reads the opening bytes with no timer, so a client that completes
//! the TLS handshake (or connects in plain HTTP) and then stays silent would hold its connection
//! (and a `max_connections` slot) forever; so would one that sends only the start of the HTTP/2
//! preface. [`FirstByteTimeout`] fails a read that is still waiting when the header read timeout
//! passes, until the protocol is decided: the first byte that cannot begin the HTTP/2 preface
//! (HTTP/1, where hyper's own timer takes over) or the complete preface (HTTP/2). From then on it
//! is a plain pass-through.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

#[derive(Debug)]
pub struct FirstByteTimeout<T> {
    inner: T,
    /// `None` once the first byte has arrived.
    wait: Option<Wait>,
}

/// The timer is created only when a read actually has to wait, so a client that sends its
/// request with the handshake costs no timer at all.
#[derive(Debug)]
struct Wait {
    after: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Bytes of the HTTP/2 preface matched so far.
    matched: usize,
}

/// RFC 9113 §3.4.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl<T> FirstByteTimeout<T> {
    pub fn new(inner: T, after: Duration) -> Self {
        Self {
            inner,
            wait: Some(Wait {
                after,
                sleep: None,
                matched: 0,
            }),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FirstByteTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if let Some(wait) = &mut this.wait {
                    let new = &buf.filled()[before..];
                    let expected = &H2_PREFACE[wait.matched..];
                    let n = new.len().min(expected.len());
                    if new[..n] == expected[..n] {
                        wait.matched += n;
                        if wait.matched == H2_PREFACE.len() {
                            this.wait = None; // a complete HTTP/2 preface
                        }
                    } else {
                        this.wait = None; // not HTTP/2: hyper's header timer applies
                    }
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let Some(wait) = &mut this.wait else {
                    return Poll::Pending;
                };
                let after = wait.after;
                let sleep = wait
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request bytes within the header read timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FirstByteTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn silent_peer_times_out_and_talking_peer_does_not() {
        let (client, server) = tokio::io::duplex(64);
        let mut silent = FirstByteTimeout::new(server, Duration::from_millis(300));
        let mut buf = [0u8; 8];
        let err = silent.read(&mut buf).await.expect_err("times out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(client);

        // The start of the HTTP/2 preface, then silence: still undecided, so it times out.
        let (mut client, server) = tokio::io::duplex(64);
        let mut partial = FirstByteTimeout::new(server, Duration::from_millis(300));
        client
            .write_all(b"PRI * HTTP/2.0\r\n")
            .await
            .expect("write");
        assert_eq!(partial.read(&mut buf).await.expect("read"), 8);
        assert_eq!(partial.read(&mut buf).await.expect("read"), 8);
        let err = partial.read(&mut buf).await.expect_err("times out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        let (mut client, server) = tokio::io::duplex(64);
        let mut talking = FirstByteTimeout::new(server, Duration::from_millis(300));
        client.write_all(b"G").await.expect("write");
        assert_eq!(talking.read(&mut buf).await.expect("read"), 1);
        // After the first byte, waiting longer than the timeout is fine.
        let late = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            client.write_all(b"ET").await.expect("write");
            client
        };
        let (n, _client) = tokio::join!(talking.read(&mut buf), late);
        assert_eq!(n.expect("read"), 2);
    }
}
