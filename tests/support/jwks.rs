//! `JwksServer`: a trusted issuer's JWKS endpoint on `127.0.0.1:0` (plain HTTP, which the
//! gateway allows for loopback URLs). The test swaps the document it serves, makes it fail, counts
//! the fetches and can stop it altogether (listener and open connections closed), as an issuer
//! outage would.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::within;

#[derive(Debug)]
struct Shared {
    /// What `GET` answers: a status and, for 200, the document.
    answer: Mutex<(StatusCode, String)>,
    /// Requests received so far.
    hits: watch::Sender<usize>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct JwksServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl JwksServer {
    /// Starts serving `document` on `127.0.0.1:0`.
    pub async fn start(document: &Value) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind JWKS server on 127.0.0.1:0");
        let addr = listener.local_addr().expect("JWKS server address");
        let shared = Arc::new(Shared {
            answer: Mutex::new((StatusCode::OK, document.to_string())),
            hits: watch::channel(0).0,
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, Arc::clone(&shared), stop.clone()));
        Self { addr, shared, stop }
    }

    /// The JWKS URL to configure (`jwks_url`).
    pub fn url(&self) -> String {
        format!("http://{}/keys", self.addr)
    }

    /// Serves `document` from the next request on.
    pub fn serve(&self, document: &Value) {
        *self.shared.answer.lock().expect("JWKS answer lock") =
            (StatusCode::OK, document.to_string());
    }

    /// Answers every request with `status` and no document until [`Self::serve`].
    pub fn fail_with(&self, status: StatusCode) {
        *self.shared.answer.lock().expect("JWKS answer lock") = (status, String::new());
    }

    /// Requests received so far (successful or not).
    pub fn requests(&self) -> usize {
        *self.shared.hits.borrow()
    }

    /// Waits until at least `n` requests have arrived.
    pub async fn wait_requests(&self, n: usize) {
        let mut rx = self.shared.hits.subscribe();
        within(
            &format!("{n} JWKS request(s)"),
            rx.wait_for(|hits| *hits >= n),
        )
        .await
        .expect("the JWKS server outlives the test's wait");
    }

    /// Closes the listener and every open connection: the issuer is down.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let shared = Arc::clone(&shared);
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req| {
                let shared = Arc::clone(&shared);
                async move {
                    shared.hits.send_modify(|n| *n += 1);
                    let (status, body) = shared.answer.lock().expect("JWKS answer lock").clone();
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() = status;
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                () = stop.cancelled() => {}
            }
        });
    }
}
