//! A fleet replica that has never synced with etcd (no local snapshot) and cannot reach it: it
//! must not invent its own keys, so it waits for etcd before building any state. Meanwhile its
//! admin and probe listeners answer, so an orchestrator sees why it is not ready:
//! `GET /livez` 200, `GET /readyz` 503 `{"status":"not_ready","reason":"..."}`, anything else
//! 503 with code `cluster_unavailable`. The scoring listener is not accepted from yet (callers
//! wait in its backlog or go to a ready replica).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::{Cluster, ClusterError};
use crate::config::EtcdConfig;

/// How often a never-synced replica tries etcd again.
const RETRY: Duration = Duration::from_secs(1);

/// Opens the cluster, answering "not ready" on `listeners` for as long as etcd cannot be
/// reached and there is no snapshot. Any other failure (a wrong seal key) ends the wait.
pub async fn open_or_wait(
    config: &Arc<EtcdConfig>,
    state_dir: &std::path::Path,
    registry: &prometheus::Registry,
    listeners: &[&TcpListener],
) -> Result<Arc<Cluster>, ClusterError> {
    let metrics = super::ClusterMetrics::register(registry);
    loop {
        match Cluster::open(Arc::clone(config), state_dir, &metrics).await {
            Err(ClusterError::NeverSynced(why)) => {
                let reason: Arc<str> = Arc::from(format!(
                    "cluster: never synced with etcd and it cannot be reached ({why})"
                ));
                tracing::warn!(%reason, "not ready; waiting for etcd");
                let answer = async {
                    let serving: Vec<_> = listeners
                        .iter()
                        .map(|l| answer_unready(l, Arc::clone(&reason)))
                        .collect();
                    futures_join_all(serving).await;
                };
                tokio::select! {
                    () = answer => {}
                    () = tokio::time::sleep(RETRY) => {}
                }
            }
            other => return other,
        }
    }
}

/// Runs every future to completion (they never complete: accept loops).
async fn futures_join_all(futures: Vec<impl Future<Output = ()>>) {
    let mut set = Vec::with_capacity(futures.len());
    for f in futures {
        set.push(Box::pin(f));
    }
    for f in set {
        f.await;
    }
}

/// Answers every connection on `listener` as a not-ready replica.
async fn answer_unready(listener: &TcpListener, reason: Arc<str>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let reason = Arc::clone(&reason);
        let conn = http.serve_connection(
            TokioIo::new(stream),
            service_fn(move |req: Request<hyper::body::Incoming>| {
                let reason = Arc::clone(&reason);
                async move { Ok::<_, Infallible>(unready(req.uri().path(), &reason)) }
            }),
        );
        tokio::spawn(async move {
            // Bounded: the answer is immediate, and the connection closes after it.
            let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
        });
    }
}

fn unready(path: &str, reason: &str) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/livez" | "/healthz" => (StatusCode::OK, serde_json::json!({"status": "alive"})),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "not_ready", "reason": reason}),
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": {"code": "cluster_unavailable", "message": reason}}),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}
