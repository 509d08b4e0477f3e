//! Lingering: reading and discarding the rest of a request body that was answered before it was
//! read to its end, so the client gets to read the answer.
//!
//! An answer can come before the body has been read: the gateway's own refusals (401, 404, 413,
//! ...) and a scoring container that answers without reading the upload. Dropping the unread body
//! then ends the exchange in a way many clients do not survive: over HTTP/1.1 hyper closes the
//! connection with request bytes still unread, and the kernel answers those with a TCP reset that
//! can destroy the response in the client's receive buffer; over HTTP/2 the stream is reset while
//! the client is still uploading, which curl 7.88 reports as `(92) Stream error in the HTTP/2
//! framing layer` instead of the answer. Like nginx's lingering close, [`discard`] keeps reading
//! (and throwing away) what the client still sends, up to `lingering_max_bytes` and for at most
//! `lingering_timeout_ms`, in a task of its own: the answer goes out at once, the client finishes
//! its upload, and the stream or connection ends cleanly. Past either bound the body is dropped:
//! the HTTP/1.1 connection is closed (through [`ConnInfo::abandon`]: hyper, waiting for the
//! socket, would not notice the dropped body), and HTTP/2 resets the stream with `NO_ERROR` (the
//! response is complete by then, RFC 9113 §8.1).
//!
//! When the answer is the container's, the end of the response (HTTP/2 `END_STREAM`, the last
//! chunk) waits until the discard is over: curl 7.88 stops uploading over HTTP/2 once it sees the
//! end of a 2xx response, and then waits for ever for its upload to finish; with the end held back
//! it finishes the upload first. (It stops uploading at a >= 400 answer, so the gateway's own
//! refusals need no hold.)
//!
//! A client that asked for `100 Continue` (HTTP/1.1) and was never sent it has not sent its body
//! and will not unless invited, so its body is dropped at once instead: reading it would invite it.

use std::sync::Arc;

use http::Version;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::oneshot;

use super::{ConnInfo, OpenRequest};
use crate::gateway::Gateway;
use crate::upstream::body::Unread;

/// Discards the rest of `unread` in a task of its own, within the current state's lingering
/// bounds (reloadable: each answer reads the state in force). The receiver resolves (with an
/// error: its sender is dropped) when the discard is over; `None` when there is none.
pub fn discard(
    gw: &Gateway,
    conn: &Arc<ConnInfo>,
    version: Version,
    unread: Unread,
) -> Option<oneshot::Receiver<()>> {
    if !unread.invited {
        return None;
    }
    let (timeout, max_bytes) = {
        let state = gw.state();
        let server = &state.config.server;
        (server.lingering_timeout, server.lingering_max_bytes)
    };
    if timeout.is_zero() || max_bytes == 0 {
        return None;
    }
    let discarded = gw.metrics.lingering_discards.clone();
    // An HTTP/2 stream is reset when its body is dropped; an HTTP/1.1 connection must be closed,
    // and counts as busy meanwhile (the server must not take it for idle and stop it).
    let conn = (version < Version::HTTP_2).then(|| OpenRequest::new(Arc::clone(conn)));
    let (over, waiting) = oneshot::channel();
    tracing::debug!(?timeout, max_bytes, "discarding an unread request body");
    tokio::spawn(async move {
        let _over = over;
        let outcome = tokio::time::timeout(timeout, read_to_end(unread.body, max_bytes))
            .await
            .unwrap_or(Outcome::TimedOut);
        discarded.with_label_values(&[outcome.as_str()]).inc();
        tracing::debug!(outcome = outcome.as_str(), "unread request body discarded");
        if let Some(conn) = conn
            && outcome != Outcome::Complete
        {
            conn.0.abandon();
        }
    });
    Some(waiting)
}

/// How a discard ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The client sent the rest of its body; the stream or connection ends cleanly.
    Complete,
    /// `lingering_max_bytes` passed.
    TooLarge,
    /// `lingering_timeout_ms` passed.
    TimedOut,
    /// The client stopped sending (it reset the stream or closed the connection), usually
    /// because it has read the answer.
    ClientError,
}

impl Outcome {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::TooLarge => "too_large",
            Self::TimedOut => "timeout",
            Self::ClientError => "client_stopped",
        }
    }
}

async fn read_to_end(mut body: Incoming, max_bytes: u64) -> Outcome {
    let mut read: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Outcome::ClientError;
        };
        if let Some(data) = frame.data_ref() {
            read += data.len() as u64;
            if read > max_bytes {
                return Outcome::TooLarge;
            }
        }
    }
    Outcome::Complete
}
