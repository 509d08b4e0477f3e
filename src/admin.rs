//! The admin listener: plain HTTP/1.1, loopback by default, never serves scoring traffic.
//!
//! Routes:
//! - `GET /healthz`: 200 while the process runs (liveness). No credential.
//! - `GET /readyz`: 200 once listeners are up and every upstream answered its health probe; 503
//!   otherwise and while draining, with per-service detail. No credential.
//! - `POST /services/{name}/listkeys`, `POST /services/{name}/regenerateKeys`: the management
//!   API (`management`), admin credential required (`authz`).
//!
//! The admin listener keeps answering during the drain (so orchestrators see 503 on `/readyz`)
//! and closes when background tasks stop.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::runtime::Gateway;

pub mod authz;
pub mod management;

use management::{ApiError, ServiceOp};

/// Largest management request body read.
const MAX_BODY: usize = 64 * 1024;

pub type AdminResponse = Response<Full<Bytes>>;

pub async fn serve(listener: TcpListener, gw: Arc<Gateway>, stop: CancellationToken) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                gw.metrics.accept_errors.inc();
                tracing::warn!(error = %e, "admin accept failed; backing off");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let gw = Arc::clone(&gw);
        let conn = http.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| {
                let gw = Arc::clone(&gw);
                async move { Ok::<_, Infallible>(handle(&gw, req).await) }
            }),
        );
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = conn => if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "admin connection error");
                },
                () = stop.cancelled() => {}
            }
        });
    }
}

async fn handle(gw: &Gateway, req: Request<Incoming>) -> AdminResponse {
    let request_id = crate::proxy::headers::request_id(req.headers());
    let mut resp = match route(gw, req).await {
        Ok(resp) => resp,
        Err(e) => e.response(&request_id),
    };
    resp.headers_mut()
        .insert(crate::proxy::headers::X_REQUEST_ID.clone(), request_id);
    resp
}

async fn route(gw: &Gateway, req: Request<Incoming>) -> Result<AdminResponse, ApiError> {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/healthz" | "/readyz" => {
            if req.method() != Method::GET {
                return Err(ApiError::MethodNotAllowed("GET"));
            }
            Ok(if path == "/healthz" {
                json(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
            } else {
                readyz(gw)
            })
        }
        _ => {
            let Some((name, op)) = service_route(&path) else {
                return Err(ApiError::RouteNotFound);
            };
            if req.method() != Method::POST {
                return Err(ApiError::MethodNotAllowed("POST"));
            }
            let principal = gw
                .admin
                .authenticate(req.headers())
                .map_err(ApiError::Unauthenticated)?;
            let body = read_body(req).await?;
            management::service_op(gw, &principal, name, op, body).await
        }
    }
}

/// `/services/{name}/{op}` → (name, op).
fn service_route(path: &str) -> Option<(&str, ServiceOp)> {
    let rest = path.strip_prefix("/services/")?;
    let (name, op) = rest.split_once('/')?;
    Some((name, ServiceOp::parse(op)?))
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    use http_body_util::{BodyExt, Limited};
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .map_err(|_| {
            ApiError::InvalidRequest(format!("request body unreadable or over {MAX_BODY} bytes"))
        })
}

fn readyz(gw: &Gateway) -> AdminResponse {
    #[derive(serde::Serialize)]
    struct Ready<'a> {
        status: &'static str,
        listening: bool,
        draining: bool,
        services: Vec<ServiceHealth<'a>>,
    }
    #[derive(serde::Serialize)]
    struct ServiceHealth<'a> {
        name: &'a str,
        healthy: bool,
    }
    let routes = gw.routes.load();
    let ready = gw.is_ready();
    let body = Ready {
        status: if ready { "ready" } else { "not_ready" },
        listening: gw.lifecycle.is_listening(),
        draining: gw.lifecycle.is_draining(),
        services: routes
            .services()
            .iter()
            .map(|s| ServiceHealth {
                name: &s.config.name,
                healthy: s.is_healthy(),
            })
            .collect(),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, serde_json::to_vec(&body).unwrap_or_default())
}

pub fn json(status: StatusCode, body: Vec<u8>) -> AdminResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
