//! `scoregate probe`: one HTTP GET against a health endpoint of a running gateway, for container
//! health checks in images that have no shell and no curl (the distroless runtime image's
//! `HEALTHCHECK`). A 2xx answer within the timeout is healthy; anything else is not, with the
//! reason. This module only asks; what `/readyz` and `/livez` mean is decided by `admin`.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Most bytes of the answer's body read (the readiness body is a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;

/// What the probed endpoint answered.
#[derive(Debug)]
pub struct ProbeAnswer {
    pub status: StatusCode,
    /// The body, as text (lossy), for the operator reading a failed check.
    pub body: String,
}

impl ProbeAnswer {
    pub fn healthy(&self) -> bool {
        self.status.is_success()
    }
}

/// Why the endpoint could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer from http://{addr}{path} within {} ms", .timeout.as_millis())]
    Timeout {
        addr: SocketAddr,
        path: String,
        timeout: Duration,
    },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with {addr} failed: {reason}")]
    Http { addr: SocketAddr, reason: String },
    #[error("{0:?} is not a path (it must start with '/')")]
    BadPath(String),
}

/// `GET http://{addr}{path}` over HTTP/1.1, bounded by `timeout` from connect to the end of the
/// body.
pub async fn probe(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<ProbeAnswer, ProbeError> {
    if !path.starts_with('/') {
        return Err(ProbeError::BadPath(path.to_owned()));
    }
    tokio::time::timeout(timeout, exchange(addr, path))
        .await
        .unwrap_or_else(|_| {
            Err(ProbeError::Timeout {
                addr,
                path: path.to_owned(),
                timeout,
            })
        })
}

async fn exchange(addr: SocketAddr, path: &str) -> Result<ProbeAnswer, ProbeError> {
    let http = |e: &dyn std::fmt::Display| ProbeError::Http {
        addr,
        reason: e.to_string(),
    };
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ProbeError::Connect { addr, source })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(&e))?;
    let driver = tokio::spawn(conn);
    let req = Request::get(path)
        .header(header::HOST, addr.to_string())
        .header(header::USER_AGENT, "scoregate-probe")
        .body(Empty::<Bytes>::new())
        .map_err(|e| http(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| http(&e))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| http(&*e))?
        .to_bytes();
    driver.abort();
    Ok(ProbeAnswer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
