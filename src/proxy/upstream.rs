//! The pooled keep-alive client to scoring containers, its timeouts, and the health probe behind
//! `/readyz`.
//!
//! One client per service, so each service's connect timeout and TLS trust apply to its own
//! upstream; the pool keeps idle HTTP/1.1 connections per host. An `https://` upstream is
//! verified against the system roots plus an optional `upstream_ca`. Response-header timeouts
//! are applied by the caller (`proxy::forward`) because they are a per-request policy, not a
//! transport setting.

use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::RequestBody;
use crate::config::ServiceConfig;

/// Idle upstream connections are kept this long; scoring containers (gunicorn) commonly close
/// idle keep-alive connections after a few seconds, so a stale one is retried by hyper-util.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Enough idle connections for a burst of concurrent requests without reconnecting.
const POOL_MAX_IDLE_PER_HOST: usize = 256;

/// The client of one service. Plain `http://` upstreams get a client without the TLS connector
/// layer: its futures are smaller and cheaper to move, which shows on the request path.
#[derive(Debug, Clone)]
pub enum UpstreamClient {
    Plain(Client<HttpConnector, RequestBody>),
    Tls(Client<hyper_rustls::HttpsConnector<HttpConnector>, RequestBody>),
}

impl UpstreamClient {
    pub fn new(config: &ServiceConfig) -> Result<Self, String> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        if config.upstream.scheme != http::uri::Scheme::HTTPS {
            return Ok(Self::Plain(builder.build(http)));
        }
        let tls = crate::tls::client_config(config.upstream_ca.as_deref())?;
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self::Tls(builder.build(connector)))
    }

    pub async fn send(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        match self {
            Self::Plain(c) => c.request(req).await,
            Self::Tls(c) => c.request(req).await,
        }
    }

    /// `GET uri` answered with a 2xx within `timeout`. Azure ML containers answer `GET /` with
    /// 200 `Healthy` (AZUREML-CONTRACT B.3).
    pub async fn probe(&self, uri: Uri, timeout: Duration) -> bool {
        let Ok(req) = Request::get(uri).body(RequestBody::Empty) else {
            return false;
        };
        match tokio::time::timeout(timeout, self.send(req)).await {
            Ok(Ok(resp)) => resp.status().is_success(),
            Ok(Err(_)) | Err(_) => false,
        }
    }
}
